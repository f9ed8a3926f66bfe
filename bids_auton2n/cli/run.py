"""Entry point of the BIDS-App (``bids_auton2n bids_dir output_dir {participant,group}``)."""

from __future__ import annotations

import configparser
import json
import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from ..utils.bids import BIDSAppError
from ..utils.exit_codes import EXIT_CANTCREAT, EXIT_FAILURE, EXIT_NOINPUT

LOGGER = logging.getLogger("bids_auton2n")
NIPYPE_LOGGERS = ("nipype.workflow", "nipype.interface", "nipype.utils")


def main(argv=None) -> int:
    """Run the app; returns the exit code (BIDS execution specification)."""
    from .. import config
    from .parser import parse_args

    try:
        parse_args(argv)
        _setup_logging(config.execution.verbosity)
        _check_scratch()
        if config.execution.analysis_level == "group":
            return run_group()
        return run_participant()
    except BIDSAppError as exc:
        print(f"bids_auton2n: {exc}", file=sys.stderr)
        return exc.exit_code


def _setup_logging(verbosity: int) -> None:
    """Our messages at INFO (DEBUG with -vv); Nipype's node chatter only with -v (see
    :func:`_worker_logging` for Nipype's worker processes)."""
    from nipype import logging as nipype_logging  # first: importing Nipype sets its levels

    level = logging.DEBUG if verbosity > 1 else logging.INFO
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    for name in NIPYPE_LOGGERS:
        nipype_logging.getLogger(name).setLevel(_nipype_level(verbosity))
    workflow_logger = nipype_logging.getLogger("nipype.workflow")
    workflow_logger.filters[:] = [f for f in workflow_logger.filters
                                  if not isinstance(f, _CrashReports)]
    if not verbosity:
        workflow_logger.addFilter(_CrashReports())


class _CrashReports(logging.Filter):
    """Drops Nipype's reports of failed nodes (tracebacks included): the crash files keep
    them, and the run ends with one line per failed image (which file, and why)."""

    PREFIXES = ("Node ", "Saving crash info to ", "could not run node: ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.ERROR
                    and str(record.msg).startswith(self.PREFIXES))


def _nipype_level(verbosity: int) -> str:
    return "DEBUG" if verbosity > 1 else "INFO" if verbosity else "WARNING"


@contextmanager
def _worker_logging(work_dir: Path, verbosity: int):
    """Nipype's worker processes log at the app's verbosity; the user's other settings stay.

    MultiProc's workers come from a forkserver (``NipypeSettings.get_plugin``) and import
    Nipype afresh, so :func:`_setup_logging` does not reach them, and MultiProc has no
    per-worker hook. On import Nipype reads ``$NIPYPE_CONFIG_DIR/nipype.cfg`` (default
    ``~/.nipype``), then ``./nipype.cfg`` (``nipype.utils.config.NipypeConfig``), and sets its
    loggers from their ``[logging]`` levels (``nipype.utils.logger.Logging``), so the workers
    get a copy of the user's file, in the work directory, with only those levels replaced.
    A ``./nipype.cfg`` still wins, as in Nipype. The forkserver keeps the environment of the
    first run in a process; the demo's two levels share one work directory, hence one file.
    """
    user_dir = Path(os.path.expanduser(os.getenv("NIPYPE_CONFIG_DIR", "~/.nipype")))
    settings = configparser.RawConfigParser()  # raw: values are copied, not interpolated
    settings.read(user_dir / "nipype.cfg")
    if not settings.has_section("logging"):
        settings.add_section("logging")
    for option in ("workflow_level", "interface_level", "utils_level"):
        settings.set("logging", option, _nipype_level(verbosity))
    if not verbosity:  # a failing node's warnings: the run's summary names the image
        settings.set("logging", "workflow_level", "ERROR")
    config_dir = Path(work_dir) / "nipype"
    config_dir.mkdir(parents=True, exist_ok=True)
    with open(config_dir / "nipype.cfg", "w") as stream:
        settings.write(stream)
    previous = os.environ.get("NIPYPE_CONFIG_DIR")
    os.environ["NIPYPE_CONFIG_DIR"] = str(config_dir)
    try:
        yield config_dir
    finally:
        if previous is None:
            del os.environ["NIPYPE_CONFIG_DIR"]
        else:
            os.environ["NIPYPE_CONFIG_DIR"] = previous


