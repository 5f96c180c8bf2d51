"""Metrics scored on the masked (held-out) cells of the neuron × time-bin grid.

A masked autoencoder predicts a value for every cell ``(time bin, unit)`` of a window; the loss
mask marks the cells that were hidden from the encoder, and every metric here is computed on those
cells only. Callers therefore pass *flat* tensors of the evaluated cells together with the global
index of the unit each cell belongs to::

    sel = loss_mask                                    # [n_bins, n_units] bool
    metric.update(log_rate[sel], counts[sel], unit_ids.expand_as(counts)[sel])

All states are per-unit sums reduced with ``dist_reduce_fx="sum"``, so the value computed after a
multi-process (DDP) sync is exactly the single-process value on the union of the cells. States are
kept in float64 so that long evaluations do not lose precision; float64 is not available on Apple
MPS devices. Two predictions scored on the same cells are compared with
:func:`paired_co_bps_difference` (a bootstrap over units, :func:`paired_bootstrap_interval`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "CoBPS",
    "MaskedMSE",
    "MaskedR2",
    "co_bps_from_sums",
    "gain_over_mean_rate",
    "log_rate_from_rate",
    "paired_bootstrap_interval",
    "paired_co_bps_difference",
    "paired_log_likelihood_difference",
    "poisson_log_likelihood",
]

_LN2 = math.log(2.0)


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 if any input is float64 (half / bfloat16 are promoted to float32)."""
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def _count_times_log_rate(counts: Tensor, log_rate: Tensor) -> Tensor:
    """``counts * log_rate`` with the limit ``0 * log_rate = 0`` (also for ``log_rate = -inf``)."""
    return torch.where(counts == 0, torch.zeros_like(log_rate), counts * log_rate)


def poisson_log_likelihood(log_rate: Tensor, counts: Tensor) -> Tensor:
    """Elementwise Poisson log-likelihood of ``counts`` under rate ``exp(log_rate)``.

    ``counts * log_rate - exp(log_rate) - lgamma(counts + 1)``, computed in float32 (float64 if
    either input is float64) even for half-precision inputs. A cell with zero count contributes
    ``-exp(log_rate)`` even when ``log_rate`` is ``-inf`` (``0 * log 0 = 0``).

    Args:
        log_rate: predicted log of the expected count per bin, any shape.
        counts: observed counts, broadcastable to ``log_rate``.

    Returns:
        The log-likelihood of each cell, with the broadcast shape.
    """
    dtype = _compute_dtype(log_rate, counts)
    log_rate = log_rate.to(dtype)
    counts = counts.to(dtype)
    return (
        _count_times_log_rate(counts, log_rate) - torch.exp(log_rate) - torch.lgamma(counts + 1.0)
    )


def log_rate_from_rate(rate: Tensor | np.ndarray, eps: float = 1e-8) -> Tensor | np.ndarray:
    """``log(max(rate, eps))``, for oracles / baselines that output rates (expected count per bin).

    Accepts a tensor (returns a tensor) or a numpy array (returns a numpy array).
    """
    if isinstance(rate, np.ndarray):
        return np.log(np.maximum(rate, eps))
    return torch.log(torch.as_tensor(rate).clamp_min(eps))


