"""MRIQC-style image-quality metrics for the group table (before vs after denoising).

Definitions follow MRIQC's structural IQMs [1]_ (``mriqc.qc.anatomical``):

* ``snr``: mean over CSF, GM and WM of ``mu_t / (sigma_t * sqrt(n_t / (n_t - 1)))``
  (MRIQC's ``snr_total``);
* ``cnr``: ``|mu_WM - mu_GM| / sqrt(sigma_air^2 + sigma_WM^2 + sigma_GM^2)``;
* ``cjv``: ``(sigma_WM + sigma_GM) / |mu_WM - mu_GM|`` (lower is better);
* ``fwhm``: smoothness in mm, geometric mean over axes of AFNI's classic ``3dFWHMx``
  estimate ``dx * sqrt(-2 ln 2 / ln(1 - var(diff) / (2 var)))`` [2]_ inside the head mask.
  Denoising raises it; a large rise exposes over-smoothing.

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

#: Intensity order (dark → bright) of CSF, GM and WM classes by contrast.
TISSUE_ORDER = {
    "T1w": ("csf", "gm", "wm"),
    "T2w": ("wm", "gm", "csf"),
    "PDw": ("wm", "gm", "csf"),
    "FLAIR": ("csf", "wm", "gm"),
}


def kmeans_1d(values: np.ndarray, k: int = 3, iterations: int = 30) -> np.ndarray:
    """Class centres (sorted) of a 1D k-means started at evenly spaced percentiles."""
    centres = np.percentile(values, np.linspace(100 / (2 * k), 100 - 100 / (2 * k), k))
    for _ in range(iterations):
        labels = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        updated = np.array([values[labels == c].mean() if np.any(labels == c) else centres[c]
                            for c in range(k)])
        if np.allclose(updated, centres):
            break
        centres = updated
    return np.sort(centres)


def tissue_masks(reference: np.ndarray, head: np.ndarray, contrast: str) -> dict[str, np.ndarray]:
    """CSF/GM/WM masks (eroded by one voxel against partial volume) and the air mask."""
    centres = kmeans_1d(reference[head].astype(np.float64))
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

    Returns a flat dict with ``<metric>_before`` and ``<metric>_after`` keys.
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
    return out


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
