"""Encoder + target-sequence decoder: the network trained by masked pretraining."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from neurobridge.models.encoders import NeuroBridgeCaPOYO, NeuroBridgePOYO
from neurobridge.models.target_decoder import TargetSequenceDecoder

__all__ = ["MaskedModel"]


class MaskedModel(nn.Module):
    """Encodes the visible tokens and decodes the requested grid cells.

    The decoder's queries use the encoder's unit and session embeddings, so the masked units'
    identities are learned through the decoder even when none of their tokens is visible.

    Args:
        encoder: a :class:`NeuroBridgePOYO` (spike tokens) or :class:`NeuroBridgeCaPOYO`
            (value tokens).
        decoder: a :class:`TargetSequenceDecoder` whose ``dim`` and ``unit_emb_dim`` match the
            encoder.
    """

    def __init__(self, *, encoder: NeuroBridgePOYO | NeuroBridgeCaPOYO, decoder: TargetSequenceDecoder):
        super().__init__()
        if not isinstance(encoder, (NeuroBridgePOYO, NeuroBridgeCaPOYO)):
            raise TypeError(f"encoder must be NeuroBridgePOYO or NeuroBridgeCaPOYO, got {type(encoder)}.")
        self.encoder = encoder
        self.decoder = decoder

    @property
    def modality(self) -> str:
        """``"spikes"`` for POYO, ``"values"`` for CaPOYO."""
        return "values" if isinstance(self.encoder, NeuroBridgeCaPOYO) else "spikes"

    def forward(
        self,
        *,
        encoder_inputs: dict[str, Tensor],
        query_unit_index: Tensor,
        query_timestamps: Tensor,
        query_session_index: Tensor,
    ) -> Tensor:
        """Predict the requested cells.

        Args:
            encoder_inputs: the keyword arguments of the encoder's ``encode()``.
            query_unit_index: ``[batch, n_query]`` global unit index per cell.
            query_timestamps: ``[batch, n_query]`` bin-centre time per cell.
            query_session_index: ``[batch, n_query]`` session index per cell.

        Returns:
            ``[batch, n_query]`` float32 log-rates (spikes) or values (continuous).
        """
        latents = self.encoder.encode(**encoder_inputs)
        return self.decoder(
            latents=latents,
            latent_timestamps=encoder_inputs["latent_timestamps"],
            query_unit_emb=self.encoder.unit_emb(query_unit_index),
            query_session_emb=self.encoder.session_emb(query_session_index),
            query_timestamps=query_timestamps,
        )
