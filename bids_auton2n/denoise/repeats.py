"""Denoising repeated acquisitions of one image together (seed papers 001 and 004).

When an image was acquired more than once (``run-1``/``run-2``, echoes), the second noisy
realization does not have to be synthesized: :func:`denoise_repeats` aligns every run to
the first (:mod:`.align`), fine-tunes the selected expert on the aligned runs
(:mod:`bids_auton2n.train.repeats`: consensus Noise2Noise or Noise2Average) and denoises
every run in its own space with the fine-tuned network (then RI-NLM fusion and the
collaborative Wiener stage and do-no-harm guard, :func:`~.pipeline.final_image`, as for a
single image).  The *combined*
image, on the first run's grid, is the mean of the network's outputs for the runs (the
papers' output) passed through the same final stage with the mean of the aligned runs as
the noisy image: RI-NLM then averages the higher-SNR mean, and the guard bounds what was
removed from it.  On a development object (a real training scan, not the benchmark
phantom) at 5 % this gave 37.44 dB against 37.27 dB for the plain mean of the final
per-run images.

A run whose alignment is implausible (:func:`~.align.alignment_check`) is left out of the
group and denoised on its own (:func:`~.pipeline.denoise_array`); when no run is left
beside the reference, the whole group takes the single-image path and nothing is averaged.

Every caller (the Nipype interfaces, the benchmark) goes through :func:`denoise_repeats`
(or its parts :func:`align_runs` and :func:`denoise_aligned_runs`), so the library and the
BIDS-App compute the same images.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from .align import Alignment, align_run, resample_to_reference
from .experts import ExpertChoice, ExpertRegistry
from .inference import cnn_denoise, resolve_device
from .intensity import IntensityNormalizer, sanitize
from .noise import NoiseEstimate, head_mask
from ..utils.repeats import DEFAULT_REPEAT_METHOD, REPEAT_METHODS, REPEATS_BUDGET_S
from .pipeline import (
    CONTRASTS, DenoiseResult, _stage, denoise_array, estimate_array_noise, final_image,
    noise_for_level, output_image,
)

LOGGER = logging.getLogger("bids_auton2n.denoise")

#: Most Noise2Average iterations.
N2A_ITERATIONS = 3
#: ``PairSource`` of the sidecars of a group's runs (one of :data:`~.pipeline.PAIR_SOURCES`).
PAIR_SOURCE_REPEATS = "repeats"


@dataclass
class RepeatsResult:
    """What :func:`denoise_repeats` produced and how.

    Attributes
    ----------
    denoised : list of ndarray
        Every run denoised in its own space (float32, non-finite voxels restored).
    combined : ndarray or None
        Mean of the denoised runs of the group on the reference grid; ``None`` when the
        group fell back to the single-image path.
    alignments : list of Alignment
        One per run (the reference's is the identity).
    in_group : list of bool
        Whether each run was denoised with the group (False: left out, single path).
    noise : list of NoiseEstimate
    average_noise : NoiseEstimate or None
        Noise of the mean of the aligned runs (the combined image's input).
    method : str
        ``"consensus"`` or ``"n2a"``.
    expert : ExpertChoice
        The expert fine-tuning started from.
    expert_sha256 : str
    training : dict
        Summary of the fine-tuning (epochs, steps, scores, stopping reason).
    state_dict : dict or None
        The fine-tuned network's weights.
    singles : list of DenoiseResult or None
        The single-image results of the runs left out of the group.
    tta, fusion, guard, wiener, rician : bool
    device : str
    timings : dict
    """

    denoised: list
    combined: np.ndarray | None
    alignments: list
    in_group: list
    noise: list
    method: str
    average_noise: NoiseEstimate | None = None
    expert: ExpertChoice | None = None
    expert_sha256: str | None = None
    expert_selection: str = "nearest"
    training: dict = field(default_factory=dict)
    state_dict: dict | None = None
    singles: list = field(default_factory=list)
    tta: bool = True
    fusion: bool = True
    guard: bool = True
    wiener: bool = True
    rician: bool = True
    device: str = "cpu"
    timings: dict = field(default_factory=dict)

    @property
    def fell_back(self) -> bool:
        """No run was averaged with the reference: every run took the single-image path."""
        return self.combined is None

    def fallback_reasons(self) -> list[str]:
        """Why runs were left out of the group (one line per run left out)."""
        return [f"run {index + 1}: {alignment.reason}"
                for index, (alignment, used) in enumerate(zip(self.alignments, self.in_group))
                if not used and alignment.reason]

    def repeats_record(self) -> dict:
        """JSON-able description of the group's processing (sidecars, reports)."""
        return {
            "Method": {"consensus": "consensus Noise2Noise (Wu et al. 2019)",
                       "n2a": "Noise2Average"}[self.method],
            "RunsCombined": int(sum(self.in_group)) if not self.fell_back else 0,
            "FineTuning": self.training,
            "StartExpert": (None if self.expert is None else
                            {"NoiseLevelPercent": self.expert.level, "SHA256": self.expert_sha256}),
            "Alignments": [a.to_dict() for a in self.alignments],
            "Fallback": self.fallback_reasons(),
        }

    def provenance(self, index: int) -> dict:
        """Sidecar record of run ``index`` (the :meth:`DenoiseResult.provenance` layout)."""
        if not self.in_group[index]:
            # a run left out of the group: its own single-image path and PairSource
            return {**self.singles[index].provenance(),
                    "ExpertSelection": self.expert_selection, "Repeats": self.repeats_record()}
        return {**self._group_provenance(self.noise[index]), "PairSource": PAIR_SOURCE_REPEATS,
                "ExpertSelection": self.expert_selection, "Repeats": self.repeats_record()}

    def combined_provenance(self) -> dict:
        """Sidecar record of the combined image (noise: that of the mean of the runs)."""
        return {**self._group_provenance(self.average_noise), "PairSource": PAIR_SOURCE_REPEATS,
                "ExpertSelection": self.expert_selection, "Repeats": self.repeats_record()}

    def _group_provenance(self, noise: NoiseEstimate) -> dict:
        result = DenoiseResult(
            denoised=None, noise=noise, noise_source=self.training.get("noise_source", "estimated"),
            experts=[self.expert], weights_sha256={f"{self.expert.level:g}": self.expert_sha256},
            tta=self.tta, fusion=self.fusion, rician=self.rician, device=self.device,
            guard=self.guard, wiener=self.wiener, timings=self.timings)
        record = result.provenance()
        record["SoftwareVersion"] = __version__
        return record


def align_runs(runs: list[np.ndarray], affines: list[np.ndarray], *,
               progress: bool = False) -> list[Alignment]:
    """Align every run to the first (:func:`~.align.align_run`); the first gets the identity."""
    reference = sanitize(runs[0])[0]
    head = head_mask(reference)
    alignments = [Alignment.identity()]
    for index, (run, affine) in enumerate(zip(runs[1:], affines[1:]), start=2):
        if progress:
            LOGGER.info("aligning run %d to run 1 ...", index)
        alignment = align_run(reference, affines[0], sanitize(run)[0], affine, head=head)
        LOGGER.info("run %d: rotation %.2f deg, shift %.2f mm, correlation %.3f (headers only "
                    "%.3f)%s", index, alignment.rotation_deg, alignment.shift_mm,
                    alignment.correlation, alignment.correlation_header,
                    "" if alignment.plausible else f": IMPLAUSIBLE ({alignment.reason})")
        alignments.append(alignment)
    return alignments


def _network_model(state_dict: dict, device):
    from .network import ResidualDenoiser3D

    model = ResidualDenoiser3D()
    model.load_state_dict(state_dict)
    return model.to(device).eval()


def denoise_repeats(
    runs: list[np.ndarray],
    affines: list[np.ndarray],
    *,
    contrast: str = "T1w",
    method: str = DEFAULT_REPEAT_METHOD,
    budget_s: float | None = REPEATS_BUDGET_S,
    max_steps: int | None = None,
    iterations: int = N2A_ITERATIONS,
    alignments: list[Alignment] | None = None,
    noise_level: float | None = None,
    expert: float | None = None,
    tta: bool = True,
    fusion: bool = True,
    guard: bool = True,
    wiener: bool = True,
    device: str = "auto",
    rician: bool = True,
    registry: ExpertRegistry | None = None,
    seed: int = 0,
    progress: bool = False,
) -> RepeatsResult:
    """Denoise repeated acquisitions of one image together (see the module docstring).

    Parameters
    ----------
    runs : list of ndarray, 3D
        The runs in image units, each on its own grid, the reference first.
    affines : list of ndarray (4, 4)
        Their voxel-to-world (RAS mm) affines.
    contrast : {"T1w", "T2w", "FLAIR", "PDw"}
    method : {"consensus", "n2a"}
        Consensus Noise2Noise or Noise2Average fine-tuning.
    budget_s : float or None
        Wall-clock budget of the fine-tuning (``None``: no limit).
    max_steps : int, optional
        Adam steps of the fine-tuning (a bound that, unlike the time budget, does not
        depend on the machine's speed).
    iterations : int
        Most Noise2Average iterations (they stop earlier when they no longer help).
    alignments : list of Alignment, optional
        Precomputed :func:`align_runs` result (computed when omitted).
    noise_level : float, optional
        Noise (percent) of every run, instead of the estimates.
    expert : float, optional
        Expert level to start from instead of the nearest to the runs' median noise.
    tta, fusion, guard, wiener, device, rician, registry, progress
        As in :func:`~.pipeline.denoise_array`.
    seed : int
        Seeds the fine-tuning's random draws.

    Returns
    -------
    RepeatsResult
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, got {contrast!r}")
    if method not in REPEAT_METHODS:
        raise ValueError(f"method must be one of {', '.join(REPEAT_METHODS)}, got {method!r}")
    if len(runs) != len(affines) or len(runs) < 2:
        raise ValueError("denoise_repeats needs two or more runs, each with its affine")
    alignments = alignments if alignments is not None else align_runs(runs, affines,
                                                                       progress=progress)
    return denoise_aligned_runs(
        runs, affines, alignments, contrast=contrast, method=method, budget_s=budget_s,
        max_steps=max_steps, iterations=iterations, noise_level=noise_level, expert=expert, tta=tta,
        fusion=fusion, guard=guard, wiener=wiener, device=device, rician=rician,
        registry=registry, seed=seed, progress=progress)


def denoise_aligned_runs(runs, affines, alignments, *, contrast, method, budget_s, max_steps,
                         iterations,
                         noise_level, expert, tta, fusion, guard, wiener, device, rician,
                         registry,
                         seed, progress) -> RepeatsResult:
    """:func:`denoise_repeats` once the runs are aligned (same parameters)."""
    from ..train.repeats import finetune_consensus, finetune_noise2average

    start = time.perf_counter()
    timings: dict[str, float] = {}
    registry = registry or ExpertRegistry()
    torch_device = resolve_device(device)
    finite, nonfinite, heads, noises = [], [], [], []
    for run in runs:
        clean, bad = sanitize(run)
        finite.append(clean)
        nonfinite.append(bad)
        heads.append(head_mask(clean))
    for clean, head in zip(finite, heads):
        if noise_level is None:
            noises.append(estimate_array_noise(clean, contrast=contrast, mask=head,
                                               timings=timings, progress=progress))
        else:
            noises.append(noise_for_level(clean, mask=head, contrast=contrast,
                                          percent=noise_level))
    in_group = [True] + [a.plausible for a in alignments[1:]]
    for index, alignment in enumerate(alignments[1:], start=2):
        if not alignment.plausible:
            LOGGER.warning("run %d is denoised on its own, not with the group: %s", index,
                           alignment.reason)
    common = dict(tta=tta, fusion=fusion, guard=guard, wiener=wiener, device=device, rician=rician,
                  registry=registry, progress=progress, contrast=contrast)
    singles = [None] * len(runs)
    members = [index for index, used in enumerate(in_group) if used]
    if len(members) < 2:
        in_group = [False] * len(runs)
        members = []
    for index, used in enumerate(in_group):
        if not used:
            singles[index] = denoise_array(runs[index], mask=heads[index],
                                           noise_level=noise_level, expert=expert, **common)
    result = RepeatsResult(denoised=[s.denoised if s is not None else None for s in singles],
                           combined=None, alignments=list(alignments), in_group=in_group,
                           noise=noises, method=method, singles=singles, tta=tta,
                           fusion=fusion, guard=guard, wiener=wiener, rician=rician,
                           device=str(torch_device),
                           timings=timings, expert_selection="nearest" if expert is None else "user")
    if not members:
        timings["total"] = time.perf_counter() - start
        return result

    # Fine-tuning material: the group's runs on the reference grid, each in its own network
    # units (divided by its own reference intensity: sessions differ in scale).
    reference_shape, reference_affine = finite[0].shape, affines[0]
    aligned, coverage = [], []
    with _stage("resample", timings, progress):
        for index in members:
            if index == 0:
                aligned.append(finite[0])
                coverage.append(np.ones(reference_shape, bool))
                continue
            moved, covered = resample_to_reference(finite[index], affines[index],
                                                   alignments[index].matrix, reference_shape,
                                                   reference_affine)
            aligned.append(moved)
            coverage.append(covered)
    normalizers = [IntensityNormalizer(noises[index].reference_intensity) for index in members]
    units = [n.forward(a) for n, a in zip(normalizers, aligned)]
    defined = np.logical_and.reduce(coverage)  # where every run holds data
    train_mask = heads[0] & defined
    percent = float(np.median([noises[index].percent for index in members]))
    start_level = float(expert) if expert is not None else registry.nearest_level(percent)
    start_model = registry.load(start_level, "cpu")
    result.expert = ExpertChoice(level=start_level, weight=1.0)
    result.expert_sha256 = registry.sha256(start_level)

    def predict(model, run_units):
        return cnn_denoise(run_units, [(model, 1.0)], tta=False, device=torch_device,
                           mask=train_mask)

    with _stage("finetune", timings, progress):
        if method == "consensus":
            trained = finetune_consensus(units, train_mask, defined=defined,
                                         init_state=start_model.state_dict(),
                                         budget_s=budget_s, max_steps=max_steps, seed=seed,
                                         progress=progress)
            state = trained.state_dict
            summary = {key: value for key, value in trained.summary().items()
                       if key != "history"}
            summary["consensus_estimate"] = {"start": trained.history[0]["val_loss"],
                                             "best": trained.best_score}
        else:
            trained = finetune_noise2average(units, train_mask, defined=defined,
                                             init_state=start_model.state_dict(),
                                             predict=predict, budget_s=budget_s,
                                             max_steps=max_steps, iterations=iterations,
                                             seed=seed, progress=progress)
            state = trained.state_dict
            summary = trained.summary()
    summary["budget_s"] = budget_s
    summary["max_steps"] = max_steps
    summary["noise_source"] = "estimated" if noise_level is None else "user"
    result.training = summary
    result.state_dict = state
    model = _network_model(state, torch_device)

    # Every run of the group denoised in its own space with the fine-tuned network; the
    # network's outputs also go onto the reference grid, for the combined image.
    cnn_on_reference = []
    for position, index in enumerate(members):
        normalizer = normalizers[position]
        with _stage("cnn", timings, progress):
            cnn = normalizer.inverse(cnn_denoise(normalizer.forward(finite[index]), [(model, 1.0)],
                                                 tta=tta, device=torch_device, mask=heads[index],
                                                 progress=progress))
        denoised = final_image(finite[index], cnn, noises[index].sigma, fusion=fusion,
                               guard=guard, rician=rician, wiener=wiener, timings=timings,
                               progress=progress)
        result.denoised[index] = output_image(denoised, runs[index], nonfinite[index])
        if index != 0:
            with _stage("resample", timings, progress):
                cnn = resample_to_reference(cnn, affines[index], alignments[index].matrix,
                                            reference_shape, reference_affine)[0]
        cnn_on_reference.append(cnn)
    # The combined image: the final stage (RI-NLM fusion, Wiener, guard) of the single-image path
    # applied to the mean of the aligned runs, guided by the mean of the network's outputs,
    # with the noise of that mean; all in the reference's units (each run rescaled by the
    # ratio of the reference tissue intensities).
    scales = [noises[0].reference_intensity / noises[index].reference_intensity
              for index in members]
    average = coverage_mean([s * a for s, a in zip(scales, aligned)], coverage)
    guide = coverage_mean([s * c for s, c in zip(scales, cnn_on_reference)], coverage)
    result.average_noise = estimate_array_noise(average, contrast=contrast, mask=heads[0],
                                                timings=timings, progress=progress)
    combined = final_image(average, guide, result.average_noise.sigma, fusion=fusion,
                           guard=guard, rician=rician, wiener=wiener, timings=timings,
                           progress=progress)
    result.combined = output_image(combined, runs[0], nonfinite[0])
    timings["total"] = time.perf_counter() - start
    return result


def coverage_mean(images: list[np.ndarray], coverage: list[np.ndarray]) -> np.ndarray:
    """Voxel-wise mean of ``images`` over those whose ``coverage`` includes the voxel (the
    first image, the reference, covers its whole grid)."""
    stack = np.stack([np.asarray(image, np.float32) for image in images])
    weights = np.stack(coverage).astype(np.float32)
    return ((stack * weights).sum(axis=0) / np.maximum(weights.sum(axis=0), 1.0)).astype(np.float32)
