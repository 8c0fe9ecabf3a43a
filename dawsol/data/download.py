"""Downloading one file over HTTP(S): resume with Range, bounded retries, progress, verification.

``download`` fetches via ``<file>.part`` and resumes it after an interruption; ``verify_file``
checks a ``Remote``'s published checksum (or size) before the file is used.
"""

from __future__ import annotations

import http.client
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from dawsol.errors import DawsolError
from dawsol.files import CHUNK, file_digest, readable_size

log = logging.getLogger(__name__)

RETRY_WAIT_S = 2.0  # before the first retry of a download; doubles per retry (5 retries: 2, 4, 8, 16, 32 s)
MAX_RETRY_WAIT_S = 120.0
RETRY_HTTP_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})  # other HTTP errors are no passing failure


@dataclass(frozen=True)
class Remote:
    """One archive: where to get it (empty ``url``: manual only) and how to check it."""

    filename: str
    url: str = ""
    checksum: str = ""  # "md5:<hex>" or "sha256:<hex>"; empty: check size only
    size: int | None = None
    manual: str = ""  # what to do when it must be supplied by hand ({name}, {downloads})


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
                "%s: %s of %s (%d%%)",
                self.name,
                readable_size(self.done),
                readable_size(self.total),
                100 * self.done // self.total,
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
