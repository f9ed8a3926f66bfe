"""Tests of the head mask, the reference tissue and the noise estimate on small phantoms."""

import numpy as np
import pytest

from bids_auton2n.denoise.noise import (
    FLATTEST_FRACTION, NoiseEstimate, _binned_mad, estimate_noise, head_mask, kmeans_1d,
    load_calibration, noise_pair, noise_pair_values, otsu_threshold, quantization_step,
    reference_intensity,
)

# Concentric "head": ventricle, white matter, cortex, skull, scalp fat (outer radii, voxels).
SHELLS = (("CSF", 5), ("WM", 13), ("GM", 17), ("skull", 19), ("fat", 22))
INTENSITY = {
    "T1w": {"CSF": 25.0, "WM": 100.0, "GM": 65.0, "skull": 8.0, "fat": 115.0},
    "T2w": {"CSF": 100.0, "WM": 32.0, "GM": 45.0, "skull": 6.0, "fat": 70.0},
}
SHAPE = (48, 48, 48)


def radius():
    grid = np.indices(SHAPE, dtype=np.float64) - (np.array(SHAPE)[:, None, None, None] - 1) / 2
    return np.sqrt((grid**2).sum(axis=0))


def head_phantom(contrast, skull_stripped=False):
    """Piecewise-constant concentric head; returns (clean, head, brain) masks."""
    r = radius()
    clean = np.zeros(SHAPE, dtype=np.float32)
    inner = 0.0
    for tissue, outer in SHELLS:
        clean[(r >= inner) & (r < outer)] = INTENSITY[contrast][tissue]
        inner = outer
    brain = r < 17
    if skull_stripped:
        clean[~brain] = 0.0
    return clean, r < 22, brain


def rician(clean, sigma, seed):
    rng = np.random.default_rng(seed)
    return np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape)).astype(
        np.float32)


def dice(a, b):
    return 2 * np.sum(a & b) / (a.sum() + b.sum())


def test_otsu_separates_two_modes():
    values = np.r_[np.full(100, 10.0), np.full(100, 50.0)]
    assert 10 < otsu_threshold(values) <= 50


def test_head_mask_zero_background():
    clean, _, brain = head_phantom("T1w", skull_stripped=True)
    mask = head_mask(clean)
    assert dice(mask, brain) > 0.98


def test_head_mask_rician_background_fills_skull_and_ventricle():
    clean, head, _ = head_phantom("T1w")
    mask = head_mask(rician(clean, 4.0, seed=0))
    # The 1-voxel Gaussian before thresholding may add up to a voxel at the surface.
    assert mask[head].all()  # dark skull and CSF inside are filled
    assert not mask[radius() >= 23.5].any()


@pytest.mark.parametrize("contrast, tissue", [("T1w", "WM"), ("T2w", "CSF")])
def test_reference_tissue_picks_brightest_brain_class(contrast, tissue):
    clean, head, _ = head_phantom(contrast)
    noisy = rician(clean, 2.0, seed=1)
    reference = reference_intensity(noisy, head, contrast)
    assert reference.name == tissue
    # Not fooled by the brighter scalp fat (T1w) nor by the background.
    assert reference.intensity == pytest.approx(INTENSITY[contrast][tissue], rel=0.05)


@pytest.mark.parametrize(
    "noise, contrast, sigma", [("gaussian", "T1w", 3.0), ("rician", "T1w", 7.0), ("rician", "T2w", 5.0)]
)
def test_estimate_noise_recovers_sigma(noise, contrast, sigma):
    clean, _, _ = head_phantom(contrast)
    if noise == "gaussian":
        noisy = clean + np.random.default_rng(2).normal(0, sigma, SHAPE).astype(np.float32)
    else:
        noisy = rician(clean, sigma, seed=2)
    estimate = estimate_noise(noisy, contrast=contrast)
    assert isinstance(estimate, NoiseEstimate)
    assert estimate.sigma == pytest.approx(sigma, rel=0.15)
    assert estimate.percent == pytest.approx(100 * estimate.sigma / estimate.reference_intensity)
    # The flattest FLATTEST_FRACTION of the high-SNR voxels, not the small-volume fallback.
    assert 100 <= estimate.n_voxels <= FLATTEST_FRACTION * np.prod(SHAPE)
    record = estimate.to_dict()
    assert set(record) == {"sigma", "percent", "reference_tissue", "reference_intensity", "raw_std",
                           "n_voxels"}


