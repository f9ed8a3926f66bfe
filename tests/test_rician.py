"""Rician bias of magnitude data: the mean, its inverse and the correction of the CNN path."""

import numpy as np
import pytest
from scipy import stats

from bids_auton2n.denoise.pipeline import final_image
from bids_auton2n.denoise.rician import (
    FULL_CORRECTION_SNR,
    NO_CORRECTION_SNR,
    correction_weight,
    expected_bias,
    noise_only,
    rician_correct,
    rician_mean,
    rician_unbias,
)


def _rician(signal, sigma, rng):
    return np.hypot(signal + rng.normal(0, sigma, np.shape(signal)),
                    rng.normal(0, sigma, np.shape(signal))).astype(np.float32)


def test_mean_matches_scipy_rice():
    snr = np.array([0.0, 0.3, 1.0, 2.0, 3.5, 8.0, 20.0])
    expected = [stats.rice(b=max(b, 1e-12), scale=2.0).mean() for b in snr]
    np.testing.assert_allclose(rician_mean(2.0 * snr, 2.0), expected, rtol=1e-10)
    # A map: one sigma per value; sigma 0 is no noise.
    np.testing.assert_allclose(rician_mean([3.0, 3.0], np.array([0.0, 3.0])),
                               [3.0, stats.rice(b=1.0, scale=3.0).mean()], rtol=1e-10)


def test_unbias_inverts_the_mean():
    snr = np.concatenate([np.linspace(0, 5, 200), np.linspace(5, 60, 100)])
    np.testing.assert_allclose(rician_unbias(rician_mean(5.0 * snr, 5.0), 5.0), 5.0 * snr,
                               atol=5e-3 * 5.0, rtol=2e-5)
    # No signal explains a mean below that of pure noise.
    assert np.all(rician_unbias([0.0, 1.0, 1.25], 1.0) == 0)
    np.testing.assert_array_equal(rician_unbias([1.0, 7.0], 0.0), [1.0, 7.0])


def test_noise_only_finds_the_background_and_not_weak_signal():
    rng = np.random.default_rng(0)
    signal = np.zeros((24, 24, 48), np.float32)
    signal[:, :, 24:] = 1.5  # A = 1.5 sigma: a weak but real signal
    noisy = _rician(signal, 1.0, rng)
    found = noise_only(noisy, 1.0)
    inner = (slice(3, -3), slice(3, -3))
    assert found[inner + (slice(2, 21),)].mean() > 0.97
    assert found[inner + (slice(27, -2),)].mean() < 0.005
    assert not noise_only(noisy, 0.0).any()


def test_correction_weight_is_one_at_low_and_zero_at_high_snr():
    weight = correction_weight([0.0, FULL_CORRECTION_SNR, 0.5 * (FULL_CORRECTION_SNR + NO_CORRECTION_SNR),
                                NO_CORRECTION_SNR, 30.0], 1.0)
    np.testing.assert_allclose(weight, [1.0, 1.0, 0.5, 0.0, 0.0])


def test_correction_removes_the_low_snr_bias_and_keeps_high_snr_as_is():
    rng = np.random.default_rng(1)
    sigma = 2.0
    signal = np.zeros((20, 20, 60), np.float32)
    signal[:, :, 20:40] = 2.0 * sigma  # dark tissue (SNR 2)
    signal[:, :, 40:] = 10.0 * sigma   # bright tissue
    noisy = _rician(signal, sigma, rng)
    # A denoiser that knows the local mean of the magnitude, up to a small error.
    estimate = (rician_mean(signal, sigma) + rng.normal(0, 0.05 * sigma, signal.shape)).astype(np.float32)
    corrected = rician_correct(estimate, noisy, sigma)
    inner = (slice(2, -2), slice(2, -2))
    background, dark, bright = (inner + (slice(a, b),) for a, b in ((2, 17), (23, 37), (43, 58)))
    assert abs(estimate[dark].mean() - signal[dark].mean()) > 0.2 * sigma  # the bias to remove
    assert abs(corrected[dark].mean() - signal[dark].mean()) < 0.02 * sigma
    assert np.mean(corrected[background] == 0) > 0.95
    assert corrected[background].mean() < 0.02 * sigma
    np.testing.assert_array_equal(corrected[bright], estimate[bright])
    # What the guard allows for is what the correction took away.
    np.testing.assert_allclose(expected_bias(signal[dark], sigma),
                               rician_mean(signal[dark], sigma) - signal[dark], rtol=1e-5)
    assert np.all(expected_bias(signal[bright], sigma) == 0)


