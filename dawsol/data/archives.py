"""Archives extracted safely: type sniffing, member checks, size bounds, all-or-nothing extraction.

Extraction refuses absolute paths, ``..``, links that leave the target, zip links and special
files, and archives that would extract to more than the disk holds or than a dataset could
(``MAX_EXTRACT_BYTES``, ``MAX_RATIO``), and works in a temporary folder moved into place only
when the whole archive extracted.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from dawsol.atomic import remove_staging, staging_folder
from dawsol.errors import DawsolError
from dawsol.files import CHUNK, readable_size

# What one archive may extract to (issue 15: a 2 MB zip or tar.gz must not fill the disk with 2 GiB). Dataset archives
# hold JPEG and PNG, which do not compress (ILSVRC train: a 138 GiB plain tar; CUB 1.1 GB, OpenImages tens of GB, all
# about 1:1) and text compresses 3-10x, while one deflate layer reaches ~1000x and overlapping-member zips far more.
MAX_RATIO = 100  # extracted bytes per archive byte, checked once the extracted total passes RATIO_FLOOR
RATIO_FLOOR = 100 << 20  # up to 100 MiB any ratio is harmless (small metadata archives may compress 100x)
MAX_EXTRACT_BYTES = 512 << 30  # 3.7x ILSVRC train, the largest archive in SOURCES, whatever the disk says is free
DISK_MARGIN = 1 << 30  # left free on the target disk after an extraction, for the OS, logs and checkpoints


def _sniff(head: bytes) -> str:
    """What the first 512 bytes of a file look like: an archive kind, "empty", "html" or "unknown"."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    for magic, kind in ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz")):
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return "tar"
    if not head:
        return "empty"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return "html" if text.startswith(b"<!doctype html") or b"<html" in text else "unknown"


_FOUND = {
    "zip": "a zip archive",
    "gzip": "gzip data",
    "bzip2": "bzip2 data",
    "xz": "xz data",
    "tar": "a tar archive",
    "empty": "an empty file",
    "html": "an HTML page (an error or sign-in page saved in place of the archive)",
}


def check_archive_type(path: Path) -> None:
    """Raise DawsolError unless ``path`` starts like the archive its name says (zip, or tar plain or compressed)."""
    with open(path, "rb") as f:
        head = f.read(512)
    kind = _sniff(head)
    if path.name.endswith(".zip"):
        expected, accepted = "a zip archive", {"zip"}
    else:
        expected = "a tar archive" if path.name.endswith(".tar") else "a gzip-compressed tar archive"
        accepted = {"tar", "gzip", "bzip2", "xz"}
    if kind not in accepted:
        found = _FOUND.get(kind, f"unrecognised bytes {head[:16]!r}")
        raise DawsolError(
            f"{path}: expected {expected} but found {found}; the download failed or it is a different file: "
            "delete it and re-download"
        )


def _member_problem(name: str, link: str | None = None, hard: bool = False) -> str | None:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in path.parts:
        return "'..' in its path"
    if link is not None:
        target = PurePosixPath(link)
        if target.is_absolute():
            return f"link to the absolute path {link}"
        base = PurePosixPath() if hard else path.parent
        depth = 0
        for part in (*base.parts, *target.parts):
            depth += -1 if part == ".." else (0 if part in ("", ".") else 1)
            if depth < 0:
                return f"link {link} pointing outside the dataset folder"
    return None


def _refuse(archive: Path, name: str, problem: str) -> DawsolError:
    return DawsolError(f"{archive}: refusing member {name!r} ({problem}); check that it is the right archive")


def check_extraction_size(archive: Path, total: int, archive_size: int, free: int) -> None:
    """Raise DawsolError unless ``total`` bytes extracted from ``archive`` (``archive_size`` bytes) stay within
    ``MAX_EXTRACT_BYTES``, ``MAX_RATIO`` and the target disk's ``free`` bytes less ``DISK_MARGIN``."""
    bomb = "refusing a likely decompression bomb: check that it is the right archive"
    if total > MAX_EXTRACT_BYTES:
        raise DawsolError(
            f"{archive}: its members declare {readable_size(total)}, over the "
            f"{readable_size(MAX_EXTRACT_BYTES)} limit for one archive (the largest dataset archive, ILSVRC train, "
            f"is 138 GiB); {bomb}"
        )
    if total > RATIO_FLOOR and total > MAX_RATIO * archive_size:
        raise DawsolError(
            f"{archive}: its members declare {readable_size(total)} from {readable_size(archive_size)}, "
            f"a compression ratio of {total / max(archive_size, 1):.0f} (the limit is {MAX_RATIO}); {bomb}"
        )
    if total > free - DISK_MARGIN:
        raise DawsolError(
            f"{archive}: extracting it needs {readable_size(total)} but the target disk has "
            f"{readable_size(max(free - DISK_MARGIN, 0))} to spare ({readable_size(free)} free, "
            f"{readable_size(DISK_MARGIN)} of it kept free); "
            "free disk space or set data.root to a larger disk, then re-run"
        )


