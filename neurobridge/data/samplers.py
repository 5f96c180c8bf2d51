"""Window samplers that also fix each window's mask, and shard across DDP ranks.

Both samplers yield :class:`~neurobridge.data.index.WindowIndex` objects. They shard by
rank themselves (so the Trainer must run with ``use_distributed_sampler=False``): rank ``r``
of ``W`` takes every ``W``-th index starting at ``r`` (:func:`rank_shard`). Evaluation shards
keep every window, so that metric sums gathered over ranks equal a single-process run;
training shards drop the last ``N mod W`` windows of the epoch, so that every rank runs the
same number of optimizer steps per epoch (DDP's gradient all-reduce pairs the ranks' steps).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from temporaldata import Interval
from torch_brain.data.sampler import RandomFixedWindowSampler, SequentialFixedWindowSampler

from neurobridge.data.index import WindowIndex

__all__ = [
    "RECORDING_WEIGHTINGS",
    "TrainWindowSampler",
    "EvalWindowSampler",
    "check_recording_weighting",
    "rank_shard",
    "rank_world",
]

#: How training windows are shared between recordings (see :class:`TrainWindowSampler`).
RECORDING_WEIGHTINGS = ("proportional", "uniform", "sqrt")


def check_recording_weighting(value: str) -> None:
    """Raise a ValueError listing the valid choices unless ``value`` is one of them."""
    if value not in RECORDING_WEIGHTINGS:
        raise ValueError(
            f"data.recording_weighting must be one of {list(RECORDING_WEIGHTINGS)}, got {value!r}."
        )


#: Windows are placed as if this much (seconds) shorter than nominal, so that an interval exactly
#: one window long up to float rounding (a trial of back-to-back trial data: 5.1 - 4.8 < 0.3)
#: still holds one; every window then gets its nominal length back.
_SLACK = 1e-9


def _fitted_start(start: float, interval: Interval, length: float) -> float:
    """``start`` moved back, if needed, so that ``[start, start + length]`` ends inside the
    sampling interval that contains ``start``."""
    k = int(np.searchsorted(np.asarray(interval.start), start + 1e-6, side="right")) - 1
    return min(start, float(interval.end[max(k, 0)]) - length)


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def rank_shard(items: Sequence, *, even: bool) -> Sequence:
    """This rank's share of ``items``: every ``W``-th item from the rank's index.

    ``even=True`` (training) first drops the last ``len(items) % W`` items, so every rank gets
    ``len(items) // W``; ``even=False`` (evaluation) keeps them all (shares differ by one).
    """
    rank, world = rank_world()
    stop = len(items) - len(items) % world if even else len(items)
    return items[rank:stop:world]


class TrainWindowSampler(torch.utils.data.Sampler):
    """Random windows (torch_brain's :class:`RandomFixedWindowSampler`) with a fresh mask seed each.

    The epoch's windows and mask seeds depend only on ``(seed, epoch)``, so a run resumed at an
    epoch boundary sees exactly the samples of an uninterrupted one. Lightning calls
    :meth:`set_epoch` before each epoch.

    Sharing between recordings: an epoch has as many windows as tile the intervals once
    (``N`` in total, ``n_r`` from recording ``r``). ``"proportional"`` keeps them (each recording
    in proportion to its recorded time); ``"uniform"`` gives every recording ``N / R`` windows and
    ``"sqrt"`` gives recording ``r`` a share ``sqrt(n_r) / sum sqrt(n)``, by drawing that many of
    its windows (with replacement only where a recording has fewer windows than its share).

    Args:
        intervals: ``{recording_id: Interval}`` to draw windows from.
        window_length: window length in seconds.
        seed: base seed.
        max_queries: cap on decoded masked cells per window (see :class:`WindowIndex`).
        unmasked_queries: unmasked cells decoded per window (see :class:`WindowIndex`).
        recording_weighting: one of :data:`RECORDING_WEIGHTINGS`.
    """

    def __init__(
        self,
        *,
        intervals: dict[str, Interval],
        window_length: float,
        seed: int = 0,
        max_queries: int | None = None,
        unmasked_queries: int = 0,
        recording_weighting: str = "proportional",
    ):
        check_recording_weighting(recording_weighting)
        self.intervals = intervals
        self.window_length = window_length
        self.seed = seed
        self.max_queries = max_queries
        self.unmasked_queries = unmasked_queries
        self.recording_weighting = recording_weighting
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_indices(self) -> list[WindowIndex]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        base = RandomFixedWindowSampler(
            sampling_intervals=self.intervals,
            window_length=self.window_length - _SLACK,
            generator=gen,
        )
        rng = np.random.default_rng([self.seed, self.epoch])
        windows = self._reweighted(list(base), rng)
        seeds = rng.integers(0, 2**62, size=len(windows))
        out = []
        for w, s in zip(windows, seeds):
            start = _fitted_start(w.start, self.intervals[w.recording_id], self.window_length)
            out.append(WindowIndex(w.recording_id, start, start + self.window_length,
                                   mask_seed=int(s), max_queries=self.max_queries,
                                   unmasked_queries=self.unmasked_queries))
        return out

    def _reweighted(self, windows: list, rng: np.random.Generator) -> list:
        """The epoch's windows shared between recordings by :attr:`recording_weighting`."""
        if self.recording_weighting == "proportional":
            return windows
        by_rec: dict[str, list] = {}
        for w in windows:
            by_rec.setdefault(w.recording_id, []).append(w)
        rids = sorted(by_rec)
        n = np.array([len(by_rec[r]) for r in rids], dtype=np.float64)
        weight = np.ones_like(n) if self.recording_weighting == "uniform" else np.sqrt(n)
        share = weight / weight.sum() * len(windows)
        counts = np.floor(share).astype(int)
        counts[np.argsort(counts - share)[: len(windows) - counts.sum()]] += 1  # largest remainders
        out = []
        for rid, k in zip(rids, counts):
            pool = by_rec[rid]
            pick = rng.choice(len(pool), size=k, replace=k > len(pool))
            out.extend(pool[i] for i in pick)
        return [out[i] for i in rng.permutation(len(out))]

    def __iter__(self) -> Iterator[WindowIndex]:
        yield from rank_shard(self._all_indices(), even=True)

    def __len__(self) -> int:
        n = len(RandomFixedWindowSampler(
            sampling_intervals=self.intervals, window_length=self.window_length - _SLACK
        ))
        return len(rank_shard(range(n), even=True))


class EvalWindowSampler(torch.utils.data.Sampler):
    """Fixed, non-overlapping windows, each evaluated under every mode in ``modes``.

    Masks are fixed: the mask seed of a window is a hash of ``seed``, the recording, the mode
    and the window's pattern number (its ordinal in the recording modulo ``mask_patterns``), so
    every run and every model is scored on the same masked cells. Reusing a few patterns per
    recording keeps the smoothing baseline's GLM fits (one per held-out set) few.

    Args:
        intervals: ``{recording_id: Interval}`` of the evaluated split.
        window_length: window length in seconds.
        modes: masking modes to evaluate each window under.
        seed: evaluation mask seed.
        max_windows: evaluate at most this many windows (evenly spread), all by default.
        mask_patterns: distinct masks per (recording, mode).
    """

    def __init__(
        self,
        *,
        intervals: dict[str, Interval],
        window_length: float,
        modes: Sequence[str],
        seed: int = 0,
        max_windows: int | None = None,
        mask_patterns: int = 8,
    ):
        longest = max(
            (float(np.max(iv.end - iv.start)) for iv in intervals.values() if len(iv)), default=0.0
        )
        if longest < window_length - _SLACK:
            raise ValueError(
                f"No evaluation interval of {sorted(intervals)} holds a {window_length} s window "
                f"(the longest is {longest:.3f} s): use a shorter window "
                "(model.encoder.sequence_length) or longer valid/test blocks in the recordings."
            )
        windows, seen = [], set()
        # intervals shorter than a window (e.g. one 250 ms presentation) hold no window
        for w in SequentialFixedWindowSampler(
            sampling_intervals=intervals, window_length=window_length - _SLACK, drop_short=True
        ):
            start = _fitted_start(w.start, intervals[w.recording_id], window_length)
            key = (w.recording_id, round(start, 6))  # the slack can add a near-duplicate window
            if key not in seen:
                seen.add(key)
                windows.append((w.recording_id, start))
        if max_windows is not None and len(windows) > max_windows:
            keep = np.linspace(0, len(windows) - 1, max_windows).round().astype(int)
            windows = [windows[i] for i in keep]
        ordinal: dict[str, int] = {}
        self.indices = []
        for rid, start in windows:
            pattern = ordinal.get(rid, 0) % mask_patterns
            ordinal[rid] = ordinal.get(rid, 0) + 1
            for mode in modes:
                key = f"{seed}|{rid}|{mode}|{pattern}"
                self.indices.append(
                    WindowIndex(rid, start, start + window_length,
                                mask_seed=zlib.crc32(key.encode()), mode=mode)
                )

    def __iter__(self) -> Iterator[WindowIndex]:
        yield from rank_shard(self.indices, even=False)

    def __len__(self) -> int:
        return len(rank_shard(self.indices, even=False))
