"""The final stage's choices (Wiener stage, its settings, TTA passes) on validation objects.

Chooses the default pipeline after the CNN without looking at the ICBM152 benchmark phantom.
Objects:

* the project's held-out real scan (``philips_ADNI_MPRAGE_T1w``, never trained on), a
  96x128x112 crop around the centre of its head mask, as acquired: its own noise stays in the
  reference, so removing it costs PSNR as any other change does (the table states that noise,
  estimated) and the comparison leans towards methods that smooth less;
* the guard's validation head (:func:`.guard_validation.validation_head`): the demo's synthetic
  head, piecewise constant, with a clean reference.

Rician noise at each level (percent of the object's white matter) is added with a fixed seed;
PSNR over the head (peak = its maximum).  Every variant starts from the same CNN output of the
shipped experts (one run per flip set), so the rows differ only in what the row says.  BM4D
given the added noise's sigma is listed for orientation (not a candidate).

Usage::

    bids_auton2n-bench final-stage [--levels 3 5 7 9] [--data-dir DIR] [--out FILE]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ...denoise import pipeline
from ...denoise.experts import ExpertRegistry
from ...denoise.guard import limit_residual
from ...denoise.inference import PAPER_TTA_FLIPS, TTA_FLIPS
from ...denoise.noise import estimate_noise, head_mask, reference_intensity
from ...denoise.phantom import add_rician_noise
from ...denoise.wiener import collaborative_wiener
from ..harness import DEFAULT_DATA_DIR
from ..metrics import psnr
from ._common import command_line, pipeline_revision, study_parser, write_keeping_notes
from .guard_validation import validation_head

NAME = "final-stage"
HELD_OUT = "philips_ADNI_MPRAGE_T1w.nii.gz"
CROP = (96, 128, 112)
#: Flip sets compared: the paper's four passes, the identity and the all-axis flip, none.
FLIP_SETS = {"4 flips": PAPER_TTA_FLIPS, "2 flips": TTA_FLIPS, "no TTA": ((),)}
#: Wiener-stage variants applied to the fused image: name -> (keyword arguments, passes).
WIENER_VARIANTS = {
    "Wiener (default)": ({}, 1),
    "Wiener, 2 passes": ({}, 2),
    "Wiener, search radius 3": ({"search_radius": 3}, 1),
    "Wiener, step 3": ({"step": 3}, 1),
    "Wiener, 16 blocks per group": ({"group_size": 16}, 1),
    "Wiener, block means from the data": ({"keep_pilot_mean": False}, 1),
}


def held_out_crop(data_dir: Path) -> np.ndarray:
    import nibabel as nib

    scan = np.asarray(nib.load(str(data_dir / HELD_OUT)).get_fdata(dtype=np.float32))
    centre = np.round(np.argwhere(head_mask(scan)).mean(axis=0)).astype(int)
    start = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, CROP, scan.shape)]
    return scan[tuple(slice(b, b + s) for b, s in zip(start, CROP))].copy()


def measure(clean: np.ndarray, level: float, seed: int, registry: ExpertRegistry) -> dict:
    """PSNR of every variant on ``clean`` with Rician noise at ``level`` %."""
    mask = head_mask(clean)
    white_matter = reference_intensity(clean, mask, "T1w").intensity
    peak = float(clean[mask].max())
    noisy = add_rician_noise(clean, level, white_matter, seed)
    noisy_mask = head_mask(noisy)
    noise = estimate_noise(noisy, contrast="T1w", mask=noisy_mask)
    sigma = noise.sigma
    choices = pipeline.choose_experts(registry, noise.percent)
    score = {"noisy": psnr(clean, noisy, mask, peak)}
    fused_by_flips, cnn_by_flips = {}, {}
    for name, flips in FLIP_SETS.items():
        cnn = pipeline.run_experts(noisy, noise, choices, registry, tta=True, device="cpu",
                                   mask=noisy_mask, flips=flips)
        fused = pipeline.final_image(noisy, cnn, sigma, fusion=True, guard=True, rician=True,
                                     wiener=False)
        wiener = limit_residual(noisy, collaborative_wiener(noisy, fused, sigma), sigma)
        score[f"CNN, {name}"] = psnr(clean, cnn, mask, peak)
        score[f"CNN + RI-NLM + guard, {name}"] = psnr(clean, fused, mask, peak)
        score[f"+ Wiener, {name}"] = psnr(clean, wiener, mask, peak)
        fused_by_flips[flips], cnn_by_flips[flips] = fused, cnn
    fused = fused_by_flips[tuple(TTA_FLIPS)]
    for name, (settings, passes) in WIENER_VARIANTS.items():
        image = fused
        for _ in range(passes):
            image = limit_residual(noisy, collaborative_wiener(noisy, image, sigma, **settings),
                                   sigma)
        score[name] = psnr(clean, image, mask, peak)
    guided_by_cnn = pipeline.final_image(noisy, cnn_by_flips[tuple(TTA_FLIPS)], sigma,
                                         fusion=False, guard=True, rician=True, wiener=True)
    score["Wiener with the CNN alone as pilot (no RI-NLM)"] = psnr(clean, guided_by_cnn, mask, peak)
    blended = pipeline.denoise_array(noisy, contrast="T1w", mask=noisy_mask, blend=True,
                                     registry=registry, device="cpu").denoised
    score["whole pipeline, two nearest experts blended"] = psnr(clean, blended, mask, peak)
    try:
        import bm4d

        score["BM4D given the added sigma (reference)"] = psnr(
            clean, np.asarray(bm4d.bm4d(noisy, level / 100 * white_matter), np.float32), mask, peak)
    except ImportError:
        pass
    score["estimated noise (%)"] = noise.percent
    return score


def main(argv: list[str]) -> int:
    parser = study_parser(NAME, __doc__)
    parser.add_argument("--levels", nargs="+", type=float, default=[3.0, 5.0, 7.0, 9.0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/final_stage_selection.md"))
    args = parser.parse_args(argv)
    registry = ExpertRegistry()
    real = held_out_crop(args.data_dir)
    own = estimate_noise(real, contrast="T1w").percent
    head, _ = validation_head()
    objects = {f"{HELD_OUT.split('.')[0]} (as acquired, own noise {own:.2f} %)": real,
               "demo head (clean)": head}
    results = {}
    for name, clean in objects.items():
        for index, level in enumerate(args.levels):
            start = time.perf_counter()
            results[(name, level)] = measure(clean, level, 5000 + 10 * index, registry)
            print(f"[{NAME}] {name} {level:g} %: {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
    rows = list(next(iter(results.values())))
    lines = ["# Final stage: Wiener stage, its settings and TTA passes on validation objects", "",
             f"`{command_line(NAME, argv)}` at revision `{pipeline_revision()}`. PSNR (dB) over "
             "the head; Rician noise in % of white matter; shipped experts. See the study's "
             "docstring for the objects.", ""]
    for name in objects:
        levels = [level for (n, level) in results if n == name]
        lines += [f"## {name}", "", "| variant | " + " | ".join(f"{v:g} %" for v in levels) + " |",
                  "|---|" + "---:|" * len(levels)]
        for row in rows:
            digits = 2 if row.startswith("estimated") else 3
            lines.append(f"| {row} | " + " | ".join(
                f"{results[(name, level)].get(row, float('nan')):.{digits}f}" for level in levels)
                + " |")
        lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_keeping_notes(args.out, "\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(
        {f"{n} @ {level:g}": score for (n, level), score in results.items()}, indent=1))
    print(f"[{NAME}] wrote {args.out}", file=sys.stderr)
    return 0
