"""``task=finetune``: alignment fine-tuning. The last ``task.trainable_layers`` encoder layers
learn with the alignment loss plus ``task.recon_weight`` times the masked-reconstruction loss;
the module and its building are those of :mod:`neurobridge.tasks.align`."""

from __future__ import annotations

from neurobridge.tasks.align import (
    CHECKPOINT_KIND,
    build_alignment,
    check_alignment,
    linear_readouts,
    plot_retrieval,
)
from neurobridge.tasks.registry import Task

__all__ = ["TASK"]

TASK = Task(name="finetune", build=build_alignment, checkpoint_kind=CHECKPOINT_KIND,
            check=check_alignment, plots=plot_retrieval, after_test=linear_readouts)
