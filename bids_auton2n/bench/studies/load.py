"""Load check: the participant and group levels over a generated many-subject dataset.

    bids_auton2n-bench load --subjects 20 --nprocs 2 --out benchmarks/results/load.md

A dataset of ``--subjects`` participants (one noisy T1w head each: the demo's ICBM152
phantom at ``--voxel-mm``, :func:`~bids_auton2n.cli.demo.make_demo_dataset`) is generated,
then ``bids_auton2n`` runs as a user would (its own process, shipped experts, default
options). Reported: exit codes, wall time of each level, the largest resident set of any one
process (``ru_maxrss`` of the waited-for descendants) and the peak of the summed resident
sets of the whole process tree (sampled every 0.2 s from ``/proc``).
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib

from ._common import command_line, publish, study_parser


def _tree_rss(root: int) -> int:
    """Summed VmRSS (bytes) of ``root`` and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid, parent = int(entry), int(fields.get("PPid", "0"))
        children.setdefault(parent, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def _run(command: list[str]) -> dict:
    peak = [0]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], _tree_rss(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.communicate()[0]
    sampler.join()
    return {"code": process.returncode, "wall_s": time.perf_counter() - start,
            "tree_peak": peak[0], "output": output}


def main(argv: list[str]) -> int:
    """Run the study (``bids_auton2n-bench load``); ``argv``: its options."""
    parser = study_parser("load", __doc__)
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--voxel-mm", type=float, default=3.0,
                        help="voxel size of the generated heads (3 mm: 55 x 67 x 55 voxels)")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--extra", default="", help="more options for bids_auton2n, quoted")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bids_auton2n-load"))
    parser.add_argument("--out", type=Path, help="markdown record to write")
    args = parser.parse_args(argv)

    from ...cli.demo import make_demo_dataset

    shutil.rmtree(args.work, ignore_errors=True)
    bids = make_demo_dataset(args.work / "bids", voxel_mm=args.voxel_mm, images=[
        (f"{i:02d}", None, None, "T1w", 1.0 + 8.0 * i / max(args.subjects - 1, 1))
        for i in range(1, args.subjects + 1)])
    out, work = args.work / "out", args.work / "work"
    rows = []
    for level in ("participant", "group"):
        command = [sys.executable, "-m", "bids_auton2n.cli.run", str(bids), str(out), level,
                   "-w", str(work), "--nprocs", str(args.nprocs), *shlex.split(args.extra)]
        print(f"[load] {level} ...", file=sys.stderr, flush=True)
        result = _run(command)
        largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        rows.append((level, result, largest))
        print(f"[load] {level}: exit {result['code']}, {result['wall_s']:.0f} s",
              file=sys.stderr, flush=True)
        if result["code"] != 0:
            print(result["output"][-3000:], file=sys.stderr)
    n_done = sum(1 for _ in out.glob("sub-*/anat/*_desc-denoised_T1w.nii.gz"))
    shape = nib.load(next(bids.glob("sub-*/anat/*_T1w.nii.gz"))).shape
    lines = [
        f"Load check: {args.subjects} generated participants, one "
        f"{'x'.join(map(str, shape))} T1w each (Rician noise 1-9 %), shipped experts, "
        f"`--nprocs {args.nprocs}` {args.extra}; "
        f"`{command_line('load', argv)}`, "
        f"{os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.1f} (a shared "
        "machine: times are not performance figures). Derivatives written: "
        f"{n_done} of {args.subjects}.",
        "",
        "| level | exit code | wall time (s) | largest process RSS, so far (GB) "
        "| process tree peak RSS (GB) |",
        "|---|---|---|---|---|",
    ]
    for level, result, largest in rows:
        lines.append(f"| {level} | {result['code']} | {result['wall_s']:.0f} | "
                     f"{largest / 1e9:.2f} | {result['tree_peak'] / 1e9:.2f} |")
    publish(lines, args.out)
    return 0 if all(r["code"] == 0 for _, r, _ in rows) and n_done == args.subjects else 1
