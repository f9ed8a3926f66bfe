"""Rician bias of magnitude images: the mean of a Rician variable and its inverse.

A magnitude voxel ``M = |A + n1 + i n2|`` with ``n1, n2 ~ N(0, sigma)`` has the mean
(Gudbjartsson & Patz 1995, eq. 5; Koay & Basser 2006)::

    E[M] = sigma sqrt(pi / 2) L_1/2(-A^2 / (2 sigma^2))
    L_1/2(-t) = (1 + t) i0e(t / 2) + t i1e(t / 2)

with ``i0e``, ``i1e`` the exponentially scaled modified Bessel functions, so the mean is
``1.2533 sigma`` where there is no signal (background, air), ``~A + sigma^2 / (2 A)`` at
high SNR.  A denoiser that estimates the local mean of ``M`` (a CNN trained with zero-mean
noise does) therefore returns ``E[M]``, not ``A``: biased upward by up to ``1.25 sigma`` in the
background, dark CSF and low-signal coil regions.  :func:`rician_unbias` inverts the mean
(``A`` from ``E[M]``); RI-NLM corrects its own average by the second moment instead
(``E[M^2] = A^2 + 2 sigma^2``, :mod:`~bids_auton2n.denoise.rinlm`).

Where there is no signal at all the inverse is biased however good the estimate of the mean:
the answer cannot be negative, so any fluctuation of the estimate (or a noise sigma estimated
1 % low) leaves a positive mean of ~0.2-0.4 sigma.  :func:`rician_correct` therefore first
tests each voxel's neighbourhood of the *noisy* input for signal: without signal
``M^2 / (2 sigma^2)`` is exponential of mean 1, so its mean over the
``NOISE_ONLY_WINDOW^3`` voxels around exceeds ``1 + NOISE_ONLY_ERRORS / sqrt(n)`` with
probability ~1e-3 (independent noise); below that the voxel is noise only and its signal
is 0.  A signal adds ``A^2 / (2 sigma^2)`` to that mean: one of 1.5 sigma (1.125, seven
standard errors above the threshold) is always found, one of sigma in ~96 % of its voxels.

The correction is for low SNR: :func:`rician_correct` applies it in full where the
estimate is below ``FULL_CORRECTION_SNR`` sigma, not at all above ``NO_CORRECTION_SNR``
sigma, linearly in between.  Above SNR 5 the bias (``< 0.1 sigma``, ``sigma / (2 SNR)``) is
smaller than the denoiser's own error there, and high-SNR tissue is left exactly as the
denoiser made it.

The inverse is tabulated on ``A / sigma`` in ``[0, TABLE_END]`` (monotone, so linear
interpolation of the table is its inverse); beyond the table the high-SNR expansion
``A = sqrt(E[M]^2 - sigma^2)`` is used (error below 1e-4 sigma there); below
``sqrt(pi / 2) sigma`` (the mean of pure noise) the answer is 0.

References
----------
Gudbjartsson H, Patz S (1995). The Rician distribution of noisy MRI data. MRM 34:910-914.
Koay CG, Basser PJ (2006). Analytically exact correction scheme for signal extraction from
noisy magnitude MR signals. J Magn Reson 179:317-322.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi
from scipy import special

from . import memory

__all__ = ["correction_weight", "expected_bias", "noise_only", "rician_correct", "rician_mean",
           "rician_unbias"]

#: Largest SNR ``A / sigma`` of the inversion table (then the high-SNR expansion).
TABLE_END = 30.0
#: Table nodes: dense where the mean bends (low SNR).
_TABLE_NODES = 6000
#: SNR (estimate / sigma) up to which the Rician bias is corrected in full ...
FULL_CORRECTION_SNR = 2.5
#: ... and from which it is not corrected (linear in between).
NO_CORRECTION_SNR = 5.0
#: Edge (voxels) of the neighbourhood of the noise-only test (:func:`noise_only`).
NOISE_ONLY_WINDOW = 5
#: Standard errors of the window mean above 1 below which a neighbourhood holds noise only.
NOISE_ONLY_ERRORS = 3.0


#: Voxels per chunk of the voxelwise functions applied to whole volumes: their float64
#: temporaries then take a few MB instead of tens of bytes per voxel of the volume.
CHUNK_VOXELS = 1 << 20


def _chunks(shape):
    """Slices of consecutive planes (first axis) of about :data:`CHUNK_VOXELS` voxels
    (:func:`~.memory.slabs` without halo)."""
    planes = max(1, CHUNK_VOXELS // max(1, int(np.prod(shape[1:]))))
    return [slice(start, stop) for start, stop, _, _ in memory.slabs(shape[0], planes, 0)]


def _sigma_of(sigma, chunk):
    """The part of ``sigma`` (a value or a map) for the planes ``chunk``."""
    return sigma[chunk] if np.ndim(sigma) else sigma


def _check_sigma(sigma, shape, caller: str) -> np.ndarray:
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.ndim and sigma.shape != tuple(shape):
        raise ValueError(f"{caller}: sigma shape {sigma.shape} differs from image shape {tuple(shape)}")
    if not (np.isfinite(sigma).all() and (sigma >= 0).all()):
        raise ValueError(f"{caller}: sigma must be finite and >= 0")
    return sigma


def _mean_in_sigma_units(snr: np.ndarray) -> np.ndarray:
    """``E[M] / sigma`` for ``A / sigma = snr`` (closed form, stable for every SNR)."""
    t = 0.5 * np.square(snr)
    return np.sqrt(np.pi / 2.0) * ((1.0 + t) * special.i0e(t / 2.0) + t * special.i1e(t / 2.0))


@lru_cache(maxsize=1)
def _table() -> tuple[np.ndarray, np.ndarray]:
    snr = TABLE_END * np.linspace(0.0, 1.0, _TABLE_NODES) ** 2
    return _mean_in_sigma_units(snr), snr


def rician_mean(signal, sigma) -> np.ndarray:
    """Mean magnitude ``E[M]`` of Rician voxels of true signal ``signal``.

    Parameters
    ----------
    signal : array_like
        True (noise-free) magnitude ``A >= 0``, any shape.
    sigma : float or array_like
        Gaussian noise sigma of the real and imaginary channels; scalar or of
        ``signal``'s shape (a noise map).  ``sigma == 0`` gives ``signal``.

    Returns
    -------
    numpy.ndarray
        float64, ``signal``'s shape.
    """
    signal = np.abs(np.asarray(signal, dtype=np.float64))
    sigma = _check_sigma(sigma, signal.shape, "rician_mean")
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(sigma > 0, signal / np.where(sigma > 0, sigma, 1.0), 0.0)
    return np.where(sigma > 0, sigma * _mean_in_sigma_units(snr), signal)


def rician_unbias(mean, sigma) -> np.ndarray:
    """True signal ``A`` whose Rician mean is ``mean``: the inverse of :func:`rician_mean`.

    Parameters
    ----------
    mean : array_like
        Estimated local mean of the magnitude (e.g. a CNN output), any shape.
    sigma : float or array_like
        Noise sigma, scalar or of ``mean``'s shape.  Where it is 0, ``mean`` is returned.

    Returns
    -------
    numpy.ndarray
        float32, ``mean``'s shape: 0 where ``mean <= sqrt(pi / 2) sigma`` (no signal
        explains a lower mean), ``sqrt(mean^2 - sigma^2)`` beyond ``TABLE_END`` sigma.
    """
    mean = np.asarray(mean, dtype=np.float64)
    sigma = _check_sigma(sigma, mean.shape, "rician_unbias")
    means, snrs = _table()
    safe_sigma = np.where(sigma > 0, sigma, 1.0)
    ratio = mean / safe_sigma
    snr = np.interp(ratio, means, snrs, left=0.0, right=np.nan)
    snr = np.where(np.isfinite(snr), snr, np.sqrt(np.maximum(np.square(ratio) - 1.0, 0.0)))
    return np.where(sigma > 0, snr * safe_sigma, mean).astype(np.float32)


def noise_only(noisy, sigma, *, window: int = NOISE_ONLY_WINDOW) -> np.ndarray:
    """Voxels whose ``window^3`` neighbourhood of ``noisy`` holds noise and no signal.

    The test (see the module docstring): mean of ``noisy^2 / (2 sigma^2)`` over the window
    (borders: nearest voxel repeated) at most ``1 + NOISE_ONLY_ERRORS / sqrt(window^3)``.
    Correlated noise makes the window mean spread more, so more noise-only voxels fail the
    test and keep the inverse of :func:`rician_unbias`: the test errs towards signal.
    Voxels with ``sigma == 0`` are never noise only.
    """
    noisy = np.asarray(noisy)
    _check_sigma(sigma, noisy.shape, "noise_only")  # (its float64 copy is dropped here)
    second_moment = np.square(noisy, dtype=np.float64)
    ndi.uniform_filter(second_moment, size=window, mode="nearest", output=second_moment)
    result = np.empty(noisy.shape, dtype=bool)
    for chunk in _chunks(noisy.shape):
        part = np.asarray(_sigma_of(sigma, chunk), dtype=np.float64)
        limit = 2.0 * np.square(part) * (1.0 + NOISE_ONLY_ERRORS / np.sqrt(window**3))
        result[chunk] = (second_moment[chunk] <= limit) & (part > 0)
    return result


def correction_weight(estimate, sigma) -> np.ndarray:
    """Share of the Rician bias corrected at each voxel: 1 at low SNR, 0 at high SNR.

    1 where ``estimate / sigma <= FULL_CORRECTION_SNR``, 0 where it is at least
    ``NO_CORRECTION_SNR`` (and where ``sigma == 0``), linear in between; float32.
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    sigma = _check_sigma(sigma, estimate.shape, "correction_weight")
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(sigma > 0, estimate / np.where(sigma > 0, sigma, 1.0), np.inf)
    span = NO_CORRECTION_SNR - FULL_CORRECTION_SNR
    return np.clip((NO_CORRECTION_SNR - snr) / span, 0.0, 1.0).astype(np.float32)


