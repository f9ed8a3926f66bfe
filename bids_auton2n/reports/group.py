"""Figures and assembly of the group report (matplotlib SVGs + nireports assembler)."""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np

from .. import __version__

SPEC = Path(__file__).parent.parent / "data" / "reports-spec-group.yml"

_TABLE_COLUMNS = ("subject", "session", "run", "suffix", "status", "noise_percent", "expert",
                  "snr_before", "snr_after", "cjv_before", "cjv_after", "fwhm_before",
                  "fwhm_after", "structure_removed", "runtime_s", "outlier")

#: Per-image quality measures shown on the participant pages and in the group table:
#: (key prefix or key, label, which way is better).
IQM_LABELS = (
    ("snr", "SNR", "higher is better"),
    ("cnr", "CNR", "higher is better"),
    ("cjv", "CJV", "lower is better"),
    ("fwhm", "FWHM (mm)", "smoothness; a rise well beyond the dataset's usual one is over-smoothing"),
)


def iqms_html(iqms: dict) -> str:
    """HTML fragment of one image's quality measures (:func:`~.iqms.compare_iqms`), with
    the structure removed flagged above :data:`~.iqms.STRUCTURE_REMOVED_FLAG`."""
    from .iqms import STRUCTURE_REMOVED_FLAG

    rows = "".join(
        f"<tr><td>{label}</td><td>{iqms[f'{key}_before']:.3g}</td>"
        f"<td>{iqms[f'{key}_after']:.3g}</td><td>{note}</td></tr>"
        for key, label, note in IQM_LABELS)
    value = iqms.get("structure_removed", float("nan"))
    flagged = value > STRUCTURE_REMOVED_FLAG
    row_class = ' class="text-danger"' if flagged else ""
    verdict = (f"<strong>above {STRUCTURE_REMOVED_FLAG:g}: check the residual map</strong>"
               if flagged else f"flagged above {STRUCTURE_REMOVED_FLAG:g}")
    rows += (f"<tr{row_class}><td>Structure removed</td><td colspan=\"2\">{value:.3f}</td>"
             "<td>correlation of the residual's local magnitude with the input's edges; "
             f"near 0 when only noise was removed; {verdict}</td></tr>")
    return ('<h4 class="elem-title">Quality measures</h4>\n'
            '<table class="table table-sm"><thead><tr><th>measure</th><th>input</th>'
            "<th>denoised</th><th></th></tr></thead><tbody>" + rows + "</tbody></table>\n")


def _report_link(subject: str) -> str:
    """Where a point or a row of the group report links: the participant's report, relative
    to ``figures/`` (figures) or to the output root (table), see :func:`_link_svg`."""
    return f"{subject}.html"


def _link_svg(out_file: Path) -> None:
    """Links in an SVG shown inside the report's ``<object>`` open in the whole page."""
    text = out_file.read_text()  # matplotlib writes target="_blank" on every link
    out_file.write_text(text.replace('target="_blank"', 'target="_top"'))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(table) -> dict:
    suffixes = sorted(table["suffix"].dropna().unique())
    return {suffix: f"C{index}" for index, suffix in enumerate(suffixes)}


def _scatter(ax, x, y, rows, colour, label):
    """One contrast's points, each linking to its participant's report; flagged ones
    circled in red."""
    flagged = rows["outlier"].notna().to_numpy()
    points = ax.scatter(x, y, color=colour, label=label, s=36, zorder=3)
    points.set_urls([f"../{_report_link(s)}" for s in rows["subject"]])
    if flagged.any():
        ax.scatter(np.asarray(x)[flagged], np.asarray(y)[flagged], s=140, facecolors="none",
                   edgecolors="red", linewidths=1.5, zorder=4)


