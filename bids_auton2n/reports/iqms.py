"""MRIQC-style image-quality metrics for the group table (before vs after denoising).

Definitions follow MRIQC's structural IQMs [1]_ (``mriqc.qc.anatomical``):

* ``snr``: mean over CSF, GM and WM of ``mu_t / (sigma_t * sqrt(n_t / (n_t - 1)))``
  (MRIQC's ``snr_total``);
* ``cnr``: ``|mu_WM - mu_GM| / sqrt(sigma_air^2 + sigma_WM^2 + sigma_GM^2)``;
* ``cjv``: ``(sigma_WM + sigma_GM) / |mu_WM - mu_GM|`` (lower is better);
* ``fwhm``: smoothness in mm, geometric mean over axes of AFNI's classic ``3dFWHMx``
  estimate ``dx * sqrt(-2 ln 2 / ln(1 - var(diff) / (2 var)))`` [2]_ inside the head mask.
  Denoising raises it; a large rise exposes over-smoothing.

and one measure of our own, ``structure_removed`` (:func:`structure_removed`): the
correlation, inside the head, between the local RMS of the residual (input minus output)
and the gradient magnitude of the input (lightly smoothed). A denoiser that removed only
noise leaves a residual whose local magnitude does not follow the anatomy's edges (near 0);
one that removed structure leaves edges in the residual (positive, towards 1).
:data:`STRUCTURE_REMOVED_FLAG` is the value above which an image is flagged.

MRIQC segments tissues with FSL FAST; here the tissue classes come from a 3-class 1D
k-means of head-mask intensities of the *denoised* image (the same classes are used for
the image before and after, so the two columns are comparable). This is an approximation
of MRIQC's numbers, meant for comparing images within a dataset.

References
----------
.. [1] Esteban O. et al. MRIQC: Advancing the automatic prediction of image quality in MRI
   from unseen sites. PLoS ONE 12(9):e0184661, 2017.
.. [2] Forman S.D. et al. Improved assessment of significant activation in functional
   magnetic resonance imaging (fMRI): use of a cluster-size threshold. Magn Reson Med
   33:636-647, 1995.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..denoise.noise import kmeans_1d

#: Intensity order (dark → bright) of CSF, GM and WM classes by contrast.
TISSUE_ORDER = {
    "T1w": ("csf", "gm", "wm"),
    "T2w": ("wm", "gm", "csf"),
    "PDw": ("wm", "gm", "csf"),
    "FLAIR": ("csf", "wm", "gm"),
}


def tissue_masks(reference: np.ndarray, head: np.ndarray, contrast: str) -> dict[str, np.ndarray]:
    """CSF/GM/WM masks (eroded by one voxel against partial volume) and the air mask."""
    values = reference[head].astype(np.float64)
    # Started at evenly spaced percentiles; 30 iterations are plenty for a report's masks.
    centres = kmeans_1d(values, np.percentile(values, np.linspace(100 / 6, 500 / 6, 3)), iterations=30)
    labels = np.argmin(np.abs(reference[..., None] - centres), axis=-1)
    masks = {}
    for index, tissue in enumerate(TISSUE_ORDER[contrast]):
        mask = head & (labels == index)
        eroded = ndimage.binary_erosion(mask)
        masks[tissue] = eroded if eroded.sum() >= 10 else mask
    masks["air"] = ~ndimage.binary_dilation(head, iterations=2)
    return masks


def _snr(values: np.ndarray) -> float:
    n = values.size
    if n < 2:
        return float("nan")
    std = values.std() * np.sqrt(n / (n - 1))
    return float(values.mean() / std) if std > 0 else float("inf")


def fwhm_mm(image: np.ndarray, mask: np.ndarray, zooms) -> float:
    """Geometric-mean FWHM (mm) over axes, AFNI's classic first-difference estimator."""
    values = image[mask].astype(np.float64)
    variance = values.var()
    if variance <= 0:
        return float("nan")
    fwhms = []
    for axis, size in enumerate(zooms[:3]):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        pair = mask[tuple(lo)] & mask[tuple(hi)]
        diff = (image[tuple(hi)] - image[tuple(lo)])[pair].astype(np.float64)
        ratio = 1.0 - diff.var() / (2.0 * variance)
        if not 0.0 < ratio < 1.0:
            return float("nan")
        fwhms.append(size * np.sqrt(-2.0 * np.log(2.0) / np.log(ratio)))
    return float(np.prod(fwhms) ** (1.0 / len(fwhms)))