def gain_over_mean_rate(
    log_rate: np.ndarray, counts: np.ndarray, cells: np.ndarray | None = None
) -> tuple[float, float]:
    """``(LL(model) - LL(null), spikes)`` in nats over the scored ``cells`` of numpy arrays
    ``[..., units]`` (``cells`` True where scored, all by default; broadcastable), the null
    predicting each unit's mean count over its scored cells: bits/spike is
    ``gain / spikes / ln 2`` (NLB's and :class:`CoBPS`'s definition; pool several arrays by
    summing gains and spikes). ``lgamma(counts + 1)`` cancels between the two."""
    log_rate = np.asarray(log_rate, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    cells = np.ones(counts.shape, bool) if cells is None else np.broadcast_to(cells, counts.shape)
    axes = tuple(range(counts.ndim - 1))
    scored = np.where(cells, counts, 0.0)
    n_cells = cells.sum(axis=axes)
    null = np.where(n_cells > 0, scored.sum(axis=axes) / np.maximum(n_cells, 1), 0.0)
    ll = np.where(cells, counts * log_rate - np.exp(log_rate), 0.0).sum()
    ll_null = np.where(cells, counts * np.log(np.where(null > 0, null, 1.0)) - null, 0.0).sum()
    return float(ll - ll_null), float(scored.sum())


def _flatten_cells(
    name: str, a: Tensor, b: Tensor, unit_index: Tensor, num_units: int, validate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    if not (a.shape == b.shape == unit_index.shape):
        raise ValueError(
            f"{name}: inputs and unit_index must have the same shape, got "
            f"{tuple(a.shape)}, {tuple(b.shape)} and {tuple(unit_index.shape)}."
        )
    if unit_index.is_floating_point() or unit_index.is_complex() or unit_index.dtype == torch.bool:
        raise TypeError(f"{name}: unit_index must be an integer tensor, got {unit_index.dtype}.")
    unit_index = unit_index.reshape(-1).long()
    if validate and unit_index.numel() > 0:
        lo, hi = int(unit_index.min()), int(unit_index.max())
        if lo < 0 or hi >= num_units:
            raise ValueError(
                f"{name}: unit_index must lie in [0, {num_units}), got values in [{lo}, {hi}]."
            )
    return a.reshape(-1), b.reshape(-1), unit_index


class _PerUnitSumMetric(Metric):
    """Shared plumbing: per-unit float64 sum states, reduced by summation across processes."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, *, num_units: int, validate_args: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if int(num_units) <= 0:
            raise ValueError(f"num_units must be a positive integer, got {num_units}.")
        self.num_units = int(num_units)
        self.validate_args = bool(validate_args)

    def _add_unit_state(self, name: str) -> None:
        self.add_state(
            name, default=torch.zeros(self.num_units, dtype=torch.float64), dist_reduce_fx="sum"
        )

    @staticmethod
    def _accumulate(state: Tensor, unit_index: Tensor, values: Tensor) -> None:
        state.index_add_(0, unit_index.to(state.device), values.to(state.device, state.dtype))


class CoBPS(_PerUnitSumMetric):
    """Co-smoothing bits per spike on the evaluated (masked) cells, as defined by the NLB.

    ``co-bps = (LL_model - LL_null) / (n_spikes * ln 2)``, where both log-likelihoods are Poisson
    and summed over every evaluated cell accumulated since the last :meth:`reset`, ``n_spikes`` is
    the total count on those cells, and the null model predicts for each unit a constant rate equal
    to that unit's mean count per bin over *its* evaluated cells. The ``lgamma(counts + 1)`` term is
    identical in both log-likelihoods and is dropped.

    Positive values mean the model explains the held-out spikes better than per-unit mean rates;
    0 means no better; negative means worse. A unit that never spikes in its evaluated cells has a
    null rate of 0 and contributes ``-sum(exp(log_rate))`` to the model term (``0 * log 0 = 0``).
    If no spike has been evaluated at all, :meth:`compute` returns NaN (the normaliser is 0).

    Units are identified by a global integer index in ``[0, num_units)`` (e.g. a unit vocabulary
    spanning all recordings), so the null rate is always per unit even when batches mix recordings.

    To report one value per masking mode, hold one instance per mode, e.g.
    ``torch.nn.ModuleDict({mode: CoBPS(num_units=n) for mode in modes})``, and update the instance
    of the mode that produced each batch's mask.

    Args:
        num_units: size of the global unit index space.
        validate_args: check that ``unit_index`` lies in range (forces a device sync on GPU).
        **kwargs: forwarded to :class:`torchmetrics.Metric`.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, *, num_units: int, validate_args: bool = True, **kwargs) -> None:
        super().__init__(num_units=num_units, validate_args=validate_args, **kwargs)
        # Per-unit sum of sum(counts * log_rate - exp(log_rate)) (model LL without lgamma).
        self._add_unit_state("model_ll")
        # Per-unit total spike count over evaluated cells.
        self._add_unit_state("spikes")
        # Per-unit number of evaluated cells.
        self._add_unit_state("cells")

    def update(self, log_rate: Tensor, counts: Tensor, unit_index: Tensor) -> None:  # type: ignore[override]
        """Accumulate evaluated cells.

        Args:
            log_rate: predicted log expected count per bin of each evaluated cell.
            counts: observed spike count of each cell.
            unit_index: global unit index (integer) of each cell.

        The three tensors must have the same shape (any shape; they are flattened).
        """
        log_rate, counts, unit_index = _flatten_cells(
            "CoBPS.update", log_rate, counts, unit_index, self.num_units, self.validate_args
        )
        log_rate = log_rate.detach().to(torch.float64)
        counts = counts.detach().to(torch.float64)
        ll = _count_times_log_rate(counts, log_rate) - torch.exp(log_rate)
        self._accumulate(self.model_ll, unit_index, ll)
        self._accumulate(self.spikes, unit_index, counts)
        self._accumulate(self.cells, unit_index, torch.ones_like(counts))

    def compute(self) -> Tensor:
        """Bits per spike over all accumulated cells; NaN if no spike was evaluated."""
        return co_bps_from_sums(self.model_ll, self.spikes, self.cells).float()


def co_bps_from_sums(model_ll: Tensor, spikes: Tensor, cells: Tensor) -> Tensor:
    """Co-bps from :class:`CoBPS`'s per-unit sums (each ``[num_units]``: the model's
    log-likelihood without ``lgamma``, the spike count and the number of evaluated cells); NaN
    if no spike was evaluated."""
    null_rate = torch.where(cells > 0, spikes / cells.clamp_min(1.0), torch.zeros_like(spikes))
    # Null LL without lgamma: sum_cells(y log r - r) = S log r - n r = S log r - S.
    null_ll = torch.special.xlogy(spikes, null_rate) - null_rate * cells
    total_spikes = spikes.sum()
    if total_spikes <= 0:
        return torch.tensor(float("nan"), dtype=spikes.dtype, device=spikes.device)
    return (model_ll.sum() - null_ll.sum()) / (total_spikes * _LN2)


class MaskedMSE(_PerUnitSumMetric):
    """Mean squared error of predictions on the evaluated cells (continuous / MUA targets).

    Same interface as :class:`MaskedR2`; returns NaN when no cell was evaluated. Cells with a NaN
    target must be excluded by the caller (they would make the result NaN).
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, *, num_units: int, validate_args: bool = True, **kwargs) -> None:
        super().__init__(num_units=num_units, validate_args=validate_args, **kwargs)
        self._add_unit_state("sse")
        self._add_unit_state("cells")

    def update(self, pred: Tensor, target: Tensor, unit_index: Tensor) -> None:  # type: ignore[override]
        pred, target, unit_index = _flatten_cells(
            "MaskedMSE.update", pred, target, unit_index, self.num_units, self.validate_args
        )
        err = pred.detach().to(torch.float64) - target.detach().to(torch.float64)
        self._accumulate(self.sse, unit_index, err * err)
        self._accumulate(self.cells, unit_index, torch.ones_like(err))

    def compute(self) -> Tensor:
        n = self.cells.sum()
        if n <= 0:
            return torch.tensor(float("nan"), device=n.device)
        return (self.sse.sum() / n).float()


class MaskedR2(_PerUnitSumMetric):
    """Coefficient of determination on the evaluated cells, centred per unit.

    ``R2 = 1 - SSE / SST`` with ``SSE = sum (pred - target)^2`` over all evaluated cells and
    ``SST = sum (target - mean_u)^2`` where ``mean_u`` is the mean target of the cell's unit over
    that unit's evaluated cells. Predicting each unit's mean therefore scores 0 and a perfect
    prediction 1. Returns NaN if ``SST`` is 0 (no cell, or constant targets within every unit).
    ``SST`` is formed from float64 sums of ``target`` and ``target**2``; targets whose per-unit
    mean is many orders of magnitude larger than their spread should be centred by the caller.
    Cells with a NaN target must be excluded by the caller.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, *, num_units: int, validate_args: bool = True, **kwargs) -> None:
        super().__init__(num_units=num_units, validate_args=validate_args, **kwargs)
        self._add_unit_state("sse")
        self._add_unit_state("sum_target")
        self._add_unit_state("sum_target_sq")
        self._add_unit_state("cells")

    def update(self, pred: Tensor, target: Tensor, unit_index: Tensor) -> None:  # type: ignore[override]
        pred, target, unit_index = _flatten_cells(
            "MaskedR2.update", pred, target, unit_index, self.num_units, self.validate_args
        )
        target = target.detach().to(torch.float64)
        err = pred.detach().to(torch.float64) - target
        self._accumulate(self.sse, unit_index, err * err)
        self._accumulate(self.sum_target, unit_index, target)
        self._accumulate(self.sum_target_sq, unit_index, target * target)
        self._accumulate(self.cells, unit_index, torch.ones_like(target))

    def compute(self) -> Tensor:
        cells = self.cells
        sst_u = torch.where(
            cells > 0,
            self.sum_target_sq - self.sum_target**2 / cells.clamp_min(1.0),
            torch.zeros_like(cells),
        ).clamp_min(0.0)
        sst = sst_u.sum()
        if sst <= 0:
            return torch.tensor(float("nan"), device=sst.device)
        return (1.0 - self.sse.sum() / sst).float()


