"""Reconstruction losses on the masked cells of the neuron × time grid.

Both reduce in float32 whatever the autocast dtype, and average over the cells whose weight
is non-zero (a batch with no such cell gives a zero loss that still carries a graph).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_poisson_nll", "masked_mse"]


def _weighted_mean(per_cell: Tensor, weight: Tensor) -> Tensor:
    weight = weight.float()
    return (per_cell * weight).sum() / weight.sum().clamp_min(1.0)


def masked_poisson_nll(log_rate: Tensor, counts: Tensor, weight: Tensor) -> Tensor:
    """Poisson negative log-likelihood of counts under ``exp(log_rate)``, weighted mean.

    Equals ``torch.nn.functional.poisson_nll_loss(log_rate, counts, log_input=True,
    full=False)`` on the cells with weight 1. Log-rates are clamped to ``[-20, 20]`` before the
    exponential so half precision cannot overflow.

    Args:
        log_rate: ``[...]`` predicted log expected count per cell.
        counts: ``[...]`` observed counts.
        weight: ``[...]`` cell weights (bool or float); 0 excludes a cell.
    """
    log_rate = log_rate.float().clamp(-20.0, 20.0)
    per_cell = torch.exp(log_rate) - counts.float() * log_rate
    return _weighted_mean(per_cell, weight)


def masked_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean squared error over the weighted cells (for MUA / continuous targets)."""
    per_cell = (pred.float() - target.float()).square()
    return _weighted_mean(per_cell, weight)
