"""Local noise map: a known ramp is recovered, a uniform noise gives a flat map at the
global estimate, and the noise model is chosen by the map's spread."""

import numpy as np
import pytest

from bids_auton2n.denoise.phantom import synthetic_head
from bids_auton2n.denoise.noise import estimate_noise, head_mask, noise_pair, noise_pair_values
from bids_auton2n.denoise.noisemap import (
    ADAPTIVE_SPREAD,
    NoiseMap,
    choose_noise_model,
    lattice_strides,
    local_noise_map,
)


def _noisy_head(sigma, seed=0, shape=(48, 64, 48)):
    rng = np.random.default_rng(seed)
    clean = synthetic_head(shape, "T1w", rng).astype(np.float32)
    sigma = np.broadcast_to(np.asarray(sigma, np.float32), shape)
    noisy = np.hypot(clean + sigma * rng.standard_normal(shape),
                     sigma * rng.standard_normal(shape)).astype(np.float32)
    mask = head_mask(noisy)
    return noisy, mask, noise_pair(noisy, mask), sigma


@pytest.fixture(scope="module")
def ramp():
    # Noise rising smoothly from 2 to 8 % of white matter (100) along the second axis.
    sigma = np.linspace(2.0, 8.0, 64, dtype=np.float32)[None, :, None]
    noisy, mask, pair, truth = _noisy_head(sigma)
    return noisy, mask, pair, truth, local_noise_map(noisy, pair, mask)


def test_a_known_ramp_is_recovered(ramp):
    _, mask, _, truth, noise_map = ramp
    ratio = noise_map.sigma[noise_map.measured] / truth[noise_map.measured]
    # The level is the calibrated global estimator's (within 10 % on this synthetic head);
    # the shape follows the ramp to within 12 % almost everywhere.
    assert abs(np.median(ratio) - 1.0) < 0.1
    assert np.percentile(np.abs(ratio / np.median(ratio) - 1.0), 95) < 0.12
    # The rise is that of the truth, also towards the ends of the head (first-order fit).
    head = np.flatnonzero(mask.any(axis=(0, 2)))
    ends = [int(head[0] + 0.15 * (head[-1] - head[0])), int(head[-1] - 0.15 * (head[-1] - head[0]))]
    found = [np.median(noise_map.sigma[:, y][mask[:, y]]) for y in ends]
    expected = [float(truth[0, y, 0]) for y in ends]
    assert (found[1] / found[0]) / (expected[1] / expected[0]) == pytest.approx(1.0, abs=0.12)
    assert noise_map.spread > ADAPTIVE_SPREAD
    assert choose_noise_model(noise_map) == "adaptive"


def test_uniform_noise_gives_a_flat_map_at_the_global_estimate():
    noisy, mask, pair, _ = _noisy_head(4.0, seed=1)
    noise_map = local_noise_map(noisy, pair, mask)
    global_sigma = estimate_noise(noisy, mask=mask, pair=pair).sigma
    assert np.median(noise_map.sigma[noise_map.measured]) == pytest.approx(global_sigma, rel=0.03)
    assert noise_map.spread < ADAPTIVE_SPREAD
    assert choose_noise_model(noise_map) == "global"
    # Everywhere in the volume, also far from the measured voxels, the map is finite and > 0.
    assert np.isfinite(noise_map.sigma).all() and noise_map.sigma.min() > 0


def test_the_smoothing_is_in_millimetres(ramp):
    noisy, mask, pair, _, noise_map = ramp
    coarse = local_noise_map(noisy, pair, mask, voxel_size=(0.5, 0.5, 0.5))
    # Half-size voxels: the same 8 mm smoothing spans twice the voxels, a smoother map.
    assert np.abs(np.diff(coarse.sigma, axis=1)).mean() < np.abs(np.diff(noise_map.sigma, axis=1)).mean()


