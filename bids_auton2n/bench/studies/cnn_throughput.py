"""Measure the CPU throughput of ResidualDenoiser3D and the accuracy cost of speed options.

For each variant (fp32, channels_last_3d, bf16 autocast, torch.compile, tile
sizes, thread counts) this prints the achieved FLOP/s (2 x MACs of the conv
layers per voxel x voxels / seconds, best of ``--repeats``), the fraction of
the machine's peak, and the PSNR change of the output against the fp32 output.

Peak FLOP/s is reported two ways:

* theoretical: cores x clock x FMA units x fp32 vector lanes x 2 (FMA = 2 FLOP),
  with the FMA units and vector width given on the command line (defaults: AMD
  Zen 5, 2 x 512-bit FMA pipes, 16 fp32 lanes; clock from /proc/cpuinfo);
* empirical: best fp32 ``torch.mm`` of two ``--mm-size`` square matrices.

Accuracy input: a block of a real scan (default ``stroke_T1.nii.gz`` of ``--data-dir``)
divided by a reference intensity (95th percentile of the non-zero voxels, a
rough white-matter proxy) plus Gaussian noise of ``--noise`` percent.  Unless
``--weights`` is given, the network is randomly initialised (seed 0) with its
head rescaled so that its residual map has the noise's root mean square:
the PSNR differences then measure numerical deviation at a realistic residual
magnitude, not denoising quality.

Example::

    bids_auton2n-bench cnn-throughput --size 64 --repeats 2
"""

from __future__ import annotations

import copy
import os
import time

import nibabel as nib
import numpy as np
import torch

from ...denoise.inference import cnn_denoise
from ...denoise.network import ResidualDenoiser3D
from ..harness import DEFAULT_DATA_DIR
from ._common import study_parser

NAME = "cnn-throughput"

#: Keep a speed option only if it costs at most this much PSNR (dB).
PSNR_TOLERANCE_DB = 0.05


