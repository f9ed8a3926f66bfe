"""Tests of the expert registry (weights made here, in a temporary registry)."""

import json
import re

import numpy as np
import pytest
import torch

from bids_auton2n.denoise.experts import (
    ExpertChoice,
    ExpertRegistry,
    ExpertWeightsError,
    default_root,
    expert_filename,
    write_manifest_entry,
)
from bids_auton2n.denoise.inference import cnn_denoise
from bids_auton2n.denoise.network import ResidualDenoiser3D

PROVENANCE = {"training_data": "unit-test random init", "command": "pytest", "revision": "test"}


def _state_dict(seed):
    torch.manual_seed(seed)
    return ResidualDenoiser3D().state_dict()


@pytest.fixture
def registry_root(tmp_path):
    for seed, level in enumerate((1, 3, 5, 7, 9)):
        write_manifest_entry(tmp_path, level, _state_dict(seed), PROVENANCE)
    return tmp_path


def test_manifest_written_and_levels(registry_root):
    manifest = json.loads((registry_root / "manifest.json").read_text())
    assert manifest["format"] == 1
    assert manifest["architecture"] == "ResidualDenoiser3D"
    assert manifest["parameters"] == 69_745
    assert [e["file"] for e in manifest["experts"]][0] == "expert_01pct.pt"
    assert manifest["experts"][0]["command"] == "pytest"
    registry = ExpertRegistry(registry_root)
    assert registry.levels == [1.0, 3.0, 5.0, 7.0, 9.0]
    assert len(registry.sha256(5)) == 64


def test_provenance_names_registries_without_machine_paths(registry_root):
    assert ExpertRegistry().label == "shipped (bids_auton2n/data/experts)"
    assert ExpertRegistry(registry_root).label == registry_root.name
    # The shipped records name no folder of the machine they were trained on.
    for record in ("experts/manifest.json", "noise_calibration.json"):
        text = (default_root().parent / record).read_text()
        assert not re.search(r'"/(work|home|root|tmp/pytest)[/"]|--data-dir /', text), record


def test_load_roundtrip_eval_and_device(registry_root):
    registry = ExpertRegistry(registry_root)
    model = registry.load(3, device="cpu")
    assert not model.training
    expected = _state_dict(1)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name])
        assert tensor.dtype == torch.float32


def test_rewriting_a_level_replaces_its_entry(registry_root):
    write_manifest_entry(registry_root, 3, _state_dict(42), {**PROVENANCE, "epochs": 7})
    registry = ExpertRegistry(registry_root)
    assert registry.levels == [1.0, 3.0, 5.0, 7.0, 9.0]
    assert registry.entry(3)["epochs"] == 7
    assert torch.equal(registry.load(3).head.weight, _state_dict(42)["head.weight"])


def test_float64_state_dict_saved_as_float32(tmp_path):
    state = {k: v.double() for k, v in _state_dict(0).items()}
    path = write_manifest_entry(tmp_path, 2.5, state, PROVENANCE)
    assert path.name == "expert_2p5pct.pt" == expert_filename(2.5)
    saved = torch.load(path, weights_only=True)
    assert all(t.dtype == torch.float32 for t in saved.values())


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="provenance lacks"):
        write_manifest_entry(tmp_path, 1, _state_dict(0), {"command": "x"})
    with pytest.raises(ValueError, match="level"):
        write_manifest_entry(tmp_path, 0, _state_dict(0), PROVENANCE)
    with pytest.raises(ExpertWeightsError, match="do not fit"):
        write_manifest_entry(tmp_path, 1, {"head.weight": torch.zeros(1)}, PROVENANCE)
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize(
    "percent, blend, expected",
    [
        (0.2, False, [(1.0, 0.2), (0.0, 0.8)]),  # below the lowest: blended with identity
        (0.0, False, [(0.0, 1.0)]),
        (1.0, False, [(1.0, 1.0)]),
        (2.0, False, [(1.0, 1.0)]),  # tie goes to the lower level
        (2.1, False, [(3.0, 1.0)]),
        (12.0, False, [(9.0, 1.0)]),
        (0.5, True, [(1.0, 0.5), (0.0, 0.5)]),
        (9.5, True, [(9.0, 1.0)]),
        (5.0, True, [(5.0, 1.0)]),
        (3.5, True, [(3.0, 0.75), (5.0, 0.25)]),
        (8.0, True, [(7.0, 0.5), (9.0, 0.5)]),
    ],
)
def test_select(registry_root, percent, blend, expected):
    got = ExpertRegistry(registry_root).select(percent, blend=blend)
    assert [(c.level, pytest.approx(c.weight)) for c in got] == expected
    assert all(isinstance(c, ExpertChoice) for c in got)
    assert sum(c.weight for c in got) == pytest.approx(1.0)


