"""Spiking recordings read as values in a ``values`` (CaPOYO) run (``data.spike_values``).

A recording that has spikes but no value series is read as binned spike counts per
(unit, bin), or their square root; this module holds the one definition of those transforms,
their expected value under Poisson counts (the ground truth of synthetic data), the per-unit
statistics used to z-score them, and the one check of the options.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, xlogy
from temporaldata import Interval

__all__ = [
    "SPIKE_VALUES",
    "VALUE_SOURCES",
    "check_spike_values",
    "expected_spike_values",
    "spike_value_stats",
    "spike_values_from_counts",
]

#: How a ``values`` run reads a recording that has spikes but no value series
#: (``data.spike_values``): binned spike counts per (unit, bin), or their square root.
SPIKE_VALUES = ("counts", "sqrt")
#: Where a ``values`` window's values come from (the ``value_source`` of a sample, an index
#: into this tuple): the recording's value series (``value_key``), or its binned spikes.
VALUE_SOURCES = ("value_series", "spikes")


def check_spike_values(spike_values, modality: str = "values", zscore: bool = False) -> None:
    """``data.spike_values`` is ``None`` or one of :data:`SPIKE_VALUES`, and only set (with
    ``data.spike_values_zscore``) in a ``values`` run; raise a ValueError naming the choices."""
    if spike_values is not None and spike_values not in SPIKE_VALUES:
        raise ValueError(
            f"data.spike_values must be null or one of {list(SPIKE_VALUES)}, got {spike_values!r}."
        )
    if spike_values is not None and modality != "values":
        raise ValueError(
            f"data.spike_values={spike_values} reads spiking recordings as values in a "
            f"data.modality=values run (CaPOYO); this run has data.modality={str(modality)!r}, "
            "which reads spikes as they are: set data.spike_values=null."
        )
    if not isinstance(zscore, (bool, np.bool_)):
        raise ValueError(f"data.spike_values_zscore must be true or false, got {zscore!r}.")
    if zscore and spike_values is None:
        raise ValueError(
            "data.spike_values_zscore=true standardises spike-derived values: set "
            f"data.spike_values to one of {list(SPIKE_VALUES)} too."
        )


def spike_values_from_counts(counts: np.ndarray, how: str) -> np.ndarray:
    """Binned spike counts as values: the counts (``"counts"``) or ``sqrt(counts)``
    (``"sqrt"``, variance-stabilising: its variance tends to 1/4 for Poisson counts as their
    mean grows)."""
    if how == "counts":
        return np.asarray(counts, dtype=np.float32)
    if how == "sqrt":
        return np.sqrt(np.asarray(counts, dtype=np.float32))
    raise ValueError(f"spike values must be one of {list(SPIKE_VALUES)}, got {how!r}.")


def _poisson_sqrt_mean(lam: np.ndarray) -> np.ndarray:
    """``E[sqrt(N)]`` for ``N ~ Poisson(lam)``, elementwise (float64).

    The series ``sum_k sqrt(k) P(N = k)`` up to ``k = max(lam) + 12 sqrt(max(lam)) + 30`` for
    ``lam <= 100``; above, the asymptotic expansion
    ``sqrt(lam) (1 - 1/(8 lam) - 7/(128 lam^2) - 33/(1024 lam^3))`` (error < 1e-7 relative).
    """
    lam = np.clip(np.asarray(lam, dtype=np.float64), 0.0, None)
    out = np.empty_like(lam)
    big = lam > 100.0
    if big.any():
        x = lam[big]
        out[big] = np.sqrt(x) * (1 - 1 / (8 * x) - 7 / (128 * x**2) - 33 / (1024 * x**3))
    small = ~big
    if small.any():
        x = lam[small]
        top = float(x.max()) if x.size else 0.0
        k = np.arange(int(np.ceil(top + 12 * np.sqrt(top) + 30)) + 1, dtype=np.float64)
        log_pmf = xlogy(k, x[:, None]) - x[:, None] - gammaln(k + 1)
        out[small] = np.exp(log_pmf) @ np.sqrt(k)
    return out


def expected_spike_values(expected_counts: np.ndarray, how: str) -> np.ndarray:
    """The expected value of :func:`spike_values_from_counts` for Poisson counts of the given
    means: the mean itself (``"counts"``) or ``E[sqrt(N)]`` (``"sqrt"``, exact series)."""
    if how == "counts":
        return np.asarray(expected_counts, dtype=np.float32)
    if how == "sqrt":
        return _poisson_sqrt_mean(expected_counts).astype(np.float32)
    raise ValueError(f"spike values must be one of {list(SPIKE_VALUES)}, got {how!r}.")



def spike_value_stats(
    timestamps: np.ndarray,
    unit_index: np.ndarray,
    n_units: int,
    interval: Interval,
    bin_size: float,
    how: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit mean and std ``[n_units]`` of spike-derived values over ``interval``.

    Each block of ``interval`` is cut into ``bin_size`` bins from its start (as
    :meth:`NeuralDataModule.train_counts` does); a bin's value is
    :func:`spike_values_from_counts` of its count. Only the
    non-empty (bin, unit) cells are materialised (both transforms map 0 to 0), so memory grows
    with the number of spikes, not with hours × units. A unit whose values do not vary gets
    std 1.
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    ui = np.asarray(unit_index, dtype=np.int64)
    cells: list[np.ndarray] = []
    n_bins = 0
    for start, end in zip(np.asarray(interval.start), np.asarray(interval.end)):
        lo, hi = np.searchsorted(ts, [start, end])
        block_bins = max(1, int(np.ceil((end - start) / bin_size - 1e-6)))
        b = np.floor((ts[lo:hi] - start) / bin_size).astype(np.int64)
        keep = b < block_bins
        cells.append((n_bins + b[keep]) * n_units + ui[lo:hi][keep])
        n_bins += block_bins
    flat, counts = np.unique(np.concatenate(cells) if cells else np.zeros(0, np.int64),
                             return_counts=True)
    values = spike_values_from_counts(counts, how).astype(np.float64)
    unit = flat % n_units
    total = np.bincount(unit, weights=values, minlength=n_units)
    total_sq = np.bincount(unit, weights=values * values, minlength=n_units)
    mean = total / max(n_bins, 1)
    var = np.maximum(total_sq / max(n_bins, 1) - mean**2, 0.0)
    std = np.sqrt(var)
    std = np.where(std > 1e-6, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)
