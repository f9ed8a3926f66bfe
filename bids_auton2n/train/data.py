"""Training material for the Auto-N2N experts: prepared volumes and patch sampling.

Every real scan is prepared once (:func:`prepare_volume`): finite copy, head mask,
synthetic Noise2Noise pair ``y`` of the *original* scan (paper section 2.1), its
intrinsic noise ``p0`` (percent of the reference tissue) and the division by the
reference-tissue intensity (network units, ``docs/architecture.md``).  The pair is
expensive (seconds to a minute per volume), so it is cached in a work directory
keyed by the file's SHA-256 and the pair settings.

For fine-tuning, a scan can instead serve as the *anatomy* of its training data
(``base="denoised"``): it is denoised with a registry's pipeline, and the pair, the
intrinsic noise ``p0`` and the patches are those of the denoised image, so that noise
added on the fly up to the level makes input and target noises independent, as they
were for the shipped experts (the pair of a noisy scan is matched on its noise and
carries part of it).

:class:`PatchSampler` then draws, for a target noise level ``p`` (percent), random
3D patches inside the head with random flips of the three axes and independent
Gaussian noise of std ``sqrt(max(p**2 - p0**2, 0)) / 100`` added to the input and
to the target (paper section 3: "adds Gaussian noise on-the-fly"), so that both
reach ``p`` % while their noises stay independent, the Noise2Noise condition.

Validation is spatial hold-out: in every volume a slab one patch thick across
its longest axis (at 3/4 of the head's extent, off the centre so that most of the
brain stays in training) is never touched by a training patch; validation patches
are drawn inside it once, with fixed noise, from a fixed seed.

Every random draw of training step ``s`` comes from a generator seeded by
``(seed, round(100 * level), s)``, so a run is reproducible and a resumed run
draws exactly what an uninterrupted one would.

References
----------
.. [1] S. Morell-Ortega et al., "Auto-N2N: Self-supervised MRI Denoising using
   Synthetic Pair Generation and Mixture of Experts", sections 2.1 and 3.
.. [2] J. Lehtinen et al., "Noise2Noise: Learning image restoration without
   clean data", ICML 2018.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..denoise.experts import ExpertRegistry, _atomic_write, sha256_file
from ..denoise.intensity import IntensityNormalizer, sanitize
from ..denoise.noise import estimate_noise, head_mask
from ..denoise.pairs import PATCH_RADIUS, SEARCH_RADIUS, synthetic_pair
from ..denoise import CONTRASTS
from ..denoise.pipeline import denoise_array
from ..utils.io import load_volume

LOGGER = logging.getLogger("bids_auton2n.train")

#: Smallest patch edge the trainer accepts (the loss needs >= 3, border effects of the
#: 23-voxel receptive field dominate far below 16).
MIN_PATCH = 8


@dataclass
class TrainingVolume:
    """One real scan ready for training, in network units.

    Attributes
    ----------
    name : str
        File name (or a label for in-memory arrays).
    sha256 : str or None
        SHA-256 of the source file.
    contrast : str
        T1w, T2w, FLAIR or PDw (selects the reference tissue).
    image, pair : numpy.ndarray
        The training base (the scan, or its denoised version, see ``base``) and its
        synthetic N2N pair, divided by the reference intensity.
    mask : numpy.ndarray of bool
        Head mask.
    noise_percent : float
        Intrinsic noise of ``image`` (percent of the reference tissue): what noise
        added on the fly tops up from.
    reference_tissue : str
    reference_intensity : float
        In image units (the scan's, also for a denoised base).
    base : {"noisy", "denoised"}
        Whether ``image`` is the scan itself or the scan denoised by a registry.
    scan_noise_percent : float or None
        Estimated noise of the scan itself; ``noise_percent`` when ``base`` is "noisy".
    denoised_with : dict or None
        With a denoised base: the registry and expert SHA-256 that denoised it.
    preprocessing : str
        The scan's preparation before training (:func:`preprocess_scan`).
    defined : numpy.ndarray of bool or None
        Where ``image`` and ``pair`` both hold data (``None``: everywhere); no training or
        validation patch leaves it.  A run resampled onto another's grid is 0 outside its
        field of view: a patch reaching there would teach the network to predict 0.
    """

    name: str
    sha256: str | None
    contrast: str
    image: np.ndarray
    pair: np.ndarray
    mask: np.ndarray
    noise_percent: float
    reference_tissue: str
    reference_intensity: float
    base: str = "noisy"
    scan_noise_percent: float | None = None
    denoised_with: dict | None = None
    preprocessing: str = "none"
    defined: np.ndarray | None = None

    def __post_init__(self):
        if self.scan_noise_percent is None:
            self.scan_noise_percent = self.noise_percent

    def record(self) -> dict:
        """JSON-able description for provenance records."""
        record = {
            "file": self.name,
            "sha256": self.sha256,
            "contrast": self.contrast,
            "shape": list(self.image.shape),
            "intrinsic_noise_percent": round(float(self.noise_percent), 3),
            "reference_tissue": self.reference_tissue,
            "reference_intensity": round(float(self.reference_intensity), 4),
        }
        if self.preprocessing != "none":
            record["preprocessing"] = self.preprocessing
        if self.base != "noisy":
            record.update(base=self.base, scan_noise_percent=round(float(self.scan_noise_percent), 3),
                          denoised_with=self.denoised_with)
        return record


def parse_volume_spec(spec: str) -> tuple[Path, str | None]:
    """``"PATH[:CONTRAST]"`` -> ``(Path, contrast or None)``."""
    path, sep, contrast = spec.rpartition(":")
    if sep and contrast in CONTRASTS:
        return Path(path), contrast
    if sep and "/" not in contrast and "." not in contrast:
        raise ValueError(f"{spec}: unknown contrast {contrast!r} (choose {', '.join(CONTRASTS)})")
    return Path(spec), None


#: Training bases of :func:`prepare_volume`.
BASES = ("noisy", "denoised")
#: Per-scan preparation before anything else (:func:`preprocess_scan`).
PREPROCESSING = ("none", "average-inplane-2x2")


def preprocess_scan(data: np.ndarray, zooms, recipe: str) -> np.ndarray:
    """A scan's preparation for training, named by ``recipe``.

    ``"average-inplane-2x2"``: the mean of every 2x2 block of the two axes whose voxels are
    half the size of the third's (a partial block at the edge is dropped).  For images
    reconstructed at twice the acquired in-plane resolution (the UIH scans: 0.5 mm from
    230 phase-encode lines, parallel imaging R = 2.5) it returns the native grid, on which
    neighbouring voxels' noises are far less correlated than on the interpolated one: the
    Noise2Noise targets then carry the independent noise the method assumes.
    """
    if recipe not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing {recipe!r} (choose {', '.join(PREPROCESSING)})")
    if recipe == "none":
        return data
    zooms = np.asarray(zooms[:3], dtype=float)
    fine = np.flatnonzero(np.isclose(zooms, zooms.max() / 2, rtol=0.05))
    if fine.size != 2:
        raise ValueError(f"{recipe}: needs two axes of half the third's voxel size, got {zooms}")
    cut = tuple(slice(0, (n // 2) * 2) if axis in fine else slice(None)
                for axis, n in enumerate(data.shape))
    blocks = data[cut]
    for axis in sorted(fine, reverse=True):
        shape = list(blocks.shape)
        shape[axis:axis + 1] = [shape[axis] // 2, 2]
        blocks = blocks.reshape(shape).mean(axis=axis + 1)
    return blocks.astype(np.float32)


def prepare_volume(
    path: str | Path,
    contrast: str,
    *,
    work_dir: str | Path | None = None,
    exclude_centre: bool = False,
    base: str = "noisy",
    registry=None,
    preprocess: str = "none",
) -> TrainingVolume:
    """Load a NIfTI scan and prepare it for training (pair cached in ``work_dir``).

    Parameters
    ----------
    path : path-like
        3D NIfTI file (checked by :func:`~bids_auton2n.utils.io.load_volume`).
    contrast : {"T1w", "T2w", "FLAIR", "PDw"}
    work_dir : path-like, optional
        Cache directory for the synthetic pairs (and a denoised base); no caching
        when omitted.
    exclude_centre : bool
        Train on the pair built without the centre voxel in the patch distance
        (Noise2Sim-style) instead of the paper's pair.  The noise estimate always
        uses the centre-excluded pair, the one its calibration was made with.
    base : {"noisy", "denoised"}
        Train on the scan itself, or on the scan denoised by
        :func:`~bids_auton2n.denoise.pipeline.denoise_array` (its defaults, at the
        scan's estimated noise) with ``registry``: the pair is then computed on the
        denoised image, and ``noise_percent`` is the denoised image's own noise
        estimate (same estimator, expressed against the scan's reference intensity).
    registry : ExpertRegistry, optional
        Registry denoising a ``"denoised"`` base (default: the shipped experts).
    preprocess : str
        One of :data:`PREPROCESSING`, applied to the scan first (:func:`preprocess_scan`).
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"{path}: contrast must be one of {', '.join(CONTRASTS)}, got {contrast!r}")
    if base not in BASES:
        raise ValueError(f"{path}: training base must be one of {', '.join(BASES)}, got {base!r}")
    path = Path(path)
    image = load_volume(path)
    finite, _ = sanitize(preprocess_scan(np.asarray(image.get_fdata(dtype=np.float32)),
                                         image.header.get_zooms(), preprocess))
    digest = sha256_file(path)
    # Caches are keyed by what is trained on: the file and its preparation.
    key = digest if preprocess == "none" else hashlib.sha256(
        f"{digest}:{preprocess}".encode()).hexdigest()
    mask = head_mask(finite)
    if not mask.any():
        raise ValueError(f"{path}: empty head mask, nothing to train on")
    cache = None if work_dir is None else Path(work_dir) / "pairs"
    noise = estimate_noise(finite, contrast=contrast, mask=mask)
    if base == "denoised":
        volume = _denoised_base(path.name, finite, mask, noise, contrast=contrast,
                                registry=registry, exclude_centre=exclude_centre, cache=cache,
                                sha256=digest, cache_key=key)
    else:
        pair = cached_pair(finite, mask, exclude_centre=exclude_centre, cache=cache, key=key,
                           label=path.name)
        volume = volume_from_arrays(
            path.name, finite, pair, mask, contrast=contrast, noise_percent=noise.percent,
            reference_tissue=noise.reference_tissue, reference_intensity=noise.reference_intensity,
            sha256=digest,
        )
    return replace(volume, preprocessing=preprocess)


def _denoised_base(name, finite, mask, noise, *, contrast, registry, exclude_centre, cache,
                   sha256, cache_key) -> TrainingVolume:
    """The scan denoised by ``registry`` as a training base (see :func:`prepare_volume`)."""
    registry = registry or ExpertRegistry()
    experts = {f"{level:g}": registry.sha256(level) for level in registry.levels}
    # The base depends on the experts and on the noise level they were run at (a new noise
    # calibration changes it): both key the cached base.
    registry_key = hashlib.sha256(
        repr((sorted(experts.items()), round(float(noise.percent), 6))).encode()).hexdigest()

    def denoise():
        LOGGER.info("%s: denoising with %s (training base) ...", name, registry.root)
        return denoise_array(finite, contrast=contrast, mask=mask, noise_level=noise.percent,
                             registry=registry).denoised.astype(np.float32)

    denoised = cached_array(cache, f"{cache_key[:20]}_denoised_{registry_key[:12]}.npy",
                            finite.shape, denoise)
    # Pairs of the denoised image are keyed by its content (it depends on the registry).
    key = hashlib.sha256(denoised.tobytes()).hexdigest()
    own = estimate_noise(denoised, contrast=contrast, mask=mask)
    pair = cached_pair(denoised, mask, exclude_centre=exclude_centre, cache=cache, key=key,
                       label=f"{name} (denoised)")
    volume = replace(
        volume_from_arrays(
            name, denoised, pair, mask, contrast=contrast,
            # Against the scan's reference: the network units the expert meets at inference.
            noise_percent=100.0 * own.sigma / noise.reference_intensity,
            reference_tissue=noise.reference_tissue, reference_intensity=noise.reference_intensity,
            sha256=sha256,
        ),
        base="denoised", scan_noise_percent=float(noise.percent),
        denoised_with={"registry": registry.label, "experts_sha256": experts,
                       "pipeline": "denoise_array defaults at the scan's estimated noise"},
    )
    LOGGER.info("%s: scan noise %.2f%%, denoised base noise %.2f%%", name, noise.percent,
                volume.noise_percent)
    return volume


def cached_array(cache: Path | None, name: str, shape: tuple, compute) -> np.ndarray:
    """``compute()``, saved as ``cache/name`` and loaded from there when of ``shape``."""
    if cache is not None and (cache / name).is_file():
        array = np.load(cache / name)
        if array.shape == tuple(shape):
            return array
    array = compute()
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        _atomic_write(cache / name, lambda temporary: _save_npy(temporary, array))
    return array


def cached_pair(
    finite: np.ndarray,
    mask: np.ndarray,
    *,
    exclude_centre: bool,
    cache: Path | None,
    key: str,
    label: str,
) -> np.ndarray:
    """:func:`~bids_auton2n.denoise.pairs.synthetic_pair` of ``finite``, cached as ``.npy``.

    ``key`` identifies the volume (its file's SHA-256); the pair settings complete the
    cache file name, so a change of search window or patch size recomputes the pair.
    """
    name = f"{key[:20]}_s{SEARCH_RADIUS}_p{PATCH_RADIUS}_xc{int(exclude_centre)}.npy"

    def compute():
        LOGGER.info("%s: synthetic pair (exclude_centre=%s) ...", label, exclude_centre)
        return synthetic_pair(finite, mask=mask, exclude_centre=exclude_centre)

    return cached_array(cache, name, finite.shape, compute)


def _save_npy(path: str, array: np.ndarray) -> None:
    # Through a handle: np.save would append ".npy" to the temporary name.
    with open(path, "wb") as handle:
        np.save(handle, array)


def volume_from_arrays(
    name: str,
    image: np.ndarray,
    pair: np.ndarray,
    mask: np.ndarray,
    *,
    contrast: str,
    noise_percent: float,
    reference_intensity: float,
    reference_tissue: str = "given",
    sha256: str | None = None,
) -> TrainingVolume:
    """:class:`TrainingVolume` from arrays in image units (divided here by the reference)."""
    normalizer = IntensityNormalizer(reference_intensity)
    mask = np.asarray(mask, dtype=bool)
    if not (image.shape == pair.shape == mask.shape) or image.ndim != 3:
        raise ValueError(f"{name}: image, pair and mask must be 3D of one shape")
    if not math.isfinite(noise_percent) or noise_percent < 0:
        raise ValueError(f"{name}: intrinsic noise must be a percentage >= 0, got {noise_percent}")
    return TrainingVolume(
        name=name, sha256=sha256, contrast=contrast,
        image=normalizer.forward(image), pair=normalizer.forward(pair), mask=mask,
        noise_percent=float(noise_percent), reference_tissue=reference_tissue,
        reference_intensity=float(reference_intensity),
    )


def added_noise_std(level: float, intrinsic_percent: float) -> float:
    """Std (network units) of the Gaussian noise that brings ``intrinsic_percent`` to ``level``.

    Independent Gaussian noises add in variance, so ``sqrt(max(level**2 - p0**2, 0)) / 100``;
    a scan already noisier than ``level`` gets none.
    """
    return math.sqrt(max(level * level - intrinsic_percent * intrinsic_percent, 0.0)) / 100.0


#: ``purpose`` values of :func:`step_rng`: one independent stream each.
TRAINING_DRAWS, VALIDATION_DRAWS, LEVEL_DRAWS = 0, 1, 2


def step_rng(seed: int, level: float, step: int, purpose: int = TRAINING_DRAWS) -> np.random.Generator:
    """Generator of the draws of one training step (validation: ``purpose=VALIDATION_DRAWS``)."""
    return np.random.default_rng([int(seed), int(round(100 * level)), int(step), int(purpose)])


def draw_level(levels, seed: int, step: int) -> float:
    """Noise level of training step ``step`` of a model trained on all ``levels``.

    Uniform over ``levels``, from a generator seeded by ``(seed, step)`` only, so the
    sequence of levels is reproducible and independent of the patch draws.
    """
    levels = tuple(levels)
    return float(levels[int(step_rng(seed, 0.0, step, LEVEL_DRAWS).integers(len(levels)))])


@dataclass
class _Layout:
    """Where training and validation patches of one volume may start."""

    train_starts: np.ndarray  # (n, 3) int64 patch corners, patch outside the slab
    val_starts: np.ndarray  # (m, 3) corners of patches inside the slab


def patches_within(defined: np.ndarray, starts: np.ndarray, size: int) -> np.ndarray:
    """Whether each cube (corner ``starts``, ``(n, 3)``, edge ``size``) lies in ``defined``.

    Counts the voxels outside ``defined`` in every cube at once from a summed-volume table.
    """
    table = np.pad(np.cumsum(np.cumsum(np.cumsum(~np.asarray(defined, bool), 0, dtype=np.int64),
                                       1), 2), ((1, 0),) * 3)
    lo = np.asarray(starts, np.int64).reshape(-1, 3)
    hi = lo + size
    outside = np.zeros(len(lo), np.int64)
    for corner in np.ndindex(2, 2, 2):
        index = tuple(np.where(bit, hi[:, axis], lo[:, axis]) for axis, bit in enumerate(corner))
        outside += (-1) ** (3 - sum(corner)) * table[index]
    return outside == 0


class PatchSampler:
    """Random training patches and a fixed validation set from prepared volumes.

    Parameters
    ----------
    volumes : list of TrainingVolume
    patch_size : int
        Edge of the cubic patches; reduced (with a warning) when a volume is too
        small to hold a training and a validation patch along its longest axis
        and one patch along every other.
    validation : bool
        Hold out a slab per volume (False: every patch position trains, and
        :meth:`validation_set` raises).
    """

    def __init__(self, volumes: list[TrainingVolume], patch_size: int, *, validation: bool = True):
        if not volumes:
            raise ValueError("no training volumes")
        self.volumes = list(volumes)
        self.validation = validation
        limit = min(min(min(v.image.shape), max(v.image.shape) // (2 if validation else 1))
                    for v in self.volumes)
        if limit < MIN_PATCH:
            small = min(self.volumes, key=lambda v: min(v.image.shape))
            raise ValueError(f"{small.name}: volume {small.image.shape} too small for training patches")
        if patch_size > limit:
            LOGGER.warning("patch size reduced from %d to %d to fit the smallest volume", patch_size, limit)
        self.patch_size = int(min(patch_size, limit))
        self._layouts = [self._layout(v) for v in self.volumes]

    def _layout(self, volume: TrainingVolume) -> _Layout:
        if volume.defined is not None:
            try:
                return self._split(volume, volume.defined)
            except ValueError:
                # a small image (or a large motion): patches of this size do not fit inside
                # the region where both images hold data; train on them as they are
                LOGGER.warning("%s: no %d-voxel patch split fits where both images hold "
                               "data; some patches reach beyond it", volume.name,
                               self.patch_size)
        return self._split(volume, None)

    def _split(self, volume: TrainingVolume, defined: np.ndarray | None) -> _Layout:
        """Training and validation patch corners; with ``defined``, only patches inside it."""
        size = self.patch_size
        shape = np.array(volume.image.shape)
        # Patch corners centred on head voxels (every 2nd voxel per axis is plenty
        # and keeps the tables small), clipped into the volume.
        centres = np.argwhere(volume.mask[::2, ::2, ::2]) * 2
        starts = np.clip(centres - size // 2, 0, shape - size)
        if defined is not None:
            keep = patches_within(defined, starts, size)
            starts, centres = starts[keep], centres[keep]
        if not self.validation:
            if defined is not None and len(starts) == 0:
                raise ValueError(f"{volume.name}: no training patch fits")
            return _Layout(np.unique(starts, axis=0), np.empty((0, 3), np.int64))
        axis = int(np.argmax(shape))
        head = np.flatnonzero(volume.mask.any(axis=tuple(a for a in range(3) if a != axis)))
        slab = int(np.clip(round(head[0] + 0.75 * (head[-1] + 1 - head[0])) - size // 2,
                           0, shape[axis] - size))
        if slab < size and slab + 2 * size > shape[axis]:
            slab = int(shape[axis]) - size  # leave room for one training patch before the slab
        outside = (starts[:, axis] + size <= slab) | (starts[:, axis] >= slab + size)
        inside = (centres[:, axis] >= slab) & (centres[:, axis] < slab + size)
        val_starts = starts[inside].copy()
        val_starts[:, axis] = slab
        if defined is not None:  # moved onto the slab: check again
            val_starts = val_starts[patches_within(defined, val_starts, size)]
        train_starts = np.unique(starts[outside], axis=0)
        if len(train_starts) == 0 or len(val_starts) == 0:
            raise ValueError(f"{volume.name}: head too small to split into training and validation")
        return _Layout(train_starts, np.unique(val_starts, axis=0))

    def _cut(self, array: np.ndarray, start) -> np.ndarray:
        z, y, x = (int(s) for s in start)
        size = self.patch_size
        return array[z:z + size, y:y + size, x:x + size]

    def training_batch(self, step: int, batch_size: int, level: float, seed: int):
        """Inputs and targets ``(batch, 1, P, P, P)`` float32 for training step ``step``."""
        rng = step_rng(seed, level, step)
        inputs, targets = [], []
        for _ in range(batch_size):
            index = int(rng.integers(len(self.volumes)))
            volume, layout = self.volumes[index], self._layouts[index]
            start = layout.train_starts[rng.integers(len(layout.train_starts))]
            flips = tuple(axis for axis in range(3) if rng.random() < 0.5)
            std = added_noise_std(level, volume.noise_percent)
            shape = (self.patch_size,) * 3
            noisy_input = self._cut(volume.image, start) + std * rng.standard_normal(shape)
            noisy_target = self._cut(volume.pair, start) + std * rng.standard_normal(shape)
            inputs.append(np.flip(noisy_input, flips))
            targets.append(np.flip(noisy_target, flips))
        return (np.stack(inputs)[:, None].astype(np.float32),
                np.stack(targets)[:, None].astype(np.float32))

    def validation_set(self, level: float, per_volume: int, seed: int) -> dict:
        """Fixed validation patches at ``level``: always the same for the same arguments.

        Returns
        -------
        dict
            ``inputs``, ``targets`` (noisy, as in training, no flips), ``originals``
            (the scan before added noise), ``masks`` (head), all ``(n, 1, P, P, P)``,
            and ``added_std`` (per patch, network units).
        """
        if not self.validation:
            raise ValueError("this sampler holds out no validation slab")
        rng = step_rng(seed, level, 0, purpose=VALIDATION_DRAWS)
        out = {"inputs": [], "targets": [], "originals": [], "masks": [], "added_std": []}
        shape = (self.patch_size,) * 3
        for volume, layout in zip(self.volumes, self._layouts):
            chosen = rng.choice(len(layout.val_starts), size=min(per_volume, len(layout.val_starts)),
                                replace=False)
            std = added_noise_std(level, volume.noise_percent)
            for start in layout.val_starts[np.sort(chosen)]:
                original = self._cut(volume.image, start)
                out["inputs"].append(original + std * rng.standard_normal(shape))
                out["targets"].append(self._cut(volume.pair, start) + std * rng.standard_normal(shape))
                out["originals"].append(original)
                out["masks"].append(self._cut(volume.mask, start))
                out["added_std"].append(std)
        result = {key: np.stack(value)[:, None].astype(np.float32 if key != "masks" else bool)
                  for key, value in out.items() if key != "added_std"}
        result["added_std"] = np.asarray(out["added_std"], dtype=np.float64)
        return result


class MultiLevelSampler:
    """One :class:`PatchSampler` per noise level behind the :class:`PatchSampler` interface.

    For the single-model ablation (one network trained on all levels): training
    batches and validation sets of level ``p`` come from the sampler of ``p``, so
    the network sees at each level exactly the scans the ``p`` % expert was trained
    on (:func:`~bids_auton2n.train.curriculum.eligible_volumes`), with the same
    patches, flips and noise draws at the same step.

    Parameters
    ----------
    samplers : mapping of float to PatchSampler
        Level (percent) -> sampler; all with the same patch size.
    """

    def __init__(self, samplers):
        if not samplers:
            raise ValueError("no samplers")
        self.samplers = {float(level): sampler for level, sampler in samplers.items()}
        sizes = {sampler.patch_size for sampler in self.samplers.values()}
        if len(sizes) != 1:
            raise ValueError(f"the levels' samplers have different patch sizes {sorted(sizes)}")
        self.patch_size = sizes.pop()

    @property
    def levels(self) -> tuple[float, ...]:
        return tuple(sorted(self.samplers))

    def _sampler(self, level: float) -> PatchSampler:
        try:
            return self.samplers[float(level)]
        except KeyError:
            raise ValueError(f"no sampler for level {level} % (levels: {list(self.levels)})") from None

    def training_batch(self, step: int, batch_size: int, level: float, seed: int):
        """:meth:`PatchSampler.training_batch` of the sampler of ``level``."""
        return self._sampler(level).training_batch(step, batch_size, level, seed)

    def validation_set(self, level: float, per_volume: int, seed: int) -> dict:
        """:meth:`PatchSampler.validation_set` of the sampler of ``level``."""
        return self._sampler(level).validation_set(level, per_volume, seed)
