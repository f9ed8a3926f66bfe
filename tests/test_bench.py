"""Tests of the benchmark harness: measures, worker status records, and a tiny --quick run."""

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from bids_auton2n.bench import methods, metrics, worker
from bids_auton2n.bench.__main__ import main as bench_main


# --------------------------------------------------------------------------- measures

def test_psnr_against_direct_formula():
    truth = np.zeros((4, 5, 6), np.float32)
    truth[1:3] = 100.0
    estimate = truth + 2.0
    mask = np.ones(truth.shape, bool)
    assert metrics.psnr(truth, estimate, mask, peak=100.0) == pytest.approx(10 * np.log10(100.0**2 / 4.0))
    assert metrics.psnr(truth, truth, mask, peak=100.0) == float("inf")


def _three_tissues(shape=(30, 30, 30)):
    labels = np.zeros(shape, np.uint8)
    labels[3:-3, 3:-3, 3:-3] = 1
    labels[6:-6, 6:-6, 6:-6] = 2
    labels[10:-10, 10:-10, 10:-10] = 3
    image = np.choose(labels, [0.0, 25.0, 65.0, 100.0]).astype(np.float32)
    return labels, image


def test_kmeans_recovers_piecewise_constant_tissues_in_both_contrasts():
    labels, image = _three_tissues()
    brain = labels > 0
    t1 = metrics.kmeans_tissues(image, brain, "T1w")
    assert metrics.dice_scores(t1, labels, brain)["mean"] == pytest.approx(1.0)
    # Inverted contrast (T2w-like): the tissue order flips, the labels must not.
    t2 = metrics.kmeans_tissues(130.0 - image, brain, "T2w")
    assert metrics.dice_scores(t2, labels, brain)["mean"] == pytest.approx(1.0)
    wrong = metrics.kmeans_tissues(130.0 - image, brain, "T1w")
    assert metrics.dice_scores(wrong, labels, brain)["mean"] < 0.5


def test_edge_ratio_and_residual_structure():
    labels, image = _three_tissues()
    boundary = metrics.tissue_boundaries(labels)
    assert metrics.edge_ratio(image, image, boundary) == pytest.approx(1.0)
    blurred = ndi.gaussian_filter(image, 1.5)
    assert metrics.edge_ratio(blurred, image, boundary) < 0.8
    rng = np.random.default_rng(0)
    white = rng.normal(size=image.shape)
    mask = np.ones(image.shape, bool)
    assert metrics.residual_whiteness(white, mask) == pytest.approx(1.0, abs=0.05)
    # A residual made of removed edges is spatially correlated and follows the gradient.
    removed = image - blurred
    assert metrics.residual_whiteness(removed, mask) > 3
    assert metrics.residual_edge_correlation(removed, image, mask) > 0.5
    assert abs(metrics.residual_edge_correlation(white, image, mask)) < 0.05


# --------------------------------------------------------------------------- worker

@pytest.fixture
def job(tmp_path):
    import nibabel as nib

    in_file = tmp_path / "in.nii.gz"
    nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)).to_filename(in_file)

    def make(method):
        job_file = tmp_path / f"{method}.job.json"
        job_file.write_text(json.dumps({"method": method, "in_file": str(in_file),
                                        "out_file": str(tmp_path / f"{method}.nii.gz"),
                                        "contrast": "T1w", "true_sigma": None, "threads": 1}))
        return job_file

    return make


@pytest.mark.parametrize("exception, status", [(ImportError("no module named peer"), "n/a"),
                                               (RuntimeError("boom\nsecond line"), "error")])
def test_worker_turns_failures_into_status_records(monkeypatch, job, exception, status):
    def broken(noisy, given):
        raise exception

    monkeypatch.setitem(methods.METHODS, "broken", methods.Method("broken", "test", broken))
    record = worker.run_job(job("broken"))
    assert record["status"] == status
    assert str(exception).splitlines()[0] in record["reason"]
    assert "\n" not in record["reason"]


