"""Reading named files out of a Debian package (``.deb``) without dpkg or root.

A ``.deb`` is an ``ar`` archive (global header ``!<arch>\\n``, then members with 60-byte headers)
holding ``debian-binary``, ``control.tar.*`` and ``data.tar.*``. ``read_members`` parses the
``ar`` layer itself, with every offset and size checked against the file, streams the
``data.tar`` through ``tarfile`` (plain, gzip, bzip2 or xz) and returns the bytes of the
requested members only. The archive-safety rules of ``dawsol.data.archives`` hold: an ``ar``
member name must be a plain file name, a requested tar member must be a regular file without
``..`` or an absolute path and exactly the size the caller expects, and the archive may not
declare more than ``MAX_RATIO`` times its size in members. Nothing is written to disk here.
"""

from __future__ import annotations

import io
import lzma
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dawsol.data.archives import MAX_RATIO, RATIO_FLOOR
from dawsol.errors import DawsolError
from dawsol.files import readable_size

AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60
DATA_TARS = ("data.tar", "data.tar.gz", "data.tar.xz", "data.tar.bz2")  # tarfile reads these; not data.tar.zst


@dataclass(frozen=True)
class ArMember:
    """One member of an ``ar`` archive: its name and where its bytes lie in the file."""

    name: str
    offset: int
    size: int


def _corrupt(deb: Path, why: str) -> DawsolError:
    return DawsolError(f"{deb}: not a readable .deb ({why}); delete it and re-download")


def ar_members(deb: Path) -> list[ArMember]:
    """The members of the ``ar`` archive ``deb``; DawsolError naming the file if it is no ``ar``
    archive, is truncated, or has a member whose name is not a plain file name."""
    total = deb.stat().st_size
    members = []
    with open(deb, "rb") as f:
        if f.read(len(AR_MAGIC)) != AR_MAGIC:
            raise _corrupt(deb, "no ar header")
        offset = len(AR_MAGIC)
        while offset < total:
            header = f.read(AR_HEADER)
            if len(header) < AR_HEADER or header[58:60] != b"`\n":
                raise _corrupt(deb, f"a bad or truncated member header at byte {offset}")
            name = header[:16].decode("ascii", "replace").rstrip(" ").removesuffix("/")
            size_field = header[48:58].decode("ascii", "replace").strip()
            if not size_field.isdigit():
                raise _corrupt(deb, f"member {name!r} has the size field {size_field!r}")
            size, start = int(size_field), offset + AR_HEADER
            if start + size > total:
                raise _corrupt(deb, f"member {name!r} needs {size} bytes from byte {start}, the file ends at {total}")
            if not name or "/" in name or "\\" in name or name in (".", ".."):
                raise DawsolError(f"{deb}: refusing ar member {name!r} (not a plain file name); is it the right file?")
            members.append(ArMember(name, start, size))
            offset = start + size + (size % 2)  # members are 2-byte aligned
            f.seek(offset)
    return members


class _Window(io.RawIOBase):
    """A read-only view of ``size`` bytes of a file from ``offset``: one ``ar`` member."""

    def __init__(self, handle: io.BufferedReader, offset: int, size: int) -> None:
        self.handle, self.offset, self.size, self.position = handle, offset, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.size - self.position)
        if count <= 0:
            return 0
        self.handle.seek(self.offset + self.position)
        data = self.handle.read(count)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def data_tar(deb: Path) -> ArMember:
    """The ``data.tar.*`` member of ``deb``; DawsolError if it has none, or one tarfile cannot read."""
    members = ar_members(deb)
    found = [m for m in members if m.name.startswith("data.tar")]
    if not found:
        raise _corrupt(deb, f"no data.tar member among {', '.join(m.name for m in members) or 'no members'}")
    if found[0].name not in DATA_TARS:
        raise DawsolError(f"{deb}: its {found[0].name} is compressed in a way this reader does not handle")
    return found[0]


def read_members(deb: Path, wanted: Mapping[str, int]) -> dict[str, bytes]:
    """The bytes of the ``data.tar`` members named in ``wanted`` (name -> expected size in bytes).

    Raises DawsolError naming the package and the member for: a member that is missing, not a
    regular file, has ``..`` or an absolute path, or differs from its expected size; a truncated or
    corrupt archive; an archive that declares more than ``MAX_RATIO`` times its own size.
    """
    member = data_tar(deb)
    found: dict[str, bytes] = {}
    declared = 0
    limit = max(RATIO_FLOOR, MAX_RATIO * deb.stat().st_size)
    try:
        with open(deb, "rb") as handle:
            window = io.BufferedReader(_Window(handle, member.offset, member.size), buffer_size=1 << 20)
            with tarfile.open(fileobj=window, mode="r|*") as tar:
                for info in tar:
                    declared += max(info.size, 0)
                    if declared > limit:
                        raise DawsolError(
                            f"{deb}: its {member.name} declares over {readable_size(limit)}; refusing a likely "
                            "decompression bomb: check that it is the right file"
                        )
                    if info.name not in wanted:
                        continue
                    path = PurePosixPath(info.name)
                    if path.is_absolute() or ".." in path.parts or not info.isfile():
                        raise DawsolError(
                            f"{deb}: refusing member {info.name!r} (not a regular file inside the package); "
                            "is it the right file?"
                        )
                    if info.size != wanted[info.name]:
                        raise DawsolError(
                            f"{deb}: member {info.name!r} is {info.size} bytes, the manifest says "
                            f"{wanted[info.name]}; is it the pinned version of the package?"
                        )
                    data = tar.extractfile(info)
                    found[info.name] = data.read() if data is not None else b""
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise DawsolError(f"{deb}: reading it failed ({exc})") from None
        raise _corrupt(deb, f"its {member.name} is truncated or corrupt: {exc}") from None
    missing = sorted(set(wanted) - set(found))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DawsolError(f"{deb}: member {missing[0]!r}{more} not found; is it the pinned version of the package?")
    return found
