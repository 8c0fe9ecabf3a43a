"""Real datasets (CUB, ILSVRC, OpenImages30k): download, verify, extract safely, lay out.

One table (``SOURCES``) says where each archive comes from and how to check it, one
(``LAYOUTS``) where its contents go, one (``METADATA_FILES``) which pinned wsolevaluation
metadata files each dataset needs and their sha256. ``prepare_dataset`` takes both tables
as arguments, so tests serve small archives from a local HTTP server.

Guarantees: downloads resume with HTTP Range after an interruption (``<file>.part``); every
archive is verified (checksum, else size) before use and must start like the archive type its
name says (an HTML error page saved in its place is refused); a corrupt archive (bad CRC,
truncated) is a one-line error; extraction refuses absolute paths, ``..``, links that leave
the target, zip links and special files, and archives that would extract to more than the disk
holds or than a dataset could (``MAX_EXTRACT_BYTES``, ``MAX_RATIO``), and works in a temporary
folder that is renamed into place only when the whole dataset validates, so a failed or
interrupted prepare never leaves a half-made dataset; a
finished dataset carries a stamp, with the sha256 and size of every archive it was built from,
and a re-run only verifies it (a rebuild re-checks the kept archives against the stamp).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from dawsol.atomic import atomic_write_text
from dawsol.data.metadata import MASK_LOCALIZATION, read_split, validate_dataset
from dawsol.errors import DawsolError

log = logging.getLogger(__name__)

STAMP = ".dawsol-prepared.json"
CHUNK = 1 << 20
RETRY_WAIT_S = 2.0  # before the first retry of a download; doubles per retry (5 retries: 2, 4, 8, 16, 32 s)
MAX_RETRY_WAIT_S = 120.0
RETRY_HTTP_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})  # other HTTP errors are no passing failure
# What one archive may extract to (issue 15: a 2 MB zip or tar.gz must not fill the disk with 2 GiB). Dataset archives
# hold JPEG and PNG, which do not compress (ILSVRC train: a 138 GiB plain tar; CUB 1.1 GB, OpenImages tens of GB, all
# about 1:1) and text compresses 3-10x, while one deflate layer reaches ~1000x and overlapping-member zips far more.
MAX_RATIO = 100  # extracted bytes per archive byte, checked once the extracted total passes RATIO_FLOOR
RATIO_FLOOR = 100 << 20  # up to 100 MiB any ratio is harmless (small metadata archives may compress 100x)
MAX_EXTRACT_BYTES = 512 << 30  # 3.7x ILSVRC train, the largest archive in SOURCES, whatever the disk says is free
DISK_MARGIN = 1 << 30  # left free on the target disk after an extraction, for the OS, logs and checkpoints
METADATA_COMMIT = "96f4b88679af41f005824661f47e6fe3628af2aa"
METADATA_URL = "https://raw.githubusercontent.com/clovaai/wsolevaluation/{commit}/metadata/{path}"
_ONEDRIVE = "https://onedrive.live.com/download?cid=B7111B95B80CCC66&resid=B7111B95B80CCC66%21{res}&authkey={key}"
_IMAGENET_HELP = (
    "ImageNet may not be downloaded for you: get {name} from https://image-net.org/download-images "
    "(free account, accept the terms) and put it in {downloads}/ or pass --archive PATH"
)


@dataclass(frozen=True)
class Remote:
    """One archive: where to get it (empty ``url``: manual only) and how to check it."""

    filename: str
    url: str = ""
    checksum: str = ""  # "md5:<hex>" or "sha256:<hex>"; empty: check size only
    size: int | None = None
    manual: str = ""  # what to do when it must be supplied by hand ({name}, {downloads})


@dataclass(frozen=True)
class Step:
    """Move ``source`` (a folder inside an archive, "" = its root) to ``target`` in the dataset."""

    remote: str
    source: str
    target: str
    nested_tars: bool = False  # ILSVRC train: one tar per class, extracted into <target>/<stem>/
    optional: bool = False  # skipped (with a note) when the archive is not available


SOURCES: dict[str, Remote] = {
    "CUB_200_2011.tgz": Remote(
        "CUB_200_2011.tgz",
        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
        "md5:97eceeb196236b17998738112f37df78",
    ),
    "CUBV2.tar": Remote("CUBV2.tar", _ONEDRIVE.format(res="30812", key="AFMzb4akufUiWU0")),
    "segmentations.tgz": Remote(
        "segmentations.tgz",
        manual=(
            "the CUB segmentations (for PxAP on CUB test) are optional: download segmentations.tgz from the "
            "Caltech Data record of CUB-200-2011 (or DA-WSOL's Google Drive file 1KZQLpwkuF0HgmJ04P9N9lmYvvGU9-ACP) "
            "into {downloads}/ or pass --archive PATH"
        ),
    ),
    "ILSVRC2012_img_train.tar": Remote("ILSVRC2012_img_train.tar", size=147_897_477_120, manual=_IMAGENET_HELP),
    "ILSVRC2012_img_val.tar": Remote("ILSVRC2012_img_val.tar", size=6_744_924_160, manual=_IMAGENET_HELP),
    "imagenetv2-threshold0.7.tar.gz": Remote(
        "imagenetv2-threshold0.7.tar.gz",
        "https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-threshold0.7.tar.gz",
        size=1_249_906_176,
    ),
    "OpenImages_images.zip": Remote("OpenImages_images.zip", _ONEDRIVE.format(res="30813", key="AHgXVPxKxO_5Fvc")),
    "OpenImages_annotations.zip": Remote(
        "OpenImages_annotations.zip", _ONEDRIVE.format(res="30811", key="AMWbBWZVQFbm4jw")
    ),
}

LAYOUTS: dict[str, list[Step]] = {
    "cub": [
        Step("CUB_200_2011.tgz", "CUB_200_2011/images", ""),
        Step("CUBV2.tar", "", ""),
        Step("segmentations.tgz", "segmentations", "masks", optional=True),
    ],
    "ilsvrc": [
        Step("ILSVRC2012_img_train.tar", "", "train", nested_tars=True),
        Step("ILSVRC2012_img_val.tar", "", "val"),
        Step("imagenetv2-threshold0.7.tar.gz", "imagenetv2-threshold0.7", "val2"),
    ],
    "openimages": [Step("OpenImages_images.zip", "", ""), Step("OpenImages_annotations.zip", "", "")],
}

_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# <wsolevaluation dataset>/<split>/<file> -> sha256 (None: large, recorded in the stamp on first download)
METADATA_FILES: dict[str, dict[str, str | None]] = {
    "cub": {
        "CUB/test/class_labels.txt": "0e65f035658267b2c7eec0d289048bb822e4a5f9a244b034c127ea7fb1367d7d",
        "CUB/test/image_ids.txt": "f654e4676187fc322ad409487faa3568bffa751438198011692e7ff01be574ca",
        "CUB/test/image_sizes.txt": "96c4e79810545b237b2a79f4623a198ce6effb290fba01790b5587b464abd33b",
        "CUB/test/localization.txt": "85d2bd87f1bfb1641ae42f36df070c34b4755f260267326d2a2d19e65a9acf00",
        "CUB/train/class_labels.txt": "4f19c23e9fdf3cfae8027a9ea8a1cec1b4ecc6a3cb6cf0fe12723c48cde82b30",
        "CUB/train/image_ids.txt": "c04cbe44e79ef2129afac49a15eb51b8f050cdef140cef4cf908cef823000b66",
        "CUB/train/image_sizes.txt": "307a9ed88a011e41b16153ed9745f4cf41054fdfb834f412f104873a42a959cd",
        "CUB/train/localization.txt": "672f41482883e8a23e9b1406b8e75aec7c74c18da39b024724c804dba3c480fd",
        "CUB/val/class_labels.txt": "36791366bc002b82df029b8d84500d731ecc4a5dea603250f134e927d7df5748",
        "CUB/val/image_ids.txt": "455f26689daf2219d42208fba21be12da219c8724eab38482210c4ac2bc57c02",
        "CUB/val/image_sizes.txt": "b0d5495ba5af9f7b1e34753cc8548be5debb267a3d7803a5408a3bc4d173ef63",
        "CUB/val/localization.txt": "08ff9afa478b3a7e29a15c173e11927c9cb1867b58ae8a541df69a4c0c830ab5",
    },
    "ilsvrc": {
        "ILSVRC/test/class_labels.txt": "a226044e3e00900291053ecb8e68640385a196c5521c793d242df9e084e898b6",
        "ILSVRC/test/image_ids.txt": "68bed6c35194a126dba32ad15f2f19596a5f1a3923ffc4ac301402d93e045583",
        "ILSVRC/test/image_sizes.txt": "dde3957c4bf3bdab41ec759386c6ebaa8bed2c1790891ec3465e3a235ed63f3e",
        "ILSVRC/test/localization.txt": "c4a9929837b61e9c2a03524f5b963945782ddc9930c4f8ea764cc10004c5ee62",
        "ILSVRC/train/class_labels.txt": None,
        "ILSVRC/train/image_ids.txt": None,
        "ILSVRC/train/image_ids_proxy.txt": None,
        "ILSVRC/train/image_sizes.txt": _EMPTY,
        "ILSVRC/train/localization.txt": _EMPTY,
        "ILSVRC/val/class_labels.txt": "316209e92831b0dd910432afe74c55f2fb33ed72ade1378d3d0954df325ea51e",
        "ILSVRC/val/image_ids.txt": "bcd13383b7fdaa8aa9cfd02228b398802cf64b20f6efe13aa4b0696b9431d993",
        "ILSVRC/val/image_sizes.txt": "4c82c4c1e14bc7f6a1a8a1fe7ab91df2ec369318b39a8b70618d6bd041cc7410",
        "ILSVRC/val/localization.txt": "4d01d6e9eab27ec860092a43f5b7480f10aadbf21234bd01ae419e9c8181ea3f",
    },
    "openimages": {
        "OpenImages/test/class_labels.txt": "38d9c771b4031770c5e366ff2c50650ec130ce24ceb4b75be96e494f89a1f959",
        "OpenImages/test/image_ids.txt": "7f279c569eb501986ecd98917ba6f116524fe744f84684ad16b3a01087c00bf8",
        "OpenImages/test/image_sizes.txt": _EMPTY,
        "OpenImages/test/localization.txt": "9d1f0bad885884f7e79913b00c5b984fc8d532ed80886bd5e72d37e3274aeb55",
        "OpenImages/train/class_labels.txt": "963b8b21ffdbabc145817f92183371fcdbe9adf3636edde878e45186c0ac9132",
        "OpenImages/train/image_ids.txt": "12c206be5ec47a8e94dbc9cb62a5e0325507335c4daa199b88b4792e4e59d084",
        "OpenImages/train/image_sizes.txt": _EMPTY,
        "OpenImages/train/localization.txt": _EMPTY,
        "OpenImages/val/class_labels.txt": "fa8500d1d6a940a4d7a2dd383cb0f3f508565a3cc71fd34a06ba1c804ec84707",
        "OpenImages/val/image_ids.txt": "32f491e7f25f2a99cb26926b85df5a442df2fa990138b2b938e52674cf4b8ab7",
        "OpenImages/val/image_sizes.txt": _EMPTY,
        "OpenImages/val/localization.txt": "74c9b64d462e423008cda2cb0d4c12bb55b69b2fe438d8e10e49dd61d21d01be",
    },
}
NUM_CLASSES = {"cub": 200, "ilsvrc": 1000, "openimages": 100}


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, remote: Remote) -> None:
    """Raise DawsolError naming the file and expected vs actual checksum (or size) on a mismatch."""
    if remote.checksum:
        algorithm, expected = remote.checksum.split(":", 1)
        actual = file_digest(path, algorithm)
        if actual != expected:
            raise DawsolError(
                f"{path}: {algorithm} {actual} does not match the expected {expected}; "
                "the archive is corrupt or a different file: delete it and re-run"
            )
    if remote.size is not None and path.stat().st_size != remote.size:
        raise DawsolError(
            f"{path}: size {path.stat().st_size} bytes does not match the expected {remote.size}; "
            "the archive is incomplete or a different file: delete it and re-run"
        )


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


def _recorded_archives(stamp: Path) -> dict[str, dict]:
    """The archives (name -> sha256 and size) a previous prepare recorded in ``stamp``; {} if none."""
    try:
        archives = json.loads(stamp.read_text()).get("archives", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in archives.items() if isinstance(v, dict)} if isinstance(archives, dict) else {}


def record_archive(
    path: Path, remote: Remote, recorded: Mapping[str, object] | None, stamp: Path
) -> dict[str, str | int]:
    """What the stamp records of an archive: its published checksum (already verified by
    ``verify_file``, so a large archive is not hashed twice) and size, or, for an archive without
    one, its sha256 and size; DawsolError (expected vs actual) if they differ from ``recorded``."""
    size = path.stat().st_size
    if remote.checksum:
        return {"checksum": remote.checksum, "size": size}
    if recorded and recorded.get("size") not in (None, size):
        raise DawsolError(
            f"{path}: size {size} bytes does not match the {recorded['size']} recorded in {stamp} when the dataset "
            "was built from it; the archive changed: delete it and re-download (or delete the dataset to build anew)"
        )
    sha256 = file_digest(path, "sha256")
    if recorded and recorded.get("sha256") not in (None, sha256):
        raise DawsolError(
            f"{path}: sha256 {sha256} does not match the {recorded['sha256']} recorded in {stamp} when the dataset "
            "was built from it; the archive changed: delete it and re-download (or delete the dataset to build anew)"
        )
    return {"sha256": sha256, "size": size}


def _expected_total(response: http.client.HTTPResponse, offset: int) -> int | None:
    """The full file size a response promises (Content-Range total, else offset + Content-Length)."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def retry_wait(retry: int) -> float:
    """The wait before retry number ``retry`` (1-based): ``RETRY_WAIT_S`` doubling, at most ``MAX_RETRY_WAIT_S``."""
    return min(RETRY_WAIT_S * 2 ** (retry - 1), MAX_RETRY_WAIT_S)


