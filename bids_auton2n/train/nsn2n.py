"""Neighbouring-Slice Noise2Noise fine-tuning of an expert on one thick-slice image.

NS-N2N (Zhou et al. 2025, seed paper 002) trains a denoiser on one noisy volume from the
pairs of neighbouring slices ``(x_i, x_{i+1})``, weighted by the match mask ``W_i``
(:func:`~bids_auton2n.denoise.slices.match_mask`), with three losses (paper eqs. 4-7):

* reconstruction: ``1/2 (||(f(x_i) - x_{i+1}) W_i||^2 + ||(f(x_{i+1}) - x_i) W_i||^2)``;
* regional consistency: ``||(f(x_i) - f(x_{i+1})) W_i||^2``;
* inter-slice continuity: ``||f((x_i + x_{i+1}) / 2) - (f(x_i) + f(x_{i+1})) / 2||^2``;
* total: ``L_recon + LAMBDA_RC L_rc + LAMBDA_IC L_ic`` with the paper's ``0.5`` and ``1``.

The paper's eq. 4 as printed weights only its second term by ``W_i``; its eq. 2 and the
text ("applied only in the regions where W = 1") weight both, which we do.  Norms are means
over the voxels of the batch (the paper's sums up to a constant factor common to the three
terms, so their relative weights are the paper's).

Here the network is the selected Auto-N2N expert, fine-tuned on the image itself (as
``--finetune`` fine-tunes on a dataset), applied to one slice at a time (a one-slice input:
a 3D network whose every neighbour in z would be the target slice would learn to copy it).
Samples are random in-plane crops of a pair (same crop and flips for both slices) from the
pairs that are not held out; every :data:`VALIDATE_EVERY` steps the total loss on fixed
crops of the held-out pairs is measured and the best weights are kept (step 0: the
starting expert).  Optimiser: Adam with the paper's betas ``(0.5, 0.999)``.

The budget bounds all the work of the fine-tuning, the low-pass filtering of the match mask
included: the clock starts before the filter and ``time_budget_s`` is checked before every
step (the filter is one RI-NLM pass in-plane, seconds even on large volumes; a budget spent
by it leaves the starting expert as it was), ``max_steps`` (for tests: machine-independent)
caps the steps.

References
----------
.. [1] Zhou L, Zhou Z, Huang X, Wang H, Zhang X, Li G. Neighboring Slice Noise2Noise:
   self-supervised medical image denoising from single noisy image volume (seed paper 002),
   eqs. 3-7 and section 4.1.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..denoise.inference import resolve_device
from ..denoise.network import ResidualDenoiser3D
from ..denoise.slices import MATCH_THRESHOLD, low_pass_slices, match_mask
from .trainer import state_sha256

LOGGER = logging.getLogger("bids_auton2n.train")

#: Weights of the regional-consistency and inter-slice-continuity losses (paper 4.1).
LAMBDA_RC = 0.5
LAMBDA_IC = 1.0
#: Adam betas of the paper (4.1).
ADAM_BETAS = (0.5, 0.999)
#: Learning rate of the fine-tuning (the paper's 1e-3 is for training from scratch).
LEARNING_RATE = 1e-4
#: In-plane crop edge and crops per step.
PATCH = 96
BATCH = 8
#: Steps between two validations; every ``HOLD_OUT``-th pair is held out for them.
VALIDATE_EVERY = 25
HOLD_OUT = 8
#: Held-out crops per validation.
VALIDATION_CROPS = 16
#: Default wall-clock budget of the whole fine-tuning (seconds).
BUDGET_S = 300.0


def reconstruction_loss(f_a, f_b, a, b, w):
    """``1/2 (mean(((f(a) - b) w)^2) + mean(((f(b) - a) w)^2))`` (paper eq. 4)."""
    return 0.5 * (((f_a - b) * w).pow(2).mean() + ((f_b - a) * w).pow(2).mean())


def regional_consistency_loss(f_a, f_b, w):
    """``mean(((f(a) - f(b)) w)^2)`` (paper eq. 5)."""
    return ((f_a - f_b) * w).pow(2).mean()


def inter_slice_continuity_loss(f_mid, f_a, f_b):
    """``mean((f((a + b) / 2) - (f(a) + f(b)) / 2)^2)`` (paper eq. 6)."""
    return (f_mid - 0.5 * (f_a + f_b)).pow(2).mean()


def nsn2n_loss(model, a, b, w) -> dict:
    """The three losses of a batch of pairs and their total (paper eq. 7), as tensors."""
    f_a, f_b, f_mid = model(a), model(b), model(0.5 * (a + b))
    terms = {
        "recon": reconstruction_loss(f_a, f_b, a, b, w),
        "rc": regional_consistency_loss(f_a, f_b, w),
        "ic": inter_slice_continuity_loss(f_mid, f_a, f_b),
    }
    terms["total"] = terms["recon"] + LAMBDA_RC * terms["rc"] + LAMBDA_IC * terms["ic"]
    return terms


class SlicePairSampler:
    """Random in-plane crops of neighbouring-slice pairs and their match mask.

    Parameters
    ----------
    slices : numpy.ndarray
        ``(n, H, W)`` volume in network units, slice axis first.
    weights : numpy.ndarray of bool
        ``(n - 1, H, W)`` match mask.
    mask : numpy.ndarray of bool
        ``(n, H, W)`` head mask: crops are centred on head pixels of the pair's first slice.
    patch : int
        Crop edge (reduced to the slice size).
    """

    def __init__(self, slices, weights, mask, patch: int = PATCH):
        if slices.shape[0] < 2 or weights.shape != (slices.shape[0] - 1,) + slices.shape[1:]:
            raise ValueError("slice pairs need >= 2 slices and a match mask of the pairs")
        self.slices = np.asarray(slices, np.float32)
        self.weights = np.asarray(weights, np.float32)
        self.patch = int(min(patch, slices.shape[1], slices.shape[2]))
        pairs = np.arange(slices.shape[0] - 1)
        held = pairs % HOLD_OUT == HOLD_OUT // 2 if len(pairs) >= HOLD_OUT else np.zeros(len(pairs), bool)
        self.centres = {}
        for index in pairs:
            centres = np.argwhere(np.asarray(mask[index], bool) | np.asarray(mask[index + 1], bool))
            if len(centres):
                self.centres[int(index)] = centres
        self.train_pairs = [int(i) for i in pairs[~held] if int(i) in self.centres]
        self.validation_pairs = [int(i) for i in pairs[held] if int(i) in self.centres]
        if not self.train_pairs:
            raise ValueError("no neighbouring-slice pair overlaps the head")

    def _crop(self, index: int, rng, flips: bool):
        centres = self.centres[index]
        cy, cx = centres[rng.integers(len(centres))]
        half = self.patch // 2
        y0 = int(np.clip(cy - half, 0, self.slices.shape[1] - self.patch))
        x0 = int(np.clip(cx - half, 0, self.slices.shape[2] - self.patch))
        window = (slice(y0, y0 + self.patch), slice(x0, x0 + self.patch))
        a, b = self.slices[index][window], self.slices[index + 1][window]
        w = self.weights[index][window]
        if flips:
            axes = tuple(axis for axis in (0, 1) if rng.random() < 0.5)
            a, b, w = (np.flip(v, axes) for v in (a, b, w))
        return a, b, w

    @staticmethod
    def _stack(crops):
        return tuple(torch.from_numpy(np.ascontiguousarray(np.stack(v)))[:, None, None]
                     for v in zip(*crops))

    def batch(self, step: int, size: int, seed: int):
        """``(a, b, w)`` tensors ``(size, 1, 1, P, P)`` of training step ``step``."""
        rng = np.random.default_rng([int(seed), int(step), 0])
        return self._stack([self._crop(self.train_pairs[rng.integers(len(self.train_pairs))], rng, True)
                            for _ in range(size)])

    def validation(self, seed: int):
        """Fixed held-out crops (training pairs when too few slices to hold any out)."""
        pairs = self.validation_pairs or self.train_pairs
        rng = np.random.default_rng([int(seed), 0, 1])
        return self._stack([self._crop(pairs[k % len(pairs)], rng, False)
                            for k in range(VALIDATION_CROPS)])


@dataclass
class SliceFinetuneResult:
    """Outcome of :func:`finetune_on_slices`."""

    state_dict: dict
    steps: int
    best_step: int
    stopped: str
    seconds: float
    matched_fraction: float
    history: list = field(default_factory=list)

    def record(self, *, budget_s, max_steps, start_sha256) -> dict:
        """JSON-able record for the sidecar (its seconds are in the sidecar's timings)."""
        first, best = self.history[0] if self.history else {}, next(
            (h for h in self.history if h["step"] == self.best_step), {})
        return {
            "Steps": self.steps, "BestStep": self.best_step, "Stopped": self.stopped,
            "BudgetSeconds": budget_s, "MaxSteps": max_steps,
            "MatchedFraction": round(self.matched_fraction, 4),
            "MatchThresholdSigma": MATCH_THRESHOLD,
            "Losses": {"LambdaRC": LAMBDA_RC, "LambdaIC": LAMBDA_IC},
            "ValidationLossStart": first.get("validation"), "ValidationLossBest": best.get("validation"),
            "StartSHA256": start_sha256, "SHA256": state_sha256(self.state_dict),
        }


def finetune_on_slices(
    slices: np.ndarray,
    mask: np.ndarray,
    sigma,
    init_state: dict,
    *,
    time_budget_s: float | None = BUDGET_S,
    max_steps: int | None = None,
    seed: int = 0,
    device="cpu",
    patch: int = PATCH,
    batch_size: int = BATCH,
    lr: float = LEARNING_RATE,
    progress: bool = False,
) -> SliceFinetuneResult:
    """Fine-tune an expert on one thick-slice volume by NS-N2N (see the module docstring).

    Parameters
    ----------
    slices : numpy.ndarray
        ``(n, H, W)`` volume in network units (reference tissue ~1), slice axis first.
    mask : numpy.ndarray of bool
        Head mask, same shape.
    sigma : float or numpy.ndarray
        Noise sigma in network units, one value or a map of ``slices``' shape (the match
        mask's threshold).
    init_state : dict
        State dict of the expert to start from.
    time_budget_s : float or None
        Wall-clock limit of all the work (low-pass filter, steps, validation).
    max_steps : int or None
        Step limit.  At least one of the two limits must be set.
    seed, device, patch, batch_size, lr, progress

    Returns
    -------
    SliceFinetuneResult
        The weights of the best validation step (step 0 = ``init_state``).
    """
    if time_budget_s is None and max_steps is None:
        raise ValueError("slice-pair fine-tuning needs a time budget or a step limit")
    started = time.perf_counter()

    def out_of_time() -> bool:
        return time_budget_s is not None and time.perf_counter() - started >= time_budget_s

    weights = match_mask(low_pass_slices(slices, sigma), sigma, threshold=MATCH_THRESHOLD)
    sampler = SlicePairSampler(slices, weights, mask, patch)
    device = resolve_device(device)
    torch.manual_seed(seed)
    model = ResidualDenoiser3D()
    model.load_state_dict(init_state, strict=True)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=ADAM_BETAS)
    validation = tuple(t.to(device) for t in sampler.validation(seed))

    def validate() -> float:
        model.eval()
        with torch.no_grad():
            value = float(nsn2n_loss(model, *validation)["total"])
        model.train()
        return value

    best_state = {k: v.detach().cpu().clone() for k, v in init_state.items()}
    best = {"step": 0, "loss": validate()}
    history = [{"step": 0, "validation": best["loss"]}]
    step, stopped = 0, "max_steps"
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, desc="slice-pair fine-tuning", unit="step")
    while True:
        if max_steps is not None and step >= max_steps:
            stopped = "max_steps"
            break
        if out_of_time():
            stopped = "time_budget"
            break
        a, b, w = (t.to(device) for t in sampler.batch(step, batch_size, seed))
        optimizer.zero_grad(set_to_none=True)
        terms = nsn2n_loss(model, a, b, w)
        terms["total"].backward()
        optimizer.step()
        step += 1
        if bar is not None:
            bar.update(1)
        if step % VALIDATE_EVERY == 0 or (max_steps is not None and step == max_steps):
            loss = validate()
            history.append({"step": step, "validation": loss,
                            **{k: float(v.detach()) for k, v in terms.items()}})
            if loss < best["loss"]:
                best = {"step": step, "loss": loss}
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    LOGGER.info("slice-pair fine-tuning: %d steps in %.1f s (%s), best step %d, matched %.1f %%",
                step, seconds, stopped, best["step"], 100 * float(weights.mean()))
    return SliceFinetuneResult(best_state, step, best["step"], stopped, seconds,
                               float(weights.mean()), history)


