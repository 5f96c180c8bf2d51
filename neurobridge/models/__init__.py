"""NeuroBridge models: encoders, heads, their compositions, and the one factory that builds them."""

from .aligned import AlignmentModel
from .attention import ATTENTION_BACKENDS, attention_backend, set_attention_backend
from .encoders import NeuroBridgeCaPOYO, NeuroBridgePOYO
from .ensemble import MaskedModelEnsemble
from .factory import (
    DECODERS,
    ENCODERS,
    alignment_head_config,
    build_alignment_model,
    build_masked_model,
    encoder_class,
)
from .masked_model import MaskedModel
from .readout import LatentReadout, NeuralProjector
from .target_decoder import TargetSequenceDecoder

__all__ = [
    "ATTENTION_BACKENDS",
    "DECODERS",
    "ENCODERS",
    "AlignmentModel",
    "LatentReadout",
    "MaskedModel",
    "MaskedModelEnsemble",
    "NeuroBridgeCaPOYO",
    "NeuralProjector",
    "NeuroBridgePOYO",
    "TargetSequenceDecoder",
    "alignment_head_config",
    "attention_backend",
    "build_alignment_model",
    "build_masked_model",
    "encoder_class",
    "set_attention_backend",
]
