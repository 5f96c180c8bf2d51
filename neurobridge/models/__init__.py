"""NeuroBridge models: encoders, heads and their compositions."""

from .encoders import NeuroBridgeCaPOYO, NeuroBridgePOYO
from .masked_model import MaskedModel
from .target_decoder import TargetSequenceDecoder

__all__ = ["NeuroBridgePOYO", "NeuroBridgeCaPOYO", "TargetSequenceDecoder", "MaskedModel"]
