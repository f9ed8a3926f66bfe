"""Memory budget (``--mem-gb``): slabs with halos give the whole-volume result bit for bit,
the budget reaches every stage (both in ``denoise_array`` and in the app's nodes), and
peak memory follows the budget (slow test)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from bids_auton2n.denoise import memory
from bids_auton2n.denoise.guard import limit_residual
from bids_auton2n.denoise.pairs import synthetic_pair
from bids_auton2n.denoise.rinlm import ri_nlm
from bids_auton2n.denoise.wiener import collaborative_wiener


@pytest.fixture(autouse=True)
def one_numba_thread():
    """Slabs multiply the kernels' parallel launches; on a loaded machine each launch waits
    for its threads, so these tests run the kernels on one thread."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(7)
    x = (rng.random((21, 15, 17)) * 100).astype(np.float32) + 20
    guide = x + rng.normal(0, 4, x.shape).astype(np.float32)
    mask = rng.random(x.shape) > 0.35
    return x, guide, mask


@pytest.mark.parametrize("exclude_centre, integer, search_radius", [
    (False, False, 2), (True, True, 2), (True, False, 3)])  # integer values: ties decide
def test_pair_slabs_are_identical(volume, exclude_centre, integer, search_radius):
    x, _, mask = volume
    x = np.round(x[:, :11, :12] / 10) if integer else x[:, :11, :12]
    for use_mask in (None, mask[:, :11, :12]):
        whole = synthetic_pair(x, exclude_centre=exclude_centre, mask=use_mask,
                               search_radius=search_radius)
        for planes in (2, 7, 20):
            np.testing.assert_array_equal(
                synthetic_pair(x, exclude_centre=exclude_centre, mask=use_mask,
                               search_radius=search_radius, slab_planes=planes), whole)


@pytest.mark.parametrize("rician", [True, False])
@pytest.mark.parametrize("search_radius", [1, 5])
def test_rinlm_slabs_are_identical(volume, rician, search_radius):
    x, guide, mask = volume
    for use_mask in (None, mask):
        whole = ri_nlm(x, guide, 6.0, search_radius=search_radius, rician=rician, mask=use_mask)
        for planes in (1, 3, 8, 20, 21):
            np.testing.assert_array_equal(
                ri_nlm(x, guide, 6.0, search_radius=search_radius, rician=rician, mask=use_mask,
                       slab_planes=planes), whole)


def test_rinlm_slabs_with_a_sigma_map_are_identical(volume):
    # the map's float64 copies are made per slab: the same numbers as over the whole volume
    x, guide, mask = volume
    sigma = np.linspace(3.0, 9.0, x.shape[0], dtype=np.float32)[:, None, None] * np.ones_like(x)
    whole = ri_nlm(x, guide, sigma, search_radius=2, mask=mask)
    for planes in (1, 5, 21):
        np.testing.assert_array_equal(
            ri_nlm(x, guide, sigma, search_radius=2, mask=mask, slab_planes=planes), whole)


@pytest.mark.parametrize("window", [1, 2, 3, 5])
def test_guard_slabs_are_identical(volume, window):
    x, guide, _ = volume
    denoised = guide.copy()
    denoised[4:9] -= 35  # removed structure: the guard acts there
    whole = limit_residual(x, denoised, 4.0, window=window)
    assert not np.array_equal(whole, denoised)
    for planes in (1, 2, 4, 20, 21):
        np.testing.assert_array_equal(
            limit_residual(x, denoised, 4.0, window=window, slab_planes=planes), whole)


@pytest.mark.parametrize("search_radius, step", [(1, 1), (2, 2), (2, 3)])
def test_wiener_slabs_are_identical(volume, search_radius, step):
    """Slabs of 1 plane (fewer than a block) to the whole volume, with a sigma map that is 0
    in places and a mask: each voxel sums the same blocks in the same order."""
    x, guide, mask = volume
    sigma = np.where(np.arange(x.shape[0])[:, None, None] < 4, 0.0, 5.0) * np.ones(x.shape)
    for use_mask in (None, mask):
        whole = collaborative_wiener(x, guide, sigma, search_radius=search_radius, step=step,
                                     mask=use_mask)
        assert not np.array_equal(whole, guide)
        for planes in (1, 3, 8, 20, 21):
            np.testing.assert_array_equal(
                collaborative_wiener(x, guide, sigma, search_radius=search_radius, step=step,
                                     mask=use_mask, slab_planes=planes), whole)


