"""Peak memory of the denoising of one big scan under memory budgets (``--mem-gb``).

    bids_auton2n-bench memory --data-dir ../shared/data --scan uih_T1w_sess1 \\
        --mem-gb none 4 2 --out benchmarks/results/memory.md

A crop (``--crop X Y Z``, taken at the centre) makes a small check of the same thing.

Each setting runs in its own process: the scan is read, then :func:`denoise_array` runs
with ``progress=True``; at each stage's start and end the process's peak resident set
(``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs``, Linux) is
read, so every stage gets its own peak: reading, head mask, synthetic pairs, noise
estimate, CNN, guard and RI-NLM. The outputs of the settings are compared with the first
one's (the slabs of the pairs, RI-NLM and the guard give identical results; the CNN's tiles
blend differently).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..harness import DEFAULT_DATA_DIR
from ._common import command_line, publish, study_parser

_STAGE = re.compile(r"^(\w+) (\.\.\.|done in )")


def _peak_rss() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) * 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class _StagePeaks(logging.Handler):
    """Attributes the peak RSS between two stage log lines to the stage that ran."""

    def __init__(self, first: str):
        super().__init__()
        self.current, self.peaks = first, {}
        _reset_peak()

    def mark(self, next_stage: str) -> None:
        peak = _peak_rss()
        self.peaks[self.current] = max(self.peaks.get(self.current, 0), peak)
        _reset_peak()
        self.current = next_stage

    def emit(self, record: logging.LogRecord) -> None:
        match = _STAGE.match(record.getMessage())
        if match and match[2] == "...":  # a stage's peak runs to the next stage's start
            self.mark(match[1])


def _child(args) -> int:
    from ...denoise.memory import set_memory_limit
    from ...denoise.pipeline import denoise_array
    from ...utils.bids import contrast_from_filename
    from ...utils.io import load_volume, read_volume
    from ...utils.threads import set_threads

    set_threads(args.threads)
    set_memory_limit(None if args.mem_gb == "none" else float(args.mem_gb))
    tracker = _StagePeaks("imports")
    tracker.mark("read")
    logger = logging.getLogger("bids_auton2n.denoise")
    logger.addHandler(tracker)
    logger.setLevel(logging.INFO)
    start = time.perf_counter()
    if args.crop:  # only the block is read into memory (nibabel's array proxy)
        img = load_volume(args.scan_file)
        corner = [(n - min(c, n)) // 2 for n, c in zip(img.shape, args.crop)]
        block = tuple(slice(o, o + c) for o, c in zip(corner, args.crop))
        data = np.asarray(img.dataobj[block], dtype=np.float32)
    else:
        _, data = read_volume(args.scan_file)
    tracker.mark("mask")  # denoise_array's head mask comes before its first stage line
    result = denoise_array(data, contrast=contrast_from_filename(args.scan_file),
                           tta=args.tta, progress=True)
    tracker.mark("end")
    np.save(args.save, result.denoised)
    record = {
        "mem_gb": args.mem_gb, "shape": list(data.shape), "voxels": int(data.size),
        # clear_refs also resets ru_maxrss: the run's peak is the largest stage peak
        "peak_rss_bytes": max(tracker.peaks.values()),
        "stage_peak_rss_bytes": tracker.peaks,
        "timings_s": {k: round(v, 1) for k, v in result.timings.items()},
        "wall_s": round(time.perf_counter() - start, 1),
        "sigma": result.noise.sigma, "reference_intensity": result.noise.reference_intensity,
    }
    print("RECORD " + json.dumps(record))
    return 0


def _gb(value: int) -> str:
    return f"{value / 1e9:.2f}"


def main(argv: list[str]) -> int:
    """Run the study (``bids_auton2n-bench memory``); ``argv``: its options."""
    parser = study_parser("memory", __doc__)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--scan", default="uih_T1w_sess1", help="file stem in --data-dir")
    parser.add_argument("--mem-gb", nargs="+", default=["none", "4", "2"],
                        help="settings to measure ('none': no budget)")
    parser.add_argument("--crop", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help="denoise the centre block of this size instead of the whole scan")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-tta", dest="tta", action="store_false")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bids_auton2n-memory"))
    parser.add_argument("--out", type=Path, help="markdown table to write")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the table from --work's records.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scan-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.mem_gb = args.mem_gb[0]
        return _child(args)

    scan = args.data_dir / f"{args.scan}.nii.gz"
    if not scan.is_file():
        parser.error(f"{scan}: no such scan")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.report_only:  # the table again, from the records of an earlier run
        records = json.loads((args.work / "records.json").read_text())
        for record in records:
            record["peak_rss_bytes"] = max(record["stage_peak_rss_bytes"].values())
        outputs = [args.work / f"denoised_{r['mem_gb']}.npy" for r in records]
        return _write_table(records, outputs, args, argv)
    records, outputs = [], []
    for setting in args.mem_gb:
        save = args.work / f"denoised_{setting}.npy"
        command = [sys.executable, "-m", "bids_auton2n.bench", "memory", "--child",
                   "--scan-file", str(scan), "--mem-gb", setting, "--threads", str(args.threads),
                   "--save", str(save)] + ([] if args.tta else ["--no-tta"])
        if args.crop:
            command += ["--crop", *map(str, args.crop)]
        print(f"[memory] --mem-gb {setting} ...", file=sys.stderr, flush=True)
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        if done.returncode:
            print(done.stdout[-2000:], file=sys.stderr)
            return done.returncode
        record = json.loads(done.stdout.split("RECORD ", 1)[1])
        records.append(record)
        outputs.append(save)
        print(f"[memory] --mem-gb {setting}: peak {_gb(record['peak_rss_bytes'])} GB, "
              f"{record['wall_s']} s", file=sys.stderr, flush=True)

    (args.work / "records.json").write_text(json.dumps(records, indent=2))
    return _write_table(records, outputs, args, argv)


def _write_table(records, outputs, args, argv) -> int:
    reference = np.load(outputs[0])
    stages = list(dict.fromkeys(k for r in records for k in r["stage_peak_rss_bytes"]))
    lines = [
        f"Peak resident memory of `denoise_array` on `{args.scan}`{' (centre crop)' if args.crop else ''} "
        f"({'x'.join(map(str, records[0]['shape']))}, {records[0]['voxels'] / 1e6:.1f} M voxels), "
        f"{args.threads} threads, TTA {'on' if args.tta else 'off'}; "
        f"`{command_line('memory', argv)}`. Peaks in GB "
        "(10^9 bytes) per stage (VmHWM from the stage's start to the next one's; 'imports': "
        "the process before reading the scan). Times come from a shared machine: not "
        "performance figures.",
        "",
        "| --mem-gb | peak RSS | " + " | ".join(stages) + " | wall (s) | sigma | "
        "max abs diff vs first (% of ref. intensity) |",
        "|---" * (len(stages) + 5) + "|",
    ]
    for record, output in zip(records, outputs):
        diff = float(np.abs(np.load(output) - reference).max())
        peaks = record["stage_peak_rss_bytes"]
        lines.append(
            f"| {record['mem_gb']} | {_gb(record['peak_rss_bytes'])} | "
            + " | ".join(_gb(peaks[s]) if s in peaks else "" for s in stages)
            + f" | {record['wall_s']} | {record['sigma']:.6g} | "
            f"{100 * diff / record['reference_intensity']:.2e} |")
    publish(lines, args.out)
    return 0
