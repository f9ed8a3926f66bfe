#!/usr/bin/env python
"""Calibrate the Auto-N2N noise estimator on real scans with known added noise.

Writes ``bids_auton2n/data/noise_calibration.json`` (read by
:mod:`bids_auton2n.denoise.noise`).

Data: the real single-subject scans of ``/work/shared/data`` (never brain
templates: ICBM152 is kept for measurement, ``scripts/measure_noise_estimate.py``).

The scans already carry unknown noise (sigma0).  To reach the low end of the
range (1 %), each scan is first pre-denoised with the project's RI-NLM filter
(guide = the scan itself, sigma = the uncorrected estimate), which leaves a
near-clean *base* with a small unknown residual noise ``sigma0``.  Rician noise
of ``p = 1..9 %`` of the base's reference tissue is then added (seeded), and
the estimator's raw statistic ``s`` and ``scale`` are computed on each noisy
volume.  The model

    sqrt(sigma0_k**2 + sigma_add**2) = a * s + b * scale

is fitted by nonlinear least squares over ``a``, ``b <= 0`` and one residual
``sigma0_k`` per scan (nuisance), residuals in percent of the reference tissue.
RI-NLM runs twice, its guide being the current base smoothed by a 1-voxel Gaussian.

Usage::

    python scripts/calibrate_noise.py [--data /work/shared/data] [--cache work/noise_calibration.npz]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import least_squares

from bids_auton2n.denoise.intensity import sanitize
from bids_auton2n.denoise.noise import (
    FLATNESS_SMOOTHING, FLATTEST_FRACTION, MIN_SNR, head_mask, noise_pair, raw_noise_statistic,
    reference_intensity,
)
from bids_auton2n.denoise.pairs import PATCH_RADIUS, SEARCH_RADIUS
from bids_auton2n.denoise.phantom import add_rician_noise
from bids_auton2n.denoise.rinlm import ri_nlm

SCANS = {
    "stroke_T1.nii.gz": "T1w",
    "stroke_T2.nii.gz": "T2w",
    "stroke_FLAIR.nii.gz": "FLAIR",
    "seg3D_MR.nii.gz": "T1w",
    "chris_PD.nii.gz": "PDw",
}
LEVELS = np.arange(1, 10, dtype=float)
#: Gaussian sigma (voxels) of the RI-NLM guide of the pre-denoising.
GUIDE_SMOOTHING = 1.0
#: RI-NLM passes (each with the raw estimate of what is left) to push the residual sigma0
#: far below the 1 % level, where it would be confounded with the intercept.
DENOISING_PASSES = 2
OUTPUT = Path(__file__).resolve().parents[1] / "bids_auton2n" / "data" / "noise_calibration.json"


def denoised_base(scan: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Near-clean base of a real scan: ``(base, raw noise of the scan, raw noise left)``.

    A smooth guide makes RI-NLM average over all similar tissue (guide = the scan itself
    barely denoises: its weights see the noise).
    """
    first, _, _ = raw_noise_statistic(scan, noise_pair(scan, mask), mask)
    base, residual = scan, first
    for _ in range(DENOISING_PASSES):
        base = ri_nlm(base, ndi.gaussian_filter(base, GUIDE_SMOOTHING), residual, rician=True,
                      mask=mask)
        residual, _, _ = raw_noise_statistic(base, noise_pair(base, mask), mask)
    return base, first, residual


