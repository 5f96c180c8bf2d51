"""NeuroBridge models: encoders, heads and their compositions."""

from .attention import ATTENTION_BACKENDS, attention_backend, set_attention_backend
from .encoders import NeuroBridgeCaPOYO, NeuroBridgePOYO
from .ensemble import MaskedModelEnsemble
from .masked_model import MaskedModel
from .target_decoder import TargetSequenceDecoder

__all__ = ["NeuroBridgePOYO", "NeuroBridgeCaPOYO", "TargetSequenceDecoder", "MaskedModel",
           "MaskedModelEnsemble",
           "ATTENTION_BACKENDS", "attention_backend", "set_attention_backend"]
