"""The CPU thread count of a command: dawsol's setting (``train.threads``), not the launcher's environment.

On the CPU the number of threads splits torch's reductions and so decides the floating-point order
of a cell's sums: Snakemake pins ``OMP_NUM_THREADS`` to a job's threads, DVC's stages inherit the
shell's, and the same cell gave other metrics under each (docs/architecture.md, "Conventions").
The commands that compute a cell's numbers apply the cell's setting themselves, first thing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# read by OpenMP, MKL, OpenBLAS (numpy's and torch's) when they load, and inherited by child processes
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def use_threads(threads: int) -> None:
    """Run this process's (and its children's) CPU kernels on ``threads`` threads, whatever the launcher set.

    The variables are set before torch, numpy and OpenCV are imported here, so their OpenMP and
    BLAS runtimes start with the count; torch's intra-op count (the one that splits reductions)
    is set explicitly as well, for a process that imported torch already. Torch's inter-op pool
    can be sized only before its first use: a process that used it keeps it (it runs independent
    operators side by side and splits no sum).
    """
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    import cv2  # after the variables: the runtimes read them when they load
    import torch

    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            log.debug("torch's inter-op pool is in use already; it keeps %d threads", torch.get_num_interop_threads())
    cv2.setNumThreads(threads)


@contextmanager
def pinned_threads(
    get_threads: Callable[[], int], set_threads: Callable[[int], None], threads: int = 1
) -> Iterator[None]:
    """Run the block with a thread pool at ``threads`` (``set_threads``: torch's or OpenCV's setter), then give it
    back the count ``get_threads`` read before, whatever the block raised."""
    before = get_threads()
    set_threads(threads)
    try:
        yield
    finally:
        set_threads(before)
