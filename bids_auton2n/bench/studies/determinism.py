"""Same input and options, repeated in fresh processes with several thread counts: same bytes?

    bids_auton2n-bench determinism --threads 1 1 2 2 --out benchmarks/results/determinism.md

Each run is its own process (numba's and torch's thread pools are fixed when they start):
the input is read (``--input``, a NIfTI file, or else the demo's generated head with 3 %
Rician noise), :func:`~bids_auton2n.denoise.pipeline.denoise_array` runs with the default
options (``--no-tta`` to skip the flips), and the run reports the SHA-256 of the synthetic
pair, of the noise estimate and of the output's bytes. The table compares every run with the
first: identical bytes, or the largest difference in percent of the reference intensity and
the share of voxels that differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ._common import command_line, publish, study_parser


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def _input(path: Path | None) -> np.ndarray:
    if path is not None:
        from ...utils.io import read_volume

        return read_volume(path)[1]
    from ...cli.demo import template_head
    from ...denoise.phantom import add_rician_noise

    clean, reference = template_head("T1w", 3.0)
    return add_rician_noise(clean, 3.0, reference, seed=0).astype(np.float32)


def _child(args) -> int:
    from ...denoise.noise import head_mask, noise_pair
    from ...denoise.pipeline import denoise_array
    from ...utils.threads import set_threads

    set_threads(args.threads[0])
    data = _input(args.input)
    result = denoise_array(data, tta=args.tta)
    np.save(args.save, result.denoised)
    record = {
        "threads": args.threads[0], "shape": list(data.shape),
        "pair_sha256": _sha(noise_pair(data, mask=head_mask(data))),
        "noise_sha256": hashlib.sha256(json.dumps(result.noise.to_dict(), sort_keys=True)
                                       .encode()).hexdigest()[:16],
        "output_sha256": _sha(result.denoised),
        "reference_intensity": result.noise.reference_intensity,
    }
    print("RECORD " + json.dumps(record))
    return 0


def main(argv: list[str]) -> int:
    """Run the study (``bids_auton2n-bench determinism``); ``argv``: its options."""
    parser = study_parser("determinism", __doc__)
    parser.add_argument("--input", type=Path, help="NIfTI image (default: a generated head)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 1, 2, 2],
                        help="thread count of each run, in order")
    parser.add_argument("--no-tta", dest="tta", action="store_false")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bids_auton2n-determinism"))
    parser.add_argument("--out", type=Path, help="markdown table to write")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)

    args.work.mkdir(parents=True, exist_ok=True)
    records, outputs = [], []
    for index, threads in enumerate(args.threads):
        save = args.work / f"run{index}.npy"
        command = [sys.executable, "-m", "bids_auton2n.bench", "determinism", "--child",
                   "--threads", str(threads), "--save", str(save)]
        command += ["--input", str(args.input)] if args.input else []
        command += [] if args.tta else ["--no-tta"]
        print(f"[determinism] run {index + 1}: {threads} thread(s) ...", file=sys.stderr, flush=True)
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        if done.returncode:
            print(done.stdout[-2000:], file=sys.stderr)
            return done.returncode
        records.append(json.loads(done.stdout.split("RECORD ", 1)[1]))
        outputs.append(np.load(save))

    first = outputs[0]
    lines = [
        f"Repeated runs of `denoise_array` (TTA {'on' if args.tta else 'off'}) on "
        f"{args.input.name if args.input else 'the generated head (3 % Rician noise)'} "
        f"({'x'.join(map(str, records[0]['shape']))}), each in a fresh process; "
        f"`{command_line('determinism', argv)}`; {os.cpu_count()} CPUs. SHA-256 (first 16 hex "
        "digits) of the synthetic pair, the noise estimate and the output; differences against "
        "run 1.",
        "",
        "| run | threads | pair | noise estimate | output | output identical to run 1 "
        "| max abs diff (% of ref.) | voxels that differ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index, (record, output) in enumerate(zip(records, outputs), 1):
        diff = np.abs(output.astype(np.float64) - first)
        lines.append(
            f"| {index} | {record['threads']} | {record['pair_sha256']} | "
            f"{record['noise_sha256']} | {record['output_sha256']} | "
            f"{'yes' if output.tobytes() == first.tobytes() else 'no'} | "
            f"{100 * diff.max() / record['reference_intensity']:.2e} | "
            f"{np.count_nonzero(diff) / diff.size:.2%} |")
    publish(lines, args.out)
    return 0
