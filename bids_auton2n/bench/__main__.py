"""``bids_auton2n-bench``: compare our denoiser with the tools users would pick instead.

Full run (hours on a laptop CPU): ``bids_auton2n-bench``; CI-sized smoke run:
``bids_auton2n-bench --quick``. See docs/benchmark.md.

``bids_auton2n-bench STUDY [options]`` runs one of the studies behind the project's other
figures (:data:`~bids_auton2n.bench.studies.STUDIES`; ``bids_auton2n-bench STUDY --help``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from . import report
from .harness import (DEFAULT_DATA_DIR, FULL_LEVELS, QUICK_CROP, QUICK_LEVELS, QUICK_REAL_SCANS,
                      REAL_SCANS, BenchmarkConfig, run_benchmark)
from .methods import METHODS
from .studies import STUDIES, run_study


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parser() -> argparse.ArgumentParser:
    studies = "\n".join(f"  {name:<26} {what}" for name, (_, what) in STUDIES.items())
    p = argparse.ArgumentParser(prog="bids_auton2n-bench", description=__doc__,
                                epilog=f"studies (bids_auton2n-bench STUDY --help):\n{studies}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: crop {'x'.join(map(str, QUICK_CROP))}, levels {QUICK_LEVELS}, "
                        "T1w phantom and one real scan")
    p.add_argument("--out", type=Path, help="output folder (default benchmarks/results/<full|quick>)")
    p.add_argument("--methods", type=_csv, help=f"comma-separated subset of: {', '.join(METHODS)}")
    p.add_argument("--levels", type=lambda s: tuple(float(v) for v in _csv(s)),
                   help="noise levels in percent")
    p.add_argument("--datasets", type=_csv,
                   help="phantom datasets: T1w, T2w, T1w-max (Manjón/Coupé convention), and "
                        "scan:FILE, a real scan of --data-dir as the reference (the held-out "
                        "philips_ADNI_MPRAGE_T1w.nii.gz)")
    p.add_argument("--real-scans", type=_csv,
                   help=f"files in --data-dir (default: {', '.join(REAL_SCANS)}); 'none' for no real scans")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--crop", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="crop every volume to this size")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads per method process")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per method and volume")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in STUDIES:
        return run_study(argv[0], argv[1:])
    args = parser().parse_args(argv)
    mode = "quick" if args.quick else "full"
    config = BenchmarkConfig(
        out_dir=args.out or Path("benchmarks") / "results" / mode,
        methods=args.methods or tuple(METHODS),
        levels=args.levels or (QUICK_LEVELS if args.quick else FULL_LEVELS),
        datasets=args.datasets or (("T1w",) if args.quick else ("T1w", "T2w", "T1w-max")),
        crop_shape=tuple(args.crop) if args.crop else (QUICK_CROP if args.quick else None),
        real_scans=() if args.real_scans == ("none",) else (
            args.real_scans or (QUICK_REAL_SCANS if args.quick else tuple(REAL_SCANS))),
        data_dir=args.data_dir, threads=args.threads, timeout_s=args.timeout, mode=mode,
    )
    machine = report.machine_record(config.threads)
    start = time.perf_counter()
    try:
        record = run_benchmark(config)
    except ValueError as exc:
        print(f"bids_auton2n-bench: {exc}", file=sys.stderr)
        return 2
    record["machine"] = machine
    record["machine"]["load_average_at_end"] = list(os.getloadavg())
    record["machine"]["benchmark_wall_s"] = round(time.perf_counter() - start, 1)
    record["config"] = {"mode": mode, "command": "bids_auton2n-bench " + shlex.join(argv),
                        "methods": list(config.methods), "levels": list(config.levels),
                        "datasets": list(config.datasets), "crop": config.crop_shape,
                        "real_scans": list(config.real_scans), "threads": config.threads}
    for path in report.write(record, config.out_dir):
        print(f"[bench] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
