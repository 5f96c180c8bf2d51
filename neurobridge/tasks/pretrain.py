"""``task=pretrain``: multi-task masked pretraining (its LightningModule and how it is built)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from neurobridge.baselines import LatentPosteriorCeiling, SmoothingGLMBaseline
from neurobridge.comparison import UNIT_SCORES_FILE, write_unit_scores
from neurobridge.data import MaskedBatch, MaskedTokenizer, NeuralDataModule
from neurobridge.data.spike_values import VALUE_SOURCES
from neurobridge.losses import masked_mse, masked_poisson_nll
from neurobridge.masking import MASKING_MODES
from neurobridge.metrics import CoBPS, MaskedR2, log_rate_from_rate, paired_co_bps_difference
from neurobridge.modality import Modality
from neurobridge.models import MaskedModel, MaskedModelEnsemble, build_masked_model
from neurobridge.tasks.common import (
    build_datamodule,
    build_masking,
    check_protocol,
    container,
    latent_ceiling,
    nlb_protocol,
    smoothing_baseline,
)
from neurobridge.tasks.registry import Task
from neurobridge.training.checkpoint import CHECKPOINT_KEY, checkpoint_payload
from neurobridge.training.optim import configure_optimization

__all__ = [
    "CHECKPOINT_KIND",
    "SOURCE_GROUPS",
    "TASK",
    "MaskedPretraining",
    "build_pretraining",
    "masked_pretraining",
    "new_masked_model",
]

#: What a masked-pretraining checkpoint holds (``task=pretrain`` and ``task=adapt_session``).
CHECKPOINT_KIND = "masked"

#: Names under which a values run that reads spiking recordings too (``data.spike_values``)
#: also reports losses and metrics per kind of recording, pooled over modes, in the order of
#: :data:`~neurobridge.data.spike_values.VALUE_SOURCES`.
SOURCE_GROUPS = tuple(
    {"value_series": "value_recordings", "spikes": "spike_recordings"}[s] for s in VALUE_SOURCES
)


class MaskedPretraining(L.LightningModule):
    """Trains a :class:`MaskedModel` to reconstruct masked grid cells.

    Spike counts use the Poisson NLL on log-rates, continuous values the MSE; both on the
    masked cells, plus ``unmasked_weight`` times the same loss on the decoded cells the
    encoder saw when the training batches carry some (``data.train_unmasked_queries``).
    Validation and test score the fixed evaluation masks per mode: co-smoothing
    bits/spike (spikes) or R² (values). At test time the smoothing baseline, when the files
    store ground truth the true-rate oracle and, if given, the latent ceiling are scored on the
    same cells. When the batches
    carry ``value_source`` (a values run with ``data.spike_values``), losses and R² are also
    reported per kind of recording (:data:`SOURCE_GROUPS`, pooled over modes).

    Args:
        model: the encoder + decoder (or, to evaluate only, an ensemble of them).
        optimizer: ``{"name": "adamw" | "sparse_lamb", "lr": float, "weight_decay": float}``;
            ``None`` for a module that only evaluates.
        scheduler: ``{"name": "cosine" | "onecycle" | "none", "warmup_frac": float}``.
        total_steps: optimiser steps of the run (for the schedule).
        baseline: the smoothing baseline, keyed by session id, fitted on a session's training
            split when the test first scores it
            (:func:`neurobridge.tasks.common.smoothing_baseline`); ``None`` skips it.
        ceiling: the achievable ceiling of data with a latent ground truth, keyed by session id
            (:func:`neurobridge.tasks.common.latent_ceiling`); ``None`` skips it.
        model_config: the resolved ``model`` config, stored in every checkpoint so that
            :func:`neurobridge.training.load_masked_model` can rebuild the model without data.
        unmasked_weight: weight of the loss on decoded unmasked cells (``query_visible``).
    """

    def __init__(
        self,
        *,
        model: MaskedModel | MaskedModelEnsemble,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        total_steps: int | None = None,
        baseline: SmoothingGLMBaseline | None = None,
        ceiling: LatentPosteriorCeiling | None = None,
        model_config: dict | None = None,
        unmasked_weight: float = 1.0,
    ):
        super().__init__()
        if not (unmasked_weight >= 0 and math.isfinite(unmasked_weight)):
            raise ValueError(
                f"task.unmasked_weight must be a finite number >= 0, got {unmasked_weight}."
            )
        self.unmasked_weight = unmasked_weight
        self.model = model
        self.optimizer_cfg = dict(optimizer) if optimizer is not None else None
        self.scheduler_cfg = dict(scheduler) if scheduler is not None else None
        self.total_steps = total_steps
        self.baseline = baseline
        self.ceiling = ceiling
        self.model_config = model_config
        self.is_spiking = model.modality is Modality.SPIKES
        num_units = len(model.encoder.unit_emb.vocab)
        metric_cls = CoBPS if self.is_spiking else MaskedR2
        whos = ("model", "baseline", "ceiling", "oracle") if self.is_spiking else ("model", "oracle")
        groups = (*MASKING_MODES, "all") if self.is_spiking else (*MASKING_MODES, "all",
                                                                    *SOURCE_GROUPS)
        self.metric_keys = [f"{who}/{group}" for who in whos for group in groups]
        self.metrics = torch.nn.ModuleDict(
            {k.replace("/", "__"): metric_cls(num_units=num_units) for k in self.metric_keys}
        )
        #: ``{group: {"model_ll", "spikes", "cells": [num_units]}}`` of the model's last test
        #: (all processes' cells), for :func:`write_test_unit_scores`
        self.test_unit_sums: dict[str, dict[str, np.ndarray]] = {}

    # ------------------------------------------------------------------ core
    def forward(self, batch: MaskedBatch) -> Tensor:
        return self.model(
            encoder_inputs=batch["encoder_inputs"],
            query_unit_index=batch["query_unit_index"],
            query_timestamps=batch["query_timestamps"],
            query_session_index=batch["query_session_index"],
            mode_index=batch["mode"],
        )

    def loss(self, pred: Tensor, batch: MaskedBatch, weight: Tensor) -> Tensor:
        if self.is_spiking:
            return masked_poisson_nll(pred, batch["target"], weight)
        return masked_mse(pred, batch["target"], weight)

    def _mode_losses(self, pred: Tensor, batch: MaskedBatch, stage: str) -> Tensor:
        mask = batch["query_mask"]
        loss = self.loss(pred, batch, mask)
        bs = mask.shape[0]
        self.log(f"{stage}/loss", loss, batch_size=bs, prog_bar=True, sync_dist=stage != "train")
        for i, mode in enumerate(MASKING_MODES):
            in_mode = (batch["mode"] == i)[:, None] & mask
            if in_mode.any():
                self.log(f"{stage}/loss/{mode}", self.loss(pred, batch, in_mode),
                         batch_size=int((batch["mode"] == i).sum()), sync_dist=stage != "train")
        for i, group in enumerate(SOURCE_GROUPS if "value_source" in batch else ()):
            in_group = (batch["value_source"] == i)[:, None] & mask
            if in_group.any():
                self.log(f"{stage}/loss/{group}", self.loss(pred, batch, in_group),
                         batch_size=int((batch["value_source"] == i).sum()),
                         sync_dist=stage != "train")
        return loss

    def training_step(self, batch: MaskedBatch, batch_idx: int) -> Tensor:
        pred = self(batch)
        loss = self._mode_losses(pred, batch, "train")
        visible = batch.get("query_visible")
        if visible is not None and visible.any():
            visible_loss = self.loss(pred, batch, visible)
            self.log("train/loss/unmasked", visible_loss, batch_size=len(batch["mode"]))
            loss = loss + self.unmasked_weight * visible_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Non-finite training loss at step {self.global_step}. Lower optimizer.lr or use "
                "32-bit precision (trainer.precision=32) to find the source."
            )
        fallbacks = (batch["mode"] != batch["requested_mode"]).sum().float()
        self.log("train/inter_region_fallbacks", fallbacks, reduce_fx="sum", on_step=False,
                 on_epoch=True, batch_size=len(batch["mode"]))
        return loss

    # ------------------------------------------------------------ evaluation
    def validation_step(self, batch: MaskedBatch, batch_idx: int) -> None:
        pred = self(batch)
        self._mode_losses(pred, batch, "val")
        self._update_metrics("model", pred, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", whos=("model",))

    def test_step(self, batch: MaskedBatch, batch_idx: int) -> None:
        pred = self(batch)
        self._mode_losses(pred, batch, "test")
        self._update_metrics("model", pred, batch)
        truth = batch["true_target"]
        has_truth = torch.isfinite(truth) | ~batch["query_mask"]
        if bool(has_truth.all()):
            oracle = log_rate_from_rate(truth) if self.is_spiking else truth
            self._update_metrics("oracle", oracle, batch)
        if self.is_spiking and self.baseline is not None:
            self._update_metrics("baseline", self._baseline_log_rates(batch), batch)
        if self.is_spiking and self.ceiling is not None:
            self._update_metrics("ceiling", self._ceiling_log_rates(batch), batch)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", whos=("model", "baseline", "ceiling", "oracle"))
        for sid, choice in (self.baseline.choices if self.baseline is not None else {}).items():
            for name in ("sigma_bins", "l2", "temporal_sigma_bins"):
                self.log(f"test/baseline/{sid}/{name}", float(getattr(choice, name)))

    def _update_metrics(self, who: str, pred: Tensor, batch: MaskedBatch) -> None:
        mask = batch["query_mask"]
        for i, mode in enumerate(MASKING_MODES):
            sel = (batch["mode"] == i)[:, None] & mask
            if not sel.any():
                continue
            for key in (f"{who}/{mode}", f"{who}/all"):
                self.metrics[key.replace("/", "__")].update(
                    pred[sel].float(), batch["target"][sel].float(), batch["query_unit_index"][sel]
                )
        for i, group in enumerate(SOURCE_GROUPS if "value_source" in batch else ()):
            sel = (batch["value_source"] == i)[:, None] & mask
            if sel.any():
                self.metrics[f"{who}__{group}"].update(
                    pred[sel].float(), batch["target"][sel].float(), batch["query_unit_index"][sel]
                )

    def _log_metrics(self, stage: str, whos: tuple[str, ...]) -> None:
        name = "co_bps" if self.is_spiking else "r2"
        # Under DDP each rank may have scored only some modes (the evaluation windows are
        # sharded), and computing a metric is a collective: every rank must compute the metrics
        # that any rank updated.
        updated = torch.tensor(
            [self.metrics[k.replace("/", "__")].update_called for k in self.metric_keys],
            device=self.device,
        )
        updated = self.all_gather(updated).reshape(-1, len(self.metric_keys)).any(dim=0)
        scored = {k for k, any_rank in zip(self.metric_keys, updated.tolist()) if any_rank}
        for key in self.metric_keys:
            who, mode = key.split("/")
            if who not in whos or key not in scored:
                continue
            prefix = f"{stage}/{name}" if who == "model" else f"{stage}/{who}/{name}"
            suffix = "" if mode == "all" else f"/{mode}"
            metric = self.metrics[key.replace("/", "__")]
            self.log(prefix + suffix, metric.compute(), prog_bar=(who == "model" and mode == "all"))
            if stage == "test" and who == "model" and self.is_spiking:
                with metric.sync_context():
                    self.test_unit_sums[mode] = {n: getattr(metric, n).cpu().numpy().copy()
                                                 for n in ("model_ll", "spikes", "cells")}
            if who == "baseline" and self.is_spiking and f"model/{mode}" in scored:
                model = self.metrics[f"model__{mode}"]
                with model.sync_context(), metric.sync_context():
                    diff, low, high = paired_co_bps_difference(model, metric)
                delta = f"{stage}/baseline/delta_co_bps{suffix}"
                self.log(delta, diff)
                self.log(f"{delta}_ci_low", low)
                self.log(f"{delta}_ci_high", high)
        for key in scored:
            if key.split("/")[0] in whos:
                self.metrics[key.replace("/", "__")].reset()

    def _window_grids(self, batch: MaskedBatch):
        """``(b, session id, counts [T, n], loss mask [T, n])`` of every window of the batch."""
        vocab = self.model.encoder.session_emb
        for b in range(batch["target"].shape[0]):
            n_units = int((batch["grid_unit_index"][b] > 0).sum())
            yield (b, vocab.detokenizer(int(batch["session_index"][b])),
                   batch["grid"][b, :n_units].T.cpu().numpy(),
                   batch["grid_mask"][b, :n_units].T.cpu().numpy())

    @staticmethod
    def _at_queries(out: Tensor, batch: MaskedBatch, b: int, log_rate: np.ndarray) -> None:
        """Write window ``b``'s ``[T, n]`` log-rates at its query cells of ``out [B, Q]``."""
        q = batch["query_mask"][b]
        qb = batch["query_bin"][b][q].cpu().numpy()
        qu = batch["query_unit"][b][q].cpu().numpy()
        out[b, q] = torch.as_tensor(log_rate[qb, qu], dtype=out.dtype, device=out.device)

    def _baseline_log_rates(self, batch: MaskedBatch) -> Tensor:
        """Smoothing-baseline log-rates ``[B, Q]`` at the batch's query cells."""
        out = torch.zeros_like(batch["target"])
        for b, sid, grid, mask in self._window_grids(batch):
            self._at_queries(out, batch, b, self.baseline.predict_log_rate(sid, grid, mask))
        return out

    def _ceiling_log_rates(self, batch: MaskedBatch) -> Tensor:
        """Latent-ceiling log-rates ``[B, Q]`` at the batch's query cells (the windows of one
        session solved together)."""
        out = torch.zeros_like(batch["target"])
        by_session: dict[str, list] = {}
        for window in self._window_grids(batch):
            by_session.setdefault(window[1], []).append(window)
        for sid, windows in by_session.items():
            log_rates = self.ceiling.predict_log_rates(
                sid, np.stack([w[2] for w in windows]), np.stack([w[3] for w in windows]))
            for (b, *_), log_rate in zip(windows, log_rates):
                self._at_queries(out, batch, b, log_rate)
        return out

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.model_config is not None:
            checkpoint[CHECKPOINT_KEY] = checkpoint_payload(self.model_config, CHECKPOINT_KIND)

    # ------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> Any:
        if self.optimizer_cfg is None or self.scheduler_cfg is None or self.total_steps is None:
            raise ValueError("This MaskedPretraining evaluates only: it was built without an "
                             "optimizer, scheduler and total_steps.")
        return configure_optimization(
            self.model, self.optimizer_cfg, self.scheduler_cfg, self.total_steps
        )


