"""Compare expert registries on validation objects that are not the benchmark.

Chooses which trained registry ships, without looking at the ICBM152 benchmark phantom.
Every registry runs the default pipeline (``denoise_array``: estimate, experts, flip TTA,
RI-NLM fusion, do-no-harm guard) on

* the guard's validation object (:func:`.guard_validation.validation_head`): the demo's
  synthetic head, piecewise constant with a 0.6-voxel partial-volume blur; PSNR over the
  object (peak = its maximum) and the gradient ratio on its tissue boundaries, at 0 % too;
* real scans made near-clean as for the noise calibration
  (:func:`~bids_auton2n.train.noise_calibration.denoised_base`: two RI-NLM passes with a smooth
  guide, not a CNN, so no candidate is favoured by its own output), then Rician noise added;
  PSNR over the head mask, peak = the reference-tissue intensity.  The bases keep some residual
  noise and are smoother than the anatomy, so absolute values are biased; the comparison between
  registries is what counts.  All candidates trained on these scans (outside the validation
  slab), so this is in-sample for all of them alike.

Usage::

    bids_auton2n-bench compare-registries shipped=bids_auton2n/data/experts new=/tmp/experts \\
        [--levels 0 1 3 5 7 9] [--scans stroke_T1.nii.gz:T1w seg3D_MR.nii.gz:T1w] [--out FILE]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from ...denoise.experts import ExpertRegistry
from ...denoise.intensity import sanitize
from ...denoise.noise import head_mask, reference_intensity
from ...denoise.phantom import add_rician_noise
from ...denoise.pipeline import denoise_array
from ...train.noise_calibration import denoised_base
from ..harness import DEFAULT_DATA_DIR
from ..metrics import edge_ratio, psnr, tissue_boundaries
from ._common import study_parser
from .guard_validation import validation_head

NAME = "compare-registries"


def objects(data: Path, scans: list[str]):
    """``(name, contrast, clean, mask, peak, reference, boundary or None)`` per object."""
    clean, sharp = validation_head()
    yield "demo head", "T1w", clean, clean > 1, float(clean.max()), 100.0, tissue_boundaries(sharp)
    for spec in scans:
        name, _, contrast = spec.partition(":")
        scan, _ = sanitize(nib.load(str(data / name)).get_fdata(dtype=np.float32))
        mask = head_mask(scan)
        base, _, _ = denoised_base(scan, mask)
        reference = reference_intensity(base, mask, contrast or "T1w").intensity
        yield name, contrast or "T1w", base, mask, reference, reference, None


def main(argv: list[str]) -> int:
    parser = study_parser(NAME, __doc__)
    parser.add_argument("registries", nargs="+", metavar="NAME=DIR")
    parser.add_argument("--levels", nargs="+", type=float, default=[0.0, 1.0, 3.0, 5.0, 7.0, 9.0])
    parser.add_argument("--scans", nargs="*", default=["stroke_T1.nii.gz:T1w", "seg3D_MR.nii.gz:T1w"])
    parser.add_argument("--data-dir", "--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    registries = {name: ExpertRegistry(Path(root)) for name, _, root in
                  (spec.partition("=") for spec in args.registries)}
    header = ("| object | noise | input | " + " | ".join(registries) + " | edge ratio: "
              + " / ".join(registries) + " |")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    print("\n".join(lines), flush=True)
    for index, (name, contrast, clean, mask, peak, reference, boundary) in enumerate(
            objects(args.data_dir, args.scans)):
        # A base from real data is not noise-free: 0 % is measured on the demo head only.
        for level in args.levels if boundary is not None else [lv for lv in args.levels if lv]:
            noisy = add_rician_noise(clean, level, reference, seed=100 * index + int(10 * level))
            scores, edges = [], []
            for registry in registries.values():
                started = time.perf_counter()
                out = denoise_array(noisy, contrast=contrast, registry=registry).denoised
                scores.append(psnr(clean, out, mask, peak))
                edges.append("" if boundary is None else f"{edge_ratio(out, clean, boundary):.3f}")
                print(f"  ({name} {level:g} %: {time.perf_counter() - started:.0f} s)",
                      file=sys.stderr, flush=True)
            line = (f"| {name} | {level:g} % | {psnr(clean, noisy, mask, peak):.2f} | "
                    + " | ".join(f"{s:.2f}" for s in scores) + " | " + " / ".join(edges) + " |")
            lines.append(line)
            print(line, flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0

