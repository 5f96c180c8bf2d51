"""A pretrained masked model with a CLIP-space head: the network of ``align`` / ``finetune``."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from neurobridge.models.masked_model import MaskedModel
from neurobridge.models.readout import LatentReadout, NeuralProjector
from neurobridge.models.shareable import Shareable

__all__ = ["AlignmentModel"]


class AlignmentModel(Shareable, nn.Module):
    """Encoder latents → readout queries → projector → a CLIP-space embedding.

    The masked model (encoder + target decoder) is kept whole: ``finetune`` adds the masked
    reconstruction loss through its decoder to keep the encoder from forgetting.

    Args:
        masked_model: the pretrained (or freshly initialised) encoder + target decoder.
        readout: ``K`` queries cross-attending the latents.
        projector: ``[batch, K, dim]`` → ``[batch, d_clip]``.
    """

    def __init__(self, *, masked_model: MaskedModel, readout: LatentReadout, projector: NeuralProjector):
        super().__init__()
        self.masked_model = masked_model
        self.readout = readout
        self.projector = projector

    pretrained_kind = "alignment_model"

    @property
    def encoder(self) -> nn.Module:
        return self.masked_model.encoder

    def forward(self, encoder_inputs: dict[str, Tensor], session_index: Tensor | None = None) -> Tensor:
        """``[batch, d_clip]`` (not normalised) from the encoder's inputs of whole windows;
        ``session_index`` ``[batch]`` is needed by a per-session projector."""
        latents = self.encoder.encode(**encoder_inputs)
        tokens = self.readout(latents, encoder_inputs["latent_timestamps"])
        return self.projector(tokens, session_index)

    def freeze_encoder(self, trainable_layers: int = 0) -> None:
        """Freeze the masked model except the encoder's last ``trainable_layers`` layers,
        counted from the top: the processor's self-attention layers, then (``depth + 1``) the
        input cross-attention that forms the latents from the tokens (with its feed-forward,
        the latent and anchor embeddings; the unit embeddings stay frozen). ``0``: all frozen.
        """
        self.masked_model.requires_grad_(False)
        layers = self.encoder.layer_parameters()
        if not 0 <= trainable_layers <= len(layers):
            raise ValueError(
                f"task.trainable_layers must be in [0, {len(layers)}] (the encoder's depth "
                f"{len(layers) - 1}, + 1 for its input cross-attention), got {trainable_layers}."
            )
        for params in layers[len(layers) - trainable_layers :]:
            for param in params:
                param.requires_grad_(True)
