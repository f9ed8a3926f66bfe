"""Head mask, reference tissue and Auto-N2N noise estimation (section 3.1).

The noise standard deviation is measured on the difference between the image
``x`` and its synthetic pair ``y`` (:func:`~.pairs.synthetic_pair`): for
independent noise, ``std(x - y) = sqrt(2) * sigma``.  Because ``y`` is picked
by patch similarity, its noise is not quite independent of ``x``'s and the
substituted voxel carries a small anatomical mismatch, so the raw value is
corrected by a linear model fitted on real scans with known added noise
(``bids_auton2n-calibrate-noise`` -> ``bids_auton2n/data/noise_calibration.json``).

Estimator (what the calibration was fitted for)
-----------------------------------------------
* The pair is computed with ``exclude_centre=True``: the centre voxel does not
  vote for its own replacement, so the selection is (almost) blind to the
  noise of ``x[i]`` and ``std(x - y) / sqrt(2)`` tracks ``sigma`` with a slope
  close to 1 (with the centre included the slope is ~0.7 and noise-dependent,
  the paper's ``3.33 s - 1.89``).  Pass ``pair=noise_pair(x, mask)``, or no pair.
* Voxels: head mask eroded by one voxel, whose 3x3x3 local mean is at least
  :data:`MIN_SNR` times a first sigma estimate.  At such SNR Rician noise is
  Gaussian to within 1 % in std (Gudbjartsson & Patz 1995), and the zero or
  Rayleigh background, the skull and dark CSF are left out.  Of those, only
  the :data:`FLATTEST_FRACTION` with the smallest gradient of the
  Gaussian-smoothed image are kept: ``x - y`` also holds the anatomical
  difference between a voxel and the one that replaced it, which depends on
  how textured the image is.  On flat voxels that term is small, so one
  calibration fits different anatomies and contrasts (on the real calibration
  scans with 9 % added noise, ``raw / sigma`` spreads over 1.02-1.09 with the
  flattest 10 % instead of 1.07-1.18 on all high-SNR voxels).  The fraction was
  chosen by the calibration's cross-validated error on the real scans.
* Spread: the MAD of ``x - y`` (times 1.4826, divided by sqrt(2)), which
  ignores the heavy tails that anatomical mismatches at edges produce.
* Correction: ``sigma = a * s + b * scale`` where ``scale`` is the median
  intensity of the measured voxels, so the estimate is scale-equivariant
  (``b`` absorbs the residual anatomical mismatch, proportional to contrast;
  it is bounded at 0 in the fit, since a mismatch can only add to ``x - y``).
  The fit's loss is robust (Cauchy) where leave-one-scan-out cross-validation
  on the real scans prefers it to least squares, as it does for the current
  calibration: one scan (T2w at high noise in % of CSF) fits the linear model
  worst and would otherwise weigh most on the slope.

References
----------
Gudbjartsson H, Patz S (1995). The Rician distribution of noisy MRI data.
MRM 34:910-914.
Cocosco CA, Kollokian V, Kwan RK, Evans AC (1997). BrainWeb: online interface
to a 3D MRI simulated brain database. NeuroImage 5:S425 (reference tissues).
Otsu N (1979). A threshold selection method from gray-level histograms.
IEEE SMC 9:62-66.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Callable
from importlib import resources

import numpy as np
from scipy import ndimage as ndi

from ._checks import real_volume
from .pairs import PairValues, synthetic_pair

#: Contrasts and their BrainWeb reference tissue.
REFERENCE_TISSUE = {"T1w": "WM", "FLAIR": "brightest brain tissue", "T2w": "CSF", "PDw": "CSF"}
#: Minimum local SNR of the voxels used for the noise statistic.
MIN_SNR = 5.0
#: Fraction of the high-SNR voxels, the flattest, the noise statistic is taken on.  Chosen
#: among 2-20 % by leave-one-scan-out error of the calibration on the real scans
#: (``benchmarks/results/noise_estimator_variants.md``: 0.117 % at 2 %, 0.188 % at 10 %).
FLATTEST_FRACTION = 0.02
#: The first noise level, which sets the SNR threshold, is read on every this-many-th voxel
#: along each axis (1/27 of the head: enough voxels for a threshold, at 1/27 of the cost).
FIRST_PASS_STRIDE = 3
#: Gaussian sigma (voxels) of the smoothing before the flatness gradient.
FLATNESS_SMOOTHING = 1.0
#: Fraction of the largest depth of the head mask below which voxels count as
#: "outer" (scalp, skull, cortex partial volume) for the reference tissue.
INTERIOR_DEPTH = 0.2
#: Background threshold = median + BACKGROUND_MADS * MAD of the sub-Otsu voxels.
BACKGROUND_MADS = 6.0
_MAD_TO_STD = 1.4826


@dataclass(frozen=True)
class ReferenceTissue:
    """Reference tissue of the noise percentage (BrainWeb convention)."""

    name: str
    intensity: float


@dataclass(frozen=True)
class NoiseEstimate:
    """Noise level of an image.

    Attributes
    ----------
    sigma : float
        Noise standard deviation in image units (Gaussian sigma of the
        underlying complex data for magnitude images).
    percent : float
        ``100 * sigma / reference_intensity``.
    reference_tissue : str
    reference_intensity : float
    raw_std : float
        Uncorrected ``MAD(x - y) * 1.4826 / sqrt(2)`` in image units.
    n_voxels : int
        Voxels the statistic was computed on.
    """

    sigma: float
    percent: float
    reference_tissue: str
    reference_intensity: float
    raw_std: float
    n_voxels: int

    def to_dict(self) -> dict:
        """JSON-serialisable record (BIDS-style keys are left to the caller)."""
        return {key: (value if isinstance(value, str) else float(value) if isinstance(value, float)
                      else int(value)) for key, value in asdict(self).items()}


def _check_volume(x: np.ndarray, what: str) -> np.ndarray:
    x = real_volume(x, what)
    if not np.any(x != x.flat[0]):
        raise ValueError(f"{what}: the volume is constant ({float(x.flat[0])}), no foreground to find")
    return x.astype(np.float32, copy=False)


def _check_mask(mask: np.ndarray, shape: tuple) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} differs from volume shape {shape}")
    if not mask.any():
        raise ValueError("the mask is empty")
    return mask


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample (between-class variance maximum)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[np.argmax(between[:-1]) + 1])


def _holes(mask: np.ndarray, structure: np.ndarray, open_axes) -> np.ndarray:
    """What ``scipy.ndimage.binary_fill_holes(mask, structure)`` adds to ``mask``.

    The background is what of ``~mask`` connects (by ``structure``) to outside the volume
    across the faces of ``open_axes`` (those along which ``structure`` has neighbours); the
    rest of ``~mask`` are the holes.  One labelling pass, where scipy dilates from the
    border until nothing changes (several seconds on a whole head).
    """
    labels, count = ndi.label(~mask, structure=structure)
    if count == 0:
        return np.zeros(mask.shape, bool)
    outside = np.zeros(count + 1, bool)
    for axis in open_axes:
        for face in (0, -1):
            outside[np.take(labels, face, axis=axis)] = True
    outside[0] = True  # label 0 is the mask itself
    return ~outside[labels]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """3D hole filling, plus slice-wise filling along each axis.

    The slice-wise pass fills a head whose surface leaves the field of view (neck,
    vertex), where the 3D cavity is open to the border.
    """
    filled = mask | _holes(mask, ndi.generate_binary_structure(3, 1), range(3))
    for axis in range(3):
        in_plane = np.ones((3, 3, 3), dtype=bool)
        in_plane[(slice(None),) * axis + (0,)] = False
        in_plane[(slice(None),) * axis + (2,)] = False
        filled |= _holes(mask, in_plane, [a for a in range(3) if a != axis])
    return filled


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndi.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == np.argmax(sizes)


def _background_threshold(sample: np.ndarray) -> float:
    """Foreground threshold from the voxels below Otsu's threshold.

    ``median + 6 MAD`` of those voxels (~5 sigma above a Rayleigh background,
    exactly 0 for a zeroed one), raised to the midpoint between their median
    and Otsu's threshold so that a smoothed edge is cut near its middle, and
    never above Otsu's threshold.
    """
    otsu = otsu_threshold(np.clip(sample, None, np.percentile(sample, 99.9)))
    background = sample[sample <= otsu]
    level = np.median(background)
    spread = _MAD_TO_STD * np.median(np.abs(background - level))
    if level <= 0 and spread <= 0:
        return 0.0  # zeroed background (skull-stripped or masked image)
    return float(min(max(level + BACKGROUND_MADS * spread, 0.5 * (level + otsu)), otsu))


def head_mask(x: np.ndarray) -> np.ndarray:
    """Head (or brain, for skull-stripped images) foreground.

    Zeroed background (skull-stripped or masked images): the non-zero voxels.
    Rician background: the image is smoothed (Gaussian, 1 voxel), which
    shrinks the background noise ~6-fold, and thresholded at the background
    level read from the voxels below Otsu's threshold (``median + 6 MAD``,
    at least midway to Otsu's threshold, never above it).  Then the largest connected component is
    kept, closed, and holes are filled (dark CSF, skull, sinuses).

    Parameters
    ----------
    x : numpy.ndarray
        Finite 3D volume.

    Returns
    -------
    numpy.ndarray of bool

    Raises
    ------
    ValueError
        Non-3D, non-finite or constant (e.g. all-zero) input.
    """
    x = _check_volume(x, "head_mask")
    # A regular subsample is enough for the thresholds.
    step = max(1, x.size // 2_000_000)
    if _background_threshold(x.ravel()[::step]) <= 0:
        foreground = x > 0
    else:
        smoothed = ndi.gaussian_filter(x, 1.0)
        foreground = smoothed > _background_threshold(smoothed.ravel()[::step])
    # Fill first: a closed scalp shell then holds the brain inside it even where a dark
    # skull separates them.  Opening cuts thin bridges of noise before the component pick.
    foreground = _fill_holes(foreground)
    opened = ndi.binary_opening(foreground)
    foreground = _largest_component(opened if opened.any() else foreground)
    foreground = ndi.binary_closing(foreground, iterations=2, border_value=0) | foreground
    return _fill_holes(foreground)


def kmeans_1d(values: np.ndarray, centres, iterations: int = 100) -> np.ndarray:
    """Lloyd's 1D k-means from increasing starting ``centres``; the final centres (increasing).

    Each value belongs to the nearest centre (the lower one on a tie).  The values are
    sorted once: every iteration's classes are then ranges of the sorted values, whose means
    come from a prefix sum, so an iteration costs a few binary searches instead of a pass
    over the values per class.  A class left empty keeps its centre.  Stops when the centres
    move no more (``numpy.allclose``) or after ``iterations``.
    """
    ordered = np.sort(np.asarray(values, dtype=np.float64).ravel())
    prefix = np.concatenate(([0.0], np.cumsum(ordered)))
    centres = np.asarray(centres, dtype=np.float64)
    for _ in range(iterations):
        bounds = 0.5 * (centres[1:] + centres[:-1])
        edges = np.concatenate(([0], np.searchsorted(ordered, bounds, side="right"),
                                [ordered.size]))
        counts = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
        if np.allclose(updated, centres):
            break
        centres = updated
    return centres


def reference_intensity(x: np.ndarray, mask: np.ndarray, contrast: str) -> ReferenceTissue:
    """Intensity of the BrainWeb reference tissue.

    White matter for T1w, the brightest brain tissue for FLAIR, CSF for T2w
    and PDw: in all four it is the brightest of three tissue classes
    (1D k-means) inside the *interior* of the mask (depth at least
    :data:`INTERIOR_DEPTH` of the deepest voxel), which leaves out the scalp
    fat of full-head images, the zero background and most partial volume.
    The class median is returned.

    Parameters
    ----------
    x : numpy.ndarray
        Finite 3D volume.
    mask : numpy.ndarray of bool
        Head or brain foreground (:func:`head_mask`).
    contrast : {"T1w", "T2w", "FLAIR", "PDw"}

    Returns
    -------
    ReferenceTissue
    """
    if contrast not in REFERENCE_TISSUE:
        raise ValueError(f"contrast must be one of {', '.join(REFERENCE_TISSUE)}, got {contrast!r}")
    x = _check_volume(x, "reference_intensity")
    mask = _check_mask(mask, x.shape)
    depth = _depth(mask)
    interior = depth >= INTERIOR_DEPTH * depth.max()
    values = x[interior if interior.sum() >= 1000 else mask].astype(np.float64)
    # A few extreme voxels (vessels, fat in the orbits) must not pull a class.
    values = np.clip(values, *np.percentile(values, (0.1, 99.9)))
    # Centres spread evenly over the value range, not over the quantiles, which would merge
    # a small bright class such as the ventricles of a T2w image into its neighbour.
    low, high = values.min(), values.max()
    centres = kmeans_1d(values, low + (np.arange(3) + 0.5) / 3 * (high - low))
    labels = np.searchsorted(0.5 * (centres[1:] + centres[:-1]), values)
    intensity = float(np.median(values[labels == labels.max()]))
    if not intensity > 0:
        raise ValueError("reference tissue intensity is not positive: is the image a magnitude MRI?")
    return ReferenceTissue(name=REFERENCE_TISSUE[contrast], intensity=intensity)


@lru_cache(maxsize=1)
def load_calibration() -> dict:
    """Calibration record written by ``bids_auton2n-calibrate-noise``."""
    text = resources.files("bids_auton2n").joinpath("data/noise_calibration.json").read_text()
    return json.loads(text)


def noise_pair(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The synthetic pair :func:`estimate_noise` is calibrated for (centre excluded)."""
    return synthetic_pair(x, exclude_centre=True, mask=mask)


