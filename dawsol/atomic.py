"""Atomic file writes: a temporary file in the same folder, then an atomic rename.

``staged()`` groups the writes of one command (``dawsol evaluate``'s cell outputs, ``dawsol
report``'s tables and figures): each is written beside its path and all are renamed at the end,
so a failure before then (a bad device, a full disk, a kill) leaves every old output as it was.
A full disk is a ``DawsolError`` naming the path (``write_errors_named``).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from dawsol.errors import DawsolError

# errors of a full disk or an exhausted quota: named, with the free space, instead of a traceback
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

# (final path, temporary path) of the writes of the innermost ``staged()`` block, renamed when it ends
_staged: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar("staged", default=None)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def free_space(folder: Path) -> str:
    """The free space of ``folder``'s file system (of its nearest existing parent), e.g. ``"1.2 MiB"``."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown space"
    return f"{free / 1024**2:.1f} MiB"


# what the system says of a path it refused, with what to do
_FILESYSTEM_HINTS = {
    errno.EACCES: "no permission: make it writable or choose another place",
    errno.EPERM: "not permitted: make it writable or choose another place",
    errno.EROFS: "a read-only file system: choose a writable place",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way of a folder",
    errno.EISDIR: "a folder is in the way of a file",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ENOSPC: "no space left: free some and re-run the same command",
    errno.EDQUOT: "disk quota exceeded: free some and re-run the same command",
}


def filesystem_error(exc: OSError) -> DawsolError | None:
    """A filesystem fault that names its path (a read-only or unwritable folder, a file in the way) as one line;
    None for any other OSError."""
    if exc.filename is None or exc.errno not in _FILESYSTEM_HINTS:
        return None
    path = Path(os.fsdecode(exc.filename))
    if path.name.startswith(".") and path.name.endswith(".tmp"):  # an atomic write's temporary file: name its target
        path = path.parent
    return DawsolError(f"{path}: {_FILESYSTEM_HINTS[exc.errno]} ({exc.strerror})")


def write_failed(path: Path, reason: str) -> DawsolError:
    """The one-line error of a write to ``path`` that failed for want of space (``reason``: the system's words)."""
    return DawsolError(
        f"{path}: could not be written ({reason}; {free_space(path.parent)} free in {path.parent}); "
        "free space there and re-run the same command (what was written before is kept)"
    )


def _short_write(exc: OSError) -> bool:
    """numpy's ``tofile`` on a full disk: ``OSError("1024 requested and 1008 written")``, without an errno."""
    return exc.errno is None and " requested and " in str(exc) and str(exc).endswith(" written")


@contextlib.contextmanager
def write_errors_named(path: Path) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT, a short write) while writing ``path`` into a one-line ``DawsolError``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise write_failed(path, os.strerror(exc.errno)) from None
        if _short_write(exc):
            raise write_failed(path, str(exc)) from None
        raise


def leftovers(path: Path) -> list[Path]:
    """The temporary files of writes of ``path`` that were killed before their rename."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []


def remove_leftovers(paths: Iterable[Path]) -> None:
    """Remove what killed writes of ``paths`` left (only their own temporary files, never the paths)."""
    for path in paths:
        for leftover in leftovers(Path(path)):
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched. Inside a
    ``staged()`` block the rename waits for the end of the block.
    """
    path = Path(path)
    with write_errors_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        pending = _staged.get()
        try:
            yield tmp_path
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
            if pending is None:
                os.replace(tmp_path, path)
            else:
                _stage(pending, path, tmp_path)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        finally:
            if pending is None:
                tmp_path.unlink(missing_ok=True)


def _stage(pending: list[tuple[Path, Path]], path: Path, tmp: Path) -> None:
    """Queue ``tmp`` to become ``path``; a second write of ``path`` in the block replaces the first."""
    for index, (queued, earlier) in enumerate(pending):
        if queued == path:
            earlier.unlink(missing_ok=True)
            pending[index] = (path, tmp)
            return
    pending.append((path, tmp))


@contextlib.contextmanager
def staged(mark: Path | None = None) -> Iterator[None]:
    """Hold back the renames of every atomic write in the block until it ends without an exception.

    Then all are renamed in the order written; ``mark`` (the file whose presence says the set is
    complete, e.g. a cell's ``metrics.json``) is removed before the first rename and renamed
    last, so a kill during the renames never leaves an old mark beside new files. On an
    exception nothing is renamed and the temporary files are removed. A block inside another
    joins the outer one.
    """
    if _staged.get() is not None:
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _staged.set(pending)
    try:
        yield
    except BaseException:
        for _, tmp in pending:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _staged.reset(token)
    mark = Path(mark) if mark is not None else None
    try:
        if mark is not None and any(path == mark for path, _ in pending):
            mark.unlink(missing_ok=True)
        for path, tmp in sorted(pending, key=lambda entry: entry[0] == mark):
            os.replace(tmp, path)
    finally:
        for _, tmp in pending:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def unstaged() -> Iterator[None]:
    """Inside a ``staged()`` block, rename the writes of this block at once: for a cache (e.g. the report's
    baselines) that a later failure of the block must not discard."""
    token = _staged.set(None)
    try:
        yield
    finally:
        _staged.reset(token)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8, no newline translation) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
