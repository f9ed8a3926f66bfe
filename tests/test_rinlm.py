"""Tests of the guided RI-NLM filter against a slow pure-NumPy reference."""

import numba
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from bids_auton2n.denoise.rinlm import ri_nlm


def _reference_local_mean(guide):
    """3x3x3 mean over the in-volume neighbours, by explicit loops (float64)."""
    nz, ny, nx = guide.shape
    mean = np.empty(guide.shape)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                block = guide[max(z - 1, 0) : z + 2, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
                mean[z, y, x] = block.astype(np.float64).mean()
    return mean


def reference_ri_nlm(x, guide, sigma, search_radius=5, rician=True, mask=None):
    """The RI-NLM spec, one voxel at a time, in image units (no 0-255 rescaling)."""
    x = np.asarray(x, np.float64)
    g = np.asarray(guide, np.float64)
    mu = _reference_local_mean(g)
    sigma_map = np.broadcast_to(np.asarray(sigma, np.float64), x.shape)
    values = x**2 if rician else x
    output = x.copy()
    r = search_radius
    nz, ny, nx = x.shape
    for z, y, i in np.ndindex(*x.shape):
        if mask is not None and not mask[z, y, i]:
            continue
        sigma = sigma_map[z, y, i]
        if sigma == 0:
            continue
        h = sigma / 3.0
        window = (
            slice(max(z - r, 0), min(z + r + 1, nz)),
            slice(max(y - r, 0), min(y + r + 1, ny)),
            slice(max(i - r, 0), min(i + r + 1, nx)),
        )
        d_g = g[window] - g[z, y, i]
        d_mu = mu[window] - mu[z, y, i]
        d = 0.5 * np.maximum(d_g**2 / (2 * h**2) - 1, 0) + 0.5 * np.maximum(d_mu**2 / (h**2 / 2) - 1, 0)
        w = np.exp(-d)
        w[(np.abs(d_mu) > h) | (d > 10)] = 0.0
        average = (w * values[window]).sum() / w.sum()
        output[z, y, i] = np.sqrt(max(average - 2 * sigma**2, 0.0)) if rician else average
    return output


def _smooth_phantom(shape, seed, noise_sigma=4.0):
    """A smooth guide with an edge, and a Rician noisy version of it."""
    rng = np.random.default_rng(seed)
    clean = 60.0 + 40.0 * gaussian_filter(rng.standard_normal(shape), 1.5) / 0.1
    clean[:, :, shape[2] // 2 :] += 50.0
    clean = np.clip(clean, 5.0, None)
    noisy = np.hypot(
        clean + rng.normal(0, noise_sigma, shape), rng.normal(0, noise_sigma, shape)
    ).astype(np.float32)
    guide = (clean + rng.normal(0, 0.5, shape)).astype(np.float32)
    return clean, noisy, guide


@pytest.mark.parametrize("rician", [False, True])
@pytest.mark.parametrize("search_radius", [5, 2])
def test_matches_reference(rician, search_radius):
    # Non-cubic and smaller than the 11-voxel window: most voxels are border voxels.
    _, noisy, guide = _smooth_phantom((10, 13, 16), seed=1)
    expected = reference_ri_nlm(noisy, guide, 4.0, search_radius, rician)
    result = ri_nlm(noisy, guide, 4.0, search_radius=search_radius, rician=rician)
    assert result.dtype == np.float32 and result.shape == noisy.shape
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5 * 4.0)
    # The filter must actually do something here, or the comparison would be vacuous.
    assert np.abs(result - noisy).mean() > 0.5


@pytest.mark.parametrize("rician", [False, True])
def test_matches_reference_with_a_sigma_map(rician):
    # Noise rising across the volume: each voxel's weights and bias use its own sigma.
    _, noisy, guide = _smooth_phantom((10, 13, 16), seed=11)
    sigma = np.linspace(1.0, 8.0, 16)[None, None, :] * np.ones((10, 13, 1))
    sigma[0, 0, 0] = 0.0  # a voxel without noise is returned as it is
    expected = reference_ri_nlm(noisy, guide, sigma, 5, rician)
    result = ri_nlm(noisy, guide, sigma, rician=rician)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5 * 8.0)
    assert result[0, 0, 0] == noisy[0, 0, 0]
    # A map is not one sigma: the low-noise side is filtered less than with the mean sigma.
    uniform = ri_nlm(noisy, guide, float(sigma.mean()), rician=rician)
    low = (slice(None), slice(None), slice(1, 4))
    assert np.abs(result[low] - noisy[low]).mean() < 0.8 * np.abs(uniform[low] - noisy[low]).mean()


