"""Tests of the collaborative Wiener stage against a slow NumPy reference."""

import numpy as np
import pytest
from scipy.fft import dctn, idctn

from bids_auton2n.denoise.wiener import collaborative_wiener, dct_matrix, reference_positions


def haar_matrix(size):
    """Orthonormal Haar basis of ``size`` (a power of two) as rows: scaling, then details."""
    matrix = np.ones((1, 1))
    while matrix.shape[0] < size:
        matrix = np.vstack([np.kron(matrix, [1, 1]), np.kron(np.eye(matrix.shape[0]), [1, -1])])
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def reference_wiener(x, pilot, sigma, block, group, radius, step, keep_mean, mask=None):
    """Direct transcription of the algorithm in ``wiener.py``'s docstring."""
    x = x.astype(np.float64)
    pilot = pilot.astype(np.float64)
    sigma_map = np.broadcast_to(np.asarray(sigma, dtype=np.float64), x.shape)
    num = np.zeros(x.shape)
    den = np.zeros(x.shape)
    corners = [reference_positions(n, block, step) for n in x.shape]
    half = block // 2
    for zr in corners[0]:
        for yr in corners[1]:
            for xr in corners[2]:
                window = np.s_[zr:zr + block, yr:yr + block, xr:xr + block]
                if mask is not None and not mask[window].any():
                    continue
                sigma2 = sigma_map[zr + half, yr + half, xr + half] ** 2
                if sigma2 <= 0:
                    continue
                candidates = []
                for cz in range(max(zr - radius, 0), min(zr + radius, x.shape[0] - block) + 1):
                    for cy in range(max(yr - radius, 0), min(yr + radius, x.shape[1] - block) + 1):
                        for cx in range(max(xr - radius, 0), min(xr + radius, x.shape[2] - block) + 1):
                            there = pilot[cz:cz + block, cy:cy + block, cx:cx + block]
                            candidates.append((np.sum((pilot[window] - there) ** 2), (cz, cy, cx)))
                order = np.argsort([c[0] for c in candidates], kind="stable")[:group]
                corners_g = [candidates[i][1] for i in order]
                blocks = [np.s_[c[0]:c[0] + block, c[1]:c[1] + block, c[2]:c[2] + block]
                          for c in corners_g]
                noisy = np.stack([dctn(x[b], norm="ortho") for b in blocks])
                guide = np.stack([dctn(pilot[b], norm="ortho") for b in blocks])
                haar = haar_matrix(group)
                noisy4 = np.tensordot(haar, noisy, axes=1)
                guide4 = np.tensordot(haar, guide, axes=1)
                gain = guide4**2 / (guide4**2 + sigma2)
                estimate = np.tensordot(haar.T, gain * noisy4, axes=1)
                if keep_mean:
                    estimate[:, 0, 0, 0] = guide[:, 0, 0, 0]
                weight = 1.0 / (sigma2 * max(np.sum(gain**2), 1.0))
                for b, coefficients in zip(blocks, estimate):
                    num[b] += weight * idctn(coefficients, norm="ortho")
                    den[b] += weight
    out = pilot.copy()
    covered = den > 0
    out[covered] = num[covered] / den[covered]
    return out


@pytest.fixture(scope="module")
def noisy_and_pilot():
    rng = np.random.default_rng(0)
    grid = np.indices((13, 14, 12)).sum(axis=0)
    clean = (50 + 20 * np.sin(grid / 3.0)).astype(np.float32)
    noisy = clean + rng.normal(0, 4.0, clean.shape).astype(np.float32)
    pilot = clean + rng.normal(0, 1.0, clean.shape).astype(np.float32)
    return clean, noisy, pilot


