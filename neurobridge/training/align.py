"""LightningModule for CLIP alignment (``task=align``) and alignment fine-tuning (``finetune``)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor

from neurobridge.alignment import (
    AlignmentModel,
    LogitScale,
    RetrievalMetrics,
    TwoWayIdentification,
    clip_infonce,
)
from neurobridge.losses import masked_mse, masked_poisson_nll
from neurobridge.training.checkpoint import CHECKPOINT_KEY, checkpoint_payload
from neurobridge.training.optim import configure_optimization

__all__ = ["AlignmentTraining", "mean_test_embeddings", "neural_clip_embedding"]


def neural_clip_embedding(model: AlignmentModel, encoder_inputs: dict) -> Tensor:
    """``[batch, d_clip]`` L2-normalised embedding of the aligned model, without gradient."""
    with torch.no_grad():
        return F.normalize(model(encoder_inputs).float(), dim=-1)


def mean_test_embeddings(model: AlignmentModel, dm, device: torch.device) -> tuple[list[str], Tensor]:
    """Sorted distinct test image ids and ``[n_images, d_clip]`` neural embeddings, each the
    normalised mean over the image's test presentations (repeats averaged, as MindEye does)."""
    sums: dict[str, Tensor] = {}
    for batch in dm.test_dataloader():
        batch = move_data_to_device(batch, device)
        z = neural_clip_embedding(model, batch["encoder_inputs"])
        for row, vec in zip(batch["image_index"].tolist(), z):
            image_id = dm.image_ids[row]
            sums[image_id] = sums.get(image_id, 0) + vec
    ids = sorted(sums)
    return ids, F.normalize(torch.stack([sums[i] for i in ids]), dim=-1)


class AlignmentTraining(L.LightningModule):
    """Trains the readout + projector (and optionally the last encoder layers) with InfoNCE.

    ``align``: the masked model is frozen; only the readout, projector and temperature learn.
    ``finetune``: the last ``trainable_layers`` processor layers of the encoder learn too, and
    ``recon_weight · masked-reconstruction loss`` (through the frozen target decoder, on a
    masked view of the same windows) keeps the encoder close to what pretraining taught it.
    The masked model always runs in eval mode (no dropout).

    Validation and test score retrieval among the split's distinct images (both directions)
    and 2-way identification in CLIP space.

    Args:
        model: the alignment network.
        image_embeddings: ``[n_images, d_clip]`` CLIP embeddings, rows in the data module's
            ``image_ids`` order.
        split_rows: ``{split: (first_row, n_rows)}`` of each split's images in that table.
        optimizer, scheduler, total_steps: as in :class:`MaskedPretraining`.
        trainable_layers: encoder processor layers that learn (0 for ``align``).
        recon_weight: weight α of the masked-reconstruction loss (needs ``masked`` views).
        model_config: stored in checkpoints (see :func:`neurobridge.training.load_alignment_model`).
    """

    def __init__(
        self,
        *,
        model: AlignmentModel,
        image_embeddings: Tensor,
        split_rows: dict[str, tuple[int, int]],
        optimizer: dict,
        scheduler: dict,
        total_steps: int,
        trainable_layers: int = 0,
        recon_weight: float = 0.0,
        model_config: dict | None = None,
    ):
        super().__init__()
        if recon_weight < 0:
            raise ValueError(f"task.recon_weight must be >= 0, got {recon_weight}.")
        self.model = model
        self.model.freeze_encoder(trainable_layers)
        self.logit_scale = LogitScale()
        self.register_buffer("image_embeddings", image_embeddings.float(), persistent=False)
        self.split_rows = dict(split_rows)
        self.optimizer_cfg = dict(optimizer)
        self.scheduler_cfg = dict(scheduler)
        self.total_steps = total_steps
        self.recon_weight = float(recon_weight)
        self.model_config = model_config
        self.is_spiking = model.masked_model.modality == "spikes"
        self.retrieval = torch.nn.ModuleDict(
            {s: RetrievalMetrics(candidates=self._split_embeddings(s)) for s in ("valid", "test")}
        )
        self.two_way = torch.nn.ModuleDict({s: TwoWayIdentification() for s in ("valid", "test")})

    def _split_embeddings(self, split: str) -> Tensor:
        first, n = self.split_rows[split]
        return self.image_embeddings[first : first + n]

    def train(self, mode: bool = True) -> AlignmentTraining:
        super().train(mode)
        self.model.masked_model.eval()
        return self

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict) -> Tensor:
        return self.model(batch["encoder_inputs"])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        neural = self(batch)
        rows = batch["image_index"]
        loss = clip_infonce(
            neural, self.image_embeddings[rows], logit_scale=self.logit_scale(), image_ids=rows
        )
        bs = len(rows)
        self.log("train/infonce", loss, batch_size=bs, prog_bar=True)
        self.log("train/logit_scale", self.logit_scale(), batch_size=bs)
        if self.recon_weight > 0:
            recon = self._reconstruction_loss(batch["masked"])
            self.log("train/recon", recon, batch_size=bs)
            loss = loss + self.recon_weight * recon
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Non-finite alignment loss at step {self.global_step}. Lower optimizer.lr or "
                "use 32-bit precision (trainer.precision=32)."
            )
        self.log("train/loss", loss, batch_size=bs)
        return loss

    def _reconstruction_loss(self, masked: dict) -> Tensor:
        pred = self.model.masked_model(
            encoder_inputs=masked["encoder_inputs"],
            query_unit_index=masked["query_unit_index"],
            query_timestamps=masked["query_timestamps"],
            query_session_index=masked["query_session_index"],
            mode_index=masked["mode"],
        )
        loss_fn = masked_poisson_nll if self.is_spiking else masked_mse
        return loss_fn(pred, masked["target"], masked["query_mask"])

    # ---------------------------------------------------------------- evaluation
    def _eval_step(self, batch: dict, split: str) -> None:
        neural = self(batch).float()
        rows = batch["image_index"]
        first, _ = self.split_rows[split]
        self.retrieval[split].update(neural, rows - first)
        self.two_way[split].update(neural, self.image_embeddings[rows])

    def _log_eval(self, split: str, stage: str) -> None:
        results = self.retrieval[split].compute()
        for key, value in results.items():
            self.log(f"{stage}/retrieval_{key}", float(value), prog_bar=key == "top5")
        self.log(f"{stage}/two_way", self.two_way[split].compute())
        self.retrieval[split].reset()
        self.two_way[split].reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "valid")

    def on_validation_epoch_end(self) -> None:
        self._log_eval("valid", "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", "test")

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.model_config is not None:
            checkpoint[CHECKPOINT_KEY] = checkpoint_payload(self.model_config, "alignment")

    def configure_optimizers(self) -> Any:
        return configure_optimization(
            self, self.optimizer_cfg, self.scheduler_cfg, self.total_steps
        )
