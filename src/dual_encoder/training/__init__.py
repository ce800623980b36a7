"""Training dual encoders on sentence-transformers' trainer: Siamese and asymmetric architectures,
contrastive and triplet losses, hard negatives, evaluation on a dev slice, and a report.

Example::

    from dual_encoder.training import TrainingConfig, train

    result = train(TrainingConfig(data="../shared/data/scifact", output="models/scifact-siamese"))
    print(result.status, result.report["dev_before"], result.report["dev_after"])   # "improved" or "no_improvement"
"""

from dual_encoder.training.config import ARCHITECTURES, LIGHT_QUERY_OBJECTIVES, LOSSES, TrainingConfig
from dual_encoder.training.data import TrainingDataError, load_training_data
from dual_encoder.training.guard import IMPROVED, NO_IMPROVEMENT, NOT_CHECKED
from dual_encoder.training.trainer import NO_IMPROVEMENT_EXIT_CODE, TrainingResult, train

__all__ = [
    "ARCHITECTURES",
    "IMPROVED",
    "LIGHT_QUERY_OBJECTIVES",
    "LOSSES",
    "NOT_CHECKED",
    "NO_IMPROVEMENT",
    "NO_IMPROVEMENT_EXIT_CODE",
    "TrainingConfig",
    "TrainingDataError",
    "TrainingResult",
    "load_training_data",
    "train",
]
