"""What the studies share: their command line, the results files, the revision they measured."""

from __future__ import annotations

import argparse
import shlex
import subprocess
from pathlib import Path

#: Text below this line of a results file is the author's reading; regenerating keeps it.
NOTES_MARKER = "<!-- reading below: written by hand, kept when the tables are regenerated -->"


def study_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """Argument parser of study ``name`` (``bids_auton2n-bench NAME``), described by the first
    line of its module's docstring ``doc``."""
    return argparse.ArgumentParser(prog=f"bids_auton2n-bench {name}", description=doc.split("\n")[0])


def command_line(name: str, argv) -> str:
    """The shell command that reruns study ``name`` with ``argv``."""
    return shlex.join(["bids_auton2n-bench", name, *argv])


def start_record(name: str, argv, threads: int) -> dict:
    """Use ``threads`` threads (torch and OpenMP) and start study ``name``'s results record:
    the machine and the command that reruns it."""
    import os

    import torch

    from ..report import machine_record

    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    return {"machine": machine_record(threads), "config": {"command": command_line(name, argv)}}


def write_keeping_notes(path: Path, text: str) -> None:
    """Write generated ``text`` to ``path``, keeping the hand-written part after :data:`NOTES_MARKER`."""
    notes = ""
    if path.is_file() and NOTES_MARKER in path.read_text():
        notes = path.read_text().split(NOTES_MARKER, 1)[1]
    path.write_text(text.rstrip("\n") + "\n\n" + NOTES_MARKER + (notes or "\n"))


def publish(lines: list[str], out: Path | None) -> None:
    """Print a study's table and, with ``out``, write it there (:func:`write_keeping_notes`)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_keeping_notes(out, text)


def pipeline_revision() -> str:
    """Git revision, marked ``+uncommitted-denoise-changes`` when ``denoise/`` differs from it."""
    from ...train.curriculum import git_revision

    root = Path(__file__).resolve().parents[3]
    changed = subprocess.run(["git", "status", "--porcelain", "bids_auton2n/denoise/"], cwd=root,
                             capture_output=True, text=True, check=False).stdout.strip()
    return git_revision().replace("-dirty", "") + ("+uncommitted-denoise-changes" if changed else "")
