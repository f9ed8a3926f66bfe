"""Group level: one IQM row per image processed at the participant level, and a report."""

from __future__ import annotations

import json
import re
from pathlib import Path

from nipype.pipeline import engine as pe

from ..interfaces.qc import ComputeIQMs
from ..utils.atomic import atomic_path
from ..utils.bids import file_entities

#: Columns of ``group_denoising.tsv`` in order.
COLUMNS = (
    "subject", "session", "acquisition", "reconstruction", "run", "suffix", "source",
    "status", "noise_percent", "noise_sigma", "noise_source", "expert", "pair_source", "repeats",
    "snr_before", "snr_after", "cnr_before", "cnr_after", "cjv_before", "cjv_after",
    "fwhm_before", "fwhm_after", "structure_removed", "runtime_s", "outlier", "error",
)

#: Entities of the source name that are columns of the table; ``subject`` and ``session``
#: keep their BIDS prefix (``sub-01``, ``ses-1``), as in ``participants.tsv`` and ``sessions.tsv``.
_ENTITIES = ("subject", "session", "acquisition", "reconstruction", "run", "suffix")


def _entities(source: str) -> dict:
    found = file_entities(source)
    prefixes = {"subject": "sub-", "session": "ses-"}
    return {key: None if found.get(key) is None
            else prefixes.get(key, "") + str(found[key]) for key in _ENTITIES}


def _repeats_note(sidecar: dict) -> str | None:
    """Which path a run of a repeat group took (None for an image without repeats)."""
    record = sidecar.get("Repeats")
    if record is None:
        return None
    if sidecar.get("PairSource") == "repeats":
        return f"combined with {record['RunsCombined'] - 1} other run(s) ({record['Method']})"
    return "not combined: " + "; ".join(record["Fallback"])


def init_group_wf(*, images: list[dict], work_dir: str, name: str = "auton2n_group_wf"):
    """One IQM node per successfully denoised image.

    Parameters
    ----------
    images : list of dict
        ``{"source_file", "denoised_file", "contrast", "key"}`` per image; ``key`` names
        the node (Nipype-safe).
    work_dir : str
        Nipype base directory (re-runs reuse finished IQMs).
    name : str
        Workflow name.

    Inputs
    ------
    None: the inputs are fixed at build time.

    Outputs
    -------
    None: each ``iqms_<key>`` node's ``out_json`` holds that image's metrics.
    """
    workflow = pe.Workflow(name=name)
    workflow.base_dir = work_dir
    for image in images:
        workflow.add_nodes([pe.Node(
            ComputeIQMs(source_file=image["source_file"], denoised_file=image["denoised_file"],
                        contrast=image["contrast"]),
            name=f"iqms_{image['key']}",
        )])
    return workflow


