"""Encoder + target-sequence decoder: the network trained by masked pretraining."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor
from torch_brain.nn import Embedding

from neurobridge.masking import MASKING_MODES
from neurobridge.modality import Modality
from neurobridge.models.encoders import NeuroBridgeCaPOYO, NeuroBridgePOYO
from neurobridge.models.shareable import Shareable
from neurobridge.models.target_decoder import TargetSequenceDecoder

__all__ = ["MaskedModel"]


class MaskedModel(Shareable, nn.Module):
    """Encodes the visible tokens and decodes the requested grid cells.

    The decoder's queries use the encoder's unit and session embeddings, so the masked units'
    identities are learned through the decoder even when none of their tokens is visible.

    Args:
        encoder: a :class:`NeuroBridgePOYO` (spike tokens) or :class:`NeuroBridgeCaPOYO`
            (value tokens).
        decoder: a :class:`TargetSequenceDecoder` whose ``dim`` and ``unit_emb_dim`` match the
            encoder.
        mode_prompt: MtM-style prompting (off by default; the missing pattern is the prompt):
            a learned embedding of the masking mode is added to every latent token before the
            encoder's cross-attention and to every decoder query.
    """

    def __init__(
        self,
        *,
        encoder: NeuroBridgePOYO | NeuroBridgeCaPOYO,
        decoder: TargetSequenceDecoder,
        mode_prompt: bool = False,
    ):
        super().__init__()
        if not isinstance(encoder, (NeuroBridgePOYO, NeuroBridgeCaPOYO)):
            raise TypeError(f"encoder must be NeuroBridgePOYO or NeuroBridgeCaPOYO, got {type(encoder)}.")
        self.encoder = encoder
        self.decoder = decoder
        self.mode_emb = Embedding(len(MASKING_MODES), encoder.dim) if mode_prompt else None

    pretrained_kind = "masked_model"

    @property
    def modality(self) -> Modality:
        """What the encoder reads: ``Modality.SPIKES`` (POYO) or ``Modality.VALUES`` (CaPOYO)."""
        return self.encoder.modality

    def forward(
        self,
        *,
        encoder_inputs: dict[str, Tensor],
        query_unit_index: Tensor,
        query_timestamps: Tensor,
        query_session_index: Tensor,
        mode_index: Tensor | None = None,
    ) -> Tensor:
        """Predict the requested cells.

        Args:
            encoder_inputs: the keyword arguments of the encoder's ``encode()``.
            query_unit_index: ``[batch, n_query]`` global unit index per cell.
            query_timestamps: ``[batch, n_query]`` bin-centre time per cell.
            query_session_index: ``[batch, n_query]`` session index per cell (one session per
                window; 0 on padded cells).
            mode_index: ``[batch]`` masking mode of each sample (index into
                :data:`~neurobridge.masking.MASKING_MODES`); needed with ``mode_prompt``.

        Returns:
            ``[batch, n_query]`` float32 log-rates (spikes) or values (continuous).
        """
        prompt = None
        # one session per window; padded queries carry index 0 (the vocabulary's padding token)
        window_session = query_session_index.amax(dim=1, keepdim=True)  # [batch, 1]
        query_context = self.encoder.session_emb(window_session)  # [batch, 1, dim]
        if self.mode_emb is not None:
            if mode_index is None:
                raise ValueError("This MaskedModel uses mode prompts: pass mode_index.")
            prompt = self.mode_emb(mode_index)
            query_context = query_context + prompt[:, None, :]
        latents = self.encoder.encode(**encoder_inputs, latent_prompt=prompt)
        return self.decoder(
            latents=latents,
            latent_timestamps=encoder_inputs["latent_timestamps"],
            query_unit_emb=self.encoder.unit_emb(query_unit_index),
            query_session_emb=query_context,
            query_timestamps=query_timestamps,
        )
