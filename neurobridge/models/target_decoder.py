"""Target-sequence decoder: reads the encoder latents at neuron × time-bin grid cells."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor
from torch_brain.nn import FeedForward, RotaryCrossAttention, RotaryTimeEmbedding

__all__ = ["TargetSequenceDecoder"]


class TargetSequenceDecoder(nn.Module):
    """Predicts one value per requested grid cell (a log-rate for spikes, a value for MUA).

    Each query is one (unit, time bin) cell: the unit's embedding (projected to ``dim``) plus
    the session embedding, placed at the bin's centre time through rotary embeddings. Queries
    cross-attend the latents (``depth`` cross-attention + feed-forward blocks) and a linear
    head gives the output. Queries do not attend to each other, so cost is linear in the
    number of decoded cells and any subset of the grid can be decoded.

    The same parameters serve every masking mode; only the set of decoded cells (and the loss
    mask) changes.

    Args:
        dim: latent width of the encoder.
        unit_emb_dim: width of the encoder's unit embedding (``dim`` for POYO, ``dim // 2`` for
            CaPOYO); projected to ``dim`` when different.
        depth: number of cross-attention blocks.
        heads: attention heads per block.
        dim_head: width of each head.
        ffn_mult: hidden width of each block's GEGLU feed-forward, in multiples of ``dim``.
            With ``heads * dim_head == dim`` a decoded cell costs about
            ``depth * (3 * ffn_mult + 2) * dim**2`` multiply-adds (plus attention over the
            latents), most of it in the feed-forward; an encoder input token costs
            ``2 * dim**2`` (its keys and values).
        ffn_dropout, atn_dropout: dropout rates.
        t_min, t_max: rotary period range in seconds (use the encoder's).
        init_bias: initial value of the output bias (e.g. the log of the mean count per bin).
        unit_readout: if True, the output is read out per unit, as a GLM does:
            ``out = <norm(h), w(unit)> + b(unit) + bias`` with ``w, b`` linear in the unit
            embedding; if False, one linear head shared by all units reads ``norm(h)``.
    """

    def __init__(
        self,
        *,
        dim: int,
        unit_emb_dim: int,
        depth: int = 2,
        heads: int = 2,
        dim_head: int = 64,
        ffn_mult: int = 4,
        ffn_dropout: float = 0.0,
        atn_dropout: float = 0.0,
        t_min: float = 1e-4,
        t_max: float = 2.0627,
        init_bias: float = 0.0,
        unit_readout: bool = True,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"TargetSequenceDecoder depth must be >= 1, got {depth}.")
        if ffn_mult < 1:
            raise ValueError(f"TargetSequenceDecoder ffn_mult must be >= 1, got {ffn_mult}.")
        self.unit_proj = nn.Linear(unit_emb_dim, dim) if unit_emb_dim != dim else nn.Identity()
        self.rotary_emb = RotaryTimeEmbedding(
            head_dim=dim_head, rotate_dim=dim_head // 2, t_min=t_min, t_max=t_max
        )
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                [
                    RotaryCrossAttention(
                        dim=dim, heads=heads, dim_head=dim_head, dropout=atn_dropout
                    ),
                    nn.Sequential(
                        nn.LayerNorm(dim), FeedForward(dim=dim, mult=ffn_mult, dropout=ffn_dropout)
                    ),
                ]
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)
        nn.init.constant_(self.head.bias, init_bias)
        self.unit_readout = (
            nn.Sequential(nn.LayerNorm(unit_emb_dim), nn.Linear(unit_emb_dim, dim + 1))
            if unit_readout
            else None
        )
        if self.unit_readout is not None:  # start as the shared head; per-unit terms are learned
            nn.init.zeros_(self.unit_readout[1].weight)
            nn.init.zeros_(self.unit_readout[1].bias)

    def forward(
        self,
        *,
        latents: Tensor,
        latent_timestamps: Tensor,
        query_unit_emb: Tensor,
        query_session_emb: Tensor,
        query_timestamps: Tensor,
    ) -> Tensor:
        """Decode the requested cells.

        Args:
            latents: ``[batch, n_latent, dim]`` encoder output.
            latent_timestamps: ``[batch, n_latent]`` latent times in seconds.
            query_unit_emb: ``[batch, n_query, unit_emb_dim]`` embedding of each cell's unit.
            query_session_emb: ``[batch, n_query, dim]`` embedding of each cell's session.
            query_timestamps: ``[batch, n_query]`` centre time of each cell's bin.

        Returns:
            ``[batch, n_query]`` prediction per cell (float32).
        """
        queries = self.unit_proj(query_unit_emb) + query_session_emb
        query_pos = self.rotary_emb(query_timestamps)
        latent_pos = self.rotary_emb(latent_timestamps)
        for cross_attn, ffn in self.blocks:
            queries = queries + cross_attn(queries, latents, query_pos, latent_pos)
            queries = queries + ffn(queries)
        h = self.norm(queries)
        out = self.head(h).squeeze(-1)
        if self.unit_readout is not None:
            w, b = self.unit_readout(query_unit_emb).split([h.shape[-1], 1], dim=-1)
            out = out + (h * w).sum(-1) + b.squeeze(-1)
        return out.float()
