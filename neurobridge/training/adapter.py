"""LightningModule for the diffusion adapter (``task=adapter``)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from neurobridge.alignment import AlignmentModel
from neurobridge.generation import (
    DiffusionAdapter,
    DiffusionComponents,
    IPAdapterConditioning,
    check_adapter_matches_unet,
    encode_images,
    freeze,
    noise_prediction_loss,
)
from neurobridge.training.align import neural_clip_embedding
from neurobridge.training.checkpoint import CHECKPOINT_KEY, checkpoint_payload
from neurobridge.training.optim import configure_optimization

__all__ = ["AdapterTraining"]


class AdapterTraining(L.LightningModule):
    """Trains a conditioning route with the DDPM noise-prediction loss.

    The aligned neural embedding of each stimulus-locked window conditions the frozen UNet
    through the adapter; the target is the VAE latent of the image that was shown. The aligned
    model, the UNet and the VAE are frozen and stay in eval mode. Two routes:
    :class:`DiffusionAdapter` (``prompt_embeds``: the adapter makes the UNet's
    ``encoder_hidden_states``) and :class:`IPAdapterConditioning` (``ip_adapter``: the image
    projection, the IP attention ``to_k_ip`` / ``to_v_ip`` and the text context learn; they
    are installed in the UNet, whose base weights stay frozen). Checkpoints hold the aligned
    model and the adapter (for ``ip_adapter``, its IP-Adapter weights) but not the UNet's base
    weights and the VAE (rebuilt from the config: a local Stable Diffusion folder, or the tiny
    random model's seed), so loading uses ``strict_loading = False``.

    Args:
        aligned: the aligned model (from ``task=align`` / ``finetune``).
        adapter: the conditioning to train; an :class:`IPAdapterConditioning` must be
            installed in ``diffusion.unet``.
        diffusion: frozen UNet + VAE + training noise schedule.
        optimizer, scheduler, total_steps: as in :class:`MaskedPretraining`.
        model_config: stored in checkpoints (see :func:`neurobridge.training.load_adapter`).
        seed: seed of the fixed noise of the validation loss.
    """

    strict_loading = False

    def __init__(
        self,
        *,
        aligned: AlignmentModel,
        adapter: DiffusionAdapter | IPAdapterConditioning,
        diffusion: DiffusionComponents,
        optimizer: dict,
        scheduler: dict,
        total_steps: int,
        model_config: dict | None = None,
        seed: int = 0,
    ):
        super().__init__()
        check_adapter_matches_unet(adapter, diffusion.unet)
        self.aligned = aligned.requires_grad_(False)
        self.adapter = adapter
        self.unet = diffusion.unet
        self.vae = diffusion.vae
        self.noise_scheduler = diffusion.scheduler
        self.optimizer_cfg = dict(optimizer)
        self.scheduler_cfg = dict(scheduler)
        self.total_steps = total_steps
        self.model_config = model_config
        self.seed = seed

    @property
    def diffusion(self) -> DiffusionComponents:
        return DiffusionComponents(unet=self.unet, vae=self.vae, scheduler=self.noise_scheduler)

    def train(self, mode: bool = True) -> AdapterTraining:
        super().train(mode)
        self.aligned.eval()
        freeze(self.diffusion)
        # the ip_adapter route's trainable parts live inside the UNet: freeze() caught them
        self.adapter.requires_grad_(True)
        return self

    def _loss(self, batch: dict, generator: torch.Generator | None = None) -> Tensor:
        neural = neural_clip_embedding(self.aligned, batch["encoder_inputs"])
        with torch.no_grad():
            latents = encode_images(self.diffusion, batch["pixels"])
        conditioning = self.adapter.conditioning(neural, generator=generator)
        return noise_prediction_loss(self.diffusion, latents, conditioning, generator=generator)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Non-finite adapter loss at step {self.global_step}. Lower optimizer.lr or use "
                "32-bit precision (trainer.precision=32)."
            )
        self.log("train/loss", loss, batch_size=len(batch["image_index"]), prog_bar=True)
        return loss

    def _eval_loss(self, batch: dict, batch_idx: int, stage: str) -> None:
        # the same noise and timesteps for a batch at every evaluation: comparable curves
        generator = torch.Generator(device=self.device).manual_seed(self.seed * 7919 + batch_idx)
        loss = self._loss(batch, generator)
        self.log(f"{stage}/loss", loss, batch_size=len(batch["image_index"]), prog_bar=True,
                 sync_dist=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_loss(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_loss(batch, batch_idx, "test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(("unet.", "vae."))
        }
        if self.model_config is not None:
            checkpoint[CHECKPOINT_KEY] = checkpoint_payload(self.model_config, "adapter")

    def configure_optimizers(self) -> Any:
        return configure_optimization(
            self.adapter, self.optimizer_cfg, self.scheduler_cfg, self.total_steps
        )
