"""Tests of the expert training package (tiny volumes, a few Adam steps)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from bids_auton2n.cli.train import main as train_main
from bids_auton2n.denoise.experts import ExpertRegistry, sha256_file, write_manifest_entry
from bids_auton2n.denoise.network import ResidualDenoiser3D
from bids_auton2n.utils.io import InputImageError
from bids_auton2n.train import curriculum
from bids_auton2n.train.curriculum import (
    eligible_volumes,
    finetune,
    load_volumes,
    train_curriculum,
)
from bids_auton2n.train.data import (
    PatchSampler,
    added_noise_std,
    parse_volume_spec,
    prepare_volume,
    preprocess_scan,
    volume_from_arrays,
)
from bids_auton2n.train.trainer import TrainConfig, train_expert

SHAPE = (40, 32, 32)
REFERENCE = 100.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy_clean(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ellipsoidal 'head' with smooth structure and an edge; reference tissue ~100."""
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]].astype(np.float32)
    head = ((z - 20) / 18) ** 2 + ((y - 16) / 14) ** 2 + ((x - 16) / 14) ** 2 < 1
    shift = np.random.default_rng(seed).uniform(0, 3)
    clean = REFERENCE * (0.8 + 0.2 * np.sin(z / 4 + shift) * np.cos(y / 5)) - 30 * (x > 16)
    return (clean * head).astype(np.float32), head


def toy_volume(name="toy", seed=0, percent=2.0):
    """Prepared volume whose pair is an independent noise realization (an exact N2N pair)."""
    clean, head = toy_clean(seed)
    rng = np.random.default_rng(seed + 100)
    sigma = percent / 100 * REFERENCE
    noisy = clean + sigma * rng.standard_normal(SHAPE).astype(np.float32)
    pair = clean + sigma * rng.standard_normal(SHAPE).astype(np.float32)
    return volume_from_arrays(name, noisy, pair, head, contrast="T1w", noise_percent=percent,
                              reference_intensity=REFERENCE)


def tiny_config(**changes) -> TrainConfig:
    settings = dict(level=5.0, patch_size=12, batch_size=2, steps_per_epoch=4, max_epochs=3,
                    patience=10, val_patches_per_volume=2, seed=3, device="cpu")
    settings.update(changes)
    return TrainConfig(**settings)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_added_noise_reaches_level_in_variance():
    assert added_noise_std(5.0, 3.0) == pytest.approx(0.04)
    assert added_noise_std(1.0, 2.5) == 0.0  # already noisier than the level: nothing added


def test_training_batch_noise_is_independent_with_the_level_std():
    clean, head = toy_clean()
    volume = volume_from_arrays("flat", clean, clean, head, contrast="T1w", noise_percent=0.0,
                                reference_intensity=REFERENCE)
    sampler = PatchSampler([volume], 12)
    inputs, targets = sampler.training_batch(step=0, batch_size=32, level=5.0, seed=1)
    assert inputs.shape == (32, 1, 12, 12, 12) and inputs.dtype == np.float32
    # Input and target start equal, so their difference is the two added noises only.
    assert np.std(inputs - targets) == pytest.approx(0.05 * np.sqrt(2), rel=0.03)


def test_validation_slab_never_overlaps_training_patches():
    volume = toy_volume()
    sampler = PatchSampler([volume], 12)
    layout = sampler._layouts[0]
    axis = int(np.argmax(SHAPE))
    slab = int(layout.val_starts[0, axis])
    assert np.all(layout.val_starts[:, axis] == slab)
    ends = layout.train_starts[:, axis] + sampler.patch_size
    assert np.all((ends <= slab) | (layout.train_starts[:, axis] >= slab + sampler.patch_size))


def test_patch_size_shrinks_to_fit_small_volume():
    assert PatchSampler([toy_volume()], 64).patch_size == 20  # longest axis 40 holds 2 patches


