"""Running as any user, with an unwritable HOME, read-only inputs and installation.

The unit tests check the decisions of ``utils/environment.py``; the sandbox tests run the
real app outside any container as uid 12345 without passwd entry (``docker run --user``
and Apptainer give the same), with an empty environment (no LOGNAME/USER), HOME, the
current folder, the input dataset and the installed package all unwritable.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bids_auton2n
from bids_auton2n.utils import environment

from conftest import SANDBOX_UID

PACKAGE_DIR = Path(bids_auton2n.__file__).resolve().parent


def test_login_name_without_passwd_entry(monkeypatch):
    import pwd

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    env = {}
    environment.ensure_user_identity(env)
    assert env == {"LOGNAME": f"uid{os.getuid()}", "USER": f"uid{os.getuid()}"}


def test_login_name_set_by_the_user_is_kept():
    env = {"USER": "alice"}
    environment.ensure_user_identity(env)
    assert env == {"USER": "alice", "LOGNAME": "alice"}  # Nipype's SLURM plugin reads LOGNAME


def test_caches_move_only_where_their_default_is_unwritable(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(environment.tempfile, "tempdir", None)  # gettempdir() re-reads TMPDIR
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    unwritable = {"HOME": str(not_a_folder / "home"), "MPLCONFIGDIR": ""}
    moved = environment.redirect_caches(unwritable)
    scratch = tmp_path / f"bids_auton2n-{os.getuid()}"
    assert moved["MPLCONFIGDIR"] == str(scratch / "matplotlib")
    assert moved["TEMPLATEFLOW_HOME"] == str(scratch / "templateflow")
    assert unwritable["MPLCONFIGDIR"] == moved["MPLCONFIGDIR"]  # an empty value counts as unset
    writable = {"HOME": str(tmp_path / "home"), "TEMPLATEFLOW_HOME": "/somewhere/chosen"}
    assert environment.redirect_caches(writable) == {}
    assert writable["TEMPLATEFLOW_HOME"] == "/somewhere/chosen"


def test_default_work_dir_falls_back_to_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(environment.tempfile, "tempdir", None)
    assert environment.default_work_dir(tmp_path / "here") == tmp_path / "here" / "work"
    read_only = tmp_path / "file"
    read_only.write_text("")
    assert environment.default_work_dir(read_only) == (
        tmp_path / f"bids_auton2n-{os.getuid()}" / "work")


def _digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_app_runs_as_uid_without_passwd_entry_read_only_everything(
        sandbox, tiny_bids, test_experts_dir, tmp_path):
    """uid 12345, env -i, HOME/current folder/input/installed package read-only: the run
    completes, the work dir and caches land under TMPDIR, nothing warns or crashes."""
    import shutil

    bids = shutil.copytree(tiny_bids, tmp_path / "bids")
    home, scratch, out = tmp_path / "home", tmp_path / "scratch", tmp_path / "out"
    for folder in (home, scratch, out):
        folder.mkdir()
    before = _digests(bids)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(scratch)}
    read_only = [bids, home, PACKAGE_DIR, Path(test_experts_dir)]
    common = [sys.executable, "-m", "bids_auton2n.cli.run", bids, out]
    opts = ["--participant-label", "02", "--experts-dir", test_experts_dir, "--nprocs", "1",
            "--no-tta", "--no-fusion", "--noise-level", "3"]
    done = subprocess.run(sandbox([*common, "participant", *opts], cwd=home,
                                  read_only=read_only, env=env),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Traceback" not in done.stdout and "Matplotlib created a temporary" not in done.stdout
    assert (out / "sub-02/ses-1/anat/sub-02_ses-1_desc-denoised_T1w.nii.gz").is_file()
    assert (out / "sub-02.html").is_file()
    private = scratch / f"bids_auton2n-{SANDBOX_UID}"
    assert (private / "work" / "auton2n_wf").is_dir()  # default work dir: ./work is read-only
    assert {p.name for p in private.iterdir()} >= {"numba", "matplotlib", "templateflow"}
    assert _digests(bids) == before


def test_no_writable_temporary_folder_is_one_line_error(sandbox, tiny_bids, tmp_path):
    read_only = [tmp_path, "/tmp", "/var/tmp", PACKAGE_DIR]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        sandbox([sys.executable, "-m", "bids_auton2n.cli.run", tiny_bids, tmp_path / "out",
                 "participant"], cwd=tmp_path, read_only=read_only, env=env),
        capture_output=True, text=True)
    assert done.returncode == 73, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no writable temporary folder" in lines[0]
    assert "--tmpfs /tmp" in lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a folder to another uid (needs root)")
@pytest.mark.parametrize("folder", ["output", "work"])
def test_output_or_work_folder_of_another_user_is_one_line_error(
        sandbox, tiny_bids, tmp_path, folder):
    """``docker run -u 12345:12345 -v $PWD/out:/out`` where Docker (root) created ``out``: an
    existing folder this uid cannot write gives exit 73 and one line, before any work. Here
    the folder belongs to uid 1000, which the sandbox does not map (as root's folder is to
    a container's uid 12345)."""
    out, work, scratch = tmp_path / "out", tmp_path / "work", tmp_path / "scratch"
    for path in (out, work, scratch):
        path.mkdir()
    foreign = {"output": out, "work": work}[folder]
    os.chown(foreign, 1000, 1000)
    foreign.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(scratch), "TMPDIR": str(scratch)}
    done = subprocess.run(
        sandbox([sys.executable, "-m", "bids_auton2n.cli.run", tiny_bids, out, "participant",
                 "-w", work], cwd=scratch, env=env),
        capture_output=True, text=True)
    assert done.returncode == 73, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]  # after the line saying what the run does
    assert error.startswith(f"bids_auton2n: {foreign}: cannot write the {folder} directory ("), error
    assert "belongs to uid" in error
    assert list(foreign.iterdir()) == []


