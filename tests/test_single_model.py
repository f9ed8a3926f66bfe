"""Tests of the single-model ablation (one network on all noise levels) and step limits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_train import same_weights, tiny_config, toy_volume

from bids_auton2n.cli.train import main as train_main
from bids_auton2n.denoise.experts import ExpertRegistry
from bids_auton2n.train.curriculum import eligible_volumes, train_single_model
from bids_auton2n.train.data import MultiLevelSampler, PatchSampler, draw_level
from bids_auton2n.train.trainer import train_expert

LEVELS = (1.0, 3.0, 5.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def volumes():
    # "c" is clean enough for every level, "n" (4 %) only trains the 5 % level.
    return [toy_volume("c", 0, percent=0.5), toy_volume("n", 1, percent=4.0)]


def test_level_draw_is_uniform_and_depends_on_seed_and_step_only():
    draws = [draw_level(LEVELS, 7, step) for step in range(3000)]
    assert draws == [draw_level(LEVELS, 7, step) for step in range(3000)]
    counts = np.array([draws.count(level) for level in LEVELS])
    assert np.all(np.abs(counts - 1000) < 100)  # 3 sigma of a binomial(3000, 1/3) is ~77
    assert draws != [draw_level(LEVELS, 8, step) for step in range(3000)]


def test_multilevel_sampler_serves_each_level_from_its_own_scans(volumes):
    samplers = {level: PatchSampler(eligible_volumes(volumes, level), 12) for level in LEVELS}
    mixed = MultiLevelSampler(samplers)
    for level in LEVELS:
        got = mixed.training_batch(5, 3, level, seed=2)
        expected = samplers[level].training_batch(5, 3, level, seed=2)
        assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    with pytest.raises(ValueError, match="no sampler for level 7"):
        mixed.training_batch(0, 1, 7.0, seed=0)


def test_single_level_single_model_is_that_levels_expert(volumes):
    # With one level the schedule degenerates to the expert's: same init, draws, validation.
    sampler = PatchSampler(eligible_volumes(volumes, 1.0), 12)
    expert = train_expert(sampler, tiny_config(level=1.0, max_epochs=2), progress=False)
    single = train_expert(MultiLevelSampler({1.0: sampler}),
                          tiny_config(level=1.0, levels=(1.0,), max_epochs=2), progress=False)
    assert same_weights(expert.state_dict, single.state_dict)
    assert [h["val_loss"] for h in expert.history] == [h["val_loss"] for h in single.history]


def test_step_limit_cuts_the_last_epoch(volumes):
    result = train_expert(PatchSampler(volumes, 12), tiny_config(max_epochs=100, max_steps=6),
                          progress=False)
    assert result.steps == 6 and result.epochs == 2 and result.stopped == "max_steps"


def test_single_model_is_deterministic_and_writes_a_one_entry_registry(tmp_path, volumes):
    config = tiny_config(max_epochs=100, max_steps=7, patience=1000)
    first = train_single_model(volumes, out_dir=tmp_path / "a", work_dir=tmp_path / "wa",
                               levels=LEVELS, base_config=config, command="test", progress=False)
    second = train_single_model(volumes, out_dir=tmp_path / "b", work_dir=tmp_path / "wb",
                                levels=LEVELS, base_config=config, command="test", progress=False)
    assert first.steps == 7 and first.stopped == "max_steps"
    assert same_weights(first.state_dict, second.state_dict)
    registry = ExpertRegistry(tmp_path / "a")
    assert registry.levels == [1.0]
    assert [c.level for c in registry.select(6.0)] == [1.0]
    assert same_weights(registry.load(1.0).state_dict(), first.state_dict)
    entry = registry.entry(1.0)
    assert entry["settings"]["levels"] == list(LEVELS)
    assert entry["single_model"]["scans_per_level"] == {"1": ["c"], "3": ["c"], "5": ["c", "n"]}
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["experts"][0]["initialised_from"] is None
    other = train_single_model(volumes, out_dir=tmp_path / "c", work_dir=tmp_path / "wc",
                               levels=LEVELS, base_config=tiny_config(
                                   max_epochs=100, max_steps=7, patience=1000, seed=4),
                               command="test", progress=False)
    assert not same_weights(first.state_dict, other.state_dict)


def test_single_model_needs_an_output_directory(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_main(["--single-model", "--data", str(tmp_path / "x.nii.gz"), "--no-progress"])
    assert "--single-model needs --out" in capsys.readouterr().err
