"""Phantoms with Rician noise: the fuzzy ICBM152 benchmark phantom and a synthetic head.

:func:`synthetic_head` is a piecewise-constant head of nested ellipsoids (no template or atlas
behind it), the demo's images and the validation object of the guard and of the registry
comparison.

**ICBM152: benchmark material only.** The ICBM152 2009a template is an average of 152 brains: it is
used here to *measure* denoisers (PSNR, SSIM, segmentation Dice against known tissue
memberships). It must never be used to train the experts or to calibrate the noise estimator.

The phantom follows BrainWeb's construction (Collins et al. 1998; Kwan et al. 1999): each voxel
is a membership-weighted mix of constant tissue intensities (fuzzy partial-volume model), and
noise is Rician, with ``sigma = percent / 100 * reference`` where the reference tissue is white
matter for T1w and CSF for T2w.

Sources are the files nilearn ships inside its package (no download):
``mni_icbm152_{gm,wm,t1}_tal_nlin_sym_09a_converted.nii.gz`` (197 x 233 x 189, 1 mm).
nilearn's packaged T1 template is brain-extracted (78 % of its voxels are exactly zero), so it
cannot provide a scalp. The non-brain head is therefore a synthetic layered shell around the brain
mask (skull, scalp fat, skin/muscle, from the Euclidean distance to the brain) with partial-volume
ramps between layers; it gives the head foreground, sharp bright/dark edges and a realistic
background/foreground split for the metrics, not anatomy.

References
----------
Fonov V. et al. (2011) Unbiased average age-appropriate atlases for pediatric studies.
NeuroImage 54(1):313-327.
Collins D.L. et al. (1998) Design and construction of a realistic digital brain phantom.
IEEE TMI 17(3):463-468.
Gudbjartsson H., Patz S. (1995) The Rician distribution of noisy MRI data. MRM 34(6):910-914.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

#: Tissue intensities relative to the reference tissue (WM for T1w, CSF for T2w), chosen to match
#: BrainWeb's normal-brain contrast ratios; ``head`` layers: skull, scalp fat, skin/muscle.
TISSUE_INTENSITY = {
    "T1w": {"CSF": 0.25, "GM": 0.65, "WM": 1.0, "skull": 0.08, "fat": 1.15, "skin": 0.55},
    "T2w": {"CSF": 1.0, "GM": 0.45, "WM": 0.32, "skull": 0.06, "fat": 0.70, "skin": 0.30},
}
#: Absolute intensity of the reference tissue (arbitrary units, kept in the range of 8-bit scans).
REFERENCE_INTENSITY = 200.0
#: Outer edges (mm from the brain mask) of the synthetic skull, scalp fat and skin layers.
HEAD_LAYERS_MM = (("skull", 4.0), ("fat", 8.0), ("skin", 10.0))

LABELS = {0: "background", 1: "CSF", 2: "GM", 3: "WM", 4: "non-brain head"}

_ICBM_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

#: Mean intensity of background, scalp, skull, CSF, GM, WM of :func:`synthetic_head` by
#: contrast (arbitrary units; the reference tissue, WM for T1w and CSF for T2w, is at 100).
SYNTHETIC_HEAD_INTENSITY = {
    "T1w": (0.0, 70.0, 10.0, 30.0, 65.0, 100.0),
    "T2w": (0.0, 60.0, 10.0, 100.0, 60.0, 40.0),
}


@dataclass
class Phantom:
    """A noise-free fuzzy phantom.

    Attributes
    ----------
    clean : ndarray, float32
        Noise-free intensities.
    labels : ndarray, uint8
        Crisp labels: 0 background, 1 CSF, 2 GM, 3 WM, 4 non-brain head (largest membership).
    memberships : dict of str to ndarray
        Fuzzy memberships ``CSF``, ``GM``, ``WM``, ``head`` in [0, 1], summing to <= 1.
    head_mask, brain_mask : ndarray of bool
    reference_intensity : float
        Intensity of the reference tissue (WM for T1w, CSF for T2w).
    affine : ndarray (4, 4)
    contrast : str
    """

    clean: np.ndarray
    labels: np.ndarray
    memberships: dict
    head_mask: np.ndarray
    brain_mask: np.ndarray
    reference_intensity: float
    affine: np.ndarray
    contrast: str = "T1w"


def _icbm_map(name: str) -> tuple[np.ndarray, np.ndarray]:
    import nilearn

    path = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data", _ICBM_FILE.format(name))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: nilearn's packaged ICBM152 map is missing (nilearn>=0.10 ships it)")
    image = nib.load(path)
    return np.asarray(image.dataobj, dtype=np.float32) / 255.0, image.affine


def _head_layers(brain_mask: np.ndarray) -> dict[str, np.ndarray]:
    """Fuzzy memberships of the synthetic head layers outside the brain mask.

    Each layer occupies a distance band ``(inner, outer]`` from the brain; membership ramps
    linearly over 1 mm at each band edge (partial volume).
    """
    distance = ndi.distance_transform_edt(~brain_mask).astype(np.float32)
    layers = {}
    inner = 0.0
    for name, outer in HEAD_LAYERS_MM:
        rise = np.clip(distance - inner + 0.5, 0.0, 1.0)
        fall = np.clip(outer + 0.5 - distance, 0.0, 1.0)
        layers[name] = np.where(brain_mask, 0.0, np.minimum(rise, fall)).astype(np.float32)
        inner = outer
    return layers


def icbm152_phantom(contrast: str = "T1w") -> Phantom:
    """Build the fuzzy ICBM152 2009a phantom (197 x 233 x 189, 1 mm).

    Parameters
    ----------
    contrast : {"T1w", "T2w"}
        T1w: WM brightest (reference WM); T2w: CSF brightest (reference CSF).

    Returns
    -------
    Phantom

    Notes
    -----
    Benchmark material only: never train or calibrate on it.
    CSF membership is the brain mask minus GM and WM; the brain mask is the filled support of the
    packaged (brain-extracted) T1 template united with ``GM + WM > 0.5``.
    """
    if contrast not in TISSUE_INTENSITY:
        raise ValueError(f"contrast must be one of {sorted(TISSUE_INTENSITY)}, got {contrast!r}")
    gm, affine = _icbm_map("gm")
    wm, _ = _icbm_map("wm")
    t1, _ = _icbm_map("t1")
    brain_mask = ndi.binary_fill_holes((t1 > 0) | (gm + wm > 0.5))
    tissue_sum = np.clip(gm + wm, 0.0, 1.0)
    csf = np.where(brain_mask, 1.0 - tissue_sum, 0.0).astype(np.float32)

    ratios = TISSUE_INTENSITY[contrast]
    layers = _head_layers(brain_mask)
    # Layers fill the fraction that GM/WM partial volumes leave free outside the brain mask.
    free = 1.0 - tissue_sum - csf
    for name in layers:
        layers[name] = layers[name] * free
    head = sum(layers.values())

    clean = ratios["CSF"] * csf + ratios["GM"] * gm + ratios["WM"] * wm
    clean = clean + sum(ratios[name] * layers[name] for name in layers)
    clean = (REFERENCE_INTENSITY * clean).astype(np.float32)

    memberships = {"CSF": csf, "GM": gm, "WM": wm, "head": head.astype(np.float32)}
    stacked = np.stack([csf, gm, wm, memberships["head"]])
    labels = (np.argmax(stacked, axis=0) + 1).astype(np.uint8)
    labels[stacked.sum(axis=0) < 0.5] = 0
    head_mask = labels > 0
    return Phantom(
        clean=clean,
        labels=labels,
        memberships=memberships,
        head_mask=head_mask,
        brain_mask=brain_mask,
        reference_intensity=REFERENCE_INTENSITY * max(ratios["CSF"], ratios["WM"]),
        affine=affine,
        contrast=contrast,
    )


def synthetic_head(shape, contrast: str, rng: np.random.Generator) -> np.ndarray:
    """Clean head-like volume: scalp, skull, CSF, folded GM ribbon, WM, ventricles.

    Parameters
    ----------
    shape : tuple of int
        Voxel grid; the head fills it (ellipsoid semi-axes 0.9, 0.95, 0.85 of the half-extent).
    contrast : {"T1w", "T2w"}
        Tissue intensities, :data:`SYNTHETIC_HEAD_INTENSITY`.
    rng : numpy.random.Generator
        Draws the phase of the cortical folds.

    Returns
    -------
    ndarray, float32
        Piecewise-constant intensities (no partial volume).
    """
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = np.sqrt(sum((g / s) ** 2 for g, s in zip(grid, (0.9, 0.95, 0.85))))
    angle = np.arctan2(grid[1], grid[0])
    folds = 0.04 * np.sin(8 * angle + rng.uniform(0, np.pi)) * np.cos(6 * grid[2])
    labels = np.zeros(shape, dtype=np.int8)
    for label, outer in ((1, 1.0), (2, 0.92), (3, 0.85), (4, 0.80 + folds), (5, 0.58 + folds)):
        labels[radius <= outer] = label
    ventricles = np.sqrt((grid[0] / 0.12) ** 2 + (grid[1] / 0.3) ** 2 + (grid[2] / 0.2) ** 2)
    labels[ventricles <= 1] = 3
    values = np.asarray(SYNTHETIC_HEAD_INTENSITY[contrast], dtype=np.float32)
    return values[labels]


def add_rician_noise(clean: np.ndarray, percent: float, reference_intensity: float, seed: int) -> np.ndarray:
    """Rician noise: magnitude of the clean signal plus complex Gaussian noise.

    Parameters
    ----------
    clean : ndarray
    percent : float
        Noise level, ``sigma = percent / 100 * reference_intensity`` (BrainWeb convention).
    reference_intensity : float
    seed : int
        Seed of ``numpy.random.default_rng``; same seed, same noise.

    Returns
    -------
    ndarray, float32
        ``sqrt((clean + n1)**2 + n2**2)`` with ``n1, n2 ~ N(0, sigma)``; ``clean`` itself when
        ``percent == 0``.
    """
    if percent < 0:
        raise ValueError(f"percent must be >= 0, got {percent}")
    clean = np.asarray(clean, dtype=np.float32)
    if percent == 0:
        return clean.copy()
    sigma = percent / 100.0 * reference_intensity
    rng = np.random.default_rng(seed)
    real = clean + rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    return np.hypot(real, imaginary).astype(np.float32)


def crop(phantom: Phantom, shape: tuple[int, int, int]) -> Phantom:
    """Crop a phantom to ``shape`` around the centre of its brain (for --quick runs and tests).

    The affine is shifted so the crop stays in the same world space.

    Parameters
    ----------
    phantom : Phantom
        The phantom to crop (:func:`icbm152_phantom`).
    shape : tuple of int
        Size of the crop; it must fit in the phantom.

    Returns
    -------
    Phantom
    """
    full = phantom.clean.shape
    if any(s > f or s < 1 for s, f in zip(shape, full)):
        raise ValueError(f"crop shape {shape} must fit in the phantom {full}")
    centre = np.round(ndi.center_of_mass(phantom.brain_mask)).astype(int)
    start = [int(np.clip(c - s // 2, 0, f - s)) for c, s, f in zip(centre, shape, full)]
    window = tuple(slice(b, b + s) for b, s in zip(start, shape))
    affine = phantom.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=float) + affine[:3, 3]
    return replace(
        phantom,
        clean=phantom.clean[window].copy(),
        labels=phantom.labels[window].copy(),
        memberships={k: v[window].copy() for k, v in phantom.memberships.items()},
        head_mask=phantom.head_mask[window].copy(),
        brain_mask=phantom.brain_mask[window].copy(),
        affine=affine,
    )