def test_estimate_noise_skull_stripped_and_scale_equivariant():
    clean, _, _ = head_phantom("T1w", skull_stripped=True)
    noisy = rician(clean, 4.0, seed=3)
    noisy[clean == 0] = 0.0  # skull stripping zeroes the background after acquisition
    first = estimate_noise(noisy)
    assert first.sigma == pytest.approx(4.0, rel=0.15)
    scaled = estimate_noise(10 * noisy)
    assert scaled.sigma == pytest.approx(10 * first.sigma, rel=1e-4)
    assert scaled.percent == pytest.approx(first.percent, rel=1e-4)


def test_estimate_with_or_without_a_precomputed_pair_is_identical():
    clean, _, _ = head_phantom("T1w")
    noisy = rician(clean, 5.0, seed=4)
    mask = head_mask(noisy)
    assert estimate_noise(noisy, mask=mask) == estimate_noise(noisy, mask=mask,
                                                              pair=noise_pair(noisy, mask))
    assert estimate_noise(noisy, mask=mask) == estimate_noise(noisy, mask=mask,
                                                              pair=noise_pair_values(noisy))


@pytest.mark.parametrize("slope, offset", [(1.0, 0.0), (133.88, 0.0), (2.0078, -7.5)])
def test_quantization_step_of_scaled_integers(slope, offset):
    stored = np.random.default_rng(5).integers(0, 200, size=5000)
    image = (stored * slope + offset).astype(np.float32)
    differences = image[1:] - image[:-1]
    assert quantization_step(differences) == pytest.approx(slope, rel=1e-4)


def test_quantization_step_of_continuous_values_is_zero():
    values = np.random.default_rng(6).normal(0, 3, 5000).astype(np.float32)
    assert quantization_step(values) == 0.0
    assert quantization_step(np.zeros(100)) == 0.0


@pytest.mark.parametrize("spread, centre", [(0.6, 0.0), (1.7, 0.3), (4.2, -1.0)])
def test_binned_mad_matches_dense_dithering(spread, centre):
    """Slow reference: every value replaced by 400 points evenly spread over its bin."""
    values = np.round(np.random.default_rng(7).normal(centre, spread, 3001))
    offsets = (np.arange(400) + 0.5) / 400 - 0.5
    dithered = (values[:, None] + offsets[None, :]).ravel()
    mad = np.median(np.abs(dithered - np.median(dithered)))
    gaussian_std = 1.4826 * mad
    want = np.sqrt(max(gaussian_std**2 - 1 / 12, 0.0)) / 1.4826
    assert _binned_mad(values, 1.0) == pytest.approx(want, abs=2e-3)


def test_binned_mad_is_continuous_in_the_spread():
    """A plain MAD of integers jumps by whole steps; the binned one moves smoothly."""
    base = np.random.default_rng(8).normal(0, 1, 20001)
    spreads = np.linspace(1.5, 3.5, 21)
    mads = np.array([_binned_mad(np.round(s * base), 1.0) for s in spreads])
    assert np.all(np.diff(mads) > 0)
    assert np.max(np.abs(np.diff(mads) - np.diff(spreads) * 0.6745)) < 0.02


@pytest.fixture(scope="module")
def icbm_head():
    """The demo's head (nilearn's ICBM152 tissue maps), white matter at 1, cropped."""
    from bids_auton2n.denoise.phantom import crop, icbm152_phantom

    phantom = crop(icbm152_phantom("T1w"), (112, 128, 112))
    return phantom.clean / phantom.reference_intensity


@pytest.mark.parametrize("white_matter", [100, 250])
def test_estimate_on_integer_images_is_monotone_and_within_a_quarter_point(icbm_head,
                                                                          white_matter):
    """The issue's check: the demo's head stored as integers, true noise 1-9 % of white
    matter in 0.5 % steps.  Compared in sigma (percent of the white matter the image was
    made with): the estimate's own reference, the median of the brightest tissue class, sits
    below the phantom's pure-white-matter value where its memberships are partial."""
    clean = icbm_head * white_matter
    levels = np.arange(1.0, 9.01, 0.5)
    estimates = []
    for index, level in enumerate(levels):
        noisy = np.round(rician(clean, level / 100 * white_matter, seed=100 + index))
        estimates.append(100 * estimate_noise(noisy, contrast="T1w").sigma / white_matter)
    estimates = np.array(estimates)
    assert np.all(np.diff(estimates) > 0), estimates
    assert np.max(np.abs(estimates - levels)) <= 0.25, estimates - levels


