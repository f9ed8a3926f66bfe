"""Rigid alignment of repeated acquisitions: DIPY against ANTs (``bids_auton2n-bench repeats-align``).

DIPY's ``affine_registration`` (rigid pipeline, its default pyramid)
against ANTs ``registration(type_of_transform="Rigid")`` on phantom pairs at 9 % moved by
random rigid motions (``--trials``, up to ``--max-degrees`` / ``--max-mm``): error of the
recovered motion (mm, over the brain) and wall time, in the same run.

Usage::

    bids_auton2n-bench repeats-align [--trials 3] [--out benchmarks/results/repeats_align]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from ._common import start_record, write_keeping_notes
from .repeats import _csv, _timed, move_head, rigid_motion


def align_comparison(config, log=print) -> list[dict]:
    """DIPY against ANTs rigid registration on moved phantom pairs (module docstring)."""
    from ...denoise.align import register_rigid
    from ...denoise.phantom import add_rician_noise, icbm152_phantom

    phantom = icbm152_phantom("T1w")
    affine = phantom.affine
    centre = affine[:3, :3] @ ((np.asarray(phantom.clean.shape) - 1) / 2) + affine[:3, 3]
    points = np.argwhere(phantom.brain_mask)[::20] @ affine[:3, :3].T + affine[:3, 3]
    rng = np.random.default_rng(7)
    rows = []

    def dipy_rigid(fixed, moving):
        from dipy.align import affine_registration

        _, matrix = affine_registration(moving, fixed, moving_affine=affine, static_affine=affine,
                                        pipeline=["center_of_mass", "translation", "rigid"])
        return matrix

    def ants_rigid(fixed, moving):
        return register_rigid(fixed, affine, moving, affine)

    libraries = {"dipy": dipy_rigid, "ants": ants_rigid}
    for trial in range(config.trials):
        degrees = rng.uniform(-config.max_degrees, config.max_degrees, 3)
        shift = rng.uniform(-config.max_mm, config.max_mm, 3)
        motion = rigid_motion(degrees, shift, centre)
        runs = [add_rician_noise(phantom.clean, config.level, phantom.reference_intensity, 50 + trial),
                add_rician_noise(move_head(phantom.clean, affine, motion), config.level,
                                 phantom.reference_intensity, 90 + trial)]
        for name in config.libraries:
            try:
                matrix, seconds = _timed(lambda: libraries[name](*runs))
            except Exception as exc:  # a library that fails is a row, not a stopped run
                rows.append({"trial": trial, "library": name, "error": str(exc)})
                continue
            error = points @ (matrix - motion)[:3, :3].T + (matrix - motion)[:3, 3]
            lengths = np.sqrt((error ** 2).sum(axis=1))
            rows.append({"trial": trial, "library": name, "degrees": degrees.round(2).tolist(),
                         "shift_mm": shift.round(2).tolist(), "error_mm_mean": float(lengths.mean()),
                         "error_mm_max": float(lengths.max()), "seconds": round(seconds, 1)})
            log(f"[bench repeats-align] trial {trial} {name:<5} error {lengths.mean():.3f} mm "
                f"(max {lengths.max():.3f}) {seconds:.0f} s")
    return rows


def write_report(record: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_file = out_dir / "results.json"
    json_file.write_text(json.dumps(record, indent=1, default=float))
    lines = ["# Rigid alignment: DIPY affine_registration vs ANTs registration (Rigid)", "",
             f"Command: `{record['config']['command']}`  ",
             f"Machine: {record['machine']['cpu']}, load average at start "
             f"{record['machine']['load_average_1_5_15']}", "",
             "| trial | motion (deg / mm) | library | error mean / max (mm) | seconds |",
             "|---|---|---|---|---|"]
    for r in record["rows"]:
        if "error" in r:
            lines.append(f"| {r['trial']} | | {r['library']} | failed: {r['error']} | |")
        else:
            lines.append(f"| {r['trial']} | {r['degrees']} / {r['shift_mm']} | {r['library']} | "
                         f"{r['error_mm_mean']:.3f} / {r['error_mm_max']:.3f} | {r['seconds']:.0f} |")
    md_file = out_dir / "results.md"
    write_keeping_notes(md_file, "\n".join(lines) + "\n")
    return [json_file, md_file]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bids_auton2n-bench repeats-align", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/repeats_align"))
    p.add_argument("--trials", type=int, default=3, help="random rigid motions")
    p.add_argument("--level", type=float, default=9.0, help="noise level, %% of white matter")
    p.add_argument("--max-degrees", type=float, default=8.0)
    p.add_argument("--max-mm", type=float, default=8.0)
    p.add_argument("--libraries", type=_csv, default=("ants", "dipy"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return p


def main(argv) -> int:
    args = parser().parse_args(argv)
    record = start_record("repeats-align", argv, args.threads)
    record["config"].update(trials=args.trials, level=args.level)
    record["rows"] = align_comparison(args)
    for path in write_report(record, args.out):
        print(f"[bench] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
