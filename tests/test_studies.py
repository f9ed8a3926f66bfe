"""The studies of ``bids_auton2n-bench`` and the calibration command: they run from the package,
and every command the docs name exists."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_calibration_fit import synthetic_table

from bids_auton2n.bench.__main__ import main as bench_main
from bids_auton2n.bench.studies import STUDIES
from bids_auton2n.bench.studies._common import NOTES_MARKER, write_keeping_notes
from bids_auton2n.cli.calibrate_noise import main as calibrate_main

ROOT = Path(__file__).resolve().parents[1]


def test_bench_help_lists_every_study(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_main(["--help"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in STUDIES)


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_study_builds_its_command_line(name, capsys):
    """Each study imports from the package (no sys.path) and parses its own options."""
    with pytest.raises(SystemExit) as exit_:
        bench_main([name, "--help"])
    assert exit_.value.code == 0
    assert f"usage: bids_auton2n-bench {name}" in capsys.readouterr().out


def test_a_study_runs_end_to_end(tmp_path, capsys, one_torch_thread):
    """cnn-throughput on a tiny block of a generated volume: its whole table is printed."""
    volume = tmp_path / "block.nii.gz"
    rng = np.random.default_rng(0)
    nib.Nifti1Image((100 + 10 * rng.standard_normal((20, 20, 20))).astype(np.float32),
                    np.eye(4)).to_filename(volume)
    code = bench_main(["cnn-throughput", "--input", str(volume), "--size", "16", "--repeats", "1",
                       "--threads", "1", "--tiles", "16", "--mm-size", "64", "--clock-ghz", "1"])
    assert code == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 4 + 1 + 1  # header, four variants, one tile size, one thread
    assert any(row.startswith("| fp32 |") and row.endswith("| yes |") for row in rows)


def test_results_file_keeps_the_hand_written_reading(tmp_path):
    results = tmp_path / "study.md"
    write_keeping_notes(results, "# table v1\n")
    results.write_text(results.read_text() + "my reading\n")
    write_keeping_notes(results, "# table v2\n")
    text = results.read_text()
    assert text.startswith("# table v2\n") and "v1" not in text
    assert text.endswith(NOTES_MARKER + "\nmy reading\n")


def test_calibration_command_fits_and_records_itself(tmp_path, capsys):
    """From cached raw statistics (a synthetic table with a known slope), the command writes a
    calibration record the estimator can read, naming the command that made it."""
    cache, output = tmp_path / "table.npz", tmp_path / "calibration.json"
    np.savez(cache, **synthetic_table(slope=0.97))
    assert calibrate_main(["--cache", str(cache), "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert record["model"]["slope"] == pytest.approx(0.97, abs=5e-3)
    assert record["command"] == f"bids_auton2n-calibrate-noise --cache {cache} --output {output}"
    assert json.loads(capsys.readouterr().out)["model"] == record["model"]


def _tracked_text_files():
    listed = subprocess.run(["git", "ls-files", "*.md", "*.py", "*.cfg", "*.toml", "*.sh", "*.yml"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed if not name.startswith("tests/")]


def test_scripts_holds_only_maintenance_tools():
    assert not list((ROOT / "scripts").glob("*.py"))


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_docs_name_only_commands_and_scripts_that_exist():
    """Every ``scripts/...`` path and every ``bids_auton2n-bench STUDY`` the code and the docs
    name (how to rerun a result) exists (the tests may name old ones, as history)."""
    known = set(STUDIES)
    missing = []
    for path in _tracked_text_files():
        text = path.read_text(errors="replace")
        for script in re.findall(r"\bscripts/[\w.-]+\.\w+", text):
            if not (ROOT / script).is_file():
                missing.append(f"{path.relative_to(ROOT)}: {script}")
        for study in re.findall(r"bids_auton2n-bench\s+([a-z][\w-]*)", text):
            if study not in known:
                missing.append(f"{path.relative_to(ROOT)}: bids_auton2n-bench {study}")
    assert not missing


def test_final_stage_study_scores_every_variant(one_torch_thread):
    """final-stage on a small generated head: every variant scored, the Wiener stage helps."""
    from bids_auton2n.bench.studies.final_stage import FLIP_SETS, WIENER_VARIANTS, measure
    from bids_auton2n.denoise.experts import ExpertRegistry
    from bids_auton2n.denoise.phantom import synthetic_head

    head = synthetic_head((36, 40, 36), "T1w", np.random.default_rng(0))
    score = measure(head, 5.0, 1, ExpertRegistry())
    assert all(f"+ Wiener, {name}" in score for name in FLIP_SETS)
    assert all(name in score for name in WIENER_VARIANTS)
    default = next(name for name in WIENER_VARIANTS if name.startswith("Wiener (default"))
    assert score[default] > score["CNN + RI-NLM + guard, 2 flips"] + 0.3
    assert score[default] > score["noisy"] + 1.5
    # The default row is the pipeline's final stage (same CNN output, so the same image).
    assert score[default] == score["+ Wiener, 2 flips"]
    assert 4.0 < score["estimated noise (%)"] < 6.0