def _nested_problem(members: Sequence[tuple[str, bool]]) -> str | None:
    """The first member (name, is a folder) that is no folder yet has other members inside it, if any."""
    folders: set[tuple[str, ...]] = set()
    for name, is_dir in members:
        parts = PurePosixPath(name).parts
        folders.update(parts[:k] for k in range(1, len(parts) + is_dir))
    return next((name for name, is_dir in members if not is_dir and PurePosixPath(name).parts in folders), None)


def _zip_type(info: zipfile.ZipInfo) -> str | None:
    """What Unix zip marked a member as ("symlink" or "special file"); None for files and folders."""
    mode = info.external_attr >> 16
    if info.create_system != 3 or stat.S_IFMT(mode) in (0, stat.S_IFREG, stat.S_IFDIR):
        return None
    return "symlink" if stat.S_ISLNK(mode) else "special file"


def _extract_zip(archive: Path, dest: Path) -> None:
    """Check every member's path, type and size, then extract, counting the bytes of each member (and its CRC)."""
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            if problem := _member_problem(info.filename) or _zip_type(info):
                raise _refuse(archive, info.filename, problem)
        if (nested := _nested_problem([(i.filename, i.is_dir()) for i in infos])) is not None:
            raise _refuse(archive, nested, "a file, yet it has other members inside it")
        total = sum(i.file_size for i in infos)
        check_extraction_size(archive, total, archive.stat().st_size, shutil.disk_usage(dest).free)
        for info in infos:
            path = dest / info.filename
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            left = info.file_size  # zipfile stops there itself (then fails the CRC); counted all the same
            with zf.open(info) as source, open(path, "wb") as out:
                while chunk := source.read(CHUNK):
                    left -= len(chunk)
                    if left < 0:
                        raise DawsolError(
                            f"{archive}: member {info.filename!r} holds more than the "
                            f"{readable_size(info.file_size)} it declares; refusing a forged archive: "
                            "check that it is the right archive"
                        )
                    out.write(chunk)


def _extract_tar(archive: Path, dest: Path) -> None:
    """Check every member's path, type and size, then extract with tarfile's "data" filter."""
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            link = m.linkname if (m.issym() or m.islnk()) else None
            problem = _member_problem(m.name, link, hard=m.islnk())
            if problem is None and not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                problem = "special file"
            if problem:
                raise _refuse(archive, m.name, problem)
        if (nested := _nested_problem([(m.name, m.isdir()) for m in members])) is not None:
            raise _refuse(archive, nested, "a file or link, yet it has other members inside it")
        # tarfile writes exactly TarInfo.size bytes of a member (fewer is a ReadError), so this total is what lands
        total = sum(m.size for m in members if m.isfile())
        check_extraction_size(archive, total, archive.stat().st_size, shutil.disk_usage(dest).free)
        tf.extractall(dest, members=members, filter="data")


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar(.gz) or zip archive into ``dest`` after checking every member and the total size.

    Refuses (DawsolError naming archive and member) absolute paths, ``..``, links that point outside
    ``dest``, members inside a file or link, zip links, device files, and archives over the limits of
    ``check_extraction_size``; a corrupt or truncated archive, or a full disk, is a DawsolError naming
    it. It extracts into a temporary folder beside ``dest``, moved in only when all went well, so a
    failure leaves ``dest`` as it was.
    """
    dest.mkdir(parents=True, exist_ok=True)
    is_zip = zipfile.is_zipfile(archive)
    remove_staging(dest, "extract")  # what a killed extraction into dest left
    work = staging_folder(dest, "extract")
    try:
        (_extract_zip if is_zip else _extract_tar)(archive, work)
        move_tree(work, dest)
    except tarfile.FilterError as exc:  # a link that leaves the folder through other links
        raise _refuse(archive, exc.tarinfo.name, str(exc)) from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, NotImplementedError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # the disk or folder failed, not the archive's data
            raise DawsolError(
                f"{archive}: extracting it into {dest} failed ({exc}); the archive is not at fault: "
                "free disk space (or make the folder writable) and re-run"
            ) from None
        kind = "corrupt zip archive" if is_zip else "not a readable tar or zip archive, or truncated"
        raise DawsolError(f"{archive}: {kind} ({exc}); delete it and re-download") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def move_tree(source: Path, target: Path) -> None:
    """Move every entry of ``source`` into ``target`` (merging folders)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir():
            move_tree(entry, destination)
            entry.rmdir()
        else:
            os.replace(entry, destination)