def rician_correct(estimate, noisy, sigma) -> np.ndarray:
    """Rician-bias-corrected signal from an estimate of the local mean magnitude.

    ``estimate - w * (estimate - rician_unbias(estimate))`` with the low-SNR weight ``w`` of
    :func:`correction_weight` (so voxels above ``NO_CORRECTION_SNR`` are returned as they
    are), and 0 where :func:`noise_only` finds no signal in ``noisy`` (background, air).

    Parameters
    ----------
    estimate : array_like
        Local mean of the magnitude, e.g. the CNN output; 3D.
    noisy : array_like
        The noisy magnitude image, same shape (for the noise-only test).
    sigma : float or array_like
        Noise sigma, one value or a map.

    Returns
    -------
    numpy.ndarray
        float32.
    """
    estimate = np.asarray(estimate, dtype=np.float32)
    corrected = np.empty(estimate.shape, dtype=np.float32)
    for chunk in _chunks(estimate.shape):  # voxelwise: the same values as on the whole volume
        part, part_sigma = estimate[chunk], _sigma_of(sigma, chunk)
        weight = correction_weight(part, part_sigma)
        corrected[chunk] = part - weight * (part - rician_unbias(part, part_sigma))
    corrected[noise_only(noisy, sigma)] = 0.0
    return corrected


def expected_bias(signal, sigma) -> np.ndarray:
    """What :func:`rician_correct` takes away at true signal ``signal``: its weighted bias.

    ``correction_weight * (E[M] - A)``, float32.  The do-no-harm guard subtracts it from the
    noisy input before comparing the residual with the noise (a bias-corrected output's
    residual holds the bias, which the noise explains, not structure).
    """
    signal = np.asarray(signal)
    result = np.empty(signal.shape, dtype=np.float32)
    for chunk in _chunks(signal.shape):  # voxelwise: the same values as on the whole volume
        part, part_sigma = np.asarray(signal[chunk], dtype=np.float64), _sigma_of(sigma, chunk)
        mean = rician_mean(part, part_sigma)
        result[chunk] = correction_weight(mean, part_sigma) * (mean - np.abs(part))
    return result
