"""Symmetric CLIP-style InfoNCE between neural and image embeddings, with repeated images."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LogitScale", "clip_infonce"]


class LogitScale(nn.Module):
    """Learnable inverse temperature, stored as its log (as in CLIP).

    Args:
        init: initial scale (CLIP: ``1 / 0.07``).
        max_scale: upper bound applied in :meth:`forward` (CLIP: 100).
    """

    def __init__(self, *, init: float = 1.0 / 0.07, max_scale: float = 100.0):
        super().__init__()
        if not 0.0 < init <= max_scale:
            raise ValueError(f"LogitScale needs 0 < init <= max_scale, got {init}, {max_scale}.")
        self.log_scale = nn.Parameter(torch.tensor(math.log(init)))
        self.max_log_scale = math.log(max_scale)

    def forward(self) -> Tensor:
        """The scale ``exp(min(log_scale, log(max_scale)))``, a 0-d tensor."""
        return self.log_scale.clamp(max=self.max_log_scale).exp()


def clip_infonce(
    neural: Tensor,
    image: Tensor,
    *,
    logit_scale: Tensor | float,
    image_ids: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE between paired neural and image embeddings.

    Both inputs are L2-normalised and ``logits = logit_scale * neural @ image.T``. Sample ``i``'s
    positives are the samples showing the same image (``image_ids[j] == image_ids[i]``, ``i``
    included); they are never counted as negatives. Each direction's loss is, per row,
    ``-mean over positives j of log_softmax(logits[i])[j]``, averaged over rows; the result is
    the mean of the neural→image and image→neural losses. With distinct ids (or
    ``image_ids=None``) this is exactly the CLIP loss. Computed in float32.

    Args:
        neural: ``[B, D]`` neural embeddings.
        image: ``[B, D]`` image embeddings of the images shown.
        logit_scale: inverse temperature (e.g. ``LogitScale()()``).
        image_ids: ``[B]`` integer id of each sample's image, or None if all are distinct.

    Returns:
        The loss, a 0-d tensor.
    """
    if neural.ndim != 2 or neural.shape != image.shape:
        raise ValueError(
            f"clip_infonce: neural and image must both be [B, D], got {list(neural.shape)} "
            f"and {list(image.shape)}."
        )
    neural = F.normalize(neural.float(), dim=-1)
    image = F.normalize(image.float(), dim=-1)
    logits = logit_scale * neural @ image.T
    if image_ids is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    if image_ids.shape != (logits.shape[0],):
        raise ValueError(
            f"clip_infonce: image_ids must be [B={logits.shape[0]}], got {list(image_ids.shape)}."
        )
    positives = (image_ids[:, None] == image_ids[None, :]).float()
    per_positive = positives / positives.sum(dim=1, keepdim=True)
    neural_to_image = -(per_positive * logits.log_softmax(dim=1)).sum(dim=1).mean()
    image_to_neural = -(per_positive * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return 0.5 * (neural_to_image + image_to_neural)
