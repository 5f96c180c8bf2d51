"""Window samplers that also fix each window's mask, and shard across DDP ranks.

Both samplers yield :class:`~neurobridge.data.tokenizer.WindowIndex` objects. They shard by
rank themselves (so the Trainer must run with ``use_distributed_sampler=False``): rank ``r``
of ``W`` takes every ``W``-th index starting at ``r``, without padding or dropping, so that
metric sums gathered over ranks equal a single-process run.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from temporaldata import Interval
from torch_brain.data.sampler import RandomFixedWindowSampler, SequentialFixedWindowSampler

from neurobridge.data.tokenizer import WindowIndex

__all__ = ["TrainWindowSampler", "EvalWindowSampler"]


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TrainWindowSampler(torch.utils.data.Sampler):
    """Random windows (torch_brain's :class:`RandomFixedWindowSampler`) with a fresh mask seed each.

    The epoch's windows and mask seeds depend only on ``(seed, epoch)``, so a run resumed at an
    epoch boundary sees exactly the samples of an uninterrupted one. Lightning calls
    :meth:`set_epoch` before each epoch.

    Args:
        intervals: ``{recording_id: Interval}`` to draw windows from.
        window_length: window length in seconds.
        seed: base seed.
    """

    def __init__(self, *, intervals: dict[str, Interval], window_length: float, seed: int = 0):
        self.intervals = intervals
        self.window_length = window_length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_indices(self) -> list[WindowIndex]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        base = RandomFixedWindowSampler(
            sampling_intervals=self.intervals, window_length=self.window_length, generator=gen
        )
        rng = np.random.default_rng([self.seed, self.epoch])
        windows = list(base)
        seeds = rng.integers(0, 2**62, size=len(windows))
        return [
            WindowIndex(w.recording_id, w.start, w.end, mask_seed=int(s))
            for w, s in zip(windows, seeds)
        ]

    def __iter__(self) -> Iterator[WindowIndex]:
        rank, world = _rank_world()
        yield from self._all_indices()[rank::world]

    def __len__(self) -> int:
        rank, world = _rank_world()
        n = len(RandomFixedWindowSampler(
            sampling_intervals=self.intervals, window_length=self.window_length
        ))
        return len(range(rank, n, world))


class EvalWindowSampler(torch.utils.data.Sampler):
    """Fixed, non-overlapping windows, each evaluated under every mode in ``modes``.

    The mask seed of a (recording, window start, mode) is a hash of those values and ``seed``,
    so every run and every model is scored on the same masked cells.

    Args:
        intervals: ``{recording_id: Interval}`` of the evaluated split.
        window_length: window length in seconds.
        modes: masking modes to evaluate each window under.
        seed: evaluation mask seed.
        max_windows: evaluate at most this many windows (evenly spread), all by default.
    """

    def __init__(
        self,
        *,
        intervals: dict[str, Interval],
        window_length: float,
        modes: Sequence[str],
        seed: int = 0,
        max_windows: int | None = None,
    ):
        windows = list(
            SequentialFixedWindowSampler(sampling_intervals=intervals, window_length=window_length)
        )
        if max_windows is not None and len(windows) > max_windows:
            keep = np.linspace(0, len(windows) - 1, max_windows).round().astype(int)
            windows = [windows[i] for i in keep]
        self.indices = [
            WindowIndex(
                w.recording_id,
                w.start,
                w.end,
                mask_seed=zlib.crc32(f"{seed}|{w.recording_id}|{w.start:.6f}|{mode}".encode()),
                mode=mode,
            )
            for w in windows
            for mode in modes
        ]

    def __iter__(self) -> Iterator[WindowIndex]:
        rank, world = _rank_world()
        yield from self.indices[rank::world]

    def __len__(self) -> int:
        rank, world = _rank_world()
        return len(range(rank, len(self.indices), world))
