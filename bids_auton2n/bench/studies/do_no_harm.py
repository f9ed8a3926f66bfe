"""Do-no-harm check of the default pipeline on the (nearly) clean ICBM152 phantom.

For Rician noise of 0, 0.5 and 1 % of white matter (fixed seeds), runs
:func:`bids_auton2n.denoise.pipeline.denoise_array` with its defaults (noise estimated, expert
selected, flip TTA, RI-NLM fusion) on the whole 197x233x189 T1w phantom and reports

* the RMS change of the image (output - input) over the head, in % of the WM intensity
  (promise: < 0.5 % on the noise-free phantom),
* PSNR of input and output against the clean phantom (peak = clean max, head voxels;
  promise: the output's is not below the input's at 0.5 and 1 %),
* the gradient-magnitude ratio on tissue boundaries, output / clean and input / clean
  (1 = edges kept, < 1 = blurred).

The phantom is benchmark material: measured here, never fitted on.

Usage::

    bids_auton2n-bench do-no-harm [--levels 0 0.5 1] [--out benchmarks/results/do_no_harm.md]
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...denoise.phantom import add_rician_noise, icbm152_phantom
from ...denoise.pipeline import denoise_array
from ..metrics import edge_ratio, psnr, tissue_boundaries
from ._common import command_line, study_parser

NAME = "do-no-harm"


def main(argv: list[str]) -> int:
    parser = study_parser(NAME, __doc__)
    parser.add_argument("--levels", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    phantom = icbm152_phantom("T1w")
    clean, head = phantom.clean, phantom.head_mask
    white_matter = phantom.reference_intensity
    peak = float(clean[head].max())
    boundary = tissue_boundaries(phantom.labels)
    lines = [
        "# Do no harm: default pipeline on the (nearly) clean ICBM152 T1w phantom",
        "",
        f"`{command_line(NAME, argv)}`; load average {os.getloadavg()[0]:.2f}.",
        "",
        "| noise | estimated | experts | RMS change (% of WM) | PSNR in | PSNR out "
        "| edge ratio in | edge ratio out |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for level in args.levels:
        noisy = add_rician_noise(clean, level, white_matter, args.seed) if level else clean.copy()
        result = denoise_array(noisy, contrast="T1w")
        change = result.denoised[head].astype(np.float64) - noisy[head]
        rms_percent = 100 * np.sqrt(np.mean(change**2)) / white_matter
        experts = ", ".join(f"{c.level:g} % x{c.weight:.2f}" for c in result.experts)
        lines.append(
            f"| {level:g} % | {result.noise.percent:.2f} % | {experts} | {rms_percent:.3f} | "
            f"{psnr(clean, noisy, head, peak):.2f} | {psnr(clean, result.denoised, head, peak):.2f} | "
            f"{edge_ratio(noisy, clean, boundary):.3f} | "
            f"{edge_ratio(result.denoised, clean, boundary):.3f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0

