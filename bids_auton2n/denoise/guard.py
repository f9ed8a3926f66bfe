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
from scipy import ndimage as ndi

from ._checks import real_volume

#: Largest local RMS of the removed residual, in units of the noise sigma.
MAX_RESIDUAL_RMS = 1.5
#: Edge length (voxels) of the cubic window of the local RMS.
RESIDUAL_WINDOW = 3


def limit_residual(noisy: np.ndarray, denoised: np.ndarray, sigma, *,
                   max_rms: float = MAX_RESIDUAL_RMS, window: int = RESIDUAL_WINDOW) -> np.ndarray:
    """Scale the residual ``noisy - denoised`` down where it is locally larger than noise.

    Parameters
    ----------
    noisy : numpy.ndarray
        Finite 3D input of the denoiser.
    denoised : numpy.ndarray
        Its output, same shape.
    sigma : float or numpy.ndarray
        Noise standard deviation in image units (``>= 0``): one value, or a map of the
        volume's shape (spatially varying noise): each voxel's residual is then limited by
        its own ``max_rms * sigma``.
    max_rms : float
        Largest allowed local RMS of the residual, in units of ``sigma``.
    window : int
        Edge of the cubic window of the local RMS (borders: nearest voxel repeated).

    Returns
    -------
    numpy.ndarray
        ``noisy - s * (noisy - denoised)`` with ``s = min(1, max_rms * sigma / local RMS)``,
        float32.

    Raises
    ------
    ValueError
        Non-3D or non-finite volumes, different shapes, negative or non-finite ``sigma``
        (in any voxel of a map), non-positive ``max_rms`` or ``window``.
    """
    noisy = real_volume(noisy, "limit_residual: noisy").astype(np.float32, copy=False)
    denoised = real_volume(denoised, "limit_residual: denoised").astype(np.float32, copy=False)
    if noisy.shape != denoised.shape:
        raise ValueError(f"limit_residual: shapes differ, {noisy.shape} and {denoised.shape}")
    if np.ndim(sigma) == 0:
        if not (np.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"limit_residual: sigma must be finite and >= 0, got {sigma}")
    else:
        sigma = real_volume(sigma, "limit_residual", "sigma", shape=noisy.shape, finite=False)
        if not (np.isfinite(sigma).all() and (sigma >= 0).all()):
            raise ValueError("limit_residual: sigma must be finite and >= 0 in every voxel")
    if not (max_rms > 0 and window >= 1):
        raise ValueError(f"limit_residual: max_rms and window must be positive, got {max_rms}, {window}")
    residual = noisy - denoised
    # The filter's running sums can leave tiny negative means where the residual is ~0.
    local_rms = np.sqrt(np.maximum(
        ndi.uniform_filter(residual * residual, size=window, mode="nearest"), 0.0))
    allowed = np.broadcast_to(np.asarray(max_rms * sigma, dtype=np.float32), residual.shape)
    scale = np.ones_like(residual)
    over = local_rms > allowed
    scale[over] = allowed[over] / local_rms[over]
    return noisy - scale * residual
