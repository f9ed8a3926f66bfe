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


@pytest.fixture(autouse=True)
def _app_logger_restored():
    """Gives every test the app logger as it was before: the CLI, run in-process by some
    tests, stops it propagating (its own handler prints), which would hide later tests'
    records from ``caplog`` depending on the order in which tests reach a worker."""
    import logging

    logger = logging.getLogger("bids_auton2n")
    state = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = state


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: tiny convolutions are dominated by thread
    synchronisation, worst on a shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: uid (and gid) the sandbox runs commands as: no passwd entry on any sane machine.
SANDBOX_UID = 12345

_SANDBOX_SCRIPT = r"""
cwd=$1; n=$2; shift 2
while [ "$n" -gt 0 ]; do
    mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 97
    shift; n=$((n - 1))
done
cd "$cwd" || exit 97
exec unshare --user --map-user=%(uid)d --map-group=%(uid)d "$@"
""" % {"uid": SANDBOX_UID}


def _sandbox_argv(argv, *, cwd, read_only=(), env=None):
    """``argv`` as uid 12345 (no passwd entry) with ``read_only`` folders mounted read-only.

    User and mount namespaces (``unshare``), no container and no root needed where the
    kernel allows unprivileged user namespaces: the outer namespace maps us to root so it
    may bind-mount, the inner one maps the uid; the environment is exactly ``env``.
    """
    inner = ["env", "-i", *[f"{k}={v}" for k, v in (env or {}).items()], *map(str, argv)]
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", _SANDBOX_SCRIPT,
            "sandbox", str(cwd), str(len(read_only)), *map(str, read_only), *inner]


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    """Builds sandboxed command lines (see :func:`_sandbox_argv`); skips where unsupported."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) not installed")
    probe_dir = tmp_path_factory.mktemp("sandbox-probe")
    probe = subprocess.run(_sandbox_argv(["id", "-u"], cwd=probe_dir, read_only=[probe_dir],
                                         env={"PATH": "/usr/bin:/bin"}),
                           capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != str(SANDBOX_UID):
        pytest.skip(f"user/mount namespaces unavailable here: {probe.stderr.strip()[:200]}")
    return _sandbox_argv
