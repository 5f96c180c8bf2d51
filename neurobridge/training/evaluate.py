"""``task=evaluate``: test-split scores of masked-model checkpoints, alone and as an ensemble."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from neurobridge.io import write_json_atomic
from neurobridge.training.builders import build_evaluation
from neurobridge.training.pretrain import MaskedPretraining

__all__ = ["run_evaluation"]

log = logging.getLogger(__name__)


def _test(module: L.LightningModule, dm, cfg: DictConfig) -> dict[str, float]:
    trainer = L.Trainer(
        accelerator=cfg.trainer.get("accelerator", "auto"),
        devices=1,
        precision=cfg.trainer.get("precision", "32-true"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=bool(cfg.trainer.get("enable_progress_bar", True)),
    )
    return {k: float(v) for k, v in trainer.test(module, datamodule=dm)[0].items()}


def run_evaluation(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Score ``task.checkpoints`` on the test split of ``cfg.data`` and write ``metrics.json``.

    The keys are those of a pretraining run's test (``test/co_bps/<mode>``, the baseline and
    the oracle; ``test/r2/...`` for values) for the checkpoint, or for the ensemble of the
    checkpoints (the mean of their log-rates or values) when there are several; each member's
    own scores are added as ``member<i>/test/...``. Every model sees the same test windows
    under the same fixed masks (``data.eval_seed``), so the scores compare cell for cell.
    One device; ``trainer.accelerator`` and ``trainer.precision`` apply.
    """
    run_dir = Path(run_dir)
    module, dm = build_evaluation(cfg)
    members = list(module.model.members)
    metrics = {}
    if len(members) > 1:
        for i, member in enumerate(members):
            log.info("Testing member %d of %d", i + 1, len(members))
            scores = _test(MaskedPretraining(model=member), dm, cfg)
            metrics.update({f"member{i}/{k}": v for k, v in scores.items() if "/oracle/" not in k})
    log.info("Testing the %s", "ensemble" if len(members) > 1 else "checkpoint")
    metrics = {**_test(module, dm, cfg), **metrics}
    metrics["n_members"] = float(len(members))
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics
