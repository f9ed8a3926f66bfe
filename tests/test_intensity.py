"""Tests of input sanitising and intensity normalisation."""

import numpy as np
import pytest

from bids_auton2n.denoise.intensity import IntensityNormalizer, sanitize


def test_sanitize_zeroes_and_records_nonfinite():
    x = np.array([[[1.0, np.nan], [np.inf, -np.inf]], [[-2.0, 3.0], [0.0, 5.0]]], dtype=np.float64)
    finite, mask = sanitize(x)
    assert finite.dtype == np.float32 and mask.dtype == bool
    np.testing.assert_array_equal(mask, ~np.isfinite(x))
    np.testing.assert_array_equal(finite[mask], 0.0)
    np.testing.assert_array_equal(finite[~mask], x[~mask].astype(np.float32))
    # The restore step the pipeline performs gives the input back bit for bit.
    restored = finite.astype(np.float64)
    restored[mask] = x[mask]
    np.testing.assert_array_equal(restored, x)


def test_sanitize_copies_and_converts_integers():
    x = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    finite, mask = sanitize(x)
    assert finite.dtype == np.float32 and not mask.any()
    finite[0, 0, 0] = 99
    assert x[0, 0, 0] == 0
    f32 = np.ones((2, 2, 2), np.float32)
    assert not np.shares_memory(sanitize(f32)[0], f32)


def test_sanitize_rejects_non_numeric():
    with pytest.raises(TypeError, match="dtype"):
        sanitize(np.array(["a", "b"]))


@pytest.mark.parametrize("scale", [0.0, -3.0, np.nan, np.inf, "abc", None])
def test_normalizer_rejects_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        IntensityNormalizer(scale)


def test_reference_tissue_maps_to_one_and_noise_to_percent():
    rng = np.random.default_rng(0)
    wm = 140.0
    x = (wm + rng.normal(0, 0.03 * wm, size=20000)).astype(np.float32)
    y = IntensityNormalizer(wm).forward(x)
    assert y.dtype == np.float32
    assert np.mean(y) == pytest.approx(1.0, abs=1e-3)
    assert np.std(y) == pytest.approx(0.03, rel=0.03)


def test_round_trip_exact_for_power_of_two_and_within_one_ulp_otherwise():
    rng = np.random.default_rng(1)
    x = rng.normal(100, 50, size=(9, 10, 11)).astype(np.float32)  # includes negatives
    assert (x < 0).any()
    norm = IntensityNormalizer(256.0)
    np.testing.assert_array_equal(norm.inverse(norm.forward(x)), x)
    for scale in (137.3, 0.731, 1e4 / 3):
        norm = IntensityNormalizer(scale)
        np.testing.assert_array_max_ulp(norm.inverse(norm.forward(x)), x, maxulp=1)


def test_negative_values_pass_through_unclipped():
    norm = IntensityNormalizer(2.0)
    np.testing.assert_array_equal(norm.forward(np.array([-4.0, 0.0, 4.0])), [-2.0, 0.0, 2.0])
