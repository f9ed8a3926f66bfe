"""Curriculum training of the five noise-level experts and per-dataset fine-tuning.

Curriculum (paper section 2.4): the 1 % expert is trained from random weights,
the 3 % expert starts from the 1 % weights, the 5 % from the 3 %, and so on,
each trained by :func:`~bids_auton2n.train.trainer.train_expert` and written
to a registry directory with :func:`~bids_auton2n.denoise.experts.write_manifest_entry`
as soon as it is done (so an interrupted curriculum keeps its finished experts
and resumes the one in progress from its checkpoint).

The single model (the paper's ablation of the mixture of experts) is one network
trained on all the levels at once, from the 1 % expert's initialisation, on the
same scans per level; it is saved as a one-entry registry at the lowest level,
which the registry then selects for every noise estimate (see
:func:`train_single_model`).

Fine-tuning adapts one expert to a user's dataset under a wall-clock budget and
saves a one-expert registry that every subject of the dataset is then denoised with.
Two recipes (``base``): the synthetic pairs of the user's noisy scans with no added
noise (the scans' own noise is the Noise2Noise noise), or the experts' own recipe with
the dataset's anatomy: each scan denoised by the starting registry, the pair computed
on that denoised image, and independent noise added on the fly to input and target
up to the starting expert's level.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..denoise.experts import ExpertRegistry, write_manifest_entry
from ..utils.bids import contrast_from_filename
from .data import (
    BASES, MultiLevelSampler, PatchSampler, TrainingVolume, parse_volume_spec, prepare_volume,
)
from .trainer import TrainConfig, TrainResult, train_expert

LOGGER = logging.getLogger("bids_auton2n.train")

#: Noise levels (percent) of the shipped experts (paper section 2.4).
LEVELS = (1.0, 3.0, 5.0, 7.0, 9.0)
#: Relative share of the total time budget per level: the from-scratch 1 % expert
#: gets twice the time of the fine-tuned ones (curriculum levels start close to
#: their optimum, the paper's reason for the curriculum).
FIRST_LEVEL_SHARE = 2.0
#: A scan trains the expert of level ``p`` only if its own noise is at most this
#: multiple of ``p``: noise can be added to a scan, never removed, so a scan noisier
#: than the level would teach the expert a higher level than its own.
MAX_NOISE_RATIO = 1.25
#: The real scans of the project's training set: file, contrast and preparation
#: (``../shared/data``, see its README; the choices per scan are in ``docs/model-card.md``).
#: Left out: ``philips_ADNI_MPRAGE_T1w`` (the held-out real-texture validation scan) and the
#: two glioma scans (6.5 mm slices: 3D patches of them have no close matches, the synthetic
#: pair is then anatomy more than noise; they are for the neighbouring-slice path).
TRAINING_SCANS = (
    ("stroke_T1.nii.gz", "T1w", "none"),
    ("stroke_T2.nii.gz", "T2w", "none"),
    ("stroke_FLAIR.nii.gz", "FLAIR", "none"),
    ("seg3D_MR.nii.gz", "T1w", "none"),
    ("chris_PD.nii.gz", "PDw", "none"),
    ("uih_T1w_sess1.nii.gz", "T1w", "average-inplane-2x2"),
    ("uih_T1w_sess2.nii.gz", "T1w", "average-inplane-2x2"),
    ("xa30_T1w_2mm.nii.gz", "T1w", "none"),
    ("studyforrest_T1w_0.7mm.nii.gz", "T1w", "none"),
)
#: Default wall-clock budget of :func:`finetune` (seconds): ~10 min per dataset
#: on 2 CPU cores, pair generation included.
FINETUNE_BUDGET_S = 600.0
#: Default training base of :func:`finetune` (see its ``base``): on the noisy benchmark
#: phantom, "noisy" lost 4-10 dB against the shipped expert, "denoised" gains 0.40 / 0.33 /
#: 0.09 dB at 3 / 5 / 9 % over the current experts (benchmarks/results/finetune_gain.md).
FINETUNE_BASE = "denoised"
#: Default training base of the curriculum (``bids_auton2n-train --base``).
CURRICULUM_BASE = "noisy"


def git_revision() -> str:
    """``git describe``-like revision of the source tree (``"unknown"`` outside git)."""
    root = Path(__file__).resolve().parents[2]
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                  text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return revision + ("-dirty" if dirty.strip() else "")


def current_command() -> str:
    """The command line of this process, shell-quoted."""
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def load_volumes(specs, *, work_dir=None, exclude_centre=False, contrast=None, base="noisy",
                 registry=None) -> list[TrainingVolume]:
    """Prepare scans given as paths, ``"PATH:CONTRAST"`` strings or ``(path, contrast)`` pairs.

    A tuple may add the scan's preparation, ``(path, contrast, preprocess)``
    (:func:`~bids_auton2n.train.data.preprocess_scan`).
    The contrast defaults to ``contrast``, else the file's BIDS suffix, else T1w.
    ``base`` and ``registry``: see :func:`~bids_auton2n.train.data.prepare_volume`.
    """
    volumes = []
    for spec in specs:
        if isinstance(spec, TrainingVolume):
            volumes.append(spec)
            continue
        preprocess = "none"
        if isinstance(spec, tuple):
            path, given = Path(spec[0]), spec[1]
            preprocess = spec[2] if len(spec) > 2 else preprocess
        else:
            path, given = parse_volume_spec(str(spec))
        volumes.append(prepare_volume(
            path, given or contrast or contrast_from_filename(path), work_dir=work_dir,
            exclude_centre=exclude_centre, base=base, registry=registry, preprocess=preprocess,
        ))
    return volumes


def _provenance(volumes, config: TrainConfig, result: TrainResult, *, command, exclude_centre,
                initialised_from, extra=None) -> dict:
    settings = asdict(config)
    settings.pop("device")
    return {
        "training_data": [v.record() for v in volumes],
        "command": command,
        "revision": git_revision(),
        "software_version": __version__,
        "torch_version": torch.__version__,
        "initialised_from": initialised_from,
        "pairs": {"exclude_centre": bool(exclude_centre)},
        "settings": settings,
        **result.summary(),
        **(extra or {}),
    }


def eligible_volumes(volumes: list[TrainingVolume], level: float,
                     max_noise_ratio: float | None = MAX_NOISE_RATIO) -> list[TrainingVolume]:
    """Scans whose own noise is at most ``max_noise_ratio * level`` (all if None).

    When none is that clean, the cleanest scan alone (with a warning): an expert
    needs data, and it is the closest to the level there is.
    """
    if max_noise_ratio is None:
        return list(volumes)
    used = [v for v in volumes if v.noise_percent <= max_noise_ratio * level]
    if not used:
        cleanest = min(volumes, key=lambda v: v.noise_percent)
        LOGGER.warning("no scan has noise <= %.2f%% for the %g%% expert; using the cleanest, "
                       "%s (%.2f%%)", max_noise_ratio * level, level, cleanest.name,
                       cleanest.noise_percent)
        used = [cleanest]
    return used


def train_curriculum(
    volumes: list[TrainingVolume],
    *,
    out_dir: str | Path,
    work_dir: str | Path,
    levels=LEVELS,
    total_budget_s: float | None = None,
    expert_budget_s: float | None = None,
    total_steps: int | None = None,
    base_config: TrainConfig | None = None,
    exclude_centre: bool = False,
    max_noise_ratio: float | None = MAX_NOISE_RATIO,
    command: str | None = None,
    progress: bool = True,
) -> list[TrainResult]:
    """Train the experts of ``levels`` in increasing order, each initialised from the previous.

    Parameters
    ----------
    volumes : list of TrainingVolume
    out_dir : path-like
        Registry directory receiving the weights and ``manifest.json``.
    work_dir : path-like
        Checkpoints (``expert_<level>.ckpt``); rerunning resumes from them.
    levels : sequence of float
        Noise levels in percent.
    total_budget_s : float, optional
        Wall-clock budget of the whole curriculum, shared out dynamically: each
        level gets the remaining time times its share (:data:`FIRST_LEVEL_SHARE`
        for the first level, 1 for the others) over the remaining shares, so
        time an early-stopped level leaves unused goes to the next ones.
    expert_budget_s : float, optional
        Upper limit per level.
    total_steps : int, optional
        Adam steps of the whole curriculum, shared out like the time: each level gets the
        steps still left times its share over the remaining shares (a level that stops
        early hands its unused steps on).  Unlike a time budget it makes the run the same
        on every machine.
    base_config : TrainConfig, optional
        Settings other than ``level`` and ``time_budget_s``.
    exclude_centre : bool
        Recorded in the provenance (the volumes' pairs must have been built so).
    max_noise_ratio : float or None
        See :func:`eligible_volumes`; None trains every level on every scan.
    command : str, optional
        Command recorded in the manifest (default: this process's command line).
    progress : bool

    Returns
    -------
    list of TrainResult
        One per level, in order.
    """
    levels = sorted(float(level) for level in levels)
    base = base_config or TrainConfig(level=levels[0])
    command = command or current_command()
    work_dir = Path(work_dir)
    shares = [FIRST_LEVEL_SHARE] + [1.0] * (len(levels) - 1)
    results: list[TrainResult] = []
    spent = 0.0
    previous = None
    steps_spent = 0
    for index, level in enumerate(levels):
        budget = expert_budget_s
        if total_budget_s is not None:
            fair = max(total_budget_s - spent, 0.0) * shares[index] / sum(shares[index:])
            budget = fair if budget is None else min(budget, fair)
        max_steps = base.max_steps
        if total_steps is not None:
            fair_steps = max(round((total_steps - steps_spent) * shares[index]
                                   / sum(shares[index:])), 1)
            max_steps = fair_steps if max_steps is None else min(max_steps, fair_steps)
        config = replace(base, level=level, time_budget_s=budget, max_steps=max_steps)
        used = eligible_volumes(volumes, level, max_noise_ratio)
        LOGGER.info("expert %g%%: budget %s s, initialised from %s, scans %s", level,
                    "none" if budget is None else f"{budget:.0f}",
                    "random weights" if previous is None else f"{previous.level:g}% expert",
                    ", ".join(v.name for v in used))
        result = train_expert(
            PatchSampler(used, base.patch_size), config,
            init_state=None if previous is None else previous.state_dict,
            checkpoint=work_dir / f"expert_{level:g}.ckpt", progress=progress,
        )
        spent += result.train_seconds
        steps_spent += result.steps
        write_manifest_entry(out_dir, level, result.state_dict, _provenance(
            used, config, result, command=command, exclude_centre=exclude_centre,
            initialised_from=None if previous is None else previous.level,
            extra={"scans_left_out_as_noisier_than_level": [
                v.name for v in volumes if v not in used]},
        ))
        results.append(result)
        previous = result
    return results


def train_single_model(
    volumes: list[TrainingVolume],
    *,
    out_dir: str | Path,
    work_dir: str | Path,
    levels=LEVELS,
    base_config: TrainConfig | None = None,
    exclude_centre: bool = False,
    max_noise_ratio: float | None = MAX_NOISE_RATIO,
    command: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train one network on all ``levels`` (ablation of the mixture of experts).

    Everything but the level schedule is the curriculum's: the 1 % expert's
    initialisation (seeded random weights, zero residual head = identity), the
    same patches, flips, losses, optimiser and early stopping, and at each level
    the scans that level's expert trains on (:func:`eligible_volumes`).  Each Adam
    step draws its level uniformly from ``levels`` (seeded by ``(seed, step)``);
    the batch of step ``s`` at level ``p`` is the one the ``p`` % expert draws at
    its step ``s``.  Validation pools every level's held-out patches.

    Parameters
    ----------
    volumes : list of TrainingVolume
    out_dir : path-like
        Registry directory written: one weight file registered at the lowest level
        (``min(levels)``).  The registry thus selects it for every estimate at or
        above that level and, below it, blends it with the identity exactly as it
        blends the lowest expert, so the app uses it like the mixture of experts.
    work_dir : path-like
        Checkpoint ``single_model.ckpt``; rerunning resumes from it.
    levels : sequence of float
    base_config : TrainConfig, optional
        Settings other than ``level`` and ``levels`` (budgets: ``time_budget_s``,
        ``max_epochs``, ``max_steps``).
    exclude_centre, max_noise_ratio, command, progress
        As in :func:`train_curriculum`.

    Returns
    -------
    TrainResult
    """
    levels = tuple(sorted(float(level) for level in levels))
    base = base_config or TrainConfig(level=levels[0])
    config = replace(base, level=levels[0], levels=levels)
    used = {level: eligible_volumes(volumes, level, max_noise_ratio) for level in levels}
    sampler = MultiLevelSampler({level: PatchSampler(scans, base.patch_size)
                                 for level, scans in used.items()})
    LOGGER.info("single model on levels %s: %s", ", ".join(f"{level:g}%" for level in levels),
                "; ".join(f"{level:g}%: {', '.join(v.name for v in scans)}"
                          for level, scans in used.items()))
    result = train_expert(sampler, config, checkpoint=Path(work_dir) / "single_model.ckpt",
                          progress=progress)
    used_ids = {id(v) for scans in used.values() for v in scans}
    trained_on = [v for v in volumes if id(v) in used_ids]
    write_manifest_entry(out_dir, levels[0], result.state_dict, _provenance(
        trained_on, config, result, command=command or current_command(),
        exclude_centre=exclude_centre, initialised_from=None,
        extra={"single_model": {
            "levels": list(levels),
            "scans_per_level": {f"{level:g}": [v.name for v in scans]
                                for level, scans in used.items()},
            "registered_at": "the lowest level: selected for every estimate at or above it, "
                             "blended with the identity below it",
        }},
    ))
    return result


def finetune(
    volumes,
    *,
    start_level: float | None = None,
    out_dir: str | Path,
    time_budget_s: float | None = FINETUNE_BUDGET_S,
    max_epochs: int | None = None,
    seed: int = 0,
    registry: ExpertRegistry | None = None,
    work_dir: str | Path | None = None,
    contrast: str | None = None,
    add_noise_to_level: bool = False,
    exclude_centre: bool = False,
    base: str = FINETUNE_BASE,
    config: TrainConfig | None = None,
    command: str | None = None,
    progress: bool = True,
    clock=time.perf_counter,
) -> Path:
    """Fine-tune one expert on a dataset's own scans and save it as a registry directory.

    Parameters
    ----------
    volumes : sequence
        The dataset's scans: paths, ``"PATH:CONTRAST"`` strings, ``(path, contrast)``
        pairs or prepared :class:`TrainingVolume` objects.
    start_level : float, optional
        Expert to start from; by default the trained level nearest to the median
        estimated noise of the scans (the scans themselves, whatever ``base``).
    out_dir : path-like
        Registry directory written (``manifest.json`` + one weight file, at
        ``start_level``); pass it as ``registry`` to the denoiser.
    time_budget_s : float or None
        Wall-clock budget of the whole call (default :data:`FINETUNE_BUDGET_S`), the
        preparation of the training bases included: scans are prepared one after the
        other until it is spent (at least one), and training stops when it ends.  It
        can be overrun by one scan's preparation, one Adam step and one validation.
        ``None``: no time limit.
    max_epochs : int, optional
        Epoch limit (default: that of ``config``).
    seed : int
    registry : ExpertRegistry, optional
        Source of the starting expert (default: the shipped experts).
    work_dir : path-like, optional
        Pair cache and checkpoint (default ``out_dir/work``).
    contrast : str, optional
        Contrast of scans given without one (default: BIDS suffix, else T1w).
    add_noise_to_level : bool
        Top the scans' noise up to ``start_level`` where they are cleaner (the
        level the expert was made for); default False, pure self-supervision on
        the scans' own noise.  Implied by ``base="denoised"``.
    exclude_centre : bool
        Noise2Sim-style pairs.
    base : {"denoised", "noisy"}
        Default :data:`FINETUNE_BASE` (``"denoised"``).  ``"noisy"``: train on the
        scans and their synthetic pairs (measured harmful, kept for comparison).  ``"denoised"``:
        train the way the shipped experts were trained, on the dataset's anatomy:
        each scan is denoised by ``registry`` (``denoise_array`` defaults), the pair
        is computed on the denoised image, and Gaussian noise is added on the fly,
        independently to input and target, from the denoised image's own estimated
        noise up to ``start_level`` (see
        :func:`~bids_auton2n.train.data.prepare_volume`).  Recorded in the manifest
        (``finetune_recipe``).
    config : TrainConfig, optional
        Other settings (patch and batch size, lr, loss, patience, device).
    command : str, optional
        Recorded in the manifest (default: this process's command line).
    progress : bool
    clock : callable
        Seconds, monotonic: the time of the budget (injected by tests).

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    if base not in BASES:
        raise ValueError(f"fine-tuning base must be one of {', '.join(BASES)}, got {base!r}")
    started = clock()
    deadline = None if time_budget_s is None else started + time_budget_s
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir is not None else out_dir / "work"
    registry = registry or ExpertRegistry()
    prepared = []
    for spec in volumes:
        if prepared and deadline is not None and clock() >= deadline:
            LOGGER.warning("fine-tuning budget spent preparing %d of %d scans; training on "
                           "those", len(prepared), len(volumes))
            break
        prepared += load_volumes([spec], work_dir=work_dir, exclude_centre=exclude_centre,
                                 contrast=contrast, base=base, registry=registry)
    noise = float(np.median([v.scan_noise_percent for v in prepared]))
    if start_level is None:
        start_level = registry.nearest_level(noise)
    start_level = float(start_level)
    start_model = registry.load(start_level, "cpu")
    train_budget = None if deadline is None else max(deadline - clock(), 0.0)
    # A denoised base carries (almost) no noise of its own: the noise of the level is
    # added to it, independently to input and target, as for the shipped experts.
    add_noise_to_level = add_noise_to_level or base == "denoised"
    config = replace(
        config or TrainConfig(level=0.0), level=start_level if add_noise_to_level else 0.0,
        time_budget_s=train_budget, seed=seed,
    )
    if max_epochs is not None:
        config = replace(config, max_epochs=int(max_epochs))
    LOGGER.info("fine-tuning the %g%% expert on %d scan(s) (median noise %.2f%%), %s", start_level,
                len(prepared), noise,
                "no time limit" if train_budget is None else f"{train_budget:.0f} s left for training")
    result = train_expert(
        PatchSampler(prepared, config.patch_size), config,
        init_state=start_model.state_dict(),
        # Its own checkpoint: the settings a resume checks do not tell the recipes apart.
        checkpoint=work_dir / f"finetune{'_denoised' if base == 'denoised' else ''}_{start_level:g}.ckpt",
        progress=progress, deadline=deadline, clock=clock,
    )
    write_manifest_entry(out_dir, start_level, result.state_dict, _provenance(
        prepared, config, result, command=command or current_command(),
        exclude_centre=exclude_centre, initialised_from=start_level,
        extra={
            "finetuned_from": {"registry": registry.label,
                               "sha256": registry.sha256(start_level)},
            "finetune_recipe": {
                "base": base,
                "pairs_computed_on": "the scans denoised by the starting registry"
                                     if base == "denoised" else "the noisy scans",
                "noise_added_to_level": config.level if add_noise_to_level else None,
                "base_noise_percent": {v.name: round(v.noise_percent, 3) for v in prepared},
            },
            "dataset_median_noise_percent": round(noise, 3),
            "time_budget_s": time_budget_s,
            "total_seconds": round(clock() - started, 1),
        },
    ))
    return out_dir
