"""What every task trains with: callbacks, optimisation, plots, checkpoints, and the task runner
(:func:`neurobridge.training.run.run`, imported from its module: it imports the task registry).
The tasks themselves are in :mod:`neurobridge.tasks`."""

from .checkpoint import load_alignment_model, load_masked_model

__all__ = ["load_alignment_model", "load_masked_model"]
