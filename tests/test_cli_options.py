"""The two commands' options: one spelling each, honest help, fast errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bids_auton2n import config
from bids_auton2n.cli import denoise as denoise_cli
from bids_auton2n.cli.parser import _build_parser, parse_args

#: Options of the denoiser that both commands take.
SHARED = ("--device", "--no-tta", "--no-fusion", "--no-guard", "--noise-level", "--expert",
          "--blend-experts", "--omp-nthreads")


def _actions(parser):
    return {option: action for action in parser._actions for option in action.option_strings}


@pytest.mark.parametrize("build", [_build_parser, denoise_cli.build_parser],
                         ids=["bids_auton2n", "bids_auton2n-denoise"])
def test_help_shows_no_meaningless_defaults(build):
    text = " ".join(build().format_help().split())
    for meaningless in ("(default: True)", "(default: False)", "(default: None)",
                        "(default: [])"):
        assert meaningless not in text
    assert "(default: auto)" in text  # real defaults are still shown
    assert "--blend " not in text and "--threads" not in text  # aliases stay out of the help


def test_both_commands_name_the_shared_options_the_same():
    app, single = _actions(_build_parser()), _actions(denoise_cli.build_parser())
    for option in SHARED:
        assert option in app and option in single, option
        a, s = app[option], single[option]
        assert (a.dest, a.type, a.nargs, a.const, a.metavar) == \
            (s.dest, s.type, s.nargs, s.const, s.metavar), option
        assert a.help.split(";")[0] == s.help.split(";")[0], option


def test_deprecated_spellings_still_work(tiny_bids, tmp_path, capsys):
    parse_args([str(tiny_bids), str(tmp_path / "out"), "participant", "--blend",
                "--threads", "1", "--nprocs", "2"])
    assert config.workflow.blend is True and config.nipype.omp_nthreads == 1
    err = capsys.readouterr().err
    assert "--blend is deprecated, use --blend-experts" in err
    assert "--threads is deprecated, use --omp-nthreads" in err
    opts = denoise_cli.build_parser().parse_args(["in.nii.gz", "out.nii.gz", "--blend",
                                                  "--threads", "3"])
    assert opts.blend is True and opts.omp_nthreads == 3


@pytest.mark.parametrize("argv", [
    ["--noise-level", "-1"], ["--expert", "0"], ["--omp-nthreads", "0"], ["--device", "tpu"],
])
def test_bad_shared_values_are_usage_errors_in_both(tiny_bids, tmp_path, argv):
    from bids_auton2n.cli.run import main

    assert main([str(tiny_bids), str(tmp_path / "out"), "participant", *argv]) == 64
    with pytest.raises(SystemExit) as exc:
        denoise_cli.run([str(tmp_path / "in.nii.gz"), str(tmp_path / "out.nii.gz"), *argv])
    assert exc.value.code == 64


def test_missing_input_is_reported_before_the_heavy_imports(tmp_path):
    """The single-image command names a missing file without importing torch or numba."""
    probe = (
        "import sys; from bids_auton2n.cli.denoise import run; "
        f"code = run([{str(tmp_path / 'missing_T1w.nii.gz')!r}, {str(tmp_path / 'o.nii.gz')!r}]); "
        "print(code, *(m in sys.modules for m in ('torch', 'numba', 'nibabel', 'nipype')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.split() == ["66", "False", "False", "False", "False"], done.stderr
    assert done.stderr.strip() == (f"bids_auton2n-denoise: error: "
                                   f"{tmp_path / 'missing_T1w.nii.gz'}: no such file")


def test_finetune_step_limit_reaches_the_finetune_node(tiny_bids, tmp_path):
    from bids_auton2n.workflows.base import init_auton2n_wf

    parse_args([str(tiny_bids), str(tmp_path / "out"), "participant", "-w",
                str(tmp_path / "work"), "--finetune", "--finetune-steps", "3"])
    assert config.workflow.finetune_steps == 3
    assert init_auton2n_wf().get_node("finetune").inputs.max_steps == 3
