"""Build-only tests of the participant workflow (as sMRIPrep's ``test_anatomical.py``): every
option of the command line, parsed into the config, builds a workflow that carries it; the
methods text follows the options; a saved run config builds the same workflow again."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from nipype.interfaces.base import isdefined

from bids_auton2n import config
from bids_auton2n.cli.parser import _build_parser, _DeprecatedAlias, parse_args
from bids_auton2n.reports.boilerplate import REFERENCES, render, write_boilerplate
from bids_auton2n.workflows.base import init_anat_denoise_wf, init_auton2n_wf

N_IMAGES = 5  # in the tiny_bids fixture
#: sub-01's run-1 and run-2 T1w are repeats (``--repeats auto``): one group, the other three
#: images denoised alone.
N_SINGLE, N_GROUPS = 3, 1


@pytest.fixture(scope="module")
def layout(tiny_bids):
    from bids_auton2n.utils.bids import make_layout

    return make_layout(tiny_bids)


def _walk(workflow, prefix: str = ""):
    """``(full name, node)`` of every node in ``workflow`` and its sub-workflows."""
    from nipype.pipeline import engine as pe

    for node in sorted(workflow._graph.nodes(), key=lambda n: n.name):
        if isinstance(node, pe.Workflow):
            yield from _walk(node, f"{prefix}{workflow.name}.")
        else:
            yield f"{prefix}{workflow.name}.{node.name}", node


def _nodes(workflow, name: str) -> list:
    """The nodes called ``name`` anywhere in ``workflow``."""
    return [node for _, node in _walk(workflow) if node.name == name]


def _inputs(workflow, name: str, field: str) -> list:
    return [getattr(node.inputs, field) for node in _nodes(workflow, name)]


def _everywhere(wf, single_node: str, field: str, value, repeats_field: str | None = None):
    """``field`` of every single-image ``single_node`` and of the repeats node is ``value``."""
    return (_inputs(wf, single_node, field) == [value] * N_SINGLE
            and _inputs(wf, "denoise_repeats", repeats_field or field) == [value] * N_GROUPS)


def _summary(workflow) -> dict:
    """Every node's full name and inputs (what a run of the workflow depends on)."""
    return {path: json.dumps(node.inputs.get_traitsfree(), sort_keys=True, default=str)
            for path, node in _walk(workflow)}


def _check_default(wf):
    assert len(_nodes(wf, "cnn_denoise")) == N_SINGLE
    assert len(_nodes(wf, "denoise_repeats")) == N_GROUPS
    assert _everywhere(wf, "cnn_denoise", "tta", True)
    assert _everywhere(wf, "rinlm_fusion", "fusion", True)
    assert _everywhere(wf, "rinlm_fusion", "guard", True)
    assert _everywhere(wf, "rinlm_fusion", "wiener", True)
    assert _inputs(wf, "denoise_repeats", "method") == ["consensus"]
    assert not _nodes(wf, "finetune") and not _nodes(wf, "ds_noise")


def _check_finetune(wf, budget=600.0):
    (finetune,) = _nodes(wf, "finetune")
    assert len(finetune.inputs.in_files) == N_IMAGES
    assert finetune.inputs.time_budget_s == budget
    assert _inputs(wf, "provenance", "finetuned") == [True] * N_SINGLE
    assert _inputs(wf, "repeats_provenance", "finetuned") == [True] * N_GROUPS
    experts_in = [edge for edge in wf._graph.edges(data=True) if edge[0] is finetune]
    assert len(experts_in) == 2  # one subject workflow per participant, each image fed


def _plugin(tmp_path):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: Linear\nplugin_args: {}\n")
    return str(plugin)


def _filter(tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t1w": {"run": [2]}}))
    return str(filters)


def _saved_config(tmp_path):
    """A run config saved by an earlier run with --no-tta --expert 5."""
    parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--no-tta",
                "--expert", "5"])
    return str(config.to_filename(tmp_path / "earlier" / "config.json"))


