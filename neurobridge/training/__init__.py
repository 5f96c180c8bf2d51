"""Lightning modules and the task runner."""

from .checkpoint import load_masked_model
from .pretrain import MaskedPretraining
from .run import build_pretraining, run

__all__ = ["MaskedPretraining", "build_pretraining", "load_masked_model", "run"]
