"""Fine-tuning an expert on repeated acquisitions: consensus Noise2Noise and Noise2Average.

Both start from the selected expert and train on the runs of one image aligned to the
reference grid, in network units (each run divided by its own reference intensity), with
the patches, flips, validation slab, early stopping and time budget of
:func:`~bids_auton2n.train.trainer.train_expert`.

* **Consensus Noise2Noise** [1]_ (:func:`finetune_consensus`): each run predicts the other
  through one network, with the consensus loss
  (:func:`~bids_auton2n.denoise.losses.consensus_loss`); the denoised image is the mean of the
  network's outputs for the runs.  With more than two runs every pair of runs trains.
* **Noise2Average** [2]_ (:func:`finetune_noise2average`): the network maps each run to the
  average of all runs; then the mean of its outputs for the runs becomes the target of the
  next iteration, and so on.  Iterations stop when the *consensus estimate* of the mean's
  error stops falling (:data:`N2A_TOLERANCE`) or after ``iterations``.

The consensus estimate (:func:`consensus_estimate`) is what makes both measurable without a
clean image: on the validation slab, which no training patch touches, the network's output
for run ``a`` depends on run ``a`` only, so the consensus loss there estimates the squared
error of the mean output against the clean image plus the (fixed) noise variance [1]_.  It is
the early-stopping score of consensus training (epoch 0 = the starting expert, so fine-tuning
never returns weights that estimate worse than the expert) and the stopping rule of
Noise2Average's iterations.

References
----------
.. [1] D. Wu, K. Gong, K. Kim, X. Li, Q. Li, "Consensus neural network for medical imaging
   denoising with only noisy training samples", MICCAI 2019.
.. [2] "Noise2Average: An iterative residual learning strategy for image denoising without
   clean data", Imaging Neuroscience 4, IMAG.a.1163, 2026.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from itertools import combinations

import numpy as np

from ..denoise.inference import resolve_device
from ..denoise.losses import get_loss
from ..denoise.network import ResidualDenoiser3D
from .data import PatchSampler, TrainingVolume
from .trainer import TrainConfig, TrainResult, evaluate, train_expert

LOGGER = logging.getLogger("bids_auton2n.train")

#: Noise2Average stops iterating when an iteration lowers the consensus estimate by less
#: than this fraction of it.
N2A_TOLERANCE = 1e-3
#: Settings of repeats fine-tuning other than the loss, level and budget.
#: Two pairs per step: the consensus loss runs the network on both runs of a pair.
FINETUNE_CONFIG = TrainConfig(level=0.0, lr=1e-4, batch_size=2, steps_per_epoch=20, patience=4,
                              val_patches_per_volume=8)


def run_pairs(runs: list[np.ndarray], mask: np.ndarray, *, names=None,
              pairs=None, defined: np.ndarray | None = None) -> list[TrainingVolume]:
    """Training volumes of every pair of runs (``image`` = run a, ``pair`` = run b).

    ``runs`` are in network units on one grid; ``mask`` is where patches are centred (the
    head where every run is defined) and ``defined`` where every run holds data (patches
    stay inside it; ``None``: everywhere).  ``pairs`` defaults to every ``a < b``.
    """
    names = names or [f"run {index + 1}" for index in range(len(runs))]
    pairs = pairs if pairs is not None else list(combinations(range(len(runs)), 2))
    return [
        TrainingVolume(name=f"{names[a]} / {names[b]}", sha256=None, contrast="given",
                       image=np.asarray(runs[a], np.float32), pair=np.asarray(runs[b], np.float32),
                       mask=np.asarray(mask, bool), noise_percent=0.0,
                       reference_tissue="given", reference_intensity=1.0, defined=defined)
        for a, b in pairs
    ]


def consensus_estimate(model, validation: dict, device, batch_size: int) -> float:
    """Consensus loss of ``model`` on the validation patches of a pair sampler.

    Estimates (see the module docstring) the squared error of the mean of the network's
    outputs for two runs against the clean image, plus the noise variance.
    """
    return evaluate(model, validation, get_loss("consensus"), device, batch_size)["val_loss"]


def _config(config: TrainConfig | None, loss: str, budget_s: float | None, seed: int,
            max_steps: int | None = None) -> TrainConfig:
    return replace(config or FINETUNE_CONFIG, level=0.0, loss=loss, time_budget_s=budget_s,
                   seed=seed, max_steps=max_steps)


def finetune_consensus(runs: list[np.ndarray], mask: np.ndarray, *, init_state: dict,
                       budget_s: float | None, max_steps: int | None = None,
                       defined: np.ndarray | None = None,
                       config: TrainConfig | None = None, seed: int = 0,
                       progress: bool = False) -> TrainResult:
    """Consensus Noise2Noise fine-tuning of ``init_state`` on aligned ``runs`` (network units).

    ``budget_s`` (seconds) and ``max_steps`` (Adam steps) bound it; ``None``: no bound.
    Patches are centred in ``mask`` and stay where every run is ``defined`` (:func:`run_pairs`).
    Returns the :class:`TrainResult` of :func:`train_expert` (weights of the epoch with the
    lowest consensus estimate, epoch 0 being the starting expert).
    """
    sampler = PatchSampler(run_pairs(runs, mask, defined=defined), (config or FINETUNE_CONFIG).patch_size)
    return train_expert(sampler, _config(config, "consensus", budget_s, seed, max_steps),
                        init_state=init_state, progress=progress)


@dataclass
class Noise2AverageResult:
    """Outcome of :func:`finetune_noise2average`."""

    state_dict: dict
    iterations: int
    best_iteration: int
    stopped: str
    history: list = field(default_factory=list)
    train_seconds: float = 0.0

    def summary(self) -> dict:
        """JSON-able record (weights excluded)."""
        return {"iterations": self.iterations, "best_iteration": self.best_iteration,
                "stopped": self.stopped, "train_seconds": round(self.train_seconds, 1),
                "history": self.history}


def noise2average_targets(outputs: list[np.ndarray], coverage: list[np.ndarray] | None = None
                          ) -> np.ndarray:
    """Mean of the runs (or of their denoised versions) where each covers the grid
    (:func:`~bids_auton2n.denoise.repeats.coverage_mean`; all of it by default)."""
    from ..denoise.repeats import coverage_mean

    if coverage is None:
        coverage = [np.ones(np.shape(outputs[0]), bool)] * len(outputs)
    return coverage_mean(outputs, coverage)


def finetune_noise2average(runs: list[np.ndarray], mask: np.ndarray, *, init_state: dict,
                           predict, budget_s: float | None, iterations: int,
                           max_steps: int | None = None, defined: np.ndarray | None = None,
                           config: TrainConfig | None = None, seed: int = 0,
                           progress: bool = False) -> Noise2AverageResult:
    """Noise2Average fine-tuning of ``init_state`` on aligned ``runs`` (network units).

    Parameters
    ----------
    runs : list of ndarray
        Aligned runs on one grid, network units.
    mask : ndarray of bool
        Where training patches are centred.
    defined : ndarray of bool, optional
        Where every run holds data: patches stay inside it (:func:`run_pairs`).
    init_state : dict
        Starting weights (the selected expert).
    predict : callable
        ``predict(model, run) -> ndarray``: the network's output for a whole run (the next
        iteration's targets are the mean of these).
    budget_s : float or None
        Wall-clock budget of all iterations (training and predictions).
    iterations : int
        Most iterations; fewer when the consensus estimate stops falling.
    max_steps : int, optional
        Adam steps of all iterations together (each gets an equal share).
    config : TrainConfig, optional
        Settings other than loss, level and budget (default :data:`FINETUNE_CONFIG`).

    Returns
    -------
    Noise2AverageResult
        The weights of the iteration with the lowest consensus estimate (``best_iteration``;
        0 = the starting expert), the number of iterations run and their record.
    """
    start = time.perf_counter()
    config = config or FINETUNE_CONFIG
    device = resolve_device(config.device)
    pair_sampler = PatchSampler(run_pairs(runs, mask, pairs=[(0, 1)], defined=defined), config.patch_size)
    validation = pair_sampler.validation_set(0.0, config.val_patches_per_volume, seed)

    def score(state):
        model = ResidualDenoiser3D()
        model.load_state_dict(state)
        return consensus_estimate(model.to(device), validation, device, config.batch_size)

    best_state, best_score, best_iteration = init_state, score(init_state), 0
    history = [{"iteration": 0, "consensus_estimate": best_score, "seconds": 0.0}]
    state, target, stopped = init_state, noise2average_targets(runs), "iterations"
    for iteration in range(1, iterations + 1):
        left = None if budget_s is None else budget_s - (time.perf_counter() - start)
        if left is not None and left <= 0:
            stopped = "time_budget"
            break
        # Each remaining iteration gets an equal share of the time left.
        share = None if left is None else left / (iterations - iteration + 1)
        volumes = [replace(volume, pair=target) for volume in
                   run_pairs(runs, mask, pairs=[(i, 0) for i in range(len(runs))],
                             defined=defined)]
        steps = None if max_steps is None else max(1, max_steps // iterations)
        result = train_expert(PatchSampler(volumes, config.patch_size),
                              _config(config, "l2", share, seed + iteration, steps),
                              init_state=state, progress=progress)
        state = result.state_dict
        model = ResidualDenoiser3D()
        model.load_state_dict(state)
        model.to(device).eval()
        value = consensus_estimate(model, validation, device, config.batch_size)
        history.append({"iteration": iteration, "consensus_estimate": value,
                        "epochs": result.epochs, "steps": result.steps,
                        "seconds": round(time.perf_counter() - start, 1)})
        LOGGER.info("Noise2Average iteration %d: consensus estimate %.6g (best %.6g)",
                    iteration, value, best_score)
        if value < best_score * (1.0 - N2A_TOLERANCE):
            best_state, best_score, best_iteration = state, value, iteration
        else:
            stopped = "no_improvement"
            break
        if iteration < iterations:
            target = noise2average_targets([predict(model, run) for run in runs])
    return Noise2AverageResult(state_dict=best_state, iterations=len(history) - 1,
                               best_iteration=best_iteration, stopped=stopped, history=history,
                               train_seconds=time.perf_counter() - start)