def _check_scratch() -> None:
    from ..utils.environment import check_scratch, shorten_socket_folder

    problem = check_scratch()
    if problem:
        raise BIDSAppError(problem, EXIT_CANTCREAT)
    shorten_socket_folder()


def _prepare_output(output_dir: Path) -> None:
    _writable_folder(output_dir, "output")
    _writable_folder(output_dir / "logs", "output")


def _prepare_work_dir(work_dir: Path) -> None:
    _writable_folder(work_dir, "work", hint="; pass -w with a writable folder")


def _writable_folder(folder: Path, what: str, hint: str = "") -> None:
    """Create ``folder`` and check that a file can be written in it (an existing folder
    owned by another user passes ``mkdir(exist_ok=True)`` but not this)."""
    from ..utils.environment import unwritable_reason

    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise BIDSAppError(f"{folder}: cannot write the {what} directory "
                           f"({unwritable_reason(folder, exc)}){hint}", EXIT_CANTCREAT) from None


def _check_experts(experts_dir) -> None:
    """Fail before building anything when the expert weights are missing or corrupt."""
    from ..denoise.experts import ExpertRegistry, ExpertWeightsError

    try:
        registry = ExpertRegistry(experts_dir)
        for level in registry.levels:
            if not registry.path(level).is_file():
                raise ExpertWeightsError(f"{registry.path(level)}: expert weights missing")
    except ExpertWeightsError as exc:
        raise BIDSAppError(f"expert weights unavailable: {exc}", EXIT_NOINPUT) from None