# ----------------------------------------------------------------------------- building


def _mean_target(dm: NeuralDataModule, tokenizer: MaskedTokenizer, n_windows: int = 32) -> float:
    """Mean grid value over a few training windows (initialises the decoder's output bias)."""
    sampler = dm.eval_sampler("train", max_windows=n_windows)
    values = []
    for index in list(sampler)[:: len(dm.eval_modes)]:
        window = dm.dataset.window(index.recording_id, index.start, index.end)
        values.append(tokenizer.grid_targets(window, len(window.units.id))[0].mean())
    return float(np.mean(values))


def new_masked_model(cfg: DictConfig, dm: NeuralDataModule) -> MaskedModel:
    """A freshly initialised ``cfg.model`` with vocabularies from ``dm``'s recordings and the
    decoder's output bias at the data's mean (log mean count per bin for spikes)."""
    model = build_masked_model(container(cfg.model), unit_ids=dm.unit_ids,
                               session_ids=dm.session_ids)
    mean = _mean_target(dm, dm.masked_tokenizer(model.encoder, build_masking(cfg)))
    init_bias = math.log(max(mean, 1e-3)) if model.modality is Modality.SPIKES else mean
    model.decoder.set_output_bias(init_bias)
    return model


def masked_pretraining(
    cfg: DictConfig, model: MaskedModel, dm: NeuralDataModule, model_config: dict
) -> MaskedPretraining:
    """Attach ``model``'s tokenizer to ``dm`` and wrap ``model`` in the pretraining module,
    optimised as ``cfg.task`` says, with the task's smoothing baseline."""
    dm.tokenizer = dm.masked_tokenizer(model.encoder, build_masking(cfg))
    task = cfg.task
    return MaskedPretraining(
        model=model,
        optimizer=container(task.optimizer),
        scheduler=container(task.scheduler),
        total_steps=int(cfg.trainer.max_steps),
        baseline=smoothing_baseline(task, dm),
        ceiling=latent_ceiling(task, dm),
        model_config=model_config,
        unmasked_weight=float(task.get("unmasked_weight", 1.0)),
    )


