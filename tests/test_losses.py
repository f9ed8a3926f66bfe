"""Tests of the Auto-N2N loss against a slow NumPy reference."""

import numpy as np
import pytest
import torch

from bids_auton2n.denoise.losses import (
    EPSILON,
    STD_EPS,
    auton2n_loss,
    get_loss,
    l1_loss,
    l2_loss,
)


def _numpy_local_stats(r):
    """Loop reference of the 3x3x3 valid-window mean and population std."""
    d, h, w = r.shape
    means = np.empty((d - 2, h - 2, w - 2))
    stds = np.empty_like(means)
    for k in range(d - 2):
        for j in range(h - 2):
            for i in range(w - 2):
                window = r[k : k + 3, j : j + 3, i : i + 3].astype(np.float64)
                means[k, j, i] = window.mean()
                stds[k, j, i] = np.sqrt(window.var() + STD_EPS)
    return means, stds


def _numpy_auton2n(output, target, network_input):
    bias_terms, var_terms = [], []
    for n in range(output.shape[0]):
        means, stds = _numpy_local_stats(network_input[n, 0] - output[n, 0])
        bias_terms.append(means)
        var_terms.append(stds)
    bias = abs(np.mean(bias_terms))
    fidelity = np.mean(np.abs(target.astype(np.float64) - output))
    return bias * fidelity / (np.mean(var_terms) + EPSILON)


@pytest.fixture
def tensors():
    rng = np.random.default_rng(42)
    x = rng.normal(1.0, 0.05, size=(2, 1, 5, 6, 7)).astype(np.float32)
    out = (x - rng.normal(0.01, 0.03, size=x.shape)).astype(np.float32)
    y = (x + rng.normal(0, 0.05, size=x.shape)).astype(np.float32)
    return out, y, x


def test_auton2n_matches_numpy_reference(tensors):
    out, y, x = tensors
    got = auton2n_loss(*(torch.from_numpy(a) for a in (out, y, x))).item()
    expected = _numpy_auton2n(out, y, x)
    assert expected > 0
    assert got == pytest.approx(expected, rel=1e-4)


def test_auton2n_gradient_is_finite_even_for_constant_residual():
    out = torch.ones(1, 1, 4, 4, 4, requires_grad=True)
    x = torch.full((1, 1, 4, 4, 4), 1.2)  # residual constant: local variance exactly 0
    y = torch.full_like(x, 0.5)
    loss = auton2n_loss(out, y, x)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(out.grad).all()
    assert out.grad.abs().sum() > 0


def test_auton2n_vanishes_for_zero_mean_residual():
    # Documented property of eq. (1): L_bias multiplies the fidelity term.
    x = torch.zeros(1, 1, 5, 5, 5)
    out = x.clone()
    y = torch.full_like(x, 10.0)  # terrible fidelity
    assert auton2n_loss(out, y, x).item() == 0.0


def test_l1_l2_against_numpy(tensors):
    out, y, x = tensors
    t = [torch.from_numpy(a) for a in (out, y, x)]
    assert l1_loss(*t).item() == pytest.approx(np.mean(np.abs(y - out)), rel=1e-5)
    assert l2_loss(*t).item() == pytest.approx(np.mean((y - out) ** 2), rel=1e-5)


def test_get_loss_names():
    assert get_loss("auton2n") is auton2n_loss
    assert get_loss("L1") is l1_loss
    assert get_loss("l2") is l2_loss
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("ssim")


def test_shape_errors():
    a = torch.zeros(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="target shape"):
        auton2n_loss(a, torch.zeros(1, 1, 4, 4, 5), a)
    with pytest.raises(ValueError, match=">= 3"):
        auton2n_loss(*(torch.zeros(1, 1, 2, 4, 4),) * 3)
    with pytest.raises(ValueError, match="N, C, D, H, W"):
        l1_loss(torch.zeros(4, 4, 4), torch.zeros(4, 4, 4))
