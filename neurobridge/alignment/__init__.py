"""Visual alignment: CLIP image targets, readout heads, contrastive loss and retrieval metrics."""

from .clip import TINY_MODEL_NAME, CLIPImageEncoder, build_clip_image_encoder
from .embedding_cache import EmbeddingCache, embed_image_source, write_embedding_cache
from .infonce import LogitScale, clip_infonce
from .model import AlignmentModel
from .readout import LatentReadout, NeuralProjector
from .retrieval import RetrievalMetrics, TwoWayIdentification, two_way_identification

__all__ = [
    "TINY_MODEL_NAME",
    "CLIPImageEncoder",
    "build_clip_image_encoder",
    "EmbeddingCache",
    "embed_image_source",
    "write_embedding_cache",
    "LogitScale",
    "clip_infonce",
    "AlignmentModel",
    "LatentReadout",
    "NeuralProjector",
    "RetrievalMetrics",
    "TwoWayIdentification",
    "two_way_identification",
]