def run_group_level(*, bids_dir: Path, output_dir: Path, work_dir: Path,
                    participant_label=(), plugin=None) -> tuple[Path, Path, int]:
    """Compute the group table and report; returns (tsv, html, number of failed images).

    Parameters
    ----------
    bids_dir : Path
        Raw dataset root.
    output_dir : Path
        Derivatives root of the participant level (its status logs list the images).
    work_dir : Path
        Nipype's working folder (the IQM nodes run under ``group/``).
    participant_label : sequence of str
        Participants to include; empty: all.
    plugin : dict, optional
        Nipype plugin name and arguments (:meth:`~bids_auton2n.config.NipypeSettings.get_plugin`).
    """
    import pandas as pd

    from ..reports.core import read_status
    from ..reports.group import write_group_report
    from ..reports.iqms import robust_z

    output_dir, bids_dir = Path(output_dir), Path(bids_dir)
    status = read_status(output_dir)
    if participant_label:
        status = {k: v for k, v in status.items() if v["subject"] in participant_label}
    rows, images = [], []
    for source, record in sorted(status.items()):
        row = {**_entities(source), "source": source, "status": record["status"],
               "error": record.get("error")}
        if record["status"] == "success":
            derivative = output_dir / record["derivative"]
            sidecar = json.loads(derivative.with_name(
                derivative.name.replace(".nii.gz", ".json")).read_text())
            noise = sidecar["NoiseEstimate"]
            row.update(
                noise_percent=noise["Percent"], noise_sigma=noise["Sigma"],
                noise_source=noise["Source"],
                expert="+".join(f"{e['NoiseLevelPercent']:g}" for e in sidecar["Experts"]),
                runtime_s=sidecar["TimingsSeconds"]["total"],
                pair_source=sidecar.get("PairSource", "n/a"),  # outputs of older versions
                repeats=_repeats_note(sidecar),
            )
            key = re.sub(r"[^a-zA-Z0-9]", "_", Path(source).name.split(".")[0])
            images.append({"source_file": str(bids_dir / source),
                           "denoised_file": str(derivative), "contrast": row["suffix"],
                           "key": key})
            row["_key"] = key
        rows.append(row)

    if images:
        workflow = init_group_wf(images=images, work_dir=str(Path(work_dir) / "group"))
        try:
            graph = workflow.run(**(plugin or {"plugin": "Linear"}))
            results = {node.name[len("iqms_"):]: node.result for node in graph.nodes()}
        except RuntimeError:  # some IQM node failed: read those that finished
            results = {}
            for image in images:
                result_dir = Path(work_dir) / "group" / workflow.name / f"iqms_{image['key']}"
                iqms_file = result_dir / "iqms.json"
                if iqms_file.is_file():
                    results[image["key"]] = iqms_file
        for row in rows:
            result = results.get(row.get("_key"))
            if result is None:
                continue
            iqms_file = result if isinstance(result, Path) else Path(result.outputs.out_json)
            row.update(json.loads(iqms_file.read_text()))

    table = pd.DataFrame(rows).reindex(columns=list(COLUMNS))
    table["outlier"] = _outlier_reasons(table, robust_z)
    tsv = output_dir / "group_denoising.tsv"
    with atomic_path(tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.5g")
    html = write_group_report(table, output_dir=output_dir, work_dir=Path(work_dir) / "group")
    n_failed = int((table["status"] != "success").sum()) if len(table) else 0
    return tsv, html, n_failed


#: Robust z-score beyond which an image is flagged (Iglewicz & Hoaglin's 3.5).
OUTLIER_Z = 3.5


def _outlier_reasons(table, robust_z) -> list[str]:
    """Why each row is flagged: failure, robust |z| > 3.5 within its suffix, or structure
    removed above :data:`~bids_auton2n.reports.iqms.STRUCTURE_REMOVED_FLAG`."""
    import numpy as np

    from ..reports.iqms import STRUCTURE_REMOVED_FLAG

    reasons = [[] for _ in range(len(table))]
    for index, status in enumerate(table["status"]):
        if status != "success":
            reasons[index].append("failed")
    checks = {
        "noise_percent": table["noise_percent"],
        "snr_gain": table["snr_after"] / table["snr_before"],
        "fwhm_increase": table["fwhm_after"] / table["fwhm_before"],
    }
    for index, value in enumerate(table["structure_removed"].to_numpy(dtype=float)):
        if value > STRUCTURE_REMOVED_FLAG:
            reasons[index].append(f"structure_removed ({value:.2f} > {STRUCTURE_REMOVED_FLAG:g})")
    for suffix in table["suffix"].dropna().unique():
        rows = np.flatnonzero((table["suffix"] == suffix).to_numpy())
        for label, values in checks.items():
            z = robust_z(values.to_numpy(dtype=float)[rows])
            for row, score in zip(rows, z):
                if np.isfinite(score) and abs(score) > OUTLIER_Z:
                    reasons[row].append(f"{label} (z={score:+.1f})")
    return [";".join(r) if r else None for r in reasons]  # None: written n/a
