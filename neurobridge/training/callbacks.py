"""Lightning callbacks of a NeuroBridge run (configured in ``configs/callbacks/``)."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, EMAWeightAveraging

__all__ = ["EMAWeights", "LastCheckpoint", "RandomState"]

log = logging.getLogger(__name__)


class LastCheckpoint(Checkpoint):
    """Writes ``<dirpath>/last.ckpt`` every ``every_n_train_steps`` optimiser steps and when
    training stops, and nothing else.

    The final save happens at the last batch (``max_steps``) or at the end of the last epoch
    (``max_epochs``, ``max_time``, early stopping): after the EMA update of that step and before
    the EMA callback copies the average into the module at training end, so the checkpoint
    keeps the current weights for resuming and the average for the test. As a :class:`~lightning.pytorch.callbacks.Checkpoint`, Lightning runs it
    after every other callback of a step. Files go through the trainer's checkpoint IO
    (atomic in a NeuroBridge run, :class:`~neurobridge.training.checkpoint.AtomicCheckpointIO`).

    On SIGTERM or SIGUSR1 (a cluster's preemption or time-limit warning) it saves the step in
    progress as soon as it ends, logs how to resume, and stops training (:attr:`stopped_by`;
    the run then exits with status 143 instead of testing).

    Args:
        every_n_train_steps: interval in optimiser steps (``trainer.val_check_interval`` in a
            run).
        dirpath: folder of ``last.ckpt``; ``None``: ``<trainer.default_root_dir>/checkpoints``.
        requeue_on_signal: on SLURM (``SLURM_JOB_ID`` set), requeue the job with ``scontrol
            requeue`` after saving (the ``trainer=slurm`` preset sets it).
    """

    FILENAME = "last.ckpt"

    def __init__(self, *, every_n_train_steps: int, dirpath: str | Path | None = None,
                 requeue_on_signal: bool = False):
        if isinstance(every_n_train_steps, bool) or int(every_n_train_steps) < 1:
            raise ValueError(
                f"every_n_train_steps must be an integer >= 1, got {every_n_train_steps!r}."
            )
        self.every_n_train_steps = int(every_n_train_steps)
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.requeue_on_signal = bool(requeue_on_signal)
        #: the signal that stopped training (``"SIGTERM"`` / ``"SIGUSR1"``), ``None`` otherwise
        self.stopped_by: str | None = None
        self._last_step_saved = 0
        self._signalled: str | None = None
        self._previous_handler = None

    @staticmethod
    def default_dirpath(root_dir: str | Path) -> Path:
        """The folder of ``last.ckpt`` in a run folder when ``dirpath`` is not given."""
        return Path(root_dir) / "checkpoints"

    @classmethod
    def default_path(cls, root_dir: str | Path) -> Path:
        """``<root_dir>/checkpoints/last.ckpt``: where a run folder's last checkpoint is."""
        return cls.default_dirpath(root_dir) / cls.FILENAME

    @property
    def last_path(self) -> Path:
        """Where ``last.ckpt`` is (or will be) written."""
        if self.dirpath is None:
            raise RuntimeError("LastCheckpoint.dirpath is set when the trainer sets it up.")
        return self.dirpath / self.FILENAME

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = self.default_dirpath(trainer.default_root_dir)

    def _unsaved(self, trainer) -> bool:
        """Whether the current step still needs a save (never in a ``fast_dev_run``)."""
        return not trainer.fast_dev_run and trainer.global_step != self._last_step_saved

    def _save(self, trainer) -> None:
        trainer.save_checkpoint(self.last_path, weights_only=False)  # full state: resumable
        self._last_step_saved = trainer.global_step

    def on_train_start(self, trainer, pl_module) -> None:
        # SIGUSR1 (what SLURM sends before a time limit, with --signal) asks for the same stop
        # as SIGTERM, which Lightning itself turns into trainer.received_sigterm; a handler
        # already set (Lightning's own SLURM auto-requeue) is left alone
        self.stopped_by, self._signalled = None, None
        if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            self._previous_handler = signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self._signalled = signal.Signals(signum).name

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGUSR1, self._previous_handler)
            self._previous_handler = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore_handler()

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handler()
        self._save_unless_averaged(trainer)

    def _stop_requested(self, trainer) -> str | None:
        """The signal asking to stop, agreed by every process (any of them got it)."""
        requested = "SIGTERM" if trainer.received_sigterm else self._signalled
        if trainer.world_size > 1:
            anyone = trainer.strategy.reduce_boolean_decision(requested is not None, all=False)
            requested = (requested or "SIGTERM") if anyone else None
        return requested

    def _stop(self, trainer, signame: str) -> None:
        """Save the current step, say how to resume, stop training (requeue on SLURM)."""
        if self._unsaved(trainer):
            self._save(trainer)
        self.stopped_by = signame
        trainer.should_stop = True
        if trainer.is_global_zero:
            log.warning("%s received: %s saved at step %d. Resume with resume_from=%s (or "
                        "resume_from=auto and the same hydra.run.dir).", signame, self.last_path,
                        trainer.global_step, self.last_path)
            job = os.environ.get("SLURM_JOB_ID")
            if self.requeue_on_signal and job:
                done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
                log.warning("scontrol requeue %s: %s", job,
                            "requeued" if done.returncode == 0 else f"failed ({done.stderr.strip()})")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.sanity_checking:
            return
        signame = self._stop_requested(trainer)
        if signame is not None:
            self._stop(trainer, signame)
            return
        if not self._unsaved(trainer):
            return
        step = trainer.global_step
        if 0 < trainer.max_steps <= step or step % self.every_n_train_steps == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        last_epoch = trainer.max_epochs is not None and 0 < trainer.max_epochs <= (
            trainer.current_epoch + 1)
        if (trainer.should_stop or last_epoch) and self._unsaved(trainer):
            self._save(trainer)

    def _save_unless_averaged(self, trainer) -> None:
        # Training that ended another way. With a weight average the module now holds the
        # average, which must not be saved as the weights to resume from: keep the last save.
        averaged = any(isinstance(c, EMAWeightAveraging) for c in trainer.callbacks)
        if not averaged and self._unsaved(trainer):
            self._save(trainer)


