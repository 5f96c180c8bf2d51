"""``task=adapter``: the diffusion adapter (its LightningModule and how it is built)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import Tensor

from neurobridge.alignment import neural_clip_embedding
from neurobridge.data import (
    ImagePixels,
    StimulusBatch,
    StimulusDataModule,
    StimulusTokenizer,
    open_image_source,
)
from neurobridge.generation import (
    ADAPTER_ROUTES,
    DiffusionAdapter,
    DiffusionComponents,
    IPAdapterConditioning,
    adapter_for_unet,
    build_diffusion,
    check_adapter_matches_unet,
    encode_images,
    freeze,
    load_ip_adapter_weights,
    noise_prediction_loss,
)
from neurobridge.models import AlignmentModel
from neurobridge.tasks.common import build_datamodule, build_masking, check_vocab, container
from neurobridge.tasks.registry import Task
from neurobridge.training.checkpoint import (
    CHECKPOINT_KEY,
    checkpoint_payload,
    load_alignment_model,
    read_checkpoint_kind,
)
from neurobridge.training.optim import configure_optimization

__all__ = ["CHECKPOINT_KIND", "TASK", "AdapterTraining", "build_adapter"]

log = logging.getLogger(__name__)

#: What an adapter checkpoint holds: the aligned model and the conditioning it trained.
CHECKPOINT_KIND = "adapter"


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
        optimizer: as in :class:`MaskedPretraining`.
        scheduler: as in :class:`MaskedPretraining`.
        total_steps: as in :class:`MaskedPretraining`.
        model_config: stored in checkpoints (see :func:`neurobridge.training.checkpoint.load_adapter`).
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

    def _loss(self, batch: StimulusBatch, generator: torch.Generator | None = None) -> Tensor:
        neural = neural_clip_embedding(self.aligned, batch)
        with torch.no_grad():
            latents = encode_images(self.diffusion, batch["pixels"])
        conditioning = self.adapter.conditioning(neural, generator=generator)
        return noise_prediction_loss(self.diffusion, latents, conditioning, generator=generator)

    def training_step(self, batch: StimulusBatch, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Non-finite adapter loss at step {self.global_step}. Lower optimizer.lr or use "
                "32-bit precision (trainer.precision=32)."
            )
        self.log("train/loss", loss, batch_size=len(batch["image_index"]), prog_bar=True)
        return loss

    def _eval_loss(self, batch: StimulusBatch, batch_idx: int, stage: str) -> None:
        # the same noise and timesteps for a batch at every evaluation: comparable curves
        generator = torch.Generator(device=self.device).manual_seed(self.seed * 7919 + batch_idx)
        loss = self._loss(batch, generator)
        self.log(f"{stage}/loss", loss, batch_size=len(batch["image_index"]), prog_bar=True,
                 sync_dist=True)

    def validation_step(self, batch: StimulusBatch, batch_idx: int) -> None:
        self._eval_loss(batch, batch_idx, "val")

    def test_step(self, batch: StimulusBatch, batch_idx: int) -> None:
        self._eval_loss(batch, batch_idx, "test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(("unet.", "vae."))
        }
        if self.model_config is not None:
            checkpoint[CHECKPOINT_KEY] = checkpoint_payload(self.model_config, CHECKPOINT_KIND)

    def configure_optimizers(self) -> Any:
        return configure_optimization(
            self.adapter, self.optimizer_cfg, self.scheduler_cfg, self.total_steps
        )


# ----------------------------------------------------------------------------- building


def build_adapter(cfg: DictConfig) -> tuple[AdapterTraining, StimulusDataModule]:
    """Data module (with image pixels) and LightningModule for ``task=adapter``.

    ``init_from`` must name an ``align`` / ``finetune`` checkpoint; its model is frozen.
    ``task.route`` picks the conditioning: ``prompt_embeds`` (a :class:`DiffusionAdapter`
    from ``task.adapter``) or ``ip_adapter`` (an :class:`IPAdapterConditioning` from
    ``task.ip_adapter``, started from the weight file ``task.ip_adapter.weights`` when set).
    """
    init_from = cfg.get("init_from")
    if not init_from or read_checkpoint_kind(init_from) != "alignment":
        raise ValueError(
            "task=adapter needs init_from=<checkpoint of task=align or task=finetune> (got "
            f"{init_from!r}): the adapter turns the aligned neural embedding into conditioning."
        )
    aligned, model_config = load_alignment_model(init_from, with_config=True)
    task = cfg.task
    route = task.get("route", "prompt_embeds")
    if route not in ADAPTER_ROUTES:
        raise ValueError(f"task.route must be one of {ADAPTER_ROUTES}, got {route!r}.")
    diffusion_cfg = container(task.diffusion)
    diffusion = build_diffusion(diffusion_cfg)
    clip_dim = aligned.projector.out_dim
    if route == "ip_adapter":
        ip_cfg = container(task.ip_adapter)
        weights = ip_cfg.pop("weights", None)
        adapter = IPAdapterConditioning(diffusion.unet, clip_dim=clip_dim, **ip_cfg)
        if weights:
            load_ip_adapter_weights(adapter, weights)
            log.info("IP-Adapter weights loaded from %s", weights)
        adapter_cfg = {"route": route, **ip_cfg, "clip_dim": clip_dim,
                       "weights": str(weights) if weights else None}
    else:
        adapter = adapter_for_unet(diffusion.unet, clip_dim=clip_dim, **container(task.adapter))
        adapter_cfg = {
            "route": route,
            **container(task.adapter),
            "clip_dim": adapter.clip_dim,
            "cond_dim": adapter.cond_dim,
            "class_embed_dim": adapter.class_embed_dim,
        }
    dm = build_datamodule(cfg, stimulus=True)
    check_vocab(aligned.masked_model, dm, init_from)
    dm.tokenizer = StimulusTokenizer(
        dm.masked_tokenizer(aligned.encoder, build_masking(cfg)),
        dm.image_rows,
        pixels=ImagePixels(open_image_source(dm.images), diffusion.image_size),
    )
    module = AdapterTraining(
        aligned=aligned,
        adapter=adapter,
        diffusion=diffusion,
        optimizer=container(task.optimizer),
        scheduler=container(task.scheduler),
        total_steps=int(cfg.trainer.max_steps),
        model_config={**model_config, "adapter": adapter_cfg, "diffusion": diffusion_cfg},
        seed=int(cfg.seed),
    )
    return module, dm


TASK = Task(name="adapter", build=build_adapter, checkpoint_kind=CHECKPOINT_KIND)
