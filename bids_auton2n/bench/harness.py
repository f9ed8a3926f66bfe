"""Benchmark runner: build the cases, run every method on every case in its own process, measure.

A *case* is one noisy volume (phantom at a noise level, or a real scan). For each case the noisy
volume is written to a temporary NIfTI, each method runs in a fresh ``python -m
bids_auton2n.bench.worker`` process (under ``/usr/bin/time -v`` when present, for wall time and
peak resident memory of the whole process), and the parent compares the output with the truth.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ..denoise.phantom import Phantom, add_rician_noise, crop, icbm152_phantom
from . import metrics
from .methods import METHODS

FULL_LEVELS = (0, 1, 3, 5, 7, 9)
QUICK_LEVELS = (1, 5)
QUICK_CROP = (64, 72, 56)
#: Noise seeds: base per dataset + 10 x level, so every (dataset, level) has its own fixed noise.
SEED_BASE = {"T1w": 1000, "T2w": 2000, "T1w-max": 3000}
REAL_SCANS = {  # file in the data folder -> contrast
    "stroke_T1.nii.gz": "T1w",
    "stroke_T2.nii.gz": "T2w",
    "stroke_FLAIR.nii.gz": "FLAIR",
    "seg3D_MR.nii.gz": "T1w",
}
QUICK_REAL_SCANS = ("stroke_T1.nii.gz",)
#: Real scans the benchmark can use as references (``scan:FILE`` datasets) and their contrast:
#: the project's held-out validation scan, never trained on.
REFERENCED_SCANS = {"philips_ADNI_MPRAGE_T1w.nii.gz": "T1w"}
#: Folder of the project's real scans (``--data-dir``): ``$BIDS_AUTON2N_DATA_DIR``, else
#: ``../shared/data`` from the current folder.
DEFAULT_DATA_DIR = Path(os.environ.get("BIDS_AUTON2N_DATA_DIR", "../shared/data"))
#: Manjón/Coupé demo convention: 8-bit range, PSNR over voxels whose truth exceeds this.
MAX_CONVENTION_PEAK = 255.0
MAX_CONVENTION_FLOOR = 10.0


@dataclass
class Case:
    """One noisy volume and what is known about it."""

    dataset: str                 # "T1w", "T2w", "T1w-max" (phantoms) or the scan's file name
    contrast: str
    level: float | None          # percent (phantoms)
    noisy: np.ndarray
    affine: np.ndarray
    seed: int | None = None
    true_sigma: float | None = None
    clean: np.ndarray | None = None
    labels: np.ndarray | None = None
    brain_mask: np.ndarray | None = None
    score_mask: np.ndarray | None = None   # where PSNR / SSIM are measured
    peak: float | None = None              # PSNR peak
    has_air: bool = True                   # real scans: uncropped, so the background is air
    own_noise_percent: float | None = None  # referenced scans: the reference's own noise

    @property
    def is_phantom(self) -> bool:
        return self.clean is not None


@dataclass
class BenchmarkConfig:
    out_dir: Path
    methods: tuple[str, ...] = tuple(METHODS)
    levels: tuple[float, ...] = FULL_LEVELS
    datasets: tuple[str, ...] = ("T1w", "T2w", "T1w-max")
    crop_shape: tuple[int, int, int] | None = None
    real_scans: tuple[str, ...] = tuple(REAL_SCANS)
    data_dir: Path = DEFAULT_DATA_DIR
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    timeout_s: float = 4 * 3600
    mode: str = "full"


def _phantom(contrast: str, crop_shape) -> Phantom:
    phantom = icbm152_phantom(contrast)
    return crop(phantom, crop_shape) if crop_shape else phantom


#: Prefix of a dataset that is a real scan used as the reference: ``scan:FILE`` (a file of
#: the data folder), Rician noise added to it as to the phantoms.
SCAN_PREFIX = "scan:"
#: Noise seed base of the referenced scans.
SCAN_SEED_BASE = 4000


@dataclass
class ReferencedScan:
    """A real scan as a benchmark reference (:func:`referenced_scan`)."""

    clean: np.ndarray
    labels: np.ndarray
    head_mask: np.ndarray
    reference_intensity: float
    affine: np.ndarray
    contrast: str
    own_noise_percent: float


def referenced_scan(path: Path, contrast: str, crop_shape) -> ReferencedScan:
    """A real scan as a benchmark reference (the held-out real-texture validation object).

    The scan (cropped around the centre of its head mask when ``crop_shape`` is given) is the
    "clean" image, its own noise included: a method is scored against the scan as it was
    acquired, so removing the scan's own noise costs PSNR like any other change (the case
    records that noise, estimated).  Tissue labels for the Dice measure are the k-means
    classes of the scan inside its head mask (1-3, 0 outside); the brain mask is the head
    mask (the scan is not skull-stripped).
    """
    from ..denoise.noise import estimate_noise, head_mask

    image = nib.load(str(path))
    data = np.asarray(image.get_fdata(dtype=np.float32))
    mask = head_mask(data)
    affine = image.affine
    if crop_shape:
        centre = np.round(ndi.center_of_mass(mask)).astype(int)
        start = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, crop_shape, data.shape)]
        window = tuple(slice(b, b + s) for b, s in zip(start, crop_shape))
        data, mask = data[window].copy(), mask[window].copy()
        affine = affine.copy()
        affine[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=float) + affine[:3, 3]
    own = estimate_noise(data, contrast=contrast, mask=mask)
    labels = metrics.kmeans_tissues(data, mask, contrast).astype(np.uint8)
    return ReferencedScan(clean=data, labels=labels, head_mask=mask,
                          reference_intensity=own.reference_intensity, affine=affine,
                          contrast=contrast, own_noise_percent=own.percent)


def phantom_cases(config: BenchmarkConfig):
    """Yield the phantom cases one at a time (full-size volumes are not all held at once)."""
    for dataset in config.datasets:
        if dataset.startswith(SCAN_PREFIX):
            name = dataset[len(SCAN_PREFIX):]
            scan = referenced_scan(config.data_dir / name, REFERENCED_SCANS.get(name, "T1w"),
                                   config.crop_shape)
            for level in config.levels:
                seed = SCAN_SEED_BASE + int(round(10 * level))
                yield Case(
                    dataset=dataset, contrast=scan.contrast, level=float(level),
                    noisy=add_rician_noise(scan.clean, level, scan.reference_intensity, seed),
                    affine=scan.affine, seed=seed,
                    true_sigma=level / 100.0 * scan.reference_intensity, clean=scan.clean,
                    labels=scan.labels, brain_mask=scan.head_mask, score_mask=scan.head_mask,
                    peak=float(scan.clean[scan.head_mask].max()),
                    own_noise_percent=scan.own_noise_percent,
                )
            continue
        phantom = _phantom("T1w" if dataset == "T1w-max" else dataset, config.crop_shape)
        clean = phantom.clean
        if dataset == "T1w-max":
            # Manjón/Coupé demos: image scaled to 0-255, sigma = p % of the maximum.
            clean = (clean * (MAX_CONVENTION_PEAK / clean.max())).astype(np.float32)
            reference, peak = MAX_CONVENTION_PEAK, MAX_CONVENTION_PEAK
            score_mask = clean > MAX_CONVENTION_FLOOR
        else:
            reference, score_mask = phantom.reference_intensity, phantom.head_mask
            peak = float(clean[phantom.head_mask].max())
        for level in config.levels:
            seed = SEED_BASE[dataset] + int(round(10 * level))
            yield Case(
                dataset=dataset, contrast=phantom.contrast, level=float(level),
                noisy=add_rician_noise(clean, level, reference, seed), affine=phantom.affine, seed=seed,
                true_sigma=level / 100.0 * reference, clean=clean, labels=phantom.labels,
                brain_mask=phantom.brain_mask, score_mask=score_mask, peak=peak,
            )


def _centre_crop(data: np.ndarray, affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    start = [max(0, (d - s) // 2) for d, s in zip(data.shape, shape)]
    window = tuple(slice(b, b + s) for b, s in zip(start, shape))
    affine = affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.asarray(start, float) + affine[:3, 3]
    return data[window].copy(), affine


def real_cases(config: BenchmarkConfig):
    for name in config.real_scans:
        path = config.data_dir / name
        if not path.exists():
            print(f"[bench] skipping real scan {path}: not found", file=sys.stderr)
            continue
        image = nib.load(str(path))
        data = np.asarray(image.get_fdata(dtype=np.float32))
        affine = image.affine
        if config.crop_shape:
            data, affine = _centre_crop(data, affine, config.crop_shape)
        yield Case(dataset=name, contrast=REAL_SCANS.get(name, "T1w"), level=None, noisy=data, affine=affine,
                   has_air=not config.crop_shape)


def real_scan_masks(noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Head mask (filled, closed threshold at 5 % of the 99th percentile) and background (air)."""
    foreground = noisy > 0.05 * np.percentile(noisy, 99)
    head = ndi.binary_fill_holes(ndi.binary_closing(foreground, iterations=2))
    background = ~ndi.binary_dilation(head, iterations=5)
    return head, background


