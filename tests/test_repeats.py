"""Repeated acquisitions: grouping, rigid alignment and its fallback, the two fine-tuning
losses against slow references, and the library path ``denoise_repeats``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bids_auton2n.cli.demo import _moved, template_head
from bids_auton2n.denoise.align import (
    MAX_ROTATION_DEG, Alignment, align_run, alignment_check, read_transform,
    resample_to_reference, rotation_angle_deg, working_grid, write_transform,
)
from bids_auton2n.denoise.losses import apply_loss, consensus_loss, get_loss
from bids_auton2n.denoise.noise import head_mask
from bids_auton2n.train.repeats import (
    finetune_noise2average, noise2average_targets,
)
from bids_auton2n.utils.repeats import group_repeats

SHAPE = (41, 50, 41)  # the demo's ICBM152 head at 4 mm (on a 1.2 mm grid here: a small head)
AFFINE = np.diag([1.2, 1.2, 1.2, 1.0])
AFFINE[:3, 3] = -0.6 * np.asarray(SHAPE)


def _phantom(contrast: str) -> np.ndarray:
    """Clean head, reference tissue (WM for T1w, CSF for T2w) at 100."""
    clean, reference = template_head(contrast, 4.0)
    assert clean.shape == SHAPE
    return clean * (100.0 / reference)


# ----------------------------------------------------------------------------- grouping

def _paths(*names):
    return [f"/data/bids/sub-01/{'ses-' + n.split('ses-')[1].split('_')[0] + '/' if 'ses-' in n else ''}"
            f"anat/sub-01_{n}.nii.gz" for n in names]


def test_runs_of_one_image_form_a_group_in_run_order():
    files = _paths("ses-1_run-10_T1w", "ses-1_run-2_T1w", "ses-1_T2w", "ses-1_acq-fast_run-1_T1w")
    groups = group_repeats(files)
    assert [g.files for g in groups] == [
        (files[1], files[0]), (files[2],), (files[3],)]  # run 2 before run 10
    assert groups[0].varying == ("run",) and groups[0].reference == files[1]
    assert [g.is_repeat for g in groups] == [True, False, False]


def test_sessions_are_grouped_only_when_asked():
    files = _paths("ses-1_T1w", "ses-2_T1w")
    assert [g.files for g in group_repeats(files)] == [(files[0],), (files[1],)]
    grouped = group_repeats(files, across_sessions=True)
    assert [g.files for g in grouped] == [tuple(files)]
    assert grouped[0].varying == ("session",)


def test_echoes_are_repeats():
    files = _paths("echo-2_T1w", "echo-1_T1w")
    (group,) = group_repeats(files)
    assert group.files == (files[1], files[0]) and group.varying == ("echo",)


def test_image_without_the_varying_entity_is_not_grouped():
    # The combined image would be named like the per-image derivative of sub-01_T1w.
    files = _paths("T1w", "run-2_T1w")
    assert [g.files for g in group_repeats(files)] == [(files[0],), (files[1],)]


# ----------------------------------------------------------------------------- alignment

def _pair(motion_times=1, seed=0, noise=2.0):
    rng = np.random.default_rng(seed)
    clean = _phantom("T1w")
    runs = [clean, _moved(clean, AFFINE, motion_times)]
    return [np.abs(r + rng.normal(0, noise, SHAPE)).astype(np.float32) for r in runs], clean


def _motion_matrix(times=1):
    """The demo's rigid motion as a world map (reference point -> same anatomy moved)."""
    from bids_auton2n.cli.demo import REPEAT_MOTION

    degrees, shift = REPEAT_MOTION
    angle = np.radians(degrees * times)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)],
                         [0, np.sin(angle), np.cos(angle)]])
    centre = AFFINE[:3, :3] @ ((np.asarray(SHAPE) - 1) / 2) + AFFINE[:3, 3]
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre - rotation @ centre + times * np.asarray(shift)
    return matrix