#: Every option of the command line: (arguments, check of the config and the workflow).
#: An argument given as a function of ``tmp_path`` is a file the option needs.
FLAGS = {
    "": _check_default,
    "--participant-label": (["--participant-label", "01"],
                            lambda wf: [n.name for n in wf._graph.nodes()] == ["sub_01_wf"]),
    "--session-label": (["--session-label", "2"],
                        lambda wf: len(_nodes(wf, "cnn_denoise")) == 1),
    "--bids-filter-file": (["--bids-filter-file", _filter],
                           lambda wf: [path.split(".")[2] for path, _ in _walk(wf)
                                       if path.endswith(".cnn_denoise")]
                           == ["anat_ses_1_run_2_T1w_wf"]),
    "--suffix": (["--suffix", "T2w"],
                 lambda wf: _inputs(wf, "estimate_noise", "contrast") == ["T2w", "T2w"]),
    "--skip-bids-validation": (["--skip-bids-validation"],
                               lambda wf: config.execution.skip_bids_validation),
    "--device": (["--device", "cpu"], lambda wf: _everywhere(wf, "cnn_denoise", "device", "cpu")),
    "--no-tta": (["--no-tta"], lambda wf: _everywhere(wf, "cnn_denoise", "tta", False)),
    "--no-fusion": (["--no-fusion"],
                    lambda wf: _everywhere(wf, "rinlm_fusion", "fusion", False)),
    "--no-guard": (["--no-guard"],
                   lambda wf: _everywhere(wf, "rinlm_fusion", "guard", False)
                   and _inputs(wf, "provenance", "guard") == [False] * N_SINGLE),
    "--no-wiener": (["--no-wiener"],
                    lambda wf: _everywhere(wf, "rinlm_fusion", "wiener", False)
                    and _inputs(wf, "provenance", "wiener") == [False] * N_SINGLE),
    "--noise-level": (["--noise-level", "4"],
                      lambda wf: _everywhere(wf, "estimate_noise", "noise_level", 4.0)),
    "--expert": (["--expert", "5"],
                 lambda wf: _everywhere(wf, "select_experts", "expert", 5.0)),
    # the repeats start from one expert, fine-tuned: there is nothing to blend
    "--blend-experts": (["--blend-experts"],
                        lambda wf: _inputs(wf, "select_experts", "blend") == [True] * N_SINGLE),
    "--finetune": (["--finetune"], _check_finetune),
    "--finetune-budget": (["--finetune", "--finetune-budget", "30"],
                          lambda wf: _check_finetune(wf, budget=30.0)),
    "--finetune-steps": (["--finetune", "--finetune-steps", "7"],
                         lambda wf: _nodes(wf, "finetune")[0].inputs.max_steps == 7),
    "--noise-model": (["--noise-model", "adaptive"],
                      lambda wf: _inputs(wf, "estimate_noise", "noise_model")
                      == ["adaptive"] * N_SINGLE),
    "--pair-source": (["--pair-source", "neighbouring-slices"],
                      lambda wf: _inputs(wf, "estimate_noise", "pair_source")
                      == ["neighbouring-slices"] * N_SINGLE),
    "--slice-pair-budget": (["--slice-pair-budget", "30"],
                            lambda wf: _inputs(wf, "slice_pair_finetune", "budget_s")
                            == [30.0] * N_SINGLE),
    "--slice-pair-steps": (["--slice-pair-steps", "3"],
                           lambda wf: _inputs(wf, "slice_pair_finetune", "max_steps")
                           == [3] * N_SINGLE),
    "--repeats": (["--repeats", "off"],
                  lambda wf: len(_nodes(wf, "cnn_denoise")) == N_IMAGES
                  and not _nodes(wf, "denoise_repeats")),
    "--repeats-across-sessions": (["--repeats-across-sessions"],
                                  lambda wf: config.workflow.repeats_across_sessions
                                  and len(_nodes(wf, "denoise_repeats")) == N_GROUPS),
    "--repeats-method": (["--repeats-method", "n2a"],
                         lambda wf: _inputs(wf, "denoise_repeats", "method") == ["n2a"]),
    "--repeats-budget": (["--repeats-budget", "30"],
                         lambda wf: _inputs(wf, "denoise_repeats", "budget_s") == [30.0]),
    "--repeats-steps": (["--repeats-steps", "7"],
                        lambda wf: _inputs(wf, "denoise_repeats", "max_steps") == [7]),
    "--write-noise-map": (["--write-noise-map"],
                          lambda wf: len(_nodes(wf, "ds_residual")) == N_IMAGES
                          and len(_nodes(wf, "ds_noise")) == N_SINGLE),  # sigma maps
    "--experts-dir": (["--experts-dir", lambda tmp_path: str(tmp_path / "experts")],
                      lambda wf: [str(dir_).endswith("/experts") for dir_ in
                                  (getattr(n.inputs, "experts_dir", None)
                                   for n in _nodes(wf, "inputnode")) if dir_ and isdefined(dir_)]
                      == [True] * (N_SINGLE + N_GROUPS)),
    "--work-dir": (["--work-dir", lambda tmp_path: str(tmp_path / "w")],
                   lambda wf: wf.base_dir.endswith("/w")),
    "--nprocs": (["--nprocs", "3"],
                 lambda wf: [n.n_procs for n in _nodes(wf, "cnn_denoise") + _nodes(
                     wf, "denoise_repeats")] == [3] * (N_SINGLE + N_GROUPS)),
    "--omp-nthreads": (["--nprocs", "4", "--omp-nthreads", "2"],
                       lambda wf: _everywhere(wf, "cnn_denoise", "omp_nthreads", 2)),
    "--mem-gb": (["--mem-gb", "4"],
                 lambda wf: config.nipype.get_plugin()["plugin_args"]["memory_gb"] == 4.0),
    "--use-plugin": (["--use-plugin", _plugin],
                     lambda wf: config.nipype.get_plugin()["plugin"] == "Linear"),
    "--stop-on-first-crash": (["--stop-on-first-crash"],
                              lambda wf: config.nipype.stop_on_first_crash),
    "--config-file": (["--config-file", _saved_config],
                      lambda wf: _everywhere(wf, "cnn_denoise", "tta", False)
                      and _everywhere(wf, "select_experts", "expert", 5.0)),
    "--reports-only": (["--reports-only"], lambda wf: config.execution.reports_only),
    "--notrack": (["--notrack"], _check_default),
    "--verbose": (["-v"], lambda wf: config.execution.verbosity == 1),
}
#: Options that print and exit instead of running.
NOT_A_RUN = {"--help", "--version"}


