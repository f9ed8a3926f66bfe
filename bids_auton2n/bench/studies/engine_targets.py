"""Measure the engine against the targets of the engine issue, in one run.

* synthetic pair generation and RI-NLM on a 197x233x189 volume (<= 10 s and <= 15 s),
* CNN throughput on CPU as a fraction of the machine's peak FLOP/s (>= 40 %),
* the whole default pipeline (estimate + expert + 4-way TTA + RI-NLM) on a 181x217x181 volume
  against DIPY ``nlmeans`` (Rician, block radius 2) timed in the same run (<= 2x),
* the noise estimate on the ICBM152 phantom, Rician 1-9 % (|error| <= 0.25 % of WM).

The volumes are the ICBM152 phantom (benchmark material: measured on, never fitted on).
Numba kernels are compiled (or loaded from cache) before timing; the first pipeline call is
reported separately. Writes Markdown to stdout and, with ``--out``, to a file.

Usage::

    bids_auton2n-bench engine-targets [--threads 2] [--out benchmarks/results/engine_targets.md]
"""

from __future__ import annotations

import copy
import os
import platform
import time
from pathlib import Path

import numpy as np

from . import cnn_throughput, noise_estimate
from ._common import command_line, study_parser

NAME = "engine-targets"


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    out = function(*args, **kwargs)
    return time.perf_counter() - start, out