def test_worker_writes_output(job, tmp_path):
    record = worker.run_job(job("noisy"))
    assert record["status"] == "ok"
    assert (tmp_path / "noisy.nii.gz").exists()


# --------------------------------------------------------------------------- a tiny --quick run

def test_quick_run_writes_table_and_plots(tmp_path):
    pytest.importorskip("dipy")
    out = tmp_path / "results"
    rc = bench_main(["--quick", "--crop", "28", "28", "20", "--methods", "noisy,dipy,ours",
                     "--threads", "1", "--out", str(out)])
    assert rc == 0
    for name in ("results.md", "results.json", "psnr.png", "ssim.png", "dice.png", "cost.png", "montage.png"):
        assert (out / name).stat().st_size > 0, name
    record = json.loads((out / "results.json").read_text())
    rows = {(r["dataset"], r["level"], r["method"]): r for r in record["rows"]}
    noisy, dipy = rows[("T1w", 5.0, "noisy")], rows[("T1w", 5.0, "dipy")]
    assert noisy["status"] == dipy["status"] == "ok"
    assert noisy["peak_rss_mib"] > 0 and noisy["process_wall_s"] > 0
    assert dipy["psnr"] > noisy["psnr"] + 1.0  # a denoiser must beat its input at 5 %
    ours = rows[("T1w", 5.0, "ours")]
    table = (out / "results.md").read_text()
    assert "| dipy |" in table and "## Machine" in table
    if ours["status"] == "ok":
        assert np.isfinite(ours["psnr"]) and "cnn" in ours["timings"]
    else:  # no weights / pipeline yet: reported, not crashed
        assert ours["reason"] and ours["reason"].replace("|", "/") in table


def test_unknown_method_is_refused(tmp_path, capsys):
    assert bench_main(["--quick", "--methods", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_a_real_scan_can_be_the_reference(tmp_path):
    """``scan:FILE`` datasets: the scan is the truth, noise is added, its own noise is stated."""
    import nibabel as nib

    from bids_auton2n.denoise.phantom import synthetic_head

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    scan = synthetic_head((40, 44, 40), "T1w", np.random.default_rng(0))
    scan = scan + np.random.default_rng(1).normal(0, 1.0, scan.shape).astype(np.float32)
    nib.Nifti1Image(np.abs(scan), np.eye(4)).to_filename(data_dir / "philips_ADNI_MPRAGE_T1w.nii.gz")
    out = tmp_path / "results"
    rc = bench_main(["--datasets", "scan:philips_ADNI_MPRAGE_T1w.nii.gz", "--levels", "5",
                     "--real-scans", "none", "--crop", "32", "36", "32", "--methods", "noisy",
                     "--data-dir", str(data_dir), "--threads", "1", "--out", str(out)])
    assert rc == 0
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["dataset"] == "scan:philips_ADNI_MPRAGE_T1w.nii.gz" and row["shape"] == [32, 36, 32]
    assert row["phantom"] and row["status"] == "ok"
    assert 0.3 < row["own_noise_percent"] < 3.0  # 1 unit of white matter's 100
    assert 20 < row["psnr"] < 40
    assert "as reference" in (out / "results.md").read_text()


@pytest.mark.parametrize("shape", [(80, 96, 72), (181, 217, 181), (48, 56, 48), (12, 200, 20)])
def test_noise2void_tiles_are_what_careamics_accepts(shape):
    """Powers of two of at least 16, even overlaps below the tile (CAREamics'
    TiledPatchingConfig; the 80x96x72 benchmark crop once gave 96 and 72, which it refused)."""
    tile, overlap = methods.n2v_tiles(shape)
    assert all(t >= 16 and t & (t - 1) == 0 for t in tile), tile
    assert all(o % 2 == 0 and o < t for o, t in zip(overlap, tile)), overlap
    assert all(t <= max(s, 16) for t, s in zip(tile, shape)), tile