class _Progress:
    """A download's progress: a tqdm bar on a terminal, else a log line every tenth of the file."""

    def __init__(self, name: str, total: int | None, done: int, bar: bool) -> None:
        self.name, self.total, self.done = name, total, done
        self.bar = tqdm(
            total=total,
            initial=done,
            desc=name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
            disable=not bar,
        )
        self.next_tenth = self._tenth(done) + 1

    def _tenth(self, done: int) -> int:
        return 10 * done // self.total if self.total else 10

    def add(self, count: int) -> None:
        self.done += count
        self.bar.update(count)
        if self.bar.disable and self._tenth(self.done) >= self.next_tenth:
            self.next_tenth = self._tenth(self.done) + 1
            log.info(
                "%s: %s of %s (%d%%)", self.name, _size(self.done), _size(self.total), 100 * self.done // self.total
            )

    def close(self) -> None:
        self.bar.close()


def _retryable(error: Exception) -> bool:
    """A failure a later attempt may not meet: a dropped connection, a timeout, a busy or failing server."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code in RETRY_HTTP_CODES
    return True


def download(
    url: str,
    dest: Path,
    retries: int = 5,
    timeout: float = 60.0,
    *,
    sleep: Callable[[float], object] = time.sleep,
    progress: bool | None = None,
) -> None:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming with HTTP Range after an interruption.

    A server that ignores Range (200 instead of 206) restarts the file from scratch. A failed
    attempt is retried up to ``retries`` times after a growing wait (``retry_wait``; ``sleep``
    waits it), except an HTTP error no retry mends (404, 403, ...). After the last attempt the
    ``.part`` file stays, so the next run resumes it. ``progress`` (default: stderr is a terminal)
    shows a bar; without one a log line marks every tenth of the file.
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    bar = sys.stderr.isatty() if progress is None else progress
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            wait = retry_wait(attempt)
            log.warning(
                "download of %s interrupted (%s); retry %d of %d in %.0f s", url, last_error, attempt, retries, wait
            )
            sleep(wait)
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                resumed = have > 0 and response.status == 206
                total = _expected_total(response, have if resumed else 0)
                shown = _Progress(dest.name, total, have if resumed else 0, bar)
                try:
                    with open(part, "ab" if resumed else "wb") as out:
                        while chunk := response.read(CHUNK):
                            out.write(chunk)
                            shown.add(len(chunk))
                finally:
                    shown.close()
            if total is not None and part.stat().st_size != total:
                raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")
            os.replace(part, dest)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # range not satisfiable: the part is already complete
                os.replace(part, dest)
                return
            last_error = exc
        except (OSError, urllib.error.URLError) as exc:  # includes http.client.IncompleteRead
            last_error = exc
        if not _retryable(last_error):
            raise DawsolError(f"{url}: download failed ({last_error}); check the address, or the network's access")
    raise DawsolError(f"{url}: download failed ({last_error}) after {retries} retries; re-run to resume from {part}")


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


def _size(n: float) -> str:
    """``n`` bytes in readable units ("1000 bytes", "8.0 MiB")."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n, k = n / 1024, k + 1
    return f"{n:.0f} bytes" if k == 0 else f"{n:.1f} {units[k]}"