def test_loss_decreases_on_toy_volume():
    result = train_expert(PatchSampler([toy_volume()], 12), tiny_config(max_epochs=4, lr=3e-3),
                          progress=False)
    history = result.history
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["train_loss"] < history[1]["train_loss"] * 1.05
    assert history[-1]["psnr_output_db"] > history[0]["psnr_output_db"]
    assert result.stopped == "max_epochs" and result.steps == 16


def test_training_is_deterministic_given_a_seed():
    sampler = PatchSampler([toy_volume()], 12)
    first = train_expert(sampler, tiny_config(), progress=False)
    second = train_expert(sampler, tiny_config(), progress=False)
    assert same_weights(first.state_dict, second.state_dict)
    other = train_expert(sampler, tiny_config(seed=4), progress=False)
    assert not same_weights(first.state_dict, other.state_dict)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    sampler = PatchSampler([toy_volume()], 12)
    straight = train_expert(sampler, tiny_config(max_epochs=3, patience=1000), progress=False)
    checkpoint = tmp_path / "expert.ckpt"
    interrupted = train_expert(sampler, tiny_config(max_epochs=1, patience=1000),
                               checkpoint=checkpoint, progress=False)
    assert interrupted.epochs == 1 and checkpoint.is_file()
    resumed = train_expert(sampler, tiny_config(max_epochs=3, patience=1000),
                           checkpoint=checkpoint, progress=False)
    assert resumed.epochs == 3
    assert same_weights(straight.state_dict, resumed.state_dict)
    assert [h["val_loss"] for h in straight.history] == [h["val_loss"] for h in resumed.history]


def test_psnr_selection_keeps_the_epoch_of_highest_held_out_psnr():
    sampler = PatchSampler([toy_volume()], 12)
    result = train_expert(sampler, tiny_config(select_by="psnr", max_epochs=3), progress=False)
    best = max(result.history, key=lambda h: h["psnr_output_db"])
    assert result.best_epoch == best["epoch"]
    with pytest.raises(ValueError, match="select_by"):
        train_expert(sampler, tiny_config(select_by="ssim"), progress=False)