def noise_pair_values(x: np.ndarray) -> PairValues:
    """:func:`noise_pair`, searched only where it is read (and searched there once)."""
    return PairValues(x, exclude_centre=True)


def pair_reader(pair, x: np.ndarray, caller: str) -> Callable[[np.ndarray], np.ndarray]:
    """The values of ``x``'s noise pair at flat voxel indices, however the pair was given.

    ``pair``: the whole pair (:func:`noise_pair`), a :class:`~.pairs.PairValues` or another
    callable of flat indices (returned as they are), or None (a new
    :func:`noise_pair_values`).  A whole pair or a ``PairValues`` of another shape than
    ``x`` is a ValueError naming ``caller``.
    """
    if pair is None:
        return noise_pair_values(x)
    if callable(pair):
        if getattr(pair, "shape", x.shape) != x.shape:
            raise ValueError(f"{caller}: pair shape {pair.shape} differs from x shape {x.shape}")
        return pair
    return real_volume(pair, caller, "pair", shape=x.shape).astype(np.float32, copy=False
                                                                   ).ravel().__getitem__


def quantization_step(values: np.ndarray) -> float:
    """Step ``q`` of the lattice ``{k q}`` that ``values`` lie on, or 0 if they are continuous.

    ``values`` are differences of image voxels (``x - pair``), so an image stored as integers
    times a scale slope plus an offset gives integer multiples of the slope: the offset
    cancels.  The step is the smallest non-zero magnitude; the values count as quantized
    when every one is a multiple of it (to 1 % of a step, far above float32 rounding) and
    they take at most a quarter as many distinct values as there are samples.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    distinct = np.unique(np.abs(values))
    positive = distinct[distinct > 0]
    if positive.size == 0 or distinct.size > max(values.size // 4, 1):
        return 0.0
    step = float(positive[0])
    multiples = positive / step
    if np.max(np.abs(multiples - np.round(multiples))) > 0.01:
        return 0.0
    return step


def _binned_cdf(centres: np.ndarray, counts: np.ndarray, step: float, at: np.ndarray) -> np.ndarray:
    """CDF at ``at`` of values spread uniformly over ``[c - step/2, c + step/2]`` around each centre."""
    fractions = np.clip((np.asarray(at)[..., None] - (centres - 0.5 * step)) / step, 0.0, 1.0)
    return fractions @ counts / counts.sum()


def _binned_mad(values: np.ndarray, step: float) -> float:
    """Median absolute deviation of quantized ``values`` as if each were spread over its bin.

    A median of values on a lattice is itself on the lattice, so the plain MAD moves in
    steps of ``step`` as the spread grows; with every value spread uniformly over
    ``[v - step/2, v + step/2]`` (the grouped-data median) both the median and the MAD
    vary continuously.  The spreading adds ``step**2 / 12`` of variance (Sheppard's
    correction), which is taken off the squared Gaussian-equivalent spread.
    """
    centres, counts = np.unique(np.asarray(values, dtype=np.float64), return_counts=True)
    counts = counts.astype(np.float64)
    cumulative = np.cumsum(counts) / counts.sum()
    k = int(np.searchsorted(cumulative, 0.5))
    below = cumulative[k - 1] if k > 0 else 0.0
    median = centres[k] - 0.5 * step + (0.5 - below) / (cumulative[k] - below) * step
    low, high = 0.0, float(np.max(np.abs(centres - median))) + step
    for _ in range(60):  # bisection of P(|v - median| <= t) = 1/2, monotone in t
        half = 0.5 * (low + high)
        inside = _binned_cdf(centres, counts, step, median + half) - _binned_cdf(
            centres, counts, step, median - half)
        low, high = (half, high) if inside < 0.5 else (low, half)
    spread = _MAD_TO_STD * 0.5 * (low + high)
    return float(np.sqrt(max(spread * spread - step * step / 12.0, 0.0)) / _MAD_TO_STD)


def _mad_spread(difference: np.ndarray) -> float:
    """Robust std of ``difference / sqrt(2)``: MAD x 1.4826, continuous on quantized data."""
    step = quantization_step(difference)
    if step > 0:
        mad = _binned_mad(difference, step)
    else:
        mad = float(np.median(np.abs(difference - np.median(difference))))
    return float(_MAD_TO_STD * mad / np.sqrt(2.0))


def _depth(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each voxel of ``mask`` to the nearest voxel outside it (the
    volume's border counts as outside).

    Bit for bit ``ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]``, from
    its feature transform one axis at a time: about half its peak memory (scipy holds the
    feature transform, the index grid and the offsets of all three axes in float64 at
    once, ~60 bytes per voxel).  The squared distances are integers, so their sum is exact
    in any order.
    """
    padded = np.pad(mask, 1)
    features = ndi.distance_transform_edt(padded, return_distances=False, return_indices=True)
    squared = np.zeros(padded.shape, dtype=np.float64)
    for axis, n in enumerate(padded.shape):
        grid = np.arange(n, dtype=np.int32).reshape([-1 if a == axis else 1 for a in range(3)])
        offset = (features[axis] - grid).astype(np.float64)
        squared += np.multiply(offset, offset, out=offset)
    del features
    return np.sqrt(squared, out=squared)[1:-1, 1:-1, 1:-1]