# --------------------------------------------------------------------------- running methods

#: GNU time gives whole-process wall time and peak RSS; install with `apt-get install time`.
_TIME_BINARY = "/usr/bin/time" if Path("/usr/bin/time").exists() else None


def _thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        env[var] = str(threads)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _parse_time_v(stderr: str) -> dict:
    found = {}
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    if rss:
        found["peak_rss_mib"] = int(rss.group(1)) / 1024
    user = re.search(r"User time \(seconds\): ([\d.]+)", stderr)
    system = re.search(r"System time \(seconds\): ([\d.]+)", stderr)
    if user and system:
        found["cpu_s"] = float(user.group(1)) + float(system.group(1))
    return found


def run_method(method: str, in_file: Path, case: Case, work: Path, config: BenchmarkConfig) -> dict:
    """Run one method on one volume in a fresh process; returns its status and costs."""
    out_file = work / f"{method}.nii.gz"
    job_file = work / f"{method}.job.json"
    job_file.write_text(json.dumps({
        "method": method, "in_file": str(in_file), "out_file": str(out_file), "contrast": case.contrast,
        "true_sigma": case.true_sigma, "threads": config.threads,
    }))
    command = [sys.executable, "-m", "bids_auton2n.bench.worker", str(job_file)]
    if _TIME_BINARY:
        command = [_TIME_BINARY, "-v"] + command
    start = time.perf_counter()
    try:
        process = subprocess.run(command, capture_output=True, text=True, timeout=config.timeout_s,
                                 env=_thread_env(config.threads))
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"timed out after {config.timeout_s:.0f} s"}
    wall = time.perf_counter() - start
    result_file = job_file.with_suffix(".result.json")
    if not result_file.exists():
        tail = (process.stderr or "").strip().splitlines()
        reason = next((line for line in reversed(tail) if line and not line.startswith("\t")), "no output")
        return {"status": "error", "reason": f"worker exited {process.returncode}: {reason[:200]}"}
    record = json.loads(result_file.read_text())
    record["process_wall_s"] = wall
    record.update(_parse_time_v(process.stderr))
    if "peak_rss_mib" not in record:
        record["peak_rss_mib"] = record["self_maxrss_kb"] / 1024
        record["memory_source"] = "getrusage(RUSAGE_SELF) in the worker"
    else:
        record["memory_source"] = "/usr/bin/time -v"
    record["output"] = out_file if record["status"] == "ok" else None
    return record