def test_checkpoint_with_other_settings_is_refused(tmp_path):
    sampler = PatchSampler([toy_volume()], 12)
    checkpoint = tmp_path / "expert.ckpt"
    train_expert(sampler, tiny_config(max_epochs=1), checkpoint=checkpoint, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        train_expert(sampler, tiny_config(max_epochs=1, lr=0.5), checkpoint=checkpoint,
                     progress=False)


def test_checkpoint_grown_from_other_starting_weights_is_refused(tmp_path):
    sampler = PatchSampler([toy_volume()], 12)
    start = train_expert(sampler, tiny_config(max_epochs=1), progress=False).state_dict
    other_start = {name: tensor + 0.01 for name, tensor in start.items()}
    checkpoint = tmp_path / "finetune.ckpt"
    train_expert(sampler, tiny_config(max_epochs=1), init_state=start, checkpoint=checkpoint,
                 progress=False)
    resumed = train_expert(sampler, tiny_config(max_epochs=2), init_state=start,
                           checkpoint=checkpoint, progress=False)
    assert resumed.epochs == 2
    with pytest.raises(ValueError, match="other settings.*init_sha256"):
        train_expert(sampler, tiny_config(max_epochs=2), init_state=other_start,
                     checkpoint=checkpoint, progress=False)


class StepClock:
    """A clock that only moves when told: ``seconds_per_batch`` per training batch drawn
    (wrap a sampler with :meth:`sampler`), so budgets are tested in steps, not in this
    machine's speed."""

    def __init__(self, seconds_per_batch: float = 1.0):
        self.now = 0.0
        self.seconds_per_batch = seconds_per_batch

    def __call__(self) -> float:
        return self.now

    def sampler(self, sampler):
        draw = sampler.training_batch

        def timed(*args, **kwargs):
            self.now += self.seconds_per_batch
            return draw(*args, **kwargs)

        sampler.training_batch = timed
        return sampler


def test_time_budget_stops_training():
    clock = StepClock(seconds_per_batch=0.25)
    sampler = clock.sampler(PatchSampler([toy_volume()], 12))
    result = train_expert(sampler, tiny_config(max_epochs=10_000, time_budget_s=1.0),
                          progress=False, clock=clock)
    assert result.stopped == "time_budget"
    assert result.steps == 4  # 4 batches of 0.25 s fill the 1 s budget


def test_deadline_counts_what_came_before_training():
    clock = StepClock()
    clock.now = 10.0
    sampler = clock.sampler(PatchSampler([toy_volume()], 12))
    result = train_expert(sampler, tiny_config(max_epochs=10_000), progress=False,
                          deadline=13.0, clock=clock)
    assert result.stopped == "time_budget" and result.steps == 3


def test_curriculum_initialises_each_level_from_the_previous(tmp_path, monkeypatch):
    calls = []
    real_train = curriculum.train_expert

    def spy(sampler, config, *, init_state=None, **kwargs):
        result = real_train(sampler, config, init_state=init_state, **kwargs)
        calls.append((config.level, init_state, result.state_dict))
        return result

    monkeypatch.setattr(curriculum, "train_expert", spy)
    out = tmp_path / "experts"
    train_curriculum([toy_volume("a", 0), toy_volume("b", 1)], out_dir=out,
                     work_dir=tmp_path / "work", levels=(3, 1), base_config=tiny_config(max_epochs=1),
                     command="test", progress=False)
    assert [level for level, _, _ in calls] == [1.0, 3.0]
    assert calls[0][1] is None
    assert same_weights(calls[1][1], calls[0][2])
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["initialised_from"] for e in manifest["experts"]] == [None, 1.0]


def test_curriculum_step_budget_is_shared_like_the_time(tmp_path):
    """2:1:1 shares of 12 steps: 6, then 3 of the 6 left, then the last 3."""
    results = train_curriculum([toy_volume()], out_dir=tmp_path / "experts",
                               work_dir=tmp_path / "work", levels=(1, 3, 5), total_steps=12,
                               base_config=tiny_config(max_epochs=100, patience=100),
                               command="test", progress=False)
    assert [r.steps for r in results] == [6, 3, 3]
    assert all(r.stopped == "max_steps" for r in results)


def test_manifest_records_hashes_and_provenance(tmp_path):
    out = tmp_path / "experts"
    results = train_curriculum([toy_volume()], out_dir=out, work_dir=tmp_path / "work",
                               levels=(1, 3), base_config=tiny_config(max_epochs=1),
                               command="bids_auton2n-train --test", progress=False)
    registry = ExpertRegistry(out)
    assert registry.levels == [1.0, 3.0]
    for result in results:
        entry = registry.entry(result.level)
        assert entry["sha256"] == sha256_file(registry.path(result.level))
        assert entry["command"] == "bids_auton2n-train --test"
        assert entry["training_data"][0]["file"] == "toy"
        assert entry["revision"]
        assert entry["epochs"] == 1 and entry["settings"]["level"] == result.level
        model = registry.load(result.level)
        assert same_weights(model.state_dict(), result.state_dict)


