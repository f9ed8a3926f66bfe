"""Which flat-voxel fraction and smoothing the noise statistic should use, judged on real scans.

For every (FLATTEST_FRACTION, FLATNESS_SMOOTHING) variant the calibration of
``bids_auton2n-calibrate-noise`` (:mod:`bids_auton2n.train.noise_calibration`) is refitted on
the real scans (same bases, levels and seeds, loss chosen by the same leave-one-scan-out rule)
and its fit and cross-validation errors reported; the error of that calibrated variant on the
ICBM152 T1w phantom (Rician 1-9 %, benchmark material: measured, never used to choose) is
printed beside it. The pair of each noisy volume is computed once for all variants.  Output:
``benchmarks/results/noise_estimator_variants.md``.

Usage::

    bids_auton2n-bench noise-estimator-variants [--data-dir DIR] [--out FILE]
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from ...denoise import noise
from ...denoise.intensity import sanitize
from ...denoise.phantom import add_rician_noise, icbm152_phantom
from ...train import noise_calibration
from ..harness import DEFAULT_DATA_DIR
from ._common import command_line, study_parser, write_keeping_notes

NAME = "noise-estimator-variants"

VARIANTS = list(itertools.product((0.02, 0.05, 0.1, 0.2), (1.0, 2.0)))


def raw_statistics(noisy: np.ndarray) -> dict:
    """``{variant: (raw, scale)}`` of one noisy volume (its pair computed once)."""
    mask = noise.head_mask(noisy)
    pair = noise.noise_pair(noisy, mask)
    statistics = {}
    for fraction, smoothing in VARIANTS:
        statistics[(fraction, smoothing)] = noise.raw_noise_statistic(
            noisy, pair, mask, flattest_fraction=fraction, flatness_smoothing=smoothing)[:2]
    return statistics


def main(argv: list[str]) -> int:
    parser = study_parser(NAME, __doc__)
    parser.add_argument("--data-dir", "--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks") / "results" / "noise_estimator_variants.md")
    args = parser.parse_args(argv)
    shipped = (noise.FLATTEST_FRACTION, noise.FLATNESS_SMOOTHING)
    rows = []
    for index, (name, contrast) in enumerate(noise_calibration.SCANS.items()):
        scan, _ = sanitize(nib.load(str(args.data_dir / name)).get_fdata(dtype=np.float32))
        mask = noise.head_mask(scan)
        base, _, _ = noise_calibration.denoised_base(scan, mask)
        reference = noise.reference_intensity(base, mask, contrast).intensity
        for level in noise_calibration.LEVELS:
            noisy = add_rician_noise(base, level, reference, seed=1000 * index + int(level))
            rows.append((index, level, level / 100 * reference, reference, raw_statistics(noisy)))
        print(f"{name} done", file=sys.stderr, flush=True)
    phantom = icbm152_phantom("T1w")
    white_matter = phantom.reference_intensity
    phantom_rows = [(level, raw_statistics(add_rician_noise(phantom.clean, level, white_matter,
                                                            seed=20260 + level)))
                    for level in range(1, 10)]
    lines = [
        "# Noise estimator variants, calibrated on real scans",
        "",
        f"`{command_line(NAME, argv)}`; shipped variant: fraction {shipped[0]}, "
        f"smoothing {shipped[1]}. Fit and leave-one-scan-out (LOSO) errors in % of the reference "
        "tissue over the 45 real calibration volumes; phantom errors in % of WM at Rician 1..9 %.",
        "",
        "| flattest fraction | smoothing | loss | slope | intercept | fit RMSE | LOSO RMSE | LOSO max "
        "| phantom error 1..9 % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        table = {
            "scan": np.array([row[0] for row in rows]),
            "percent": np.array([row[1] for row in rows]),
            "sigma_add": np.array([row[2] for row in rows]),
            "reference": np.array([row[3] for row in rows]),
            "raw": np.array([row[4][variant][0] for row in rows]),
            "scale": np.array([row[4][variant][1] for row in rows]),
        }
        fit = noise_calibration.calibrate(table)
        chosen = min(fit["loss_selection"]["grid"], key=lambda row: row["loso_rmse_percent"])
        errors = [100 * (fit["slope"] * stats[variant][0] + fit["intercept"] * stats[variant][1]
                         - level / 100 * white_matter) / white_matter
                  for level, stats in phantom_rows]
        lines.append(f"| {variant[0]} | {variant[1]} | {chosen['function']} {chosen['f_scale_percent']} | "
                     f"{fit['slope']:.4f} | {fit['intercept']:.2e} | {fit['rmse_percent']:.3f} | "
                     f"{chosen['loso_rmse_percent']:.3f} | {chosen['loso_max_abs_error_percent']:.3f} | "
                     + " ".join(f"{error:+.2f}" for error in errors) + " |")
    write_keeping_notes(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0

