"""Where to flag ``structure_removed`` (:func:`bids_auton2n.reports.iqms.structure_removed`).

Usage::

    bids_auton2n-bench structure-threshold [--data-dir DIR] [--out FILE]

Objects: generated heads (:func:`~bids_auton2n.denoise.phantom.synthetic_head`) and real scans,
centre-cropped, with Rician noise added at 3 % and 6 % of their reference tissue. Never
brain templates or atlases (benchmark material). ``philips_ADNI_MPRAGE_T1w`` is the
project's held-out validation scan: it is measured and listed, but not used for the choice.

Outputs per noisy image:

* **noise only**: the image before noise was added (all that went is the added noise);
* **ours**: the shipped pipeline with its defaults (the scans' own noise goes too);
* **over-smoothed**: a Gaussian filter of the noisy image, sigma 1 and 2 voxels (structure
  removed on purpose); sigma 0.7 voxels is listed as mild smoothing (at 6 % noise it
  removes mostly noise) and takes no part in the choice.

The flag is the midpoint between the highest value of the first two groups and the lowest
of the over-smoothed outputs, over the selection objects, rounded to 0.05.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..harness import DEFAULT_DATA_DIR
from ._common import command_line, study_parser

NAME = "structure-threshold"

#: Real scans (file in --data-dir, contrast) used for the choice; crop edge in voxels.
SELECTION_SCANS = (("stroke_T1.nii.gz", "T1w"), ("stroke_T2.nii.gz", "T2w"),
                   ("seg3D_MR.nii.gz", "T1w"), ("xa30_T1w_2mm.nii.gz", "T1w"),
                   ("studyforrest_T1w_0.7mm.nii.gz", "T1w"), ("chris_PD.nii.gz", "PDw"))
VALIDATION_SCANS = (("philips_ADNI_MPRAGE_T1w.nii.gz", "T1w"),)
CROP = 96
LEVELS = (3.0, 6.0)
SMOOTHING_VOXELS = (0.7, 1.0, 2.0)
#: The outputs that removed structure on purpose (the 0.7-voxel one is mild smoothing).
OVER_SMOOTHED = ("over-smoothed 1 vx", "over-smoothed 2 vx")


def _crop(volume: np.ndarray, mask: np.ndarray, edge: int) -> tuple[np.ndarray, np.ndarray]:
    centre = np.round(ndimage.center_of_mass(mask)).astype(int)
    window = tuple(slice(max(0, min(c - edge // 2, n - edge)), max(0, min(c - edge // 2, n - edge)) + edge)
                   for c, n in zip(centre, volume.shape))
    return volume[window], mask[window]


def _objects(data_dir: Path):
    """(name, contrast, clean volume, used for the choice) of every object."""
    import nibabel as nb

    from ...denoise.noise import head_mask
    from ...denoise.phantom import synthetic_head

    rng = np.random.default_rng(0)
    for contrast in ("T1w", "T2w"):
        yield f"generated head {contrast}", contrast, synthetic_head((80, 96, 80), contrast, rng), True
    for scans, selection in ((SELECTION_SCANS, True), (VALIDATION_SCANS, False)):
        for name, contrast in scans:
            path = data_dir / name
            if not path.is_file():
                print(f"skipping {name}: not in {data_dir}", file=sys.stderr)
                continue
            volume = np.asarray(nb.load(path).get_fdata(dtype=np.float32)).squeeze()
            volume, _ = _crop(volume, head_mask(volume), CROP)
            yield name.removesuffix(".nii.gz"), contrast, np.ascontiguousarray(volume), selection


def measure(data_dir: Path) -> list[dict]:
    """One row per (object, noise level, output)."""
    from ...denoise.noise import head_mask, reference_intensity
    from ...denoise.phantom import add_rician_noise
    from ...denoise.pipeline import denoise_array
    from ...reports.iqms import structure_removed

    rows = []
    for seed, (name, contrast, clean, selection) in enumerate(_objects(data_dir)):
        mask = head_mask(clean)
        reference = reference_intensity(clean, mask, contrast).intensity
        for level in LEVELS:
            noisy = add_rician_noise(clean, level, reference, seed=seed)
            mask = head_mask(noisy)
            started = time.perf_counter()
            ours = denoise_array(noisy, contrast=contrast, mask=mask).denoised
            outputs = {"noise only": clean, "ours": ours}
            outputs.update({f"over-smoothed {s:g} vx": ndimage.gaussian_filter(noisy, s)
                            for s in SMOOTHING_VOXELS})
            for output, denoised in outputs.items():
                rows.append({"object": name, "contrast": contrast, "level": level,
                             "output": output, "selection": selection,
                             "structure_removed": structure_removed(noisy, denoised, mask)})
            print(f"{name} {level:g} %: " + ", ".join(
                f"{r['output']} {r['structure_removed']:.3f}" for r in rows[-len(outputs):])
                + f" ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return rows


def choose_flag(rows: list[dict]) -> tuple[float, float, float]:
    """(highest clean-output value, lowest over-smoothed value, flag) over the selection."""
    chosen = [r for r in rows if r["selection"]]
    kept = max(r["structure_removed"] for r in chosen if not r["output"].startswith("over"))
    removed = min(r["structure_removed"] for r in chosen if r["output"] in OVER_SMOOTHED)
    return kept, removed, round(20 * (kept + removed) / 2) / 20


def report(rows: list[dict], command: str) -> str:
    kept, removed, flag = choose_flag(rows)
    outputs = list(dict.fromkeys(r["output"] for r in rows))
    lines = ["# Threshold of the structure-removed measure", "",
             f"Command: `{command}`",
             "", "Objects: generated heads and real scans (centre crops of "
             f"{CROP}^3 voxels) with Rician noise at {', '.join(f'{v:g}' for v in LEVELS)} % "
             "of the reference tissue. `philips_ADNI_MPRAGE_T1w` (held-out validation scan) "
             "is listed but not used for the choice.", "",
             "| object | noise | " + " | ".join(outputs) + " |",
             "|---|---|" + "---|" * len(outputs)]
    for key in dict.fromkeys((r["object"], r["level"]) for r in rows):
        values = {r["output"]: r["structure_removed"] for r in rows
                  if (r["object"], r["level"]) == key}
        held_out = "" if next(r["selection"] for r in rows if r["object"] == key[0]) else " (validation)"
        lines.append(f"| {key[0]}{held_out} | {key[1]:g} % | "
                     + " | ".join(f"{values[o]:.3f}" for o in outputs) + " |")
    lines += ["", f"Highest value where only noise (or our pipeline's output) went: {kept:.3f}; "
              f"lowest over-smoothed value (1 and 2 vx): {removed:.3f}; flag above **{flag:.2f}** "
              "(their midpoint, rounded to 0.05)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = study_parser(NAME, __doc__)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/structure_removed_threshold.md"))
    opts = parser.parse_args(argv)
    text = report(measure(opts.data_dir), command_line(NAME, argv))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(text)
    print(text)
    return 0
