"""Loggers of a NeuroBridge run (configured in ``configs/logger/``)."""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from neurobridge.io import atomic_path

__all__ = ["ResumableCSVLogger"]


class ResumableCSVLogger(CSVLogger):
    """Lightning's :class:`~lightning.pytorch.loggers.CSVLogger`, continued by a resumed run.

    Lightning's writer deletes an existing ``metrics.csv`` when a run starts again in its
    folder, and rewrites the file in place when new columns appear (a run killed meanwhile
    leaves a header that does not match its rows). This one keeps the interrupted run's rows up
    to :attr:`resume_step` (the resumed run logs the later ones again), with every column, and
    rewrites the file atomically.

    Args:
        resume_step: the global step of the checkpoint the run resumes from; ``None`` for a new
            run (the run sets it from ``resume_from``).
        **kwargs: :class:`~lightning.pytorch.loggers.CSVLogger`'s arguments.
    """

    def __init__(self, *args, resume_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self.resume_step)
        return self._experiment


class _ContinuingWriter(ExperimentWriter):
    """An experiment writer that continues ``metrics.csv`` up to ``resume_step``."""

    def __init__(self, log_dir: str, resume_step: int | None):
        self.resume_step = resume_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if self.resume_step is None or not os.path.isfile(self.metrics_file_path):
            super()._check_log_dir_exists()  # a new run: Lightning's behaviour
            return
        rows = [row for row in self._rows() if _step(row) <= self.resume_step]
        self.metrics_keys = sorted(set().union(*rows)) if rows else []
        self._write(rows, self.metrics_keys)

    def _rows(self) -> list[dict]:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        # values past the header (a header left behind by a killed rewrite) have no column name
        return [{k: v for k, v in row.items() if k is not None and v not in ("", None)}
                for row in rows]

    def _write(self, rows: list[dict], fieldnames: list[str]) -> None:
        with atomic_path(self.metrics_file_path) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        self._write(self._rows(), fieldnames)


def _step(row: dict) -> float:
    try:
        return float(row.get("step", "inf"))
    except ValueError:
        return float("inf")