def test_the_noise_model_choice():
    flat = NoiseMap(np.ones((2, 2, 2), np.float32), np.ones((2, 2, 2), bool), 0.1)
    varying = NoiseMap(np.ones((2, 2, 2), np.float32), np.ones((2, 2, 2), bool), 0.5)
    assert choose_noise_model(flat) == "global" and choose_noise_model(varying) == "adaptive"
    assert choose_noise_model(varying, "global") == "global"
    assert choose_noise_model(flat, "adaptive") == "adaptive"
    assert choose_noise_model(None) == "global"
    with pytest.raises(ValueError, match="needs a noise map"):
        choose_noise_model(None, "adaptive")
    with pytest.raises(ValueError, match="noise model must be one of"):
        choose_noise_model(flat, "local")
    record = varying.summary(reference_intensity=50.0)
    assert record["Spread"] == 0.5 and record["PercentPercentiles"]["P50"] == pytest.approx(2.0)


def test_bad_inputs():
    rng = np.random.default_rng(2)
    noisy = rng.uniform(50, 100, (24, 24, 24)).astype(np.float32)
    pair = noisy + rng.normal(0, 1, noisy.shape).astype(np.float32)
    mask = np.ones(noisy.shape, bool)
    with pytest.raises(ValueError, match="pair shape"):
        local_noise_map(noisy, pair[:-1], mask)
    with pytest.raises(ValueError, match="do not differ"):
        local_noise_map(noisy, noisy, mask)
    with pytest.raises(ValueError, match="voxel_size"):
        local_noise_map(noisy, pair, mask, voxel_size=(1, 1, 0))


def test_linear_fits_in_chunks_give_the_same_map(ramp, monkeypatch):
    import bids_auton2n.denoise.noisemap as noisemap

    noisy, mask, pair, _, whole = ramp
    monkeypatch.setattr(noisemap, "FIT_CHUNK", 37)  # many chunks, the last one short
    chunked = local_noise_map(noisy, pair, mask)
    np.testing.assert_array_equal(chunked.sigma, whole.sigma)
    np.testing.assert_array_equal(chunked.measured, whole.measured)
    assert chunked.spread == whole.spread



def test_lattice_strides_follow_the_node_budget():
    small = np.ones((40, 40, 40), bool)  # 64,000 voxels: every voxel
    assert lattice_strides(small, (1.0, 1.0, 1.0)) == (1, 1, 1)
    head = np.ones((160, 200, 160), bool)  # 5.1 M voxels: 2 mm has 640,000 nodes, 3 mm 190,000
    assert lattice_strides(head, (1.0, 1.0, 1.0)) == (3, 3, 3)
    assert lattice_strides(np.ones((100, 110, 100), bool), (1.0, 1.0, 1.0)) == (2, 2, 2)
    # In millimetres: thick slices keep every slice, fine in-plane voxels are skipped more.
    assert lattice_strides(head, (0.5, 0.5, 4.0)) == (6, 6, 1)


def test_a_map_on_a_lattice_searches_the_pair_there_only(ramp, monkeypatch):
    import bids_auton2n.denoise.noisemap as noisemap

    noisy, mask, pair, truth, every_voxel = ramp
    monkeypatch.setattr(noisemap, "LATTICE_NODES", 5000)  # this small head as a whole one
    strides = lattice_strides(noisemap.ndi.binary_erosion(mask), (1.0, 1.0, 1.0))
    assert strides == (3, 3, 3)
    searched = noise_pair_values(noisy)
    estimate_noise(noisy, mask=mask, pair=searched)
    before = searched.searched
    on_lattice = local_noise_map(noisy, searched, mask)
    # The same map as from the whole pair, with the pair searched at few voxels beyond the
    # estimate's (its first pass reads the same lattice).
    from_whole = local_noise_map(noisy, pair, mask)
    np.testing.assert_array_equal(on_lattice.sigma, from_whole.sigma)
    assert searched.searched - before < 0.05 * mask.sum()
    measured = np.argwhere(on_lattice.measured)
    assert (measured % 3 == 0).all() and len(measured) > 100
    # Coarser, it still follows the ramp.
    ratio = on_lattice.sigma[every_voxel.measured] / truth[every_voxel.measured]
    assert np.percentile(np.abs(ratio / np.median(ratio) - 1.0), 90) < 0.2
    assert on_lattice.spread == pytest.approx(every_voxel.spread, abs=0.15)