def test_a_constant_sigma_map_gives_the_one_sigma_result():
    _, noisy, guide = _smooth_phantom((8, 40, 12), seed=12)
    np.testing.assert_array_equal(ri_nlm(noisy, guide, np.full(noisy.shape, 4.0)),
                                  ri_nlm(noisy, guide, 4.0))


@pytest.mark.parametrize("shape", [(1, 7, 9), (6, 1, 5), (5, 6, 1)])
def test_matches_reference_on_one_voxel_thick_volumes(shape):
    _, noisy, guide = _smooth_phantom(shape, seed=10)
    expected = reference_ri_nlm(noisy, guide, 4.0, 5, True)
    np.testing.assert_allclose(ri_nlm(noisy, guide, 4.0), expected, rtol=1e-5, atol=4e-5)


def test_matches_reference_with_mask_and_keeps_outside():
    _, noisy, guide = _smooth_phantom((12, 11, 14), seed=2)
    zz, yy, xx = np.indices(noisy.shape)
    mask = (zz - 6) ** 2 + (yy - 5) ** 2 + (xx - 8) ** 2 < 25
    expected = reference_ri_nlm(noisy, guide, 4.0, 5, True, mask)
    result = ri_nlm(noisy, guide, 4.0, mask=mask)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=4e-5)
    np.testing.assert_array_equal(result[~mask], noisy[~mask])


