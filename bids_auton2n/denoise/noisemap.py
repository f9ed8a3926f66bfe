"""Local noise map: the noise sigma of every voxel, for spatially varying noise.

Parallel imaging (g-factor), coil profiles and in-plane interpolation make the noise level of
an MR image vary across the head (Manjón et al. 2010; Aja-Fernández et al. 2015).  The map is
read from the same probe as the global estimate (:mod:`~bids_auton2n.denoise.noise`): the
difference ``d = x - y`` between the image and its synthetic pair, whose spread is
``sqrt(2) sigma`` where the noise is ``sigma``.

Algorithm (:func:`local_noise_map`)
-----------------------------------
The map is measured on a regular lattice of the head's voxels (:func:`lattice_strides`):
every voxel of a small image, every third voxel of a whole 1 mm head, so that the pair is
searched at those voxels only (:class:`~.pairs.PairValues`, mostly where the global
estimate already searched it) instead of everywhere (the whole pair of a 197x233x189 head
took 9.4 s on 2 threads of an AVX2 CPU; its estimate and map now take 6-8 s together).
The price is precision: on the whole ICBM152 head with noise ramping 2 -> 8 %, the median
error against the true sigma is 2.3 % in the brain (1.1 % when every voxel was measured)
and 12 % in the outer 5 mm of the head (4.6 %).

1. *Usable nodes*: lattice nodes inside the head mask eroded by one voxel; local (3x3x3)
   mean at least :data:`~.noise.MIN_SNR` times the local noise (Rician noise is Gaussian
   there, the zero or Rayleigh background, skull and dark CSF are left out); the flatter half
   of them (gradient of the 1-voxel Gaussian-smoothed image in units of the local noise:
   ``d`` also holds the anatomical mismatch of the substituted voxel, largest at edges); and
   ``|d| <= TRUNCATION sqrt(2) sigma`` (the remaining mismatch outliers).
2. *Local spread*: ``sigma(v)`` is the local mean of ``|d| / sqrt(2)`` over the usable
   nodes, by first-order normalised convolution with a Gaussian of :data:`SMOOTHING_MM` on the
   lattice (a linear fit in each window: exact for a linearly varying level even at the edges
   of the head), divided by ``E|Z|`` of a standard normal truncated at :data:`TRUNCATION`.
   Steps 1-2 run :data:`ITERATIONS` times, each with the previous map as the local noise (the
   first with the MAD of all nodes); where no usable node lies within reach of the Gaussian
   (far background) the nearest value is repeated, and the lattice's map is interpolated
   (linear) to every voxel: the noise of an MR image varies smoothly.
3. *Level*: the map's shape is scaled by the calibrated global estimator run on the image
   and pair divided by that shape (whose noise is then uniform), so a uniform-noise image
   gets a flat map at exactly the global estimate, and a varying one is calibrated the same
   way everywhere.

The *spread* of the map, ``(P90 - P10) / P50`` of sigma over the usable voxels, says whether
the noise varies: :func:`choose_noise_model` picks the adaptive path (routed experts, RI-NLM
and guard with the local sigma) above :data:`ADAPTIVE_SPREAD`, the global one below.

References
----------
Manjón JV, Coupé P, Martí-Bonmatí L, Collins DL, Robles M (2010). Adaptive non-local means
denoising of MR images with spatially varying noise levels. JMRI 31:192-203.
Aja-Fernández S, Pieciak T, Vegas-Sánchez-Ferrero G (2015). Spatially variant noise
estimation in MRI: a homomorphic approach. Med Image Anal 20:184-197.
Knutsson H, Westin CF (1993). Normalized and differential convolution. CVPR 1993: 515-523.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy import stats

from ._checks import real_volume
from .noise import MIN_SNR, NoiseEstimate, calibrated_sigma, gradient_magnitude, pair_reader

__all__ = ["NoiseMap", "choose_noise_model", "local_noise_map", "NOISE_MODELS"]

#: Gaussian sigma (mm) of the map's smoothing: coil and g-factor profiles vary over centimetres.
SMOOTHING_MM = 8.0
#: Spacings (mm) of the coarser lattices the map can be measured on (the grid of its
#: smoothing too) when the head has more than :data:`LATTICE_NODES` voxels: the finer one
#: with at most that many nodes in the head, else the coarser.  A whole 1 mm head is
#: measured at every third voxel, the lattice whose pair the global estimate's first pass
#: has already searched (:data:`~.noise.FIRST_PASS_STRIDE`), so the map adds few searches
#: (the smoothing still spans 2.7 lattice steps); smaller images at every voxel.
LATTICE_SPACINGS_MM = (2.0, 3.0)
#: Most nodes searched for the map: the pair is searched voxel by voxel there (~10 us each).
LATTICE_NODES = 150_000
#: Outliers of ``d`` beyond this many (local) standard deviations are left out.
TRUNCATION = 3.5
#: Passes of steps 1-2 (usable voxels from the previous map).
ITERATIONS = 2
#: Share of the high-SNR voxels kept as flat (lowest gradient in units of the local noise).
FLAT_SHARE = 0.5
#: Spread ``(P90 - P10) / P50`` of the map above which the noise is taken as varying.
ADAPTIVE_SPREAD = 0.3
#: ``noise_model`` values: ``auto`` chooses between the other two by the map's spread.
NOISE_MODELS = ("auto", "global", "adaptive")
_MAD_TO_STD = 1.4826
#: Blocks whose linear fit is solved together (memory, not results).
FIT_CHUNK = 65536


@dataclass(frozen=True)
class NoiseMap:
    """Local noise sigma of an image.

    Attributes
    ----------
    sigma : numpy.ndarray
        float32 map of the volume's shape, image units.
    measured : numpy.ndarray of bool
        The usable voxels the map was measured on (its values elsewhere are interpolated).
    spread : float
        ``(P90 - P10) / P50`` of ``sigma`` over ``measured``.
    """

    sigma: np.ndarray
    measured: np.ndarray
    spread: float

    def percentiles(self) -> dict[str, float]:
        """P10, P50 and P90 of sigma over the measured voxels (image units)."""
        p10, p50, p90 = np.percentile(self.sigma[self.measured], (10, 50, 90))
        return {"P10": float(p10), "P50": float(p50), "P90": float(p90)}

    def summary(self, reference_intensity: float) -> dict:
        """JSON-able record: percentiles in image units and percent, and the spread."""
        pct = {key: value for key, value in self.percentiles().items()}
        return {
            "SigmaPercentiles": {k: round(v, 6) for k, v in pct.items()},
            "PercentPercentiles": {k: round(100.0 * v / reference_intensity, 4)
                                   for k, v in pct.items()},
            "Spread": round(self.spread, 4),
            "SmoothingMM": SMOOTHING_MM,
        }


def lattice_strides(inner: np.ndarray, voxel_size) -> tuple[int, ...]:
    """Steps (voxels along each axis) of the lattice the map is measured on.

    Every voxel where ``inner`` has at most :data:`LATTICE_NODES` of them, else the finest
    of :data:`LATTICE_SPACINGS_MM` with at most that many nodes in ``inner`` (else the
    coarsest).
    """
    strides = (1, 1, 1)
    if inner.sum() <= LATTICE_NODES:
        return strides
    for spacing in LATTICE_SPACINGS_MM:
        strides = tuple(max(1, int(round(spacing / float(z)))) for z in voxel_size)
        if inner[::strides[0], ::strides[1], ::strides[2]].sum() <= LATTICE_NODES:
            break
    return strides


def _fit_on_lattice(data: np.ndarray, weight: np.ndarray, strides, voxel_size) -> np.ndarray:
    """First-order normalised convolution of ``data`` (0 where ``weight`` is 0) on the lattice.

    In each Gaussian window a linear function of position is fitted (weighted least
    squares) and evaluated at the window's centre: unlike the zeroth-order average, this is
    exact for a noise level that varies linearly, also where the window reaches beyond the
    usable voxels (the edges of the head), which would otherwise pull the map towards the
    inside level.  Where the fit is ill-conditioned, or leaves
    ``[1/2, 2]`` times the zeroth-order average (extrapolation far from the data), the average
    is kept; nodes out of the Gaussian's reach of any data take the nearest reached value.
    """
    gaussian = [SMOOTHING_MM / (float(z) * f) for z, f in zip(voxel_size, strides)]

    def smooth(volume):
        return ndi.gaussian_filter(volume, gaussian, mode="constant")

    # Coordinates in units of the Gaussian, centred: the moment matrix stays well scaled.
    coordinates = [((np.arange(n) - 0.5 * (n - 1)) / g).reshape([-1 if a == axis else 1
                                                                 for a in range(3)])
                   for axis, (n, g) in enumerate(zip(weight.shape, gaussian))]
    coordinates = [np.broadcast_to(c, weight.shape) for c in coordinates]
    total = smooth(weight)
    reached = total > 1e-3 * total.max()
    zeroth = np.where(reached, smooth(data) / np.where(reached, total, 1.0), 0.0)
    moments = np.empty(weight.shape + (4, 4))
    right = np.empty(weight.shape + (4,))
    basis = [None] + coordinates
    for i in range(4):
        wi = weight if i == 0 else weight * basis[i]
        right[..., i] = smooth(data if i == 0 else data * basis[i])
        for j in range(i, 4):
            moments[..., i, j] = moments[..., j, i] = smooth(wi if j == 0 else wi * basis[j])
    first = zeroth.copy()
    # The 4x4 systems a chunk at a time: LAPACK's copies and workspace of all of them at
    # once would be several times the moments (each system's result is the same either way).
    nodes = np.flatnonzero(reached)
    for chunk in np.array_split(nodes, -(-nodes.size // FIT_CHUNK)) if nodes.size else []:
        where = np.unravel_index(chunk, weight.shape)
        matrices = moments[where]
        # Condition number below 1e8; the moment matrices are symmetric positive
        # semi-definite, so it is the ratio of extreme eigenvalues (half the cost of an SVD).
        eigenvalues = np.linalg.eigvalsh(matrices)
        solvable = eigenvalues[:, 0] > 1e-8 * eigenvalues[:, -1]
        if not solvable.any():
            continue
        where = tuple(w[solvable] for w in where)
        coefficients = np.linalg.solve(matrices[solvable], right[where][..., None])[..., 0]
        position = np.stack([np.ones(solvable.sum())] + [c[where] for c in coordinates], -1)
        fitted = (coefficients * position).sum(-1)
        plain = zeroth[where]
        first[where] = np.where((fitted >= 0.5 * plain) & (fitted <= 2.0 * plain), fitted, plain)
    if not reached.all():
        nearest = ndi.distance_transform_edt(~reached, return_distances=False, return_indices=True)
        first = first[tuple(nearest)]
    return first


def _upsample(coarse: np.ndarray, strides, shape) -> np.ndarray:
    """Linear interpolation of lattice values (node ``i`` at voxel ``i * stride``) to every
    voxel of ``shape``; beyond the last node of an axis its value is repeated."""
    fine = coarse
    for axis, (stride, size) in enumerate(zip(strides, shape)):
        if stride == 1:
            continue
        position = np.arange(size) / stride
        below = np.floor(position).astype(np.int64)
        above = np.minimum(below + 1, fine.shape[axis] - 1)
        fraction = (position - below).reshape([-1 if a == axis else 1 for a in range(3)])
        fine = (np.take(fine, below, axis=axis) * (1.0 - fraction)
                + np.take(fine, above, axis=axis) * fraction)
    return fine.astype(np.float32)


def _local_spread(x, partner, mask, voxel_size) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-2 of the module docstring: the map's shape and the voxels it was measured on."""
    inner = ndi.binary_erosion(mask)
    if inner.sum() < 1000:
        inner = mask
    strides = lattice_strides(inner, voxel_size)
    nodes = np.zeros(x.shape, bool)
    nodes[::strides[0], ::strides[1], ::strides[2]] = True
    nodes &= inner
    index = np.flatnonzero(nodes)
    del nodes
    difference = x.ravel()[index] - partner(index)
    start = _MAD_TO_STD * np.median(np.abs(difference - np.median(difference))) / np.sqrt(2.0)
    if not start > 0:
        raise ValueError("local_noise_map: the image and its pair do not differ (no noise)")
    local_mean = ndi.uniform_filter(x, size=3).ravel()[index]
    gradient = gradient_magnitude(ndi.gaussian_filter(x, 1.0)).ravel()[index]
    # Where each measured voxel lies on the lattice's grid.
    grid_shape = tuple(-(-n // f) for n, f in zip(x.shape, strides))
    on_grid = np.ravel_multi_index(tuple(c // f for c, f in zip(np.unravel_index(index, x.shape),
                                                                strides)), grid_shape)
    # |d| / sqrt(2), whose mean is proportional to sigma: a noise level varying linearly in
    # space is then a linear function that the first-order fit follows exactly.
    magnitude = np.abs(difference).astype(np.float64) / np.sqrt(2.0)
    inside = stats.norm.cdf(TRUNCATION) - stats.norm.cdf(-TRUNCATION)
    # E|Z| of a standard normal Z truncated to |Z| <= TRUNCATION.
    mean_abs = 2.0 * (stats.norm.pdf(0.0) - stats.norm.pdf(TRUNCATION)) / inside
    local = np.full(index.size, start)
    for _ in range(ITERATIONS):
        high_snr = local_mean >= MIN_SNR * local
        if high_snr.sum() < 100:
            high_snr = np.ones(index.size, bool)
        relative_gradient = gradient / local
        flat = high_snr & (relative_gradient <= np.quantile(relative_gradient[high_snr], FLAT_SHARE))
        usable = flat & (np.abs(difference) <= TRUNCATION * np.sqrt(2.0) * local)
        if usable.sum() < 100:
            raise ValueError("local_noise_map: too few usable voxels to map the noise")
        data = np.zeros(grid_shape)
        data.ravel()[on_grid[usable]] = magnitude[usable]
        weight = np.zeros(grid_shape)
        weight.ravel()[on_grid[usable]] = 1.0
        coarse = _fit_on_lattice(data, weight, strides, voxel_size) / mean_abs
        coarse = np.maximum(coarse, 1e-6 * start)
        local = coarse.ravel()[on_grid]
    measured = np.zeros(x.shape, bool)
    measured.ravel()[index[usable]] = True
    return _upsample(coarse, strides, x.shape), measured


def local_noise_map(x: np.ndarray, pair, mask: np.ndarray, *,
                    voxel_size=(1.0, 1.0, 1.0)) -> NoiseMap:
    """Noise sigma of every voxel of ``x`` (see the module docstring).

    Parameters
    ----------
    x : numpy.ndarray
        Finite 3D magnitude image.
    pair : numpy.ndarray or PairValues
        Its synthetic pair for the noise estimate: the whole pair
        (:func:`~.noise.noise_pair`) or the pair searched where it is read
        (:func:`~.noise.noise_pair_values`; pass the one the global estimate read).
    mask : numpy.ndarray of bool
        Head mask.
    voxel_size : sequence of 3 float
        Voxel edges in mm (the smoothing and the lattice are in mm).

    Returns
    -------
    NoiseMap

    Raises
    ------
    ValueError
        Shapes differ, the pair equals the image, or too few usable voxels.
    """
    x = real_volume(x, "local_noise_map").astype(np.float32, copy=False)
    mask = real_volume(mask, "local_noise_map", "mask", shape=x.shape).astype(bool)
    partner = pair_reader(pair, x, "local_noise_map")
    voxel_size = tuple(float(z) for z in voxel_size)
    if len(voxel_size) != 3 or min(voxel_size) <= 0:
        raise ValueError(f"local_noise_map: voxel_size must be 3 positive numbers, got {voxel_size}")
    shape, measured = _local_spread(x, partner, mask, voxel_size)
    divisor = shape.ravel()

    def partner_of_flattened(where):  # the pair of x / shape, voxel by voxel
        return partner(where) / divisor[where]

    level, _, _ = calibrated_sigma(x / shape, partner_of_flattened, mask)
    sigma = (level * shape).astype(np.float32)
    p10, p50, p90 = np.percentile(sigma[measured], (10, 50, 90))
    return NoiseMap(sigma=sigma, measured=measured, spread=float((p90 - p10) / p50) if p50 > 0 else 0.0)


def choose_noise_model(noise_map: NoiseMap | None, requested: str = "auto") -> str:
    """``"adaptive"`` or ``"global"``: the user's choice, else by the map's spread.

    ``auto`` is adaptive when ``noise_map.spread > ADAPTIVE_SPREAD``; without a map (a
    user-given noise level) the model is global.
    """
    if requested not in NOISE_MODELS:
        raise ValueError(f"noise model must be one of {', '.join(NOISE_MODELS)}, got {requested!r}")
    if requested != "auto":
        if requested == "adaptive" and noise_map is None:
            raise ValueError("the adaptive noise model needs a noise map (estimated noise, "
                             "not a given noise level)")
        return requested
    if noise_map is None:
        return "global"
    return "adaptive" if noise_map.spread > ADAPTIVE_SPREAD else "global"


def percent_map(sigma: np.ndarray, noise: NoiseEstimate) -> np.ndarray:
    """A sigma map (image units) in percent of the reference tissue (the experts' levels)."""
    return (100.0 * sigma / noise.reference_intensity).astype(np.float32)
