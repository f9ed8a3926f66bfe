"""Tests of the do-no-harm residual guard against a per-voxel reference."""

import numpy as np
import pytest

from bids_auton2n.denoise.guard import MAX_RESIDUAL_RMS, limit_residual


def reference_limit_residual(noisy, denoised, sigma, max_rms, window):
    """The guard one voxel at a time: window clipped to the volume, borders repeated."""
    noisy = np.asarray(noisy, np.float64)
    residual = noisy - np.asarray(denoised, np.float64)
    half = window // 2
    padded = np.pad(residual, half, mode="edge")
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), noisy.shape)
    out = np.empty_like(noisy)
    for z, y, x in np.ndindex(*noisy.shape):
        block = padded[z : z + window, y : y + window, x : x + window]
        rms = np.sqrt(np.mean(block**2))
        scale = min(1.0, max_rms * sigma[z, y, x] / rms) if rms > 0 else 1.0
        out[z, y, x] = noisy[z, y, x] - scale * residual[z, y, x]
    return out


@pytest.mark.parametrize("window", [1, 3, 5])
def test_matches_reference(window):
    rng = np.random.default_rng(0)
    noisy = rng.normal(100, 5, (7, 6, 8)).astype(np.float32)
    denoised = noisy - rng.normal(0, 5, noisy.shape).astype(np.float32)
    denoised[2:5, 1:4, 3:6] -= 40  # a removed structure
    expected = reference_limit_residual(noisy, denoised, 4.0, 1.5, window)
    np.testing.assert_allclose(limit_residual(noisy, denoised, 4.0, max_rms=1.5, window=window),
                               expected, rtol=0, atol=2e-4)


def test_matches_reference_with_a_sigma_map():
    rng = np.random.default_rng(2)
    sigma = np.linspace(1.0, 8.0, 8)[None, None, :] * np.ones((7, 6, 1))
    noisy = rng.normal(100, 5, (7, 6, 8)).astype(np.float32)
    denoised = noisy - (sigma * rng.normal(0, 1, noisy.shape)).astype(np.float32)
    denoised[2:5, 1:4, 3:6] -= 40
    expected = reference_limit_residual(noisy, denoised, sigma, 1.5, 3)
    result = limit_residual(noisy, denoised, sigma)
    np.testing.assert_allclose(result, expected, rtol=0, atol=2e-4)
    # With the map, the low-noise side is limited more than with the mean sigma.
    uniform = limit_residual(noisy, denoised, float(sigma.mean()))
    low = (slice(None), slice(None), slice(0, 3))
    assert np.abs(noisy - result)[low].mean() < np.abs(noisy - uniform)[low].mean()


def test_noise_only_residual_is_kept():
    rng = np.random.default_rng(1)
    clean = np.full((32, 32, 32), 100.0, np.float32)
    noise = rng.normal(0, 3, clean.shape).astype(np.float32)
    out = limit_residual(clean + noise, clean, 3.0)
    changed = np.abs(out - clean) > 1e-4
    assert changed.mean() < 1e-3


def test_removed_edge_is_given_back():
    """A step edge the denoiser blurred away is restored to within max_rms * sigma."""
    clean = np.zeros((16, 16, 16), np.float32)
    clean[:, :, 8:] = 100.0
    blurred = np.full_like(clean, 50.0)
    sigma = 1.0
    out = limit_residual(clean, blurred, sigma)
    assert np.abs(out - clean).max() <= MAX_RESIDUAL_RMS * sigma * np.sqrt(27) + 1e-3
    assert np.sqrt(np.mean((out - clean) ** 2)) <= MAX_RESIDUAL_RMS * sigma + 1e-3


def test_zero_sigma_returns_input_and_constant_stays_constant():
    rng = np.random.default_rng(2)
    noisy = rng.uniform(0, 10, (5, 6, 7)).astype(np.float32)
    np.testing.assert_array_equal(limit_residual(noisy, noisy * 0.5, 0.0), noisy)
    constant = np.full((5, 6, 7), 3.0, np.float32)
    np.testing.assert_array_equal(limit_residual(constant, constant, 2.0), constant)


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma": -1.0}, "sigma"),
    ({"sigma": float("nan")}, "sigma"),
    ({"sigma": 1.0, "max_rms": 0.0}, "max_rms"),
    ({"sigma": -np.ones((4, 4, 4))}, "every voxel"),
    ({"sigma": np.ones((4, 4, 5))}, "sigma shape"),
])
def test_bad_parameters(kwargs, message):
    x = np.ones((4, 4, 4), np.float32)
    sigma = kwargs.pop("sigma")
    with pytest.raises(ValueError, match=message):
        limit_residual(x, x, sigma, **kwargs)


def test_bad_volumes():
    x = np.ones((4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="shapes differ"):
        limit_residual(x, np.ones((4, 4, 5)), 1.0)
    with pytest.raises(ValueError, match="3D"):
        limit_residual(np.ones((4, 4)), np.ones((4, 4)), 1.0)
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        limit_residual(x, bad, 1.0)
