"""Noise2Noise training of one Auto-N2N expert with early stopping and resumable checkpoints.

One *epoch* is ``steps_per_epoch`` Adam steps on random patches
(:meth:`~bids_auton2n.train.data.PatchSampler.training_batch`) followed by one
validation pass on the fixed held-out patches.  Training stops at the first of:
``patience`` epochs without a better validation score (early stopping, paper
section 3; the score is :attr:`TrainConfig.select_by`), ``max_epochs``, ``max_steps``
(Adam steps; the last epoch is then cut short), or the wall-clock ``time_budget_s``.  The weights
returned are those of the best validation epoch (epoch 0 = the initial weights,
so a fine-tuned expert is never worse on validation than its starting point).

Validation figures per epoch: the training loss and the L2 error against the
held-out synthetic targets (self-supervised), and the
PSNR of the noisy input and of the output against the held-out *scan before
noise was added* (peak 1.0 = the reference tissue, inside the head).  The
latter is only meaningful where noise was added (levels above the scan's own
noise ``p0``) and is capped by ``p0``, since the scan itself is not clean.

A checkpoint (model, optimiser, early-stopping state, history, elapsed time) is
written atomically after every epoch; rerunning with the same settings resumes
from it and, because every step's random draws depend only on ``(seed, level,
step)``, reaches exactly the weights of an uninterrupted run with the same
number of epochs.

With :attr:`TrainConfig.levels` the same loop trains one network on several noise
levels (the single-model ablation of the mixture of experts): the level of every
step is drawn uniformly from them (:func:`~bids_auton2n.train.data.draw_level`,
seeded by ``(seed, step)``), and validation pools the validation sets of all levels.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import numpy as np
from tqdm.auto import tqdm

from ..denoise.experts import _atomic_write
from ..denoise.inference import resolve_device
from ..denoise.losses import get_loss
from ..denoise.network import ResidualDenoiser3D
from .data import PatchSampler, draw_level

LOGGER = logging.getLogger("bids_auton2n.train")

#: Settings that must match for a checkpoint to be resumed (``init_sha256``: the starting
#: weights, so a fine-tuning run never resumes a checkpoint grown from another expert).
_RESUME_KEYS = ("level", "levels", "patch_size", "batch_size", "lr", "loss", "steps_per_epoch",
                "val_patches_per_volume", "seed", "select_by", "init_sha256")
#: Validation figures early stopping can follow (lower is better for both).
SELECTION_METRICS = ("val_loss", "psnr")


@dataclass
class TrainConfig:
    """Settings of one expert's training.

    Attributes
    ----------
    level : float
        Target noise level in percent (noise added up to it, see
        :func:`~bids_auton2n.train.data.added_noise_std`); 0 adds no noise
        (pure self-supervision on the scans' own noise, used by fine-tuning).
        With ``levels``: the level the model is registered at (names and logs only).
    levels : tuple of float
        Empty (default): every step trains at ``level``.  Otherwise one network is
        trained on all these levels: each Adam step draws its level uniformly from
        them (seeded by ``(seed, step)``) and validation pools all levels' sets;
        the sampler must serve every level (e.g. a
        :class:`~bids_auton2n.train.data.MultiLevelSampler`).
    patch_size, batch_size : int
        Cubic patch edge and patches per Adam step.
    lr : float
        Adam learning rate (paper: 1e-3).
    loss : str
        Name for :func:`~bids_auton2n.denoise.losses.get_loss`.
    steps_per_epoch : int
        Adam steps between two validations.
    max_epochs : int
    max_steps : int or None
        Adam-step limit (None: none); reaching it mid-epoch ends that epoch there
        (validated and checkpointed), so runs of equal cost can be compared when
        the step count is not a multiple of ``steps_per_epoch``.
    patience : int
        Epochs without a lower validation loss before stopping.
    time_budget_s : float or None
        Wall-clock limit of the training loop (validation included).
    val_patches_per_volume : int
    select_by : {"val_loss", "psnr"}
        What early stopping follows: the N2N loss against the held-out synthetic
        targets (default, the method's self-supervised criterion), or the PSNR of
        the output against the held-out scan before noise was added (where noise
        was added; the loss elsewhere).  The PSNR is biased towards *under*-
        denoising wherever the scan's own noise ``p0`` is not small next to the
        level: a perfect denoiser is ``p0`` away from the noisy reference, the
        identity only ``sqrt(p**2 - p0**2)``, so for ``p0 >= p / sqrt(2)`` the
        identity wins.  Use it for levels well above the scans' noise only.
    seed : int
        Seeds the initial weights (from-scratch runs) and every random draw.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:k]"``.
    """

    level: float
    patch_size: int = 48
    batch_size: int = 4
    lr: float = 1e-3
    loss: str = "l1"
    steps_per_epoch: int = 40
    max_epochs: int = 500
    max_steps: int | None = None
    patience: int = 8
    time_budget_s: float | None = None
    val_patches_per_volume: int = 4
    select_by: str = "val_loss"
    seed: int = 0
    device: str = "auto"
    levels: tuple[float, ...] = ()

    def step_level(self, step: int) -> float:
        """Noise level (percent) of training step ``step``."""
        return draw_level(self.levels, self.seed, step) if self.levels else self.level

    @property
    def name(self) -> str:
        """Label of the model in logs and progress bars."""
        if self.levels:
            return "single model " + "/".join(f"{level:g}" for level in self.levels) + "%"
        return f"expert {self.level:g}%"


@dataclass
class TrainResult:
    """Outcome of :func:`train_expert`."""

    level: float
    state_dict: dict
    epochs: int
    steps: int
    best_epoch: int
    best_score: float
    stopped: str
    train_seconds: float
    history: list = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-able record (history included, weights excluded)."""
        best = next((h for h in self.history if h["epoch"] == self.best_epoch), {})
        return {
            "epochs": self.epochs,
            "steps": self.steps,
            "best_epoch": self.best_epoch,
            "stopped": self.stopped,
            "train_seconds": round(self.train_seconds, 1),
            "validation_at_best": best,
            "history": self.history,
        }


def selection_score(figures: dict, select_by: str) -> float:
    """Early-stopping score of an epoch's validation ``figures`` (lower is better)."""
    if select_by == "psnr" and "psnr_output_db" in figures:
        return -figures["psnr_output_db"]
    return figures["val_loss"]


def _psnr(mse: float) -> float:
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf")


@torch.no_grad()
def evaluate(model, validation: dict, loss_fn, device, batch_size: int) -> dict:
    """Validation figures of ``model`` on a :meth:`PatchSampler.validation_set`."""
    model.eval()
    n = len(validation["inputs"])
    loss_sum = l2_sum = 0.0
    noisy_err = out_err = 0.0
    voxels = 0
    for begin in range(0, n, batch_size):
        chunk = slice(begin, begin + batch_size)
        inputs = torch.from_numpy(validation["inputs"][chunk]).to(device)
        targets = torch.from_numpy(validation["targets"][chunk]).to(device)
        outputs = model(inputs)
        count = inputs.shape[0]
        loss_sum += float(loss_fn(outputs, targets, inputs)) * count
        l2_sum += float(((outputs - targets) ** 2).mean()) * count
        noised = validation["added_std"][chunk] > 0
        if noised.any():
            keep = torch.from_numpy(noised).to(device)
            originals = torch.from_numpy(validation["originals"][chunk]).to(device)[keep]
            masks = torch.from_numpy(validation["masks"][chunk]).to(device)[keep]
            noisy_err += float(((inputs[keep] - originals)[masks] ** 2).sum())
            out_err += float(((outputs[keep] - originals)[masks] ** 2).sum())
            voxels += int(masks.sum())
    model.train()
    figures = {"val_loss": loss_sum / n, "val_l2_target": l2_sum / n}
    if voxels:
        figures["psnr_noisy_db"] = _psnr(noisy_err / voxels)
        figures["psnr_output_db"] = _psnr(out_err / voxels)
    return figures


def validation_set(sampler, config: TrainConfig) -> dict:
    """The fixed validation patches of ``config``: its level's, or all its ``levels``' pooled."""
    sets = [sampler.validation_set(level, config.val_patches_per_volume, config.seed)
            for level in (config.levels or (config.level,))]
    return sets[0] if len(sets) == 1 else {
        key: np.concatenate([one[key] for one in sets]) for key in sets[0]}


def state_sha256(state_dict: dict | None) -> str | None:
    """SHA-256 of a state dict's names and tensor bytes (``None`` for no state)."""
    if state_dict is None:
        return None
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _state_copy(model) -> dict:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def train_expert(
    sampler: PatchSampler,
    config: TrainConfig,
    *,
    init_state: dict | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    deadline: float | None = None,
    clock=time.perf_counter,
) -> TrainResult:
    """Train one expert by Noise2Noise on synthetic pairs (see module docstring).

    Parameters
    ----------
    sampler : PatchSampler
        Training patches and the validation slab (its patch size is used).
    config : TrainConfig
    init_state : dict, optional
        Starting weights (curriculum: the previous expert; fine-tuning: the
        selected expert).  Random initialisation from ``config.seed`` otherwise.
    checkpoint : path-like, optional
        Checkpoint file: resumed from when it exists, rewritten after every epoch.
    progress : bool
        tqdm bar with the running training loss and the validation loss.
    deadline : float, optional
        Time on ``clock`` after which no Adam step starts (the caller's whole budget, its
        own preparation and this function's setup included); the epoch then ends there, as
        with ``config.time_budget_s``.
    clock : callable
        Seconds, monotonic: the time of both budgets (injected by tests).

    Returns
    -------
    TrainResult
        With the weights of the best validation epoch.
    """
    if config.select_by not in SELECTION_METRICS:
        raise ValueError(f"select_by must be one of {SELECTION_METRICS}, got {config.select_by!r}")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = ResidualDenoiser3D()
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
    else:
        # Zero residual head: training starts from the identity (the noisy input), so
        # epoch 0 of early stopping is "no denoising" rather than a random filter.
        torch.nn.init.zeros_(model.head.weight)
        torch.nn.init.zeros_(model.head.bias)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = get_loss(config.loss)
    validation = validation_set(sampler, config)
    settings = asdict(config)
    settings["patch_size"] = sampler.patch_size
    settings["init_sha256"] = state_sha256(init_state)

    state = None
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        # Keys older checkpoints lack; their starting weights are unknown (None).
        defaults = {**asdict(TrainConfig(level=0.0)), "init_sha256": None}
        differing = [k for k in _RESUME_KEYS
                     if state["settings"].get(k, defaults[k]) != settings[k]]
        if differing:
            raise ValueError(
                f"{checkpoint}: checkpoint was made with other settings ({', '.join(differing)}); "
                "delete it or use another work directory"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["stopped"] != "early_stopping":
            # A budget, epoch or step limit reached before may have been raised since.
            state["stopped"] = None
        LOGGER.info("resuming %s from %s (epoch %d)", config.name, checkpoint, state["epoch"])
    else:
        figures = evaluate(model, validation, loss_fn, device, config.batch_size)
        state = {"epoch": 0, "best_epoch": 0,
                 "best_score": selection_score(figures, config.select_by),
                 "best_state": _state_copy(model), "bad_epochs": 0, "elapsed_s": 0.0,
                 "history": [{"epoch": 0, "step": 0, "seconds": 0.0, **figures}],
                 "stopped": None}

    start_time = clock() - state["elapsed_s"]
    budget = config.time_budget_s
    total_steps = config.max_epochs * config.steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    steps_so_far = int(state["history"][-1]["step"])
    bar = tqdm(total=total_steps, initial=steps_so_far, desc=config.name, unit="step",
               disable=not progress, dynamic_ncols=True)

    def out_of_time() -> bool:
        now = clock()
        return ((budget is not None and now - start_time >= budget)
                or (deadline is not None and now >= deadline))

    def out_of_steps(step: int) -> bool:
        return config.max_steps is not None and step >= config.max_steps

    while state["stopped"] is None:
        if state["epoch"] >= config.max_epochs:
            state["stopped"] = "max_epochs"
            break
        if out_of_time():
            state["stopped"] = "time_budget"
            break
        if out_of_steps(int(state["history"][-1]["step"])):
            state["stopped"] = "max_steps"
            break
        epoch = state["epoch"] + 1
        running, steps_done = 0.0, 0
        for offset in range(config.steps_per_epoch):
            step = (epoch - 1) * config.steps_per_epoch + offset
            if out_of_time() or out_of_steps(step):
                break
            inputs, targets = sampler.training_batch(step, config.batch_size,
                                                     config.step_level(step), config.seed)
            inputs = torch.from_numpy(inputs).to(device)
            targets = torch.from_numpy(targets).to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), targets, inputs)
            loss.backward()
            optimizer.step()
            running += float(loss.detach())
            steps_done += 1
            bar.update(1)
            bar.set_postfix(loss=f"{running / steps_done:.4g}", best=f"{state['best_score']:.4g}")
        figures = evaluate(model, validation, loss_fn, device, config.batch_size)
        state["epoch"] = epoch
        state["elapsed_s"] = clock() - start_time
        state["history"].append({
            "epoch": epoch, "step": (epoch - 1) * config.steps_per_epoch + steps_done,
            "seconds": round(state["elapsed_s"], 2),
            "train_loss": running / max(steps_done, 1), **figures,
        })
        score = selection_score(figures, config.select_by)
        if score < state["best_score"]:
            state.update(best_score=score, best_epoch=epoch,
                         best_state=_state_copy(model), bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        if steps_done < config.steps_per_epoch:
            state["stopped"] = ("max_steps" if out_of_steps(state["history"][-1]["step"])
                                else "time_budget")
        elif state["bad_epochs"] >= config.patience:
            state["stopped"] = "early_stopping"
        LOGGER.info("%s epoch %d: train %.5g val %.5g (best epoch %d) %s",
                    config.name, epoch, state["history"][-1]["train_loss"], figures["val_loss"],
                    state["best_epoch"],
                    " ".join(f"{k}={v:.2f}" for k, v in figures.items() if k.startswith("psnr")))
        if checkpoint is not None:
            _save_checkpoint(checkpoint, state, model, optimizer, settings)
    bar.close()
    state["elapsed_s"] = clock() - start_time
    if checkpoint is not None:
        _save_checkpoint(checkpoint, state, model, optimizer, settings)
    last = state["history"][-1]
    return TrainResult(
        level=config.level, state_dict=state["best_state"], epochs=state["epoch"],
        steps=int(last["step"]), best_epoch=state["best_epoch"],
        best_score=state["best_score"], stopped=state["stopped"],
        train_seconds=state["elapsed_s"], history=state["history"],
    )


def _save_checkpoint(path: Path, state: dict, model, optimizer, settings: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**state, "settings": settings, "model": _state_copy(model),
               "optimizer": optimizer.state_dict()}
    _atomic_write(path, lambda temporary: torch.save(payload, temporary))
