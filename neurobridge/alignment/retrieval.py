"""Test-split metrics of the visual alignment: retrieval in CLIP space and 2-way identification.

Retrieval uses cosine similarity. A query counts as correct at top-``k`` when fewer than ``k``
candidates score strictly higher than the true one (ties favour the true candidate). Two
readouts scored on the same presentations are compared with :func:`paired_accuracy_difference`
(a bootstrap over test images of the difference in accuracy).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from neurobridge.metrics import paired_bootstrap_interval

__all__ = [
    "RetrievalMetrics", "TwoWayIdentification", "paired_accuracy_difference",
    "two_way_identification",
]


def _log_comb(n: Tensor, k: Tensor) -> Tensor:
    """``log C(n, k)`` elementwise (float64), ``-inf`` where ``k < 0`` or ``k > n``."""
    valid = (k >= 0) & (k <= n)
    n, k = n.clamp_min(0), k.clamp(min=0)
    k = torch.minimum(k, n)
    out = torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    return torch.where(valid, out, torch.full_like(out, -torch.inf))


def _subset_topk(n_better: Tensor, n_distractors: int, n_draws: int, k: int) -> Tensor:
    """Probability that fewer than ``k`` of ``n_draws`` distractors, drawn without replacement
    from ``n_distractors`` of which ``n_better`` beat the true candidate, beat it
    (hypergeometric CDF at ``k - 1``), per query."""
    g = n_better.double()
    total = torch.tensor(float(n_distractors), dtype=torch.float64, device=g.device)
    draws = torch.tensor(float(n_draws), dtype=torch.float64, device=g.device)
    x = torch.arange(k, dtype=torch.float64, device=g.device)[:, None]
    log_p = _log_comb(g, x) + _log_comb(total - g, draws - x) - _log_comb(total, draws)
    return log_p.exp().sum(dim=0)


class RetrievalMetrics(Metric):
    """Neural ↔ image retrieval among the distinct test images.

    ``update`` takes each presentation's neural embedding and the row of its image in
    ``candidates``. ``compute`` returns float tensors:

    - ``top1``, ``top5``: neural → image, per presentation, among all ``N`` candidates;
    - ``image_to_neural_top1``, ``image_to_neural_top5``: for each distinct image that was
      presented, rank the per-image mean neural embeddings of all presented images;
    - ``n_candidates`` (``N``), ``n_images`` (distinct images presented: the candidate count of
      the image → neural direction), ``chance_top1`` (``1 / N``), ``chance_top5``
      (``min(5, N) / N``);
    - when ``N > n_way``: ``top1_{n_way}way``, ``top5_{n_way}way``: neural → image accuracy
      among ``n_way`` candidates, the true image plus ``n_way - 1`` drawn at random without
      replacement from the others (MindEye's 300-way convention). Instead of averaging over
      seeded random draws, the exact expectation over all such subsets is computed from the
      number of candidates that beat the true image (hypergeometric distribution); it is what
      averaging infinitely many random repeats converges to, and it is deterministic.

    Args:
        candidates: ``[N, D]`` embeddings of the distinct test images (normalised here).
        n_way: subset size of the ``n_way`` metrics.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, *, candidates: Tensor, n_way: int = 300, **kwargs) -> None:
        super().__init__(**kwargs)
        if candidates.ndim != 2 or candidates.shape[0] < 1:
            raise ValueError(
                f"RetrievalMetrics: candidates must be [N >= 1, D], got {list(candidates.shape)}."
            )
        if not torch.isfinite(candidates).all():
            raise ValueError("RetrievalMetrics: candidates contain NaN or Inf.")
        if n_way < 2:
            raise ValueError(f"RetrievalMetrics: n_way must be >= 2, got {n_way}.")
        self.n_way = int(n_way)
        self.register_buffer(
            "candidates", F.normalize(candidates.detach().float(), dim=-1), persistent=False
        )
        self.add_state("neural", default=[], dist_reduce_fx="cat")
        self.add_state("image_index", default=[], dist_reduce_fx="cat")

    def update(self, neural: Tensor, image_index: Tensor) -> None:
        """Add presentations: ``neural`` ``[B, D]``, ``image_index`` ``[B]`` rows of candidates."""
        n, d = self.candidates.shape
        if neural.ndim != 2 or neural.shape[1] != d or image_index.shape != neural.shape[:1]:
            raise ValueError(
                f"RetrievalMetrics.update: expected neural [B, {d}] and image_index [B], got "
                f"{list(neural.shape)} and {list(image_index.shape)}."
            )
        if image_index.is_floating_point() or image_index.dtype == torch.bool:
            raise TypeError(f"image_index must be an integer tensor, got {image_index.dtype}.")
        if image_index.numel() and not (0 <= int(image_index.min()) <= int(image_index.max()) < n):
            raise ValueError(f"image_index values must lie in [0, {n}).")
        self.neural.append(F.normalize(neural.detach().float(), dim=-1))
        self.image_index.append(image_index.long())

    def _n_better(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(neural [P, D], image_index [P], n_better [P])``: the candidates that score
        strictly higher than each presentation's true image."""
        neural = dim_zero_cat(self.neural)
        index = dim_zero_cat(self.image_index)
        sims = neural @ self.candidates.T  # [P, N]
        true_sim = sims.gather(1, index[:, None])
        return neural, index, (sims > true_sim).sum(dim=1)

    def hits_by_image(self) -> dict[str, Tensor]:
        """Neural → image hits counted per candidate image, for paired comparisons of two
        readouts on the same presentations (:func:`paired_accuracy_difference`).

        Returns:
            ``presentations`` ``[N]``: presentations of each candidate (0 if never shown);
            ``top1``, ``top5`` ``[N]``: how many of them retrieve it at top-1 / top-5. So
            ``top1.sum() / presentations.sum()`` is ``compute()["top1"]``.
        """
        _, index, n_better = self._n_better()
        n = self.candidates.shape[0]
        out = {"presentations": torch.bincount(index, minlength=n)}
        for k in (1, 5):
            out[f"top{k}"] = torch.bincount(index, weights=(n_better < k).double(), minlength=n)
        return {key: v.long().cpu() for key, v in out.items()}

    def compute(self) -> dict[str, Tensor]:
        neural, index, n_better = self._n_better()
        n = self.candidates.shape[0]

        images, inverse = torch.unique(index, return_inverse=True)
        mean_neural = torch.zeros(len(images), neural.shape[1], device=neural.device)
        mean_neural = F.normalize(mean_neural.index_add_(0, inverse, neural), dim=-1)
        image_sims = self.candidates[images] @ mean_neural.T  # [U, U], true pairs on diagonal
        image_better = (image_sims > image_sims.diagonal()[:, None]).sum(dim=1)

        def acc(better: Tensor, k: int) -> Tensor:
            return (better < k).float().mean()

        device = self.candidates.device
        out = {
            "top1": acc(n_better, 1),
            "top5": acc(n_better, 5),
            "image_to_neural_top1": acc(image_better, 1),
            "image_to_neural_top5": acc(image_better, 5),
            "n_candidates": torch.tensor(float(n), device=device),
            "n_images": torch.tensor(float(len(images)), device=device),
            "chance_top1": torch.tensor(1.0 / n, device=device),
            "chance_top5": torch.tensor(min(5, n) / n, device=device),
        }
        if n > self.n_way:
            for k in (1, 5):
                p = _subset_topk(n_better, n - 1, self.n_way - 1, k)
                out[f"top{k}_{self.n_way}way"] = p.mean().float()
        return out


def paired_accuracy_difference(
    hits_a: Tensor, hits_b: Tensor, presentations: Tensor, **kwargs
) -> tuple[float, float, float]:
    """Accuracy of readout A minus that of readout B on the same presentations, with a
    percentile bootstrap interval that resamples test images (presentations of one image are
    not independent), both readouts' hits together (paired).

    Args:
        hits_a: ``[N]`` correct presentations of readout A per image
            (:meth:`RetrievalMetrics.hits_by_image`).
        hits_b: ``[N]`` the same for readout B.
        presentations: ``[N]`` presentations per image, the same for both readouts.
        **kwargs: ``n_boot``, ``level``, ``seed`` of
            :func:`neurobridge.metrics.paired_bootstrap_interval`.

    Returns:
        ``(difference, low, high)``.
    """
    a, b = np.asarray(hits_a, dtype=np.float64), np.asarray(hits_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_accuracy_difference: hits_a and hits_b must have the same "
                         f"shape, got {a.shape} and {b.shape}.")
    return paired_bootstrap_interval(a - b, np.asarray(presentations), **kwargs)


def two_way_identification(pred: Tensor, target: Tensor) -> Tensor:
    """2-way identification as defined by MindEye (chance 0.5).

    For each sample ``i``: the fraction of other targets ``j != i`` whose Pearson correlation
    with ``pred[i]`` is lower than that of ``target[i]``; averaged over samples.

    Args:
        pred: ``[B, D]`` predicted features (``B >= 2``).
        target: ``[B, D]`` true features.

    Returns:
        A 0-d float tensor in ``[0, 1]``.
    """
    if pred.ndim != 2 or pred.shape != target.shape or pred.shape[0] < 2:
        raise ValueError(
            "two_way_identification: pred and target must both be [B >= 2, D], got "
            f"{list(pred.shape)} and {list(target.shape)}."
        )
    pred = pred.double()
    target = target.double()
    pred = F.normalize(pred - pred.mean(dim=1, keepdim=True), dim=1)
    target = F.normalize(target - target.mean(dim=1, keepdim=True), dim=1)
    corr = pred @ target.T  # corr[i, j] = r(pred_i, target_j)
    wins = (corr < corr.diagonal()[:, None]).sum(dim=1)
    return (wins.double() / (pred.shape[0] - 1)).mean().float()


class TwoWayIdentification(Metric):
    """Accumulating wrapper of :func:`two_way_identification` over the whole split."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add samples: ``pred`` and ``target`` ``[B, D]``."""
        if pred.ndim != 2 or pred.shape != target.shape:
            raise ValueError(
                f"TwoWayIdentification.update: pred and target must both be [B, D], got "
                f"{list(pred.shape)} and {list(target.shape)}."
            )
        self.preds.append(pred.detach().float())
        self.targets.append(target.detach().float())

    def compute(self) -> Tensor:
        return two_way_identification(dim_zero_cat(self.preds), dim_zero_cat(self.targets))
