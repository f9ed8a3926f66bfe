"""Benchmark of repeated acquisitions (``bids_auton2n-bench repeats``).

Every method on the same pairs, in one run, one after the other in this process
(``--threads`` threads), writing ``results.json`` and ``results.md`` as rows complete:

* **Phantom pairs** at each ``--levels`` (default 5 and 9 %): two independent Rician
  realizations of the ICBM152 benchmark phantom (:mod:`bids_auton2n.denoise.phantom`), the
  second of the phantom moved rigidly by :data:`PHANTOM_MOTION` *before* its noise is drawn,
  cropped to ``--crop`` (default the README benchmark's 96x112x88 window, the same for both:
  the scanner's grid). Scored against the clean phantom on run 1's grid (PSNR over the head,
  peak = clean maximum, as ``bids_auton2n-bench``; SSIM). Rows: the noisy run 1 and the
  noisy aligned average; (a) our single-image path on run 1; (b) the aligned average of the
  noisy runs denoised by the single-image path; (c) BM4D on the aligned average given its
  true noise sigma (an oracle); ours on the repeats (``denoise_repeats``, each ``--methods``).
* **The UIH scan-rescan pair** (``../shared/data/uih_T1w_sess1/2``), 2x2 in-plane block
  averages (160x230x256 at 1 mm; ``--uih none`` skips it): alignment figures, then the
  agreement of the two sessions after alignment, inside a brain mask, for the noisy pair, the
  single-image path on each session and the repeats path (the first of ``--methods``;
  each session denoised in its own space, then aligned as the noisy pair): Pearson correlation of the
  intensities and Dice of 3-class k-means tissue maps, and the mean gradient magnitude
  (sharpness: agreement can also rise by blurring both sessions).  The brain mask is the
  benchmark phantom's, carried onto session 1 by an ANTs affine registration of the phantom
  (benchmark material used as a measuring tool only).

The choice of ANTs is measured by ``bids_auton2n-bench repeats-align``
(:mod:`bids_auton2n.bench.studies.repeats_align`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..harness import DEFAULT_DATA_DIR
from ._common import start_record, write_keeping_notes

#: Rigid motion of the second phantom run: rotations about x, y, z (degrees) and shift (mm),
#: about the centre of the phantom's grid.
PHANTOM_MOTION = ((-2.5, 3.0, 1.5), (-2.0, 1.5, 2.5))
#: Noise seeds of the phantom pairs: run 1 ``base + 10 x level``, run 2 that plus 1.
SEED_BASE = 4000
DEFAULT_LEVELS = (5.0, 9.0)
DEFAULT_CROP = (96, 112, 88)
UIH_FILES = ("uih_T1w_sess1.nii.gz", "uih_T1w_sess2.nii.gz")


def rigid_motion(degrees, shift_mm, centre) -> np.ndarray:
    """World map of a rotation (x, y, z Euler degrees) about ``centre`` then a shift."""
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    motion = np.eye(4)
    motion[:3, :3] = rotation
    motion[:3, 3] = np.asarray(centre) - rotation @ np.asarray(centre) + np.asarray(shift_mm)
    return motion


def move_head(clean: np.ndarray, affine: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """``clean`` after the head moved by ``motion`` (world map), on the same grid."""
    voxels = np.linalg.inv(affine) @ np.linalg.inv(motion) @ affine
    return ndi.affine_transform(clean, voxels[:3, :3], voxels[:3, 3], order=3,
                                mode="constant").astype(np.float32)


def phantom_pair(level: float, crop_shape=DEFAULT_CROP, motion=PHANTOM_MOTION):
    """Clean phantom, motion, the two noisy runs (cropped) and the phantom's metadata."""
    from ...denoise.phantom import add_rician_noise, crop, icbm152_phantom

    phantom = icbm152_phantom("T1w")
    centre = phantom.affine[:3, :3] @ ((np.asarray(phantom.clean.shape) - 1) / 2) + phantom.affine[:3, 3]
    matrix = rigid_motion(*motion, centre)
    moved = move_head(phantom.clean, phantom.affine, matrix)
    cropped = crop(phantom, tuple(crop_shape)) if crop_shape else phantom
    if crop_shape:
        start = np.round(np.linalg.inv(phantom.affine) @ cropped.affine[:, 3])[:3].astype(int)
        moved = moved[tuple(slice(b, b + s) for b, s in zip(start, crop_shape))]
    seed = SEED_BASE + int(round(10 * level))
    runs = [add_rician_noise(cropped.clean, level, cropped.reference_intensity, seed),
            add_rician_noise(moved, level, cropped.reference_intensity, seed + 1)]
    clean_runs = [cropped.clean, moved]
    return cropped, matrix, runs, clean_runs, seed