def test_radius_zero_is_identity_or_bias_correction():
    _, noisy, guide = _smooth_phantom((6, 7, 8), seed=3)
    np.testing.assert_allclose(ri_nlm(noisy, guide, 4.0, search_radius=0, rician=False), noisy, rtol=1e-6)
    expected = np.sqrt(np.maximum(noisy.astype(np.float64) ** 2 - 32.0, 0))
    np.testing.assert_allclose(ri_nlm(noisy, guide, 4.0, search_radius=0), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("unit", [1e-30, 1e-3, 1e4])
def test_result_does_not_depend_on_intensity_units(unit):
    # Also covers the 0-255 rescaling: the reference works in image units.
    _, noisy, guide = _smooth_phantom((8, 9, 10), seed=9)
    expected = ri_nlm(noisy, guide, 4.0) * unit
    scaled = ri_nlm(noisy * np.float32(unit), guide * np.float32(unit), 4.0 * unit)
    np.testing.assert_allclose(scaled, expected, rtol=1e-5, atol=1e-5 * 4.0 * unit)


def test_result_does_not_depend_on_thread_count():
    _, noisy, guide = _smooth_phantom((12, 40, 16), seed=4)
    default_threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        serial = ri_nlm(noisy, guide, 4.0)
    finally:
        numba.set_num_threads(default_threads)
    np.testing.assert_array_equal(ri_nlm(noisy, guide, 4.0), serial)


def test_constant_volume_stays_constant():
    constant = np.full((10, 12, 14), 37.5, np.float32)
    np.testing.assert_allclose(ri_nlm(constant, constant, 2.0, rician=False), 37.5, rtol=1e-6)
    # Rician bias correction with a negligible sigma: sqrt(37.5^2 - 2e-6).
    np.testing.assert_allclose(ri_nlm(constant, constant, 1e-3), 37.5, rtol=1e-5)


def test_step_edge_is_kept_with_clean_guide():
    rng = np.random.default_rng(5)
    step = np.zeros((12, 12, 16), np.float32)
    step[:, :, 8:] = 100.0
    noisy = (step + rng.normal(0, 5.0, step.shape)).astype(np.float32)
    result = ri_nlm(noisy, step, 5.0, rician=False)
    # Each side is averaged only with itself: the voxels on either side of the edge
    # stay on their own level (a blur across the edge would move them by ~50).
    for column, level in ((7, 0.0), (8, 100.0)):
        assert np.abs(result[:, :, column] - level).max() < 5.0
    assert np.abs(result - step).std() < 0.2 * np.abs(noisy - step).std()


@pytest.mark.parametrize("rician", [False, True])
def test_noise_is_reduced_on_constant_region(rician):
    rng = np.random.default_rng(6)
    clean = np.full((14, 14, 14), 100.0)
    noisy = (clean + rng.normal(0, 5.0, clean.shape)).astype(np.float32)
    guide = (clean + rng.normal(0, 0.3, clean.shape)).astype(np.float32)
    result = ri_nlm(noisy, guide, 5.0, rician=rician)
    inner = (slice(4, -4),) * 3
    assert result[inner].std() < noisy[inner].std() / 5
    # Rician correction at SNR 20 shifts the mean by ~sigma^2/(2*100), i.e. well under 1.
    assert abs(result[inner].mean() - 100.0) < 1.0


def test_sigma_zero_returns_a_copy_of_input():
    _, noisy, guide = _smooth_phantom((5, 6, 7), seed=7)
    result = ri_nlm(noisy, guide, 0.0)
    np.testing.assert_array_equal(result, noisy)
    assert result is not noisy and result.dtype == np.float32


def test_empty_mask_returns_input():
    _, noisy, guide = _smooth_phantom((5, 6, 7), seed=8)
    result = ri_nlm(noisy, guide, 3.0, mask=np.zeros(noisy.shape, bool))
    np.testing.assert_array_equal(result, noisy)


def _bad_inputs():
    good = np.ones((4, 5, 6), np.float32)
    with_nan = good.copy()
    with_nan[1, 2, 3] = np.nan
    with_inf = good.copy()
    with_inf[0, 0, 0] = np.inf
    return [
        ((good[0], good[0], 1.0), {}, "x must be a 3D array"),
        ((good, good[:, :, :5], 1.0), {}, "guide shape"),
        ((with_nan, good, 1.0), {}, "x contains non-finite"),
        ((good, with_inf, 1.0), {}, "guide contains non-finite"),
        ((good, good, -1.0), {}, "sigma must be finite and >= 0"),
        ((good, good, np.nan), {}, "sigma must be finite and >= 0"),
        ((good, good, "big"), {}, "sigma must be a number"),
        ((good, good, np.ones((4, 5, 7))), {}, "sigma shape"),
        ((good, good, -good), {}, "every voxel of the map"),
        ((good, good, 1.0), {"search_radius": -1}, "search_radius must be >= 0"),
        ((good, good, 1.0), {"search_radius": 2.5}, "search_radius must be an integer"),
        ((good, good, 1.0), {"mask": np.ones((4, 5), bool)}, "mask must be a 3D array"),
        ((good, good, 1.0), {"mask": np.ones((4, 5, 7), bool)}, "mask shape"),
        ((good.astype(str), good, 1.0), {}, "x must be real-valued"),
        ((good, good.astype(complex), 1.0), {}, "guide must be real-valued"),
    ]


@pytest.mark.parametrize("args, kwargs, message", _bad_inputs())
def test_bad_input_raises_clear_error(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ri_nlm(*args, **kwargs)


@pytest.mark.parametrize("sigma", [4.0, "map"])
def test_in_plane_filters_each_plane_on_its_own(sigma):
    _, noisy, guide = _smooth_phantom((5, 13, 16), seed=13)
    if sigma == "map":
        sigma = np.linspace(2.0, 6.0, 16)[None, None, :] * np.ones((5, 13, 1))
    planes = np.concatenate([
        ri_nlm(noisy[i:i + 1], guide[i:i + 1], sigma if np.ndim(sigma) == 0 else sigma[i:i + 1])
        for i in range(5)])
    np.testing.assert_allclose(ri_nlm(noisy, guide, sigma, in_plane=True), planes,
                               rtol=1e-5, atol=1e-4)
    assert np.abs(ri_nlm(noisy, guide, sigma) - planes).max() > 0.1  # 3D differs