def test_rigid_alignment_recovers_the_motion_and_resamples(tmp_path):
    (run1, run2), clean = _pair()
    head = head_mask(run1)
    alignment = align_run(run1, AFFINE, run2, AFFINE, head=head)
    truth = _motion_matrix()
    assert alignment.plausible, alignment.reason
    points = np.argwhere(head) @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    error = points @ (alignment.matrix - truth)[:3, :3].T + (alignment.matrix - truth)[:3, 3]
    assert np.sqrt((error ** 2).sum(axis=1)).max() < 0.5  # mm, voxels are 1.2 mm
    assert alignment.rotation_deg == pytest.approx(3.0, abs=0.3)
    assert alignment.correlation > max(0.95, alignment.correlation_header)
    # resampling with the found transform brings the moved head back onto the first
    moved = _moved(clean, AFFINE, 1)
    aligned, covered = resample_to_reference(moved, AFFINE, alignment.matrix, SHAPE, AFFINE)
    unaligned, _ = resample_to_reference(moved, AFFINE, np.eye(4), SHAPE, AFFINE)
    exact, _ = resample_to_reference(moved, AFFINE, truth, SHAPE, AFFINE)
    inside = head & covered

    def error(image):  # what two interpolations of sharp tissue edges leave is the floor
        return np.abs(image - clean)[inside].mean()

    assert error(aligned) < 1.1 * error(exact) < 0.5 * error(unaligned)
    # ITK text transform, read back as the same world map
    path = write_transform(alignment.matrix, tmp_path / "xfm.txt")
    assert path.read_text().startswith("#Insight Transform File")
    np.testing.assert_allclose(read_transform(path), alignment.matrix, atol=1e-5)
    # the record round-trips exactly
    record = json.loads(json.dumps(alignment.to_dict()))
    np.testing.assert_array_equal(Alignment.from_dict(record).matrix, alignment.matrix)


def test_unrelated_images_are_an_implausible_alignment():
    (run1, _), _ = _pair()
    rng = np.random.default_rng(5)
    other = _phantom("T2w")[::-1, ::-1].copy()  # another image, upside down
    other = np.abs(other + rng.normal(0, 3, SHAPE)).astype(np.float32)
    alignment = align_run(run1, AFFINE, other, AFFINE, head=head_mask(run1))
    assert not alignment.plausible
    assert "correlation" in alignment.reason or "rotation" in alignment.reason


def test_large_motion_is_implausible_even_when_aligned():
    (run1, run2), _ = _pair()
    turn = np.eye(4)
    angle = np.radians(MAX_ROTATION_DEG + 5)
    turn[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]]
    assert rotation_angle_deg(turn) == pytest.approx(MAX_ROTATION_DEG + 5)
    check = alignment_check(run1, AFFINE, run1, AFFINE, turn, head=head_mask(run1))
    assert not check.plausible and "rotation" in check.reason
    # a field of view that misses most of the head
    shifted = np.eye(4)
    shifted[0, 3] = 40.0
    check = alignment_check(run1, AFFINE, run2, AFFINE, shifted, head=head_mask(run1))
    assert not check.plausible and "field of view" in check.reason


def test_working_grid_block_averages_fine_axes():
    affine = np.diag([1.0, 0.5, 0.5, 1.0])
    data = np.arange(4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6)
    coarse, coarse_affine = working_grid(data, affine)
    assert coarse.shape == (4, 3, 3)
    assert coarse[1, 2, 0] == pytest.approx(data[1, 4:6, 0:2].mean())
    np.testing.assert_allclose(np.diag(coarse_affine)[:3], [1.0, 1.0, 1.0])
    # voxel (0, 0, 0) of the coarse grid is the centre of the first 1x2x2 block
    np.testing.assert_allclose(coarse_affine[:3, 3], affine[:3, :3] @ [0, 0.5, 0.5])


# ----------------------------------------------------------------------------- losses

def test_consensus_loss_matches_a_slow_reference():
    rng = np.random.default_rng(0)
    fa, fb, xa, xb = (rng.normal(size=(2, 1, 4, 5, 3)) for _ in range(4))
    n = fa.size
    slow = 0.0
    for i in np.ndindex(fa.shape):
        slow += 0.5 * (fa[i] - xb[i]) ** 2 + 0.5 * (fb[i] - xa[i]) ** 2 - 0.25 * (fa[i] - fb[i]) ** 2
    fast = consensus_loss(*(torch.from_numpy(a) for a in (fa, fb, xa, xb)))
    assert float(fast) == pytest.approx(slow / n, rel=1e-10)


def test_consensus_loss_estimates_the_error_of_the_mean():
    """With independent noises, E[consensus loss] = MSE(mean output, clean) + sigma^2 (Wu et
    al. eq. 7-8): what early stopping and the Noise2Average stopping rule rely on."""
    rng = np.random.default_rng(1)
    clean = torch.from_numpy(rng.normal(size=(8, 1, 24, 24, 24)).cumsum(axis=2) / 5)
    sigma = 0.3
    xa = clean + sigma * torch.from_numpy(rng.normal(size=clean.shape))
    xb = clean + sigma * torch.from_numpy(rng.normal(size=clean.shape))
    smooth = torch.nn.AvgPool3d(3, stride=1, padding=1, count_include_pad=False).double()
    loss = apply_loss(get_loss("consensus"), smooth, xa, xb)
    truth = ((0.5 * (smooth(xa) + smooth(xb)) - clean) ** 2).mean() + sigma ** 2
    assert float(loss) == pytest.approx(float(truth), rel=0.02)


