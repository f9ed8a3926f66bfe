"""Time ``ri_nlm`` on a realistic 197x233x189 volume.

The clean image is ``stroke_T1`` (a real 1 mm T1w scan, brain-extracted) zero-padded
centrally to 197x233x189 (the size the performance target is stated for), with seeded
Rician noise of ``--percent`` % of its maximum. The guide is the clean image plus a
small residual noise (a stand-in for the CNN output). The filter is timed on the whole
volume and within a brain mask (guide > 0, the case the pipeline hits with a mask).

Throughput is quoted as voxels x (2r+1)^3 nominal candidates per wall second (border
voxels have fewer candidates, masked rows compute a little more than the mask).

The JIT is warmed up on a tiny volume first, so the times exclude compilation. The
machine is shared: the load average before and after each run is printed, quote it with
the times; the process CPU time (summed over threads) is printed too, as it is less
sensitive to other people's jobs than the wall time.

Usage (from the repository root): ``PYTHONPATH=. python scripts/time_rinlm.py
[--repeats N] [--percent P] [--radius R]``
"""

import argparse
import os
import time
from pathlib import Path

import nibabel as nib
import numba
import numpy as np

from bids_auton2n.denoise.rinlm import ri_nlm

TARGET_SHAPE = (197, 233, 189)
DEFAULT_VOLUME = Path("/work/shared/data/stroke_T1.nii.gz")


def _pad_or_crop_centre(volume, shape):
    out = np.zeros(shape, np.float32)
    src, dst = [], []
    for have, want in zip(volume.shape, shape):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(None))
        else:
            start = (want - have) // 2
            src.append(slice(None))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def _load_average():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", type=Path, default=DEFAULT_VOLUME)
    parser.add_argument("--percent", type=float, default=3.0, help="Rician noise, % of max")
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    clean = _pad_or_crop_centre(np.asarray(nib.load(args.volume).dataobj, np.float32), TARGET_SHAPE)
    rng = np.random.default_rng(0)
    sigma = args.percent / 100.0 * float(clean.max())
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    noisy = noisy.astype(np.float32)
    guide = (clean + rng.normal(0, 0.2 * sigma, clean.shape)).astype(np.float32)
    brain = clean > 0

    tiny = np.ones((8, 8, 8), np.float32)
    start = time.perf_counter()
    ri_nlm(tiny, tiny, 1.0)
    print(f"warm-up (JIT compile or cache load): {time.perf_counter() - start:.2f} s")
    print(f"volume {args.volume.name} -> {TARGET_SHAPE}, sigma {sigma:.2f} ({args.percent}% of max), "
          f"radius {args.radius}, numba threads {numba.get_num_threads()}, cpus {os.cpu_count()}")

    candidates = (2 * args.radius + 1) ** 3
    for label, mask in (("whole volume", None), ("brain mask", brain)):
        voxels = clean.size if mask is None else int(mask.sum())
        for _ in range(args.repeats):
            before = _load_average()
            start, cpu_start = time.perf_counter(), time.process_time()
            result = ri_nlm(noisy, guide, sigma, search_radius=args.radius, mask=mask)
            seconds = time.perf_counter() - start
            cpu_seconds = time.process_time() - cpu_start
            in_brain = brain if mask is None else mask
            error_in = np.sqrt(np.mean((noisy[in_brain] - clean[in_brain]) ** 2))
            error_out = np.sqrt(np.mean((result[in_brain] - clean[in_brain]) ** 2))
            print(f"{label:12s}: {seconds:6.2f} s wall, {cpu_seconds:6.2f} s CPU (all threads), "
                  f"{voxels} voxels, "
                  f"{voxels * candidates / seconds / 1e9:.2f} G voxel-candidates/s, "
                  f"brain RMSE {error_in:.2f} -> {error_out:.2f} "
                  f"[{before} before; {_load_average()} after]")


if __name__ == "__main__":
    main()
