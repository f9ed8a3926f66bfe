"""Thick slices: the slice-axis rule, NS-N2N's match mask and slice-wise inference."""

import numpy as np
import pytest
import torch

from bids_auton2n.denoise.experts import IdentityExpert
from bids_auton2n.denoise.network import ResidualDenoiser3D
from bids_auton2n.denoise.slices import (
    MATCH_THRESHOLD,
    low_pass_slices,
    match_mask,
    slice_axis,
    slicewise_cnn_denoise,
)


@pytest.mark.parametrize("voxel_size, axis", [
    ((1, 1, 4), 2), ((0.78, 0.78, 6.5), 2), ((0.86, 0.86, 2.4), 2), ((4, 1, 1), 0),
    ((1.0, 0.5, 0.5), 0), ((1, 1, 1), None), ((1, 1, 1.9), None), ((1, 2.5, 4), None),
])
def test_slice_axis_rule(voxel_size, axis):
    assert slice_axis(voxel_size) == axis


def test_slice_axis_bad_input():
    with pytest.raises(ValueError, match="3 positive"):
        slice_axis((1, 1))
    with pytest.raises(ValueError, match="3 positive"):
        slice_axis((1, 0, 4))


def _slices_with_a_change(sigma=4.0, seed=0):
    """Six 64x64 slices of a flat tissue with a bright disc in slices 3-5 only."""
    rng = np.random.default_rng(seed)
    clean = np.full((6, 64, 64), 100.0, np.float32)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 12 ** 2
    clean[3:, disc] = 130.0
    noisy = (clean + rng.normal(0, sigma, clean.shape)).astype(np.float32)
    return clean, noisy, disc


def test_low_pass_removes_most_of_the_noise_and_keeps_the_disc():
    clean, noisy, disc = _slices_with_a_change()
    filtered = low_pass_slices(noisy, 4.0)
    flat = (slice(None), slice(2, 16), slice(2, 62))
    assert (filtered - clean)[flat].std() < 0.3 * 4.0
    assert filtered[3][disc].mean() > 125 and filtered[2][disc].mean() < 105


def test_match_mask_marks_where_neighbouring_slices_differ():
    _, noisy, disc = _slices_with_a_change()
    weights = match_mask(low_pass_slices(noisy, 4.0), 4.0)
    assert weights.shape == (5, 64, 64) and weights.dtype == bool
    inner_disc = disc & ~np.roll(~disc, 2, 0) & ~np.roll(~disc, -2, 0) \
        & ~np.roll(~disc, 2, 1) & ~np.roll(~disc, -2, 1)
    # Pair (2, 3): the disc appears, unmatched; every other pair matches there.
    assert weights[2][inner_disc].mean() < 0.02
    for pair in (0, 1, 3, 4):
        assert weights[pair][inner_disc].mean() > 0.9
    # Away from the disc the slices match.
    away = np.zeros((64, 64), bool)
    away[2:14, 2:62] = True
    assert weights[:, away].mean() > 0.9
    # A threshold twice smaller matches less; the raw noisy slices would match far less.
    assert weights.mean() > match_mask(low_pass_slices(noisy, 4.0), 4.0,
                                       threshold=MATCH_THRESHOLD / 2).mean()
    raw = np.abs(np.diff(noisy, axis=0)) <= MATCH_THRESHOLD * 4.0
    assert raw[:, away].mean() < 0.3


def test_match_mask_with_a_sigma_map_uses_each_pair_s_mean_sigma():
    _, noisy, _ = _slices_with_a_change()
    low = low_pass_slices(noisy, 4.0)
    sigma = np.full(noisy.shape, 4.0, np.float32)
    np.testing.assert_array_equal(match_mask(low, sigma), match_mask(low, 4.0))
    sigma[3:] = 40.0  # pairs (2, 3) and later: a much larger tolerance
    assert match_mask(low, sigma)[2].mean() > match_mask(low, 4.0)[2].mean()
    with pytest.raises(ValueError, match="at least 2 slices"):
        match_mask(low[:1], 4.0)


def test_slicewise_inference_treats_each_slice_on_its_own(one_torch_thread):
    rng = np.random.default_rng(1)
    volume = rng.normal(1.0, 0.05, (5, 24, 20)).astype(np.float32)
    torch.manual_seed(0)
    model = ResidualDenoiser3D()
    out = slicewise_cnn_denoise(volume, model, device="cpu", precision="fp32")
    changed = volume.copy()
    changed[3] += 0.5
    out_changed = slicewise_cnn_denoise(changed, model, device="cpu", precision="fp32")
    # No slice sees its neighbours: only slice 3 changes (a 3D pass would change 2-4).
    np.testing.assert_array_equal(out_changed[[0, 1, 2, 4]], out[[0, 1, 2, 4]])
    assert np.abs(out_changed[3] - out[3]).max() > 0.1
    # Slice by slice, with the four in-plane flips averaged.
    one = torch.from_numpy(volume[2])[None, None, None]
    with torch.no_grad():
        flips = [torch.flip(model(torch.flip(one, f)), f) if f else model(one)
                 for f in ((), (3,), (4,), (3, 4))]
    np.testing.assert_allclose(out[2], torch.stack(flips).mean(0)[0, 0, 0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(slicewise_cnn_denoise(volume, IdentityExpert(), device="cpu"),
                                  volume)