def paired_bootstrap_interval(
    difference: np.ndarray, weight: np.ndarray, *, n_boot: int = 10_000, level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``sum(difference) / sum(weight)`` and its percentile bootstrap interval, resampling the
    ``[N]`` groups (units, images) with replacement: a paired comparison of two predictions
    when ``difference`` holds each group's score of A minus that of B on the same cells.

    Args:
        difference: ``[N]`` per-group difference of the two scores' numerators.
        weight: ``[N]`` per-group denominator (spikes, presentations); groups of weight 0 and
            difference 0 are left out.
        n_boot: bootstrap resamples.
        level: coverage of the interval.
        seed: seed of the resampling (the interval is deterministic).

    Returns:
        ``(estimate, low, high)``.
    """
    d, w = np.asarray(difference, dtype=np.float64), np.asarray(weight, dtype=np.float64)
    if not (d.shape == w.shape and d.ndim == 1) or w.sum() <= 0:
        raise ValueError("paired_bootstrap_interval: difference and weight must be [N] with a "
                         f"positive total weight, got shapes {d.shape}, {w.shape}.")
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise ValueError(f"paired_bootstrap_interval: need 0 < level < 1 and n_boot >= 1, got "
                         f"{level} and {n_boot}.")
    keep = (w > 0) | (d != 0)
    d, w = d[keep], w[keep]
    draws = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    boot = d[draws].sum(axis=1) / np.maximum(w[draws].sum(axis=1), 1e-300)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(boot, [tail, 100.0 - tail])
    return float(d.sum() / w.sum()), float(low), float(high)


def paired_co_bps_difference(a: CoBPS, b: CoBPS, **kwargs) -> tuple[float, float, float]:
    """Co-bps of prediction A minus that of prediction B, both accumulated on the same cells,
    with a bootstrap interval over units (the null model cancels: the difference is
    ``(LL_A - LL_B) / (n_spikes ln 2)``). Read the metrics after a DDP sync (e.g. inside
    ``Metric.sync_context``) to compare all processes' cells.

    Args:
        a: the first prediction's metric.
        b: the second's, updated with the same cells.
        **kwargs: ``n_boot``, ``level``, ``seed`` of :func:`paired_bootstrap_interval`.

    Returns:
        ``(difference, low, high)`` in bits per spike.
    """
    if not (torch.equal(a.cells, b.cells) and torch.equal(a.spikes, b.spikes)):
        raise ValueError("paired_co_bps_difference: the two metrics were updated with different "
                         "cells; a paired comparison needs the same cells in both.")
    return paired_log_likelihood_difference(a.model_ll, b.model_ll, a.spikes, **kwargs)


def paired_log_likelihood_difference(
    model_ll_a: Tensor | np.ndarray, model_ll_b: Tensor | np.ndarray,
    spikes: Tensor | np.ndarray, **kwargs,
) -> tuple[float, float, float]:
    """:func:`paired_co_bps_difference` from the per-unit sums of two predictions on the same
    cells (each ``[num_units]``, as :class:`CoBPS` holds them)."""
    a, b, s = (np.asarray(torch.as_tensor(x).cpu(), dtype=np.float64)
               for x in (model_ll_a, model_ll_b, spikes))
    return paired_bootstrap_interval((a - b) / _LN2, s, **kwargs)
