"""Shared fixtures: a tiny generated BIDS dataset and a test-only expert registry."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_bids(tmp_path_factory):
    """The demo's BIDS dataset at 3 mm (5 noisy ICBM152 heads of 55x67x55 voxels): 2
    subjects, sessions, runs, T1w + T2w."""
    from bids_auton2n.cli.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("data") / "bids", voxel_mm=3.0)


@pytest.fixture(scope="session")
def test_experts_dir(tmp_path_factory):
    """Expert registry made here (1-9 %): seeded random networks whose output layer is
    zeroed, so each expert is the identity (tests check the plumbing, not the quality)."""
    import torch

    from bids_auton2n.denoise.experts import write_manifest_entry
    from bids_auton2n.denoise.network import ResidualDenoiser3D

    root = tmp_path_factory.mktemp("experts")
    for level in (1, 3, 5, 7, 9):
        torch.manual_seed(level)
        model = ResidualDenoiser3D()
        torch.nn.init.zeros_(model.head.weight)
        torch.nn.init.zeros_(model.head.bias)
        write_manifest_entry(root, level, model.state_dict(), {
            "training_data": "none (test fixture, identity network)",
            "command": "tests/conftest.py::test_experts_dir",
            "revision": "test",
        })
    return root


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: tiny convolutions are dominated by thread
    synchronisation, worst on a shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