def test_identity_level_loads_identity(registry_root):
    registry = ExpertRegistry(registry_root)
    x = np.random.default_rng(0).random((20, 22, 18), dtype=np.float32)
    identity = registry.load(0.0)
    for tta in (False, True):
        np.testing.assert_allclose(cnn_denoise(x, [(identity, 1.0)], tta=tta, roi_size=(16, 16, 16)), x,
                                   atol=1e-6)
    assert registry.sha256(0.0) == "identity"


def test_select_rejects_nan(registry_root):
    with pytest.raises(ValueError, match="finite"):
        ExpertRegistry(registry_root).select(float("nan"))


def test_missing_manifest_names_file(tmp_path):
    with pytest.raises(ExpertWeightsError, match="manifest.json: expert manifest not found"):
        ExpertRegistry(tmp_path)


def test_default_root_is_package_data():
    assert default_root().parts[-3:] == ("bids_auton2n", "data", "experts")


def test_missing_file(registry_root):
    (registry_root / "expert_05pct.pt").unlink()
    with pytest.raises(ExpertWeightsError, match="expert_05pct.pt: expert weight file .* missing"):
        ExpertRegistry(registry_root).load(5)


def test_unknown_level(registry_root):
    with pytest.raises(ExpertWeightsError, match="no expert for noise level 4"):
        ExpertRegistry(registry_root).load(4)


def test_hash_mismatch(registry_root):
    path = registry_root / "expert_07pct.pt"
    torch.save(_state_dict(99), path)
    with pytest.raises(ExpertWeightsError, match="expert_07pct.pt: SHA-256 mismatch"):
        ExpertRegistry(registry_root).load(7)


def _rewrite_with_matching_hash(root, level_file, payload: bytes):
    import hashlib

    (root / level_file).write_bytes(payload)
    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["experts"]:
        if entry["file"] == level_file:
            entry["sha256"] = hashlib.sha256(payload).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_corrupt_file_with_matching_hash(registry_root):
    _rewrite_with_matching_hash(registry_root, "expert_09pct.pt", b"not a torch file")
    with pytest.raises(ExpertWeightsError, match="expert_09pct.pt: cannot load weights"):
        ExpertRegistry(registry_root).load(9)


def test_wrong_keys_with_matching_hash(registry_root, tmp_path_factory):
    bad = tmp_path_factory.mktemp("bad") / "w.pt"
    state = _state_dict(0)
    state.pop("head.bias")
    torch.save(state, bad)
    _rewrite_with_matching_hash(registry_root, "expert_01pct.pt", bad.read_bytes())
    with pytest.raises(ExpertWeightsError, match="expert_01pct.pt: weights do not fit"):
        ExpertRegistry(registry_root).load(1)


def test_pickled_object_is_refused(registry_root, tmp_path_factory):
    # weights_only=True: arbitrary pickled objects never execute / load.
    bad = tmp_path_factory.mktemp("bad") / "w.pt"
    torch.save({"model": ResidualDenoiser3D()}, bad)
    _rewrite_with_matching_hash(registry_root, "expert_03pct.pt", bad.read_bytes())
    with pytest.raises(ExpertWeightsError, match="expert_03pct.pt"):
        ExpertRegistry(registry_root).load(3)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format": 2}, "unsupported manifest format"),
        ({"architecture": "UNet"}, "architecture"),
        ({"parameters": 67521}, "67521 parameters"),
        ({"experts": []}, "no experts"),
    ],
)
def test_bad_manifest(registry_root, change, message):
    path = registry_root / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(change)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ExpertWeightsError, match=message):
        ExpertRegistry(registry_root)


def test_unparseable_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ExpertWeightsError, match="manifest.json: unreadable"):
        ExpertRegistry(tmp_path)
