"""Command line of the BIDS-App: builds the argument parser and fills :mod:`~bids_auton2n.config`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import __version__
from ..utils.bids import BIDSAppError
from ..utils.exit_codes import EXIT_NOINPUT, EXIT_UNKNOWN_LEVEL, EXIT_USAGE

ANALYSIS_LEVELS = ("participant", "group")


class _Parser(argparse.ArgumentParser):
    """argparse with the BIDS execution-spec exit code for usage errors (64, not 2)."""

    def error(self, message):
        raise BIDSAppError(f"{self.prog}: error: {message}", EXIT_USAGE)


def _drop_sub(value: str) -> str:
    return _label(value.removeprefix("sub-"), "participant")


def _drop_ses(value: str) -> str:
    return _label(value.removeprefix("ses-"), "session")


def _label(value: str, what: str) -> str:
    """A BIDS label, or a usage error (``../x``, spaces, non-ASCII letters)."""
    from ..utils.inputs import check_label

    try:
        return check_label(value, what)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {value}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {value}")
    return number


def _device(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, except where it says nothing: flags (a flag's default is
    that it is not given, so ``--no-tta`` would read "(default: True)"), unset and empty
    defaults."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.default in (None, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option: does what the new one does, after a warning."""

    def __init__(self, option_strings, dest, *, replacement, **kwargs):
        self.replacement = replacement
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated, use {self.replacement}",
              file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def _add_deprecated_alias(group, old: str, action: argparse.Action) -> None:
    group.add_argument(old, action=_DeprecatedAlias, replacement=action.option_strings[0],
                       dest=action.dest, nargs=action.nargs, const=action.const,
                       type=action.type, metavar=action.metavar, help=argparse.SUPPRESS)


def add_denoising_options(group) -> None:
    """The options of the denoiser itself, one definition for ``bids_auton2n`` and
    ``bids_auton2n-denoise`` (same names, types, defaults and help in both)."""
    group.add_argument("--device", type=_device, default="auto",
                       help="torch device: auto (CUDA if available), cpu, cuda or cuda:N")
    group.add_argument("--no-tta", dest="tta", action="store_false",
                       help="skip the flip test-time augmentation (2x faster CNN stage)")
    group.add_argument("--no-fusion", dest="fusion", action="store_false",
                       help="skip the RI-NLM fusion (output the CNN mixture only)")
    group.add_argument("--no-wiener", dest="wiener", action="store_false",
                       help="skip the collaborative Wiener stage that re-estimates the image "
                       "from the noisy data with the fused image as pilot")
    group.add_argument("--no-guard", dest="guard", action="store_false",
                       help="skip the do-no-harm guard, which gives back what the denoiser "
                       "removed beyond what the estimated noise explains")
    group.add_argument("--noise-level", type=_non_negative_float, metavar="PERCENT",
                       help="use this noise level (percent of the reference tissue) "
                       "instead of estimating it")
    group.add_argument("--expert", type=_positive_float, metavar="PERCENT",
                       help="use the expert trained at this noise level instead of the "
                       "nearest to the estimate")
    blend = group.add_argument("--blend-experts", dest="blend", action="store_true",
                               help="blend the two experts bracketing the noise level")
    _add_deprecated_alias(group, "--blend", blend)
    group.add_argument("--noise-model", choices=("auto", "global", "adaptive"), default="global",
                       help="global (default): one noise level per image; adaptive: a local "
                       "noise map routes each region to the experts of its level and gives "
                       "RI-NLM and the guard their local sigma; auto: adaptive where the map "
                       "says the noise varies across the head. On real anatomy the adaptive "
                       "path loses to the global one (docs/noise-models.md)")
    group.add_argument("--pair-source", choices=("auto", "synthetic-patches",
                                                 "neighbouring-slices"), default="auto",
                       help="neighbouring-slices: fine-tune the selected expert on the "
                       "image's own neighbouring-slice pairs (NS-N2N) and apply it slice by "
                       "slice; auto: for thick slices (slice spacing >= 2x in-plane)")
    group.add_argument("--slice-pair-budget", type=_positive_float, default=300.0,
                       metavar="SECONDS", help="time budget of the neighbouring-slice "
                       "fine-tuning of one image, all of it")
    group.add_argument("--slice-pair-steps", type=_positive_int, metavar="N",
                       help="stop the neighbouring-slice fine-tuning after N Adam steps (the "
                       "same result on any machine, within the time budget)")