def _score(phantom, image) -> dict:
    from .. import metrics

    peak = float(phantom.clean[phantom.head_mask].max())
    return {"psnr": metrics.psnr(phantom.clean, image, phantom.head_mask, peak),
            "ssim": metrics.ssim(phantom.clean, image, phantom.head_mask, peak)}


def _timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def run_phantom_level(level: float, config, log=print) -> list[dict]:
    """Every row of one noise level (see the module docstring)."""
    from ...denoise.align import resample_to_reference
    from ...denoise.pipeline import denoise_array
    from ...denoise.repeats import align_runs, coverage_mean, denoise_repeats

    phantom, motion, runs, clean_runs, seed = phantom_pair(level, config.crop)
    affine = phantom.affine
    rows = []

    def row(method, image, seconds, **extra):
        record = {"dataset": "ICBM152 phantom pair", "level": level, "seed": seed,
                  "shape": list(phantom.clean.shape), "method": method,
                  "seconds": round(seconds, 1), **_score(phantom, image), **extra}
        log(f"[bench repeats] {level:g}% {method:<34} PSNR {record['psnr']:.2f} dB "
            f"SSIM {record['ssim']:.4f} {seconds:.0f} s")
        rows.append(record)

    alignments, align_s = _timed(lambda: align_runs(runs, [affine, affine]))
    found = alignments[1].matrix
    points = np.argwhere(phantom.brain_mask) @ affine[:3, :3].T + affine[:3, 3]
    error = points @ (found - motion)[:3, :3].T + (found - motion)[:3, 3]
    alignment = {**alignments[1].to_dict(), "error_mm_mean": float(np.sqrt((error ** 2).sum(1)).mean()),
                 "error_mm_max": float(np.sqrt((error ** 2).sum(1)).max())}
    moved, covered = resample_to_reference(runs[1], affine, found, runs[0].shape, affine)
    average = coverage_mean([runs[0], moved], [np.ones(covered.shape, bool), covered])
    row("noisy run 1", runs[0], 0.0)
    row("noisy aligned average", average, align_s, alignment=alignment)
    result, seconds = _timed(lambda: denoise_array(runs[0]))
    row("(a) ours, single image (run 1)", result.denoised, seconds)
    result, seconds = _timed(lambda: denoise_array(average))
    row("(b) ours, single image on the average", result.denoised, seconds,
        noise_estimate_percent=result.noise.percent)
    # The true noise of the average: that of the two noise fields, the second resampled.
    moved_clean, _ = resample_to_reference(clean_runs[1], affine, found, runs[0].shape, affine)
    first_noise = runs[0] - clean_runs[0]
    noise = np.where(covered, 0.5 * (first_noise + moved - moved_clean), first_noise)
    true_sigma = float(noise[phantom.head_mask].std())
    try:
        import bm4d

        image, seconds = _timed(lambda: np.asarray(bm4d.bm4d(average, true_sigma), np.float32))
        row("(c) BM4D on the average, true sigma", image, seconds,
            true_sigma_percent=100 * true_sigma / phantom.reference_intensity)
    except ImportError as exc:
        log(f"[bench repeats] BM4D not run: {exc}")
    for method in config.methods:
        result, seconds = _timed(lambda: denoise_repeats(
            runs, [affine, affine], alignments=alignments, method=method,
            budget_s=config.budget_s, max_steps=config.max_steps))
        if result.fell_back:  # scored as what the app writes then: run 1 on its own
            row(f"ours, repeats ({method}): FELL BACK to single images", result.denoised[0],
                seconds, fallback=result.fallback_reasons())
        else:
            row(f"ours, repeats ({method})", result.combined, seconds,
                run1_own_space=_score(phantom, result.denoised[0]), training=result.training)
    return rows


def _block_average_in_plane(path: Path):
    """The scan with its finer-than-1 mm axes block-averaged (the registration's grid)."""
    import nibabel as nib

    from ...denoise.align import working_grid

    image = nib.load(str(path))
    return working_grid(np.asarray(image.get_fdata(dtype=np.float32)), image.affine)


