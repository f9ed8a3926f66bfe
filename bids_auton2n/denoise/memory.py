"""Memory budget of the denoising of one image (``--mem-gb``): slab and tile sizes.

Without a budget every stage works on the whole volume (fastest). With one, the stages
whose working arrays grow with the volume work slab by slab along the first axis, each
slab read with a halo wide enough that the result is bit for bit the whole-volume result:
the synthetic pairs (:func:`~.pairs.synthetic_pair`), RI-NLM (:func:`~.rinlm.ri_nlm`),
the do-no-harm guard (:func:`~.guard.limit_residual`) and the collaborative Wiener stage
(:func:`~.wiener.collaborative_wiener`, whose accumulators are float64); the CNN's
sliding-window tiles are sized from the budget (:func:`cnn_tile`; its output then depends
on the tile size at the level of the Gaussian blending of overlapping tiles). A few
whole-volume arrays stay: the input, its finite copy, the masks, the CNN output and the
output
(:data:`RESIDENT_BYTES_PER_VOXEL`), and the process itself (:data:`PROCESS_BYTES`); the
working arrays get the rest of the budget.  The head mask, the noise estimate and the local
noise map read global statistics of the whole volume and are not tiled: a budget below
:func:`minimum_bytes` is exceeded (the run warns and goes on).

The setting is process-wide, like a thread count (:func:`set_memory_limit`; the
``bids_auton2n-denoise --mem-gb`` option and the app's nodes set it). It also decides what
the C allocator does with freed memory (:func:`keep_freed_memory`): without a budget the
process keeps it for the next arrays (fast, a higher peak), with one it goes back to the
system at once (the peak follows the budget). Bytes per voxel of
each stage were measured as peak RSS growth (``bids_auton2n-bench memory``).
"""

from __future__ import annotations

import ctypes
import logging
from contextlib import contextmanager

LOGGER = logging.getLogger("bids_auton2n.denoise")

#: The process before it reads an image (Python, torch, numba, Nipype): peak RSS measured
#: after the imports, ``bids_auton2n-bench memory`` ("imports").
PROCESS_BYTES = 550_000_000

#: Whole-volume arrays held while the tiled stages run, in bytes per voxel of the image:
#: input and finite copy (float32 each), non-finite and head masks (bool), the local noise
#: map and the voxels it was measured on, the CNN output (and its normalised input), the
#: stages' whole-volume outputs and the temporaries between them.  Measured as the peak RSS
#: of the RI-NLM stage less its slab working arrays on half of ``uih_T1w_sess1``
#: (80x460x512, 18.8 M voxels, spatially varying noise: the adaptive path, which holds the
#: most), ``bids_auton2n-bench memory --crop 80 460 512``: 74, with a margin.
RESIDENT_BYTES_PER_VOXEL = 76
#: Peak of the steps that work on the whole volume however small the budget (head mask,
#: noise estimate and local noise map: global statistics), in bytes per voxel, with what is
#: resident then; measured as above (the noise-map stage: 82).  With the process it is the
#: least a budget can hold (:func:`minimum_bytes`).
WHOLE_VOLUME_BYTES_PER_VOXEL = 85

#: Working bytes per voxel of a slab (halo included): peak RSS growth of one call on a
#: 48x256x256 volume, less its whole-volume output (counted as resident).
PAIRS_BYTES_PER_VOXEL = 30
RINLM_BYTES_PER_VOXEL = 40
GUARD_BYTES_PER_VOXEL = 48
WIENER_BYTES_PER_VOXEL = 24

#: Fewest planes a slab holds (besides its halo), however small the budget.
MIN_SLAB_PLANES = 8

_limit_bytes: int | None = None

# glibc's mallopt parameters and their defaults (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_keeping_freed_memory = False