def add_threads_option(group, *, default_help: str) -> None:
    """``--omp-nthreads`` (NiPreps' name; ``--threads`` is its deprecated alias)."""
    threads = group.add_argument(
        "--omp-nthreads", type=_positive_int, default=None, metavar="N",
        help=f"threads per process (torch, numba); default {default_help}")
    _add_deprecated_alias(group, "--threads", threads)


def _build_parser() -> argparse.ArgumentParser:
    from ..config import DEFAULT_SUFFIXES
    from ..utils.repeats import (
        DEFAULT_REPEAT_METHOD, REPEAT_METHODS, REPEATS_BUDGET_S, REPEATS_MODES,
    )

    parser = _Parser(
        prog="bids_auton2n",
        description=(
            f"bids-auton2n {__version__}: self-supervised denoising of anatomical MRI "
            "(T1w, T2w, FLAIR, PDw) with the Auto-N2N mixture of 3D CNN experts fused with "
            "RI-NLM, as a BIDS-App. Run the participant level first, then the group level "
            "on the same output directory."
        ),
        epilog=(
            "Exit codes (BIDS execution specification): 0 success; 1 some images failed "
            "(the others are written, see the report); 16 input failed BIDS validation; 17 "
            "unknown analysis level; 18 the participant/session/filter selection matched "
            "nothing; 64 usage error; 66 missing input (dataset, filter file, expert "
            "weights); 73 the output directory cannot be created. "
            "No telemetry: bids-auton2n never sends usage data anywhere."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset")
    parser.add_argument(
        "output_dir", type=Path,
        help="output (derivatives) directory; must not be inside bids_dir except under "
        "bids_dir/derivatives/",
    )
    parser.add_argument(
        "analysis_level", metavar="{participant,group}",
        help="participant: denoise the selected images; group: QC table and report over "
        "everything denoised in output_dir",
    )
    parser.add_argument("--version", action="version", version=f"bids-auton2n {__version__}")

    g_bids = parser.add_argument_group("Selecting the inputs")
    g_bids.add_argument(
        "--participant-label", "--participant_label", nargs="+", type=_drop_sub, default=[],
        metavar="LABEL", help="participants to process (with or without 'sub-'); default all",
    )
    g_bids.add_argument(
        "--session-label", "--session_label", nargs="+", type=_drop_ses, default=[],
        metavar="LABEL", help="sessions to process (with or without 'ses-'); default all",
    )
    g_bids.add_argument(
        "--bids-filter-file", type=Path, metavar="FILE",
        help="JSON file of pybids entity filters for the anatomical query, e.g. "
        '{"acquisition": "mprage", "run": [1]} (fMRIPrep-style {"t1w": {...}} also works)',
    )
    g_bids.add_argument(
        "--suffix", nargs="+", choices=DEFAULT_SUFFIXES, default=list(DEFAULT_SUFFIXES),
        help="anatomical suffixes to denoise",
    )
    g_bids.add_argument(
        "--skip-bids-validation", "--skip_bids_validation", action="store_true",
        help="do not check file names against the BIDS specification (the check is offline "
        "and needs no Node.js validator)",
    )

    g_den = parser.add_argument_group("Denoising")
    add_denoising_options(g_den)
    g_den.add_argument("--finetune", action="store_true",
                       help="fine-tune the selected expert on this dataset (self-supervised, "
                       "shared by all images of the run) before denoising")
    g_den.add_argument("--finetune-budget", type=_positive_float, default=600.0,
                       metavar="SECONDS", help="time budget of --finetune, preparation of "
                       "the training images included")
    g_den.add_argument("--finetune-steps", type=_positive_int, metavar="N",
                       help="stop --finetune after N Adam steps (the same result on any "
                       "machine, within the time budget)")
    g_rep = parser.add_argument_group(
        "Repeated acquisitions",
        "Images of one subject and session with the same entities but run (or echo) are "
        "repeats of one image: they are aligned rigidly to the first, the expert is "
        "fine-tuned on them and the denoised runs are averaged on the first run's grid "
        "(desc-denoised without the run entity). An implausible alignment falls back to "
        "denoising each image on its own, with a warning in the report.")
    g_rep.add_argument("--repeats", choices=REPEATS_MODES, default="auto",
                       help="auto: combine repeated acquisitions; off: denoise every image on "
                       "its own")
    g_rep.add_argument("--repeats-across-sessions", action="store_true",
                       help="also combine repeats from different sessions (anatomy can change "
                       "between sessions)")
    g_rep.add_argument("--repeats-method", choices=REPEAT_METHODS, default=DEFAULT_REPEAT_METHOD,
                       help="fine-tuning on the aligned runs: consensus Noise2Noise (each run "
                       "predicts the other) or n2a (Noise2Average: each run maps to the average, "
                       "iterated)")
    g_rep.add_argument("--repeats-budget", type=_positive_float, default=REPEATS_BUDGET_S,
                       metavar="SECONDS", help="fine-tuning time budget per group of repeats")
    g_rep.add_argument("--repeats-steps", type=_positive_int, metavar="N",
                       help="stop the fine-tuning of a group of repeats after N Adam steps "
                       "(the same result on any machine, within the time budget)")
    g_den.add_argument("--write-noise-map", action="store_true",
                       help="also write the local noise level map (sigma, image units) as "
                       "desc-noise and the residual (input - denoised) as desc-residual")
    g_den.add_argument("--experts-dir", type=Path, help=argparse.SUPPRESS)

    g_perf = parser.add_argument_group("Performance and execution")
    g_perf.add_argument("-w", "--work-dir", type=Path,
                        help="Nipype working directory; re-running with the same one "
                        "resumes and skips finished steps (default: ./work, or "
                        "$TMPDIR/bids_auton2n-<uid>/work where the current folder is "
                        "read-only, as in a read-only container)")
    g_perf.add_argument("--nprocs", "--nthreads", "--n_cpus", type=_positive_int,
                        default=os.cpu_count() or 1, help="maximum number of processes")
    add_threads_option(g_perf, default_help="min(nprocs, 8)")
    g_perf.add_argument("--mem-gb", "--mem", type=_positive_float, metavar="GB",
                        help="memory limit: the scheduler keeps to it, and each image's "
                        "denoising fits its share (as many images at once as --nprocs / "
                        "--omp-nthreads) by working in slabs and tiles; default unlimited")
    g_perf.add_argument("--use-plugin", type=Path, metavar="FILE",
                        help="Nipype plugin YAML, e.g. {plugin: SLURM, plugin_args: {...}}")
    g_perf.add_argument("--stop-on-first-crash", action="store_true",
                        help="stop at the first failing step instead of finishing the "
                        "other images")
    g_perf.add_argument("--config-file", type=Path, metavar="FILE",
                        help="repeat an earlier run: its settings, saved in "
                        "<work-dir>/runs/<run>/config.json; the options given here that differ "
                        "from their defaults take precedence")
    g_perf.add_argument("--reports-only", action="store_true",
                        help="only (re)build the reports from an earlier run's outputs")
    g_perf.add_argument("--notrack", action="store_true",
                        help="accepted for compatibility with NiPreps; bids-auton2n has no "
                        "telemetry at all, so this changes nothing")
    g_perf.add_argument("-v", "--verbose", dest="verbosity", action="count", default=0,
                        help="more log messages (-vv for debug)")
    return parser


#: Settings the command line always gives, also when it repeats a run (``--config-file``).
_FROM_COMMAND_LINE = {("execution", "bids_dir"), ("execution", "output_dir"),
                      ("execution", "analysis_level")}


def parse_args(args=None) -> None:
    """Parse ``args`` and fill :mod:`bids_auton2n.config`.

    With ``--config-file`` the settings of the earlier run are loaded
    (:func:`bids_auton2n.config.load`), then every setting the command line gives a value other
    than its default, and the positional arguments, replace theirs.

    Raises
    ------
    BIDSAppError
        Usage errors (64), unknown analysis level (17), missing filter/plugin/config files (66).
    """
    opts = _build_parser().parse_args(args)
    _fill_config(opts)
    if opts.config_file:
        _repeat_run(opts)


def _repeat_run(opts) -> None:
    """Settings of ``opts.config_file`` where the command line left the defaults."""
    import json

    from .. import config

    if not opts.config_file.is_file():
        raise BIDSAppError(f"{opts.config_file}: config file does not exist", EXIT_NOINPUT)
    chosen = config.to_dict()
    _fill_config(_build_parser().parse_args(
        [str(opts.bids_dir), str(opts.output_dir), opts.analysis_level]))
    defaults = config.to_dict()
    try:
        config.load(opts.config_file)
    except (ValueError, TypeError, AttributeError) as exc:  # json.JSONDecodeError is a ValueError
        raise BIDSAppError(f"{opts.config_file}: not a bids_auton2n config file ({exc})",
                           EXIT_USAGE) from None
    merged = config.to_dict()
    for section, values in chosen.items():
        for key, value in values.items():
            if value != defaults[section][key] or (section, key) in _FROM_COMMAND_LINE:
                merged[section][key] = value
    config.from_dict(json.loads(json.dumps(merged)), new_run=False)


def _fill_config(opts) -> None:
    """Set :mod:`bids_auton2n.config` from parsed options (defaults for the rest)."""
    import yaml

    from .. import config
    from ..utils.bids import load_bids_filters
    from ..utils.environment import default_work_dir

    if opts.analysis_level not in ANALYSIS_LEVELS:
        raise BIDSAppError(
            f"unknown analysis level {opts.analysis_level!r} "
            f"(choose {' or '.join(ANALYSIS_LEVELS)})",
            EXIT_UNKNOWN_LEVEL,
        )
    config.reset()
    execution, settings, nipype = config.execution, config.workflow, config.nipype
    execution.bids_dir = opts.bids_dir.absolute()
    execution.output_dir = opts.output_dir.absolute()
    execution.work_dir = opts.work_dir.absolute() if opts.work_dir else default_work_dir()
    execution.analysis_level = opts.analysis_level
    execution.participant_label = sorted(set(opts.participant_label))
    execution.session_label = sorted(set(opts.session_label))
    execution.suffixes = list(dict.fromkeys(opts.suffix))
    execution.skip_bids_validation = opts.skip_bids_validation
    execution.reports_only = opts.reports_only
    execution.verbosity = opts.verbosity
    experts_dir = opts.experts_dir or os.getenv(config.EXPERTS_DIR_ENV)
    execution.experts_dir = Path(experts_dir).absolute() if experts_dir else None
    if opts.bids_filter_file:
        execution.bids_filters = load_bids_filters(opts.bids_filter_file)

    settings.device = opts.device
    settings.tta = opts.tta
    settings.fusion = opts.fusion
    settings.guard = opts.guard
    settings.wiener = opts.wiener
    settings.noise_level = opts.noise_level
    settings.expert = opts.expert
    settings.blend = opts.blend
    settings.finetune = opts.finetune
    settings.finetune_budget_s = opts.finetune_budget
    settings.finetune_steps = opts.finetune_steps
    settings.write_noise_map = opts.write_noise_map
    settings.noise_model = opts.noise_model
    settings.pair_source = opts.pair_source
    settings.slice_pair_budget_s = opts.slice_pair_budget
    settings.slice_pair_steps = opts.slice_pair_steps
    if opts.noise_model == "adaptive" and opts.noise_level is not None:
        raise BIDSAppError("--noise-model adaptive needs the noise estimate (a local map), "
                           "not --noise-level", EXIT_USAGE)
    settings.repeats = opts.repeats
    settings.repeats_across_sessions = opts.repeats_across_sessions
    settings.repeats_method = opts.repeats_method
    settings.repeats_budget_s = opts.repeats_budget
    settings.repeats_steps = opts.repeats_steps
    if opts.expert is not None and opts.blend:
        raise BIDSAppError("--expert and --blend-experts exclude each other", EXIT_USAGE)

    nipype.nprocs = opts.nprocs
    nipype.omp_nthreads = min(opts.omp_nthreads or min(opts.nprocs, 8), opts.nprocs)
    nipype.mem_gb = opts.mem_gb
    nipype.stop_on_first_crash = opts.stop_on_first_crash
    if opts.use_plugin:
        if not opts.use_plugin.is_file():
            raise BIDSAppError(f"{opts.use_plugin}: plugin file does not exist", EXIT_NOINPUT)
        try:
            plugin = yaml.safe_load(opts.use_plugin.read_text())
        except yaml.YAMLError as exc:
            raise BIDSAppError(f"{opts.use_plugin}: not valid YAML ({exc})", EXIT_USAGE) from None
        if not isinstance(plugin, dict) or "plugin" not in plugin:
            raise BIDSAppError(
                f"{opts.use_plugin}: must be a YAML mapping with a 'plugin' key", EXIT_USAGE)
        nipype.plugin = plugin["plugin"]
        nipype.plugin_args = dict(plugin.get("plugin_args") or {})