def _centre_crop(volume: np.ndarray, shape) -> np.ndarray:
    starts = [(s - t) // 2 for s, t in zip(volume.shape, shape)]
    return volume[tuple(slice(a, a + t) for a, t in zip(starts, shape))]


def main(argv: list[str]) -> int:
    parser = study_parser(NAME, __doc__)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--noise", type=float, default=3.0, help="percent of WM")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import numba
    import torch
    from dipy.denoise.nlmeans import nlmeans
    from dipy.denoise.noise_estimate import estimate_sigma

    from ...denoise.inference import resolve_device
    from ...denoise.network import ResidualDenoiser3D
    from ...denoise.noise import head_mask
    from ...denoise.pairs import synthetic_pair
    from ...denoise.phantom import add_rician_noise, icbm152_phantom
    from ...denoise.pipeline import denoise_array
    from ...denoise.rinlm import ri_nlm
    from ...utils.threads import set_threads

    set_threads(args.threads)
    rows = []
    load_before = os.getloadavg()[0]

    phantom = icbm152_phantom("T1w")
    noisy = add_rician_noise(phantom.clean, args.noise, phantom.reference_intensity, seed=7)
    mask = head_mask(noisy)
    small = np.ascontiguousarray(noisy[:24, :24, :24])
    synthetic_pair(small)  # compile / load from cache
    synthetic_pair(small, exclude_centre=True)
    ri_nlm(small, small, 1.0)

    for exclude in (False, True):
        seconds, _ = _timed(synthetic_pair, noisy, exclude_centre=exclude)
        rows.append((f"pairs {noisy.shape} exclude_centre={exclude}", seconds, "<= 10 s"))
    guide = phantom.clean + 0.2 * (noisy - phantom.clean)
    sigma = args.noise / 100 * phantom.reference_intensity
    seconds, _ = _timed(ri_nlm, noisy, guide, sigma, mask=mask)
    rows.append((f"RI-NLM {noisy.shape} head mask", seconds, "<= 15 s"))
    seconds, _ = _timed(ri_nlm, noisy, guide, sigma)
    rows.append((f"RI-NLM {noisy.shape} whole volume", seconds, "<= 15 s"))

    model = ResidualDenoiser3D().eval()
    macs = cnn_throughput.macs_per_voxel(model)
    theoretical = args.threads * cnn_throughput.clock_hz() * 2 * 16 * 2
    measured_peak = cnn_throughput.empirical_peak(2048, 5)
    cnn_rows = [
        ("MACs per voxel", macs),
        ("theoretical fp32 peak GFLOP/s (threads x clock x 2 FMA x 16 lanes x 2)",
         theoretical / 1e9),
        ("empirical fp32 peak GFLOP/s (torch.mm 2048^2)", measured_peak / 1e9),
    ]
    head = torch.from_numpy(np.ascontiguousarray(_centre_crop(noisy, (181, 217, 181))))[None, None]
    # A separate copy: converting in place would also change the contiguous variant's weights.
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last_3d)
    variants = [(precision, layout) for precision in ("fp32", "bf16")
                for layout in ("contiguous", "channels_last_3d")]
    for precision, layout in variants:
        net, volume_in = ((model, head) if layout == "contiguous" else
                          (channels_last, head.contiguous(memory_format=torch.channels_last_3d)))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                    enabled=precision == "bf16"):
            net(volume_in[..., :64, :64, :64])
            seconds, _ = _timed(net, volume_in)
        achieved = 2 * macs * head.numel() / seconds
        label = precision if layout == "contiguous" else f"{precision} {layout}"
        cnn_rows += [
            (f"{label}: one pass over 181x217x181 (s)", seconds),
            (f"{label}: achieved GFLOP/s", achieved / 1e9),
            (f"{label}: fraction of theoretical fp32 peak", achieved / theoretical),
            (f"{label}: fraction of empirical fp32 peak", achieved / measured_peak),
        ]
        if precision == "bf16":
            # AVX512_BF16's dot product retires twice the FLOP of an fp32 FMA per instruction.
            cnn_rows.append((f"{label}: fraction of theoretical bf16 peak (2x fp32)",
                             achieved / (2 * theoretical)))

    volume = np.ascontiguousarray(_centre_crop(noisy, (181, 217, 181)))
    first, _ = _timed(denoise_array, volume, contrast="T1w", device=resolve_device("auto"))
    ours, result = _timed(denoise_array, volume, contrast="T1w")
    dipy_sigma_s, dipy_sigma = _timed(estimate_sigma, volume, N=0)
    dipy_s, _ = _timed(nlmeans, volume, sigma=dipy_sigma, rician=True, patch_radius=1,
                       block_radius=2, num_threads=args.threads)
    rows.append(("ours, whole pipeline 181x217x181 (first call)", first, ""))
    rows.append(("ours, whole pipeline 181x217x181", ours, "<= 2x DIPY"))
    for stage, value in result.timings.items():
        rows.append((f"  ours stage: {stage}", value, ""))
    rows.append(("DIPY nlmeans (Rician, block radius 2) incl. estimate_sigma",
                 dipy_s + dipy_sigma_s, ""))
    rows.append(("ratio ours / DIPY", ours / (dipy_s + dipy_sigma_s), "<= 2"))

    noise_rows = noise_estimate.measure("T1w", range(1, 10), seed=20260)

    lines = [
        "# Engine targets",
        "",
        f"`{command_line(NAME, argv)}`.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"threads {args.threads}, torch {torch.__version__}, numba {numba.__version__}; "
        f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}.",
        "",
        "| measure | seconds | target |",
        "|---|---:|---|",
        *[f"| {name} | {value:.2f} | {target} |" for name, value, target in rows],
        "",
        "| CNN throughput (single tile = whole volume, after warm-up) | value |",
        "|---|---:|",
        *[f"| {name} | {value:.3g} |" for name, value in cnn_rows],
        "",
        "| noise (T1w phantom, Rician) | true sigma | estimated | error (% of WM) |",
        "|---|---:|---:|---:|",
        *[f"| {r['percent_true']:.0f} % | {r['sigma_true']:.3f} | {r['sigma_est']:.3f} | "
          f"{r['error_percent_of_wm']:+.3f} |" for r in noise_rows],
        "",
        f"Selected expert(s) on the {args.noise:g} % volume: "
        + ", ".join(f"{c.level:g} % (w={c.weight:.2f})" for c in result.experts)
        + f"; estimated noise {result.noise.percent:.2f} %.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0