def macs_per_voxel(model: torch.nn.Module) -> int:
    """Multiply-accumulates per output voxel of all Conv3d layers."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d):
            kernel = int(np.prod(module.kernel_size))
            total += module.in_channels * module.out_channels * kernel // module.groups
    return total


def clock_hz() -> float:
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) * 1e6
    raise RuntimeError("no 'cpu MHz' in /proc/cpuinfo; pass --clock-ghz")


def empirical_peak(size: int, repeats: int) -> float:
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2.0 * size**3 / best


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def psnr(reference: np.ndarray, image: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((reference.astype(np.float64) - image) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


def load_input(path: str, size: int, noise_percent: float, seed: int = 0):
    data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    reference = np.percentile(data[data > 0], 95)
    centre = [s // 2 for s in data.shape]
    block = tuple(slice(max(c - size // 2, 0), max(c - size // 2, 0) + size) for c in centre)
    clean = np.ascontiguousarray(data[block] / reference)
    noisy = clean + np.random.default_rng(seed).normal(0, noise_percent / 100, clean.shape)
    return clean, noisy.astype(np.float32)


def build_model(weights: str | None, noisy: np.ndarray, noise_percent: float):
    torch.manual_seed(0)
    model = ResidualDenoiser3D().eval()
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model
    with torch.inference_mode():
        residual = model(torch.from_numpy(noisy)[None, None]) - torch.from_numpy(noisy)
        gain = (noise_percent / 100) / float(residual.pow(2).mean().sqrt())
        model.head.weight.mul_(gain)
        model.head.bias.mul_(gain)
    return model


def forward_variant(model, x, *, channels_last=False, bf16=False):
    # .to(memory_format) converts in place: copy so other variants keep contiguous weights.
    module = copy.deepcopy(model).to(memory_format=torch.channels_last_3d) if channels_last else model
    tensor = torch.from_numpy(x)[None, None]
    if channels_last:
        tensor = tensor.contiguous(memory_format=torch.channels_last_3d)

    def run():
        with torch.inference_mode():
            if bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return module(tensor).float()
            return module(tensor)

    return run


def main(argv: list[str]) -> int:
    parser = study_parser(NAME, __doc__)
    parser.add_argument("--input", default=str(DEFAULT_DATA_DIR / "stroke_T1.nii.gz"))
    parser.add_argument("--size", type=int, default=64, help="edge of the cubic test block")
    parser.add_argument("--noise", type=float, default=3.0, help="added noise, percent")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", help="trained state dict (default: scaled random init)")
    parser.add_argument("--fma-units", type=int, default=2)
    parser.add_argument("--vector-lanes", type=int, default=16, help="fp32 lanes per FMA")
    parser.add_argument("--clock-ghz", type=float, help="default: /proc/cpuinfo 'cpu MHz'")
    parser.add_argument("--mm-size", type=int, default=2048)
    parser.add_argument("--tiles", type=int, nargs="*", default=[32, 48, 64])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    cores = args.threads
    clock = args.clock_ghz * 1e9 if args.clock_ghz else clock_hz()
    theoretical = cores * clock * args.fma_units * args.vector_lanes * 2
    measured_peak = empirical_peak(args.mm_size, 3)
    print(f"threads {cores}, os.cpu_count {os.cpu_count()}, clock {clock / 1e9:.2f} GHz")
    print(
        f"theoretical fp32 peak {theoretical / 1e9:.0f} GFLOP/s "
        f"({cores} x {clock / 1e9:.2f} GHz x {args.fma_units} FMA x {args.vector_lanes} lanes x 2)"
    )
    print(f"empirical peak (torch.mm {args.mm_size}^2 fp32) {measured_peak / 1e9:.0f} GFLOP/s")

    clean, noisy = load_input(args.input, args.size, args.noise)
    model = build_model(args.weights, noisy, args.noise)
    macs = macs_per_voxel(model)
    flops = 2.0 * macs * noisy.size
    print(f"MACs/voxel {macs}, block {noisy.shape}, {flops / 1e9:.1f} GFLOP per forward")

    reference_output = forward_variant(model, noisy)().numpy()[0, 0]
    reference_psnr = psnr(clean, reference_output)
    print(f"PSNR vs clean: noisy {psnr(clean, noisy):.3f} dB, fp32 output {reference_psnr:.3f} dB")

    variants = {
        "fp32": forward_variant(model, noisy),
        "fp32 channels_last_3d": forward_variant(model, noisy, channels_last=True),
        "bf16 autocast": forward_variant(model, noisy, bf16=True),
        "bf16 autocast + channels_last_3d": forward_variant(
            model, noisy, channels_last=True, bf16=True
        ),
    }
    if args.compile:
        compiled = torch.compile(copy.deepcopy(model))
        start = time.perf_counter()
        forward_variant(compiled, noisy)()
        print(f"torch.compile first call (compile + run): {time.perf_counter() - start:.1f} s")
        variants["fp32 torch.compile"] = forward_variant(compiled, noisy)

    header = ("| variant | s / forward | GFLOP/s | % theor. peak | % mm peak | PSNR vs clean (dB) "
              "| dPSNR vs fp32 (dB) | PSNR vs fp32 output (dB) | keep |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for name, run in variants.items():
        output = run()  # warm-up (and oneDNN primitive creation)
        seconds = min(_timed(run) for _ in range(args.repeats))
        output = output.float().contiguous().numpy()[0, 0]
        _report(name, seconds, flops, theoretical, measured_peak, clean, output,
                reference_psnr, reference_output)

    for tile in args.tiles:
        def run(tile=tile):
            return cnn_denoise(noisy, [(model, 1.0)], tta=False, device="cpu",
                               roi_size=(tile,) * 3, overlap=0.25, precision="fp32")
        output = run()
        seconds = min(_timed(run) for _ in range(args.repeats))
        _report(f"cnn_denoise tiles {tile}^3, overlap 0.25", seconds, flops, theoretical,
                measured_peak, clean, output, reference_psnr, reference_output)

    torch.set_num_threads(1)
    run = forward_variant(model, noisy)
    run()
    seconds = min(_timed(run) for _ in range(args.repeats))
    _report("fp32, 1 thread", seconds, flops, theoretical / cores, measured_peak / cores, clean,
            run().numpy()[0, 0], reference_psnr, reference_output)
    return 0


def _report(name, seconds, flops, theoretical, measured_peak, clean, output, reference_psnr,
            reference_output):
    rate = flops / seconds
    variant_psnr = psnr(clean, output)
    delta = variant_psnr - reference_psnr
    keep = "yes" if abs(delta) <= PSNR_TOLERANCE_DB else "no"
    print(
        f"| {name} | {seconds:.2f} | {rate / 1e9:.1f} | {100 * rate / theoretical:.1f} "
        f"| {100 * rate / measured_peak:.1f} | {variant_psnr:.3f} | {delta:+.4f} "
        f"| {psnr(reference_output, output):.1f} | {keep} |",
        flush=True,
    )

