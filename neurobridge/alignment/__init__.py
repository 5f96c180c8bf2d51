"""Visual alignment: CLIP image targets (open_clip, imported on first use) and their cache,
the contrastive loss, retrieval metrics, the neural embeddings of an aligned model, and the
ridge readout scored next to it.

The aligned network itself (masked model + readout + projector, all ``nn.Module`` s) lives in
:mod:`neurobridge.models` (:class:`~neurobridge.models.AlignmentModel`,
:class:`~neurobridge.models.LatentReadout`, :class:`~neurobridge.models.NeuralProjector`),
built by :func:`neurobridge.models.build_alignment_model`.
"""

from .clip import TINY_MODEL_NAME, CLIPImageEncoder, build_clip_image_encoder
from .embedding_cache import EmbeddingCache, embed_image_source, write_embedding_cache
from .infonce import LogitScale, clip_infonce
from .neural_embeddings import mean_test_embeddings, neural_clip_embedding
from .retrieval import (
    RetrievalMetrics,
    TwoWayIdentification,
    paired_accuracy_difference,
    two_way_identification,
)
from .ridge import (
    RIDGE_ALPHAS,
    check_ridge_options,
    evoked_counts,
    fit_kernel_ridge,
    fit_ridge,
    latent_probe_scores,
    ridge_readout_scores,
)

__all__ = [
    "TINY_MODEL_NAME",
    "CLIPImageEncoder",
    "build_clip_image_encoder",
    "EmbeddingCache",
    "embed_image_source",
    "write_embedding_cache",
    "LogitScale",
    "clip_infonce",
    "mean_test_embeddings",
    "neural_clip_embedding",
    "RetrievalMetrics",
    "TwoWayIdentification",
    "paired_accuracy_difference",
    "two_way_identification",
    "RIDGE_ALPHAS",
    "check_ridge_options",
    "evoked_counts",
    "fit_kernel_ridge",
    "fit_ridge",
    "latent_probe_scores",
    "ridge_readout_scores",
]