def _refuse(archive: Path, name: str, problem: str) -> DawsolError:
    return DawsolError(f"{archive}: refusing member {name!r} ({problem}); check that it is the right archive")


def check_extraction_size(archive: Path, total: int, archive_size: int, free: int) -> None:
    """Raise DawsolError unless ``total`` bytes extracted from ``archive`` (``archive_size`` bytes) stay within
    ``MAX_EXTRACT_BYTES``, ``MAX_RATIO`` and the target disk's ``free`` bytes less ``DISK_MARGIN``."""
    bomb = "refusing a likely decompression bomb: check that it is the right archive"
    if total > MAX_EXTRACT_BYTES:
        raise DawsolError(
            f"{archive}: its members declare {_size(total)}, over the {_size(MAX_EXTRACT_BYTES)} limit for one "
            f"archive (the largest dataset archive, ILSVRC train, is 138 GiB); {bomb}"
        )
    if total > RATIO_FLOOR and total > MAX_RATIO * archive_size:
        raise DawsolError(
            f"{archive}: its members declare {_size(total)} from {_size(archive_size)}, a compression ratio of "
            f"{total / max(archive_size, 1):.0f} (the limit is {MAX_RATIO}); {bomb}"
        )
    if total > free - DISK_MARGIN:
        raise DawsolError(
            f"{archive}: extracting it needs {_size(total)} but the target disk has "
            f"{_size(max(free - DISK_MARGIN, 0))} to spare ({_size(free)} free, {_size(DISK_MARGIN)} of it kept free); "
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
                            f"{archive}: member {info.filename!r} holds more than the {_size(info.file_size)} it "
                            "declares; refusing a forged archive: check that it is the right archive"
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
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        (_extract_zip if is_zip else _extract_tar)(archive, work)
        _move_tree(work, dest)
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


def _move_tree(source: Path, target: Path) -> None:
    """Move every entry of ``source`` into ``target`` (merging folders)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir():
            _move_tree(entry, destination)
            entry.rmdir()
        else:
            os.replace(entry, destination)


def fetch_archive(remote: Remote, downloads: Path, archives: Mapping[str, Path], required: bool = True) -> Path | None:
    """The verified local archive: ``--archive``, else ``downloads/<name>``, else downloaded there."""
    path = archives.get(remote.filename) or downloads / remote.filename
    if not path.is_file():
        if not remote.url:
            if not required:
                log.info(
                    "skipping %s: %s", remote.filename, remote.manual.format(name=remote.filename, downloads=downloads)
                )
                return None
            raise DawsolError(
                f"{remote.filename} is missing: " + remote.manual.format(name=remote.filename, downloads=downloads)
            )
        log.info("downloading %s", remote.url)
        download(remote.url, path)
    verify_file(path, remote)
    check_archive_type(path)
    return path


def fetch_metadata(
    dataset: str, dest: Path, files: Mapping[str, str | None], url: str = METADATA_URL
) -> dict[str, str]:
    """Download the pinned metadata files into ``dest/metadata/<split>/``; returns their sha256."""
    sums = {}
    for name, expected in files.items():
        _, split, filename = name.split("/")
        target = dest / "metadata" / split / filename
        download(url.format(commit=METADATA_COMMIT, path=name), target)
        actual = file_digest(target, "sha256")
        if expected is not None and actual != expected:
            raise DawsolError(
                f"{name}: sha256 {actual} does not match the pinned {expected} (metadata {METADATA_COMMIT[:8]})"
            )
        sums[name] = actual
    return sums


def _write_cub_masks(build: Path) -> None:
    """CUB test masks (the Caltech segmentations) as mask lines in ``metadata/test/mask_localization.txt``."""
    meta = read_split(build / "metadata" / "test")
    lines = [f"{i},masks/{PurePosixPath(i).with_suffix('.png')}," for i in meta.image_ids]
    atomic_write_text(build / "metadata" / "test" / MASK_LOCALIZATION, "\n".join(lines))


def is_prepared(dataset_dir: Path, num_classes: int | None = None) -> bool:
    """True if ``dataset_dir`` carries a stamp and validates."""
    return (dataset_dir / STAMP).is_file() and not validate_dataset(dataset_dir, num_classes=num_classes)


def prepare_dataset(
    dataset: str,
    root: str | Path,
    archives: Sequence[Path] = (),
    *,
    sources: Mapping[str, Remote] = SOURCES,
    layouts: Mapping[str, list[Step]] = LAYOUTS,
    metadata_files: Mapping[str, Mapping[str, str | None]] = METADATA_FILES,
    metadata_url: str = METADATA_URL,
    num_classes: int | None = None,
) -> bool:
    """Prepare ``<root>/<dataset>``; True if it was built, False if it was already there.

    Archives come from ``archives`` (matched by file name), ``<root>/downloads/``, or are
    downloaded there. Everything is built in ``<root>/.<dataset>.build-*`` and renamed into
    place after it validates.
    """
    root = Path(root)
    dataset_dir = root / dataset
    num_classes = num_classes if num_classes is not None else NUM_CLASSES.get(dataset)
    if dataset_dir.is_dir() and is_prepared(dataset_dir, num_classes):
        log.info("%s is prepared and valid", dataset_dir)
        return False
    by_name = {}
    for path in archives:
        if path.name not in sources:
            raise DawsolError(f"--archive {path}: unknown archive name (expected one of: {', '.join(sorted(sources))})")
        by_name[path.name] = path
    downloads = root / "downloads"
    steps = layouts[dataset]
    local = {s.remote: fetch_archive(sources[s.remote], downloads, by_name, required=not s.optional) for s in steps}
    recorded = _recorded_archives(dataset_dir / STAMP)
    used = {
        name: record_archive(path, sources[name], recorded.get(name), dataset_dir / STAMP)
        for name, path in local.items()
        if path is not None
    }
    for stale in root.glob(f".{dataset}.build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    build = Path(tempfile.mkdtemp(prefix=f".{dataset}.build-", dir=root))
    try:
        for k, step in enumerate(steps):
            archive = local[step.remote]
            if archive is None:
                continue
            log.info("extracting %s", archive)
            staging = build / f".extract-{k}"
            safe_extract(archive, staging)
            source = staging / step.source
            if not source.is_dir():
                raise DawsolError(f"{archive}: no folder {step.source!r} inside; is it the right archive?")
            target = build / step.target
            if step.nested_tars:
                for inner in sorted(source.glob("*.tar")):
                    safe_extract(inner, target / inner.stem)
            else:
                _move_tree(source, target)
            shutil.rmtree(staging)
        sums = fetch_metadata(dataset, build, metadata_files[dataset], metadata_url)
        if dataset == "cub" and local.get("segmentations.tgz") is not None:
            _write_cub_masks(build)
        problems = validate_dataset(build, num_classes=num_classes)
        if problems:
            shown = "; ".join(str(p).replace(str(build), str(dataset_dir)) for p in problems[:3])
            raise DawsolError(
                f"{dataset_dir}: the archives do not have the expected layout ({len(problems)} problem(s): {shown})"
            )
        stamp = {"dataset": dataset, "archives": used, "metadata_commit": METADATA_COMMIT, "metadata_sha256": sums}
        atomic_write_text(build / STAMP, json.dumps(stamp, indent=2))
        if dataset_dir.exists():
            shutil.rmtree(dataset_dir)
        build.rename(dataset_dir)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return True