def test_noise2average_targets_match_a_slow_reference():
    rng = np.random.default_rng(2)
    runs = [rng.normal(size=(3, 4, 5)).astype(np.float32) for _ in range(3)]
    coverage = [np.ones((3, 4, 5), bool), rng.random((3, 4, 5)) > 0.3, rng.random((3, 4, 5)) > 0.6]
    fast = noise2average_targets(runs, coverage)
    for i in np.ndindex(3, 4, 5):
        used = [r[i] for r, c in zip(runs, coverage) if c[i]]
        assert fast[i] == pytest.approx(np.mean(used), rel=1e-6)
    np.testing.assert_allclose(noise2average_targets(runs), np.mean(runs, axis=0), rtol=1e-6)


@pytest.mark.parametrize("scores, best, stopped", [
    ((1.0, 0.5, 0.4), 2, "iterations"),      # every iteration helps: all of them run
    ((1.0, 0.5, 0.6), 1, "no_improvement"),  # the second does not: the first's weights
])
def test_noise2average_iterates_on_the_denoised_average(monkeypatch, scores, best, stopped):
    """Iteration 1 trains on the mean of the runs, iteration k on the mean of the network's
    outputs of iteration k-1; iterations stop when the consensus estimate stops falling."""
    import bids_auton2n.train.repeats as repeats
    from bids_auton2n.denoise.network import ResidualDenoiser3D
    from bids_auton2n.train.trainer import TrainResult

    rng = np.random.default_rng(3)
    runs = [rng.normal(size=(24, 24, 24)).astype(np.float32) for _ in range(2)]
    states, targets = [], []

    def train(sampler, config, *, init_state, progress):
        assert config.loss == "l2" and config.level == 0.0
        targets.append([v.pair for v in sampler.volumes])
        torch.manual_seed(len(states))
        states.append(ResidualDenoiser3D().state_dict())
        return TrainResult(level=0.0, state_dict=states[-1], epochs=1, steps=1, best_epoch=1,
                           best_score=0.0, stopped="max_epochs", train_seconds=0.0)

    sequence = iter(scores)
    monkeypatch.setattr(repeats, "train_expert", train)
    monkeypatch.setattr(repeats, "consensus_estimate", lambda *args: next(sequence))
    outputs = iter([np.full(runs[0].shape, value, np.float32) for value in (2.0, 4.0)])
    result = finetune_noise2average(
        runs, np.ones(runs[0].shape, bool), init_state=ResidualDenoiser3D().state_dict(),
        predict=lambda model, run: next(outputs), budget_s=None, iterations=2,
        config=repeats.FINETUNE_CONFIG.__class__(level=0.0, patch_size=12, device="cpu"))
    assert all(np.array_equal(t, np.mean(runs, axis=0)) for t in targets[0])
    assert len(targets) == 2 and all(np.array_equal(t, np.full(runs[0].shape, 3.0))
                                     for t in targets[1])
    assert result.iterations == 2 and result.best_iteration == best
    assert result.stopped == stopped and result.state_dict is states[best - 1]
    assert [h["consensus_estimate"] for h in result.history] == list(scores)


# ----------------------------------------------------------------------------- library path

@pytest.fixture
def few_steps(monkeypatch):
    """Fine-tuning bounded by steps, not time: the same weights on any machine."""
    from dataclasses import replace

    import bids_auton2n.train.repeats as repeats

    monkeypatch.setattr(repeats, "FINETUNE_CONFIG", replace(
        repeats.FINETUNE_CONFIG, patch_size=16, steps_per_epoch=2, max_epochs=1,
        val_patches_per_volume=2, device="cpu"))


def test_denoise_repeats_combines_the_aligned_runs(test_experts_dir, few_steps, one_torch_thread):
    from bids_auton2n.denoise.experts import ExpertRegistry
    from bids_auton2n.denoise.repeats import PAIR_SOURCE_REPEATS, denoise_repeats

    runs, _ = _pair(noise=3.0)
    result = denoise_repeats(runs, [AFFINE, AFFINE], budget_s=None, tta=False, fusion=False, wiener=False,
                             registry=ExpertRegistry(test_experts_dir))
    assert not result.fell_back and result.in_group == [True, True]
    assert [d.shape for d in result.denoised] == [SHAPE, SHAPE]
    assert result.combined.shape == SHAPE and np.isfinite(result.combined).all()
    assert result.alignments[1].plausible and result.alignments[0].rotation_deg == 0
    # identity experts (test fixture), no fusion, no Wiener stage: the combined image is the guarded mean of
    # the aligned runs, so it is closer to that mean than to either run
    aligned, covered = resample_to_reference(runs[1], AFFINE, result.alignments[1].matrix,
                                             SHAPE, AFFINE)
    inside = head_mask(runs[0]) & covered
    mean = 0.5 * (runs[0] + aligned)
    distance = [np.abs(result.combined - x)[inside].mean() for x in (mean, runs[0], aligned)]
    assert distance[0] < min(distance[1:])
    record = result.provenance(1)
    assert record["PairSource"] == PAIR_SOURCE_REPEATS
    assert record["Repeats"]["RunsCombined"] == 2 and record["Repeats"]["Fallback"] == []
    assert record["Repeats"]["FineTuning"]["steps"] == 2
    assert result.combined_provenance()["NoiseEstimate"]["Sigma"] < record["NoiseEstimate"]["Sigma"]
    json.dumps(record)  # JSON-able (no NaN, no arrays)