def keep_freed_memory(keep: bool) -> bool:
    """Whether glibc's allocator keeps freed memory in the process for the next arrays.

    By default glibc serves every allocation above 128 KiB-32 MiB with a fresh ``mmap`` and
    unmaps it when freed, so each whole-volume array (the CNN allocates about 40 per pass,
    numpy a temporary per operation) is new memory, and every one of its pages is a page fault
    that the kernel zero-fills.  On a 181x217x181 head that was 36 s of system time in a
    114 s run (``bids_auton2n-bench speed``, a 2-core VM).  Keeping freed memory (no ``mmap``,
    no trimming) reuses it: 5 s of system time, at the price of a peak that holds the
    allocator's fragments as well (2.2 -> 2.7 GB on that head).  Returning it (glibc's
    defaults, then ``malloc_trim``) keeps the peak at what the arrays need.

    Parameters
    ----------
    keep : bool
        Keep freed memory (True) or return it to the system (False).

    Returns
    -------
    bool
        Whether the allocator was told (False where the C library is not glibc).
    """
    global _keeping_freed_memory
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator decides
        return False
    if keep:
        mallopt(_M_MMAP_MAX, 0)
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    elif _keeping_freed_memory:  # never told to keep: glibc's own (dynamic) defaults stay
        mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        malloc_trim(0)
    _keeping_freed_memory = keep
    return True


def set_memory_limit(gb: float | None) -> None:
    """Set the budget of one image's denoising, process-wide.

    Without a budget the process keeps freed memory for reuse, with one it returns it
    (:func:`keep_freed_memory`).

    Parameters
    ----------
    gb : float or None
        GB (10^9 bytes), > 0; ``None``: unlimited (every stage on the whole volume).
    """
    global _limit_bytes
    if gb is not None and not gb > 0:
        raise ValueError(f"memory limit must be > 0 GB, got {gb}")
    _limit_bytes = None if gb is None else int(gb * 1e9)
    keep_freed_memory(_limit_bytes is None)


def memory_limit_bytes() -> int | None:
    """The budget set by :func:`set_memory_limit`, in bytes (None: unlimited)."""
    return _limit_bytes


@contextmanager
def memory_limit(gb: float | None):
    """:func:`set_memory_limit` for the duration of a ``with`` block.

    Parameters
    ----------
    gb : float or None
        As for :func:`set_memory_limit`; the previous budget is restored on exit.
    """
    before = _limit_bytes
    set_memory_limit(gb)
    try:
        yield
    finally:
        globals()["_limit_bytes"] = before
        keep_freed_memory(before is None)


def working_bytes(n_voxels: int) -> int | None:
    """What the working arrays of one stage may take (bytes; None: no budget).

    Parameters
    ----------
    n_voxels : int
        Voxels of the image (its whole-volume arrays are taken off the budget first).
    """
    if _limit_bytes is None:
        return None
    return _limit_bytes - PROCESS_BYTES - RESIDENT_BYTES_PER_VOXEL * n_voxels


def minimum_bytes(n_voxels: int) -> int:
    """The smallest budget (bytes) under which an image of ``n_voxels`` voxels can run: the
    process and its whole-volume steps (:data:`WHOLE_VOLUME_BYTES_PER_VOXEL`).

    Parameters
    ----------
    n_voxels : int
        Voxels of the image.
    """
    return PROCESS_BYTES + WHOLE_VOLUME_BYTES_PER_VOXEL * int(n_voxels)


def warn_if_below_minimum(shape) -> None:
    """Log a warning when the budget is below :func:`minimum_bytes` of a volume of ``shape``
    (the run goes on, with the smallest slabs and tiles, and will exceed the budget).

    Parameters
    ----------
    shape : tuple of int
        Volume shape.
    """
    n_voxels = int(shape[0]) * int(shape[1]) * int(shape[2])
    if _limit_bytes is not None and _limit_bytes < minimum_bytes(n_voxels):
        LOGGER.warning("memory limit of %.2f GB is below the %.2f GB that the whole-volume "
                       "steps of a %s volume need: its peak will exceed the limit",
                       _limit_bytes / 1e9, minimum_bytes(n_voxels) / 1e9, "x".join(map(str, shape)))