def test_scans_noisier_than_the_level_are_left_out():
    clean, low, high = toy_volume("c", percent=0.5), toy_volume("l", percent=2.0), toy_volume(
        "h", percent=6.0)
    names = lambda level: [v.name for v in eligible_volumes([clean, low, high], level, 1.25)]
    assert names(1.0) == ["c"]
    assert names(5.0) == ["c", "l", "h"]  # 6 <= 1.25 * 5
    assert [v.name for v in eligible_volumes([low, high], 1.0, 1.25)] == ["l"]  # cleanest alone
    assert len(eligible_volumes([clean, low, high], 1.0, None)) == 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two toy scans as NIfTI files, their cached pairs and a one-expert starting registry."""
    root = tmp_path_factory.mktemp("dataset")
    files = []
    for index in range(2):
        clean, _ = toy_clean(index)
        noisy = clean + 3.0 * np.random.default_rng(index).standard_normal(SHAPE)
        path = root / f"sub-0{index + 1}_T1w.nii.gz"
        nib.Nifti1Image(np.clip(noisy, 0, None).astype(np.float32), np.eye(4)).to_filename(path)
        files.append(path)
    torch.manual_seed(0)
    start = root / "start"
    write_manifest_entry(start, 3.0, ResidualDenoiser3D().state_dict(),
                         {"training_data": "none", "command": "test", "revision": "test"})
    # Pairs are the slow part of preparation (numba launch overhead): build them once.
    load_volumes(files, work_dir=root / "cache")
    return files, ExpertRegistry(start), root / "cache" / "pairs"


def work_dir_with_pairs(tmp_path, pairs):
    work = tmp_path / "work"
    work.mkdir()
    (work / "pairs").symlink_to(pairs, target_is_directory=True)
    return work


def test_finetune_respects_budget_and_writes_loadable_registry(tmp_path, dataset, monkeypatch):
    """The budget covers all of fine-tuning: preparing the bases (here 1.5 s per scan on an
    injected clock) and training (1 s per Adam step)."""
    files, start, pairs = dataset
    clock = StepClock()
    real_load, real_sampler = curriculum.load_volumes, curriculum.PatchSampler

    def timed_load(*args, **kwargs):
        clock.now += 1.5
        return real_load(*args, **kwargs)

    monkeypatch.setattr(curriculum, "load_volumes", timed_load)
    monkeypatch.setattr(curriculum, "PatchSampler",
                        lambda *a, **k: clock.sampler(real_sampler(*a, **k)))
    out = finetune(files, out_dir=tmp_path / "ft", time_budget_s=5.0, registry=start,
                   work_dir=work_dir_with_pairs(tmp_path, pairs),
                   config=tiny_config(level=0.0, max_epochs=10_000), command="test",
                   progress=False, clock=clock)
    registry = ExpertRegistry(out)
    assert registry.levels == [3.0]
    entry = registry.entry(3.0)
    assert entry["stopped"] == "time_budget"
    assert entry["steps"] == 2  # 5 s: 2 x 1.5 s of preparation, then 2 steps of 1 s
    assert entry["total_seconds"] == 5.0
    assert entry["finetuned_from"]["sha256"] == start.sha256(3.0)
    assert [d["file"] for d in entry["training_data"]] == [f.name for f in files]
    # Default recipe: pairs of the denoised scans, noise added up to the expert's level.
    assert entry["finetune_recipe"]["base"] == "denoised"
    assert entry["settings"]["level"] == 3.0
    registry.load(3.0)


def test_finetune_stops_preparing_scans_when_the_budget_is_spent(tmp_path, dataset,
                                                                  monkeypatch):
    files, start, pairs = dataset
    clock = StepClock()
    real_load = curriculum.load_volumes

    def timed_load(*args, **kwargs):
        clock.now += 4.0
        return real_load(*args, **kwargs)

    monkeypatch.setattr(curriculum, "load_volumes", timed_load)
    out = finetune(files, out_dir=tmp_path / "ft", time_budget_s=3.0, registry=start,
                   work_dir=work_dir_with_pairs(tmp_path, pairs),
                   config=tiny_config(level=0.0, max_epochs=10_000), command="test",
                   progress=False, clock=clock)
    entry = ExpertRegistry(out).entry(3.0)
    assert [d["file"] for d in entry["training_data"]] == [files[0].name]
    assert entry["steps"] == 0 and entry["stopped"] == "time_budget"


def test_finetune_epoch_budget(tmp_path, dataset):
    files, start, pairs = dataset
    out = finetune(files, start_level=3.0, out_dir=tmp_path / "ft", time_budget_s=None,
                   max_epochs=2, registry=start, work_dir=work_dir_with_pairs(tmp_path, pairs),
                   config=tiny_config(level=0.0), command="test", progress=False)
    entry = ExpertRegistry(out).entry(3.0)
    assert entry["epochs"] == 2 and entry["stopped"] == "max_epochs"


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown contrast"):
        parse_volume_spec("scan.nii.gz:T3w")
    assert parse_volume_spec("/a/b_T2w.nii.gz:T2w")[1] == "T2w"
    with pytest.raises(InputImageError, match="missing.nii.gz"):
        prepare_volume(tmp_path / "missing.nii.gz", "T1w")
    assert train_main(["--finetune", str(tmp_path / "missing.nii.gz"), "--out",
                       str(tmp_path / "o"), "--no-progress"]) == 2


def test_finetune_on_denoised_base_pairs_the_denoised_scan_and_records_it(tmp_path, dataset,
                                                                          monkeypatch):
    from bids_auton2n.denoise.noise import estimate_noise, head_mask
    from bids_auton2n.train import data

    files, start, _ = dataset
    denoised, paired = [], []
    real_denoise, real_pair = data.denoise_array, data.synthetic_pair
    monkeypatch.setattr(data, "denoise_array", lambda *a, **k: denoised.append(
        real_denoise(*a, **k)) or denoised[-1])
    monkeypatch.setattr(data, "synthetic_pair", lambda x, **k: paired.append(
        (x.copy(), k["exclude_centre"])) or real_pair(x, **k))
    out = finetune(files[:1], out_dir=tmp_path / "ft", time_budget_s=None, max_epochs=1,
                   registry=start, work_dir=tmp_path / "work", base="denoised",
                   config=tiny_config(level=0.0, steps_per_epoch=2), command="test",
                   progress=False)

    assert len(denoised) == 1 and denoised[0].weights_sha256 == {"3": start.sha256(3.0)}
    base = denoised[0].denoised
    training_pairs = [x for x, exclude_centre in paired if not exclude_centre]
    assert len(training_pairs) == 1 and np.array_equal(training_pairs[0], base)
    entry = ExpertRegistry(out).entry(3.0)
    assert entry["finetune_recipe"]["base"] == "denoised"
    assert entry["settings"]["level"] == 3.0  # noise added up to the starting expert's level
    record = entry["training_data"][0]
    assert record["base"] == "denoised"
    assert record["denoised_with"]["experts_sha256"] == {"3": start.sha256(3.0)}
    # p0 of the base is measured on the denoised image, against the scan's reference.
    scan = nib.load(files[0]).get_fdata(dtype=np.float32)
    own = estimate_noise(base, contrast="T1w", mask=head_mask(scan))
    reference = denoised[0].noise.reference_intensity
    assert record["intrinsic_noise_percent"] == pytest.approx(100 * own.sigma / reference, abs=1e-3)
    assert record["scan_noise_percent"] == pytest.approx(denoised[0].noise.percent, abs=1e-3)
    assert record["intrinsic_noise_percent"] < record["scan_noise_percent"]
    # Rerun: the denoised base and its pairs come from the cache.
    # (The noise estimates build no whole pair: pairs.pair_values_at, where they read.)
    load_volumes(files[:1], work_dir=tmp_path / "work", base="denoised", registry=start)
    assert len(denoised) == 1 and len(paired) == 1
    # A recalibrated estimator runs the experts at another noise level: a new base.
    from bids_auton2n.denoise import noise as noise_module
    calibration = noise_module.load_calibration()
    recalibrated = {**calibration, "model": {**calibration["model"],
                                             "slope": 1.1 * calibration["model"]["slope"]}}
    monkeypatch.setattr(noise_module, "load_calibration", lambda: recalibrated)
    load_volumes(files[:1], work_dir=tmp_path / "work", base="denoised", registry=start)
    assert len(denoised) == 2
    assert denoised[1].noise.percent == pytest.approx(1.1 * denoised[0].noise.percent, rel=1e-3)


def test_curriculum_command_trains_on_denoised_bases_when_asked(tmp_path, dataset):
    files, start, pairs = dataset
    tiny = ["--levels", "3", "--total-budget-min", "0", "--max-epochs", "1", "--steps-per-epoch",
            "2", "--patch-size", "12", "--batch-size", "2", "--val-patches", "2", "--device",
            "cpu", "--no-progress", "--max-noise-ratio", "0", "--data", *(f"{f}:T1w" for f in files)]
    for base in ("denoised", None):
        out, work = tmp_path / f"experts-{base}", tmp_path / f"work-{base}"
        work.mkdir()
        (work / "pairs").symlink_to(pairs, target_is_directory=True)
        extra = ["--base", base, "--registry", str(start.root)] if base else []
        assert train_main(["--out", str(out), "--work-dir", str(work), *extra, *tiny]) == 0
        records = ExpertRegistry(out).entry(3.0)["training_data"]
        assert [r["file"] for r in records] == [f.name for f in files]
        if base:
            assert {r["base"] for r in records} == {"denoised"}
            assert records[0]["denoised_with"]["experts_sha256"] == {"3": start.sha256(3.0)}
        else:  # the curriculum's default recipe trains on the scans themselves
            assert all("base" not in r for r in records)


def test_inplane_averaging_returns_the_native_grid_and_decorrelates_interpolated_noise():
    rng = np.random.default_rng(0)
    native = rng.standard_normal((6, 20, 30)).astype(np.float32)
    # Reconstructed at twice the in-plane resolution: each native voxel repeated 2x2.
    interpolated = np.repeat(np.repeat(native, 2, axis=1), 2, axis=2)
    interpolated = np.pad(interpolated, ((0, 0), (0, 1), (0, 0)))  # an odd edge is dropped
    averaged = preprocess_scan(interpolated, (1.0, 0.5, 0.5), "average-inplane-2x2")
    np.testing.assert_allclose(averaged, native, atol=1e-6)
    assert preprocess_scan(native, (1.0, 1.0, 1.0), "none") is native
    with pytest.raises(ValueError, match="half"):
        preprocess_scan(native, (1.0, 1.0, 1.0), "average-inplane-2x2")
    with pytest.raises(ValueError, match="unknown preprocessing"):
        preprocess_scan(native, (1.0, 0.5, 0.5), "blur")


def test_preprocessed_scan_is_cached_and_recorded_apart(tmp_path):
    clean, _ = toy_clean(0)
    noisy = clean + 3.0 * np.random.default_rng(5).standard_normal(SHAPE)
    image = nib.Nifti1Image(np.clip(noisy, 0, None).astype(np.float32),
                            np.diag([1.0, 0.5, 0.5, 1.0]))
    image.header.set_zooms((1.0, 0.5, 0.5))
    path = tmp_path / "scan_T1w.nii.gz"
    image.to_filename(path)
    plain = prepare_volume(path, "T1w", work_dir=tmp_path / "work")
    averaged = prepare_volume(path, "T1w", work_dir=tmp_path / "work",
                              preprocess="average-inplane-2x2")
    assert averaged.image.shape == (SHAPE[0], SHAPE[1] // 2, SHAPE[2] // 2)
    assert plain.image.shape == SHAPE
    assert averaged.record()["preprocessing"] == "average-inplane-2x2"
    assert "preprocessing" not in plain.record()
    assert averaged.sha256 == plain.sha256  # the file's hash; caches are keyed apart
    assert len(list((tmp_path / "work" / "pairs").glob("*.npy"))) == 2
