"""The final stage's choices (Wiener stage, its settings, TTA passes) on validation objects.

Chooses the default pipeline after the CNN without looking at the ICBM152 benchmark phantom.
Objects:

* the project's held-out real scan (``philips_ADNI_MPRAGE_T1w``, never trained on), a
  96x128x112 crop around the centre of its head mask, as acquired: its own noise stays in the
  reference, so removing it costs PSNR as any other change does (the table states that noise,
  estimated) and the comparison leans towards methods that smooth less;
* a second real scan, ``studyforrest_T1w_0.7mm`` (a training scan: the choices made here
  come after the CNN), as the means of its 2x2x2 blocks (1.4 mm, a fine real texture whose own
  noise is lower than at 0.7 mm), the same crop;
* the guard's validation head (:func:`.guard_validation.validation_head`, the same crop
  around its centre): the demo's synthetic head, piecewise constant, with a clean reference;
* that head with a known fine texture (:func:`textured`), the textured head as the truth:
  does a variant keep texture that is really there?
* that head with 2 % Rician noise of its own, scored both against the clean head and against
  itself: how far a reference that keeps its own noise (as the real scans' do) favours the
  variants that remove less.

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
from ...denoise.inference import PAPER_TTA_FLIPS, TTA_FLIPS
from ...denoise.noise import estimate_noise, head_mask, reference_intensity
from ...denoise.phantom import add_rician_noise
from ...denoise.wiener import PASS_STEPS
from ..harness import DEFAULT_DATA_DIR
from ..metrics import psnr
from ._common import command_line, pipeline_revision, study_parser, write_keeping_notes
from .guard_validation import HEAD_SHAPE, validation_head

NAME = "final-stage"
HELD_OUT = "philips_ADNI_MPRAGE_T1w.nii.gz"
#: Second real object (a training scan: the choices here are after the CNN).
DEV_SCAN = "studyforrest_T1w_0.7mm.nii.gz"
#: The known texture of the textured demo head and the own noise of the noisy-reference one
#: (percent of white matter).
TEXTURE = 4.0
OWN_NOISE = 2.0
CROP = (96, 128, 112)
#: Flip sets compared: the paper's four passes, the identity and the all-axis flip, none.
FLIP_SETS = {"4 flips": PAPER_TTA_FLIPS, "2 flips": TTA_FLIPS, "no TTA": ((),)}
#: Wiener-stage variants applied to the fused image: name -> keyword arguments of
#: ``collaborative_wiener`` for each pass (every pass the pilot of the next).
WIENER_VARIANTS = {
    "Wiener (default)": [{"step": step} for step in PASS_STEPS],
    "Wiener, 1 pass, step 3": [{"step": 3}],
    "Wiener, 2 passes, steps 3 then 2": [{"step": 3}, {}],
    "Wiener, 2 passes, steps 2 and 2": [{}, {}],
    "Wiener, 2 passes, steps 3 and 3": [{"step": 3}, {"step": 3}],
    "Wiener, 3 passes, steps 3, 2, 2": [{"step": 3}, {}, {}],
    "Wiener, 1 pass, search radius 2 (the default until 2026-12-04)": [{"search_radius": 2}],
    "Wiener, 1 pass, step 3, search radius 4": [{"step": 3, "search_radius": 4}],
    "Wiener, 1 pass, 16 blocks per group": [{"group_size": 16}],
    "Wiener, 2 passes, 16 blocks per group": [{"step": 3, "group_size": 16}, {"group_size": 16}],
    "Wiener, 1 pass, block means from the data": [{"keep_pilot_mean": False}],
}


def scan_crop(data_dir: Path, name: str, block_mean: int = 1) -> np.ndarray:
    """A :data:`CROP` of the scan ``name`` around the centre of its head mask, after the mean
    of every ``block_mean``-cubed block of voxels (a coarser grid with less of its own noise)."""
    import nibabel as nib

    scan = np.asarray(nib.load(str(data_dir / name)).get_fdata(dtype=np.float32))
    if block_mean > 1:
        shape = [n // block_mean for n in scan.shape]
        scan = scan[tuple(slice(0, n * block_mean) for n in shape)].reshape(
            shape[0], block_mean, shape[1], block_mean, shape[2], block_mean).mean(axis=(1, 3, 5))
    centre = np.round(np.argwhere(head_mask(scan)).mean(axis=0)).astype(int)
    start = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, CROP, scan.shape)]
    return scan[tuple(slice(b, b + s) for b, s in zip(start, CROP))].copy()


def variant_images(clean: np.ndarray, level: float, seed: int,
                   registry: ExpertRegistry) -> tuple[dict[str, np.ndarray], float]:
    """Every variant's image of ``clean`` with Rician noise at ``level`` % of its white matter
    (the noisy image itself under ``"noisy"``) and the estimated noise in percent."""
    white_matter = reference_intensity(clean, head_mask(clean), "T1w").intensity
    noisy = add_rician_noise(clean, level, white_matter, seed)
    noisy_mask = head_mask(noisy)
    noise = estimate_noise(noisy, contrast="T1w", mask=noisy_mask)
    sigma = noise.sigma
    choices = pipeline.choose_experts(registry, noise.percent)
    images = {"noisy": noisy}
    cnn_by_flips = {}
    for name, flips in FLIP_SETS.items():
        cnn = pipeline.run_experts(noisy, noise, choices, registry, tta=True, device="cpu",
                                   mask=noisy_mask, flips=flips)
        images[f"CNN, {name}"] = cnn
        images[f"CNN + RI-NLM + guard, {name}"] = pipeline.final_image(
            noisy, cnn, sigma, fusion=True, guard=True, rician=True, wiener=False)
        images[f"+ Wiener, {name}"] = pipeline.final_image(noisy, cnn, sigma, fusion=True,
                                                           guard=True, rician=True)
        cnn_by_flips[flips] = cnn
    cnn = cnn_by_flips[tuple(TTA_FLIPS)]
    for name, passes in WIENER_VARIANTS.items():
        images[name] = pipeline.final_image(noisy, cnn, sigma, fusion=True, guard=True,
                                            rician=True, wiener_passes=passes)
    images["Wiener with the CNN alone as pilot (no RI-NLM)"] = pipeline.final_image(
        noisy, cnn, sigma, fusion=False, guard=True, rician=True, wiener=True)
    images["whole pipeline, two nearest experts blended"] = pipeline.denoise_array(
        noisy, contrast="T1w", mask=noisy_mask, blend=True, registry=registry,
        device="cpu").denoised
    try:
        import bm4d

        images["BM4D given the added sigma (reference)"] = np.asarray(
            bm4d.bm4d(noisy, level / 100 * white_matter), np.float32)
    except ImportError:
        pass
    return images, noise.percent


def scores(images: dict[str, np.ndarray], reference: np.ndarray) -> dict[str, float]:
    """PSNR of every image against ``reference`` over its head (peak = its maximum there)."""
    mask = head_mask(reference)
    peak = float(reference[mask].max())
    return {name: psnr(reference, image, mask, peak) for name, image in images.items()}


def measure(clean: np.ndarray, level: float, seed: int, registry: ExpertRegistry) -> dict:
    """PSNR of every variant on ``clean`` with Rician noise at ``level`` %, and the estimate."""
    images, percent = variant_images(clean, level, seed, registry)
    return {**scores(images, clean), "estimated noise (%)": percent}


def textured(head: np.ndarray, percent: float, seed: int) -> np.ndarray:
    """``head`` with a known fine texture: inside the head each voxel scaled by
    ``1 + percent/100 * f``, ``f`` a Gaussian-smoothed (1 voxel) random field of unit SD."""
    from scipy import ndimage as ndi

    mask = head_mask(head)
    field = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=head.shape), 1.0)
    field /= field[mask].std()
    return np.where(mask, head * (1 + percent / 100 * field), head).clip(0).astype(np.float32)


def main(argv: list[str]) -> int:
    parser = study_parser(NAME, __doc__)
    parser.add_argument("--levels", nargs="+", type=float, default=[3.0, 5.0, 7.0, 9.0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/final_stage_selection.md"))
    args = parser.parse_args(argv)
    registry = ExpertRegistry()
    real = scan_crop(args.data_dir, HELD_OUT)
    dev = scan_crop(args.data_dir, DEV_SCAN, block_mean=2)
    own, own_dev = (estimate_noise(scan, contrast="T1w").percent for scan in (real, dev))
    head = validation_head()[0][tuple(slice((n - c) // 2, (n - c) // 2 + c)
                                      for n, c in zip(HEAD_SHAPE, CROP))]
    head_wm = reference_intensity(head, head_mask(head), "T1w").intensity
    own_noise_head = add_rician_noise(head, OWN_NOISE, head_wm, seed=99)
    textured_head = textured(head, TEXTURE, seed=11)
    # object name -> (the image the noise is added to, {table: the reference scored against})
    objects = {
        "held-out": (real, {f"{HELD_OUT.split('.')[0]} (as acquired, own noise {own:.2f} %)":
                            real}),
        "dev": (dev, {f"{DEV_SCAN.split('_T1w')[0]} at 1.4 mm (2x2x2 block means, own noise "
                      f"{own_dev:.2f} %)": dev}),
        "head": (head, {"demo head (clean)": head}),
        "textured": (textured_head, {f"demo head with a {TEXTURE:g} % fine texture (clean)":
                                     textured_head}),
        "own noise": (own_noise_head, {
            f"demo head with {OWN_NOISE:g} % noise of its own, scored against the clean head":
                head,
            f"demo head with {OWN_NOISE:g} % noise of its own, scored against itself (noisy)":
                own_noise_head}),
    }
    results = {}
    for base, references in objects.values():
        for index, level in enumerate(args.levels):
            start = time.perf_counter()
            images, percent = variant_images(base, level, 5000 + 10 * index, registry)
            for name, reference in references.items():
                results[(name, level)] = {**scores(images, reference),
                                          "estimated noise (%)": percent}
            print(f"[{NAME}] {next(iter(references))} {level:g} %: "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    rows = list(next(iter(results.values())))
    lines = ["# Final stage: Wiener stage, its settings and TTA passes on validation objects", "",
             f"`{command_line(NAME, argv)}` at revision `{pipeline_revision()}`. PSNR (dB) over "
             "the head; Rician noise in % of white matter; shipped experts. See the study's "
             "docstring for the objects.", ""]
    for name in dict.fromkeys(n for n, _ in results):
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
