"""An NDT-style masked transformer: the field's peer of the spike-token model.

The Neural Data Transformer (NDT1; also the "NDT" baselines of STNDT and MtM) reads the binned
counts, one token per time bin: a linear embedding of the bin's unit counts plus a position
embedding, a standard transformer encoder over the bins, and a linear read-out of each unit's
log-rate per bin, trained with the Poisson NLL on the masked cells. Sessions are stitched as
NDT2 and MtM do, with per-session input and output projections: here one input and one output
vector per unit (a unit belongs to one session), so the bin token of a window is
``sum_u count[t, u] * w_in[u] + b_session`` and ``log_rate[t, u] = h[t] . w_out[u] + b_out[u]``.

It plugs into masked pretraining like the NeuroBridge model (``task=pretrain model=ndt``): the
same windows, masking controller, modes, test cells and ``metrics.json`` keys. Masked cells
enter as zero counts (the input also carries which cells are observed, per unit and bin, as a
second embedded channel, so a hidden bin is not read as silence).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor
from torch_brain.nn import InfiniteVocabEmbedding

from neurobridge.modality import Modality
from neurobridge.models.shareable import Shareable

__all__ = ["NDTEncoder", "NDTMaskedModel", "NDTReadout"]


class NDTEncoder(nn.Module):
    """Bin tokens from masked counts, then a transformer encoder over the bins.

    Args:
        sequence_length: window length in seconds.
        bin_size: seconds per bin (``data.bin_size``): one token per bin.
        dim: token width.
        depth: transformer layers.
        heads: attention heads.
        ffn_mult: feed-forward width as a multiple of ``dim``.
        dropout: dropout in the transformer layers and on the bin tokens.
        positions: ``"learned"`` or ``"sinusoidal"`` position embeddings.
    """

    modality = Modality.SPIKES
    #: the tokenizer gives this encoder binned counts, not spike tokens
    reads_binned_counts = True
    num_latents_per_step = 1

    def __init__(
        self,
        *,
        sequence_length: float,
        bin_size: float,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        ffn_mult: int = 4,
        dropout: float = 0.1,
        positions: str = "learned",
    ):
        super().__init__()
        n_bins = round(sequence_length / bin_size)
        if n_bins < 2 or abs(n_bins * bin_size - sequence_length) > 1e-6:
            raise ValueError(f"model.encoder.sequence_length ({sequence_length}) must be a "
                             f"multiple (>= 2) of bin_size ({bin_size}).")
        if dim % heads:
            raise ValueError(f"model.encoder.dim ({dim}) must be a multiple of heads ({heads}).")
        if positions not in ("learned", "sinusoidal"):
            raise ValueError(f"model.encoder.positions must be 'learned' or 'sinusoidal', got "
                             f"{positions!r}.")
        self.sequence_length = float(sequence_length)
        self.bin_size = float(bin_size)
        self.latent_step = float(bin_size)  # the tokenizer's latent grid: one token per bin
        self.n_bins = n_bins
        self.dim = dim
        # per-unit input vectors for counts and for "observed" (the session stitching)
        self.unit_emb = InfiniteVocabEmbedding(dim, init_scale=1.0)
        self.observed_emb = InfiniteVocabEmbedding(dim, init_scale=1.0)
        self.session_emb = InfiniteVocabEmbedding(dim)
        if positions == "learned":
            self.pos_emb = nn.Parameter(torch.randn(n_bins, dim) * 0.02)
        else:
            t = torch.arange(n_bins, dtype=torch.float32)[:, None]
            freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(1e4) / dim))
            table = torch.zeros(n_bins, dim)
            table[:, 0::2], table[:, 1::2] = torch.sin(t * freq), torch.cos(t * freq)
            self.register_buffer("pos_emb", table, persistent=False)
        self.input_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * ffn_mult, dropout,
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.output_norm = nn.LayerNorm(dim)

    def encode(
        self, *, input_counts: Tensor, input_observed: Tensor, input_unit_index: Tensor,
        input_session_index: Tensor, **_latents,
    ) -> Tensor:
        """``[B, n_bins, dim]`` bin states.

        Args:
            input_counts: ``[B, N, n_bins]`` counts, 0 on hidden cells and padded units.
            input_observed: ``[B, N, n_bins]`` bool, True on visible cells.
            input_unit_index: ``[B, N]`` global unit index (0 = padding).
            input_session_index: ``[B]`` session index.
        """
        counts = torch.log1p(input_counts.float())
        observed = input_observed.float()
        w_in = self.unit_emb(input_unit_index)  # [B, N, dim]
        w_obs = self.observed_emb(input_unit_index)
        tokens = torch.einsum("bnt,bnd->btd", counts, w_in) + torch.einsum(
            "bnt,bnd->btd", observed, w_obs)
        tokens = tokens / math.sqrt(max(input_unit_index.shape[1], 1))
        tokens = tokens + self.session_emb(input_session_index)[:, None, :] + self.pos_emb
        h = self.transformer(self.dropout(self.input_norm(tokens)))
        return self.output_norm(h)


class NDTReadout(nn.Module):
    """Per-unit linear read-out of the bin states: ``log_rate = h[bin] . w_out[u] + b_out[u]``.

    Args:
        dim: the encoder's ``dim``.
    """

    def __init__(self, *, dim: int):
        super().__init__()
        self.dim = dim
        self.unit_out = InfiniteVocabEmbedding(dim)  # small: every rate starts at the bias
        self.unit_bias = InfiniteVocabEmbedding(1, init_scale=0.0)
        self.output_bias = nn.Parameter(torch.zeros(()))

    def set_output_bias(self, value: float) -> None:
        """Start every log-rate at ``value`` (the data's log mean count per bin)."""
        with torch.no_grad():
            self.output_bias.fill_(float(value))


    def forward(self, states: Tensor, query_bin: Tensor, query_unit_index: Tensor) -> Tensor:
        """``[B, Q]`` log-rates of the cells ``(query_bin, query_unit_index)`` (each ``[B, Q]``)."""
        h = torch.gather(states, 1, query_bin[..., None].expand(-1, -1, states.shape[-1]))
        w = self.unit_out(query_unit_index)
        return (h * w).sum(-1) + self.unit_bias(query_unit_index)[..., 0] \
            + self.output_bias


class NDTMaskedModel(Shareable, nn.Module):
    """The NDT-style encoder and read-out behind the :class:`~neurobridge.models.MaskedModel`
    interface (same ``forward`` arguments and outputs), so masked pretraining, evaluation and
    checkpoints treat both the same (also exported as ``neurobridge.baselines.NDTMaskedModel``). Build it with
    :func:`~neurobridge.models.build_masked_model` from ``configs/model/ndt.yaml``."""

    pretrained_kind = "masked_model"

    def __init__(self, *, encoder: NDTEncoder, decoder: NDTReadout, mode_prompt: bool = False):
        super().__init__()
        if mode_prompt:
            raise ValueError("The NDT-style peer has no mode prompts (model.mode_prompt=false).")
        self.encoder = encoder
        self.decoder = decoder

    def initialize_vocab(self, unit_ids: list[str] | None, session_ids: list[str] | None) -> None:
        """Initialise every per-unit (and the session) embedding with the same vocabularies."""
        if unit_ids is not None:
            for emb in (self.encoder.unit_emb, self.encoder.observed_emb, self.decoder.unit_out,
                        self.decoder.unit_bias):
                emb.initialize_vocab(list(unit_ids))
        if session_ids is not None:
            self.encoder.session_emb.initialize_vocab(list(session_ids))

    @property
    def modality(self) -> Modality:
        return Modality.SPIKES

    def forward(
        self,
        *,
        encoder_inputs: dict[str, Tensor],
        query_unit_index: Tensor,
        query_timestamps: Tensor,
        query_session_index: Tensor,
        mode_index: Tensor | None = None,
    ) -> Tensor:
        """``[B, Q]`` log-rates of the queried cells (see :meth:`MaskedModel.forward`)."""
        states = self.encoder.encode(**encoder_inputs)
        query_bin = torch.clamp((query_timestamps / self.encoder.bin_size).long(), 0,
                                self.encoder.n_bins - 1)
        return self.decoder(states, query_bin, query_unit_index)
