"""One module per task (``pretrain``, ``adapt_session``, ``evaluate``, ``align``,
``finetune``, ``adapter``, ``reconstruct``): its LightningModule, how it is built from a config,
and its :class:`Task`, found by name (see :mod:`neurobridge.tasks.registry`)."""

from .registry import Task, get_task, task_names

__all__ = ["Task", "get_task", "task_names"]