def run_participant() -> int:
    """Denoise the selected images; reports and status are written even when a run fails."""
    from nipype import config as nipype_config

    from .. import config
    from ..reports.boilerplate import write_boilerplate
    from ..reports.core import generate_reports, previous_runs
    from ..utils.atomic import remove_stale_staging, write_text_atomic
    from ..utils.bids import (
        check_paths,
        collect_anatomicals,
        invalid_sidecars,
        make_layout,
        screen_images,
        validate_dataset,
        write_derivative_description,
    )

    execution = config.execution
    check_paths(execution.bids_dir, execution.output_dir, execution.work_dir)
    print(f"bids_auton2n: participant level, {execution.bids_dir} -> {execution.output_dir}; "
          "validating and indexing the dataset ...", file=sys.stderr, flush=True)
    if not execution.skip_bids_validation:
        validate_dataset(execution.bids_dir)
    _prepare_output(execution.output_dir)
    _prepare_work_dir(execution.work_dir)
    remove_stale_staging(execution.output_dir)

    if execution.reports_only:
        subjects = sorted(p.name.removeprefix("sub-")
                          for p in execution.output_dir.glob("sub-*") if p.is_dir())
        if execution.participant_label:
            subjects = [s for s in subjects if s in execution.participant_label]
        earlier = previous_runs(execution.output_dir)
        failed_reports = []
        for subject in subjects:  # each report shows the run that processed its images
            run_uuid, failed = earlier.get(subject, (execution.run_uuid, []))
            failed_reports += generate_reports([subject], execution.output_dir, run_uuid,
                                               failures={subject: failed})
        print(f"Reports written in {execution.output_dir}")
        return EXIT_FAILURE if failed_reports else 0

    bad_sidecars = invalid_sidecars(execution.bids_dir)  # pybids cannot index them
    layout = make_layout(execution.bids_dir, ignore=bad_sidecars)
    subjects = collect_anatomicals(
        layout,
        participant_label=execution.participant_label,
        session_label=execution.session_label,
        suffixes=execution.suffixes,
        bids_filters=execution.bids_filters,
    )
    # Images that cannot be read (annexed content missing, broken link, bad sidecar) fail
    # alone, before the workflow; the others are denoised.
    rejected = screen_images(subjects, bad_sidecars)
    rejected.update(_screen_repeat_runs(
        subjects, rejected, repeats=config.workflow.repeats,
        across_sessions=config.workflow.repeats_across_sessions))
    runnable = {subject: [f for f in files if f not in rejected]
                for subject, files in subjects.items()}
    runnable = {subject: files for subject, files in runnable.items() if files}
    _check_experts(execution.experts_dir)
    from ..workflows.base import init_auton2n_wf

    nipype_config.update_config({
        "execution": {
            "crashfile_format": "txt",
            "stop_on_first_crash": config.nipype.stop_on_first_crash,
            "remove_unnecessary_outputs": False,
            "create_report": False,
            "get_linked_libs": False,
            "poll_sleep_duration": config.nipype.poll_seconds(),
        },
        "monitoring": {"enabled": False},
    })

    workflow = init_auton2n_wf(layout=layout, subjects=runnable) if runnable else None
    run_dir = execution.work_dir / "runs" / execution.run_uuid
    config.to_filename(run_dir / "config.json")
    sources = sorted(f for files in subjects.values() for f in files)
    write_derivative_description(execution.bids_dir, execution.output_dir)
    crashed = None
    from ..workflows.base import denoise_workflow_names
    from .progress import ParticipantProgress

    names = {source: pair for files in subjects.values()
             for source, pair in denoise_workflow_names(
                 files, repeats=config.workflow.repeats,
                 across_sessions=config.workflow.repeats_across_sessions).items()}
    plugin = config.nipype.get_plugin()
    print(f"bids_auton2n: denoising {len(sources)} image(s) of {len(subjects)} "
          f"participant(s); work directory {execution.work_dir}", file=sys.stderr, flush=True)
    try:
        if workflow is not None:
            with _worker_logging(execution.work_dir, execution.verbosity), \
                    ParticipantProgress(runnable, workflow_names=names) as progress:
                plugin["plugin_args"].setdefault("status_callback", progress)
                workflow.run(**plugin)
    except Exception as exc:  # Nipype raises RuntimeError after all runnable nodes ran
        crashed = exc
    finally:
        status = _image_status(sources, execution.output_dir, execution.bids_dir,
                               execution.run_uuid,
                               {source: workflow for source, (workflow, _) in names.items()},
                               rejected=rejected)
        status_file = execution.output_dir / "logs" / f"status_{execution.run_uuid}.json"
        write_text_atomic(status_file, json.dumps(status, indent=2))
        if workflow is not None:  # None: every image was refused before the workflow
            write_boilerplate(execution.output_dir, workflow)
        failures = {}
        for record in status:
            if record["status"] != "success":
                failures.setdefault(record["subject"], []).append(Path(record["source"]).name)
        failed_reports = generate_reports(
            sorted({r["subject"] for r in status}), execution.output_dir, execution.run_uuid,
            failures=failures,
        )
    n_failed = sum(len(v) for v in failures.values())
    print(f"Denoised {len(status) - n_failed} of {len(status)} image(s); "
          f"reports in {execution.output_dir}/sub-<label>.html")
    if n_failed or crashed is not None or failed_reports:
        for record in status:  # one line per failed image: which file, and why
            if record["status"] != "success":
                print(f"FAILED {record['source']}: {record['error']} (report: "
                      f"{execution.output_dir}/sub-{record['subject']}.html)", file=sys.stderr)
        # Images that failed without a crash file of their own: the run itself stopped,
        # and its exception is the only account of why.
        if crashed is not None and (not n_failed or any(r["error"] == NOT_RUN for r in status)):
            print(f"bids_auton2n: workflow error: {crashed}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _screen_repeat_runs(subjects: dict, rejected: dict, *, repeats: str,
                        across_sessions: bool) -> dict[str, str]:
    """Runs of would-be repeat groups whose data cannot be denoised (2D, too small, all NaN,
    truncated...), each with its one-line reason.

    The runs of a group are denoised by one node, so a bad run would fail the whole group;
    read before the workflow, it is refused alone and the group forms from the others. Single
    images are checked by their own nodes (no extra read).
    """
    from ..utils.io import InputImageError, read_volume
    from ..workflows.base import subject_groups

    refused = {}
    for files in subjects.values():
        candidates = [f for f in files if f not in rejected]
        for group in subject_groups(candidates, repeats=repeats, across_sessions=across_sessions):
            for path in group.files if group.is_repeat else ():
                try:
                    read_volume(path)
                except InputImageError as exc:
                    refused[path] = f"InputImageError: {exc}"
    return refused


