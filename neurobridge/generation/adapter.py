"""Diffusion adapter: turns one CLIP-space neural embedding into Stable Diffusion conditioning."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .conditioning import ConditioningDrop, check_positive_int, unet_conditioning_dims

__all__ = ["DiffusionAdapter", "adapter_for_unet"]


class DiffusionAdapter(ConditioningDrop):
    """Maps a neural embedding in CLIP space to the conditioning of a frozen diffusion UNet.

    ``[B, clip_dim]`` → token expander (LayerNorm, Linear, GELU, Linear) → ``[B, num_tokens,
    cond_dim]`` + learned position embeddings → pre-norm transformer refiner → LayerNorm →
    ``encoder_hidden_states`` for the UNet's cross-attention.

    For classifier-free guidance the adapter learns a null conditioning (``num_tokens`` tokens,
    initialised to zero). In training mode each sample's conditioning is replaced by the null
    one with probability ``cond_drop_prob``.

    With ``class_embed_dim`` set (unCLIP-style UNets, ``class_embed_type="projection"``), a
    linear map of the embedding also gives the UNet's ``class_labels`` ``[B, class_embed_dim]``;
    their null value is zero. unCLIP's noise augmentation of the image embedding is not applied.

    Args:
        clip_dim: width of the input embedding.
        cond_dim: width of each conditioning token (the UNet's ``cross_attention_dim``).
        num_tokens: number of conditioning tokens (77 for Stable Diffusion's text encoder).
        hidden_dim: hidden width of the token expander.
        refiner_depth: number of transformer layers of the refiner.
        refiner_heads: attention heads of the refiner; must divide ``cond_dim``.
        dropout: dropout rate of the expander and the refiner.
        cond_drop_prob: probability, per sample and in training mode only, of replacing the
            conditioning with the null one.
        class_embed_dim: width of the UNet's ``class_labels`` input, or None for UNets without
            a projection class embedding.
    """

    def __init__(
        self,
        *,
        clip_dim: int,
        cond_dim: int,
        num_tokens: int = 77,
        hidden_dim: int = 512,
        refiner_depth: int = 2,
        refiner_heads: int = 4,
        dropout: float = 0.0,
        cond_drop_prob: float = 0.1,
        class_embed_dim: int | None = None,
    ):
        super().__init__()
        for name, value in [
            ("clip_dim", clip_dim),
            ("cond_dim", cond_dim),
            ("num_tokens", num_tokens),
            ("hidden_dim", hidden_dim),
            ("refiner_depth", refiner_depth),
            ("refiner_heads", refiner_heads),
        ]:
            check_positive_int(name, value)
        if class_embed_dim is not None:
            check_positive_int("class_embed_dim", class_embed_dim)
        if cond_dim % refiner_heads != 0:
            raise ValueError(
                f"DiffusionAdapter refiner_heads={refiner_heads} must divide cond_dim={cond_dim}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DiffusionAdapter dropout must lie in [0, 1), got {dropout}.")
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ValueError(
                f"DiffusionAdapter cond_drop_prob must lie in [0, 1), got {cond_drop_prob}."
            )
        self.clip_dim = clip_dim
        self.cond_dim = cond_dim
        self.num_tokens = num_tokens
        self.cond_drop_prob = cond_drop_prob
        self.class_embed_dim = class_embed_dim

        self.expander = nn.Sequential(
            nn.LayerNorm(clip_dim),
            nn.Linear(clip_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_tokens * cond_dim),
        )
        self.pos_emb = nn.Parameter(torch.randn(num_tokens, cond_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=cond_dim,
            nhead=refiner_heads,
            dim_feedforward=4 * cond_dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.refiner = nn.TransformerEncoder(
            layer, num_layers=refiner_depth, enable_nested_tensor=False
        )
        self.norm = nn.LayerNorm(cond_dim)
        self.null_tokens = nn.Parameter(torch.zeros(num_tokens, cond_dim))
        self.class_proj = (
            nn.Linear(clip_dim, class_embed_dim) if class_embed_dim is not None else None
        )

    def _hidden_states(self, clip_embeds: Tensor) -> Tensor:
        if clip_embeds.ndim != 2 or clip_embeds.shape[1] != self.clip_dim:
            raise ValueError(
                f"clip_embeds must have shape [B, {self.clip_dim}], got {tuple(clip_embeds.shape)}."
            )
        tokens = self.expander(clip_embeds).view(-1, self.num_tokens, self.cond_dim)
        return self.norm(self.refiner(tokens + self.pos_emb))

    def forward(
        self,
        clip_embeds: Tensor,
        *,
        drop_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Conditioning tokens of each sample.

        Args:
            clip_embeds: ``[B, clip_dim]`` neural embeddings in CLIP space.
            drop_mask: ``[B]`` bool, True where the null conditioning replaces the sample's;
                None draws it with :meth:`sample_drop_mask` (no drop in eval mode).
            generator: random generator for the drawn mask.

        Returns:
            ``[B, num_tokens, cond_dim]`` ``encoder_hidden_states``.
        """
        return self.conditioning(clip_embeds, drop_mask=drop_mask, generator=generator)[
            "encoder_hidden_states"
        ]

    def conditioning(
        self,
        clip_embeds: Tensor,
        *,
        drop_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Keyword arguments for ``UNet2DConditionModel.forward``.

        Same arguments as :meth:`forward`; one drop mask applies to every returned tensor.

        Returns:
            ``{"encoder_hidden_states": [B, num_tokens, cond_dim]}``, plus ``"class_labels"``
            ``[B, class_embed_dim]`` when ``class_embed_dim`` is set.
        """
        drop = self._resolve_drop_mask(clip_embeds, drop_mask, generator)
        hidden = self._hidden_states(clip_embeds)
        out = {
            "encoder_hidden_states": torch.where(
                drop[:, None, None], self.null_tokens.to(hidden.dtype), hidden
            )
        }
        if self.class_proj is not None:
            labels = self.class_proj(clip_embeds)
            out["class_labels"] = torch.where(drop[:, None], torch.zeros_like(labels), labels)
        return out

    def null_conditioning(self, batch_size: int) -> dict[str, Tensor]:
        """The unconditional branch for classifier-free guidance, shaped as :meth:`conditioning`.

        Returns:
            ``{"encoder_hidden_states": [batch_size, num_tokens, cond_dim]}`` (the learned null
            tokens), plus zero ``"class_labels"`` ``[batch_size, class_embed_dim]`` when
            ``class_embed_dim`` is set.
        """
        out = {"encoder_hidden_states": self.null_tokens.expand(batch_size, -1, -1)}
        if self.class_proj is not None:
            weight = self.class_proj.weight
            out["class_labels"] = weight.new_zeros(batch_size, self.class_embed_dim)
        return out


def adapter_for_unet(unet: nn.Module, *, clip_dim: int, **kwargs) -> DiffusionAdapter:
    """A :class:`DiffusionAdapter` whose ``cond_dim`` (and ``class_embed_dim``) fit ``unet``.

    ``cond_dim`` is read from ``unet.config.cross_attention_dim``; ``class_embed_dim`` from
    ``unet.config.projection_class_embeddings_input_dim`` when ``class_embed_type ==
    "projection"``, else None. Other keyword arguments go to :class:`DiffusionAdapter`.
    """
    cond_dim, class_embed_dim = unet_conditioning_dims(unet)
    return DiffusionAdapter(
        clip_dim=clip_dim, cond_dim=cond_dim, class_embed_dim=class_embed_dim, **kwargs
    )
