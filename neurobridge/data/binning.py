"""Binning of spikes and continuous signals onto the neuron × time grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from temporaldata import Data, Interval


def num_bins(duration: float, bin_size: float) -> int:
    """Number of bins of ``bin_size`` seconds that tile ``duration`` seconds.

    A duration that is a multiple of ``bin_size`` up to float error gives the exact count;
    otherwise the last partial bin is counted.
    """
    if bin_size <= 0:
        raise ValueError(f"bin_size must be > 0 seconds, got {bin_size}.")
    n = duration / bin_size
    return max(1, int(math.ceil(n - 1e-6)))


def bin_spikes(
    timestamps: np.ndarray,
    unit_index: np.ndarray,
    *,
    num_units: int,
    start: float,
    end: float,
    bin_size: float,
) -> np.ndarray:
    """Count spikes per (time bin, unit) on ``[start, end)``.

    Args:
        timestamps: ``[n_spikes]`` spike times in seconds.
        unit_index: ``[n_spikes]`` unit of each spike, in ``[0, num_units)``.
        num_units: number of units (columns of the grid).
        start: start of the binned interval in seconds; bin ``b`` covers
            ``[start + b * bin_size, start + (b + 1) * bin_size)``.
        end: end of the binned interval in seconds.
        bin_size: bin width in seconds.

    Returns:
        ``[n_bins, num_units]`` float32 spike counts. Spikes outside ``[start, end)`` are dropped.
    """
    n_bins = num_bins(end - start, bin_size)
    timestamps = np.asarray(timestamps, dtype=np.float64)
    unit_index = np.asarray(unit_index, dtype=np.int64)
    bins = np.floor((timestamps - start) / bin_size).astype(np.int64)
    keep = (timestamps >= start) & (timestamps < end) & (bins < n_bins)
    flat = bins[keep] * num_units + unit_index[keep]
    counts = np.bincount(flat, minlength=n_bins * num_units)
    return counts.reshape(n_bins, num_units).astype(np.float32)


def bin_spikes_in_blocks(
    timestamps: np.ndarray,
    unit_index: np.ndarray,
    *,
    num_units: int,
    blocks,
    bin_size: float,
) -> np.ndarray:
    """Spike counts of several blocks of time, each binned from its own start, stacked in time.

    Args:
        blocks: a temporaldata ``Interval`` (or anything with ``start`` / ``end`` arrays), e.g.
            a recording's training split.
        timestamps: as :func:`bin_spikes`.
        unit_index: as :func:`bin_spikes`.
        num_units: as :func:`bin_spikes`.
        bin_size: as :func:`bin_spikes`.

    Returns:
        ``[sum of the blocks' bins, num_units]`` float32 counts, block after block.
    """
    return np.concatenate([
        bin_spikes(timestamps, unit_index, num_units=num_units, start=s, end=e,
                   bin_size=bin_size)
        for s, e in zip(np.asarray(blocks.start), np.asarray(blocks.end))
    ], axis=0)


def bin_regular(
    values: np.ndarray,
    *,
    sampling_rate: float,
    bin_size: float,
    n_bins: int,
) -> np.ndarray:
    """Average a regularly sampled signal ``[n_samples, n_channels]`` into ``n_bins`` bins.

    Sample ``i`` (at time ``i / sampling_rate`` from the window start) goes to bin
    ``floor(i / sampling_rate / bin_size)``. Bins with no sample are NaN.

    Returns:
        ``[n_bins, n_channels]`` float32 bin means.
    """
    values = np.asarray(values, dtype=np.float64)
    t = np.arange(values.shape[0]) / sampling_rate
    bins = np.floor(t / bin_size + 1e-9).astype(np.int64)
    keep = bins < n_bins
    bins, values = bins[keep], values[keep]
    counts = np.bincount(bins, minlength=n_bins)
    # each bin's samples are consecutive (time order): add the j-th sample of every bin at once,
    # j = 0, 1, ... (the sequential per-bin sum of np.add.at)
    sums = np.zeros((n_bins, values.shape[1]))
    if counts.max() == 0:
        return np.full(sums.shape, np.nan, dtype=np.float32)
    if counts.min() == counts.max():  # the same number per bin: a reshape
        for part in values.reshape(n_bins, counts[0], -1).transpose(1, 0, 2):
            sums += part
        return (sums / counts[0]).astype(np.float32)
    within = np.arange(len(bins)) - np.searchsorted(bins, bins)
    for j in range(int(within.max(initial=-1)) + 1):
        at = within == j
        sums[bins[at]] += values[at]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / counts[:, None]
    return out.astype(np.float32)


@dataclass(frozen=True)
class FileBlocks:
    """Some blocks (e.g. the training split) of one recording file at one bin size, read only
    when a subclass is called. It holds the file's path, the blocks and the bin size, so it is
    cheap to keep and to copy (a baseline holds one per session and reads it when the session
    is first scored)."""

    path: str
    starts: tuple[float, ...]
    ends: tuple[float, ...]
    bin_size: float

    @classmethod
    def of(cls, path: str | Path, blocks, bin_size: float):
        """``blocks`` (an ``Interval``, e.g. a training split) of ``path``."""
        return cls(str(path), tuple(float(s) for s in np.asarray(blocks.start)),
                   tuple(float(e) for e in np.asarray(blocks.end)), float(bin_size))


@dataclass(frozen=True)
class SplitCounts(FileBlocks):
    """The spike counts of some blocks of one recording file, binned when called:
    ``counts() -> [n_bins, n_units]`` (:func:`bin_spikes_in_blocks`)."""

    def __call__(self) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            data = Data.from_hdf5(f, lazy=True)
            timestamps = np.asarray(data.spikes.timestamps)
            unit_index = np.asarray(data.spikes.unit_index)
            num_units = len(data.units.id)
        blocks = Interval(np.asarray(self.starts), np.asarray(self.ends))
        return bin_spikes_in_blocks(timestamps, unit_index, num_units=num_units, blocks=blocks,
                                    bin_size=self.bin_size)
