"""Lightning modules, task builders and the task runner."""

from .align import AlignmentTraining
from .builders import build_alignment, build_pretraining, build_session_adaptation
from .checkpoint import load_alignment_model, load_masked_model
from .pretrain import MaskedPretraining
from .run import run

__all__ = [
    "AlignmentTraining",
    "MaskedPretraining",
    "build_alignment",
    "build_pretraining",
    "build_session_adaptation",
    "load_alignment_model",
    "load_masked_model",
    "run",
]
