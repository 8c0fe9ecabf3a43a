"""Files as bytes: their digests and readable sizes (one helper each for the whole package)."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def readable_size(n: float) -> str:
    """``n`` bytes in readable units ("1000 bytes", "8.0 MiB")."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n, k = n / 1024, k + 1
    return f"{n:.0f} bytes" if k == 0 else f"{n:.1f} {units[k]}"


def folder_digests(folder: Path) -> dict[str, str]:
    """The sha256 of every file directly inside ``folder``, by file name (sorted)."""
    return {path.name: file_digest(path) for path in sorted(folder.iterdir()) if path.is_file()}
