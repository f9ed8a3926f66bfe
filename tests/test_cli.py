"""Command-line errors and their BIDS execution-spec exit codes (no denoising runs here)."""

from __future__ import annotations

import json
import shutil

import pytest

from bids_auton2n.cli.run import main


@pytest.fixture
def bids_copy(tiny_bids, tmp_path):
    """Writable copy of the tiny dataset (some tests add files to it)."""
    return shutil.copytree(tiny_bids, tmp_path / "bids")


def run(*args):
    return main([str(a) for a in args])


def test_help_states_no_telemetry(capsys):
    with pytest.raises(SystemExit) as exc:
        run("--help")
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "No telemetry" in text and "--notrack" in text
    assert "--experts-dir" not in text  # hidden development option


def test_version(capsys):
    from bids_auton2n import __version__

    with pytest.raises(SystemExit) as exc:
        run("--version")
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_missing_bids_dir_is_noinput(tmp_path, capsys):
    assert run(tmp_path / "nope", tmp_path / "out", "participant") == 66
    assert "does not exist" in capsys.readouterr().err


def test_not_a_bids_folder(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    assert run(tmp_path / "raw", tmp_path / "out", "participant") == 16
    assert "dataset_description.json" in capsys.readouterr().err


def test_unknown_analysis_level(tiny_bids, tmp_path, capsys):
    assert run(tiny_bids, tmp_path / "out", "session") == 17
    assert "unknown analysis level" in capsys.readouterr().err


def test_bad_option_is_usage_error(tiny_bids, tmp_path):
    assert run(tiny_bids, tmp_path / "out", "participant", "--nprocs", "0") == 64
    assert run(tiny_bids, tmp_path / "out", "participant", "--no-such-flag") == 64
    assert run(tiny_bids, tmp_path / "out", "participant", "--expert", "3",
               "--blend-experts") == 64


def test_output_inside_input_dataset(bids_copy, tmp_path, capsys):
    assert run(bids_copy, bids_copy / "out", "participant") == 64
    assert "inside the input dataset" in capsys.readouterr().err
    assert not (bids_copy / "out").exists()
    # the work directory may not be there either
    assert run(bids_copy, tmp_path / "out", "participant", "-w", bids_copy / "work") == 64


def test_output_under_derivatives_allowed(bids_copy, tmp_path, test_experts_dir):
    # gets past the path check; stops at the label selection (nothing denoised)
    code = run(bids_copy, bids_copy / "derivatives" / "auton2n", "participant",
               "--participant-label", "99", "--experts-dir", test_experts_dir,
               "-w", tmp_path / "work")
    assert code == 18


def test_unknown_participant_label(tiny_bids, tmp_path, test_experts_dir, capsys):
    code = run(tiny_bids, tmp_path / "out", "participant", "--participant-label", "sub-01",
               "07", "--experts-dir", test_experts_dir, "-w", tmp_path / "work")
    assert code == 18
    err = capsys.readouterr().err
    assert "07" in err and "available: 01, 02" in err


def test_unknown_session_label(tiny_bids, tmp_path, test_experts_dir):
    assert run(tiny_bids, tmp_path / "out", "participant", "--session-label", "ses-9",
               "-w", tmp_path / "work") == 18


def test_filters_select_nothing(tiny_bids, tmp_path, capsys):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t1w": {"acquisition": "mprage"}}))
    code = run(tiny_bids, tmp_path / "out", "participant", "--bids-filter-file", filters,
               "-w", tmp_path / "work")
    assert code == 18
    assert "matches the selection" in capsys.readouterr().err


def test_filter_file_errors(tiny_bids, tmp_path):
    assert run(tiny_bids, tmp_path / "out", "participant", "--bids-filter-file",
               tmp_path / "missing.json") == 66
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert run(tiny_bids, tmp_path / "out", "participant", "--bids-filter-file", bad) == 64


def test_no_anatomical_images(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    assert run(raw, tmp_path / "out", "participant", "-w", tmp_path / "work") == 66
    assert "no anatomical image" in capsys.readouterr().err


def test_invalid_bids_names_and_skip_validation(bids_copy, tmp_path, capsys):
    (bids_copy / "sub-01" / "ses-1" / "anat" / "notes_T1w.txt").write_text("x")
    assert run(bids_copy, tmp_path / "out", "participant", "-w", tmp_path / "work") == 16
    assert "notes_T1w.txt" in capsys.readouterr().err
    # skipping validation goes on to the selection (label 99 does not exist)
    assert run(bids_copy, tmp_path / "out", "participant", "--skip-bids-validation",
               "--participant-label", "99", "-w", tmp_path / "work") == 18


def test_missing_expert_weights(tiny_bids, tmp_path, capsys):
    empty = tmp_path / "no_experts"
    empty.mkdir()
    code = run(tiny_bids, tmp_path / "out", "participant", "--experts-dir", empty,
               "-w", tmp_path / "work")
    assert code == 66
    err = capsys.readouterr().err
    assert "expert weights unavailable" in err and "manifest" in err


def test_missing_expert_file_named(tmp_path, test_experts_dir, tiny_bids, capsys):
    broken = shutil.copytree(test_experts_dir, tmp_path / "experts")
    victim = sorted(broken.glob("*.pt"))[0]
    victim.unlink()
    assert run(tiny_bids, tmp_path / "out", "participant", "--experts-dir", broken,
               "-w", tmp_path / "work") == 66
    assert victim.name in capsys.readouterr().err


def test_plugin_file_errors(tiny_bids, tmp_path):
    assert run(tiny_bids, tmp_path / "out", "participant", "--use-plugin",
               tmp_path / "none.yml") == 66
    bad = tmp_path / "plugin.yml"
    bad.write_text("n_procs: 2\n")
    assert run(tiny_bids, tmp_path / "out", "participant", "--use-plugin", bad) == 64


def test_group_before_participant(tiny_bids, tmp_path, capsys):
    assert run(tiny_bids, tmp_path / "out", "group") == 66
    assert "participant level first" in capsys.readouterr().err


def test_cannot_create_output(tiny_bids, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert run(tiny_bids, blocker / "out", "participant", "-w", tmp_path / "work") == 73


def test_parser_fills_config(tiny_bids, tmp_path):
    from bids_auton2n import config
    from bids_auton2n.cli.parser import parse_args

    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: Linear\nplugin_args: {}\n")
    parse_args([str(tiny_bids), str(tmp_path / "out"), "participant", "--participant-label",
                "sub-01", "--session-label", "ses-1", "--suffix", "T2w", "--no-tta",
                "--no-fusion", "--no-guard", "--noise-level", "4", "--nprocs", "2",
                "--omp-nthreads", "8",
                "--use-plugin", str(plugin)])
    assert config.execution.participant_label == ["01"]
    assert config.execution.session_label == ["1"]
    assert config.execution.suffixes == ["T2w"]
    assert not config.workflow.tta and not config.workflow.fusion and not config.workflow.guard
    assert config.workflow.noise_level == 4.0
    assert config.nipype.omp_nthreads == 2  # capped at nprocs
    assert config.nipype.get_plugin() == {"plugin": "Linear", "plugin_args": {}}
    saved = json.loads(config.to_filename(tmp_path / "config.json").read_text())
    assert saved["execution"]["bids_dir"] == str(tiny_bids)
