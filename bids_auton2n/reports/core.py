"""Assembly of the participant reports (nireports); the methods text is :mod:`.boilerplate`'s."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import __version__
from ..utils.atomic import atomic_path

LOGGER = logging.getLogger("bids_auton2n.reports")

SPEC = Path(__file__).parent.parent / "data" / "reports-spec.yml"

#: ``<head>`` fragment (our own stylesheet + a Bootstrap check) that keeps the reports
#: readable when nireports' CDN-hosted Bootstrap cannot be loaded.
OFFLINE_HEAD = Path(__file__).parent.parent / "data" / "report-offline-head.html"

def assemble_report(out_dir, run_uuid, **report_kwargs) -> None:
    """Write one nireports report that stays readable without network access.

    nireports' template styles the page with Bootstrap and jQuery from a CDN; the report's
    header (the slot nireports offers plugins) gets :data:`OFFLINE_HEAD`, a small stylesheet
    of our own that only applies while Bootstrap's stylesheet is missing. The figures need
    no script: the before/after flicker is CSS inside each SVG.

    Parameters
    ----------
    out_dir : path
        Folder of the report (figures are linked relative to it).
    run_uuid : str
        Run identifier (``{run_uuid}`` in the reports spec).
    **report_kwargs
        Passed to :class:`nireports.assembler.report.Report` (``bootstrap_file``,
        ``reportlets_dir``, ``metadata``, ``out_filename``, BIDS filters).
    """
    from nireports.assembler.report import Report

    report = Report(str(out_dir), run_uuid, **report_kwargs)
    report.header.append(OFFLINE_HEAD.read_text())
    with atomic_path(report.out_filename) as tmp:  # a browser never opens half a report
        report.out_filename = tmp
        report.generate_report()


def generate_reports(subjects, output_dir: Path, run_uuid: str, failures=None) -> list[str]:
    """Write ``sub-<label>.html`` for each participant; return labels whose report failed.

    Parameters
    ----------
    subjects : iterable of str
        Participant labels (without ``sub-``).
    output_dir : Path
        Derivatives root (figures are read from ``sub-<label>/figures``).
    run_uuid : str
        Identifier of this run (selects the crash-file folder).
    failures : dict, optional
        Failed image names by participant, listed in the summary.
    """
    failures = failures or {}
    errors = []
    for subject in subjects:
        failed = failures.get(subject, [])
        summary = {
            "Summary": {
                "Participant": f"sub-{subject}",
                "Software": f"bids-auton2n {__version__}",
                "Run identifier": run_uuid,
                "Failed images": ", ".join(failed) if failed else "none",
            }
        }
        try:
            assemble_report(
                output_dir,
                run_uuid,
                bootstrap_file=SPEC,
                reportlets_dir=str(output_dir),
                metadata={"summary-meta": summary},
                subject=subject,
            )
        except Exception as exc:  # a broken report must not hide the other participants'
            errors.append(subject)
            (Path(output_dir) / "logs").mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "logs" / f"report_error_sub-{subject}.txt").write_text(
                f"{type(exc).__name__}: {exc}\n")
    return errors


#: Keys every record of a ``logs/status_*.json`` file has.
STATUS_KEYS = ("source", "subject", "status", "run_uuid")


def read_status(output_dir: Path) -> dict[str, dict]:
    """Latest status of every image processed in ``output_dir`` (from the run logs).

    A status file that cannot be read (empty, truncated, not the expected records, e.g.
    left by a run killed while an older version wrote it non-atomically) is reported in
    one warning line naming it and skipped; the other files are still read.
    """
    records: dict[str, dict] = {}
    for status_file in sorted((Path(output_dir) / "logs").glob("status_*.json")):
        try:
            loaded = json.loads(status_file.read_text())
            if not isinstance(loaded, list) or not all(
                    isinstance(r, dict) and all(k in r for k in STATUS_KEYS) for r in loaded):
                raise ValueError(f"not a list of records with {', '.join(STATUS_KEYS)}")
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError too
            LOGGER.warning("%s: unreadable status file skipped (%s)", status_file,
                           str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            continue
        for record in loaded:
            records[record["source"]] = record
    return records


def previous_runs(output_dir: Path) -> dict[str, tuple[str, list[str]]]:
    """The earlier participant-level run that ``--reports-only`` reports, per participant.

    A report's errors section lists the Nipype crash files of one run
    (``sub-<label>/log/<run_uuid>/crash-*``, the ``crashdump_dir`` the workflow sets), so a
    report regenerated later must point at the run that processed the images, not at the
    new run identifier of the ``--reports-only`` call.

    Parameters
    ----------
    output_dir : Path
        Derivatives root.

    Returns
    -------
    dict
        ``{label: (run_uuid, failed image names)}``. From the status logs (latest record per
        image): the most recent run of the participant in which an image failed, else its
        most recent run. A participant without status records (a run killed before writing
        them) gets its newest crash folder and no names. Run identifiers start with a UTC
        time stamp, so the latest sorts last.
    """
    runs: dict[str, tuple[str, list[str]]] = {}
    by_subject: dict[str, list[dict]] = {}
    for record in read_status(output_dir).values():
        by_subject.setdefault(record["subject"], []).append(record)
    for subject, records in by_subject.items():
        failed = [r for r in records if r["status"] != "success"]
        run_uuid = max(r["run_uuid"] for r in (failed or records))
        runs[subject] = (run_uuid, sorted(Path(r["source"]).name for r in failed))
    for log_dir in Path(output_dir).glob("sub-*/log"):
        subject = log_dir.parent.name.removeprefix("sub-")
        crash_dirs = sorted(d.name for d in log_dir.iterdir() if d.is_dir())
        if subject not in runs and crash_dirs:
            runs[subject] = (crash_dirs[-1], [])
    return runs

