"""Choose the do-no-harm guard's threshold on a validation object that is not the benchmark.

The object is the demo's synthetic head (nested ellipsoids: scalp, skull, CSF, folded GM,
WM, ventricles; :func:`~bids_auton2n.denoise.phantom.synthetic_head`) at 144x176x144, with a
0.6-voxel Gaussian for partial volume: sharp, high-contrast boundaries, the case where a denoiser removes
structure.  No template or atlas is involved, so the ICBM152 benchmark stays untouched.
For each Rician noise level the default pipeline runs once with and once without RI-NLM
fusion, with the guard off; the guard is then applied to its output at several thresholds
``k`` (local RMS of the residual capped at ``k * sigma_estimated``) and PSNR over the
object (peak = clean maximum) is printed.

Usage::

    bids_auton2n-bench guard-validation [--levels 0 0.5 1 3 9] [--thresholds 1 1.5 2 3]
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ...denoise.guard import limit_residual
from ...denoise.phantom import add_rician_noise, synthetic_head
from ...denoise.pipeline import denoise_array
from ..metrics import psnr
from ._common import study_parser

NAME = "guard-validation"


#: Shape of :func:`validation_head`.
HEAD_SHAPE = (144, 176, 144)


def validation_head() -> tuple[np.ndarray, np.ndarray]:
    """The validation object (clean, with partial volume) and its piecewise-constant original."""
    sharp = synthetic_head(HEAD_SHAPE, "T1w", np.random.default_rng(5))
    return ndi.gaussian_filter(sharp, 0.6), sharp


def main(argv: list[str]) -> int:
    parser = study_parser(NAME, __doc__)
    parser.add_argument("--levels", nargs="+", type=float, default=[0.0, 0.5, 1.0, 3.0, 9.0])
    parser.add_argument("--thresholds", nargs="+", type=float, default=[1.0, 1.5, 2.0, 3.0])
    args = parser.parse_args(argv)
    clean, _ = validation_head()
    mask = clean > 1
    peak = float(clean[mask].max())
    white_matter = 100.0
    header = "| noise | fusion | estimated | input | no guard | " + " | ".join(
        f"k = {k:g}" for k in args.thresholds) + " |"
    print(header + "\n" + "|---" * (header.count("|") - 1) + "|", flush=True)
    for level in args.levels:
        noisy = add_rician_noise(clean, level, white_matter, seed=int(10 * level)) if level else clean
        for fusion in (True, False):
            result = denoise_array(noisy, contrast="T1w", fusion=fusion, guard=False)
            guarded = [psnr(limit_residual(noisy, result.denoised, result.noise.sigma, max_rms=k),
                            clean, mask, peak) for k in args.thresholds]
            print(f"| {level:g} % | {'yes' if fusion else 'no'} | {result.noise.percent:.2f} % | "
                  f"{psnr(noisy, clean, mask, peak):.2f} | {psnr(result.denoised, clean, mask, peak):.2f} | "
                  + " | ".join(f"{value:.2f}" for value in guarded) + " |", flush=True)
    return 0