# --------------------------------------------------------------------------- measuring

def phantom_measures(case: Case, denoised: np.ndarray, boundary: np.ndarray) -> dict:
    residual = case.noisy - denoised
    segmentation = metrics.kmeans_tissues(denoised, case.brain_mask, case.contrast)
    dice = metrics.dice_scores(segmentation, case.labels, case.brain_mask)
    head = case.labels > 0
    return {
        "psnr": metrics.psnr(case.clean, denoised, case.score_mask, case.peak),
        "ssim": metrics.ssim(case.clean, denoised, case.score_mask, case.peak),
        "dice": dice["mean"], "dice_tissues": {k: v for k, v in dice.items() if k != "mean"},
        "edge_ratio": metrics.edge_ratio(denoised, case.clean, boundary),
        "residual_whiteness": metrics.residual_whiteness(residual, head),
        "residual_edge_corr": metrics.residual_edge_correlation(residual, case.clean, head),
    }


def real_measures(case: Case, denoised: np.ndarray, head: np.ndarray, background: np.ndarray) -> dict:
    residual = case.noisy - denoised
    return {
        "residual_std": float(residual[head].std()),
        "residual_whiteness": metrics.residual_whiteness(residual, head),
        "residual_edge_corr": metrics.residual_edge_correlation(residual, denoised, head),
        # Skull-stripped scans have an all-zero background and central crops have no air.
        "background_std": (metrics.background_std(denoised, background)
                           if case.has_air and case.noisy[background].any() else float("nan")),
    }