#: Status of an image whose workflow left no crash file and no derivative.
NOT_RUN = "not run (an earlier step or the run stopped)"


def _image_status(sources, output_dir: Path, bids_dir: Path, run_uuid: str,
                  workflow_names: dict | None = None, rejected=None) -> list[dict]:
    """Success/failure of every planned image, failures with the error from its crash file
    (or, for ``rejected`` images, the reason they were not run).

    ``workflow_names`` maps a source to the workflow that denoises it when that is not its
    own (the workflow of its repeat group).
    """
    from ..utils.bids import derivative_path, file_entities
    from ..workflows.base import image_workflow_name

    records = []
    for source in sources:
        subject = file_entities(source)["subject"]
        crash_dir = Path(output_dir) / f"sub-{subject}" / "log" / run_uuid
        marker = f".{(workflow_names or {}).get(source) or image_workflow_name(source)}."
        error = None
        for crash in sorted(crash_dir.glob("crash-*.txt")):
            text = crash.read_text(errors="replace")
            if marker in text:
                lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
                error = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1])
                # "bids_auton2n.utils.io.InputImageError: ..." -> "InputImageError: ..."
                error = re.sub(r"^(?:\w+\.)+(\w+: )", r"\1", error)
                break
        error = (rejected or {}).get(source, error)
        derivative = derivative_path(source, bids_dir, output_dir)
        ok = error is None and derivative.is_file()
        records.append({
            "source": str(Path(source).absolute().relative_to(Path(bids_dir).absolute())),
            "subject": subject,
            "derivative": str(derivative.relative_to(output_dir)) if ok else None,
            "status": "success" if ok else "failed",
            "error": None if ok else (error or NOT_RUN),
            "run_uuid": run_uuid,
        })
    return records


def run_group() -> int:
    """Group level: IQM table and group report over all images in the output directory."""
    from .. import config
    from ..workflows.group import run_group_level

    execution = config.execution
    check_output = execution.output_dir / "dataset_description.json"
    if not check_output.is_file():
        raise BIDSAppError(
            f"{execution.output_dir}: no participant-level outputs (run the participant "
            "level first)", EXIT_NOINPUT)
    from ..utils.bids import check_paths

    check_paths(execution.bids_dir, execution.output_dir, execution.work_dir)
    _prepare_work_dir(execution.work_dir)
    print(f"bids_auton2n: group level over {execution.output_dir}: quality measures of every "
          "denoised image, then the group report ...", file=sys.stderr, flush=True)
    with _worker_logging(execution.work_dir, execution.verbosity):
        tsv, html, n_failed = run_group_level(
            bids_dir=execution.bids_dir,
            output_dir=execution.output_dir,
            work_dir=execution.work_dir,
            participant_label=execution.participant_label,
            plugin=config.nipype.get_plugin(),
        )
    print(f"Group table: {tsv}\nGroup report: {html}")
    return EXIT_FAILURE if n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
