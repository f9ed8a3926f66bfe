"""Figures and assembly of the group report (matplotlib SVGs + nireports assembler)."""

from __future__ import annotations

from pathlib import Path

from .. import __version__

SPEC = Path(__file__).parent.parent / "data" / "reports-spec-group.yml"

_TABLE_COLUMNS = ("subject", "session", "run", "suffix", "status", "noise_percent", "expert",
                  "snr_before", "snr_after", "cjv_before", "cjv_after", "fwhm_before",
                  "fwhm_after", "runtime_s", "outlier")


def _figure_noise(table, out_file: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.5))
    suffixes = sorted(table["suffix"].dropna().unique())
    for position, suffix in enumerate(suffixes):
        rows = table[(table["suffix"] == suffix) & table["noise_percent"].notna()]
        jitter = np.linspace(-0.15, 0.15, len(rows)) if len(rows) > 1 else np.zeros(len(rows))
        flagged = rows["outlier"].astype(bool).to_numpy()
        ax.scatter(position + jitter[~flagged], rows["noise_percent"][~flagged], color="C0")
        ax.scatter(position + jitter[flagged], rows["noise_percent"][flagged], color="C3",
                   marker="x", s=60, label="flagged" if position == 0 else None)
    ax.set_xticks(range(len(suffixes)), suffixes)
    ax.set_ylabel("noise level (%)")
    ax.set_title("Estimated noise level per image")
    fig.tight_layout()
    fig.savefig(out_file, format="svg")
    plt.close(fig)


def _figure_before_after(table, metrics, out_file: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.6))
    axes = [axes] if len(metrics) == 1 else axes
    for ax, (metric, label) in zip(axes, metrics):
        before, after = table[f"{metric}_before"], table[f"{metric}_after"]
        valid = before.notna() & after.notna()
        flagged = table["outlier"].astype(bool) & valid
        ax.scatter(before[valid & ~flagged], after[valid & ~flagged], color="C0")
        ax.scatter(before[flagged], after[flagged], color="C3", marker="x", s=60)
        if valid.any():
            lo = float(min(before[valid].min(), after[valid].min()))
            hi = float(max(before[valid].max(), after[valid].max()))
            ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        ax.set_xlabel(f"{label} before")
        ax.set_ylabel(f"{label} after")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_file, format="svg")
    plt.close(fig)


def write_group_report(table, *, output_dir: Path, work_dir: Path) -> Path:
    """Draw the group figures and assemble ``group_denoising.html`` in ``output_dir``."""
    from .core import assemble_report

    figures = Path(work_dir) / "reportlets" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for stale in figures.glob("group_*"):
        stale.unlink()
    _figure_noise(table, figures / "group_desc-noisedist_T1w.svg")
    _figure_before_after(table, [("snr", "SNR"), ("cjv", "CJV")],
                         figures / "group_desc-snrgain_T1w.svg", "SNR and CJV")
    _figure_before_after(table, [("fwhm", "FWHM (mm)")],
                         figures / "group_desc-smoothness_T1w.svg", "Smoothness")
    columns = [c for c in _TABLE_COLUMNS if c in table.columns]
    (figures / "group_desc-table_T1w.html").write_text(
        '<h3 class="elem-title">All images</h3>\n'
        + table[columns].to_html(index=False, na_rep="n/a", float_format="%.3g",
                                 classes="table table-sm", border=0))
    flagged = table[table["outlier"].astype(bool)]
    if len(flagged):
        outliers = ('<h3 class="elem-title">Flagged images</h3>\n<p class="alert alert-warning">'
                    f"{len(flagged)} image(s) failed or are outliers (robust z-score beyond "
                    "3.5 within their contrast); check their participant reports.</p>\n"
                    + flagged[["source", "status", "outlier"]].to_html(
                        index=False, classes="table table-sm", border=0))
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
