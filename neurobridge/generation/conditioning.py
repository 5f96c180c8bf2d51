"""Pieces both conditioning routes share: classifier-free-guidance drops and the UNet's inputs.

:mod:`~neurobridge.generation.adapter` (route ``prompt_embeds``) and
:mod:`~neurobridge.generation.ip_adapter` (route ``ip_adapter``) import this module and not each
other; :mod:`~neurobridge.generation.routes` picks between them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["ConditioningDrop", "check_positive_int", "has_ip_adapter", "unet_conditioning_dims"]


def check_positive_int(name: str, value: int, owner: str = "DiffusionAdapter") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner} {name} must be a positive integer, got {value!r}.")


class ConditioningDrop(nn.Module):
    """Per-sample conditioning drop for classifier-free guidance, shared by the routes.

    Subclasses set ``cond_drop_prob``; in training mode each sample's conditioning is replaced
    by the unconditional one with that probability.
    """

    cond_drop_prob: float = 0.0

    def sample_drop_mask(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``[batch_size]`` bool, True where a sample's conditioning is dropped.

        Each entry is True with probability ``cond_drop_prob`` in training mode; all False in
        eval mode. Drawn on ``generator``'s device, then moved to ``device``.
        """
        if not self.training or self.cond_drop_prob == 0.0:
            return torch.zeros(batch_size, dtype=torch.bool, device=device)
        draw_device = generator.device if generator is not None else device
        u = torch.rand(batch_size, generator=generator, device=draw_device)
        return (u < self.cond_drop_prob).to(device)

    def _resolve_drop_mask(
        self, clip_embeds: Tensor, drop_mask: Tensor | None, generator: torch.Generator | None
    ) -> Tensor:
        batch_size = clip_embeds.shape[0]
        if drop_mask is None:
            return self.sample_drop_mask(batch_size, device=clip_embeds.device, generator=generator)
        if drop_mask.shape != (batch_size,) or drop_mask.dtype != torch.bool:
            raise ValueError(
                f"drop_mask must be a bool tensor of shape [{batch_size}], got "
                f"{drop_mask.dtype} of shape {tuple(drop_mask.shape)}."
            )
        return drop_mask.to(clip_embeds.device)


def unet_conditioning_dims(unet: nn.Module) -> tuple[int, int | None]:
    """``(cross_attention_dim, class_embed_dim or None)`` that the UNet expects as input."""
    config = unet.config
    if config.encoder_hid_dim is not None or config.addition_embed_type is not None:
        raise ValueError(
            "UNets with encoder_hid_dim or addition_embed_type (e.g. SDXL) are not supported; "
            "DiffusionAdapter drives UNets conditioned by cross-attention (and optionally a "
            "projection class embedding) only."
        )
    cross_dim = config.cross_attention_dim
    if isinstance(cross_dim, (list, tuple)):
        if len(set(cross_dim)) != 1:
            raise ValueError(
                f"UNet cross_attention_dim differs between blocks ({tuple(cross_dim)}); "
                "DiffusionAdapter needs a single conditioning width."
            )
        cross_dim = cross_dim[0]
    class_dim = (
        config.projection_class_embeddings_input_dim
        if config.class_embed_type == "projection"
        else None
    )
    return int(cross_dim), class_dim


def has_ip_adapter(unet: nn.Module) -> bool:
    """Whether ``unet`` has IP-Adapter image tokens installed (``encoder_hid_dim_type ==
    "ip_image_proj"``)."""
    return getattr(unet.config, "encoder_hid_dim_type", None) == "ip_image_proj"


