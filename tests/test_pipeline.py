"""The composed pipeline with the shipped experts, on small seeded phantoms."""

import numpy as np
import pytest

from bids_auton2n.denoise.noise import head_mask
from bids_auton2n.denoise.pipeline import denoise_array


def _brain_crop(percent, seed=0, shape=(40, 44, 36)):
    """A field of view inside a brain: dark 'CSF' tubes through 'WM'/'GM', no air."""
    grid = np.indices(shape, dtype=np.float32)
    tubes = (np.sin(grid[0] / 5.0) * np.cos(grid[1] / 6.0) > 0.6)
    clean = np.where(tubes, 0.25, np.where(np.sin(grid[2] / 8.0) > 0, 1.0, 0.65))
    clean = (200 * clean).astype(np.float32)
    rng = np.random.default_rng(seed)
    sigma = percent / 100 * 200
    noisy = np.hypot(clean + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
    return clean, noisy.astype(np.float32)


def _rmse(a, b, where):
    return float(np.sqrt(np.mean((a[where] - b[where]) ** 2)))


def test_fusion_denoises_where_the_head_mask_misses_tissue():
    clean, noisy = _brain_crop(5.0)
    missed = ~head_mask(noisy)
    assert missed.any()  # the dark tubes look like background to the mask
    cnn = denoise_array(noisy, contrast="T1w", fusion=False, tta=False).denoised
    fused = denoise_array(noisy, contrast="T1w", tta=False).denoised
    # A fusion restricted to the mask returned the noisy input there, keeping half the noise.
    assert _rmse(fused, clean, missed) < 0.75 * _rmse(noisy, clean, missed)
    assert _rmse(fused, clean, missed) <= 1.1 * _rmse(cnn, clean, missed)


@pytest.mark.parametrize("percent", [3.0, 7.0])
def test_denoising_improves_a_noisy_crop(percent):
    clean, noisy = _brain_crop(percent, seed=1)
    result = denoise_array(noisy, contrast="T1w", tta=False)
    everywhere = np.ones(clean.shape, bool)
    assert _rmse(result.denoised, clean, everywhere) < 0.7 * _rmse(noisy, clean, everywhere)
    assert result.noise.percent == pytest.approx(percent, abs=1.5)


def test_clean_volume_comes_out_nearly_unchanged():
    clean, _ = _brain_crop(0.0)
    result = denoise_array(clean, contrast="T1w")
    change = np.sqrt(np.mean((result.denoised - clean) ** 2))
    assert change < 0.005 * 200  # < 0.5 % of the white-matter intensity


def test_nonfinite_voxels_are_restored():
    _, noisy = _brain_crop(3.0, seed=2)
    noisy[0, 0, :3] = [np.nan, np.inf, -np.inf]
    out = denoise_array(noisy, contrast="T1w", tta=False, fusion=False).denoised
    assert np.isnan(out[0, 0, 0]) and out[0, 0, 1] == np.inf and out[0, 0, 2] == -np.inf
    assert np.isfinite(out[1:]).all()


def test_guard_gives_back_removed_structure_and_is_recorded():
    """On a clean crop the guard keeps the output within what the estimated noise allows."""
    clean, _ = _brain_crop(0.0, seed=3)
    everywhere = np.ones(clean.shape, bool)
    unguarded = denoise_array(clean, contrast="T1w", tta=False, guard=False)
    guarded = denoise_array(clean, contrast="T1w", tta=False)
    assert _rmse(guarded.denoised, clean, everywhere) <= _rmse(unguarded.denoised, clean, everywhere)
    assert _rmse(guarded.denoised, clean, everywhere) <= 1.5 * guarded.noise.sigma + 1e-3
    assert guarded.provenance()["DoNoHarmGuard"] == {"MaxResidualRMS": "1.5 x sigma"}
    assert unguarded.provenance()["DoNoHarmGuard"] is False
    assert "guard" in guarded.timings and "guard" not in unguarded.timings
