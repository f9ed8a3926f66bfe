"""Do-no-harm guard: a denoiser may only remove, locally, what noise can explain.

The method noise of a denoiser, input minus output (Buades et al. 2005), should
look like the noise it removed: over a small window its RMS is about ``sigma``.
Where it is much larger the denoiser took away structure, not noise (an edge,
a thin vessel, the high-contrast scalp of a full-head image that no training
scan resembled).  There the residual is scaled down until its local RMS is
:data:`MAX_RESIDUAL_RMS` times ``sigma``, and the rest is given back to the
image.  For white Gaussian noise the RMS over 27 voxels exceeds 1.5 ``sigma``
with probability below 1e-3 (chi-square with 27 degrees of freedom), so a
denoiser that only removes noise is left untouched; a clean image
(``sigma`` near 0) comes out nearly unchanged whatever the network does.

References
----------
.. [1] Buades A, Coll B, Morel JM (2005). A review of image denoising
   algorithms, with a new one. Multiscale Model Simul 4:490-530 (method noise).
"""

from __future__ import annotations

import numpy as np

from . import memory
from ._checks import real_volume

#: Largest local RMS of the removed residual, in units of the noise sigma.
MAX_RESIDUAL_RMS = 1.5
#: Edge length (voxels) of the cubic window of the local RMS.
RESIDUAL_WINDOW = 3


def limit_residual(noisy: np.ndarray, denoised: np.ndarray, sigma: float, *,
                   max_rms: float = MAX_RESIDUAL_RMS, window: int = RESIDUAL_WINDOW,
                   slab_planes: int | None = None) -> np.ndarray:
    """Scale the residual ``noisy - denoised`` down where it is locally larger than noise.

    Parameters
    ----------
    noisy : numpy.ndarray
        Finite 3D input of the denoiser.
    denoised : numpy.ndarray
        Its output, same shape.
    sigma : float
        Noise standard deviation in image units (``>= 0``).
    max_rms : float
        Largest allowed local RMS of the residual, in units of ``sigma``.
    window : int
        Edge of the cubic window of the local RMS (borders: nearest voxel repeated).
    slab_planes : int, optional
        Work on slabs of this many planes along axis 0 (read with a halo of
        ``window // 2`` planes); the result is identical. Default: from the memory budget
        (:mod:`~bids_auton2n.denoise.memory`), the whole volume without one.

    Returns
    -------
    numpy.ndarray
        ``noisy - s * (noisy - denoised)`` with ``s = min(1, max_rms * sigma / local RMS)``,
        float32.

    Raises
    ------
    ValueError
        Non-3D or non-finite volumes, different shapes, negative or non-finite ``sigma``,
        non-positive ``max_rms`` or ``window``.

    Notes
    -----
    The local mean square is the float64 sum of the ``window**3`` squared residuals in a
    fixed order (along the last axis, then the middle, then the first), divided by
    ``window**3``: the same number for a voxel whatever slab it is computed in (a running
    sum, as ``scipy.ndimage.uniform_filter`` keeps, would depend on where its line starts).
    """
    noisy = real_volume(noisy, "limit_residual: noisy").astype(np.float32, copy=False)
    denoised = real_volume(denoised, "limit_residual: denoised").astype(np.float32, copy=False)
    if noisy.shape != denoised.shape:
        raise ValueError(f"limit_residual: shapes differ, {noisy.shape} and {denoised.shape}")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"limit_residual: sigma must be finite and >= 0, got {sigma}")
    if not (max_rms > 0 and window >= 1):
        raise ValueError(f"limit_residual: max_rms and window must be positive, got {max_rms}, {window}")
    window = int(window)
    halo = window // 2
    if slab_planes is None:
        slab_planes = memory.slab_planes(noisy.shape, bytes_per_voxel=memory.GUARD_BYTES_PER_VOXEL,
                                         halo=halo)
    allowed = np.float32(max_rms * sigma)
    output = np.empty_like(noisy)
    for start, stop, read_start, read_stop in memory.slabs(noisy.shape[0], slab_planes, halo):
        residual = noisy[read_start:read_stop] - denoised[read_start:read_stop]
        local_rms = np.sqrt(_local_mean_square(residual, start - read_start, stop - read_start,
                                               window)).astype(np.float32)
        core = residual[start - read_start:stop - read_start]
        scale = np.ones_like(core)
        over = local_rms > allowed
        scale[over] = allowed / local_rms[over]
        output[start:stop] = noisy[start:stop] - scale * core
    return output


def _local_mean_square(residual: np.ndarray, start: int, stop: int, window: int) -> np.ndarray:
    """Mean of ``residual**2`` over the ``window``-cube of each voxel of planes
    ``[start, stop)``, edges repeating the nearest voxel; ``residual`` holds those planes and
    ``window // 2`` more on each side where the volume has them (see :func:`limit_residual`)."""
    before, after = window // 2, window - 1 - window // 2
    squared = np.square(residual, dtype=np.float64)
    padded = np.pad(squared, ((0, 0), (before, after), (before, after)), mode="edge")
    ny, nx = residual.shape[1:]
    along_x = padded[:, :, 0:nx].copy()
    for offset in range(1, window):
        along_x += padded[:, :, offset:offset + nx]
    along_y = along_x[:, 0:ny].copy()
    for offset in range(1, window):
        along_y += along_x[:, offset:offset + ny]
    # the slab's first/last plane stand for the volume's edge where no halo was read
    planes = np.clip(np.arange(start, stop)[:, None] + np.arange(-before, after + 1), 0,
                     residual.shape[0] - 1)
    total = along_y[planes[:, 0]].copy()
    for offset in range(1, window):
        total += along_y[planes[:, offset]]
    return total / window**3