def build_pretraining(cfg: DictConfig) -> tuple[MaskedPretraining, NeuralDataModule]:
    """Data module (set up, tokenizer attached) and LightningModule for ``task=pretrain``."""
    dm = build_datamodule(cfg, stimulus=False)
    model = new_masked_model(cfg, dm)
    return masked_pretraining(cfg, model, dm, container(cfg.model)), dm


def save_pretraining_plots(module: MaskedPretraining, dm: NeuralDataModule, run_dir) -> None:
    """``loss_curves.png`` and ``masked_rates.png`` (see :mod:`neurobridge.training.plots`)."""
    from neurobridge.training import plots

    plots.save_pretraining_plots(module, dm, run_dir)


def write_test_unit_scores(module: MaskedPretraining, run_dir: str | Path) -> None:
    """``run_dir/test_unit_scores.npz``: the per-unit sums of the module's last test, for a
    paired comparison with another run on the same cells (:mod:`neurobridge.comparison`);
    nothing for value (MUA) models."""
    if module.test_unit_sums:
        vocab = module.model.encoder.unit_emb.vocab
        write_unit_scores(Path(run_dir) / UNIT_SCORES_FILE, sorted(vocab, key=vocab.get),
                          module.test_unit_sums)


def after_masked_test(module: MaskedPretraining, dm: NeuralDataModule, cfg: DictConfig,
                      run_dir: str | Path) -> dict[str, float]:
    """After the test of a masked-model task: the per-unit sums
    (:func:`write_test_unit_scores`) and, with ``task.protocol=nlb``, the NLB scores."""
    write_test_unit_scores(module, run_dir)
    return nlb_protocol(module, dm, cfg, run_dir)


def check_pretraining(cfg: DictConfig) -> None:
    """``task.protocol`` options, and no ``init_from``: pretraining starts from scratch."""
    if cfg.get("init_from"):
        raise ValueError(
            f"task=pretrain starts from a new model and does not read init_from={cfg.init_from}. "
            "To continue that run, use resume_from=<its checkpoints/last.ckpt> (same model "
            "options); to train a pretrained model on new sessions, task=adapt_session "
            "init_from=...; otherwise drop init_from."
        )
    check_protocol(cfg)


TASK = Task(
    name="pretrain",
    build=build_pretraining,
    checkpoint_kind=CHECKPOINT_KIND,
    plots=save_pretraining_plots,
    resume_needs_same_model=True,
    check=check_pretraining,
    after_test=after_masked_test,
)
