"""The task runner and what every task trains with: callbacks, optimisation, plots,
checkpoints (the tasks themselves are in :mod:`neurobridge.tasks`)."""

from .checkpoint import load_alignment_model, load_masked_model
from .run import run

__all__ = ["load_alignment_model", "load_masked_model", "run"]