def slab_planes(shape, *, bytes_per_voxel: int, halo: int, n_voxels: int | None = None) -> int | None:
    """Planes (along axis 0) per slab for a stage, or None when the whole volume fits.

    Parameters
    ----------
    shape : tuple of int
        Volume shape.
    bytes_per_voxel : int
        Working bytes per voxel of the stage on a slab (halo included).
    halo : int
        Planes read on each side of a slab.
    n_voxels : int, optional
        Voxels of the whole image (the resident arrays); default ``prod(shape)``.
    """
    n_planes, plane = shape[0], int(shape[1]) * int(shape[2])
    budget = working_bytes(n_voxels if n_voxels is not None else n_planes * plane)
    if budget is None or budget >= bytes_per_voxel * n_planes * plane:
        return None
    planes = int(budget // (bytes_per_voxel * plane)) - 2 * halo
    if planes < MIN_SLAB_PLANES:
        LOGGER.warning("memory limit of %.2f GB too small for a %s volume: slabs of %d planes "
                       "(the minimum) instead of %d", _limit_bytes / 1e9, "x".join(map(str, shape)),
                       MIN_SLAB_PLANES, max(planes, 0))
        planes = MIN_SLAB_PLANES
    return planes if planes < n_planes else None


def slabs(n_planes: int, planes: int | None, halo: int):
    """``(start, stop, read_start, read_stop)`` of each slab: the planes it writes and the
    planes it reads (``halo`` more on each side, clipped to the volume).

    Parameters
    ----------
    n_planes : int
        Planes of the volume along axis 0.
    planes : int or None
        Planes per slab (:func:`slab_planes`); None: one slab, the whole volume.
    halo : int
        Planes read on each side of a slab.
    """
    planes = planes or n_planes
    for start in range(0, n_planes, planes):
        stop = min(start + planes, n_planes)
        yield start, stop, max(start - halo, 0), min(stop + halo, n_planes)


#: Working bytes per voxel of a CNN tile (activations of the 16-channel network and their
#: bf16 copies, the tile's input and output): peak RSS growth of one 64^3 tile, bf16.
CNN_TILE_BYTES_PER_VOXEL = 380
#: Whole-crop arrays of the sliding window (input, flipped copy, output and count maps,
#: the experts' accumulated output), in bytes per voxel of the crop.
CNN_CROP_BYTES_PER_VOXEL = 20
#: Smallest tile edge: below 48, CPU convolutions leave oneDNN (docs/cnn-performance.md).
MIN_TILE_EDGE = 48


def cnn_tile(crop_shape, n_voxels: int) -> tuple[int, int, int] | None:
    """Sliding-window tile for a CNN crop under the budget, or None (no limit: default).

    Parameters
    ----------
    crop_shape : tuple of int
        The head's bounding box the network runs on.
    n_voxels : int
        Voxels of the whole image.
    """
    budget = working_bytes(n_voxels)
    if budget is None:
        return None
    crop_voxels = int(crop_shape[0]) * int(crop_shape[1]) * int(crop_shape[2])
    tile_voxels = (budget - CNN_CROP_BYTES_PER_VOXEL * crop_voxels) / CNN_TILE_BYTES_PER_VOXEL
    edge = int(max(tile_voxels, 0) ** (1 / 3))
    if edge < MIN_TILE_EDGE:
        LOGGER.warning("memory limit of %.2f GB too small for the CNN on a %s crop: tiles of "
                       "%d^3 voxels (the minimum)", _limit_bytes / 1e9,
                       "x".join(map(str, crop_shape)), MIN_TILE_EDGE)
        edge = MIN_TILE_EDGE
    return tuple(min(edge, int(s)) for s in crop_shape)
