"""Write the benchmark record: ``results.json``, ``results.md`` (tables) and PNG plots."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

from .methods import METHODS

OURS = "ours"
PACKAGES = ("numpy", "scipy", "torch", "numba", "monai", "nibabel", "dipy", "antspyx", "bm4d",
            "scikit-image", "scikit-learn")


def machine_record(threads: int) -> dict:
    """CPU, threads, load, memory and package versions, to print beside the figures."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        import torch
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        gpu = "torch not installed"
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = ""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu, "logical_cpus": os.cpu_count(), "threads_per_method": threads,
        "memory_gib": round(memory_gib, 1) if memory_gib else None, "gpu": gpu,
        "load_average_1_5_15": list(os.getloadavg()), "python": platform.python_version(),
        "platform": platform.platform(), "versions": versions, "git_revision": revision,
    }


def _fmt(value, digits=2):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _ok(rows, **where):
    return [r for r in rows if r["status"] == "ok" and all(r[k] == v for k, v in where.items())]


def _cell(rows, method, dataset, level, key, digits):
    found = [r for r in rows if r["method"] == method and r["dataset"] == dataset and r["level"] == level]
    if not found:
        return "—"
    return _fmt(found[0].get(key), digits) if found[0]["status"] == "ok" else "n/a"


def _methods_in(rows):
    return [m for m in METHODS if any(r["method"] == m for r in rows)]


