"""Studies behind the figures of the README, the model card and ``benchmarks/results/``.

Each study is a subcommand of ``bids_auton2n-bench`` (``bids_auton2n-bench STUDY --help``);
its module has ``main(argv) -> int``. The modules are imported only when their study runs, so
``bids_auton2n-bench --help`` stays fast.
"""

from __future__ import annotations

import importlib

#: Subcommand -> (module in this package, one line on what it measures).
STUDIES = {
    "do-no-harm": ("do_no_harm", "default pipeline on the (nearly) clean ICBM152 phantom"),
    "engine-targets": ("engine_targets",
                       "pairs, RI-NLM, CNN FLOP/s, whole pipeline vs DIPY, noise estimate"),
    "ablation-single-model": ("ablation_single_model",
                              "the five experts against one model trained on all levels"),
    "finetune-gain": ("finetune_gain",
                      "self-supervised fine-tuning on the noisy phantom vs the shipped expert"),
    "noise-estimator-variants": ("noise_estimator_variants",
                                 "flat-voxel fraction and smoothing of the noise statistic"),
    "noise-estimate": ("noise_estimate", "noise estimate against the truth on the ICBM152 phantom"),
    "compare-registries": ("compare_registries",
                           "expert registries on validation objects that are not the benchmark"),
    "guard-validation": ("guard_validation", "threshold of the do-no-harm guard"),
    "final-stage": ("final_stage",
                    "Wiener stage, its settings and TTA passes on validation objects"),
    "speed": ("speed", "whole-process seconds of ours, ANTs and DIPY; the fixed costs"),
    "cnn-throughput": ("cnn_throughput",
                       "CPU FLOP/s of the CNN and the accuracy cost of speed options"),
    "memory": ("memory", "peak memory of one big scan under --mem-gb budgets, stage by stage"),
    "load": ("load", "participant and group levels over a generated many-subject dataset"),
    "determinism": ("determinism",
                    "repeated runs in fresh processes at several thread counts: same bytes?"),
    "structure-threshold": ("structure_threshold",
                            "where the structure-removed measure flags an output"),
}


def run_study(name: str, argv: list[str]) -> int:
    """Run study ``name`` (a key of :data:`STUDIES`) with its own arguments ``argv``."""
    module = importlib.import_module(f"{__name__}.{STUDIES[name][0]}")
    return module.main(argv)
