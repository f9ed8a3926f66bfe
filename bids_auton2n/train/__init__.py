"""Training of the Auto-N2N noise-level experts and per-dataset fine-tuning.

See :mod:`bids_auton2n.train.curriculum` (entry points), :mod:`.trainer` (one expert)
and :mod:`.data` (prepared scans, patch sampling, validation split).
"""

from .curriculum import LEVELS, finetune, load_volumes, train_curriculum, train_single_model
from .data import (
    MultiLevelSampler, PatchSampler, TrainingVolume, prepare_volume, volume_from_arrays,
)
from .trainer import TrainConfig, TrainResult, train_expert

__all__ = [
    "LEVELS",
    "MultiLevelSampler",
    "PatchSampler",
    "TrainConfig",
    "TrainResult",
    "TrainingVolume",
    "finetune",
    "load_volumes",
    "prepare_volume",
    "train_curriculum",
    "train_expert",
    "train_single_model",
    "volume_from_arrays",
]