class EMAWeights(EMAWeightAveraging):
    """Lightning's EMA callback (``task.ema_decay``), resuming with torch_brain's vocabularies
    intact.

    Validation, the test and ``last.ckpt``'s ``state_dict`` use the averaged weights; the
    checkpoint also keeps the current ones (``current_model_state``), so a run resumes exactly.
    Loading an ``InfiniteVocabEmbedding`` pops the words out of the incoming vocabulary dict in
    place. Lightning restores the module from ``checkpoint["state_dict"]`` (the average) before
    this callback loads the averaged model from the same, by then empty, dicts; they are
    restored here from the current-model state, which holds the same vocabularies.
    """

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        current = checkpoint.get("current_model_state")
        if current is not None:
            for key, value in current.items():
                if key.endswith(".vocab") and value is not None:
                    checkpoint["state_dict"][key] = value.copy()
        super().on_load_checkpoint(trainer, pl_module, checkpoint)


class RandomState(Callback):
    """Saves the random generators' states with every checkpoint and restores them when a run
    resumes, so that dropout (and anything else drawing from them) continues as in an
    uninterrupted run.

    The states are those at the save (the end of a training step); they are put back when
    training starts again, after the resumed run has built its model and data loaders (which
    draw from the generators) and before the validation pending at that step, which draws as
    the uninterrupted run's did. Torch (CPU and every CUDA device), NumPy's global generator and
    Python's ``random``.
    """

    def __init__(self):
        self._loaded: dict | None = None

    def state_dict(self) -> dict:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        # plain types and tensors: checkpoints load with weights_only=True
        state = {"torch": torch.get_rng_state(), "python": random.getstate(),
                 "numpy": [str(name), torch.from_numpy(keys.astype(np.int64)), int(pos),
                           int(has_gauss), float(cached)]}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        if self._loaded is None:
            return
        state, self._loaded = self._loaded, None
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
