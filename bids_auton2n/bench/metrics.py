"""Image-quality measures of the benchmark (full-reference and no-reference).

References
----------
.. [1] Wang Z. et al. (2004) Image quality assessment: from error visibility to structural
   similarity. IEEE TIP 13(4):600-612 (SSIM).
.. [2] Buades A., Coll B., Morel J.M. (2005) A review of image denoising algorithms, with a new
   one. Multiscale Model Simul 4(2):490-530 ("method noise": the residual should hold no
   structure).
.. [3] Manjón J.V. et al. (2012) New methods for MRI denoising based on sparseness and
   self-similarity. Med Image Anal 16:18-27 (PSNR convention of their demos: 8-bit range,
   voxels whose truth exceeds 10).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Tissue order by intensity (dark to bright) for the k-means labels, per contrast.
TISSUE_ORDER = {"T1w": ("CSF", "GM", "WM"), "T2w": ("WM", "GM", "CSF")}
TISSUE_LABEL = {"CSF": 1, "GM": 2, "WM": 3}


def psnr(truth: np.ndarray, estimate: np.ndarray, mask: np.ndarray, peak: float) -> float:
    """Peak signal-to-noise ratio (dB) over ``mask``; ``inf`` for a perfect estimate."""
    mse = float(np.mean((estimate[mask].astype(np.float64) - truth[mask]) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def ssim(truth: np.ndarray, estimate: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """Mean 3D SSIM (Gaussian window, sigma 1.5, Wang et al. constants) over ``mask``."""
    from skimage.metrics import structural_similarity

    _, ssim_map = structural_similarity(truth, estimate, data_range=data_range, gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=False, full=True)
    return float(np.mean(ssim_map[mask]))


def kmeans_tissues(image: np.ndarray, brain_mask: np.ndarray, contrast: str) -> np.ndarray:
    """3-class k-means of the brain intensities; labels 1 CSF, 2 GM, 3 WM (0 outside the brain).

    Deterministic: clusters start at the 1/6, 1/2 and 5/6 intensity quantiles.
    """
    from sklearn.cluster import KMeans

    values = image[brain_mask].astype(np.float64).reshape(-1, 1)
    start = np.quantile(values, [1 / 6, 1 / 2, 5 / 6]).reshape(-1, 1)
    kmeans = KMeans(n_clusters=3, init=start, n_init=1, random_state=0).fit(values)
    rank = np.argsort(np.argsort(kmeans.cluster_centers_.ravel()))
    tissue_of_rank = [TISSUE_LABEL[t] for t in TISSUE_ORDER[contrast]]
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[brain_mask] = np.asarray(tissue_of_rank, dtype=np.uint8)[rank[kmeans.labels_]]
    return labels


def dice_scores(labels: np.ndarray, truth: np.ndarray, brain_mask: np.ndarray) -> dict[str, float]:
    """Dice per tissue inside ``brain_mask`` and their mean (``mean``)."""
    scores = {}
    for name, value in TISSUE_LABEL.items():
        a = (labels == value) & brain_mask
        b = (truth == value) & brain_mask
        total = a.sum() + b.sum()
        scores[name] = float(2 * (a & b).sum() / total) if total else float("nan")
    scores["mean"] = float(np.mean([scores[n] for n in TISSUE_LABEL]))
    return scores


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    return np.sqrt(sum(g.astype(np.float64) ** 2 for g in np.gradient(image.astype(np.float32))))


def tissue_boundaries(labels: np.ndarray) -> np.ndarray:
    """Voxels whose 6-neighbourhood holds another label, inside the labelled foreground."""
    boundary = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        differs = np.diff(labels, axis=axis) != 0
        lower = [slice(None)] * labels.ndim
        upper = [slice(None)] * labels.ndim
        lower[axis] = slice(None, -1)
        upper[axis] = slice(1, None)
        boundary[tuple(lower)] |= differs
        boundary[tuple(upper)] |= differs
    return boundary & (labels > 0)


def edge_ratio(estimate: np.ndarray, truth: np.ndarray, boundary: np.ndarray) -> float:
    """Mean gradient magnitude of ``estimate`` over that of ``truth`` on ``boundary``.

    1 keeps edges; below 1 blurs them; above 1 adds (noise) gradient.
    """
    return float(gradient_magnitude(estimate)[boundary].mean() / gradient_magnitude(truth)[boundary].mean())


def residual_whiteness(residual: np.ndarray, mask: np.ndarray) -> float:
    """Energy of the residual's 3x3x3 local mean, relative to white noise of the same variance.

    For an i.i.d. residual the local mean of 27 voxels has 1/27 of its variance, so the ratio is
    1; structure removed from the image (edges, texture) is spatially correlated and raises it.
    """
    residual = residual.astype(np.float64)
    # Skip the volume's outer face, where the padded window repeats voxels.
    inside = np.zeros(mask.shape, dtype=bool)
    inside[1:-1, 1:-1, 1:-1] = True
    inside &= mask
    variance = residual[inside].var() if inside.any() else 0.0
    if variance == 0:
        return float("nan")
    local_mean = ndi.uniform_filter(residual, size=3, mode="nearest")
    return float(27 * local_mean[inside].var() / variance)


def residual_edge_correlation(residual: np.ndarray, structure: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of ``|residual|`` with the gradient magnitude of ``structure``.

    ``structure`` is the clean image on phantoms and the denoised image on real scans; 0 means the
    residual does not follow edges.
    """
    a = np.abs(residual[mask]).astype(np.float64)
    b = gradient_magnitude(structure)[mask]
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def background_std(image: np.ndarray, background: np.ndarray) -> float:
    """Standard deviation in the background (air) region; ``nan`` when it is too small."""
    return float(image[background].std()) if background.sum() >= 1000 else float("nan")
