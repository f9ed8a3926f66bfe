"""Calibrate the Auto-N2N noise estimator on real scans with known added noise.

Writes ``bids_auton2n/data/noise_calibration.json`` (read by
:mod:`bids_auton2n.denoise.noise`).

Data: the project's real single-subject scans (:data:`SCANS`; never brain templates: ICBM152
is kept for measurement, ``bids_auton2n-bench noise-estimate``).

The scans already carry unknown noise (sigma0).  To reach the low end of the
range (1 %), each scan is first pre-denoised with the project's RI-NLM filter
(guide = the scan itself, sigma = the uncorrected estimate), which leaves a
near-clean *base* with a small unknown residual noise ``sigma0``.  Rician noise
of ``p = 1..9 %`` of the base's reference tissue is then added (seeded), and
the estimator's raw statistic ``s`` and ``scale`` are computed on each noisy
volume.  The model

    sqrt(sigma0_k**2 + sigma_add**2) = a * s + b * scale

is fitted by nonlinear least squares over ``a``, ``b <= 0`` and one residual
``sigma0_k`` per scan (nuisance), residuals in percent of the reference tissue.  The
loss (linear or robust, :data:`LOSS_GRID`) is the one with the lowest leave-one-scan-out
error on these real scans (:func:`calibrate`).
RI-NLM runs twice, its guide being the current base smoothed by a 1-voxel Gaussian.

Command: ``bids_auton2n-calibrate-noise [--data-dir DIR] [--cache work/noise_calibration.npz]``
(:mod:`bids_auton2n.cli.calibrate_noise`).
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import least_squares

from ..denoise.intensity import sanitize
from ..denoise.noise import (
    FLATNESS_SMOOTHING, FLATTEST_FRACTION, MIN_SNR, head_mask, noise_pair, raw_noise_statistic,
    reference_intensity,
)
from ..denoise.pairs import PATCH_RADIUS, SEARCH_RADIUS
from ..denoise.phantom import add_rician_noise
from ..denoise.rinlm import ri_nlm

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
#: The calibration record the estimator reads (:func:`~bids_auton2n.denoise.noise.load_calibration`).
OUTPUT = Path(__file__).resolve().parents[1] / "data" / "noise_calibration.json"


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


#: Loss functions of the fit tried by :func:`calibrate` (``scipy.optimize.least_squares``
#: names, ``f_scale`` in % of the reference tissue).  One real scan can fit the linear model
#: badly (stroke_T2 at 9 % of CSF, where few flat voxels are left above the SNR threshold):
#: a robust loss keeps it from setting the slope for the others, if the real scans say so.
LOSS_GRID = (("linear", 1.0),) + tuple(
    (loss, f_scale) for loss in ("soft_l1", "huber", "cauchy") for f_scale in (0.05, 0.1, 0.2, 0.3, 0.5)
)


def _residual_function(table: dict, scans: np.ndarray, *, model=None):
    """Residuals (% of reference) of ``scans``' points, as a function of the free parameters:
    ``(slope, intercept, sigma0 per scan)``, or only the sigma0s when ``model`` fixes the rest."""
    rows = np.isin(table["scan"], scans)
    index = np.searchsorted(scans, table["scan"][rows])
    raw, scale = table["raw"][rows], table["scale"][rows]
    sigma_add, reference = table["sigma_add"][rows], table["reference"][rows]

    def residuals(params):
        slope, intercept, sigma0 = (params[0], params[1], params[2:]) if model is None else (*model, params)
        return 100 * (slope * raw + intercept * scale - np.hypot(sigma0[index], sigma_add)) / reference

    # sigma0 starts away from 0, where the derivative of hypot vanishes.
    sigma0_start = 0.005 * np.array([reference[index == k][0] for k in range(len(scans))])
    return residuals, sigma0_start


def _fit_parameters(table: dict, scans: np.ndarray, loss: str, f_scale: float) -> np.ndarray:
    residuals, sigma0_start = _residual_function(table, scans)
    n = len(scans)
    # The intercept may not be positive: the anatomical mismatch in x - y only adds to the
    # noise, so a noise-free image must not be read as noisy.  A positive fit would come from
    # the bases' residual noise, which RI-NLM leaves spatially correlated and the pair
    # statistic under-reads, not from the estimator.
    bounds = (np.r_[0.0, -1.0, np.zeros(n)], np.r_[np.inf, 0.0, np.full(n, np.inf)])
    return least_squares(residuals, np.r_[1.0, -1e-4, sigma0_start], bounds=bounds, loss=loss,
                         f_scale=f_scale).x


def leave_one_scan_out(table: dict, loss: str = "linear", f_scale: float = 1.0) -> np.ndarray:
    """Errors (% of reference) on each scan of a model fitted on the other scans.

    The held-out scan's own residual noise ``sigma0`` is unknown to the others' fit, so it is
    fitted on its points (least squares) with slope and intercept fixed; the returned errors
    are those of that fit, in the order of ``table``'s points.
    """
    scans = np.unique(table["scan"])
    errors = np.empty(len(table["scan"]))
    for held_out in scans:
        slope, intercept = _fit_parameters(table, scans[scans != held_out], loss, f_scale)[:2]
        residuals, sigma0_start = _residual_function(table, np.array([held_out]),
                                                     model=(slope, intercept))
        sigma0 = least_squares(residuals, sigma0_start, bounds=(0.0, np.inf)).x
        errors[table["scan"] == held_out] = residuals(sigma0)
    return errors


def fit(table: dict, loss: str = "linear", f_scale: float = 1.0) -> dict:
    """Fit of slope, intercept and the per-scan residual sigma0 on every point."""
    scans = np.unique(table["scan"])
    params = _fit_parameters(table, scans, loss, f_scale)
    residuals, _ = _residual_function(table, scans)
    error = residuals(params)
    slope, intercept, sigma0 = params[0], params[1], params[2:]
    reference = table["reference"]
    truth = 100 * np.hypot(sigma0[np.searchsorted(scans, table["scan"])], table["sigma_add"]) / reference
    r2 = 1 - np.sum(error**2) / np.sum((truth - truth.mean()) ** 2)
    names = list(SCANS)
    return {
        "slope": float(slope),
        "intercept": float(intercept),
        "loss": {"function": loss, "f_scale_percent": f_scale},
        "r2": float(r2),
        "rmse_percent": float(np.sqrt(np.mean(error**2))),
        "max_abs_error_percent": float(np.max(np.abs(error))),
        "residual_sigma0_percent": {
            names[int(k)]: float(100 * sigma0[i] / reference[table["scan"] == k][0])
            for i, k in enumerate(scans)
        },
        "rmse_percent_per_scan": {
            names[int(k)]: float(np.sqrt(np.mean(error[table["scan"] == k] ** 2))) for k in scans
        },
    }


def calibrate(table: dict) -> dict:
    """:func:`fit` with the loss of :data:`LOSS_GRID` whose leave-one-scan-out RMSE is lowest.

    The choice is made on the real scans only (the phantom is benchmark material); the grid's
    cross-validation figures are returned with the fit (``loss_selection``).
    """
    grid = []
    for loss, f_scale in LOSS_GRID:
        errors = leave_one_scan_out(table, loss, f_scale)
        grid.append({"function": loss, "f_scale_percent": f_scale,
                     "loso_rmse_percent": float(np.sqrt(np.mean(errors**2))),
                     "loso_max_abs_error_percent": float(np.max(np.abs(errors)))})
    best = min(grid, key=lambda row: row["loso_rmse_percent"])
    result = fit(table, best["function"], best["f_scale_percent"])
    result["loss_selection"] = {"rule": "lowest leave-one-scan-out RMSE over the grid", "grid": grid}
    return result


def run_calibration(data_dir: Path, *, cache: Path | None = None, output: Path = OUTPUT,
                    command: str) -> dict:
    """Measure (or read from ``cache``), fit and write the calibration record to ``output``.

    Parameters
    ----------
    data_dir : Path
        Folder holding the :data:`SCANS`.
    cache : Path, optional
        npz of the raw statistics: reused if present, written otherwise.
    output : Path
        Calibration record to write (default: the one the package ships).
    command : str
        The command line, recorded in the calibration.

    Returns
    -------
    dict
        The record written.
    """
    if cache is not None and cache.is_file():
        table = dict(np.load(cache))
    else:
        table = measure(data_dir)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, **table)
    result = calibrate(table)
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
            "source": "--data-dir (the scans of shared/data, named above)",
            "base": f"scan pre-denoised with {DENOISING_PASSES} passes of ri_nlm (guide = Gaussian"
                    f"({GUIDE_SMOOTHING}) of the current base, sigma = its uncorrected estimate, Rician)",
            "added_noise": "Rician, percent of the base's reference tissue",
            "levels_percent": LEVELS.tolist(),
            "nuisance": "residual noise sigma0 of each base, total = hypot(sigma0, sigma_add)",
        },
        "points": {k: np.asarray(v).tolist() for k, v in table.items()},
        "date": datetime.date.today().isoformat(),
        "command": command,
    }
    output.write_text(json.dumps(record, indent=2) + "\n")
    return record
