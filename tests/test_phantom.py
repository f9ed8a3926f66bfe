"""Tests of the ICBM152 benchmark phantom and its Rician noise."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from bids_auton2n.denoise.phantom import (
    REFERENCE_INTENSITY,
    add_rician_noise,
    crop,
    icbm152_phantom,
)


@pytest.fixture(scope="module")
def t1w():
    return icbm152_phantom("T1w")


def test_shape_types_and_labels(t1w):
    assert t1w.clean.shape == (197, 233, 189)
    assert t1w.clean.dtype == np.float32
    assert set(np.unique(t1w.labels)) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(t1w.head_mask, t1w.labels > 0)
    # The brain sits inside the head, and the non-brain label only outside the brain.
    assert not np.any(t1w.labels[t1w.brain_mask] == 4)
    assert np.all(t1w.head_mask[t1w.brain_mask & (t1w.labels > 0)])
    assert np.all(t1w.clean[t1w.labels == 0] < 0.5 * t1w.reference_intensity)


def test_memberships_are_fuzzy_fractions(t1w):
    total = sum(t1w.memberships.values())
    assert total.max() <= 1.0 + 1e-5
    for name, membership in t1w.memberships.items():
        assert membership.min() >= 0.0, name
    partial = (t1w.memberships["GM"] > 0.1) & (t1w.memberships["GM"] < 0.9)
    assert partial.sum() > 10000  # partial-volume voxels exist (BrainWeb-like)


@pytest.mark.parametrize("contrast, tissue, darker", [("T1w", "WM", "CSF"), ("T2w", "CSF", "WM")])
def test_reference_tissue_follows_brainweb(contrast, tissue, darker):
    phantom = icbm152_phantom(contrast)
    pure = phantom.memberships[tissue] > 0.999
    assert phantom.reference_intensity == pytest.approx(REFERENCE_INTENSITY)
    assert np.median(phantom.clean[pure]) == pytest.approx(phantom.reference_intensity, rel=1e-3)
    assert np.median(phantom.clean[phantom.memberships[darker] > 0.99]) < 0.5 * phantom.reference_intensity


def test_noise_level_in_homogeneous_white_matter(t1w):
    homogeneous = np.abs(t1w.clean - t1w.reference_intensity) < 0.005 * t1w.reference_intensity
    core = ndi.binary_erosion(homogeneous & (t1w.labels == 3))
    assert core.sum() > 50000
    noisy = add_rician_noise(t1w.clean, 3.0, t1w.reference_intensity, seed=7)
    sigma = 0.03 * t1w.reference_intensity
    # At SNR 33 the Rician is Gaussian to within 0.1 %.
    assert np.std(noisy[core] - t1w.clean[core]) == pytest.approx(sigma, rel=0.02)
    background = t1w.clean == 0
    # Rayleigh mean in the background: sigma * sqrt(pi / 2).
    assert np.mean(noisy[background]) == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.02)


def test_noise_is_seeded():
    clean = np.full((8, 9, 10), 50.0, dtype=np.float32)
    a = add_rician_noise(clean, 5, 100.0, seed=1)
    b = add_rician_noise(clean, 5, 100.0, seed=1)
    c = add_rician_noise(clean, 5, 100.0, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(add_rician_noise(clean, 0, 100.0, seed=1), clean)
    with pytest.raises(ValueError):
        add_rician_noise(clean, -1, 100.0, seed=1)


def test_crop_keeps_world_coordinates(t1w):
    small = crop(t1w, (40, 48, 32))
    assert small.clean.shape == (40, 48, 32)
    assert small.labels.shape == small.memberships["WM"].shape == (40, 48, 32)
    assert small.brain_mask.mean() > 0.5
    # Voxel (0, 0, 0) of the crop is the same world point as its source voxel in the full phantom.
    source = np.linalg.solve(t1w.affine, small.affine @ [0, 0, 0, 1])[:3]
    start = np.round(source).astype(int)
    np.testing.assert_array_equal(small.clean, t1w.clean[start[0]:start[0] + 40, start[1]:start[1] + 48,
                                                          start[2]:start[2] + 32])
    with pytest.raises(ValueError):
        crop(t1w, (400, 10, 10))


def test_bad_contrast():
    with pytest.raises(ValueError, match="contrast"):
        icbm152_phantom("FLAIR")


def test_synthetic_head_is_piecewise_constant_and_seeded():
    from bids_auton2n.denoise.phantom import SYNTHETIC_HEAD_INTENSITY, synthetic_head

    shape = (24, 28, 24)
    head = synthetic_head(shape, "T1w", np.random.default_rng(3))
    assert head.shape == shape and head.dtype == np.float32
    assert set(np.unique(head)) == set(SYNTHETIC_HEAD_INTENSITY["T1w"])
    assert head[0, 0, 0] == 0.0 and head[12, 14, 12] == 30.0  # air corner, ventricle at the centre
    np.testing.assert_array_equal(head, synthetic_head(shape, "T1w", np.random.default_rng(3)))
    t2 = synthetic_head(shape, "T2w", np.random.default_rng(3))
    assert t2[12, 14, 12] == 100.0  # CSF is the T2w reference tissue
