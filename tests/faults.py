"""Fault injection for the resume tests: a callback that fails a run at a chosen step."""

import os
import signal

from lightning.pytorch.callbacks import Callback


class InjectedFault(Exception):
    """The failure :class:`FailAtStep` raises."""


class FailAtStep(Callback):
    """At the start of optimizer step ``step + 1`` (after step ``step`` and its checkpoint):
    raise :class:`InjectedFault` (``how="raise"``) or send the process the signal named by
    ``how`` (``"SIGKILL"``, ``"SIGTERM"``, ``"SIGUSR1"``)."""

    def __init__(self, step: int, how: str = "raise"):
        self.step, self.how = int(step), how

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and not getattr(self, "_fired", False):
            self._fired = True
            if self.how == "raise":
                raise InjectedFault(f"injected at step {self.step}")
            os.kill(os.getpid(), getattr(signal, self.how))


class DamageFileAtStep(Callback):
    """At the start of optimizer step ``step + 1``: cut the file at ``path`` to half its size
    (a recording that becomes unreadable mid-run)."""

    def __init__(self, step: int, path: str):
        self.step, self.path = int(step), path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            size = os.path.getsize(self.path)
            with open(self.path, "r+b") as f:
                f.truncate(size // 2)
