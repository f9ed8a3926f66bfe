"""``bids_auton2n-train``: train the Auto-N2N experts, or fine-tune one on a dataset.

Curriculum (the shipped experts)::

    bids_auton2n-train --data-dir ../shared/data --out bids_auton2n/data/experts \\
        --work-dir /tmp/auton2n-train --total-budget-min 40

Single model trained on all levels (ablation of the mixture of experts; one
weight file registered at the lowest level), for exactly N Adam steps::

    bids_auton2n-train --single-model --data-dir ../shared/data --out single_registry \
        --work-dir /tmp/single-work --max-steps 2724 --patience 1000 --total-budget-min 0

Fine-tuning on a dataset's own scans (writes a registry directory for ``--registry``
of the denoiser)::

    bids_auton2n-train --finetune sub-01_T1w.nii.gz sub-02_T1w.nii.gz --out ft_registry \\
        --budget-min 10

Rerunning the same command resumes from the checkpoints in the work directory.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from ..denoise.experts import ExpertRegistry, ExpertWeightsError, default_root
from ..denoise.inference import resolve_device
from ..denoise import CONTRASTS
from ..train.curriculum import (
    CURRICULUM_BASE, FINETUNE_BASE, LEVELS, MAX_NOISE_RATIO, TRAINING_SCANS, finetune,
    load_volumes, train_curriculum, train_single_model,
)
from ..train.data import BASES
from ..train.trainer import SELECTION_METRICS, TrainConfig
from ..utils.io import InputImageError
from ..utils.threads import set_threads


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bids_auton2n-train",
        description=__doc__.split("\n\n")[0],
        epilog="Rerunning a command with the same --work-dir resumes from its checkpoints.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_argument_group("training data (curriculum)")
    source.add_argument("--data", nargs="+", metavar="FILE[:CONTRAST]", default=[],
                        help=f"real scans to train on; CONTRAST one of {', '.join(CONTRASTS)} "
                             "(default: BIDS suffix, else T1w)")
    source.add_argument("--data-dir", type=Path,
                        help="directory holding the project's training scans: "
                             + ", ".join(f"{name} ({c}{'' if p == 'none' else ', ' + p})"
                                         for name, c, p in TRAINING_SCANS))
    source.add_argument("--max-noise-ratio", type=float, default=MAX_NOISE_RATIO,
                        help="a scan trains the p %% expert only if its own noise is <= this "
                             "times p (0: every scan trains every level)")
    source.add_argument("--levels", nargs="+", type=float, default=list(LEVELS),
                        help="expert noise levels (percent), trained in increasing order")
    source.add_argument("--single-model", action="store_true",
                        help="ablation: train ONE network on all --levels (each Adam step at a "
                             "level drawn uniformly, seeded by (seed, step)) instead of one expert "
                             "per level; --out gets one weight file registered at the lowest level "
                             "and --total-budget-min is its budget")
    ft = parser.add_argument_group("fine-tuning")
    ft.add_argument("--finetune", nargs="+", metavar="FILE[:CONTRAST]",
                    help="fine-tune one expert on these scans instead of training the curriculum")
    ft.add_argument("--start-level", type=float,
                    help="expert to fine-tune (default: selected from the scans' median noise)")
    ft.add_argument("--registry", type=Path,
                    help="registry holding the expert to start from, and denoising a "
                         "'denoised' --base (default: shipped experts)")
    ft.add_argument("--budget-min", type=float, default=10.0,
                    help="wall-clock budget of the fine-tuning, pair generation included (minutes)")
    ft.add_argument("--add-noise-to-level", action="store_true",
                    help="top the scans' noise up to the expert's level where they are cleaner")
    ft.add_argument("--base", choices=BASES,
                    help="train on the noisy scans' own pairs, or on each scan denoised by "
                         "--registry, its pair computed on the denoised image, independent noise "
                         "added up to the expert's level (default: fine-tuning "
                         f"{FINETUNE_BASE}, curriculum {CURRICULUM_BASE})")
    ft.add_argument("--contrast", choices=CONTRASTS,
                    help="contrast of scans given without one")

    parser.add_argument("--out", type=Path,
                        help="registry directory to write (curriculum default: the package's "
                             f"experts, {default_root()})")
    parser.add_argument("--work-dir", type=Path,
                        help="pair cache and checkpoints (default: OUT/../<out-name>-work)")
    budget = parser.add_argument_group("budgets and early stopping")
    budget.add_argument("--total-budget-min", type=float, default=85.0,
                        help="wall-clock budget of the whole curriculum (minutes; 0: no time "
                             "limit, stop on epochs, steps or early stopping only)")
    budget.add_argument("--time-budget-min", type=float,
                        help="upper limit per expert (minutes)")
    budget.add_argument("--max-epochs", type=int, default=TrainConfig.max_epochs)
    budget.add_argument("--max-steps", type=int,
                        help="Adam-step limit per model (the last epoch is cut short there)")
    budget.add_argument("--total-steps", type=int,
                        help="Adam steps of the whole curriculum, shared out between the levels "
                             "as the time is (the same run on every machine)")
    budget.add_argument("--steps-per-epoch", type=int, default=TrainConfig.steps_per_epoch)
    budget.add_argument("--patience", type=int, default=TrainConfig.patience,
                        help="epochs without a lower validation loss before stopping")
    net = parser.add_argument_group("optimisation")
    net.add_argument("--patch-size", type=int, default=TrainConfig.patch_size)
    net.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    net.add_argument("--lr", type=float, default=TrainConfig.lr)
    net.add_argument("--loss", default=TrainConfig.loss, choices=("l1", "l2", "auton2n"))
    net.add_argument("--val-patches", type=int, default=TrainConfig.val_patches_per_volume,
                     help="validation patches per scan")
    net.add_argument("--select-by", choices=SELECTION_METRICS, default=TrainConfig.select_by,
                     help="early stopping follows the held-out N2N loss or the held-out PSNR "
                          "against the scan before added noise")
    net.add_argument("--exclude-centre", action="store_true",
                     help="Noise2Sim-style pairs (centre voxel left out of the patch distance)")
    net.add_argument("--seed", type=int, default=0)
    net.add_argument("--device", default="auto", help="auto, cpu or cuda[:k]")
    net.add_argument("--threads", type=int,
                     help="CPU threads for torch and numba (default: theirs; 1 is faster on a busy "
                          "machine)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    # Recorded in the manifest as the console script, however it was launched.
    command = shlex.join([parser.prog, *argv])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        resolve_device(args.device)
        set_threads(args.threads)
    except ValueError as error:
        parser.error(str(error))
    config = TrainConfig(
        level=0.0, patch_size=args.patch_size, batch_size=args.batch_size, lr=args.lr,
        loss=args.loss, steps_per_epoch=args.steps_per_epoch, max_epochs=args.max_epochs,
        max_steps=args.max_steps, patience=args.patience, val_patches_per_volume=args.val_patches,
        select_by=args.select_by, seed=args.seed,
        device=args.device,
    )
    try:
        if args.finetune:
            if args.out is None:
                parser.error("--finetune needs --out (the registry directory to write)")
            out = finetune(
                args.finetune, start_level=args.start_level, out_dir=args.out,
                time_budget_s=args.budget_min * 60.0, max_epochs=args.max_epochs, seed=args.seed,
                registry=ExpertRegistry(args.registry) if args.registry else None,
                work_dir=args.work_dir, contrast=args.contrast,
                add_noise_to_level=args.add_noise_to_level, exclude_centre=args.exclude_centre,
                base=args.base or FINETUNE_BASE, config=config, command=command,
                progress=not args.no_progress,
            )
            print(f"fine-tuned registry written to {out}")
            return 0
        specs = list(args.data)
        if args.data_dir is not None:
            specs += [(args.data_dir / name, contrast, preprocess)
                      for name, contrast, preprocess in TRAINING_SCANS]
        if not specs:
            parser.error("give training scans with --data and/or --data-dir (or use --finetune)")
        if args.single_model and args.out is None:
            parser.error("--single-model needs --out (it must not replace the shipped experts)")
        out = args.out or default_root()
        work_dir = args.work_dir or out.parent / f"{out.name}-work"
        volumes = load_volumes(specs, work_dir=work_dir, exclude_centre=args.exclude_centre,
                               contrast=args.contrast, base=args.base or CURRICULUM_BASE,
                               registry=ExpertRegistry(args.registry) if args.registry else None)
        total_budget_s = args.total_budget_min * 60.0 if args.total_budget_min > 0 else None
        if args.single_model:
            results = [train_single_model(
                volumes, out_dir=out, work_dir=work_dir, levels=args.levels,
                base_config=replace(config, time_budget_s=total_budget_s),
                exclude_centre=args.exclude_centre, max_noise_ratio=args.max_noise_ratio or None,
                command=command, progress=not args.no_progress,
            )]
        else:
            results = train_curriculum(
                volumes, out_dir=out, work_dir=work_dir, levels=args.levels,
                total_budget_s=total_budget_s,
                expert_budget_s=None if args.time_budget_min is None else args.time_budget_min * 60.0,
                total_steps=args.total_steps,
                base_config=config, exclude_centre=args.exclude_centre,
                max_noise_ratio=args.max_noise_ratio or None, command=command,
                progress=not args.no_progress,
            )
    except (InputImageError, ExpertWeightsError, ValueError, FileNotFoundError) as error:
        print(f"bids_auton2n-train: error: {error}", file=sys.stderr)
        return 2
    for result in results:
        label = "single model" if args.single_model else f"{result.level:g}%"
        print(f"{label}: {result.epochs} epochs, {result.steps} steps, "
              f"{result.train_seconds / 60:.1f} min, best {args.select_by} score {result.best_score:.5g} "
              f"(epoch {result.best_epoch}), stopped by {result.stopped}")
    print(f"experts written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
