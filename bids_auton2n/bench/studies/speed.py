"""Whole-process speed of the denoiser against ANTs and DIPY, and where the fixed costs go.

Every row is one fresh process under ``/usr/bin/time`` (wall, user and system seconds, peak
memory), run one after the other in the same study so that the ratios compare like with
like on one machine:

* ``bids_auton2n-denoise`` with its defaults and with ``--no-tta``;
* ANTs ``DenoiseImage`` (antspyx ``denoise_image``, Rician model);
* DIPY ``nlmeans`` (Rician, patch radius 1, block radius 2, sigma from ``estimate_sigma``);

on the ICBM152 phantom (timing only) at 3 % Rician noise, whole (181x217x181 crop) and a
45-slice slab of it, and on a 24^3 volume, whose run is almost only the fixed cost (start-up,
imports, loading the compiled kernels).  Each command runs ``--repeats`` times and the fastest
run is reported; a run with an empty Numba cache (``NUMBA_CACHE_DIR`` pointing at a new folder)
shows what compiling the kernels costs the first run after an install.  Our stage seconds come
from the sidecar.

Usage::

    bids_auton2n-bench speed [--repeats 2] [--threads 2] [--out benchmarks/results/speed.md]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from ...denoise.phantom import add_rician_noise, icbm152_phantom
from ._common import command_line, pipeline_revision, study_parser, write_keeping_notes

NAME = "speed"
SHAPES = {"181x217x181": (181, 217, 181), "181x217x45": (181, 217, 45), "24x24x24": (24, 24, 24)}
ANTS = ("import sys, ants, nibabel as nb; image = ants.image_read(sys.argv[1]); "
        "ants.image_write(ants.denoise_image(image, noise_model='Rician'), sys.argv[2])")
DIPY = ("import sys, numpy as np, nibabel as nb; "
        "from dipy.denoise.nlmeans import nlmeans; from dipy.denoise.noise_estimate import "
        "estimate_sigma; image = nb.load(sys.argv[1]); x = image.get_fdata(dtype=np.float32); "
        "sigma = float(np.ravel(estimate_sigma(x, N=0))[0]); nb.Nifti1Image(nlmeans(x, sigma, "
        "patch_radius=1, block_radius=2, rician=True), image.affine).to_filename(sys.argv[2])")


def _volumes(folder: Path) -> dict[str, Path]:
    phantom = icbm152_phantom("T1w")
    noisy = add_rician_noise(phantom.clean, 3.0, phantom.reference_intensity, seed=3)
    start = [(n - s) // 2 for n, s in zip(noisy.shape, SHAPES["181x217x181"])]
    whole = noisy[tuple(slice(b, b + s) for b, s in zip(start, SHAPES["181x217x181"]))]
    crops = {"181x217x181": whole, "181x217x45": whole[:, :, 68:113],
             "24x24x24": whole[78:102, 96:120, 78:102]}
    paths = {}
    for name, data in crops.items():
        paths[name] = folder / f"phantom_{name}_T1w.nii.gz"
        nib.Nifti1Image(np.ascontiguousarray(data), phantom.affine).to_filename(paths[name])
    return paths


def _timed(command: list[str], env: dict) -> dict:
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True,
                            env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {result.stderr.strip().splitlines()[-1:]}")
    found = {}
    for key, pattern in (("wall", r"Elapsed \(wall clock\) time .*: ([\d:.]+)"),
                         ("user", r"User time \(seconds\): ([\d.]+)"),
                         ("system", r"System time \(seconds\): ([\d.]+)"),
                         ("rss", r"Maximum resident set size \(kbytes\): (\d+)")):
        value = re.search(pattern, result.stderr).group(1)
        if key == "wall":
            seconds = 0.0
            for part in value.split(":"):
                seconds = 60 * seconds + float(part)
            value = seconds
        found[key] = float(value)
    found["rss"] /= 1024
    return found


def main(argv: list[str]) -> int:
    parser = study_parser(NAME, __doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed.md"))
    args = parser.parse_args(argv)
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        env[var] = str(args.threads)
    denoise = str(Path(sys.executable).with_name("bids_auton2n-denoise"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="auton2n_speed_") as tmp:
        folder = Path(tmp)
        volumes = _volumes(folder)
        out = str(folder / "out.nii.gz")
        sidecar = folder / "out.json"
        for shape, volume in volumes.items():
            commands = {
                "ours (defaults)": [denoise, str(volume), out, "--sidecar", str(sidecar)],
                "ours --no-tta": [denoise, str(volume), out, "--no-tta", "--sidecar", str(sidecar)],
                "ANTs DenoiseImage (Rician)": [sys.executable, "-c", ANTS, str(volume), out],
                "DIPY nlmeans (Rician, block radius 2)": [sys.executable, "-c", DIPY, str(volume),
                                                         out],
            }
            for name, command in commands.items():
                runs = []
                for _ in range(args.repeats):
                    runs.append(_timed(command, env))
                    if name.startswith("ours"):
                        runs[-1]["stages"] = json.loads(sidecar.read_text())["TimingsSeconds"]
                best = min(runs, key=lambda run: run["wall"])
                rows.append((shape, name, best))
                print(f"[{NAME}] {shape} {name}: {best['wall']:.1f} s", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(prefix="numba_cache_") as cache:
                cold = _timed(commands["ours --no-tta"], {**env, "NUMBA_CACHE_DIR": cache})
            rows.append((shape, "ours --no-tta, empty Numba cache (first run)", cold))
    lines = ["# Whole-process speed: ours, ANTs and DIPY in one run", "",
             f"`{command_line(NAME, argv)}` at revision `{pipeline_revision()}`, {args.threads} "
             "threads per process, fastest of "
             f"{args.repeats} runs. Seconds of the whole process (start-up and imports included).",
             "", "| volume | command | wall s | user s | system s | peak RSS MiB | our stages (s) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for shape, name, run in rows:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in run.get("stages", {}).items())
        lines.append(f"| {shape} | {name} | {run['wall']:.1f} | {run['user']:.1f} | "
                     f"{run['system']:.1f} | {run['rss']:.0f} | {stages} |")
    lines += ["", "Ratios (wall):", ""]
    walls = {(shape, name): run["wall"] for shape, name, run in rows}
    for shape in SHAPES:
        ants = walls[(shape, "ANTs DenoiseImage (Rician)")]
        dipy = walls[(shape, "DIPY nlmeans (Rician, block radius 2)")]
        lines.append(f"* {shape}: ours / ANTs = {walls[(shape, 'ours (defaults)')] / ants:.2f} "
                     f"(target <= 0.5); ours --no-tta / DIPY = "
                     f"{walls[(shape, 'ours --no-tta')] / dipy:.2f} (target <= 2)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_keeping_notes(args.out, "\n".join(lines) + "\n")
    print(f"[{NAME}] wrote {args.out}", file=sys.stderr)
    return 0
