"""Run one benchmark method on one NIfTI volume, in its own process.

``python -m bids_auton2n.bench.worker JOB.json`` reads ``{"method", "in_file", "out_file",
"contrast", "true_sigma", "threads"}``, writes the denoised NIfTI to ``out_file`` and a status
record next to the job file (``JOB.result.json``). The process exits 0 even when the method is
unavailable or fails: the status record carries the reason, so one method never stops a run.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

#: Failures meaning "this method cannot run here" rather than "it crashed on this volume".
UNAVAILABLE = (ImportError, LookupError, FileNotFoundError)


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def run_job(job_file: Path) -> dict:
    job = json.loads(job_file.read_text())
    record = {"status": "ok", "reason": "", "method_seconds": None, "timings": {}}
    try:
        import nibabel as nib
        import numpy as np

        from .methods import METHODS, MethodInput

        image = nib.load(job["in_file"])
        noisy = np.asarray(image.get_fdata(dtype=np.float32))
        given = MethodInput(contrast=job["contrast"],
                            voxel_size=tuple(float(z) for z in image.header.get_zooms()[:3]),
                            true_sigma=job.get("true_sigma"), threads=int(job["threads"]))
        try:
            from bids_auton2n.denoise.experts import ExpertWeightsError
            unavailable = UNAVAILABLE + (ExpertWeightsError,)
        except ImportError:
            unavailable = UNAVAILABLE
        start = time.perf_counter()
        try:
            denoised, timings = METHODS[job["method"]].run(noisy, given)
        except unavailable as exc:
            record.update(status="n/a", reason=_one_line(exc))
            return record
        record["method_seconds"] = time.perf_counter() - start
        record["timings"] = {k: float(v) for k, v in timings.items()}
        denoised = np.asarray(denoised, dtype=np.float32)
        if denoised.shape != noisy.shape:
            raise ValueError(f"output shape {denoised.shape} differs from input {noisy.shape}")
        nib.Nifti1Image(denoised, image.affine).to_filename(job["out_file"])
    except Exception as exc:  # any crash becomes an 'error' row, never a stopped run
        record.update(status="error", reason=_one_line(exc))
    finally:
        # Fallback memory figure when /usr/bin/time is missing (kilobytes on Linux).
        record["self_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return record


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job_file = Path(argv[0])
    record = run_job(job_file)
    job_file.with_suffix(".result.json").write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