@pytest.mark.parametrize("fusion", [False, True])
def test_final_image_corrects_the_rician_bias_of_the_cnn(fusion):
    """The pipeline's last stage, CNN output = the local Rician mean (what an N2N network
    trained with zero-mean noise learns in flat regions): background and dark tissue come out
    unbiased with ``rician``, biased without; bright tissue the same either way."""
    rng = np.random.default_rng(2)
    sigma = 9.0
    signal = np.zeros((16, 16, 60), np.float32)
    signal[:, :, 20:40] = 25.0   # dark CSF (SNR 2.8)
    signal[:, :, 40:] = 100.0    # white matter
    noisy = _rician(signal, sigma, rng)
    cnn = rician_mean(signal, sigma).astype(np.float32)
    inner = (slice(3, -3), slice(3, -3))
    background, dark = inner + (slice(3, 17),), inner + (slice(24, 36),)
    bright = inner + (slice(44, 56),)
    corrected, uncorrected = (final_image(noisy, cnn, sigma, fusion=fusion, guard=True, rician=rician)
                              for rician in (True, False))
    error = {name: (out[background].mean() / sigma, (out[dark] - signal[dark]).mean() / sigma)
             for name, out in (("corrected", corrected), ("uncorrected", uncorrected))}
    assert error["uncorrected"][0] > 0.5 and error["uncorrected"][1] > 0.1
    assert error["corrected"][0] < (0.15 if fusion else 0.02)
    assert abs(error["corrected"][1]) < 0.06
    if not fusion:
        np.testing.assert_array_equal(corrected[bright], uncorrected[bright])


@pytest.mark.parametrize("sigma_kind", ["value", "map"])
def test_chunked_voxelwise_steps_equal_the_whole_volume(monkeypatch, sigma_kind):
    """The voxelwise steps run in chunks of planes (memory); each voxel's value is the one
    the whole volume gives, and noise_only's filter is the whole-volume filter."""
    from scipy import ndimage as ndi

    import bids_auton2n.denoise.rician as rician

    rng = np.random.default_rng(3)
    shape = (17, 24, 21)
    clean = np.zeros(shape, np.float32)
    clean[3:14, 5:19, 4:17] = 40.0
    ramp = np.linspace(2.0, 6.0, shape[0], dtype=np.float32)[:, None, None]
    sigma = np.float32(4.0) if sigma_kind == "value" else ramp * np.ones(shape, np.float32)
    noisy = _rician(clean, sigma, rng).astype(np.float32)
    estimate = (clean + rng.normal(0, 1.0, shape) + 2.0).astype(np.float32)

    monkeypatch.setattr(rician, "CHUNK_VOXELS", 10**9)  # one chunk: the whole volume
    whole = (rician.rician_correct(estimate, noisy, sigma), rician.expected_bias(estimate, sigma))
    monkeypatch.setattr(rician, "CHUNK_VOXELS", 3 * 24 * 21 + 5)  # chunks of 3 planes
    chunked = (rician.rician_correct(estimate, noisy, sigma), rician.expected_bias(estimate, sigma))
    for got, expected in zip(chunked, whole):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    # the slow reference of the noise-only test: the textbook formula on the whole volume
    errors = rician.NOISE_ONLY_ERRORS
    limit = 2.0 * np.square(np.asarray(sigma, np.float64)) * (1.0 + errors / np.sqrt(125))
    second = ndi.uniform_filter(np.square(noisy.astype(np.float64)), size=5, mode="nearest")
    np.testing.assert_array_equal(noise_only(noisy, sigma),
                                  (second <= limit) & (np.asarray(sigma) > 0))
    # and the bias the guard subtracts is the weighted bias of the mean, voxel by voxel
    mean = rician_mean(estimate, sigma)
    bias = mean - np.abs(estimate.astype(np.float64))
    reference = (correction_weight(mean, sigma) * bias).astype(np.float32)
    np.testing.assert_array_equal(chunked[1], reference)

