"""Ablation of the mixture of experts: the five experts against one model trained on all levels.

The single model is trained by ``bids_auton2n-train --single-model`` with the same scans,
pairs, patches, loss, optimiser and initialisation as the curriculum, for the same number of
Adam steps as the five shipped experts together (their manifest's ``steps``), see
``benchmarks/results/ablation_single_model.md`` for the command.

Measured on the benchmark's ICBM152 T1w phantom crop (96x112x88, Rician noise, the benchmark's
seeds: ``bids_auton2n.bench.harness.phantom_cases``), PSNR over the head with the benchmark's
peak (clean maximum in the head):

* ``cnn``: CNN + flip TTA without RI-NLM fusion (``denoise_array(fusion=False)``), the matching
  expert forced (``expert=level``) against the single model;
* ``full``: the default pipeline (``denoise_array`` defaults: noise estimated, expert selected,
  TTA, fusion) with the shipped experts against the single-model registry.

The phantom is benchmark material: measured here, never used for training or selection.
Results accumulate in a JSON file next to the table, so ``--stages full`` refreshes the
full-pipeline rows (e.g. after a change of the fusion stage) and keeps the CNN rows.

Usage::

    bids_auton2n-bench ablation-single-model --single-registry REGISTRY [--stages cnn full]
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ...denoise.experts import ExpertRegistry
from ...denoise.pipeline import denoise_array
from ...utils.threads import set_threads
from ..harness import BenchmarkConfig, phantom_cases
from ..metrics import psnr
from ._common import command_line, pipeline_revision, study_parser, write_keeping_notes

NAME = "ablation-single-model"

CROP = (96, 112, 88)
LEVELS = (1.0, 3.0, 5.0, 7.0, 9.0)
DEFAULT_OUT = Path("benchmarks/results/ablation_single_model.md")
DEFAULT_REGISTRY = Path("benchmarks/results/ablation_single_model_registry")
STAGES = ("cnn", "full")


def measure(case, stage: str, registry: ExpertRegistry, expert: float) -> tuple[dict, np.ndarray]:
    """PSNR of one arm on one case, with the experts the pipeline used, and the output.

    ``stage`` "cnn": ``expert`` alone, no fusion; "full": the pipeline's defaults.
    """
    options = {"fusion": False, "expert": expert} if stage == "cnn" else {}
    started = time.perf_counter()
    result = denoise_array(case.noisy, contrast=case.contrast, registry=registry, **options)
    return {
        "psnr": psnr(case.clean, result.denoised, case.score_mask, case.peak),
        "experts": [[c.level, round(c.weight, 3)] for c in result.experts],
        "estimated_percent": round(result.noise.percent, 3),
        "seconds": round(time.perf_counter() - started, 1),
    }, result.denoised


def table(results: dict, levels) -> list[str]:
    lines = ["| noise | noisy | CNN: matching expert | CNN: single model | Δ (experts − single) "
             "| full: experts | full: single model | Δ (experts − single) | experts selected (full) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for level in levels:
        row = results["levels"].get(f"{level:g}", {})
        cells = [f"{level:g} %", _db(row.get("noisy"))]
        for stage in STAGES:
            experts, single = row.get(f"{stage}/experts"), row.get(f"{stage}/single")
            cells += [_db(experts and experts["psnr"]), _db(single and single["psnr"]),
                      _db(experts["psnr"] - single["psnr"]) if experts and single else "n/m"]
        chosen = row.get("full/experts", {}).get("experts", [])
        cells.append(", ".join(f"{lv:g} % ×{w:g}" for lv, w in chosen) or "n/m")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _db(value) -> str:
    return "n/m" if value is None else f"{value:.2f}"


def main(argv: list[str]) -> int:
    parser = study_parser(NAME, __doc__)
    parser.add_argument("--single-registry", type=Path, default=DEFAULT_REGISTRY,
                        help="registry written by bids_auton2n-train --single-model")
    parser.add_argument("--levels", nargs="+", type=float, default=list(LEVELS))
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--threads", type=int, default=1, help="torch and numba threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    set_threads(args.threads)

    experts, single = ExpertRegistry(), ExpertRegistry(args.single_registry)
    store = args.out.with_suffix(".json")
    results = json.loads(store.read_text()) if store.is_file() else {"levels": {}, "runs": {}}
    revision = pipeline_revision()
    for stage in args.stages:
        results["runs"][stage] = {"revision": revision, "load_average_1min_at_start":
                                  round(os.getloadavg()[0], 2), "threads": args.threads}
    config = BenchmarkConfig(out_dir=args.out.parent, levels=tuple(args.levels), datasets=("T1w",),
                             crop_shape=CROP)
    for case in phantom_cases(config):
        row = results["levels"].setdefault(f"{case.level:g}", {})
        row["noisy"] = psnr(case.clean, case.noisy, case.score_mask, case.peak)
        row["seed"] = case.seed
        for stage in args.stages:
            for arm, registry in (("experts", experts), ("single", single)):
                expert = min(registry.levels) if arm == "single" else case.level
                row[f"{stage}/{arm}"], _ = measure(case, stage, registry, expert)
                print(f"{case.level:g} % {stage:>4} {arm:>7}: {row[f'{stage}/{arm}']}", flush=True)
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(results, indent=2) + "\n")

    manifest = single.entry(min(single.levels))
    expert_steps = sum(experts.entry(level)["steps"] for level in experts.levels)
    runs = results["runs"]
    lines = [
        "# Ablation: mixture of experts vs a single model trained on all levels",
        "",
        "PSNR (dB) on the benchmark's ICBM152 T1w phantom crop 96×112×88, Rician noise at p % of "
        "white matter with the benchmark's seeds (`phantom_cases`: 1000 + 10·p), over the head, "
        "peak = clean maximum in the head (the benchmark's convention). "
        "CNN = `denoise_array(fusion=False)`: flip TTA, no RI-NLM; the experts' column forces the "
        "matching expert (`expert=p`), the single model is used at every level. "
        "Full = `denoise_array` defaults (noise estimated, expert selected, TTA, RI-NLM fusion). "
        "n/m = not measured.",
        "",
        *table(results, sorted({float(k) for k in results["levels"]})),
        "",
        "## Training of the two arms (equal cost)",
        "",
        f"* Experts: the shipped curriculum, {expert_steps} Adam steps in all "
        f"({' + '.join(str(experts.entry(lv)['steps']) for lv in experts.levels)}), "
        "time-limited (`docs/model-card.md`).",
        f"* Single model: `{manifest['command']}`: {manifest['steps']} Adam steps "
        f"({manifest['epochs']} epochs, stopped by {manifest['stopped']}), kept epoch "
        f"{manifest['best_epoch']} (lowest pooled validation N2N loss), "
        f"{manifest['train_seconds'] / 60:.1f} min on one thread; revision "
        f"`{manifest['revision']}`. Same scans per level as the experts "
        "(`single_model.scans_per_level` in its manifest), same pairs, patches 40³ ×4, L1, "
        "Adam 1e-3, identity initialisation of the 1 % expert (seed 0); each step's level drawn "
        "uniformly from 1/3/5/7/9 %, seeded by (seed, step). Registry: one weight file "
        "registered at 1 %, so the app selects it for every estimate ≥ 1 % (and blends it with "
        "the identity below, as it does the 1 % expert).",
        "",
        "## Reproduce",
        "",
        "```bash",
        f"NUMBA_NUM_THREADS=1 {manifest['command']}",
        "NUMBA_NUM_THREADS=1 " + command_line(NAME, argv),
        "```",
        "",
        "Measured at: " + "; ".join(
            f"{stage} rows at `{runs[stage]['revision']}` (load average "
            f"{runs[stage]['load_average_1min_at_start']} at start, {runs[stage]['threads']} thread)"
            for stage in STAGES if stage in runs) + ".",
        "",
    ]
    write_keeping_notes(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0