def test_every_option_has_a_build_test():
    # A deprecated alias is its replacement's option (tested in test_cli_options.py).
    options = {next(o for o in action.option_strings if o.startswith("--"))
               for action in _build_parser()._actions
               if action.option_strings and not isinstance(action, _DeprecatedAlias)}
    assert options - NOT_A_RUN == set(FLAGS) - {""}


@pytest.mark.parametrize("flag", list(FLAGS))
def test_workflow_builds_with(flag, tiny_bids, layout, tmp_path):
    args, check = FLAGS[flag] if flag else ([], FLAGS[flag])
    args = [arg(tmp_path) if callable(arg) else arg for arg in args]
    parse_args([str(tiny_bids), str(tmp_path / "out"), "participant", *args])
    workflow = init_auton2n_wf(layout=layout)
    workflow._create_flat_graph()  # every connection resolves
    assert check(workflow) is not False


@pytest.mark.parametrize("tta, fusion, guard, blend",
                         list(itertools.product((True, False), repeat=4)))
def test_image_workflow_builds_for_every_combination(tta, fusion, guard, blend):
    workflow = init_anat_denoise_wf(contrast="FLAIR", tta=tta, fusion=fusion, guard=guard,
                                    blend=blend)
    workflow._create_flat_graph()
    assert _inputs(workflow, "cnn_denoise", "tta") == [tta]
    assert _inputs(workflow, "rinlm_fusion", "fusion") == [fusion]
    assert _inputs(workflow, "select_experts", "blend") == [blend]


