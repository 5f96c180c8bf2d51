"""Lightning modules and the task runner."""

from .pretrain import MaskedPretraining
from .run import build_pretraining, run

__all__ = ["MaskedPretraining", "build_pretraining", "run"]