def measure(data: Path) -> dict:
    """Raw statistics of every (scan, level): arrays keyed by column name."""
    rows = {key: [] for key in ("scan", "percent", "sigma_add", "raw", "scale", "reference")}
    for index, (name, contrast) in enumerate(SCANS.items()):
        start = time.perf_counter()
        scan, _ = sanitize(nib.load(str(data / name)).get_fdata(dtype=np.float32))
        mask = head_mask(scan)
        base, first, residual = denoised_base(scan, mask)
        reference = reference_intensity(base, mask, contrast).intensity
        for level in LEVELS:
            noisy = add_rician_noise(base, level, reference, seed=1000 * index + int(level))
            noisy_mask = head_mask(noisy)
            raw, scale, _ = raw_noise_statistic(noisy, noise_pair(noisy, noisy_mask), noisy_mask)
            for key, value in zip(rows, (index, level, level / 100 * reference, raw, scale, reference)):
                rows[key].append(value)
        print(f"{name}: scan sigma (raw) {first:.2f}, base (raw) {residual:.2f}, reference {reference:.1f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return {key: np.asarray(value) for key, value in rows.items()}


def fit(table: dict) -> dict:
    """Least-squares fit of slope, intercept and the per-scan residual sigma0."""
    n_scans = int(table["scan"].max()) + 1
    reference = table["reference"]

    def residuals(params):
        slope, intercept, sigma0 = params[0], params[1], params[2:]
        truth = np.hypot(sigma0[table["scan"]], table["sigma_add"])
        return 100 * (slope * table["raw"] + intercept * table["scale"] - truth) / reference

    # sigma0 starts away from 0, where the derivative of hypot vanishes.
    start = np.r_[1.0, -1e-4, 0.005 * np.array([reference[table["scan"] == k][0] for k in range(n_scans)])]
    # The intercept may not be positive: the anatomical mismatch in x - y only adds to the
    # noise, so a noise-free image must not be read as noisy.  A positive fit would come from
    # the bases' residual noise, which RI-NLM leaves spatially correlated and the pair
    # statistic under-reads, not from the estimator.
    lower = np.r_[0.0, -1.0, np.zeros(n_scans)]
    upper = np.r_[np.inf, 0.0, np.full(n_scans, np.inf)]
    result = least_squares(residuals, start, bounds=(lower, upper))
    slope, intercept, sigma0 = result.x[0], result.x[1], result.x[2:]
    truth = 100 * np.hypot(sigma0[table["scan"]], table["sigma_add"]) / reference
    predicted = truth + residuals(result.x)
    error = predicted - truth
    r2 = 1 - np.sum(error**2) / np.sum((truth - truth.mean()) ** 2)
    names = list(SCANS)
    return {
        "slope": float(slope),
        "intercept": float(intercept),
        "r2": float(r2),
        "rmse_percent": float(np.sqrt(np.mean(error**2))),
        "max_abs_error_percent": float(np.max(np.abs(error))),
        "residual_sigma0_percent": {
            names[k]: float(100 * sigma0[k] / reference[table["scan"] == k][0]) for k in range(n_scans)
        },
        "rmse_percent_per_scan": {
            names[k]: float(np.sqrt(np.mean(error[table["scan"] == k] ** 2))) for k in range(n_scans)
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--cache", type=Path, default=None,
                        help="npz of the raw statistics: reused if present, written otherwise")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if args.cache is not None and args.cache.is_file():
        table = dict(np.load(args.cache))
    else:
        table = measure(args.data)
        if args.cache is not None:
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.cache, **table)
    result = fit(table)
    record = {
        "model": {
            "formula": "sigma = slope * raw_std + intercept * scale",
            "slope": result["slope"],
            "intercept": result["intercept"],
        },
        "fit": {k: v for k, v in result.items() if k not in ("slope", "intercept")},
        "estimator": {
            "pair": "synthetic_pair(exclude_centre=True)",
            "search_radius": SEARCH_RADIUS,
            "patch_radius": PATCH_RADIUS,
            "spread": "1.4826 * MAD(x - y) / sqrt(2)",
            "voxels": (f"head mask eroded by 1 voxel, 3x3x3 local mean >= {MIN_SNR} x spread, "
                       f"the {FLATTEST_FRACTION:.0%} with the smallest gradient of the image "
                       f"smoothed by a {FLATNESS_SMOOTHING}-voxel Gaussian"),
            "scale": "median intensity of those voxels",
        },
        "data": {
            "scans": {name: contrast for name, contrast in SCANS.items()},
            "source": str(args.data),
            "base": f"scan pre-denoised with {DENOISING_PASSES} passes of ri_nlm (guide = Gaussian"
                    f"({GUIDE_SMOOTHING}) of the current base, sigma = its uncorrected estimate, Rician)",
            "added_noise": "Rician, percent of the base's reference tissue",
            "levels_percent": LEVELS.tolist(),
            "nuisance": "residual noise sigma0 of each base, total = hypot(sigma0, sigma_add)",
        },
        "points": {k: np.asarray(v).tolist() for k, v in table.items()},
        "date": datetime.date.today().isoformat(),
        "command": "python scripts/calibrate_noise.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"model": record["model"], "fit": record["fit"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