def _figure_by_contrast(table, column: str, out_file: Path, *, ylabel: str, title: str,
                        flag: float | None = None) -> None:
    """One value per image, one column of points per contrast (MRIQC's group strip plots)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    colours = _colours(table)
    for position, (suffix, colour) in enumerate(colours.items()):
        rows = table[(table["suffix"] == suffix) & table[column].notna()]
        jitter = np.linspace(-0.15, 0.15, len(rows)) if len(rows) > 1 else np.zeros(len(rows))
        _scatter(ax, position + jitter, rows[column], rows, colour, suffix)
    if flag is not None:
        ax.axhline(flag, color="red", lw=1, ls="--", label=f"flag ({flag:g})")
        ax.legend(fontsize=8, loc="best")
    ax.set_xticks(range(len(colours)), list(colours))
    ax.set_xlim(-0.6, len(colours) - 0.4)
    ax.set_xlabel("contrast")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_file, format="svg")
    plt.close(fig)
    _link_svg(out_file)


def _figure_before_after(table, metrics, out_file: Path, title: str) -> None:
    plt = _pyplot()
    # At least two panels wide: the report draws every figure at the page's width.
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * max(len(metrics), 2), 3.8))
    axes = [axes] if len(metrics) == 1 else axes
    colours = _colours(table)
    for ax, (metric, label) in zip(axes, metrics):
        before, after = table[f"{metric}_before"], table[f"{metric}_after"]
        valid = before.notna() & after.notna()
        for suffix, colour in colours.items():
            rows = table[valid & (table["suffix"] == suffix)]
            _scatter(ax, rows[f"{metric}_before"], rows[f"{metric}_after"], rows, colour, suffix)
        if valid.any():
            lo = float(min(before[valid].min(), after[valid].min()))
            hi = float(max(before[valid].max(), after[valid].max()))
            ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="unchanged")
        ax.set_xlabel(f"{label}, input")
        ax.set_ylabel(f"{label}, denoised")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_file, format="svg")
    plt.close(fig)
    _link_svg(out_file)


def write_group_report(table, *, output_dir: Path, work_dir: Path) -> Path:
    """Draw the group figures and assemble ``group_denoising.html`` in ``output_dir``."""
    from .core import assemble_report

    figures = Path(work_dir) / "reportlets" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for stale in figures.glob("group_*"):
        stale.unlink()
    from .iqms import STRUCTURE_REMOVED_FLAG

    _figure_by_contrast(table, "noise_percent", figures / "group_desc-noisedist_T1w.svg",
                        ylabel="estimated noise (% of reference tissue)",
                        title="Estimated noise level per image (red circle: flagged)")
    _figure_before_after(table, [("snr", "SNR"), ("cjv", "CJV")],
                         figures / "group_desc-snrgain_T1w.svg", "SNR and CJV, input vs denoised")
    _figure_before_after(table, [("fwhm", "FWHM (mm)")],
                         figures / "group_desc-smoothness_T1w.svg", "Smoothness")
    _figure_by_contrast(table, "structure_removed", figures / "group_desc-structure_T1w.svg",
                        ylabel="structure removed (correlation)",
                        title="Structure in the residual per image (near 0: only noise removed)",
                        flag=STRUCTURE_REMOVED_FLAG)
    columns = [c for c in _TABLE_COLUMNS if c in table.columns]
    shown = table[columns].copy()
    shown["subject"] = [f'<a href="{_report_link(s)}">{escape(s)}</a>' for s in shown["subject"]]
    (figures / "group_desc-table_T1w.html").write_text(
        '<h3 class="elem-title">All images</h3>\n'
        + shown.to_html(index=False, na_rep="n/a", float_format="%.3g", escape=False,
                        classes="table table-sm", border=0))
    flagged = table[table["outlier"].notna()]
    if len(flagged):
        listed = flagged[["subject", "source", "status", "outlier"]].copy()
        listed["subject"] = [f'<a href="{_report_link(s)}">{escape(s)}</a>'
                             for s in listed["subject"]]
        outliers = ('<h3 class="elem-title">Flagged images</h3>\n<p class="alert alert-warning">'
                    f"{len(flagged)} image(s) failed, are outliers (robust z-score beyond "
                    "3.5 within their contrast) or had structure removed; check their "
                    "participant reports.</p>\n"
                    + listed.to_html(index=False, escape=False, classes="table table-sm",
                                     border=0))
    else:
        outliers = ('<p class="alert alert-success">No image failed and no outlier was '
                    "flagged.</p>")
    (figures / "group_desc-outliers_T1w.html").write_text(outliers)
    n_ok = int((table["status"] == "success").sum()) if len(table) else 0
    meta = {"Summary": {
        "Images": str(len(table)),
        "Denoised": str(n_ok),
        "Failed": str(len(table) - n_ok),
        "Participants": str(table["subject"].nunique()) if len(table) else "0",
        "Software": f"bids-auton2n {__version__}",
    }}
    out = Path(output_dir) / "group_denoising.html"
    assemble_report(output_dir, "group", bootstrap_file=SPEC,
                    reportlets_dir=str(work_dir / "reportlets"), out_filename=out.name,
                    metadata={"group-meta": meta})
    return out
