"""Tests of the synthetic-pair generator against a slow per-voxel reference."""

import numpy as np
import pytest

from bids_auton2n.denoise.pairs import (
    SEARCH_RADIUS, PairValues, half_displacements, pair_values_at, synthetic_pair,
)


def reference_pair(x, search_radius, patch_radius, exclude_centre=False, mask=None):
    """Naive per-voxel search with the conventions documented in ``pairs.py``.

    Candidates are listed as ``+d1, -d1, +d2, -d2, ...``; ``argmin`` keeps the
    first of equal distances, patches read an edge-padded copy, candidates
    must lie inside the volume.
    """
    x = np.asarray(x, dtype=np.float32)
    half = half_displacements(search_radius)
    candidates = np.empty((2 * len(half), 3), dtype=np.int64)
    candidates[0::2], candidates[1::2] = half, -half
    r = patch_radius
    padded = np.pad(x.astype(np.float64), r, mode="edge")
    side = 2 * r + 1
    weights = np.ones((side, side, side))
    if exclude_centre:
        weights[r, r, r] = 0.0
    y = x.copy()
    shape = np.array(x.shape)
    for voxel in np.ndindex(x.shape):
        if mask is not None and not mask[voxel]:
            continue
        here = padded[voxel[0]:voxel[0] + side, voxel[1]:voxel[1] + side, voxel[2]:voxel[2] + side]
        best, best_value = np.inf, x[voxel]
        for offset in candidates:
            j = np.array(voxel) + offset
            if np.any(j < 0) or np.any(j >= shape):
                continue
            there = padded[j[0]:j[0] + side, j[1]:j[1] + side, j[2]:j[2] + side]
            dist = np.sum(weights * (here - there) ** 2)
            if dist < best:
                best, best_value = dist, x[tuple(j)]
        y[voxel] = best_value
    return y


@pytest.fixture(scope="module")
def random_volume():
    return np.random.default_rng(0).normal(100.0, 20.0, size=(12, 13, 11)).astype(np.float32)


@pytest.mark.parametrize("exclude_centre", [False, True])
@pytest.mark.parametrize("use_mask", [False, True])
def test_matches_reference_on_random_floats(random_volume, exclude_centre, use_mask):
    mask = None
    if use_mask:
        mask = np.zeros(random_volume.shape, dtype=bool)
        mask[2:9, 3:12, 1:7] = True
        mask[5, 5, 5] = False
    got = synthetic_pair(random_volume, search_radius=2, exclude_centre=exclude_centre, mask=mask)
    want = reference_pair(random_volume, 2, 1, exclude_centre, mask)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("exclude_centre", [False, True])
def test_matches_reference_with_ties_on_integer_image(exclude_centre):
    # Few grey levels -> many exactly tied distances: checks the tie order.
    x = np.random.default_rng(1).integers(0, 3, size=(9, 10, 8)).astype(np.float32)
    got = synthetic_pair(x, search_radius=SEARCH_RADIUS, exclude_centre=exclude_centre)
    np.testing.assert_array_equal(got, reference_pair(x, SEARCH_RADIUS, 1, exclude_centre))


def test_matches_reference_other_radii(random_volume):
    sub = random_volume[:8, :9, :7]
    got = synthetic_pair(sub, search_radius=1, patch_radius=2)
    np.testing.assert_array_equal(got, reference_pair(sub, 1, 2))


def test_deterministic_and_constant_preserved(random_volume):
    a = synthetic_pair(random_volume)
    np.testing.assert_array_equal(a, synthetic_pair(random_volume))
    constant = np.full((10, 11, 9), 7.5, dtype=np.float32)
    np.testing.assert_array_equal(synthetic_pair(constant), constant)


def test_noise_gives_new_realization():
    sigma = 5.0
    x = np.random.default_rng(2).normal(50.0, sigma, size=(16, 16, 16)).astype(np.float32)
    y = synthetic_pair(x)
    assert np.mean(y != x) > 0.99
    spread = np.std(x - y) / np.sqrt(2)
    assert np.isfinite(spread) and 0.0 < spread < 2 * sigma


def test_mask_outside_copied():
    x = np.random.default_rng(3).normal(size=(8, 8, 8)).astype(np.float32)
    mask = np.zeros(x.shape, dtype=bool)
    np.testing.assert_array_equal(synthetic_pair(x, mask=mask), x)
    mask[2:5, 2:5, 2:5] = True
    y = synthetic_pair(x, mask=mask)
    np.testing.assert_array_equal(y[~mask], x[~mask])


@pytest.mark.parametrize(
    "bad, kwargs, message",
    [
        (np.zeros((4, 4)), {}, "3D"),
        (np.full((4, 4, 4), np.nan), {}, "finite"),
        (np.zeros((4, 4, 4)), {"search_radius": 0}, "search_radius"),
        (np.zeros((4, 4, 4)), {"patch_radius": -1}, "patch_radius"),
        (np.zeros((4, 4, 4)), {"mask": np.ones((4, 4, 3), bool)}, "mask shape"),
    ],
)
def test_bad_input(bad, kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_pair(bad, **kwargs)


@pytest.mark.parametrize("exclude_centre", [False, True])
def test_pair_values_at_equal_the_whole_pair(random_volume, exclude_centre):
    points = np.argwhere(np.ones(random_volume.shape, dtype=bool))[::3]
    whole = synthetic_pair(random_volume, exclude_centre=exclude_centre)
    got = pair_values_at(random_volume, points, exclude_centre=exclude_centre)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, whole[tuple(points.T)])


def test_pair_values_at_keep_the_tie_order_on_integer_image():
    x = np.random.default_rng(4).integers(0, 3, size=(9, 10, 8)).astype(np.float32)
    points = np.argwhere(np.ones(x.shape, dtype=bool))
    for radius, patch in ((SEARCH_RADIUS, 1), (1, 2)):
        want = reference_pair(x, radius, patch, True)
        got = pair_values_at(x, points, search_radius=radius, patch_radius=patch,
                             exclude_centre=True)
        np.testing.assert_array_equal(got, want[tuple(points.T)])


@pytest.mark.parametrize(
    "points, kwargs, message",
    [
        (np.array([[0, 0, 8]]), {}, "inside the volume"),
        (np.array([[-1, 0, 0]]), {}, "inside the volume"),
        (np.array([[0, 0, 0]]), {"search_radius": 0}, "search_radius"),
    ],
)
def test_pair_values_at_bad_input(points, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pair_values_at(np.zeros((8, 8, 8)), points, **kwargs)


def test_pair_values_search_each_voxel_once(random_volume, monkeypatch):
    import bids_auton2n.denoise.pairs as pairs

    whole = synthetic_pair(random_volume, exclude_centre=True)
    searched = []
    real_search = pairs.pair_values_at

    def counting(x, points, **kwargs):
        searched.append(len(points))
        return real_search(x, points, **kwargs)

    monkeypatch.setattr(pairs, "pair_values_at", counting)
    values = PairValues(random_volume, exclude_centre=True)
    first = np.arange(0, random_volume.size, 5)
    np.testing.assert_array_equal(values(first), whole.ravel()[first])
    # Overlapping and repeated indices: only the voxels not read before are searched.
    again = np.concatenate([first[:10], [3, 3, 4]])
    np.testing.assert_array_equal(values(again), whole.ravel()[again])
    assert searched == [first.size, 2] and values.searched == first.size + 2
    assert values.shape == random_volume.shape