def gradient_magnitude(volume: np.ndarray) -> np.ndarray:
    """Magnitude of :func:`numpy.gradient` of ``volume``, one axis at a time.

    Holds one axis's gradient at a time instead of all three (bit for bit
    ``np.sqrt(sum(g * g for g in np.gradient(volume)))``): on a 38 M-voxel scan that is
    300 MB less at the peak.
    """
    total = None
    for axis in range(volume.ndim):
        partial = np.gradient(volume, axis=axis)
        np.multiply(partial, partial, out=partial)
        total = partial if total is None else np.add(total, partial, out=total)
    return np.sqrt(total, out=total)


def raw_noise_statistic(x: np.ndarray, pair, mask: np.ndarray, *,
                        flattest_fraction: float = FLATTEST_FRACTION,
                        flatness_smoothing: float = FLATNESS_SMOOTHING) -> tuple[float, float, int]:
    """Uncorrected spread of ``x - pair`` on the flat, high-SNR voxels of ``mask``.

    Returns ``(raw_std, scale, n_voxels)``: the MAD-based std of
    ``(x - pair) / sqrt(2)``, the median intensity of the voxels used and
    their number.  The SNR selection uses the spread over a regular subsample
    (every :data:`FIRST_PASS_STRIDE`-th voxel along each axis) of the eroded
    mask as its noise level (the calibrated slope is close to 1); among the
    voxels it keeps, the ``flattest_fraction`` with the smallest gradient
    magnitude of the image smoothed by ``flatness_smoothing`` are used.  The
    calibration holds for the defaults only (the other values are for
    ``bids_auton2n-bench noise-estimator-variants``).

    ``pair`` is ``noise_pair(x, mask)``; or a callable giving its values at flat voxel
    indices (:func:`noise_pair_values`, whose values other readers of the same pair
    reuse); or None: the pair is then searched only at the voxels the statistic reads
    (bit-identical values), a few per cent of the head (:func:`pair_reader`).
    """
    inner = ndi.binary_erosion(mask)
    if inner.sum() < 100:
        inner = mask
    # Flat indices, in the order of np.argwhere: a third of the memory of coordinates.
    index = np.flatnonzero(inner)

    partner = pair_reader(pair, x, "raw_noise_statistic")

    def difference_at(chosen: np.ndarray) -> np.ndarray:
        where = index[chosen]
        return x.ravel()[where] - partner(where)

    on_lattice = np.zeros(x.shape, dtype=bool)
    on_lattice[::FIRST_PASS_STRIDE, ::FIRST_PASS_STRIDE, ::FIRST_PASS_STRIDE] = True
    lattice = on_lattice[inner]
    del on_lattice
    if lattice.sum() < 1000:
        lattice[:] = True
    local_mean = ndi.uniform_filter(x, size=3)[inner]
    selected = local_mean >= MIN_SNR * _mad_spread(difference_at(lattice))
    if selected.sum() < 100:
        raise ValueError("too few foreground voxels above the noise to estimate it")
    gradient = gradient_magnitude(ndi.gaussian_filter(x, flatness_smoothing))[inner]
    flat = selected & (gradient <= np.quantile(gradient[selected], flattest_fraction))
    if flat.sum() < 100:
        flat = selected
    return (_mad_spread(difference_at(flat)), float(np.median(x[inner][flat])), int(flat.sum()))