def _median(values):
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def markdown(record: dict) -> str:
    rows, machine, config = record["rows"], record["machine"], record["config"]
    methods = _methods_in(rows)
    phantom_datasets = list(dict.fromkeys(r["dataset"] for r in rows if r["phantom"]))
    real_datasets = list(dict.fromkeys(r["dataset"] for r in rows if not r["phantom"]))
    out = [f"# Denoising benchmark ({config['mode']} run)", "",
           f"Run {machine['date']} at revision `{machine['git_revision']}`; command: `{config['command']}`.",
           "Every method ran once per volume in its own process (inputs and outputs as NIfTI files).", ""]

    for dataset in phantom_datasets:
        levels = sorted({r["level"] for r in rows if r["dataset"] == dataset})
        convention = ("Manjón/Coupé demo convention: image scaled to 0-255, sigma = p % of the maximum, "
                      "PSNR peak 255 over voxels whose truth exceeds 10" if dataset == "T1w-max" else
                      f"BrainWeb convention: sigma = p % of the reference tissue "
                      f"({'CSF' if dataset == 'T2w' else 'WM'}), PSNR peak = clean maximum over the head")
        shape = next(r["shape"] for r in rows if r["dataset"] == dataset)
        own = next(r.get("own_noise_percent") for r in rows if r["dataset"] == dataset)
        if own is not None:
            out += [f"## Real scan {dataset[len('scan:'):]} as reference "
                    f"({'x'.join(map(str, shape))}, Rician noise added)", "",
                    convention + f". The reference is the scan as acquired, with its own noise "
                    f"(estimated {own:.2f} % of WM): removing that noise costs PSNR too; Dice "
                    "compares k-means classes with those of the scan.", ""]
        else:
            out += [f"## Phantom {dataset} ({'x'.join(map(str, shape))}, Rician noise)", "",
                    convention + ".", ""]
        header = ["method"] + [f"{level:g} %" for level in levels]
        for key, name, digits in (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 4),
                                  ("dice", "k-means Dice (mean CSF/GM/WM)", 4)):
            out += [f"**{name}**", ""]
            table = [[m] + [_cell(rows, m, dataset, level, key, digits) for level in levels] for m in methods]
            if key == "dice" and dataset in record["dice_ceiling"]:
                ceiling = _fmt(record["dice_ceiling"][dataset], 4)
                table.append(["clean image (ceiling)"] + [ceiling] * len(levels))
            out += _table(header, table)

    phantom_rows = [r for r in rows if r["phantom"] and r["dataset"] != "T1w-max"]
    if phantom_rows:
        levels = sorted({r["level"] for r in phantom_rows if r["level"] > 0})
        edge_level = levels[0] if levels else None
        residual_level = levels[len(levels) // 2] if levels else None
        out += ["## Edges and method noise (phantoms, BrainWeb convention)", "",
                "Edge ratio = mean gradient magnitude on tissue boundaries, output / clean, at "
                f"{_fmt(edge_level, 0)} % (clean-ish input; 1 keeps edges, < 1 blurs). Residual = "
                f"noisy − output, at {_fmt(residual_level, 0)} %: whiteness = energy of its 3x3x3 local "
                "mean relative to white noise (1 = no structure), and correlation of |residual| with "
                "the clean gradient magnitude (0 = no edges removed).", ""]
        datasets = list(dict.fromkeys(r["dataset"] for r in phantom_rows))
        header = ["method"] + [f"{d} {name}" for d in datasets
                               for name in ("edge ratio", "whiteness", "corr(|r|,|∇x|)")]
        table = [[m] + [value for d in datasets for value in (
            _cell(rows, m, d, edge_level, "edge_ratio", 3),
            _cell(rows, m, d, residual_level, "residual_whiteness", 3),
            _cell(rows, m, d, residual_level, "residual_edge_corr", 3))] for m in methods]
        out += _table(header, table)

    if real_datasets:
        out += ["## Real scans (no reference)", "",
                "Residual = input − output inside the head: its standard deviation (what was removed), its "
                "whiteness (1 = no structure), its correlation with the output's gradient magnitude; and the "
                "standard deviation in the air background (n/a when skull-stripped to zeros).", ""]
        header = ["method"] + [f"{d.split('.')[0]} {n}" for d in real_datasets
                               for n in ("resid. std", "whiteness", "corr", "bg std")]
        table = [[m] + [value for d in real_datasets for value in (
            _cell(rows, m, d, None, "residual_std", 2), _cell(rows, m, d, None, "residual_whiteness", 3),
            _cell(rows, m, d, None, "residual_edge_corr", 3), _cell(rows, m, d, None, "background_std", 2))]
            for m in methods]
        out += _table(header, table)

    out += _cost_section(rows, methods)
    failures = {}
    for r in rows:
        if r["status"] != "ok":
            failures.setdefault((r["method"], r["status"], r["reason"]), []).append(
                r["dataset"] + ("" if r["level"] is None else f" {r['level']:g}%"))
    if failures:
        out += ["## Not run", ""]
        out += _table(["method", "status", "reason", "volumes"],
                      [[m, s, reason.replace("|", "/"),
                        f"{len(v)} ({', '.join(v[:3])}{', …' if len(v) > 3 else ''})"]
                       for (m, s, reason), v in failures.items()])
    out += ["## Methods", ""] + [f"* `{m}`: {METHODS[m].description}" for m in methods] + [""]
    out += ["## Machine", "", "```", json.dumps(machine, indent=1), "```", ""]
    return "\n".join(out)


def _cost_section(rows, methods) -> list[str]:
    out = ["## Cost per volume (whole process)", "",
           "Median over volumes of the same size; wall = whole process (Python start, imports, I/O, "
           "method), method = the call alone; peak memory = maximum resident set size of the process "
           f"({next((r.get('memory_source') for r in rows if r.get('memory_source')), 'n/a')}). "
           "Ratios are peer / ours (above 1: ours is faster or lighter). Timings taken on a shared "
           "machine are inflated by contention; see the load average in the machine record.", ""]
    shapes = list(dict.fromkeys(tuple(r["shape"]) for r in rows))
    for shape in shapes:
        subset = [r for r in rows if tuple(r["shape"]) == shape]
        ours = _ok(subset, method=OURS)
        ours_wall = _median([r["process_wall_s"] for r in ours])
        ours_rss = _median([r["peak_rss_mib"] for r in ours])
        table = []
        for m in methods:
            done = _ok(subset, method=m)
            if not done:
                table.append([m, "n/a", "n/a", "n/a", "", "n/a", "n/a"])
                continue
            wall = _median([r["process_wall_s"] for r in done])
            rss = _median([r["peak_rss_mib"] for r in done])
            stages = {}
            for r in done:
                for k, v in r["timings"].items():
                    stages.setdefault(k, []).append(v)
            stage_text = ", ".join(f"{k} {_fmt(_median(v), 1)}" for k, v in stages.items())
            table.append([m, _fmt(wall, 1), _fmt(_median([r["method_seconds"] for r in done]), 1),
                          _fmt(rss, 0), stage_text, _fmt(wall / ours_wall if ours_wall else None, 2),
                          _fmt(rss / ours_rss if ours_rss else None, 2)])
        n_volumes = len({(r["dataset"], r["level"]) for r in subset})
        out += [f"**Volumes {'x'.join(map(str, shape))}** ({n_volumes} volumes)", ""]
        out += _table(["method", "wall (s)", "method (s)", "peak RSS (MiB)", "our stages (s)",
                       "time ratio", "memory ratio"], table)
    return out


def plots(record: dict, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, written = record["rows"], []
    methods = _methods_in(rows)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows if r["phantom"]))
    if datasets:
        for key, label, name in (("psnr", "PSNR (dB)", "psnr.png"), ("ssim", "SSIM", "ssim.png"),
                                 ("dice", "k-means Dice", "dice.png")):
            fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
            for ax, dataset in zip(axes[0], datasets):
                for m in methods:
                    done = sorted(_ok(rows, method=m, dataset=dataset), key=lambda r: r["level"])
                    points = [(r["level"], r[key]) for r in done if np.isfinite(r[key])]
                    if points:
                        ax.plot(*zip(*points), marker="o", label=m)
                ax.set(title=f"phantom {dataset}", xlabel="Rician noise (%)", ylabel=label)
                ax.grid(alpha=0.3)
            axes[0][0].legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=90)
            plt.close(fig)
            written.append(out_dir / name)

    costs = [(m, _median([r["process_wall_s"] for r in _ok(rows, method=m)]),
              _median([r["peak_rss_mib"] for r in _ok(rows, method=m)])) for m in methods]
    costs = [c for c in costs if c[1] is not None]
    if costs:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        names = [c[0] for c in costs]
        axes[0].barh(names, [c[1] for c in costs])
        axes[0].set(xlabel="median wall time per volume, whole process (s)")
        axes[1].barh(names, [c[2] for c in costs])
        axes[1].set(xlabel="median peak RSS per volume (MiB)")
        fig.tight_layout()
        fig.savefig(out_dir / "cost.png", dpi=90)
        plt.close(fig)
        written.append(out_dir / "cost.png")

    montage = _montage_key(record)
    if montage:
        images = record["slices"][montage]
        panels = [(k, v) for k, v in images.items() if v is not None]
        fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3), squeeze=False)
        vmax = float(np.percentile(images["noisy"], 99.5))
        for ax, (name, image) in zip(axes[0], panels):
            ax.imshow(np.rot90(image), cmap="gray", vmin=0, vmax=vmax)
            ax.set_title(name, fontsize=9)
            ax.axis("off")
        fig.suptitle(f"{montage[0]} at {montage[1]:g} % (middle axial slice)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out_dir / "montage.png", dpi=90)
        plt.close(fig)
        written.append(out_dir / "montage.png")
    return written


def _montage_key(record):
    keys = [k for k in record["slices"] if k[1] is not None and k[1] > 0]
    if not keys:
        return None
    # The noisiest BrainWeb-convention level up to 5 %, where differences are visible but typical.
    keys.sort(key=lambda k: (k[0] == "T1w-max", k[1] > 5, -k[1]))
    return keys[0]


def write(record: dict, out_dir: Path) -> list[Path]:
    """Write results.json, results.md and the plots into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    serialisable = {k: v for k, v in record.items() if k != "slices"}
    (out_dir / "results.json").write_text(json.dumps(serialisable, indent=1, default=float))
    (out_dir / "results.md").write_text(markdown(record))
    return [out_dir / "results.json", out_dir / "results.md"] + plots(record, out_dir)
