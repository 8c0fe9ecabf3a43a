"""dawsol: DA-WSOL (CVPR 2022) as a reproducible WSOL pipeline."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dawsol")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
