"""Train / valid / test splits of a recording, shared by every converter.

Three recipes, all seeded and all returning ``{"train": Interval, "valid": Interval,
"test": Interval}`` (disjoint, sorted, adjacent pieces of one split merged):

- :func:`block_splits`: a continuous recording cut into blocks of ``block_length`` seconds,
  a seeded share of them valid, another test, the rest train (interleaved through the session).
- :func:`trial_splits`: whole trials drawn into the splits; the test split never cuts a trial.
- :func:`stimulus_splits`: whole images drawn into the splits, so every repeat of an image sits
  on one side; the time between presentations is cut into blocks as in :func:`block_splits`.

:func:`assign_splits` (items -> split index) and :func:`labelled_splits` (labelled pieces plus
blocks for the rest -> Intervals) are the two steps they share, for converters that draw labels
once across several sessions (the Allen converter draws the scenes' splits over all sessions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from temporaldata import Interval

from neurobridge.data.index import SPLITS

__all__ = [
    "REST",
    "assign_splits",
    "block_splits",
    "check_fractions",
    "labelled_splits",
    "stimulus_splits",
    "trial_splits",
]

Seed = int | Sequence[int]

#: What :func:`labelled_splits` does with the time outside the labelled pieces.
REST = ("blocks", "train", "none")

_TRAIN, _VALID, _TEST = (SPLITS.index(s) for s in ("train", "valid", "test"))


def check_fractions(valid_fraction: float, test_fraction: float) -> None:
    """Raise ``ValueError`` unless both fractions are numbers in [0, 1)."""
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1):
            raise ValueError(f"{name} must be in [0, 1), got {value!r}.")


def _counts(n: int, valid_fraction: float, test_fraction: float, at_least_one: bool):
    out = []
    for frac in (valid_fraction, test_fraction):
        k = round(frac * n)
        out.append(max(k, 1) if (frac > 0 and at_least_one) else k)
    return out[0], out[1]


def assign_splits(
    n: int, *, valid_fraction: float, test_fraction: float, seed: Seed, what: str = "item"
) -> np.ndarray:
    """Split index (into :data:`~neurobridge.data.index.SPLITS`) of each of ``n`` items.

    A seeded permutation puts ``round(test_fraction * n)`` items in test, then
    ``round(valid_fraction * n)`` in valid (at least one each where the fraction is above 0), the
    rest in train. Raises ``ValueError`` (naming ``what``) if no train item would be left.

    Returns:
        ``int64 [n]``.
    """
    check_fractions(valid_fraction, test_fraction)
    n_valid, n_test = _counts(n, valid_fraction, test_fraction, True)
    if n_valid + n_test >= n:
        raise ValueError(
            f"valid_fraction={valid_fraction} and test_fraction={test_fraction} leave no train "
            f"{what} ({n} {what}s: {n_valid} valid, {n_test} test); lower them."
        )
    order = np.random.default_rng(seed).permutation(n)
    labels = np.full(n, _TRAIN, dtype=np.int64)
    labels[order[:n_test]] = _TEST
    labels[order[n_test : n_test + n_valid]] = _VALID
    return labels


def _as_extent(domain) -> tuple[float, float]:
    if isinstance(domain, Interval):
        return float(domain.start[0]), float(domain.end[-1])
    start, end = domain
    return float(start), float(end)


def labelled_splits(
    domain: Interval | tuple[float, float],
    pieces: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    *,
    block_length: float,
    valid_fraction: float,
    test_fraction: float,
    seed: Seed,
    rest: str = "blocks",
) -> dict[str, Interval]:
    """Split ``domain``: labelled ``pieces`` keep their label, the time between them follows ``rest``.

    Args:
        domain: the recording's extent.
        pieces: ``(start [P], end [P], label [P])``, sorted and non-overlapping, label an index
            into ``SPLITS`` (``-1``: in no split).
        block_length: seconds per block of the unlabelled time (``rest="blocks"``).
        valid_fraction: share of the blocks drawn into valid (at least one where there are
            three blocks or more).
        test_fraction: the same for test.
        seed: seeds the draw of the blocks (``numpy.random.default_rng(seed)``).
        rest: ``"blocks"`` (cut into blocks and drawn; a gap shorter than a block goes to
            train), ``"train"`` (all of it train) or ``"none"`` (in no split).
    """
    if rest not in REST:
        raise ValueError(f"rest must be one of {REST}, got {rest!r}.")
    check_fractions(valid_fraction, test_fraction)
    if not (isinstance(block_length, (int, float)) and math.isfinite(block_length)
            and block_length > 0):
        raise ValueError(f"block_length must be a number > 0 (seconds), got {block_length!r}.")
    t0, t1 = _as_extent(domain)
    starts, ends, labels = pieces if pieces is not None else (np.zeros(0),) * 3
    out: list[list] = []  # [start, end, label]; label None = in no split
    blocks: list[int] = []  # indices into out of the blocks to draw
    cursor = t0

    def add_rest(a: float, b: float) -> None:
        n = int((b - a) // block_length) if rest == "blocks" else 0
        if n == 0:
            out.append([a, b, None if rest == "none" else _TRAIN])
            return
        edges = np.linspace(a, b, n + 1)
        edges[0], edges[-1] = a, b
        for k in range(n):
            blocks.append(len(out))
            out.append([edges[k], edges[k + 1], _TRAIN])

    for a, b, lab in zip(starts, ends, labels):
        if a > cursor:
            add_rest(cursor, float(a))
        out.append([float(a), float(b), int(lab) if lab >= 0 else None])
        cursor = float(b)
    if t1 > cursor:
        add_rest(cursor, t1)
    n_valid, n_test = _counts(len(blocks), valid_fraction, test_fraction, len(blocks) >= 3)
    n_valid = min(n_valid, len(blocks))
    n_test = min(n_test, max(len(blocks) - n_valid, 0))
    drawn = np.random.default_rng(seed).permutation(len(blocks))
    for rank, i in enumerate(drawn):
        if rank < n_test:
            out[blocks[i]][2] = _TEST
        elif rank < n_test + n_valid:
            out[blocks[i]][2] = _VALID

    result = {}
    for s, split in enumerate(SPLITS):
        lo, hi = [], []
        for a, b, lab in out:
            if lab != s or b <= a:
                continue
            if hi and abs(hi[-1] - a) < 1e-9:
                hi[-1] = b
            else:
                lo.append(a)
                hi.append(b)
        result[split] = Interval(start=np.asarray(lo, np.float64), end=np.asarray(hi, np.float64))
    return result


def block_splits(
    domain: Interval | tuple[float, float],
    *,
    block_length: float = 10.0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: Seed = 0,
) -> dict[str, Interval]:
    """Interleaved blocks of ``block_length`` seconds over the whole ``domain`` (see module doc)."""
    return labelled_splits(
        domain, None, block_length=block_length, valid_fraction=valid_fraction,
        test_fraction=test_fraction, seed=seed,
    )


def trial_splits(
    domain: Interval | tuple[float, float],
    trial_start: np.ndarray,
    trial_end: np.ndarray,
    *,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: Seed = 0,
    labels: np.ndarray | None = None,
    between_trials: str = "train",
) -> dict[str, Interval]:
    """Whole trials drawn into the splits (``labels`` given: used as they are).

    Args:
        trial_start: ``[n_trials]`` seconds, sorted.
        trial_end: ``[n_trials]`` seconds; trials must not overlap.
        labels: optional ``[n_trials]`` split indices (e.g. the file's own split; ``-1``: the
            trial is left out of every split).
        between_trials: the time between trials: ``"train"`` (recorded but outside any trial)
            or ``"none"`` (not recorded, e.g. trials laid out with gaps).
    """
    trial_start = np.asarray(trial_start, dtype=np.float64)
    trial_end = np.asarray(trial_end, dtype=np.float64)
    if trial_start.size == 0:
        raise ValueError("trial_splits needs at least one trial; use block_splits instead.")
    if np.any(trial_end <= trial_start) or np.any(trial_start[1:] < trial_end[:-1]):
        bad = int(np.flatnonzero((trial_end <= trial_start)
                                 | np.append(trial_start[1:] < trial_end[:-1], False))[0])
        raise ValueError(
            f"trial {bad} ({trial_start[bad]:.6g}-{trial_end[bad]:.6g} s) is empty or overlaps "
            "the next: trials must be sorted and non-overlapping."
        )
    if labels is None:
        labels = assign_splits(
            trial_start.size, valid_fraction=valid_fraction, test_fraction=test_fraction,
            seed=seed, what="trial",
        )
    rest = {"train": "train", "none": "none"}.get(between_trials)
    if rest is None:
        raise ValueError(f"between_trials must be 'train' or 'none', got {between_trials!r}.")
    return labelled_splits(
        domain, (trial_start, trial_end, np.asarray(labels)), block_length=1.0,
        valid_fraction=valid_fraction, test_fraction=test_fraction, seed=seed, rest=rest,
    )


def stimulus_splits(
    domain: Interval | tuple[float, float],
    start: np.ndarray,
    end: np.ndarray,
    image_ids: np.ndarray,
    *,
    block_length: float = 10.0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: Seed = 0,
) -> dict[str, Interval]:
    """Whole images drawn into the splits; presentations keep their image's split.

    Args:
        start: ``[P]`` onset (s) of each presentation, sorted.
        end: ``[P]`` offset (s); presentations must not overlap.
        image_ids: ``[P]`` the image shown; every repeat of an image lands in one split.
        block_length: the time between presentations is cut into blocks of this length and
            drawn like :func:`block_splits` (a gap shorter than a block goes to train).
    """
    image_ids = np.asarray(image_ids).astype(str)
    images = np.unique(image_ids)
    image_label = assign_splits(
        images.size, valid_fraction=valid_fraction, test_fraction=test_fraction,
        seed=[*np.atleast_1d(seed).tolist(), 0], what="image",
    )
    labels = image_label[np.searchsorted(images, image_ids)]
    return labelled_splits(
        domain, (np.asarray(start, np.float64), np.asarray(end, np.float64), labels),
        block_length=block_length, valid_fraction=valid_fraction, test_fraction=test_fraction,
        seed=[*np.atleast_1d(seed).tolist(), 1],
    )
