"""``bids_auton2n-calibrate-noise``: refit the noise estimator's calibration on real scans.

See :mod:`bids_auton2n.train.noise_calibration` for the method; the record it writes is the
one the estimator reads (``bids_auton2n/data/noise_calibration.json`` by default).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from ..bench.harness import DEFAULT_DATA_DIR
    from ..train.noise_calibration import OUTPUT, SCANS

    parser = argparse.ArgumentParser(
        prog="bids_auton2n-calibrate-noise", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", "--data", type=Path, default=DEFAULT_DATA_DIR,
                        help="folder holding the real scans " + ", ".join(SCANS))
    parser.add_argument("--cache", type=Path, default=None,
                        help="npz of the raw statistics: reused if present, written otherwise")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="calibration record to write")
    return parser


def main(argv=None) -> int:
    from ..train.noise_calibration import run_calibration

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    record = run_calibration(args.data_dir, cache=args.cache, output=args.output,
                             command=shlex.join(["bids_auton2n-calibrate-noise", *argv]))
    print(json.dumps({"model": record["model"], "fit": record["fit"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