def test_logname_set_for_nipype_cluster_plugins_without_one():
    """Nipype's SLURM/SGE/PBS plugins name jobs with os.environ["LOGNAME"]; a job started
    with an empty environment (env -i, cron, some schedulers) has none."""
    done = subprocess.run(
        ["env", "-i", f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}", sys.executable, "-c",
         "import os, bids_auton2n; print(os.environ['LOGNAME'], os.environ['USER'])"],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import pwd

    name = pwd.getpwuid(os.getuid()).pw_name
    assert done.stdout.split() == [name, name]


@pytest.mark.parametrize("user_value", [None, "ACTIVE"])
def test_openmp_threads_sleep_when_idle_unless_the_user_says(user_value):
    """OMP_WAIT_POLICY=PASSIVE is in the environment before torch (and its OpenMP runtime)
    is loaded; a value the user set is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_value:
        env["OMP_WAIT_POLICY"] = user_value
    done = subprocess.run(
        [sys.executable, "-c", "import os, sys, bids_auton2n; "
         "print('torch' in sys.modules, os.environ['OMP_WAIT_POLICY'])"],
        capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", user_value or "PASSIVE"]


_FORKSERVER_POOL = """
import concurrent.futures, multiprocessing, os, sys
from bids_auton2n.utils.environment import shorten_socket_folder

folder = shorten_socket_folder() if sys.argv[1] == "shorten" else None
context = multiprocessing.get_context("forkserver")  # as Nipype's MultiProc plugin starts
with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
    print(folder, pool.submit(os.getpid).result() != os.getpid())
"""


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="Python 3.13 shortens the path itself")
def test_worker_processes_start_under_a_temporary_folder_too_long_for_a_socket(tmp_path):
    """A job's TMPDIR nested deep enough (here 130 characters) that multiprocessing's socket
    path exceeds the 107 bytes of a Unix socket: without the short socket folder the
    forkserver cannot listen; with it the worker starts and the folder is gone at exit."""
    long_tmp = tmp_path / ("scratch-" * 8) / ("job-" * 10)
    long_tmp.mkdir(parents=True)
    assert len(str(long_tmp)) + 32 > environment.SOCKET_PATH_MAX
    env = {**os.environ, "TMPDIR": str(long_tmp)}
    runs = {how: subprocess.run([sys.executable, "-c", _FORKSERVER_POOL, how], env=env,
                                capture_output=True, text=True)
            for how in ("plain", "shorten")}
    assert runs["plain"].returncode != 0 and "AF_UNIX path too long" in runs["plain"].stderr
    assert runs["shorten"].returncode == 0, runs["shorten"].stderr[-2000:]
    folder, started = runs["shorten"].stdout.split()
    assert started == "True"
    assert len(folder) + 18 <= environment.SOCKET_PATH_MAX
    assert not Path(folder).exists()


def test_no_socket_folder_when_the_temporary_folder_is_short(monkeypatch, tmp_path):
    monkeypatch.setattr(environment.tempfile, "gettempdir", lambda: str(tmp_path))
    assert len(str(tmp_path)) + 32 <= environment.SOCKET_PATH_MAX
    assert environment.shorten_socket_folder() is None



_KERNEL = "import numba\n\n@numba.njit(cache=True)\ndef add_one(x):\n    return x + 1\n"


def _dockerfile_pycache_mode() -> int:
    """The mode the Dockerfile gives the kernels' ``__pycache__`` (``chmod <mode> ...``)."""
    import re

    text = (PACKAGE_DIR.parent / "Dockerfile").read_text()
    found = re.search(r"chmod (\d+) \"\$\(python -c '[^']*__pycache__", text, re.S)
    assert found, "the Dockerfile no longer opens the numba cache to every uid"
    return int(found.group(1), 8)


def _as_uid(uid: int, function) -> str:
    """Run ``function()`` in a forked child as ``uid`` (no exec: the interpreter may sit in a
    folder that uid cannot read); returns its error, or "" when it returned."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.close(read)
        message = ""
        try:
            os.setgid(uid)
            os.setuid(uid)
            function()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            message = f"{type(exc).__name__}: {exc}" or "error"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    os.waitpid(child, 0)
    return message


@pytest.mark.skipif(not (PACKAGE_DIR.parent / "Dockerfile").is_file(), reason="no Dockerfile")
@pytest.mark.skipif(os.geteuid() != 0, reason="compiles as root, then as another uid")
def test_numba_cache_of_the_image_lets_another_uid_add_a_signature():
    """The image compiles the kernels as root into their ``__pycache__``; a run as
    ``-u 12345:12345`` that needs a new signature (other dtypes, another CPU) rewrites the
    kernel's index file. In a sticky folder (1777) replacing root's file is refused (EPERM:
    every image failed so in the container check of 2026-12-01); the Dockerfile's mode lets
    it."""
    import importlib
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="auton2n-numba-"))
    try:
        root.chmod(0o755)
        (root / "kern_sticky_check.py").write_text(_KERNEL)
        (root / "__pycache__").mkdir()
        (root / "__pycache__").chmod(_dockerfile_pycache_mode())
        sys.path.insert(0, str(root))
        kern = importlib.import_module("kern_sticky_check")
        assert kern.add_one(1) == 2  # compiled and cached by root, as in the image
        assert any(p.suffix == ".nbi" for p in (root / "__pycache__").iterdir())
        assert _as_uid(SANDBOX_UID, lambda: kern.add_one(1.5)) == ""
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("kern_sticky_check", None)
        shutil.rmtree(root, ignore_errors=True)
