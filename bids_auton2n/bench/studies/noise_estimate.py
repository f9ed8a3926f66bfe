"""Measure the noise estimator on the ICBM152 phantom (benchmark only, never fitted on).

For each contrast and Rician noise level ``p = 1..9 %`` of the phantom's reference
tissue, the full pipeline estimate (:func:`bids_auton2n.denoise.noise.estimate_noise`
with its own head mask and pair) is compared with the true sigma.  Errors are given in
percent of the phantom's white-matter intensity (the target is |error| <= 0.25 % for
T1w) and of its reference tissue.

Usage::

    bids_auton2n-bench noise-estimate [--contrasts T1w T2w] [--json out.json]
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from ...denoise.noise import estimate_noise
from ...denoise.phantom import TISSUE_INTENSITY, add_rician_noise, icbm152_phantom
from ._common import study_parser

NAME = "noise-estimate"


def measure(contrast: str, levels, seed: int) -> list[dict]:
    phantom = icbm152_phantom(contrast)
    white_matter = TISSUE_INTENSITY[contrast]["WM"] / max(
        TISSUE_INTENSITY[contrast]["WM"], TISSUE_INTENSITY[contrast]["CSF"]
    ) * phantom.reference_intensity
    rows = []
    for level in levels:
        noisy = add_rician_noise(phantom.clean, level, phantom.reference_intensity, seed + int(level))
        start = time.perf_counter()
        estimate = estimate_noise(noisy, contrast=contrast)
        seconds = time.perf_counter() - start
        truth = level / 100 * phantom.reference_intensity
        rows.append({
            "contrast": contrast,
            "percent_true": float(level),
            "sigma_true": truth,
            "sigma_est": estimate.sigma,
            "error_percent_of_wm": 100 * (estimate.sigma - truth) / white_matter,
            "error_percent_of_reference": 100 * (estimate.sigma - truth) / phantom.reference_intensity,
            "percent_est": estimate.percent,
            "reference_true": phantom.reference_intensity,
            "reference_est": estimate.reference_intensity,
            "raw_std": estimate.raw_std,
            "n_voxels": estimate.n_voxels,
            "seconds": seconds,
            "load1": os.getloadavg()[0],
        })
        r = rows[-1]
        print(f"{contrast} {level:3.0f}%  sigma true {truth:7.3f} est {r['sigma_est']:7.3f}  "
              f"err {r['error_percent_of_wm']:+.3f} %WM {r['error_percent_of_reference']:+.3f} %ref  "
              f"percent est {r['percent_est']:.2f} (ref {r['reference_est']:.1f}/{truth / level * 100:.0f})  "
              f"{seconds:.1f} s load {r['load1']:.1f}", flush=True)
    return rows


def main(argv: list[str]) -> int:
    parser = study_parser(NAME, __doc__)
    parser.add_argument("--contrasts", nargs="+", default=["T1w", "T2w"])
    parser.add_argument("--levels", nargs="+", type=float, default=list(range(1, 10)))
    parser.add_argument("--seed", type=int, default=20260)
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = [row for contrast in args.contrasts for row in measure(contrast, args.levels, args.seed)]
    for contrast in args.contrasts:
        errors = np.array([r["error_percent_of_wm"] for r in rows if r["contrast"] == contrast])
        print(f"{contrast}: max |error| {np.max(np.abs(errors)):.3f} % of WM, "
              f"RMS {np.sqrt(np.mean(errors**2)):.3f} % of WM")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0

