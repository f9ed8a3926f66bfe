"""Thread control of the compute libraries (torch and numba), in one place."""

from __future__ import annotations


def set_threads(threads: int | None) -> None:
    """Limit torch's intra-op threads and numba's parallel threads to ``threads``.

    Parameters
    ----------
    threads : int or None
        Number of threads (at least 1); ``None`` leaves both libraries as they are. numba
        cannot exceed the pool it started with (``NUMBA_NUM_THREADS``), so it gets the smaller
        of the two.
    """
    if threads is None:
        return
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import numba
    import torch

    torch.set_num_threads(int(threads))
    numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))
