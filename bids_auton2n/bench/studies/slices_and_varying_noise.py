"""Thick slices (NS-N2N), spatially varying noise (routed experts) and Rician bias, on phantom crops.

Three tables, all methods of a table in one run on the same noisy image (fixed seeds), on a
centre crop of the ICBM152 T1w phantom (benchmark material: measured here, never fitted on):

* **Thick slices**: the crop averaged over blocks of ``--slab`` slices along its last axis
  (1 x 1 x 4 mm by default) *before* Rician noise of each ``--thick-levels`` percent of WM.
  Our path chosen for thick slices (``pair_source="neighbouring-slices"``: NS-N2N
  fine-tuning of the selected expert on the image, ``--slice-pair-steps`` steps, then
  slice-wise inference) against our 3D path (``pair_source="synthetic-patches"``), ANTs
  ``DenoiseImage`` (Rician, given the voxel size), DIPY ``nlmeans`` and BM4D given the true sigma.
* **Varying noise**: Rician noise whose sigma ramps linearly along the first axis of the crop
  from ``--ramp`` low to high percent of WM (over the head's extent on that axis).  Our
  adaptive path (``noise_model="adaptive"``) against the global one (``"global"``), ANTs and
  BM4D given the mean sigma over the head; PSNR over the head and in each tenth of the ramp.
* **Rician bias**: at ``--bias-level`` percent, the mean error (output - clean) in background,
  CSF, GM and WM in units of sigma, for our default path (Rician correction of the CNN output)
  and the same CNN output through the fusion *without* that correction (as before it: RI-NLM's
  own Rician correction only).

PSNR: peak = the clean crop's maximum in the head, over the head voxels.

Usage::

    bids_auton2n-bench slices-and-varying-noise [--crop 64 72 64] [--out FILE.md]
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ...denoise.phantom import add_rician_noise, crop, icbm152_phantom
from ..metrics import psnr
from ._common import command_line, pipeline_revision, study_parser, write_keeping_notes

NAME = "slices-and-varying-noise"


def _thicken(volume: np.ndarray, slab: int, reduce=np.mean) -> np.ndarray:
    n = volume.shape[2] // slab
    blocks = volume[:, :, :n * slab].reshape(volume.shape[0], volume.shape[1], n, slab)
    return reduce(blocks, axis=3)


def _rician(clean: np.ndarray, sigma, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sigma = np.broadcast_to(np.asarray(sigma, np.float32), clean.shape)
    real = clean + rng.normal(0.0, 1.0, clean.shape).astype(np.float32) * sigma
    imaginary = rng.normal(0.0, 1.0, clean.shape).astype(np.float32) * sigma
    return np.hypot(real, imaginary).astype(np.float32)


def _ours(noisy, voxel_size, **options):
    from ...denoise.pipeline import denoise_array

    result = denoise_array(noisy, contrast="T1w", voxel_size=voxel_size, **options)
    return result.denoised, result


def _ants(noisy, voxel_size):
    import ants

    image = ants.from_numpy(np.ascontiguousarray(noisy, dtype=np.float32), spacing=voxel_size)
    return ants.denoise_image(image, noise_model="Rician").numpy()


def _dipy(noisy):
    from ..methods import METHODS

    return METHODS["dipy"].run(noisy, None)[0]


def _bm4d(noisy, sigma):
    import bm4d

    return np.asarray(bm4d.bm4d(noisy, float(sigma)), dtype=np.float32)


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    out = function(*args, **kwargs)
    return out, time.perf_counter() - start


def thick_slices(phantom, levels, slab: int, steps: int, seed: int, log) -> list[str]:
    clean = _thicken(phantom.clean, slab)
    head = _thicken(phantom.head_mask.astype(np.float32), slab) >= 0.5
    peak = float(clean[head].max())
    reference = phantom.reference_intensity
    voxel_size = (1.0, 1.0, float(slab))
    lines = [f"## Thick slices: {clean.shape} voxels of 1 x 1 x {slab} mm (crop averaged over "
             f"{slab} slices before the noise)", "",
             "| noise | method | PSNR (dB) | vs our 3D path | seconds | notes |",
             "|---:|---|---:|---:|---:|---|"]
    for level in levels:
        sigma = level / 100 * reference
        noisy = add_rician_noise(clean, level, reference, seed + int(10 * level))
        rows = {"noisy": (noisy, 0.0, "")}
        (out, result), seconds = _timed(_ours, noisy, voxel_size, pair_source="synthetic-patches",
                                        noise_model="global")
        rows["ours, 3D path (synthetic patches)"] = (out, seconds, "")
        (out, result), seconds = _timed(_ours, noisy, voxel_size, pair_source="neighbouring-slices",
                                        noise_model="global", slice_pair_steps=steps,
                                        slice_pair_budget_s=None)
        tuning = result.slice_pairs
        rows["ours, NS-N2N path (neighbouring slices)"] = (out, seconds, (
            f"{tuning['Steps']} steps, best {tuning['BestStep']}, "
            f"matched {100 * tuning['MatchedFraction']:.0f} %"))
        rows["ANTs DenoiseImage"] = (*_timed(_ants, noisy, voxel_size), "")
        rows["DIPY nlmeans"] = (*_timed(_dipy, noisy), "")
        rows["BM4D, true sigma"] = (*_timed(_bm4d, noisy, sigma), "")
        ours_3d = psnr(clean, rows["ours, 3D path (synthetic patches)"][0], head, peak)
        for method, (out, seconds, note) in rows.items():
            value = psnr(clean, out, head, peak)
            lines.append(f"| {level:g} % | {method} | {value:.2f} | {value - ours_3d:+.2f} | "
                         f"{seconds:.0f} | {note} |")
            log(lines[-1])
    return lines


def varying_noise(phantom, ramp, seed: int, log) -> list[str]:
    clean, head = phantom.clean, phantom.head_mask
    peak = float(clean[head].max())
    reference = phantom.reference_intensity
    occupied = np.flatnonzero(head.any(axis=(1, 2)))
    low, high = occupied[0], occupied[-1]
    position = np.clip((np.arange(clean.shape[0]) - low) / max(high - low, 1), 0, 1)
    percent = ramp[0] + (ramp[1] - ramp[0]) * position
    sigma = (percent / 100 * reference)[:, None, None] * np.ones(clean.shape, np.float32)
    noisy = _rician(clean, sigma, seed)
    mean_sigma = float(sigma[head].mean())
    tenth = np.minimum((position * 10).astype(int), 9)[:, None, None] * np.ones(clean.shape, int)
    rows = {"noisy": (noisy, 0.0)}
    rows["ours, adaptive (routed experts, local sigma)"] = _timed(
        lambda: _ours(noisy, (1.0, 1.0, 1.0), noise_model="adaptive")[0])
    rows["ours, global (one noise level)"] = _timed(
        lambda: _ours(noisy, (1.0, 1.0, 1.0), noise_model="global")[0])
    rows["ANTs DenoiseImage"] = _timed(_ants, noisy, (1.0, 1.0, 1.0))
    rows["BM4D, mean sigma"] = _timed(_bm4d, noisy, mean_sigma)
    header = " | ".join(f"{10 * k}-{10 * k + 10} %" for k in range(10))
    lines = [f"## Varying noise: {clean.shape} voxels of 1 mm, sigma {ramp[0]:g} -> {ramp[1]:g} % "
             f"of WM along the first axis (mean over the head {100 * mean_sigma / reference:.2f} %)",
             "", "PSNR (dB) over the head, then in each tenth of the ramp (low noise first).", "",
             f"| method | head | {header} | seconds |",
             "|---|---:|" + "---:|" * 10 + "---:|"]
    for method, (out, seconds) in rows.items():
        parts = [psnr(clean, out, head & (tenth == k), peak) for k in range(10)]
        lines.append(f"| {method} | {psnr(clean, out, head, peak):.2f} | "
                     + " | ".join(f"{p:.2f}" for p in parts) + f" | {seconds:.0f} |")
        log(lines[-1])
    adaptive, global_ = (rows[k][0] for k in ("ours, adaptive (routed experts, local sigma)",
                                               "ours, global (one noise level)"))
    gains = [psnr(clean, adaptive, head & (tenth == k), peak)
             - psnr(clean, global_, head & (tenth == k), peak) for k in range(10)]
    overall = psnr(clean, adaptive, head, peak) - psnr(clean, global_, head, peak)
    lines += ["", f"Adaptive minus global: {overall:+.2f} dB over the head; per tenth "
              + ", ".join(f"{g:+.2f}" for g in gains) + "."]
    return lines


def _without_cnn_correction(finite, cnn, sigma):
    """The final stage as it was before the CNN path's Rician correction: guard, RI-NLM
    fusion (its own Rician correction), guard against the input."""
    from ...denoise.guard import limit_residual
    from ...denoise.pipeline import fuse_rinlm

    guarded = limit_residual(finite, cnn, sigma)
    return limit_residual(finite, fuse_rinlm(finite, guarded, sigma, rician=True), sigma)


def edge_crop(phantom, shape):
    """A crop at the left edge of the first axis (background, skin, skull, CSF and cortex),
    centred on the brain in the other two: what a centre crop lacks for the Rician bias."""
    from scipy import ndimage as ndi

    centre = np.round(ndi.center_of_mass(phantom.brain_mask)).astype(int)
    window = (slice(0, shape[0]),) + tuple(
        slice(int(np.clip(c - s // 2, 0, f - s)), int(np.clip(c - s // 2, 0, f - s)) + s)
        for c, s, f in zip(centre[1:], shape[1:], phantom.clean.shape[1:]))
    return phantom.clean[window], phantom.labels[window]


def rician_bias(phantom, reference: float, level: float, seed: int, log) -> list[str]:
    from ...denoise.experts import ExpertRegistry
    from ...denoise.intensity import sanitize
    from ...denoise.noise import head_mask
    from ...denoise.pipeline import (
        choose_experts, estimate_array_noise, final_image, resolve_device, run_experts,
    )

    clean, labels = phantom
    true_sigma = level / 100 * reference
    noisy = add_rician_noise(clean, level, reference, seed)
    finite, _ = sanitize(noisy)
    mask = head_mask(finite)
    noise = estimate_array_noise(finite, contrast="T1w", mask=mask)
    registry = ExpertRegistry()
    cnn = run_experts(finite, noise, choose_experts(registry, noise.percent), registry, tta=True,
                      device=resolve_device("auto"), mask=mask)
    outputs = {
        "noisy input": noisy,
        "before: RI-NLM's Rician correction only": _without_cnn_correction(finite, cnn, noise.sigma),
        "after: CNN output corrected too (default)": final_image(finite, cnn, noise.sigma,
                                                                 fusion=True, guard=True,
                                                                 rician=True),
    }
    regions = {"background": labels == 0, "CSF": labels == 1, "GM": labels == 2, "WM": labels == 3}
    lines = [f"## Rician bias at {level:g} % (true sigma {true_sigma:.2f}, estimated "
             f"{noise.sigma:.2f}; {clean.shape} voxels)", "",
             "Mean error (output - clean) in units of the true sigma.", "",
             "| image | " + " | ".join(regions) + " |", "|---|" + "---:|" * len(regions)]
    for name, out in outputs.items():
        errors = [float(np.mean(out[region].astype(np.float64) - clean[region])) / true_sigma
                  for region in regions.values()]
        lines.append(f"| {name} | " + " | ".join(f"{e:+.3f}" for e in errors) + " |")
        log(lines[-1])
    return lines


def main(argv: list[str]) -> int:
    parser = study_parser(NAME, __doc__)
    parser.add_argument("--crop", nargs=3, type=int, default=[64, 72, 64])
    parser.add_argument("--slab", type=int, default=4)
    parser.add_argument("--thick-levels", nargs="+", type=float, default=[3.0, 7.0])
    parser.add_argument("--slice-pair-steps", type=int, default=100)
    parser.add_argument("--ramp", nargs=2, type=float, default=[2.0, 8.0])
    parser.add_argument("--bias-level", type=float, default=9.0)
    parser.add_argument("--parts", nargs="+", default=["thick", "varying", "bias"],
                        choices=["thick", "varying", "bias"])
    parser.add_argument("--seed", type=int, default=1300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    full = icbm152_phantom("T1w")
    phantom = crop(full, tuple(args.crop))
    lines = [f"# {NAME}: NS-N2N, routed experts and Rician bias on a phantom crop", "",
             f"`{command_line(NAME, argv)}`; revision {pipeline_revision()}; load average "
             f"{os.getloadavg()[0]:.2f} (seconds are wall-clock on a shared, loaded machine: "
             "not performance figures).", "",
             f"SMALL crop {tuple(args.crop)} of the ICBM152 T1w phantom (not the whole head).", ""]
    if "thick" in args.parts:
        lines += thick_slices(phantom, args.thick_levels, args.slab, args.slice_pair_steps,
                              args.seed, print) + [""]
    if "varying" in args.parts:
        lines += varying_noise(phantom, args.ramp, args.seed + 1, print) + [""]
    if "bias" in args.parts:
        lines += rician_bias(edge_crop(full, tuple(args.crop)), full.reference_intensity,
                             args.bias_level, args.seed + 2, print)
        lines += ["", "(Rician bias: the crop is at the edge of the first axis, centred on the "
                  "brain in the others, so that it holds background and CSF.)", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_keeping_notes(args.out, text)
    return 0
