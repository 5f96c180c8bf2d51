"""Target-sequence decoder: reads the encoder latents at neuron × time-bin grid cells."""

from __future__ import annotations

import torch
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

    With ``factorized=True`` the queries are time bins instead of cells, as in latent-factor
    models (GPFA, LFADS): one state ``h_t`` is decoded per distinct bin time of the batch (a
    learned bin query plus the session embedding, at the bin's time), shared by all units,
    and each cell is read out of its bin's state by the per-unit readout,
    ``out = <norm(h_t), w(unit)> + b(unit) + head(norm(h_t))``. A decoded cell then costs a dot
    product, and the attention and feed-forward cost is per bin (at most ``n_bins`` per
    window) instead of per cell.

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
        ffn_dropout: dropout rate of the feed-forward blocks.
        atn_dropout: dropout rate of the attention.
        t_min: shortest rotary period in seconds (use the encoder's).
        t_max: longest rotary period in seconds (use the encoder's).
        init_bias: initial value of the output bias (e.g. the log of the mean count per bin).
        unit_readout: if True, the output is read out per unit, as a GLM does:
            ``out = <norm(h), w(unit)> + b(unit) + bias`` with ``w, b`` linear in the unit
            embedding; if False, one linear head shared by all units reads ``norm(h)``.
        factorized: decode one state per time bin and read the cells out of it (see above);
            needs ``unit_readout``.
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
        factorized: bool = False,
    ):
        super().__init__()
        if factorized and not unit_readout:
            raise ValueError(
                "TargetSequenceDecoder(factorized=True) reads every unit out of a shared state per "
                "time bin and needs unit_readout=True (model.decoder.unit_readout)."
            )
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
        self.factorized = factorized
        self.bin_query = nn.Parameter(torch.randn(dim) * dim**-0.5) if factorized else None

    def set_output_bias(self, value: float) -> None:
        """Set the output bias (``init_bias``) after construction, e.g. to the data's log mean
        count per bin once it is known."""
        with torch.no_grad():
            self.head.bias.fill_(float(value))

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
            query_session_emb: ``[batch, n_query or 1, dim]`` embedding of each cell's session
                (the factorized decoder needs it per window: ``[batch, 1, dim]``).
            query_timestamps: ``[batch, n_query]`` centre time of each cell's bin.

        Returns:
            ``[batch, n_query]`` prediction per cell (float32).
        """
        if self.factorized:
            h = self._bin_states(latents, latent_timestamps, query_session_emb, query_timestamps)
        else:
            queries = self.unit_proj(query_unit_emb) + query_session_emb
            h = self._attend(queries, query_timestamps, latents, latent_timestamps)
        out = self.head(h).squeeze(-1)
        if self.unit_readout is not None:
            w, b = self.unit_readout(query_unit_emb).split([h.shape[-1], 1], dim=-1)
            out = out + (h * w).sum(-1) + b.squeeze(-1)
        return out.float()

    def _attend(
        self, queries: Tensor, query_timestamps: Tensor, latents: Tensor, latent_timestamps: Tensor
    ) -> Tensor:
        """Run the cross-attention blocks: ``[batch, n, dim]`` queries -> normalised states."""
        query_pos = self.rotary_emb(query_timestamps)
        latent_pos = self.rotary_emb(latent_timestamps)
        for cross_attn, ffn in self.blocks:
            queries = queries + cross_attn(queries, latents, query_pos, latent_pos)
            queries = queries + ffn(queries)
        return self.norm(queries)

    def _bin_states(
        self, latents: Tensor, latent_timestamps: Tensor, session_emb: Tensor,
        query_timestamps: Tensor,
    ) -> Tensor:
        """Factorized decoding: one state per distinct bin time, gathered per cell.

        Returns ``[batch, n_query, dim]``: the state of each cell's bin.
        """
        if session_emb.shape[1] != 1:
            raise ValueError(
                "The factorized decoder takes one session embedding per window, "
                f"[batch, 1, dim]; got {tuple(session_emb.shape)}."
            )
        times, cell_bin = torch.unique(query_timestamps, return_inverse=True)  # [T], [b, n_query]
        b, dim = latents.shape[0], latents.shape[-1]
        queries = self.bin_query.to(latents.dtype) + session_emb.expand(b, len(times), dim)
        states = self._attend(queries, times.expand(b, -1), latents, latent_timestamps)
        return states.gather(1, cell_bin[..., None].expand(-1, -1, dim))