def test_saved_config_loads_back_and_builds_the_same_workflow(tiny_bids, layout, tmp_path):
    parse_args([str(tiny_bids), str(tmp_path / "out"), "participant", "--no-fusion",
                "--noise-level", "3", "--suffix", "T1w", "--nprocs", "2", "--finetune",
                "--participant-label", "02", "-w", str(tmp_path / "work")])
    saved, first = config.to_dict(), _summary(init_auton2n_wf(layout=layout))
    path = config.to_filename(tmp_path / "config.json")
    config.reset()
    config.load(path)
    loaded = config.to_dict()
    assert loaded["execution"].pop("run_uuid") != saved["execution"].pop("run_uuid")
    assert loaded == saved
    assert isinstance(config.execution.work_dir, type(tmp_path))
    assert _summary(init_auton2n_wf(layout=layout)) == first
    # repeated from the command line, an option given there takes precedence
    parse_args([str(tiny_bids), str(tmp_path / "out"), "participant", "--config-file", str(path),
                "--no-tta"])
    assert config.workflow.noise_level == 3.0 and config.workflow.finetune
    assert not config.workflow.fusion and not config.workflow.tta
    assert config.execution.participant_label == ["02"]


def test_config_file_errors(tiny_bids, tmp_path):
    from bids_auton2n.utils.bids import BIDSAppError

    base = [str(tiny_bids), str(tmp_path / "out"), "participant", "--config-file"]
    with pytest.raises(BIDSAppError) as missing:
        parse_args([*base, str(tmp_path / "none.json")])
    assert missing.value.exit_code == 66
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"workflow": {"not_a_setting": 1}}))
    with pytest.raises(BIDSAppError) as unknown:
        parse_args([*base, str(wrong)])
    assert unknown.value.exit_code == 64 and "not_a_setting" in str(unknown.value)


@pytest.mark.parametrize("args, says, not_says", [
    ([], ["test-time augmentation", "RI-NLM", "collaborative Wiener", "do-no-harm guard",
          "nearest to the estimate"],
     ["without test-time", "fine-tuned", "set by the user"]),
    (["--no-tta", "--no-fusion", "--no-guard", "--no-wiener"],
     ["without test-time augmentation", "No RI-NLM fusion"], ["do-no-harm", "Wiener"]),
    (["--noise-level", "4", "--blend-experts", "--finetune"],
     ["set by the user to 4 %", "blended", "fine-tuned"], ["was estimated"]),
    (["--expert", "7"], ["trained for 7 % noise was used (user choice)"], ["blended"]),
    ([], ["Each image with thick slices"], ["local noise map"]),
    (["--noise-model", "auto"], ["A local noise map", "Where that map varied"], []),
    (["--noise-model", "global", "--pair-source", "synthetic-patches"], [],
     ["local noise map", "neighbouring slices"]),
    (["--noise-model", "adaptive", "--pair-source", "neighbouring-slices"],
     ["Each region was denoised by the experts of its local noise level",
      "Each image was denoised by the selected expert, trained further on the image's own pairs "
      "of neighbouring slices"], ["Where that map varied"]),
])
def test_methods_text_follows_the_workflow(args, says, not_says, tiny_bids, layout, tmp_path):
    from importlib.metadata import version

    from bids_auton2n import __version__

    parse_args([str(tiny_bids), str(tmp_path / "out"), "participant", *args])
    markdown = write_boilerplate(tmp_path / "out", init_auton2n_wf(layout=layout)).read_text()
    for text in says:
        assert text in markdown
    for text in not_says:
        assert text not in markdown
    # once for the whole run, however many images
    assert markdown.count("The network was applied in sliding windows") == 1
    for package in ("nipype", "torch", "monai", "numba", "nibabel", "pybids"):
        assert version(package) in markdown, package
    assert f"bids-auton2n {__version__}" in markdown
    body, references = markdown.split("### References")
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", body)}
    assert cited == set(range(1, len(references.strip().splitlines()) + 1))
    bib = (tmp_path / "out" / "logs" / "CITATION.bib").read_text()
    assert f"version = {{{__version__}}}" in bib and bib.count("\n@") + 1 == len(cited)


def test_unknown_citation_is_refused():
    assert render("as in [@nipype] and [@nipype]") == ("as in [1] and [1]", ["nipype"])
    with pytest.raises(KeyError, match="nope"):
        render("see [@nope]")
    assert "bids_auton2n" not in REFERENCES  # its entry carries the running version
