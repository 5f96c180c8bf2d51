"""Stimulus-locked windows for visual alignment.

A recording that saw images stores its presentations as an Interval (default name
``stimulus_presentations``) with one row per presentation::

    stimulus_presentations.start      float64 [P], onset in seconds, sorted
    stimulus_presentations.end        float64 [P], offset in seconds (> start)
    stimulus_presentations.image_id   str [P], the image's id in the image source (for an
                                      image folder: its path relative to the folder, e.g.
                                      "aardvark/aardvark_01b.jpg" as THINGS is laid out)

Each presentation gives one window ``[onset - pre, onset + post]``. Splits follow the
recordings' ``train/valid/test_domain``: a window belongs to the split whose domain contains it
whole. Repeated presentations of one image are kept on one side of the split: an image shown in
any test window is a test image (then valid, then train), and its presentations in windows of
another split are dropped (counted in :class:`StimulusWindows.dropped`), so no image is seen in
training and scored at test.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from temporaldata import Data, Interval

from neurobridge.data.index import SPLITS, StimulusWindowIndex
from neurobridge.data.samplers import rank_shard
from neurobridge.data.tokenizer import MaskedTokenizer

__all__ = [
    "STIMULUS_KEY",
    "StimulusWindows",
    "read_presentations",
    "stimulus_windows",
    "StimulusWindowSampler",
    "StimulusTokenizer",
    "check_unit_dropout",
]

STIMULUS_KEY = "stimulus_presentations"


def read_presentations(data: Data, path: str | Path, key: str = STIMULUS_KEY) -> dict:
    """Checked ``start``, ``end`` (float64 [P]) and ``image_id`` (str [P]) of one recording.

    ``data`` should be an eager copy (``Dataset.get_recording``): temporaldata 0.1.6 fails when a
    lazily loaded Interval is read and then sliced.
    """
    if key not in data.keys():
        raise ValueError(
            f"{path}: no '{key}' Interval. Alignment needs the stimulus presentations "
            f"({key}.start, .end, .image_id); set data.stimulus_key if they have another name."
        )
    table = getattr(data, key)
    if "image_id" not in table.keys():
        raise ValueError(
            f"{path}: '{key}' has no 'image_id' field. Store one image id per presentation "
            "(the path relative to the image folder, or the key of the HDF5 image store)."
        )
    start = np.asarray(table.start, dtype=np.float64)
    end = np.asarray(table.end, dtype=np.float64)
    image_id = np.asarray(table.image_id).astype(str)
    if not (np.isfinite(start).all() and np.isfinite(end).all()):
        raise ValueError(f"{path}: {key}.start/end has NaN/Inf values. Drop those presentations.")
    if np.any(end <= start):
        raise ValueError(f"{path}: {key} has presentations with end <= start.")
    if len(start) > 1 and np.any(np.diff(start) < 0):
        raise ValueError(f"{path}: {key}.start is not sorted. Sort the presentations by onset.")
    return {"start": start, "end": end, "image_id": image_id}


@dataclass
class StimulusWindows:
    """The stimulus-locked windows of every split and what was left out.

    Attributes:
        windows: ``{split: [StimulusWindowIndex]}`` in recording and onset order.
        image_ids: ``{split: sorted distinct image ids}``, disjoint across splits.
        dropped: ``{"outside_split": n, "image_in_other_split": n}`` presentations left out.
    """

    windows: dict[str, list[StimulusWindowIndex]]
    image_ids: dict[str, list[str]]
    dropped: dict[str, int] = field(default_factory=dict)


def _split_of(start: np.ndarray, end: np.ndarray, domains: Mapping[str, Interval]) -> np.ndarray:
    """Index into SPLITS of the domain that contains each ``[start, end]`` whole, else -1."""
    out = np.full(len(start), -1, dtype=np.int64)
    for s, split in enumerate(SPLITS):
        dom = domains[split]
        ds, de = np.asarray(dom.start), np.asarray(dom.end)
        inside = (ds[None, :] <= start[:, None] + 1e-9) & (end[:, None] <= de[None, :] + 1e-9)
        out[inside.any(axis=1)] = s
    return out


def stimulus_windows(
    presentations: Mapping[str, dict],
    domains: Mapping[str, Mapping[str, Interval]],
    *,
    pre: float,
    post: float,
) -> StimulusWindows:
    """Assign each presentation's window ``[onset - pre, onset + post]`` to a split.

    Args:
        presentations: ``{recording_id: read_presentations(...)}``.
        domains: ``{split: {recording_id: Interval}}``.
        pre, post: seconds of the window before and after onset.
    """
    rows = []  # (recording_id, onset, image_id, split index)
    dropped = {"outside_split": 0, "image_in_other_split": 0}
    for rid, table in presentations.items():
        onset = table["start"]
        split = _split_of(onset - pre, onset + post, {s: domains[s][rid] for s in SPLITS})
        dropped["outside_split"] += int((split < 0).sum())
        rows.extend(
            (rid, float(t), str(i), int(s))
            for t, i, s in zip(onset, table["image_id"], split)
            if s >= 0
        )
    # an image belongs to the latest split it appears in: test, then valid, then train
    image_split: dict[str, int] = {}
    for _, _, image, s in rows:
        image_split[image] = max(s, image_split.get(image, -1))
    windows: dict[str, list[StimulusWindowIndex]] = {s: [] for s in SPLITS}
    for rid, onset, image, s in rows:
        if image_split[image] != s:
            dropped["image_in_other_split"] += 1
            continue
        windows[SPLITS[s]].append(
            StimulusWindowIndex(rid, onset - pre, onset + post, image_id=image, onset=onset)
        )
    image_ids = {
        split: sorted({w.image_id for w in windows[split]}) for split in SPLITS
    }
    return StimulusWindows(windows=windows, image_ids=image_ids, dropped=dropped)


def check_unit_dropout(unit_dropout: float) -> None:
    """Raises ``ValueError`` unless ``unit_dropout`` is a fraction in ``[0, 1)``."""
    if not 0.0 <= unit_dropout < 1.0:
        raise ValueError(f"data.unit_dropout must be in [0, 1) (the largest fraction of a "
                         f"training window's units to hide; 0 turns it off), got {unit_dropout}.")


class StimulusWindowSampler(torch.utils.data.Sampler):
    """Yields stimulus-locked windows, shuffled per epoch (training) or in order (evaluation).

    Training windows get a fresh mask seed per epoch (for the masked view of ``finetune``) and,
    with ``unit_dropout``, a fraction of units to hide drawn uniformly from
    ``[0, unit_dropout]``; the order, seeds and fractions depend only on ``(seed, epoch)``.
    Shards by DDP rank like the other samplers (:func:`~neurobridge.data.samplers.rank_shard`; training shards are even) unless
    ``shard=False``.

    Args:
        windows: the split's windows.
        shuffle: shuffle each epoch (training) or keep the order (evaluation).
        seed: base seed of the order and mask seeds.
        max_queries: cap on decoded masked cells of the masked view.
        shard: yield this DDP rank's share (``False``: every window on every rank, for
            whole-split passes such as the linear probe).
        unit_dropout: largest fraction of units hidden from the encoder in a training window
            (an augmentation; needs ``shuffle``).
    """

    def __init__(
        self,
        windows: list[StimulusWindowIndex],
        *,
        shuffle: bool,
        seed: int = 0,
        max_queries: int | None = None,
        shard: bool = True,
        unit_dropout: float = 0.0,
    ):
        check_unit_dropout(unit_dropout)
        if unit_dropout and not shuffle:
            raise ValueError("unit_dropout is a training augmentation: evaluation windows "
                             "(shuffle=False) keep every unit.")
        if not windows:
            raise ValueError(
                "No stimulus-locked window in this split: check that the presentations lie "
                "inside the split's domain with the window's pre/post margins."
            )
        self.windows = windows
        self.shuffle = shuffle
        self.seed = seed
        self.max_queries = max_queries
        self.shard = shard
        self.unit_dropout = float(unit_dropout)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_indices(self) -> list[StimulusWindowIndex]:
        rng = np.random.default_rng([self.seed, self.epoch if self.shuffle else 0])
        order = rng.permutation(len(self.windows)) if self.shuffle else range(len(self.windows))
        seeds = rng.integers(0, 2**62, size=len(self.windows))
        dropout = rng.uniform(0.0, self.unit_dropout, size=len(self.windows))
        return [
            StimulusWindowIndex(
                w.recording_id, w.start, w.end, mask_seed=int(seeds[k]),
                max_queries=self.max_queries, image_id=w.image_id, onset=w.onset,
                unit_dropout=float(dropout[k]),
            )
            for k, w in zip(range(len(self.windows)), (self.windows[i] for i in order))
        ]

    def __iter__(self) -> Iterator[StimulusWindowIndex]:
        indices = self._all_indices()
        yield from rank_shard(indices, even=self.shuffle) if self.shard else indices

    def __len__(self) -> int:
        n = len(self.windows)
        return len(rank_shard(range(n), even=self.shuffle)) if self.shard else n


class StimulusTokenizer:
    """Model inputs of a stimulus-locked window: the whole window (less the units that the
    index's ``unit_dropout`` hides) and its image.

    Args:
        tokenizer: the masked tokenizer of the encoder (vocabularies, grid, latents).
        image_index: ``{image_id: row}`` of the image table (the CLIP embedding matrix).
        masked_view: also return a masked sample of the window under ``"masked"`` (the
            anti-forgetting reconstruction loss of ``finetune``).
        pixels: ``image_id -> float32 [3, H, W] in [0, 1]``; when given, the image itself is
            returned under ``"pixels"`` (diffusion adapter and reconstruction).

    Returns (per window): ``encoder_inputs``, ``image_index`` (int), ``session_index``,
    ``onset`` (absolute seconds), optionally ``masked`` and ``pixels``.
    """

    def __init__(
        self,
        tokenizer: MaskedTokenizer,
        image_index: Mapping[str, int],
        *,
        masked_view: bool = False,
        pixels=None,
    ):
        self.tokenizer = tokenizer
        self.image_index = dict(image_index)
        self.masked_view = masked_view
        self.pixels = pixels

    def __call__(self, data: Data, index: StimulusWindowIndex) -> dict:
        try:
            row = self.image_index[index.image_id]
        except KeyError:
            raise KeyError(
                f"Image {index.image_id!r} (session {data.session.id!r}, onset "
                f"{index.onset:.3f} s) is not in the image table; re-embed the image source."
            ) from None
        out = {
            "encoder_inputs": self.tokenizer.encoder_tokens(data, self._dropout_mask(data, index)),
            "image_index": row,
            "session_index": self.tokenizer.session_vocab[str(data.session.id)],
            "onset": float(index.onset),
        }
        if self.masked_view:
            out["masked"] = self.tokenizer(data, index)
        if self.pixels is not None:
            out["pixels"] = self.pixels(index.image_id)
        return out

    def _dropout_mask(self, data: Data, index: StimulusWindowIndex) -> np.ndarray | None:
        """``[n_bins, n_units]``, True on every bin of the ``floor(unit_dropout * n_units)``
        units drawn (with ``mask_seed``) to be hidden; None when none is."""
        n_units = len(data.units.id)
        n_hidden = int(index.unit_dropout * n_units)
        if n_hidden == 0:
            return None
        rng = np.random.default_rng([index.mask_seed, 1])  # not the masked view's stream
        mask = np.zeros((self.tokenizer.n_bins, n_units), dtype=bool)
        mask[:, rng.choice(n_units, size=n_hidden, replace=False)] = True
        return mask


def presentations_by_split(data: Data) -> dict[str, tuple[np.ndarray, float]]:
    """Per split: a ``[n_presentations]`` mask of the presentations whose onset lies in the
    split's domain, and the domain's total length in seconds (converter summaries)."""
    onset = np.asarray(data.stimulus_presentations.start)
    out = {}
    for split in SPLITS:
        dom = getattr(data, f"{split}_domain")
        start, end = np.asarray(dom.start), np.asarray(dom.end)
        inside = ((start[None] <= onset[:, None]) & (onset[:, None] < end[None])).any(axis=1)
        out[split] = (inside, float(np.sum(end - start)))
    return out
