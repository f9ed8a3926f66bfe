"""NS-N2N: the three losses against slow references, the sampler and the budget."""

import numpy as np
import pytest
import torch

from bids_auton2n.denoise.network import ResidualDenoiser3D
from bids_auton2n.train.nsn2n import (
    LAMBDA_IC,
    LAMBDA_RC,
    SlicePairSampler,
    finetune_on_slices,
    inter_slice_continuity_loss,
    nsn2n_loss,
    reconstruction_loss,
    regional_consistency_loss,
)


def _reference_losses(f, a, b, w):
    """The paper's eqs. 4-6 pixel by pixel (means over the pixels of the batch), float64."""
    n = a.size
    f_a, f_b, f_mid = f(a), f(b), f((a + b) / 2)
    recon = rc = ic = 0.0
    for index in np.ndindex(a.shape):
        recon += 0.5 * (((f_a[index] - b[index]) * w[index]) ** 2
                        + ((f_b[index] - a[index]) * w[index]) ** 2)
        rc += ((f_a[index] - f_b[index]) * w[index]) ** 2
        ic += (f_mid[index] - (f_a[index] + f_b[index]) / 2) ** 2
    return recon / n, rc / n, ic / n


def test_losses_match_the_slow_reference():
    rng = np.random.default_rng(0)
    a, b = (rng.normal(1, 0.1, (3, 1, 1, 5, 6)) for _ in range(2))
    w = (rng.random(a.shape) < 0.6).astype(np.float64)

    def f(x):  # a nonlinear "denoiser", the same in numpy and torch
        return 0.8 * x + 0.1 * x ** 2

    recon, rc, ic = _reference_losses(f, a, b, w)
    ta, tb, tw = (torch.from_numpy(v) for v in (a, b, w))
    assert float(reconstruction_loss(f(ta), f(tb), ta, tb, tw)) == pytest.approx(recon, rel=1e-12)
    assert float(regional_consistency_loss(f(ta), f(tb), tw)) == pytest.approx(rc, rel=1e-12)
    assert float(inter_slice_continuity_loss(f((ta + tb) / 2), f(ta), f(tb))) == pytest.approx(ic, rel=1e-12)
    terms = nsn2n_loss(f, ta, tb, tw)
    assert float(terms["total"]) == pytest.approx(recon + LAMBDA_RC * rc + LAMBDA_IC * ic, rel=1e-12)
    assert (LAMBDA_RC, LAMBDA_IC) == (0.5, 1.0)  # the paper's weights
    # Unmatched pixels do not count in the reconstruction and consistency terms.
    changed = b.copy()
    changed[w == 0] += 5.0
    tc = torch.from_numpy(changed)
    assert float(reconstruction_loss(f(ta), f(tc), ta, tc, tw)) == pytest.approx(
        _reference_losses(f, a, changed, w)[0], rel=1e-12)


def test_matched_pixels_alone_drive_the_reconstruction_and_consistency():
    rng = np.random.default_rng(1)
    a, b = (torch.from_numpy(rng.normal(1, 0.1, (2, 1, 1, 4, 4))) for _ in range(2))
    w = torch.zeros_like(a)
    w[..., :2, :] = 1.0
    moved = b.clone()
    moved[..., 2:, :] += 3.0  # only where w == 0

    def f(x):
        return 0.9 * x

    assert float(reconstruction_loss(f(a), f(moved), a, moved, w)) == pytest.approx(
        float(reconstruction_loss(f(a), f(b), a, b, w)), rel=1e-12)
    assert float(regional_consistency_loss(f(a), f(moved), w)) == pytest.approx(
        float(regional_consistency_loss(f(a), f(b), w)), rel=1e-12)
    # Continuity is global: it sees the change (a nonlinear f; a linear one has none).
    def g(x):
        return 0.9 * x + 0.1 * x ** 2

    assert float(inter_slice_continuity_loss(g((a + moved) / 2), g(a), g(moved))) > 2 * float(
        inter_slice_continuity_loss(g((a + b) / 2), g(a), g(b)))


def _thick_volume(seed=0, shape=(10, 40, 40)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[1], :shape[2]]
    clean = np.ones(shape, np.float32)
    for k in range(shape[0]):
        clean[k][(yy - 20) ** 2 + (xx - 20) ** 2 < (6 + k) ** 2] = 0.6
    noisy = (clean + rng.normal(0, 0.05, shape)).astype(np.float32)
    return clean, noisy, np.ones(shape, bool)


def test_sampler_draws_neighbouring_pairs_with_their_mask():
    _, noisy, mask = _thick_volume()
    weights = np.zeros((9, 40, 40), bool)
    weights[:, :20] = True
    sampler = SlicePairSampler(noisy, weights, mask, patch=40)
    assert 4 not in sampler.train_pairs and sampler.validation_pairs == [4]
    a, b, w = sampler.batch(0, 6, seed=0)
    assert a.shape == (6, 1, 1, 40, 40)
    a2, b2, w2 = sampler.batch(0, 6, seed=0)
    assert torch.equal(a, a2) and torch.equal(w, w2)  # reproducible
    for k in range(6):
        # each crop is a whole slice and its neighbour, flipped together with the mask
        matches = [i for i in range(9) if any(
            np.array_equal(a[k, 0, 0].numpy(), np.flip(noisy[i], axes))
            and np.array_equal(b[k, 0, 0].numpy(), np.flip(noisy[i + 1], axes))
            and np.array_equal(w[k, 0, 0].numpy(), np.flip(weights[i], axes).astype(np.float32))
            for axes in ((), (0,), (1,), (0, 1)))]
        assert matches and matches[0] in sampler.train_pairs


def test_budget_and_steps_bound_the_fine_tuning(one_torch_thread):
    _, noisy, mask = _thick_volume()
    torch.manual_seed(0)
    start = ResidualDenoiser3D().state_dict()
    # A spent budget: no step, the starting weights (whatever the machine's speed).
    spent = finetune_on_slices(noisy, mask, 0.05, start, time_budget_s=0.0, patch=32)
    assert spent.steps == 0 and spent.stopped == "time_budget"
    assert all(torch.equal(spent.state_dict[k], start[k]) for k in start)
    steps = finetune_on_slices(noisy, mask, 0.05, start, time_budget_s=None, max_steps=6,
                               patch=32, batch_size=2)
    assert steps.steps == 6 and steps.stopped == "max_steps"
    assert [h["step"] for h in steps.history] == [0, 6]
    again = finetune_on_slices(noisy, mask, 0.05, start, time_budget_s=None, max_steps=6,
                               patch=32, batch_size=2)
    assert all(torch.equal(steps.state_dict[k], again.state_dict[k]) for k in start)
    record = steps.record(budget_s=None, max_steps=6, start_sha256="x")
    assert record["Steps"] == 6 and 0 < record["MatchedFraction"] <= 1
    with pytest.raises(ValueError, match="time budget or a step limit"):
        finetune_on_slices(noisy, mask, 0.05, start, time_budget_s=None)


def test_fine_tuning_lowers_the_held_out_loss(one_torch_thread):
    _, noisy, mask = _thick_volume(seed=2, shape=(17, 40, 40))
    torch.manual_seed(0)
    model = ResidualDenoiser3D()
    result = finetune_on_slices(noisy, mask, 0.05, model.state_dict(), time_budget_s=None,
                                max_steps=50, patch=32, batch_size=2)
    first, last = result.history[0]["validation"], min(h["validation"] for h in result.history)
    assert last < 0.9 * first and result.best_step > 0
