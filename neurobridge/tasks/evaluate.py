"""``task=evaluate``: test-split scores of masked-model checkpoints, alone and as an ensemble."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from neurobridge.data import NeuralDataModule
from neurobridge.io import write_json_atomic
from neurobridge.models import MaskedModelEnsemble
from neurobridge.tasks.common import (
    build_datamodule,
    build_masking,
    check_protocol,
    check_reads_data,
    check_vocab,
    latent_ceiling,
    nlb_protocol,
    smoothing_baseline,
)
from neurobridge.tasks.pretrain import MaskedPretraining, write_test_unit_scores
from neurobridge.tasks.registry import Task
from neurobridge.training.checkpoint import check_data_config, load_masked_model

__all__ = ["TASK", "build_evaluation", "run_evaluation"]

log = logging.getLogger(__name__)


def build_evaluation(cfg: DictConfig) -> tuple[MaskedPretraining, NeuralDataModule]:
    """Data module and test-only module for ``task=evaluate``.

    ``task.checkpoints`` names one or more masked-model checkpoints (pretraining or
    ``adapt_session``; the masked model of an alignment or adapter checkpoint works too)
    trained on the data's recordings; several are scored as a :class:`MaskedModelEnsemble`.
    """
    paths = cfg.task.get("checkpoints")
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise ValueError(
            "task=evaluate needs task.checkpoints=[<last.ckpt of a pretraining run>, ...] "
            "(one checkpoint, or several to score their ensemble)."
        )
    dm = build_datamodule(cfg, stimulus=False)
    members = []
    for path in paths:
        model = load_masked_model(path)
        check_reads_data(model, dm, str(path))
        check_vocab(model, dm, str(path))
        members.append(model)
    ensemble = MaskedModelEnsemble(members, names=[str(p) for p in paths]).eval()
    dm.tokenizer = dm.masked_tokenizer(ensemble.encoder, build_masking(cfg))
    return MaskedPretraining(model=ensemble, baseline=smoothing_baseline(cfg.task, dm),
                             ceiling=latent_ceiling(cfg.task, dm)), dm


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

    The keys are those of a pretraining run's test (``test/co_bps/<mode>``, the baseline, the
    oracle and, with ``task.ceiling``, the latent ceiling; ``test/r2/...`` for values) for the
    checkpoint, or for the ensemble of the checkpoints (the mean of their log-rates or values)
    when there are several; each member's own scores are added as ``member<i>/test/...``. With
    ``task.protocol=nlb`` the NLB protocol's ``test/nlb/...`` scores are added and its files
    written to ``run_dir/nlb`` (:mod:`neurobridge.nlb`). Every model sees the same test windows
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
    write_test_unit_scores(module, run_dir)
    metrics.update(nlb_protocol(module, dm, cfg, run_dir))
    metrics["n_members"] = float(len(members))
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


def check_evaluation(cfg: DictConfig) -> None:
    """``task.protocol`` options, and every checkpoint trained with this run's data options."""
    check_protocol(cfg)
    paths = cfg.task.get("checkpoints") or []
    for path in [paths] if isinstance(paths, str) else paths:
        check_data_config(path, cfg.data, "task.checkpoints")


TASK = Task(name="evaluate", run=run_evaluation, check=check_evaluation)
