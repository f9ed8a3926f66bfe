"""Assembly of the participant reports (nireports) and of the methods boilerplate."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import __version__
from ..utils.atomic import atomic_path, write_text_atomic

LOGGER = logging.getLogger("bids_auton2n.reports")

SPEC = Path(__file__).parent.parent / "data" / "reports-spec.yml"

#: ``<head>`` fragment (our own stylesheet + a Bootstrap check) that keeps the reports
#: readable when nireports' CDN-hosted Bootstrap cannot be loaded.
OFFLINE_HEAD = Path(__file__).parent.parent / "data" / "report-offline-head.html"

REFERENCES = """\
1. Morell-Ortega S., et al. Auto-N2N: Self-supervised MRI denoising using synthetic pair
   generation and mixture of experts. MIDL 2026 (under review).
2. Manjón J.V., Coupé P., Buades A., Collins D.L., Robles M. New methods for MRI denoising
   based on sparseness and self-similarity. Medical Image Analysis 16(1):18-27, 2012.
   doi:10.1016/j.media.2011.04.003
3. Gorgolewski K., et al. Nipype: a flexible, lightweight and extensible neuroimaging data
   processing framework in Python. Frontiers in Neuroinformatics 5:13, 2011.
   doi:10.3389/fninf.2011.00013
4. Gorgolewski K.J., et al. BIDS apps: Improving ease of use, accessibility, and
   reproducibility of neuroimaging data analysis methods. PLoS Comput Biol 13(3):e1005420,
   2017. doi:10.1371/journal.pcbi.1005420
5. Buades A., Coll B., Morel J.M. A review of image denoising algorithms, with a new one.
   Multiscale Modeling & Simulation 4(2):490-530, 2005. doi:10.1137/040616024
"""


def write_boilerplate(output_dir: Path, workflow_settings: dict) -> Path:
    """Write ``logs/CITATION.md``: a methods paragraph stating exactly what ran.

    Parameters
    ----------
    output_dir : Path
        Derivatives root.
    workflow_settings : dict
        :func:`bids_auton2n.config.to_dict` ``["workflow"]`` of the run.
    """
    from ..denoise.pipeline import KEPT_FROM_SOURCE

    s = workflow_settings
    if s["noise_level"] is not None:
        noise = f"The noise level was set by the user to {s['noise_level']:g} %"
    else:
        noise = (
            "The noise level of each image was estimated from the difference between the "
            "image and a synthetic second realization built by non-local patch matching "
            "(Auto-N2N [1]), as a standard deviation in image units and as a percentage of "
            "the intensity of the reference tissue (white matter for T1w and FLAIR, "
            "cerebrospinal fluid for T2w and PDw)"
        )
    if s["expert"] is not None:
        experts = f"the expert trained for {s['expert']:g} % noise was used (user choice)"
    elif s["blend"]:
        experts = ("the two experts whose training noise levels bracket the estimate were "
                   "blended with linear weights")
    else:
        experts = "the expert whose training noise level is nearest to the estimate was used"
    text = [
        f"Anatomical images were denoised with bids-auton2n {__version__}, a BIDS-App "
        "implementing Auto-N2N [1], which runs on Nipype [3] following the BIDS-Apps "
        "conventions [4].",
        f"{noise}.",
        "Auto-N2N trains 3D residual convolutional networks (5 residual blocks of two "
        "3x3x3 convolutions with 16 filters, after a fixed high-pass layer) without clean "
        "references, on synthetic noisy pairs, one expert per noise level (1, 3, 5, 7 and "
        f"9 %); {experts}.",
    ]
    if s["finetune"]:
        text.append("Before denoising, the selected expert was fine-tuned self-supervisedly "
                    "on the images of this dataset (Auto-N2N synthetic pairs).")
    text.append(
        "The network was applied in sliding windows"
        + (", averaging its outputs over the identity and the three single-axis flips "
           "(test-time augmentation)" if s["tta"] else ", without test-time augmentation")
        + "."
    )
    if s["fusion"]:
        text.append("The network output was then averaged with a rotationally invariant "
                    "non-local means filter (RI-NLM [2]) of the noisy image guided by it, "
                    "with a Rician noise model.")
    else:
        text.append("No RI-NLM fusion was applied (network output only).")
    if s["guard"]:
        text.append("Wherever the removed residual (input minus output) had a local RMS "
                    "(3x3x3 voxels) above 1.5 times the estimated noise standard deviation, it "
                    "was scaled down to that level and the rest given back to the image "
                    "(do-no-harm guard: what noise cannot explain is structure [5]), both for "
                    "the network output before it guided RI-NLM and for the final image.")
    text.append(f"Denoised images keep the {KEPT_FROM_SOURCE}. Where a source has no negative "
                "voxel (a magnitude image), negative output values are set to 0.")
    out = Path(output_dir) / "logs" / "CITATION.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, " ".join(text) + "\n\n### References\n\n" + REFERENCES)
    return out


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
        subject = log_dir.parent.name[4:]
        crash_dirs = sorted(d.name for d in log_dir.iterdir() if d.is_dir())
        if subject not in runs and crash_dirs:
            runs[subject] = (crash_dirs[-1], [])
    return runs

