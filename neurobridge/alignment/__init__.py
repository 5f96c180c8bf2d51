"""Visual alignment: CLIP image targets, readout heads, contrastive loss and retrieval metrics.

The aligned network itself (masked model + readout + projector) is
:class:`neurobridge.models.AlignmentModel`, built by :func:`neurobridge.models.build_alignment_model`.
"""

from .clip import TINY_MODEL_NAME, CLIPImageEncoder, build_clip_image_encoder
from .embedding_cache import EmbeddingCache, embed_image_source, write_embedding_cache
from .infonce import LogitScale, clip_infonce
from .neural_embeddings import mean_test_embeddings, neural_clip_embedding
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
    "LatentReadout",
    "mean_test_embeddings",
    "neural_clip_embedding",
    "NeuralProjector",
    "RetrievalMetrics",
    "TwoWayIdentification",
    "two_way_identification",
]