def calibrated_sigma(x: np.ndarray, pair, mask: np.ndarray
                     ) -> tuple[float, float, int]:
    """The noise sigma of :func:`estimate_noise` without its reference tissue.

    Returns ``(sigma, raw_std, n_voxels)``: the calibrated linear model applied to
    :func:`raw_noise_statistic` (same arguments), and that statistic's std and voxel count.
    For a caller that needs the level in image units only (the reference tissue's k-means
    costs as much as the statistic).
    """
    model = load_calibration()["model"]
    slope, intercept = float(model["slope"]), float(model["intercept"])
    raw, scale, count = raw_noise_statistic(x, pair, mask)
    return float(max(slope * raw + intercept * scale, 0.0)), raw, count


def estimate_noise(x: np.ndarray, *, contrast: str = "T1w", mask: np.ndarray | None = None,
                   pair=None) -> NoiseEstimate:
    """Auto-N2N noise estimate of a single volume.

    Parameters
    ----------
    x : numpy.ndarray
        Finite 3D magnitude volume.
    contrast : {"T1w", "T2w", "FLAIR", "PDw"}
        Selects the reference tissue of ``percent``.
    mask : numpy.ndarray of bool, optional
        Head foreground; :func:`head_mask` when omitted.
    pair : numpy.ndarray or PairValues, optional
        ``noise_pair(x, mask)`` if already computed, or ``noise_pair_values(x)`` to share
        the searched voxels with other readers; otherwise the pair is searched only at
        the voxels the statistic reads, with the same result.  A pair made with another
        ``exclude_centre`` or search window does not match the calibration.

    Returns
    -------
    NoiseEstimate

    Raises
    ------
    ValueError
        Bad volume, mask or pair, or too few usable voxels.
    """
    x = _check_volume(x, "estimate_noise")
    mask = head_mask(x) if mask is None else _check_mask(mask, x.shape)
    sigma, raw, count = calibrated_sigma(x, pair, mask)
    reference = reference_intensity(x, mask, contrast)
    return NoiseEstimate(
        sigma=sigma,
        percent=float(100.0 * sigma / reference.intensity),
        reference_tissue=reference.name,
        reference_intensity=reference.intensity,
        raw_std=raw,
        n_voxels=count,
    )