def finetune_expert_on_slices(finite: np.ndarray, mask: np.ndarray, sigma, noise, registry,
                              level: float, *, axis: int, budget_s: float | None = None,
                              max_steps: int | None = None, device="cpu", seed: int = 0,
                              progress: bool = False) -> tuple[dict, dict]:
    """NS-N2N fine-tuning of the expert of ``level`` on one image, in image units.

    Parameters
    ----------
    finite : numpy.ndarray
        The finite 3D image (image units).
    mask : numpy.ndarray of bool
        Head mask.
    sigma : float or numpy.ndarray
        Noise sigma in image units, one value or a map.
    noise : NoiseEstimate
        Its reference intensity sets the network units.
    registry : ExpertRegistry
        Where the starting expert comes from.
    level : float
        The starting expert.
    axis : int
        Slice axis.
    budget_s, max_steps
        Limits of :func:`finetune_on_slices`; with neither, :data:`BUDGET_S` seconds.
    device, seed, progress

    Returns
    -------
    state_dict : dict
        The fine-tuned weights (the starting ones if no step improved the validation loss).
    record : dict
        The sidecar's ``SlicePairFineTuning``.
    """
    from ..denoise.intensity import IntensityNormalizer
    from ..denoise.slices import to_slices_first

    if budget_s is None and max_steps is None:
        budget_s = BUDGET_S
    scale = float(noise.reference_intensity)
    normalizer = IntensityNormalizer(scale)
    slices = np.ascontiguousarray(to_slices_first(normalizer.forward(finite), axis))
    slice_mask = np.ascontiguousarray(to_slices_first(np.asarray(mask, bool), axis))
    sigma = np.asarray(sigma, dtype=np.float64) / scale
    if sigma.ndim:
        sigma = np.ascontiguousarray(to_slices_first(sigma, axis))
    start = registry.load(level, "cpu").state_dict()
    result = finetune_on_slices(slices, slice_mask, sigma if sigma.ndim else float(sigma), start,
                                time_budget_s=budget_s, max_steps=max_steps, seed=seed,
                                device=device, progress=progress)
    record = {"SliceAxis": int(axis), "StartExpertPercent": float(level),
              **result.record(budget_s=budget_s, max_steps=max_steps,
                              start_sha256=registry.sha256(level))}
    return result.state_dict, record
