"""Training losses of Auto-N2N (paper section 2.3) and plain L1 / L2 baselines.

All losses take ``(output, target, network_input)`` tensors of shape
``(N, 1, D, H, W)`` so that :func:`get_loss` can return interchangeable callables:
``output = f(x)`` is the network output, ``target = y`` the synthetic N2N pair,
``network_input = x`` the noisy input.

References
----------
.. [1] S. Morell-Ortega et al., "Auto-N2N: Self-supervised MRI Denoising using
   Synthetic Pair Generation and Mixture of Experts", section 2.3, eq. (1).
.. [2] D. Wu, K. Gong, K. Kim, X. Li, Q. Li, "Consensus neural network for medical
   imaging denoising with only noisy training samples", MICCAI 2019, eq. (8).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

#: Stabiliser of the denominator of eq. (1), value given in the paper.
EPSILON = 0.1
#: Local window of the "local" statistics (paper footnote: 3x3x3).
LOCAL_WINDOW = 3
#: Added under the square root of the local variance so that its gradient stays
#: finite where the residual is locally constant (variance 0).  Negligible next
#: to the variance of 1 % noise in network units (1e-4).
STD_EPS = 1e-10

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _check_shapes(output: torch.Tensor, target: torch.Tensor, network_input: torch.Tensor | None):
    if output.ndim != 5:
        raise ValueError(f"losses expect (N, C, D, H, W) tensors, got shape {tuple(output.shape)}")
    for name, other in (("target", target), ("network_input", network_input)):
        if other is not None and other.shape != output.shape:
            raise ValueError(
                f"{name} shape {tuple(other.shape)} differs from output shape {tuple(output.shape)}"
            )


def local_mean(x: torch.Tensor) -> torch.Tensor:
    """3x3x3 moving average over the *valid* region (no padding).

    Valid windows only, so no padding convention biases the statistics at the
    border of the training patch; the result is 2 voxels shorter per axis.
    """
    return F.avg_pool3d(x, kernel_size=LOCAL_WINDOW, stride=1)


def local_std(x: torch.Tensor) -> torch.Tensor:
    """3x3x3 moving standard deviation (population, valid region).

    Computed as ``sqrt(max(E[x^2] - E[x]^2, 0) + STD_EPS)``.
    """
    variance = local_mean(x * x) - local_mean(x) ** 2
    return torch.sqrt(variance.clamp_min(0.0) + STD_EPS)


def auton2n_loss(
    output: torch.Tensor, target: torch.Tensor, network_input: torch.Tensor
) -> torch.Tensor:
    """Auto-N2N loss, eq. (1) of [1]_: ``L = L_bias * L_fidelity / (L_var + 0.1)``.

    With the residual ``R = x - f(x)`` (``network_input - output``):

    * ``L_bias = |mean(local_mean_3x3x3(R))|`` (zero-mean noise assumption);
    * ``L_fidelity = mean|y - f(x)|`` (L1 against the N2N pair ``target``);
    * ``L_var = mean(local_std_3x3x3(R))`` (texture preservation; in the
      denominator, so removing more noise lowers the loss).

    Notes
    -----
    This is eq. (1) exactly as the paper writes it.  Because ``L_bias``
    *multiplies* the fidelity term, the loss is 0 (and its gradient through the
    fidelity term vanishes) whenever the mean residual is 0, whatever the
    fidelity; a network can therefore lower the loss by keeping the residual
    zero-mean rather than by matching ``target``.  We reproduce the formula as
    published and do not "fix" it; :func:`l1_loss` and :func:`l2_loss` are
    available for comparison.

    Parameters
    ----------
    output, target, network_input : torch.Tensor
        Tensors of identical shape ``(N, C, D, H, W)`` with every spatial size >= 3.

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    _check_shapes(output, target, network_input)
    if min(output.shape[2:]) < LOCAL_WINDOW:
        raise ValueError(
            f"auton2n_loss needs spatial sizes >= {LOCAL_WINDOW}, got {tuple(output.shape[2:])}"
        )
    residual = network_input - output
    bias = local_mean(residual).mean().abs()
    fidelity = (target - output).abs().mean()
    variance_term = local_std(residual).mean()
    return bias * fidelity / (variance_term + EPSILON)


def l1_loss(
    output: torch.Tensor, target: torch.Tensor, network_input: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean absolute error between ``output`` and ``target`` (``network_input`` unused)."""
    _check_shapes(output, target, None)
    return (target - output).abs().mean()


def l2_loss(
    output: torch.Tensor, target: torch.Tensor, network_input: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error between ``output`` and ``target`` (``network_input`` unused)."""
    _check_shapes(output, target, None)
    return ((target - output) ** 2).mean()


def consensus_loss(
    output_a: torch.Tensor, output_b: torch.Tensor, input_a: torch.Tensor, input_b: torch.Tensor
) -> torch.Tensor:
    """Consensus Noise2Noise loss of two realizations, eq. (8) of [2]_ (means for sums).

    ``L = 1/2 |f(x_a) - x_b|^2 + 1/2 |f(x_b) - x_a|^2 - 1/4 |f(x_a) - f(x_b)|^2``: each
    realization predicts the other, and the last term rewards outputs whose *mean* is right.
    When the two noises are independent and zero-mean its expectation is the squared error
    of ``(f(x_a) + f(x_b)) / 2`` against the clean image plus the noise variance, so the
    mean of the two outputs is the denoised image.

    Parameters
    ----------
    output_a, output_b : torch.Tensor
        Network outputs for ``input_a`` and ``input_b``, shape ``(N, C, D, H, W)``.
    input_a, input_b : torch.Tensor
        The two aligned noisy realizations.
    """
    _check_shapes(output_a, output_b, input_a)
    _check_shapes(output_a, input_b, None)
    return (0.5 * ((output_a - input_b) ** 2).mean() + 0.5 * ((output_b - input_a) ** 2).mean()
            - 0.25 * ((output_a - output_b) ** 2).mean())


def consensus_model_loss(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """:func:`consensus_loss` of one network run on both realizations (``inputs``, ``targets``).

    A *model loss* (``runs_model``): the trainer hands it the model, since both
    realizations go through it (:func:`apply_loss`).
    """
    return consensus_loss(model(inputs), model(targets), inputs, targets)


consensus_model_loss.runs_model = True


def apply_loss(loss_fn, model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Loss of ``model`` on a batch: ``loss_fn(model(inputs), targets, inputs)``, or, for a
    model loss (attribute ``runs_model``), ``loss_fn(model, inputs, targets)``."""
    if getattr(loss_fn, "runs_model", False):
        return loss_fn(model, inputs, targets)
    return loss_fn(model(inputs), targets, inputs)


LOSSES: dict[str, LossFn] = {"auton2n": auton2n_loss, "l1": l1_loss, "l2": l2_loss,
                             "consensus": consensus_model_loss}


def get_loss(name: str) -> LossFn:
    """Loss callable ``(output, target, network_input) -> scalar`` by name.

    Parameters
    ----------
    name : {"auton2n", "l1", "l2", "consensus"}
        ``"consensus"`` is a model loss (:func:`consensus_model_loss`): call it through
        :func:`apply_loss`.
    """
    try:
        return LOSSES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None
