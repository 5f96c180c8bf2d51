"""Neural embeddings of an aligned model: per window, and per test image over its repeats."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor

__all__ = ["mean_test_embeddings", "neural_clip_embedding"]


def neural_clip_embedding(model: nn.Module, batch: dict) -> Tensor:
    """``[batch, d_clip]`` L2-normalised embedding of the aligned model for a stimulus batch
    (its ``encoder_inputs`` and ``session_index``), without gradient."""
    with torch.no_grad():
        return F.normalize(model(batch["encoder_inputs"], batch["session_index"]).float(), dim=-1)


def mean_test_embeddings(model: nn.Module, dm, device: torch.device) -> tuple[list[str], Tensor]:
    """Sorted distinct test image ids and ``[n_images, d_clip]`` neural embeddings, each the
    normalised mean over the image's test presentations (repeats averaged, as MindEye does)."""
    sums: dict[str, Tensor] = {}
    for batch in dm.test_dataloader():
        batch = move_data_to_device(batch, device)
        z = neural_clip_embedding(model, batch)
        for row, vec in zip(batch["image_index"].tolist(), z):
            image_id = dm.image_ids[row]
            sums[image_id] = sums.get(image_id, 0) + vec
    ids = sorted(sums)
    return ids, F.normalize(torch.stack([sums[i] for i in ids]), dim=-1)
