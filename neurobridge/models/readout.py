"""Heads from encoder latents to the CLIP image-embedding space.

``LatentReadout`` pools the latents of one window into ``K`` query vectors; ``NeuralProjector``
maps the flattened queries to one ``d_clip`` vector per window::

    latents [B, L, dim] ──LatentReadout──▶ [B, K, dim] ──NeuralProjector──▶ [B, d_clip]
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torch_brain.nn import FeedForward, RotaryCrossAttention, RotaryTimeEmbedding

__all__ = ["LatentReadout", "NeuralProjector"]


class LatentReadout(nn.Module):
    """``K`` learnable queries cross-attend the encoder latents (one block, like POYO's decoder).

    Each query has its own learned vector and a time: by default the ``K`` times are evenly
    spaced over ``[0, sequence_length]`` (``torch.linspace``), so queries can specialise on early
    and late parts of the window. Times enter through rotary embeddings on queries and keys
    (values are not rotated, as in POYO's output cross-attention). The block is
    ``q = q + CrossAttn(q, latents)`` then ``q = q + FFN(LayerNorm(q))``; the cross-attention
    normalises its inputs itself.

    Args:
        dim: latent width of the encoder.
        num_queries: ``K``.
        sequence_length: window length in seconds, for the default query times.
        heads: attention heads.
        dim_head: width of each head.
        t_min: shortest rotary period in seconds (use the encoder's).
        t_max: longest rotary period in seconds (use the encoder's).
        dropout: attention and feed-forward dropout.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_queries: int,
        sequence_length: float = 1.0,
        heads: int = 2,
        dim_head: int = 32,
        t_min: float = 1e-4,
        t_max: float = 2.0627,
        dropout: float = 0.0,
    ):
        super().__init__()
        if num_queries < 1:
            raise ValueError(f"LatentReadout num_queries must be >= 1, got {num_queries}.")
        self.dim = dim
        self.num_queries = num_queries
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.register_buffer(
            "default_query_timestamps",
            torch.linspace(0.0, float(sequence_length), num_queries),
            persistent=False,
        )
        self.rotary_emb = RotaryTimeEmbedding(
            head_dim=dim_head, rotate_dim=dim_head // 2, t_min=t_min, t_max=t_max
        )
        self.cross_attn = RotaryCrossAttention(
            dim=dim, heads=heads, dim_head=dim_head, dropout=dropout, rotate_value=False
        )
        self.ffn = nn.Sequential(nn.LayerNorm(dim), FeedForward(dim=dim, dropout=dropout))

    def forward(
        self,
        latents: Tensor,
        latent_timestamps: Tensor,
        query_timestamps: Tensor | None = None,
        latent_mask: Tensor | None = None,
    ) -> Tensor:
        """Read ``K`` vectors out of each window's latents.

        Args:
            latents: ``[B, L, dim]`` encoder output.
            latent_timestamps: ``[B, L]`` latent times in seconds.
            query_timestamps: ``[B, K]`` or ``[K]`` query times; the evenly spaced default if
                None.
            latent_mask: ``[B, L]`` bool, True for latents to attend to; all if None.

        Returns:
            ``[B, K, dim]``.
        """
        batch = latents.shape[0]
        if query_timestamps is None:
            query_timestamps = self.default_query_timestamps
        query_timestamps = query_timestamps.to(latent_timestamps.dtype)
        if query_timestamps.shape[-1] != self.num_queries:
            raise ValueError(
                f"LatentReadout: query_timestamps must end in K={self.num_queries}, got "
                f"shape {list(query_timestamps.shape)}."
            )
        query_timestamps = query_timestamps.expand(batch, self.num_queries)
        queries = self.queries.expand(batch, -1, -1)
        queries = queries + self.cross_attn(
            queries,
            latents,
            self.rotary_emb(query_timestamps),
            self.rotary_emb(latent_timestamps),
            latent_mask,
        )
        return queries + self.ffn(queries)


class NeuralProjector(nn.Module):
    """MLP from the flattened readout queries to the CLIP embedding space.

    The input ``[B, K, dim]`` is flattened to ``[B, K * dim]`` (query-major: the ``dim``
    features of query 0, then of query 1, ...), so ``in_dim`` must be ``K * dim``. Layers:
    Linear → LayerNorm → GELU → Dropout, Linear → LayerNorm → GELU → Dropout, Linear. The
    output is not normalised (the contrastive loss normalises).

    With ``num_sessions > 0`` the first layer has its own weights per session (session
    stitching, as NDT2 / MtM stitch sessions): the units, and so the latent code of an image,
    differ between recordings, and a ridge readout fitted per recording gets that for free.

    Args:
        in_dim: ``K * dim`` (a ``[B, in_dim]`` input is accepted as is).
        hidden_dim: width of the two hidden layers.
        out_dim: ``d_clip``.
        dropout: dropout after each hidden layer.
        num_sessions: size of the encoder's session vocabulary (index 0, padding, included)
            for a per-session first layer; 0: one first layer shared by every session.
    """

    def __init__(self, *, in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.1,
                 num_sessions: int = 0):
        super().__init__()
        if num_sessions < 0:
            raise ValueError(f"NeuralProjector num_sessions must be >= 0, got {num_sessions}.")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.num_sessions = num_sessions
        first = nn.Linear(in_dim, hidden_dim)
        if num_sessions:  # every session starts from the same initialisation
            self.session_weight = nn.Parameter(first.weight.detach().T.expand(
                num_sessions, in_dim, hidden_dim).clone())
            self.session_bias = nn.Parameter(first.bias.detach().expand(
                num_sessions, hidden_dim).clone())
        self.net = nn.Sequential(
            nn.Identity() if num_sessions else first,
            nn.LayerNorm(hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Tensor, session_index: Tensor | None = None) -> Tensor:
        """``[B, K, dim]`` (or ``[B, K * dim]``) → ``[B, out_dim]``; ``session_index``
        ``[B]`` (the encoder's session vocabulary index of each window) with ``num_sessions``."""
        x = x.flatten(1)
        if x.shape[1] != self.in_dim:
            raise ValueError(
                f"NeuralProjector expects {self.in_dim} features per sample (K * dim), got "
                f"{x.shape[1]}."
            )
        if not self.num_sessions:
            return self.net(x)
        if session_index is None:
            raise ValueError("This NeuralProjector has a first layer per session: pass "
                             "session_index [batch].")
        if bool(((session_index < 1) | (session_index >= self.num_sessions)).any()):
            raise ValueError(
                f"NeuralProjector: session index out of [1, {self.num_sessions - 1}] (the "
                "sessions the head was aligned on); align the model on this session first.")
        h = torch.einsum("bi,bih->bh", x, self.session_weight[session_index])
        return self.net(h + self.session_bias[session_index])