def test_guard_matches_scipy_uniform_filter_to_float32_rounding(volume):
    """The explicit-sum local RMS (tiling-invariant) against scipy's running-sum filter."""
    from scipy import ndimage as ndi

    x, guide, _ = volume
    residual = x - guide
    rms = np.sqrt(ndi.uniform_filter(residual * residual, size=3, mode="nearest"))
    allowed = np.float32(1.5 * 2.0)
    scale = np.where(rms > allowed, allowed / np.maximum(rms, 1e-30), 1).astype(np.float32)
    np.testing.assert_allclose(limit_residual(x, guide, 2.0), x - scale * residual,
                               rtol=0, atol=1e-4)


def test_no_budget_no_slabs():
    assert memory.memory_limit_bytes() is None
    assert memory.slab_planes((300, 400, 400), bytes_per_voxel=40, halo=6) is None
    assert memory.cnn_tile((200, 300, 300), 10**8) is None


def test_budget_sizes_slabs_and_tiles():
    shape, plane = (400, 200, 200), 200 * 200
    voxels = 400 * plane
    with memory.memory_limit(2.0):
        working = 2.0e9 - memory.PROCESS_BYTES - memory.RESIDENT_BYTES_PER_VOXEL * voxels
        assert memory.working_bytes(voxels) == working
        assert memory.slab_planes(shape, bytes_per_voxel=40, halo=6) == int(working // (40 * plane)) - 12
        assert memory.slab_planes(shape, bytes_per_voxel=1, halo=6) is None  # fits whole
        edge = memory.cnn_tile((120, 90, 100), voxels)[0]
        assert edge ** 3 * memory.CNN_TILE_BYTES_PER_VOXEL <= (
            working - memory.CNN_CROP_BYTES_PER_VOXEL * 120 * 90 * 100)
    with memory.memory_limit(0.6):  # below what the resident arrays take: the minimum
        assert memory.slab_planes(shape, bytes_per_voxel=40, halo=6) == memory.MIN_SLAB_PLANES
        assert memory.cnn_tile((120, 90, 100), voxels) == (memory.MIN_TILE_EDGE,) * 3
    assert memory.memory_limit_bytes() is None


def test_budget_below_the_whole_volume_steps_is_a_warning(caplog):
    shape = (100, 200, 200)
    needed = memory.minimum_bytes(100 * 200 * 200)
    assert needed == memory.PROCESS_BYTES + memory.WHOLE_VOLUME_BYTES_PER_VOXEL * 4_000_000
    with caplog.at_level(logging.WARNING, logger="bids_auton2n.denoise"):
        for gb in (None, needed / 1e9, needed / 1e9 - 0.01):
            with memory.memory_limit(gb):
                memory.warn_if_below_minimum(shape)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "below the" in warnings[0] and "100x200x200" in warnings[0]


def test_slabs_cover_every_plane_once_with_clipped_halos():
    spans = list(memory.slabs(23, 5, 3))
    assert [(a, b) for a, b, _, _ in spans] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert [(c, d) for _, _, c, d in spans] == [(0, 8), (2, 13), (7, 18), (12, 23), (17, 23)]
    assert list(memory.slabs(23, None, 3)) == [(0, 23, 0, 23)]


def test_budget_reaches_every_stage_of_denoise_array(test_experts_dir, monkeypatch, one_torch_thread):
    """Under a small budget the kernels see slabs and the CNN smaller tiles; the noise
    estimate is the same bit for bit, and the output the same to the CNN's tile blending
    (identity experts)."""
    from bids_auton2n.denoise import guard, pairs, rinlm, wiener
    from bids_auton2n.denoise.experts import ExpertRegistry
    from bids_auton2n.denoise.pipeline import denoise_array

    grid = np.indices((40, 44, 36), dtype=np.float32)
    centre = np.array([19.5, 21.5, 17.5])[:, None, None, None]
    radius = np.sqrt((((grid - centre) / np.array([17, 19, 15])[:, None, None, None]) ** 2).sum(0))
    clean = np.select([radius < 0.6, radius < 0.85, radius < 1.0], [100.0, 65.0, 30.0], 0.0)
    rng = np.random.default_rng(0)
    x = np.hypot(clean + rng.normal(0, 3, clean.shape), rng.normal(0, 3, clean.shape))
    x = x.astype(np.float32)
    registry = ExpertRegistry(test_experts_dir)
    whole = denoise_array(x, registry=registry, tta=False)

    seen = {"pairs": [], "rinlm": [], "guard": [], "wiener": [], "tiles": []}
    monkeypatch.setattr(memory, "cnn_tile", _recording_tile(memory.cnn_tile, seen["tiles"]))
    monkeypatch.setattr(pairs, "_pair_volume", _recording(pairs._pair_volume, seen["pairs"]))
    monkeypatch.setattr(rinlm, "_weighted_average",
                        _recording(rinlm._weighted_average, seen["rinlm"]))
    monkeypatch.setattr(guard, "_local_mean_square",
                        _recording(guard._local_mean_square, seen["guard"]))
    monkeypatch.setattr(wiener, "_filter_slabs", _recording(wiener._filter_slabs, seen["wiener"]))
    # resident arrays of this 0.17 M-voxel image and a few planes of each stage's slabs
    gb = (memory.PROCESS_BYTES + memory.RESIDENT_BYTES_PER_VOXEL * x.size
          + 40 * 16 * x.shape[1] * x.shape[2]) / 1e9
    with memory.memory_limit(gb):
        limited = denoise_array(x, registry=registry, tta=False)
    for stage in ("rinlm", "guard", "wiener"):
        assert seen[stage] and all(planes < x.shape[0] for planes in seen[stage]), stage
    # the noise estimate searches its pair only at the voxels it reads: no whole pair to slab
    assert all(planes < x.shape[0] for planes in seen["pairs"])
    assert seen["tiles"] == [(40, 44, 36)]  # the budget's smallest tile, clipped to the crop
    assert limited.noise == whole.noise
    # the tiles' blending moves the CNN output by float32 rounding, and RI-NLM's weight
    # cut-offs can amplify that in a few voxels: within 1e-4 of the WM intensity (100)
    np.testing.assert_allclose(limited.denoised, whole.denoised, rtol=0, atol=1e-2)


def _recording_tile(function, tiles):
    def wrapper(*args, **kwargs):
        tiles.append(function(*args, **kwargs))
        return tiles[-1]
    return wrapper


def _recording(function, shapes):
    def wrapper(array, *args, **kwargs):
        shapes.append(array.shape[0])
        return function(array, *args, **kwargs)
    return wrapper


def test_app_gives_each_image_its_share_of_mem_gb():
    from bids_auton2n.config import NipypeSettings
    from bids_auton2n.workflows.base import init_anat_denoise_wf

    assert NipypeSettings(nprocs=4, omp_nthreads=2, mem_gb=6).image_mem_gb() == 3.0
    assert NipypeSettings(nprocs=2, omp_nthreads=2, mem_gb=6).image_mem_gb() == 6.0
    assert NipypeSettings(nprocs=4, omp_nthreads=2).image_mem_gb() is None
    workflow = init_anat_denoise_wf(contrast="T1w", mem_gb=3.0)
    heavy = [workflow.get_node(f"denoise_wf.{n}")
             for n in ("estimate_noise", "cnn_denoise", "rinlm_fusion")]
    assert all(n.inputs.mem_gb == 3.0 and n.mem_gb == 3.0 for n in heavy)


def test_interface_sets_the_budget_of_its_worker(tmp_path, monkeypatch):
    import nibabel as nb

    from bids_auton2n.interfaces.denoise import EstimateNoise

    budgets = []
    monkeypatch.setattr(memory, "set_memory_limit", budgets.append)
    image = tmp_path / "sub-01_T1w.nii.gz"
    ball = np.sqrt(((np.indices((12, 12, 12)) - 5.5) ** 2).sum(0)) < 5
    nb.Nifti1Image(ball.astype(np.float32) * 50 + 1, np.eye(4)).to_filename(image)
    EstimateNoise(in_file=str(image), contrast="T1w", noise_level=3.0, mem_gb=1.5).run(
        cwd=str(tmp_path))
    EstimateNoise(in_file=str(image), contrast="T1w", noise_level=3.0).run(cwd=str(tmp_path))
    assert budgets == [1.5, None]  # a worker's next node without a budget is unlimited


def test_node_warns_of_a_budget_below_the_whole_volume_steps(tmp_path, caplog):
    import nibabel as nb

    from bids_auton2n.interfaces.denoise import EstimateNoise

    image = tmp_path / "sub-01_T1w.nii.gz"
    ball = np.sqrt(((np.indices((12, 12, 12)) - 5.5) ** 2).sum(0)) < 5
    nb.Nifti1Image(ball.astype(np.float32) * 50 + 1, np.eye(4)).to_filename(image)
    # memory_limit restores the process-wide budget that the node sets
    with memory.memory_limit(None), caplog.at_level(logging.WARNING, logger="bids_auton2n.denoise"):
        EstimateNoise(in_file=str(image), contrast="T1w", noise_level=3.0, mem_gb=0.1).run(
            cwd=str(tmp_path))
    assert any("below the" in r.getMessage() and "12x12x12" in r.getMessage()
               for r in caplog.records)


_PEAK_SCRIPT = """
import json, resource, sys
import numpy as np
from bids_auton2n.denoise import memory
from bids_auton2n.denoise.experts import ExpertRegistry
from bids_auton2n.denoise.pipeline import denoise_array
rng = np.random.default_rng(0)
shape = (96, 256, 256)
grid = np.indices(shape, dtype=np.float32)
centre = (np.array(shape, np.float32)[:, None, None, None] - 1) / 2
radius = np.sqrt((((grid - centre) / (0.45 * np.array(shape))[:, None, None, None]) ** 2).sum(0))
del grid
x = (100 * (radius < 1) + np.abs(rng.normal(0, 3, shape))).astype(np.float32)
del radius
memory.set_memory_limit(None if sys.argv[1] == "none" else float(sys.argv[1]))
denoise_array(x, registry=ExpertRegistry(sys.argv[2]), tta=False)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
"""


@pytest.mark.slow
def test_peak_memory_follows_the_budget(test_experts_dir):
    """A 6.3 M-voxel volume: the peak RSS drops with the budget and stays within it (both
    budgets above the 1.09 GB its whole-volume steps need, memory.minimum_bytes)."""
    assert memory.minimum_bytes(96 * 256 * 256) < 1.2e9
    peaks = {}
    for setting in ("none", "1.6", "1.2"):
        done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, setting,
                               str(test_experts_dir)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[setting] = json.loads(done.stdout.strip().splitlines()[-1]) / 1e9
    assert peaks["1.2"] < peaks["1.6"] < peaks["none"], peaks
    assert peaks["1.6"] <= 1.6 and peaks["1.2"] <= 1.2, peaks


_FAULTS_SCRIPT = """
import json, resource, sys
import numpy as np
from bids_auton2n.denoise import memory
memory.set_memory_limit(None if sys.argv[1] == "none" else float(sys.argv[1]))
np.ones(25_000_000, np.float64).sum()  # the first whole-volume array is new memory either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    np.ones(25_000_000, np.float64).sum()  # 200 MB, freed after each line
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_reused_without_a_budget_and_returned_with_one():
    """Page faults (counts, not time) of four more 200 MB arrays after the first: without a
    budget the freed memory is reused, with one every array is fresh memory again."""
    faults = {}
    for setting in ("none", "2"):
        done = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, setting],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        faults[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    assert faults["2"] > 0 and faults["none"] * 10 < faults["2"], faults


def test_memory_limit_restores_what_the_allocator_does_with_freed_memory(monkeypatch):
    told = []
    monkeypatch.setattr(memory, "keep_freed_memory", told.append)
    with memory.memory_limit(1.5):
        assert told == [False]
    assert told == [False, memory.memory_limit_bytes() is None]