def image_iqms(image: np.ndarray, masks: dict[str, np.ndarray], head: np.ndarray, zooms) -> dict:
    """SNR, CNR, CJV and FWHM of ``image`` given tissue masks."""
    stats = {t: (float(image[m].mean()), float(image[m].std())) if m.any() else (np.nan, np.nan)
             for t, m in masks.items()}
    (mu_wm, sd_wm), (mu_gm, sd_gm), (_, sd_air) = stats["wm"], stats["gm"], stats["air"]
    contrast = abs(mu_wm - mu_gm)
    return {
        "snr": float(np.nanmean([_snr(image[masks[t]]) for t in ("csf", "gm", "wm")])),
        "cnr": float(contrast / np.sqrt(sd_air**2 + sd_wm**2 + sd_gm**2)),
        "cjv": float((sd_wm + sd_gm) / contrast) if contrast > 0 else float("nan"),
        "fwhm": fwhm_mm(image, head, zooms),
    }


def compare_iqms(before: np.ndarray, after: np.ndarray, *, contrast: str, zooms) -> dict:
    """IQMs before and after denoising, on tissue classes of the denoised image.

    Returns a flat dict with ``<metric>_before`` and ``<metric>_after`` keys, and
    ``structure_removed`` (:func:`structure_removed`, on the same head mask).
    """
    from ..denoise.noise import head_mask

    before = np.nan_to_num(np.asarray(before, dtype=np.float32))
    after = np.nan_to_num(np.asarray(after, dtype=np.float32))
    head = head_mask(after)
    masks = tissue_masks(after, head, contrast)
    out = {}
    for label, image in (("before", before), ("after", after)):
        for metric, value in image_iqms(image, masks, head, zooms).items():
            out[f"{metric}_{label}"] = value
    out["structure_removed"] = structure_removed(before, after, head)
    return out


#: ``structure_removed`` above which an image is flagged in the reports and the group table.
#: Chosen on generated images and real scans with simulated noise (not on templates), see
#: ``benchmarks/results/structure_removed_threshold.md``
#: (``bids_auton2n-bench structure-threshold``): outputs where only noise went, and
#: our pipeline's, reach 0.105 there; a Gaussian over-smoothing of 1-2 voxels at least 0.19.
#: On the held-out philips scan: ours 0.08-0.10, over-smoothed 0.65 and more.
STRUCTURE_REMOVED_FLAG = 0.15


def structure_removed(noisy: np.ndarray, denoised: np.ndarray, mask: np.ndarray, *,
                      size: int = 3, smoothing: float = 1.0) -> float:
    """How much the residual follows the image's edges: 0 when only noise went.

    Parameters
    ----------
    noisy, denoised : ndarray, 3D
        Input and output of the denoiser (image units).
    mask : ndarray of bool
        Head mask; the measure uses it eroded by one voxel (the head's outline is an edge
        that every residual of a masked image touches).
    size : int
        Edge of the cube over which the residual's local RMS is taken.
    smoothing : float
        Gaussian sigma (voxels) applied to the input before its gradient is taken, so that
        the edges come from the anatomy rather than from the noise.

    Returns
    -------
    float
        Pearson correlation, inside the eroded mask, of ``sqrt(mean_cube((x - y)**2))`` with
        ``|grad G * x|``; ``nan`` when either is constant there (e.g. nothing was removed).

    Notes
    -----
    The edges are those of the input, not of the output: a denoiser that smooths heavily
    also removes its output's edges, which would then no longer show where structure went.
    """
    noisy = np.asarray(noisy, dtype=np.float64)
    denoised = np.asarray(denoised, dtype=np.float64)
    inside = ndimage.binary_erosion(np.asarray(mask, dtype=bool))
    if inside.sum() < 10:
        return float("nan")
    residual = np.nan_to_num(noisy - denoised)
    local_rms = np.sqrt(np.maximum(ndimage.uniform_filter(residual**2, size=size), 0.0))
    smoothed = ndimage.gaussian_filter(np.nan_to_num(noisy), smoothing)
    gradient = np.sqrt(sum(g**2 for g in np.gradient(smoothed)))
    a, b = local_rms[inside], gradient[inside]
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def robust_z(values) -> np.ndarray:
    """``(x - median) / (1.4826 MAD)``; zeros when the MAD vanishes."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if finite.sum() < 3:
        return np.zeros_like(values)
    median = np.median(values[finite])
    mad = 1.4826 * np.median(np.abs(values[finite] - median))
    if mad == 0:
        return np.zeros_like(values)
    return (values - median) / mad