def _brain_mask(reference: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The benchmark phantom's brain mask carried onto ``reference`` by an ANTs affine."""
    import ants
    import nibabel as nib

    from ...denoise.phantom import icbm152_phantom

    phantom = icbm152_phantom("T1w")
    images = []
    for data, aff in ((reference, affine), (phantom.clean, phantom.affine),
                      (phantom.brain_mask.astype(np.float32), phantom.affine)):
        img = nib.Nifti1Image(np.asarray(data, np.float32), aff)
        img.header.set_xyzt_units("mm", "sec")
        images.append(ants.from_nibabel_nifti(img))
    registration = ants.registration(images[0], images[1], type_of_transform="Affine")
    warped = ants.apply_transforms(images[0], images[2], registration["fwdtransforms"],
                                   interpolator="linear")
    return warped.numpy() > 0.5


def agreement(a: np.ndarray, b: np.ndarray, brain: np.ndarray) -> dict:
    """Agreement of two aligned images inside ``brain``: correlation, tissue Dice, sharpness."""
    from .. import metrics

    labels_a = metrics.kmeans_tissues(a, brain, "T1w")
    labels_b = metrics.kmeans_tissues(b, brain, "T1w")
    dice = metrics.dice_scores(labels_a, labels_b, brain)
    return {"correlation": float(np.corrcoef(a[brain], b[brain])[0, 1]),
            "dice_mean": dice["mean"], "dice": {k: v for k, v in dice.items() if k != "mean"},
            "gradient_magnitude": [float(metrics.gradient_magnitude(x)[brain].mean())
                                   for x in (a, b)]}


def run_uih(config, log=print) -> list[dict]:
    """Alignment and session agreement of the UIH scan-rescan pair (module docstring)."""
    from ...denoise.align import resample_to_reference
    from ...denoise.pipeline import denoise_array
    from ...denoise.repeats import align_runs, denoise_repeats

    paths = [config.data_dir / name for name in UIH_FILES]
    if not all(p.is_file() for p in paths):
        log(f"[bench repeats] UIH pair not found in {config.data_dir}: skipped")
        return []
    (first, first_affine), (second, second_affine) = (_block_average_in_plane(p) for p in paths)
    affines = [first_affine, second_affine]
    alignments, align_s = _timed(lambda: align_runs([first, second], affines))
    brain = _brain_mask(first, first_affine)
    rows = []

    def row(method, images, seconds, **extra):
        on_first = resample_to_reference(images[1], second_affine, alignments[1].matrix,
                                         first.shape, first_affine)
        inside = brain & on_first[1]
        record = {"dataset": "UIH scan-rescan (2x2 in-plane average)", "method": method,
                  "shape": list(first.shape), "seconds": round(seconds, 1),
                  **agreement(images[0], on_first[0], inside), **extra}
        log(f"[bench repeats] UIH {method:<34} correlation {record['correlation']:.4f} "
            f"Dice {record['dice_mean']:.4f} {seconds:.0f} s")
        rows.append(record)

    row("noisy pair", [first, second], align_s, alignment=alignments[1].to_dict(),
        brain_voxels=int(brain.sum()))
    singles, seconds = _timed(lambda: [denoise_array(x) for x in (first, second)])
    row("ours, single image on each session", [s.denoised for s in singles], seconds,
        noise_percent=[s.noise.percent for s in singles])
    method = config.methods[0]  # the pair is large: one method (the first given)
    result, seconds = _timed(lambda: denoise_repeats(
        [first, second], affines, alignments=alignments, method=method,
        budget_s=config.budget_s, max_steps=config.max_steps))
    row(f"ours, repeats ({method}), each session in its own space", result.denoised, seconds,
        training=result.training, fell_back=result.fell_back)
    return rows


def write_report(record: dict, out_dir: Path) -> list[Path]:
    """``results.json`` and the ``results.md`` tables."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_file = out_dir / "results.json"
    json_file.write_text(json.dumps(record, indent=1, default=float))
    lines = ["# Repeated acquisitions: benchmark", "",
             f"Command: `{record['config']['command']}`  ", f"Machine: {record['machine']['cpu']}, "
             f"{record['machine']['threads_per_method']} threads, load average at start "
             f"{record['machine']['load_average_1_5_15']}", ""]
    phantom = [r for r in record["rows"] if r["dataset"].startswith("ICBM152")]
    if phantom:
        lines += ["## Phantom pairs (PSNR / SSIM against the clean phantom on run 1's grid)", "",
                  "| method | " + " | ".join(f"{lv:g} %" for lv in record["config"]["levels"]) + " |",
                  "|---|" + "---|" * len(record["config"]["levels"])]
        for method in dict.fromkeys(r["method"] for r in phantom):
            cells = []
            for level in record["config"]["levels"]:
                found = [r for r in phantom if r["method"] == method and r["level"] == level]
                cells.append(f"{found[0]['psnr']:.2f} / {found[0]['ssim']:.4f}" if found else "n/a")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", "| level | alignment error mean / max (mm) | rotation (deg) | "
                  "correlation after | ANTs seconds |", "|---|---|---|---|---|"]
        for r in phantom:
            if "alignment" in r:
                a = r["alignment"]
                lines.append(f"| {r['level']:g} % | {a['error_mm_mean']:.3f} / {a['error_mm_max']:.3f}"
                             f" | {a['RotationDegrees']:.2f} | {a['Correlation']:.3f} | "
                             f"{a['Seconds']:.0f} |")
        lines.append("")
    uih = [r for r in record["rows"] if r["dataset"].startswith("UIH")]
    if uih:
        lines += ["## UIH scan-rescan pair (agreement of the two sessions after alignment, "
                  "inside the brain)", "",
                  "| method | correlation | tissue Dice (mean) | CSF / GM / WM Dice | "
                  "mean gradient magnitude sess1 / sess2 | seconds |", "|---|---|---|---|---|---|"]
        for r in uih:
            d = r["dice"]
            lines.append(f"| {r['method']} | {r['correlation']:.4f} | {r['dice_mean']:.4f} | "
                         f"{d['CSF']:.3f} / {d['GM']:.3f} / {d['WM']:.3f} | "
                         f"{r['gradient_magnitude'][0]:.2f} / {r['gradient_magnitude'][1]:.2f} | "
                         f"{r['seconds']:.0f} |")
        a = uih[0].get("alignment", {})
        if a:
            lines += ["", f"Alignment: rotation {a['RotationDegrees']:.2f} deg, head shift "
                      f"{a['ShiftMillimetres']:.1f} mm, correlation {a['Correlation']:.3f} "
                      f"(headers only {a['CorrelationHeaderOnly']:.3f}), plausible "
                      f"{a['Plausible']}, {a['Seconds']:.0f} s."]
    md_file = out_dir / "results.md"
    write_keeping_notes(md_file, "\n".join(lines) + "\n")
    return [json_file, md_file]


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parser() -> argparse.ArgumentParser:
    from ...utils.repeats import REPEAT_METHODS, REPEATS_BUDGET_S

    p = argparse.ArgumentParser(prog="bids_auton2n-bench repeats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/repeats"))
    p.add_argument("--levels", type=lambda s: tuple(float(v) for v in _csv(s)),
                   default=DEFAULT_LEVELS, help="noise levels, %% of white matter (comma list)")
    p.add_argument("--crop", type=int, nargs=3, default=DEFAULT_CROP, metavar=("X", "Y", "Z"),
                   help="phantom crop (voxels; the same window for both runs)")
    p.add_argument("--methods", type=_csv, default=REPEAT_METHODS,
                   help="repeats methods to run (comma list)")
    p.add_argument("--budget", type=float, default=REPEATS_BUDGET_S,
                   help="fine-tuning time budget per pair (seconds; 0: none)")
    p.add_argument("--max-steps", type=int, help="fine-tuning Adam steps per pair")
    p.add_argument("--uih", choices=("avg2", "none"), default="avg2",
                   help="the UIH scan-rescan pair (2x2 in-plane averages) or none")
    p.add_argument("--no-phantom", action="store_true", help="skip the phantom pairs")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="folder of the real scans (the UIH pair)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return p


def main(argv) -> int:
    args = parser().parse_args(argv)
    record = {**start_record("repeats", argv, args.threads), "rows": []}
    args.budget_s = args.budget or None
    record["config"].update(levels=list(args.levels), crop=list(args.crop),
                            methods=list(args.methods), budget_s=args.budget_s,
                            max_steps=args.max_steps, threads=args.threads)
    if not args.no_phantom:
        for level in args.levels:
            record["rows"] += run_phantom_level(level, args)
            write_report(record, args.out)
    if args.uih != "none":
        record["rows"] += run_uih(args)
    record["machine"]["load_average_at_end"] = list(os.getloadavg())
    for path in write_report(record, args.out):
        print(f"[bench] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