def test_calibration_record_is_complete():
    record = load_calibration()
    assert record["model"]["slope"] > 0
    assert 0.9 < record["fit"]["r2"] <= 1.0
    # Records made before the calibration became a command name the script it was then.
    assert record["date"] and record["command"].startswith(
        ("bids_auton2n-calibrate-noise", "python scripts/calibrate_noise.py"))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: head_mask(np.zeros((8, 8, 8))), "constant"),
        (lambda: head_mask(np.full((8, 8, 8), np.nan)), "finite"),
        (lambda: head_mask(np.ones((8, 8))), "3D"),
        (lambda: estimate_noise(np.zeros((8, 8, 8))), "constant"),
        (lambda: estimate_noise(np.full((8, 8, 8), np.nan)), "finite"),
        (lambda: estimate_noise(head_phantom("T1w")[0], mask=np.ones((8, 8, 7), bool)), "mask shape"),
        (lambda: estimate_noise(head_phantom("T1w")[0], mask=np.zeros(SHAPE, bool)), "empty"),
        (lambda: estimate_noise(head_phantom("T1w")[0], pair=np.zeros((4, 4, 4))), "pair shape"),
        (lambda: reference_intensity(head_phantom("T1w")[0], head_phantom("T1w")[1], "DWI"),
         "contrast"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_depth_and_gradient_equal_their_numpy_and_scipy_references():
    """The memory-lean forms of the distance map and the gradient magnitude give the
    library functions' numbers bit for bit."""
    from scipy import ndimage as ndi

    from bids_auton2n.denoise.noise import _depth, gradient_magnitude

    rng = np.random.default_rng(5)
    for shape in [(20, 31, 17), (6, 6, 6), (33, 12, 25)]:
        mask = ndi.binary_opening(rng.random(shape) > 0.25)
        reference = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
        np.testing.assert_array_equal(_depth(mask), reference)
        volume = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.0)
        expected = np.sqrt(sum(g * g for g in np.gradient(volume)))
        got = gradient_magnitude(volume)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    grid = np.indices((41, 41, 41)) - 20.0
    ball = np.sqrt((grid ** 2).sum(0)) < 18
    np.testing.assert_array_equal(
        _depth(ball), ndi.distance_transform_edt(np.pad(ball, 1))[1:-1, 1:-1, 1:-1])



def _kmeans_reference(values, centres, iterations):
    """Lloyd's iterations written out: every value to its nearest centre (the lower one on a
    tie), each centre to its class mean (an empty class keeps its centre)."""
    centres = np.asarray(centres, dtype=np.float64)
    for _ in range(iterations):
        labels = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        updated = np.array([values[labels == k].mean() if np.any(labels == k) else centres[k]
                            for k in range(centres.size)])
        if np.allclose(updated, centres):
            break
        centres = updated
    return centres


@pytest.mark.parametrize("case", ["three tissues", "integers with ties", "an empty class",
                                  "one iteration"])
def test_kmeans_matches_a_slow_reference(case):
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.normal(mean, 6.0, size) for mean, size in
                             ((25, 3000), (65, 5000), (100, 8000))])
    centres, iterations = np.array([10.0, 60.0, 120.0]), 100
    if case == "integers with ties":
        values = np.round(values)
        centres = np.array([20.0, 60.0, 100.0])  # bounds 40 and 80 fall on integer values
        iterations = 1  # later iterations start from class means: no more ties
    elif case == "an empty class":
        centres = np.array([50.0, 80.0, 1000.0])
    elif case == "one iteration":
        iterations = 1
    expected = _kmeans_reference(values, centres, iterations)
    np.testing.assert_allclose(kmeans_1d(values, centres, iterations), expected,
                               rtol=1e-12, atol=0)
