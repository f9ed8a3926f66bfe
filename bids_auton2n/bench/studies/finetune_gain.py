"""Gain of self-supervised fine-tuning on the noisy phantom itself over the shipped expert.

For each noise level, the benchmark's noisy ICBM152 T1w phantom crop (96x112x88, Rician noise,
the benchmark's seed: ``bids_auton2n.bench.harness.phantom_cases``) is written as a NIfTI file
and the shipped expert is fine-tuned on it with :func:`bids_auton2n.train.finetune`: synthetic
pairs of the noisy volume only (no clean image anywhere), a fixed epoch budget (not wall
time, so the run is reproducible), one thread.  Then PSNR over the head (benchmark peak) of

* ``cnn``: CNN + flip TTA without fusion, the starting expert of the shipped registry against
  the fine-tuned one (both forced with ``expert=start level``);
* ``full``: the default pipeline (``denoise_array`` defaults) with the shipped registry against
  the fine-tuned registry.

The clean phantom is only used to score; the fine-tuning's own early stopping follows its
self-supervised validation loss.  Variants (``--variant``) change one setting of the
fine-tuning (e.g. ``--add-noise-to-level``) and are stored side by side in the JSON file next
to the table; ``--stages full`` refreshes the full-pipeline rows only.

Usage::

    bids_auton2n-bench finetune-gain [--levels 3 5 9] [--epochs 4] [--variant self]
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ...denoise.experts import ExpertRegistry, sha256_file
from ...denoise.intensity import sanitize
from ...denoise.noise import head_mask
from ...train import TrainConfig, finetune
from ...train.data import BASES, cached_pair
from ...utils.threads import set_threads
from ..harness import BenchmarkConfig, phantom_cases
from ..metrics import psnr
from ._common import command_line, pipeline_revision, study_parser, write_keeping_notes
from .ablation_single_model import CROP, STAGES, measure

NAME = "finetune-gain"

DEFAULT_OUT = Path("benchmarks/results/finetune_gain.md")
DEFAULT_WORK = Path("/tmp/bids_auton2n-finetune-gain")


def noisy_file(case, work: Path) -> Path:
    """The noisy phantom as the NIfTI file fine-tuning reads (written once: its hash keys the
    pair cache)."""
    path = work / f"sub-phantom{case.level:g}pct_T1w.nii.gz"
    if not path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        nib.Nifti1Image(case.noisy, case.affine).to_filename(path)
    return path


def finetune_case(case, work: Path, args, command: str) -> ExpertRegistry:
    """Fine-tuned registry of one noisy phantom (reused when trained with these settings from
    the currently shipped expert)."""
    config = TrainConfig(level=0.0, patch_size=args.patch_size, batch_size=args.batch_size,
                         steps_per_epoch=args.steps_per_epoch, patience=args.patience,
                         val_patches_per_volume=args.val_patches, device="cpu")
    registry_dir = work / "registry"
    if (registry_dir / "manifest.json").is_file():
        done = ExpertRegistry(registry_dir)
        entry = done.entry(done.levels[0])
        settings = entry["settings"]
        if (entry["epochs"] == args.epochs and settings["seed"] == args.seed
                and settings["steps_per_epoch"] == args.steps_per_epoch
                and settings["patch_size"] == args.patch_size
                and settings["batch_size"] == args.batch_size
                and (settings["level"] > 0) == (args.add_noise_to_level or args.base == "denoised")
                and entry.get("finetune_recipe", {}).get("base", "noisy") == args.base
                and entry["pairs"]["exclude_centre"] == args.exclude_centre
                and args.start_level in (None, entry["initialised_from"])
                and entry.get("finetuned_from", {}).get("sha256")
                == ExpertRegistry().sha256(entry["initialised_from"])):
            return done
    out = finetune([noisy_file(case, work)], start_level=args.start_level, out_dir=work / "registry",
                   time_budget_s=None, max_epochs=args.epochs, seed=args.seed,
                   work_dir=work / "train", add_noise_to_level=args.add_noise_to_level,
                   exclude_centre=args.exclude_centre, base=args.base, config=config, command=command,
                   progress=False)
    return ExpertRegistry(out)


def pair_noise_correlation(case, work: Path, exclude_centre: bool) -> float:
    """Correlation, over the head, of the noises of the phantom and of its synthetic pair.

    Diagnostic only (it needs the clean image): a target whose noise follows the input's
    teaches Noise2Noise to keep part of the noise.  The pair is the cached one fine-tuning used.
    """
    path = noisy_file(case, work)
    finite, _ = sanitize(case.noisy)
    mask = head_mask(finite)
    pair = cached_pair(finite, mask, exclude_centre=exclude_centre, cache=work / "train" / "pairs",
                       key=sha256_file(path), label=path.name)
    return float(np.corrcoef((case.noisy - case.clean)[mask], (pair - case.clean)[mask])[0, 1])


def measure_with_noise_kept(case, stage: str, registry: ExpertRegistry, level: float) -> dict:
    """:func:`ablation_single_model.measure`, plus the share of the input noise the output kept.

    ``noise_kept``: regression slope of the output's error on the input noise (0: all noise
    removed, 1: all kept), a diagnostic only.
    """
    record, denoised = measure(case, stage, registry, level)
    mask = case.score_mask
    noise = (case.noisy - case.clean)[mask].astype(np.float64)
    record["noise_kept"] = float(np.dot((denoised - case.clean)[mask], noise) / np.dot(noise, noise))
    return record


def training_record(registry: ExpertRegistry) -> dict:
    entry = registry.entry(registry.levels[0])
    history = entry["history"]
    best = entry["validation_at_best"]
    return {
        "start_level": entry["initialised_from"],
        "estimated_noise_percent": entry["dataset_median_noise_percent"],
        "added_noise_to_level": entry["settings"]["level"] > 0,
        "epochs": entry["epochs"], "steps": entry["steps"], "best_epoch": entry["best_epoch"],
        "val_loss_start": history[0]["val_loss"], "val_loss_best": best["val_loss"],
        "val_loss_per_epoch": [round(h["val_loss"], 6) for h in history],
        "total_seconds": entry["total_seconds"], "command": entry["command"],
        "revision": entry["revision"],
    }


def _psnr_cell(measured: dict) -> str:
    kept = measured.get("noise_kept")
    return f"{measured['psnr']:.2f}" + ("" if kept is None else f" ({kept:.2f})")


def _first_command(rows: dict) -> str:
    return next(iter(rows["levels"].values()))["training"]["command"]


def tables(results: dict) -> list[str]:
    lines = []
    for variant, rows in results["variants"].items():
        lines += [
            f"### Variant `{variant}`: {rows['description']}",
            "",
            f"`NUMBA_NUM_THREADS=1 {_first_command(rows)}`",
            "",
            "| noise | noisy | start expert | fine-tuning: steps, kept epoch, val N2N loss start → best "
            "| corr(pair noise, input noise): paper / Noise2Sim pair | CNN: shipped | CNN: fine-tuned "
            "| Δ | full: shipped | full: fine-tuned | Δ |",
            "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key in sorted(rows["levels"], key=float):
            row = rows["levels"][key]
            train = row["training"]
            cells = [f"{float(key):g} %", f"{row['noisy']:.2f}",
                     f"{train['start_level']:g} % (estimate {train['estimated_noise_percent']:.2f} %)",
                     f"{train['steps']}, {train['best_epoch']}/{train['epochs']}, "
                     f"{train['val_loss_start']:.5f} → {train['val_loss_best']:.5f}",
                     "{paper:.3f} / {noise2sim:.3f}".format(**row["pair_noise_corr"])
                     if "pair_noise_corr" in row else "n/m"]
            for stage in STAGES:
                shipped, tuned = row.get(f"{stage}/shipped"), row.get(f"{stage}/finetuned")
                cells += ([_psnr_cell(shipped), _psnr_cell(tuned),
                           f"{tuned['psnr'] - shipped['psnr']:+.2f}"] if shipped and tuned
                          else ["n/m"] * 3)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main(argv: list[str]) -> int:
    parser = study_parser(NAME, __doc__)
    parser.add_argument("--levels", nargs="+", type=float, default=[3.0, 5.0, 9.0])
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs (the budget)")
    parser.add_argument("--steps-per-epoch", type=int, default=50)
    parser.add_argument("--patch-size", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--val-patches", type=int, default=4)
    parser.add_argument("--patience", type=int, default=TrainConfig.patience)
    parser.add_argument("--start-level", type=float,
                        help="expert to fine-tune (default: selected from the estimated noise)")
    parser.add_argument("--add-noise-to-level", action="store_true")
    parser.add_argument("--base", choices=BASES, default="noisy",
                        help="fine-tuning recipe of train.finetune: pairs of the noisy scan, or of "
                             "the scan denoised by the shipped experts with noise added on the fly")
    parser.add_argument("--exclude-centre", action="store_true",
                        help="Noise2Sim-style pairs (centre voxel left out of the patch distance)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="self", help="name of this setting in the table")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--threads", type=int, default=1, help="torch and numba threads")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    command = command_line(NAME, argv)

    shipped = ExpertRegistry()
    store = args.out.with_suffix(".json")
    results = json.loads(store.read_text()) if store.is_file() else {"variants": {}}
    description = (f"{args.epochs} epochs × {args.steps_per_epoch} Adam steps of "
                   f"{args.batch_size}×{args.patch_size}³ patches, "
                   + ("`base='denoised'` (pairs of the phantom denoised by the shipped experts, "
                      "independent noise added up to the expert's level)" if args.base == "denoised"
                      else "noise topped up to the expert's level" if args.add_noise_to_level
                      else "no added noise (the phantom's own noise is the N2N noise)")
                   + (", Noise2Sim pairs (`--exclude-centre`)" if args.exclude_centre
                      else ", the paper's pairs")
                   + (f", start level {args.start_level:g} %" if args.start_level else "")
                   + f", seed {args.seed}")
    variant = results["variants"].setdefault(args.variant, {"levels": {}})
    variant["description"] = description
    variant.setdefault("runs", {})
    revision = pipeline_revision()
    for stage in args.stages:
        variant["runs"][stage] = {"revision": revision, "threads": args.threads,
                                  "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
    config = BenchmarkConfig(out_dir=args.out.parent, levels=tuple(args.levels), datasets=("T1w",),
                             crop_shape=CROP)
    for case in phantom_cases(config):
        tuned = finetune_case(case, args.work / args.variant / f"{case.level:g}pct", args, command)
        row = variant["levels"].setdefault(f"{case.level:g}", {})
        row.update(noisy=psnr(case.clean, case.noisy, case.score_mask, case.peak), seed=case.seed,
                   training=training_record(tuned),
                   pair_noise_corr={  # both pairs are cached: the estimator uses the Noise2Sim one
                       name: pair_noise_correlation(case, args.work / args.variant
                                                    / f"{case.level:g}pct", exclude_centre)
                       for name, exclude_centre in (("paper", False), ("noise2sim", True))})
        print(f"{case.level:g} % fine-tuning: {row['training']}", flush=True)
        start = tuned.levels[0]
        for stage in args.stages:
            for arm, registry in (("shipped", shipped), ("finetuned", tuned)):
                row[f"{stage}/{arm}"] = measure_with_noise_kept(case, stage, registry, start)
                print(f"{case.level:g} % {stage:>4} {arm:>9}: {row[f'{stage}/{arm}']}", flush=True)
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(results, indent=2) + "\n")

    runs = "; ".join(
        f"`{name}`: " + ", ".join(f"{stage} rows at `{run['revision']}` "
                                  f"(load {run['load_average_1min_at_start']})"
                                  for stage, run in rows.get("runs", {}).items())
        for name, rows in results["variants"].items())
    lines = [
        "# Fine-tuning on the noisy phantom itself (self-supervised) vs the shipped expert",
        "",
        "PSNR (dB) on the benchmark's ICBM152 T1w phantom crop 96×112×88, Rician noise at p % of "
        "white matter with the benchmark's seeds (1000 + 10·p), over the head, peak = clean "
        "maximum in the head. The noisy volume is the only training data: "
        "`bids_auton2n.train.finetune` on its synthetic pairs, fixed epoch budget, one thread, "
        "weights of the epoch with the lowest self-supervised validation loss (epoch 0 = the "
        "shipped expert). CNN = `denoise_array(fusion=False, expert=start level)` (flip TTA, no "
        "RI-NLM); full = `denoise_array` defaults with the shipped registry vs the fine-tuned "
        "one-expert registry. Δ = fine-tuned − shipped. In brackets: fraction of the input noise "
        "left in the output (regression slope of output − clean on noisy − clean over the head; "
        "0 = all removed, 1 = all kept), and the correlation of the synthetic pair's noise with "
        "the input's, both diagnostics that need the clean image (never used for training).",
        "",
        *tables(results),
        "## Reproduce",
        "",
        "Each variant's command is under its heading (fine-tuned registries and pairs go to "
        f"`{DEFAULT_WORK}/<variant>/<level>pct/`; a rerun with the same settings reuses them). "
        "Add `--stages full` to refresh only the full-pipeline columns, e.g. after a change of "
        "the fusion stage. This table was last written by:",
        "",
        "```bash",
        "NUMBA_NUM_THREADS=1 " + command,
        "```",
        "",
        f"Measured at: {runs}.",
        "",
    ]
    write_keeping_notes(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0

