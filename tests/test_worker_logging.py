"""Nipype's worker processes follow the app's verbosity without losing the user's nipype.cfg.

The end-to-end check (no "[Node]" lines in a default run) is in tests/test_e2e.py.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys

import pytest

from bids_auton2n.cli.run import _worker_logging

USER_CFG = """[execution]
hash_method = content
crashdump_dir = %(here)s/crashes

[logging]
workflow_level = DEBUG
log_to_file = true
"""


@pytest.fixture
def user_config_dir(tmp_path, monkeypatch):
    user_dir = tmp_path / "home_nipype"
    user_dir.mkdir()
    (user_dir / "nipype.cfg").write_text(USER_CFG)
    monkeypatch.setenv("NIPYPE_CONFIG_DIR", str(user_dir))
    return user_dir


@pytest.mark.parametrize("verbosity, level", [(0, "WARNING"), (1, "INFO"), (2, "DEBUG")])
def test_levels_replaced_other_settings_kept(user_config_dir, tmp_path, verbosity, level):
    work = tmp_path / "work"
    with _worker_logging(work, verbosity) as config_dir:
        assert os.environ["NIPYPE_CONFIG_DIR"] == str(config_dir)
        assert config_dir.parent == work
        written = configparser.RawConfigParser()
        written.read(config_dir / "nipype.cfg")
    assert os.environ["NIPYPE_CONFIG_DIR"] == str(user_config_dir)  # restored
    assert {written.get("logging", key) for key in ("interface_level", "utils_level")} == {level}
    # at verbosity 0 a failing node's warnings stay out of the terminal (the summary names it)
    assert written.get("logging", "workflow_level") == ("ERROR" if verbosity == 0 else level)
    assert written.get("logging", "log_to_file") == "true"
    assert written.get("execution", "hash_method") == "content"
    assert written.get("execution", "crashdump_dir") == "%(here)s/crashes"  # copied verbatim
    assert (user_config_dir / "nipype.cfg").read_text() == USER_CFG


def test_without_user_config(tmp_path, monkeypatch):
    monkeypatch.setenv("NIPYPE_CONFIG_DIR", str(tmp_path / "absent"))
    with _worker_logging(tmp_path / "work", 0) as config_dir:
        written = configparser.RawConfigParser()
        written.read(config_dir / "nipype.cfg")
    assert written.sections() == ["logging"]
    assert os.environ["NIPYPE_CONFIG_DIR"] == str(tmp_path / "absent")


def test_fresh_process_importing_nipype_gets_the_levels(user_config_dir, tmp_path):
    """What a forkserver worker does: import Nipype with the environment of the run."""
    probe = ("import json, logging; from nipype import config; "
             "print(json.dumps([[logging.getLogger(n).level for n in "
             "('nipype.workflow', 'nipype.interface', 'nipype.utils')], "
             "config.get('execution', 'hash_method')]))")
    with _worker_logging(tmp_path / "work", 0):
        out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                             text=True, check=True, env={**os.environ, "NIPYPE_NO_ET": "1"})
    levels, hash_method = json.loads(out.stdout.splitlines()[-1])
    # logging.ERROR for the workflow at verbosity 0 (a failing node's warnings: the run's
    # summary names the image), logging.WARNING for the others
    assert levels == [40, 30, 30]
    assert hash_method == "content"