def test_implausible_alignment_falls_back_to_single_images(test_experts_dir, one_torch_thread):
    from bids_auton2n.denoise.experts import ExpertRegistry
    from bids_auton2n.denoise.pipeline import denoise_array
    from bids_auton2n.denoise.repeats import denoise_repeats

    (run1, _), _ = _pair()
    rng = np.random.default_rng(5)
    other = np.abs(_phantom("T2w")[::-1, ::-1] + rng.normal(0, 3, SHAPE))
    registry = ExpertRegistry(test_experts_dir)
    result = denoise_repeats([run1, other.astype(np.float32)], [AFFINE, AFFINE], budget_s=None,
                             tta=False, fusion=False, registry=registry)
    assert result.fell_back and result.combined is None and result.in_group == [False, False]
    lines = result.fallback_reasons()
    assert len(lines) == 1 and lines[0].startswith("run 2: ")
    # each run got exactly the single-image path
    np.testing.assert_array_equal(result.denoised[0], denoise_array(
        run1, tta=False, fusion=False, registry=registry).denoised)
    for index in (0, 1):
        record = result.provenance(index)
        assert record["PairSource"] == "synthetic-patches"  # the single-image path's
        assert record["Repeats"]["RunsCombined"] == 0 and record["Repeats"]["Fallback"] == lines


def test_patches_within_matches_a_slow_reference():
    from bids_auton2n.train.data import patches_within

    rng = np.random.default_rng(3)
    defined = rng.random((9, 10, 11)) > 0.02
    starts = np.argwhere(np.ones((6, 7, 8), bool))
    fast = patches_within(defined, starts, 4)
    slow = [defined[z:z + 4, y:y + 4, x:x + 4].all() for z, y, x in starts]
    assert fast.tolist() == slow and 0 < fast.sum() < len(starts)


def test_training_patches_stay_where_every_run_is_defined():
    from bids_auton2n.train.data import PatchSampler
    from bids_auton2n.train.repeats import run_pairs

    shape, patch = (40, 44, 36), 12
    defined = np.ones(shape, bool)
    defined[:3] = defined[:, :, -5:] = False  # the moved run's field of view misses two faces
    defined[20:, 30:, :8] = False             # and a corner (rotation)
    head = np.zeros(shape, bool)
    head[2:38, 2:42, 2:34] = True
    rng = np.random.default_rng(0)
    runs = [rng.normal(size=shape).astype(np.float32), np.where(defined, 1.0, 0.0).astype(np.float32)]
    sampler = PatchSampler(run_pairs(runs, head & defined, defined=defined), patch)
    for step in range(20):
        _, targets = sampler.training_batch(step, 4, 0.0, seed=1)
        assert (targets == 1.0).all()  # no target voxel outside the field of view
    assert (sampler.validation_set(0.0, 8, seed=1)["targets"] == 1.0).all()
    # without ``defined``, patches centred in the defined head reach beyond it
    loose = PatchSampler(run_pairs(runs, head & defined), patch)
    assert any((loose.training_batch(step, 4, 0.0, seed=1)[1] == 0.0).any() for step in range(20))


def test_patches_reach_beyond_the_field_of_view_only_when_none_fits(caplog):
    from bids_auton2n.train.data import PatchSampler
    from bids_auton2n.train.repeats import run_pairs

    shape = (24, 26, 22)
    defined = np.ones(shape, bool)
    defined[::5] = False  # no 12-voxel cube avoids these planes
    runs = [np.ones(shape, np.float32), np.ones(shape, np.float32)]
    with caplog.at_level("WARNING", logger="bids_auton2n.train"):
        sampler = PatchSampler(run_pairs(runs, np.ones(shape, bool), defined=defined), 12)
    assert len(sampler._layouts[0].train_starts) and len(sampler._layouts[0].val_starts)
    assert any("reach beyond" in r.getMessage() for r in caplog.records)

