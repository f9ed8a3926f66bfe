"""The noise calibration's fit and its leave-one-scan-out choice of loss
(:mod:`bids_auton2n.train.noise_calibration`), on synthetic calibration tables with a known model."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def calibration():
    from bids_auton2n.train import noise_calibration

    return noise_calibration


def synthetic_table(slope=0.97, sigma0=(1.0, 0.5, 2.0, 0.0, 1.5), outlier_gain=0.0, seed=0):
    """Points that follow ``hypot(sigma0, sigma_add) = slope * raw`` up to 0.02 % of jitter;
    the last scan's raw statistic grows by ``outlier_gain`` per % of added noise."""
    rng = np.random.default_rng(seed)
    rows = {key: [] for key in ("scan", "percent", "sigma_add", "raw", "scale", "reference")}
    for scan, residual in enumerate(sigma0):
        reference = 150.0 + 20 * scan
        for percent in range(1, 10):
            sigma_add = percent / 100 * reference
            truth = np.hypot(residual / 100 * reference, sigma_add)
            raw = truth / slope * (1 + rng.normal(0, 2e-4))
            if scan == len(sigma0) - 1:
                raw *= 1 + outlier_gain * percent
            for key, value in zip(rows, (scan, percent, sigma_add, raw, reference, reference)):
                rows[key].append(value)
    return {key: np.asarray(value, dtype=float) for key, value in rows.items()}


def test_fit_recovers_the_model_and_cross_validation_is_near_exact(calibration):
    table = synthetic_table()
    result = calibration.fit(table)
    assert result["slope"] == pytest.approx(0.97, abs=1e-3)
    assert result["intercept"] == pytest.approx(0.0, abs=1e-5)
    assert result["rmse_percent"] < 0.01
    assert np.sqrt(np.mean(calibration.leave_one_scan_out(table) ** 2)) < 0.01


def test_a_scan_off_the_model_is_held_out_by_the_chosen_robust_loss(calibration):
    table = synthetic_table(outlier_gain=0.01)
    least_squares = calibration.fit(table)
    chosen = calibration.calibrate(table)
    assert chosen["loss"]["function"] != "linear"
    grid = {(row["function"], row["f_scale_percent"]): row["loso_rmse_percent"]
            for row in chosen["loss_selection"]["grid"]}
    assert min(grid.values()) == grid[(chosen["loss"]["function"], chosen["loss"]["f_scale_percent"])]
    assert grid[("linear", 1.0)] > min(grid.values())
    assert abs(chosen["slope"] - 0.97) < abs(least_squares["slope"] - 0.97)
    assert chosen["slope"] == pytest.approx(0.97, abs=5e-3)