@pytest.mark.parametrize("block, group, radius, step, keep_mean", [
    (4, 8, 2, 2, True), (4, 8, 2, 3, False), (3, 4, 1, 1, True), (4, 1, 0, 2, False),
])
def test_matches_reference(noisy_and_pilot, block, group, radius, step, keep_mean):
    _, noisy, pilot = noisy_and_pilot
    got = collaborative_wiener(noisy, pilot, 4.0, block=block, group_size=group,
                               search_radius=radius, step=step, keep_pilot_mean=keep_mean)
    want = reference_wiener(noisy, pilot, 4.0, block, group, radius, step, keep_mean)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_matches_reference_with_sigma_map_and_mask(noisy_and_pilot):
    _, noisy, pilot = noisy_and_pilot
    sigma = np.linspace(0.0, 6.0, noisy.size).reshape(noisy.shape).astype(np.float32)
    mask = np.zeros(noisy.shape, dtype=bool)
    mask[3:9, 2:12, 4:10] = True
    got = collaborative_wiener(noisy, pilot, sigma, block=4, group_size=4, search_radius=2,
                               step=2, mask=mask)
    want = reference_wiener(noisy, pilot, sigma, 4, 4, 2, 2, True, mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_dct_matrix_is_orthonormal():
    for size in (1, 4, 8):
        matrix = dct_matrix(size)
        np.testing.assert_allclose(matrix @ matrix.T, np.eye(size), atol=1e-12)


def test_no_noise_returns_the_pilot_and_clean_pilot_is_kept(noisy_and_pilot):
    clean, noisy, pilot = noisy_and_pilot
    np.testing.assert_array_equal(collaborative_wiener(noisy, pilot, 0.0), pilot)
    # With the clean image as pilot the gains are (near) exact: the output beats the pilot.
    out = collaborative_wiener(noisy, pilot, 4.0)
    assert np.mean((out - clean) ** 2) < np.mean((noisy - clean) ** 2) / 4


def test_deterministic_across_thread_counts(noisy_and_pilot):
    import numba

    _, noisy, pilot = noisy_and_pilot
    big_noisy = np.tile(noisy, (3, 1, 1))
    big_pilot = np.tile(pilot, (3, 1, 1))
    first = collaborative_wiener(big_noisy, big_pilot, 4.0)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = collaborative_wiener(big_noisy, big_pilot, 4.0)
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_array_equal(first, single)


@pytest.mark.parametrize("kwargs, message", [
    ({"pilot": np.zeros((8, 8, 7))}, "pilot shape"),
    ({"sigma": -1.0}, "sigma"),
    ({"block": 0}, "block"),
    ({"group_size": 32, "search_radius": 1}, "fewer than"),
    ({"group_size": 6}, "power of two"),
    ({"x": np.zeros((8, 8, 3)), "pilot": np.zeros((8, 8, 3))}, "smaller than"),
])
def test_bad_input(kwargs, message):
    arguments = {"x": np.zeros((8, 8, 8)), "pilot": np.zeros((8, 8, 8)), "sigma": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        collaborative_wiener(arguments.pop("x"), arguments.pop("pilot"), arguments.pop("sigma"),
                             **arguments)


def test_final_image_runs_one_wiener_pass_per_step_each_the_next_pilot(noisy_and_pilot):
    """The pipeline's Wiener stage: ``PASS_STEPS`` passes, each one's output the next pilot."""
    from bids_auton2n.denoise.pipeline import final_image
    from bids_auton2n.denoise.wiener import PASS_STEPS

    _, noisy, pilot = noisy_and_pilot
    want = pilot
    for step in PASS_STEPS:
        want = collaborative_wiener(noisy, want, 4.0, step=step)
    got = final_image(noisy, pilot, 4.0, fusion=False, guard=False, rician=False)
    np.testing.assert_array_equal(got, want)


def test_second_pass_gives_back_texture_an_oversmoothed_pilot_lost():
    """The final-stage study's two-pass variant: with a pilot that smoothed texture away, a
    pass after the first (whose output keeps part of that texture) comes closer to the truth."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    grid = np.meshgrid(*(np.arange(40.0),) * 3, indexing="ij")
    texture = sum(np.cos(2 * np.pi * (f @ np.stack([g.ravel() for g in grid])) / 40 + phase)
                  for f, phase in zip(rng.integers(3, 9, size=(12, 3)), rng.uniform(0, 6.3, 12)))
    clean = (100 + 4 * texture.reshape(40, 40, 40)).astype(np.float32)
    sigma = 3.0
    noisy = (clean + rng.normal(0, sigma, clean.shape)).astype(np.float32)
    pilot = gaussian_filter(noisy, 2.0)  # the texture is gone from it
    first = collaborative_wiener(noisy, pilot, sigma, step=3)
    second = collaborative_wiener(noisy, first, sigma)
    rmse = [float(np.sqrt(np.mean((image - clean) ** 2))) for image in (pilot, first, second)]
    assert rmse[2] < 0.9 * rmse[1] and rmse[1] < rmse[0], rmse