def _middle_slice(volume: np.ndarray) -> np.ndarray:
    return np.asarray(volume[:, :, volume.shape[2] // 2], dtype=np.float32)


def run_benchmark(config: BenchmarkConfig, log=print) -> dict:
    """Run every method on every case; return the record written by :mod:`.report`."""
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    rows, slices, ceilings = [], {}, {}
    unavailable: dict[str, str] = {}
    cases = [phantom_cases(config), real_cases(config)]
    with tempfile.TemporaryDirectory(prefix="bids_auton2n_bench_") as tmp:
        for case in (c for generator in cases for c in generator):
            work = Path(tmp) / f"{case.dataset}_{case.level}"
            work.mkdir()
            in_file = work / "input.nii.gz"
            nib.Nifti1Image(case.noisy, case.affine).to_filename(in_file)
            key = (case.dataset, case.level)
            slices[key] = {"clean": _middle_slice(case.clean) if case.is_phantom else None,
                           "noisy": _middle_slice(case.noisy)}
            if case.is_phantom:
                boundary = metrics.tissue_boundaries(case.labels)
                if case.dataset not in ceilings:
                    clean_labels = metrics.kmeans_tissues(case.clean, case.brain_mask, case.contrast)
                    ceilings[case.dataset] = metrics.dice_scores(
                        clean_labels, case.labels, case.brain_mask)["mean"]
            else:
                head, background = real_scan_masks(case.noisy)
            for method in config.methods:
                row = {"dataset": case.dataset, "contrast": case.contrast, "level": case.level,
                       "seed": case.seed, "shape": list(case.noisy.shape), "phantom": case.is_phantom,
                       "own_noise_percent": case.own_noise_percent,
                       "method": method}
                if METHODS[method].needs_true_sigma and case.true_sigma is None:
                    row.update(status="n/a", reason="oracle method: true sigma unknown on real scans")
                elif method in unavailable:
                    row.update(status="n/a", reason=unavailable[method])
                else:
                    row.update(run_method(method, in_file, case, work, config))
                if row["status"] == "n/a" and not METHODS[method].needs_true_sigma:
                    unavailable.setdefault(method, row["reason"])
                output = row.pop("output", None)
                if output is not None:
                    denoised = np.asarray(nib.load(str(output)).get_fdata(dtype=np.float32))
                    row.update(phantom_measures(case, denoised, boundary) if case.is_phantom
                               else real_measures(case, denoised, head, background))
                    slices[key][method] = _middle_slice(denoised)
                    output.unlink()
                log(_progress_line(row))
                rows.append(row)
            shutil.rmtree(work)
    return {"rows": rows, "slices": slices, "dice_ceiling": ceilings}


def _progress_line(row: dict) -> str:
    level = "" if row["level"] is None else f"{row['level']:g}%"
    where = f"{row['dataset']} {level}".strip()
    if row["status"] != "ok":
        return f"[bench] {where:>24} {row['method']:<11} {row['status']}: {row['reason']}"
    score = (f"PSNR {row['psnr']:.2f} dB SSIM {row['ssim']:.4f} Dice {row['dice']:.4f}" if row["phantom"]
             else f"residual std {row['residual_std']:.3f}")
    return (f"[bench] {where:>24} {row['method']:<11} {score}  "
            f"{row['process_wall_s']:.1f} s, {row['peak_rss_mib']:.0f} MiB")
