"""The one writer of recording files: every producer (generators, converters) goes through it.

:func:`make_recording` checks the pieces of one recording and lays them out in the format read
by :class:`~neurobridge.data.dataset.RecordingDataset` (see ``docs/data-format.md``);
:func:`write_recording` does the same and saves the file atomically. A check that fails raises
``ValueError`` naming the recording, the field and the fix, before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from temporaldata import ArrayDict, Data, Interval, IrregularTimeSeries, RegularTimeSeries

from neurobridge.data.index import SPLITS
from neurobridge.io import atomic_path

__all__ = ["STIMULUS_KEY", "make_recording", "save_recording", "times_inside", "write_recording"]

#: Field of the stimulus presentations (``data.stimulus_key`` reads it).
STIMULUS_KEY = "stimulus_presentations"

# splits may touch; overlaps below this (float round-off of shared edges) are not overlaps
_TOLERANCE = 1e-9


class _Checker:
    """Raises ``ValueError('<where>: <field> <problem>; <fix>')``."""

    def __init__(self, where: str):
        self.where = where

    def __call__(self, ok, field: str, problem: str, fix: str = "") -> None:
        if not ok:
            raise ValueError(f"{self.where}: {field} {problem}" + (f"; {fix}" if fix else "."))


def _interval(value, field: str, need: _Checker) -> Interval:
    if isinstance(value, Interval):
        start, end = np.asarray(value.start, np.float64), np.asarray(value.end, np.float64)
    else:
        pairs = np.asarray(value, dtype=np.float64).reshape(-1, 2)
        start, end = pairs[:, 0], pairs[:, 1]
    need(np.all(np.isfinite(start)) and np.all(np.isfinite(end)), field, "holds NaN or inf times")
    need(np.all(end > start), field, "holds an interval whose end is not after its start")
    need(np.all(start[1:] >= end[:-1] - _TOLERANCE), field,
         "is not sorted or has overlapping intervals", "sort it and merge overlaps")
    return Interval(start=start, end=end)


def times_inside(times: np.ndarray, domain: Interval) -> np.ndarray:
    """``bool [len(times)]``: inside one of the sorted intervals of ``domain`` (start <= t < end,
    up to float round-off)."""
    k = np.searchsorted(domain.start, times, side="right") - 1
    ok = k >= 0
    ok[ok] = times[ok] < domain.end[k[ok]] + _TOLERANCE
    return ok


def _check_within(interval: Interval, domain: Interval, field: str, need: _Checker) -> None:
    lo, hi = float(domain.start[0]), float(domain.end[-1])
    bad = (interval.start < lo - _TOLERANCE) | (interval.end > hi + _TOLERANCE)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        need(False, field, f"interval {i} ({interval.start[i]:.6g}-{interval.end[i]:.6g} s) lies "
             f"outside the domain ({lo:.6g}-{hi:.6g} s)", "clip it or widen the domain")


def _overlap(a: Interval, b: Interval) -> float | None:
    """Start time of the first overlap of two sorted interval sets, or None."""
    i = j = 0
    while i < len(a.start) and j < len(b.start):
        lo, hi = max(a.start[i], b.start[j]), min(a.end[i], b.end[j])
        if hi - lo > _TOLERANCE:
            return float(lo)
        if a.end[i] < b.end[j]:
            i += 1
        else:
            j += 1
    return None


def _spikes(spike_times, timestamps, unit_index, n_units: int, need: _Checker):
    given = (spike_times is not None, timestamps is not None or unit_index is not None)
    need(not all(given), "spikes", "given twice", "pass spike_times or (timestamps, unit_index)")
    if spike_times is not None:
        need(len(spike_times) == n_units, "spike_times",
             f"has {len(spike_times)} entries for {n_units} unit_ids", "one array per unit")
        arrays = [np.asarray(t, dtype=np.float64).ravel() for t in spike_times]
        counts = np.array([a.size for a in arrays], dtype=np.int64)
        timestamps = np.concatenate(arrays) if arrays else np.zeros(0)
        unit_index = np.repeat(np.arange(n_units, dtype=np.int64), counts)
        order = np.argsort(timestamps, kind="stable")
        return timestamps[order], unit_index[order]
    if not given[1]:
        return None
    need(timestamps is not None and unit_index is not None, "spikes",
         "needs both timestamps and unit_index")
    timestamps = np.asarray(timestamps, dtype=np.float64).ravel()
    unit_index = np.asarray(unit_index).ravel()
    need(timestamps.shape == unit_index.shape, "spikes.unit_index",
         f"has {unit_index.size} entries for {timestamps.size} timestamps")
    need(np.issubdtype(unit_index.dtype, np.integer), "spikes.unit_index",
         f"has dtype {unit_index.dtype}", "pass integer indices into unit_ids")
    need(np.all(np.diff(timestamps) >= 0), "spikes.timestamps", "is not sorted",
         "sort timestamps and unit_index together (np.argsort(timestamps, kind='stable'))")
    return timestamps, unit_index.astype(np.int64)


def make_recording(
    *,
    session_id: str,
    unit_ids: Sequence[str],
    domain: Interval | tuple[float, float],
    splits: Mapping[str, Interval | Sequence[tuple[float, float]]],
    spike_times: Sequence[np.ndarray] | None = None,
    timestamps: np.ndarray | None = None,
    unit_index: np.ndarray | None = None,
    brain_regions: Sequence[str] | None = None,
    stimuli: Interval | Mapping[str, np.ndarray] | None = None,
    values: RegularTimeSeries | None = None,
    value_key: str = "mua",
    true_rates: RegularTimeSeries | None = None,
    unit_id_prefix: str | None = None,
    subject_id: str | None = None,
    brainset: str = "neurobridge",
    session_fields: Mapping[str, object] | None = None,
    source: str | Path | None = None,
    **unit_fields: np.ndarray,
) -> Data:
    """Check one recording and lay it out as a ``temporaldata.Data``.

    Args:
        session_id: the recording's id (the file stem by convention).
        unit_ids: ``[N]`` unique ids, each ``"<prefix>/<unit>"`` with prefix ``unit_id_prefix``
            (default ``session_id``), so they stay unique across recordings.
        domain: the recorded extent, ``(start, end)`` seconds or an ``Interval``.
        splits: ``{"train", "valid", "test"}`` -> ``Interval`` or ``[(start, end), ...]``:
            inside the domain, pairwise disjoint; train must not be empty.
        spike_times: ``[N]`` arrays of spike times (s) per unit; or instead
        timestamps: ``[S]`` sorted spike times, with
        unit_index: ``[S]`` the index of each spike's unit into ``unit_ids``.
        brain_regions: ``[N]`` region of each unit (non-empty strings).
        stimuli: presentations with ``start``, ``end`` (s) and ``image_id`` (str) per row, plus
            any other ``[P]`` columns; stored as ``stimulus_presentations``.
        values: a continuous ``[T, N]`` series (field ``values``), stored as ``value_key``.
        true_rates: ground-truth rates (field ``rates``, Hz, ``[T, N]``).
        unit_id_prefix: what unit ids must start with (default ``session_id``).
        subject_id: ``subject.id`` (default the session id).
        brainset: ``brainset.id``.
        session_fields: further ``session`` metadata (strings, numbers).
        source: what the recording came from, for error messages (a file, a generator).
        **unit_fields: further ``[N]`` columns of the units table (quality metrics, ``heldout``).
    """
    need = _Checker(f"recording {session_id!r}" + (f" (from {source})" if source else ""))
    need(isinstance(session_id, str) and session_id and "/" not in session_id, "session_id",
         f"must be a non-empty string without '/', got {session_id!r}")
    ids = np.asarray(unit_ids).astype(str)
    n_units = ids.size
    need(ids.ndim == 1 and n_units > 0, "unit_ids", "is empty", "a recording needs units")
    uniq, counts = np.unique(ids, return_counts=True)
    need(uniq.size == n_units, "unit_ids", f"repeats {uniq[counts > 1][:3].tolist()}",
         "give every unit its own id")
    prefix = f"{unit_id_prefix or session_id}/"
    bad = [u for u in ids if not u.startswith(prefix) or u == prefix]
    need(not bad, "unit_ids", f"{bad[:3]} do not start with {prefix!r}",
         "prefix every unit id with the session id so ids are unique across recordings")

    dom = _interval(domain, "domain", need)
    split_intervals = {}
    need(set(splits) == set(SPLITS), "splits", f"has keys {sorted(splits)}",
         f"give exactly {list(SPLITS)} (an empty list for an unused split)")
    for split in SPLITS:
        value = splits[split]
        interval = (_interval(value, f"splits[{split!r}]", need) if len(value)
                    else Interval(np.zeros(0), np.zeros(0)))
        _check_within(interval, dom, f"splits[{split!r}]", need)
        split_intervals[split] = interval
    need(len(split_intervals["train"]) > 0, "splits['train']", "is empty",
         "a recording needs training time")
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            t = _overlap(split_intervals[a], split_intervals[b])
            need(t is None, f"splits[{a!r}] and splits[{b!r}]", f"overlap at {t} s",
                 "the splits must be disjoint")

    fields: dict = {
        "brainset": Data(id=brainset),
        "subject": Data(id=subject_id or session_id),
        "session": Data(id=session_id, **dict(session_fields or {})),
        "domain": dom,
    }
    columns = {"id": ids}
    if brain_regions is not None:
        regions = np.asarray(brain_regions).astype(str)
        need(regions.shape == (n_units,), "brain_regions",
             f"has shape {regions.shape} for {n_units} units")
        need(np.all(np.char.str_len(regions) > 0), "brain_regions", "holds empty names",
             "name every unit's region (or leave brain_regions out)")
        columns["brain_region"] = regions
    for name, column in unit_fields.items():
        column = np.asarray(column)
        need(column.shape[:1] == (n_units,), f"units.{name}",
             f"has {column.shape[:1]} rows for {n_units} units")
        columns[name] = column
    fields["units"] = ArrayDict(**columns)

    spikes = _spikes(spike_times, timestamps, unit_index, n_units, need)
    need(spikes is not None or values is not None, "spikes", "and values are both missing",
         "a recording needs spikes or a value series")
    if spikes is not None:
        times, index = spikes
        need(np.all(np.isfinite(times)), "spikes.timestamps", "holds NaN or inf times")
        need(index.size == 0 or (index.min() >= 0 and index.max() < n_units),
             "spikes.unit_index", f"points outside the {n_units} units")
        outside = ~times_inside(times, dom)
        need(not outside.any(), "spikes.timestamps",
             f"has {int(outside.sum())} spikes outside the domain "
             f"(first at {times[outside][0] if outside.any() else 0:.6g} s)",
             "drop them or widen the domain")
        fields["spikes"] = IrregularTimeSeries(timestamps=times, unit_index=index, domain=dom)
    for key, series, field, what in ((value_key, values, "values", "values"),
                                     ("true_rates", true_rates, "rates", "true_rates")):
        if series is None:
            continue
        array = getattr(series, field, None)
        need(array is not None, what, f"has no field {field!r}")
        need(array.ndim == 2 and array.shape[1] == n_units, f"{what}.{field}",
             f"has shape {array.shape}, expected [time, {n_units} units]")
        need(np.all(np.isfinite(array)), f"{what}.{field}", "holds NaN or inf",
             "fill or drop the missing samples")
        fields[key] = series

    if stimuli is not None:
        table = stimuli if isinstance(stimuli, Interval) else None
        if table is None:
            need("start" in stimuli and "end" in stimuli, "stimuli", "needs start and end")
            extra = {k: np.asarray(v) for k, v in stimuli.items() if k not in ("start", "end")}
            table = Interval(start=np.asarray(stimuli["start"], np.float64),
                             end=np.asarray(stimuli["end"], np.float64), **extra)
        need("image_id" in table.keys(), "stimuli", "has no image_id column",
             "give the id (path under the image folder) of the image shown in each row")
        image_id = np.asarray(table.image_id).astype(str)
        need(np.all(np.char.str_len(image_id) > 0), "stimuli.image_id", "holds empty ids")
        need(np.all(table.end > table.start), "stimuli", "has a presentation that ends before "
             "it starts")
        _check_within(table, dom, "stimuli", need)
        fields[STIMULUS_KEY] = table

    data = Data(**fields)
    for split in SPLITS:
        setattr(data, f"{split}_domain", split_intervals[split])
    return data


def save_recording(data: Data, path: str | Path) -> Path:
    """Save a recording made by :func:`make_recording` atomically to ``path``; return ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        data.save(tmp)
    return path


def write_recording(path: str | Path, **recording) -> Path:
    """Check a recording (the arguments of :func:`make_recording`) and save it to ``path``.

    Returns:
        ``path``.
    """
    return save_recording(make_recording(**recording), path)
