"""Training dual encoders on sentence-transformers' trainer: Siamese and asymmetric architectures,
contrastive and triplet losses, hard negatives, evaluation on a dev slice, and a report.

Example::

    from dual_encoder.training import TrainingConfig, train

    result = train(TrainingConfig(data="../shared/data/scifact", output="models/scifact-siamese"))
    print(result.report["dev_before"], result.report["dev_after"])
"""

from dual_encoder.training.config import ARCHITECTURES, LIGHT_QUERY_OBJECTIVES, LOSSES, TrainingConfig
from dual_encoder.training.data import TrainingDataError, load_training_data
from dual_encoder.training.trainer import TrainingResult, train

__all__ = [
    "ARCHITECTURES",
    "LIGHT_QUERY_OBJECTIVES",
    "LOSSES",
    "TrainingConfig",
    "TrainingDataError",
    "TrainingResult",
    "load_training_data",
    "train",
]
