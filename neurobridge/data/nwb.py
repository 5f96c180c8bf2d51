"""Any NWB ecephys session (e.g. from DANDI) to a NeuroBridge recording, with pynwb.

What is read from each NWB file::

    units                      one row per sorted unit; the row id names the unit
        spike_times            ragged column: spike times (s)
        obs_intervals          optional ragged [k, 2]: when the unit was observed; spikes must
                               lie inside, and the splits keep to the time every kept unit was
                               observed
        <region column>        optional: location / brain_area / region (or --region-column)
        electrodes             optional ragged region into 'electrodes': the region falls back
                               to the 'location' of the unit's first electrode
        heldout                optional bool: NLB's held-out units, kept as units.heldout
        <filter columns>       any column a --filter names (quality, snr, ...)
    trials                     start_time, stop_time (--split trials, --domain-from trials)
    epochs                     start_time, stop_time (--domain-from epochs)
    intervals/<name>           any TimeIntervals table of stimulus presentations
                               (--stimulus-table NAME --stimulus-column COL)

One ``<session_id>.h5`` per NWB file is written through :func:`~neurobridge.data.write_recording`
(session id from ``session_id`` / ``identifier`` or the override, unit ids
``"<session_id>/<units row id>"``); the kept-unit record (units in the table, dropped per
filter, regions unknown, spikes outside the domain) is stored as ``session.unit_selection``
(JSON) and returned. The Allen converter (:mod:`neurobridge.datasets.allen`) shares its readers.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from temporaldata import Interval

from neurobridge.data.images import IMAGE_FOLDER
from neurobridge.data.index import SPLITS
from neurobridge.data.splits import block_splits, check_fractions, stimulus_splits, trial_splits
from neurobridge.data.writer import times_inside, write_recording

__all__ = [
    "DOMAIN_FROM",
    "REGION_COLUMNS",
    "SPLIT_MODES",
    "UNKNOWN_REGION",
    "UnitFilter",
    "convert_nwb",
    "find_nwb_files",
    "open_nwb",
    "read_spike_times",
]

logger = logging.getLogger(__name__)

#: Units columns tried, in order, for each unit's region.
REGION_COLUMNS = ("location", "brain_area", "region")
#: Region of a unit whose region is missing or empty.
UNKNOWN_REGION = "unknown"
#: Where the recording's domain comes from.
DOMAIN_FROM = ("extent", "trials", "epochs")
#: How the recording is split.
SPLIT_MODES = ("blocks", "trials")
#: ``--trial-split-column`` values -> split (NLB's "val" trials are what its local evaluation
#: scores, so they become the test split; "none" trials are left out).
NLB_TRIAL_SPLITS = {"train": "train", "val": "test", "valid": "valid", "test": "test"}

_OPS = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le,
        ">": operator.gt, "<": operator.lt}


def _pynwb():
    try:
        import pynwb
    except ImportError as err:
        raise ImportError(
            "Reading NWB files needs pynwb: pip install pynwb (or pip install "
            "'neurobridge[allen]')."
        ) from err
    return pynwb


# --------------------------------------------------------------------------------------
# readers shared with the Allen converter


def strings(values) -> np.ndarray:
    """``values`` as a str array (bytes decoded as UTF-8)."""
    return np.array(
        [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()],
        dtype=str,
    )


def numbers(values, path: Path, where: str) -> np.ndarray:
    """``values`` as float64, or ``ValueError`` naming ``path`` and ``where``."""
    values = np.asarray(values).ravel()
    if values.dtype.kind in "SO":
        values = strings(values)
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {where} must hold numbers, got e.g. {values[:3].tolist()}.") from None


def whole(values, path: Path, where: str) -> np.ndarray:
    """``values`` as int64 (whole floats accepted), or ``ValueError`` naming the field."""
    values = np.asarray(values).ravel()
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    values = numbers(values, path, where)
    bad = ~(np.isfinite(values) & (values == np.round(values)))
    if bad.any():
        raise ValueError(
            f"{path}: {where} must hold whole numbers, got {values[bad][:3].tolist()} at rows "
            f"{np.flatnonzero(bad)[:3].tolist()}."
        )
    return values.astype(np.int64)


def column(table, name: str, path: Path, table_name: str, content: str, hint: str = "") -> np.ndarray:
    """Column ``name`` of an NWB table, or ``ValueError`` naming the file, table and column."""
    if name not in table.colnames:
        raise ValueError(
            f"{path}: the {table_name} table has no column '{name}' ({content})."
            + (f" {hint}" if hint else "")
        )
    return np.asarray(table[name].data[:])


@contextmanager
def open_nwb(path: str | Path) -> Iterator:
    """The NWBFile of ``path``, open for lazy reads inside the block."""
    pynwb = _pynwb()
    path = Path(path)

    def unreadable(err: Exception) -> ValueError:
        return ValueError(f"{path} is not a readable NWB file ({type(err).__name__}: {err}).")

    try:  # pynwb, hdmf and h5py raise many kinds of errors on a bad file
        io = pynwb.NWBHDF5IO(str(path), mode="r", load_namespaces=True)
    except Exception as err:
        raise unreadable(err) from None
    with io:
        try:
            nwbfile = io.read()
        except Exception as err:
            raise unreadable(err) from None
        yield nwbfile


def units_table(nwbfile, path: Path, hint: str = ""):
    """The file's units table, or ``ValueError``."""
    units = nwbfile.units
    if units is None:
        raise ValueError(
            f"{path}: no units table ('units': one row per sorted unit with a 'spike_times' "
            "column). Spike-sorted ecephys NWB files store their units there." +
            (f" {hint}" if hint else "")
        )
    return units


def _ragged(table, name: str, path: Path, table_name: str = "units"):
    """``(bounds [rows + 1], target)`` of the ragged column ``name``."""
    col = table[name]
    if not hasattr(col, "target"):
        raise ValueError(
            f"{path}: {table_name} column '{name}' is not ragged (a VectorIndex over the "
            "concatenated values)."
        )
    bounds = np.concatenate([[0], np.asarray(col.data[:], dtype=np.int64)])
    if np.any(np.diff(bounds) < 0) or bounds[-1] > len(col.target.data):
        raise ValueError(f"{path}: {table_name} column '{name}_index' is not a valid index.")
    return bounds, col.target


def read_spike_times(nwbfile, rows: np.ndarray, path: str | Path, hint: str = "") -> list[np.ndarray]:
    """Spike times (float64, sorted) of the units at ``rows``, read one unit at a time."""
    path = Path(path)
    units = units_table(nwbfile, path, hint)
    if "spike_times" not in units.colnames:
        raise ValueError(
            f"{path}: the units table has no column 'spike_times' (the spike times of each "
            "unit, a ragged column)." + (f" {hint}" if hint else "")
        )
    bounds, target = _ragged(units, "spike_times", path)
    out = []
    for row in rows:
        times = np.asarray(target.data[bounds[row] : bounds[row + 1]], dtype=np.float64)
        if not np.isfinite(times).all():
            raise ValueError(f"{path}: units.spike_times of row {row} has NaN/Inf values.")
        out.append(np.sort(times))
    return out


def interval_extent(nwbfile) -> tuple[float, float]:
    """Earliest start and latest stop over all intervals tables (NaN-free), or (inf, -inf)."""
    lo, hi = math.inf, -math.inf
    for table in (nwbfile.intervals or {}).values():
        for name, pick in (("start_time", np.nanmin), ("stop_time", np.nanmax)):
            if name in table.colnames and len(table):
                values = np.asarray(table[name].data[:], dtype=np.float64)
                if np.isfinite(values).any():
                    v = float(pick(values))
                    lo, hi = (min(lo, v), hi) if name == "start_time" else (lo, max(hi, v))
    return lo, hi


def find_nwb_files(
    sources: str | Path | Sequence[str | Path],
    *,
    patterns: Sequence[str] = ("**/*.nwb",),
    what: str = "NWB file",
    hint: str = "",
) -> list[Path]:
    """The ``.nwb`` files of ``sources``: files, or folders searched with the first of
    ``patterns`` that matches (by default recursively, as DANDI lays them out:
    ``sub-<subject>/sub-<subject>_ses-<session>.nwb``)."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    found: list[Path] = []
    for source in map(Path, sources):
        if source.is_file():
            found.append(source)
        elif source.is_dir():
            files = next((f for f in (sorted(source.glob(p)) for p in patterns) if f), [])
            if not files:
                raise FileNotFoundError(
                    f"No NWB file in {source} (looked for {' and '.join(patterns)})."
                    + (f" {hint}" if hint else "")
                )
            found.extend(files)
        else:
            raise FileNotFoundError(f"{what} or folder {source} not found.")
    if not found:
        raise FileNotFoundError(f"No {what} or folder given.")
    return found


# --------------------------------------------------------------------------------------
# unit filters


@dataclass(frozen=True)
class UnitFilter:
    """Keep the units whose ``column`` compares ``op`` to ``value`` (NaN fails).

    ``UnitFilter.parse("quality == good")``, ``UnitFilter.parse("snr >= 2")``.
    """

    column: str
    op: str
    value: float | str

    @classmethod
    def parse(cls, text: str) -> UnitFilter:
        match = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*(==|!=|>=|<=|>|<)\s*(.+?)\s*", text)
        if not match:
            raise ValueError(
                f"Unit filter {text!r} is not '<column> <op> <value>' with op one of "
                f"{list(_OPS)}, e.g. 'quality == good' or 'snr >= 2'."
            )
        name, op, raw = match.groups()
        raw = raw.strip("'\"")
        try:
            value: float | str = float(raw)
        except ValueError:
            value = raw
        if isinstance(value, str) and op not in ("==", "!="):
            raise ValueError(f"Unit filter {text!r} compares text with {op}; use == or !=.")
        return cls(name, op, value)

    def __str__(self) -> str:
        value = f"{self.value:g}" if isinstance(self.value, float) else self.value
        return f"{self.column} {self.op} {value}"

    def keep(self, units, path: Path) -> np.ndarray:
        """``bool [rows]``: the rows of the units table that pass."""
        values = column(units, self.column, path, "units", f"asked for by the filter '{self}'")
        if isinstance(self.value, float):
            if values.dtype.kind == "b":
                values = values.astype(np.float64)
            values = numbers(values, path, f"units.{self.column}")
            with np.errstate(invalid="ignore"):
                return _OPS[self.op](values, self.value) & np.isfinite(values)
        return _OPS[self.op](strings(values), self.value)


# --------------------------------------------------------------------------------------
# conversion


def _session_id(nwbfile, path: Path, override: str | None) -> str:
    raw = override or getattr(nwbfile, "session_id", None) or nwbfile.identifier or path.stem
    sid = re.sub(r"[^A-Za-z0-9_-]+", "_", str(raw)).strip("_")
    if not sid:
        raise ValueError(f"{path}: cannot make a session id from {raw!r}; pass session_id=.")
    return sid


def _regions(nwbfile, units, path: Path, region_column: str | None) -> tuple[np.ndarray, str]:
    """``(region per units row, where it came from)``."""
    n = len(units)
    if region_column is not None:
        values = column(units, region_column, path, "units",
                        "named by region_column / --region-column")
        return strings(values), f"units.{region_column}"
    for name in REGION_COLUMNS:
        if name in units.colnames:
            return strings(units[name].data[:]), f"units.{name}"
    if "electrodes" in units.colnames:
        bounds, region = _ragged(units, "electrodes", path)
        table = getattr(region, "table", None)
        if table is None or "location" not in table.colnames:
            raise ValueError(
                f"{path}: units.electrodes points at a table without a 'location' column; pass "
                "region_column= (--region-column) naming a units column with each unit's region."
            )
        rows = np.asarray(region.data[:], dtype=np.int64)
        if np.any(np.diff(bounds) == 0):
            k = int(np.flatnonzero(np.diff(bounds) == 0)[0])
            raise ValueError(f"{path}: units.electrodes of units row {k} is empty; every unit "
                             "needs an electrode to take its region from.")
        first = rows[bounds[:-1]]
        n_rows = len(table)
        bad = (first < 0) | (first >= n_rows)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{path}: units.electrodes of units row {k} points at electrodes row "
                f"{int(first[k])}, which does not exist (the electrodes table has {n_rows} "
                "rows). Fix the file's units -> electrodes references."
            )
        location = strings(table["location"].data[:])
        return location[first], "electrodes.location"
    warnings.warn(
        f"{path}: no region for the units (no units column {list(REGION_COLUMNS)} and no "
        f"units.electrodes); all {n} units are in one region '{UNKNOWN_REGION}', so "
        "inter-region masking falls back to neuron masking.",
        stacklevel=3,
    )
    return np.full(n, UNKNOWN_REGION), "none"


def _obs_intervals(units, rows: np.ndarray, path: Path) -> list[Interval] | None:
    if "obs_intervals" not in units.colnames:
        return None
    bounds, target = _ragged(units, "obs_intervals", path)
    pairs = np.asarray(target.data[:], dtype=np.float64).reshape(-1, 2)
    out = []
    for row in rows:
        p = pairs[bounds[row] : bounds[row + 1]]
        p = p[np.argsort(p[:, 0])]
        out.append(Interval(start=p[:, 0].copy(), end=p[:, 1].copy()))
    return out


def _table_times(table, path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    start = numbers(column(table, "start_time", path, name, "s"), path, f"{name}.start_time")
    stop = numbers(column(table, "stop_time", path, name, "s"), path, f"{name}.stop_time")
    bad = ~(np.isfinite(start) & np.isfinite(stop) & (stop > start))
    if bad.any():
        raise ValueError(
            f"{path}: {name} has rows with NaN times or stop_time <= start_time (rows "
            f"{np.flatnonzero(bad)[:3].tolist()})."
        )
    return start, stop


def _stimuli(nwbfile, path: Path, table_name: str, column_name: str | None):
    intervals = nwbfile.intervals or {}
    if table_name not in intervals:
        raise ValueError(
            f"{path}: no intervals table '{table_name}' (tables: {sorted(intervals) or 'none'}); "
            "set stimulus_table= (--stimulus-table) to one of them."
        )
    table = intervals[table_name]
    where = f"intervals/{table_name}"
    if column_name is None:
        raise ValueError(f"{path}: stimulus_table={table_name!r} needs stimulus_column= "
                         "(--stimulus-column): the column naming the image of each row.")
    start, stop = _table_times(table, path, where)
    raw = column(table, column_name, path, where, "the image shown")
    if raw.dtype.kind == "f" and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw)):
        raw = raw.astype(np.int64)
    image_id = strings(raw)
    order = np.argsort(start, kind="stable")
    return start[order], stop[order], image_id[order]


def _intersect(intervals: list[Interval]) -> Interval:
    out = intervals[0]
    for iv in intervals[1:]:
        out = out & iv
    return out


def _restrict(splits: dict[str, Interval], observed: Interval) -> dict[str, Interval]:
    out = {}
    for split, iv in splits.items():
        both = iv & observed if len(iv) else iv
        keep = np.asarray(both.end) > np.asarray(both.start)
        out[split] = Interval(start=np.asarray(both.start)[keep], end=np.asarray(both.end)[keep])
    return out


def _trial_labels(trials, path: Path, column_name: str, valid_fraction: float, seed) -> np.ndarray:
    values = strings(column(trials, column_name, path, "trials",
                            "the split of each trial: train / val / test / none"))
    labels = np.full(values.size, -1, dtype=np.int64)
    for name, split in NLB_TRIAL_SPLITS.items():
        labels[values == name] = SPLITS.index(split)
    unknown = sorted(set(values[labels < 0].tolist()) - {"none"})
    if unknown:
        raise ValueError(f"{path}: trials.{column_name} holds {unknown}; expected values among "
                         f"{sorted(NLB_TRIAL_SPLITS)} and 'none'.")
    train = np.flatnonzero(labels == SPLITS.index("train"))
    n_valid = round(valid_fraction * train.size)
    if n_valid:
        pick = np.random.default_rng(seed).choice(train, n_valid, replace=False)
        labels[pick] = SPLITS.index("valid")
    return labels


def _convert_one(
    path: Path, out_dir: Path, *, session_id, region_column, domain_from, split, block_length,
    valid_fraction, test_fraction, seed, stimulus_table, stimulus_column, filters,
    trial_split_column, image_folder,
) -> tuple[Path, dict]:
    with open_nwb(path) as nwbfile:
        sid = _session_id(nwbfile, path, session_id)
        units = units_table(nwbfile, path)
        if "spike_times" not in units.colnames:
            raise ValueError(f"{path}: the units table has no column 'spike_times' (the spike "
                             "times of each unit, a ragged column).")
        n = len(units)
        if n == 0:
            raise ValueError(f"{path}: the units table has no rows.")
        unit_row_ids = strings(units.id.data[:])
        regions, region_source = _regions(nwbfile, units, path, region_column)
        keep = np.ones(n, dtype=bool)
        dropped = {}
        for f in filters:
            passed = f.keep(units, path)
            dropped[f"not {f}"] = int((keep & ~passed).sum())
            keep &= passed
        bounds, _ = _ragged(units, "spike_times", path)
        empty = np.diff(bounds) == 0
        if empty.all():
            raise ValueError(f"{path}: units.spike_times is empty for every unit; the file holds "
                             "no spikes to convert.")
        dropped["no spikes"] = int((keep & empty).sum())
        keep &= ~empty
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            raise ValueError(f"{path}: no unit passes the filters ({dropped}); loosen them.")
        spike_times = read_spike_times(nwbfile, rows, path)
        observed = _obs_intervals(units, rows, path)
        if observed is not None:
            for row, times, obs in zip(rows, spike_times, observed):
                outside = ~times_inside(times, obs)
                if outside.any():
                    raise ValueError(
                        f"{path}: units.spike_times of unit {unit_row_ids[row]} has "
                        f"{int(outside.sum())} spikes outside its units.obs_intervals (first at "
                        f"{times[outside][0]:.6g} s); fix the file's spike times or intervals."
                    )
        heldout = None
        if "heldout" in units.colnames:
            heldout = np.asarray(units["heldout"].data[:]).astype(bool)[rows]
        trials = nwbfile.trials
        trial_times = _table_times(trials, path, "trials") if trials is not None else None
        epochs = nwbfile.epochs
        first = min((t[0] for t in spike_times if t.size), default=math.inf)
        last = max((t[-1] for t in spike_times if t.size), default=-math.inf)
        if domain_from == "extent":
            lo, hi = interval_extent(nwbfile)
            t0, t1 = float(min(lo, first)), float(np.nextafter(max(hi, last), math.inf))
        else:
            table = trials if domain_from == "trials" else epochs
            if table is None or len(table) == 0:
                raise ValueError(f"{path}: domain_from={domain_from!r} but the file has no "
                                 f"{domain_from} table (or it is empty).")
            start, stop = _table_times(table, path, domain_from)
            t0, t1 = float(start.min()), float(stop.max())
        stimuli = None
        if stimulus_table is not None:
            s_start, s_stop, image_id = _stimuli(nwbfile, path, stimulus_table, stimulus_column)
            inside = (s_start >= t0) & (s_stop <= t1)
            stimuli = dict(start=s_start[inside], end=s_stop[inside], image_id=image_id[inside])
            if image_folder is not None:
                _check_images(path, stimuli["image_id"], image_folder)
        if split == "trials":
            if trial_times is None or len(trial_times[0]) == 0:
                raise ValueError(f"{path}: split='trials' needs a trials table; this file has "
                                 "none (use split='blocks').")
            order = np.argsort(trial_times[0], kind="stable")
            t_start, t_stop = trial_times[0][order], trial_times[1][order]
            labels = None
            if trial_split_column is not None:
                labels = _trial_labels(trials, path, trial_split_column, valid_fraction, seed)
                labels = labels[order]
            inside = (t_start >= t0) & (t_stop <= t1)
            splits = trial_splits((t0, t1), t_start[inside], t_stop[inside],
                                  valid_fraction=valid_fraction, test_fraction=test_fraction,
                                  seed=seed, labels=None if labels is None else labels[inside])
        elif stimuli is not None and stimuli["start"].size:
            splits = stimulus_splits((t0, t1), stimuli["start"], stimuli["end"],
                                     stimuli["image_id"], block_length=block_length,
                                     valid_fraction=valid_fraction, test_fraction=test_fraction,
                                     seed=seed)
        else:
            splits = block_splits((t0, t1), block_length=block_length,
                                  valid_fraction=valid_fraction, test_fraction=test_fraction,
                                  seed=seed)
        if observed is not None:
            splits = _restrict(splits, _intersect(observed))

    n_spikes = sum(t.size for t in spike_times)
    kept_times = [t[(t >= t0) & (t < t1)] for t in spike_times]
    region = np.where(np.isin(np.char.strip(regions[rows]), ["", "nan", "None"]),
                      UNKNOWN_REGION, regions[rows])
    record = {
        "source": str(path),
        "in_table": int(n),
        "dropped": dropped,
        "kept": int(rows.size),
        "region_from": region_source,
        "unknown_region": int((region == UNKNOWN_REGION).sum()),
        "spikes_outside_domain": int(n_spikes - sum(t.size for t in kept_times)),
        "heldout": None if heldout is None else int(heldout.sum()),
    }
    unit_fields = {} if heldout is None else {"heldout": heldout}
    out = write_recording(
        out_dir / f"{sid}.h5",
        session_id=sid,
        unit_ids=[f"{sid}/{u}" for u in unit_row_ids[rows]],
        domain=(t0, t1),
        splits=splits,
        spike_times=kept_times,
        brain_regions=region,
        stimuli=stimuli,
        subject_id=getattr(getattr(nwbfile, "subject", None), "subject_id", None) or None,
        brainset="nwb",
        session_fields={"unit_selection": json.dumps(record), "source_file": path.name},
        source=path,
        **unit_fields,
    )
    return out, record


def convert_nwb(
    sources: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    session_id: str | None = None,
    region_column: str | None = None,
    domain_from: str = "extent",
    split: str = "blocks",
    block_length: float = 10.0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    stimulus_table: str | None = None,
    stimulus_column: str | None = None,
    images: str | Path | None = None,
    link_images: bool = False,
    filters: Sequence[UnitFilter | str] = (),
    trial_split_column: str | None = None,
) -> list[tuple[Path, dict]]:
    """Convert NWB ecephys files into ``<out_dir>/<session_id>.h5`` recordings.

    Args:
        sources: NWB files and/or folders (searched recursively, as DANDI lays them out).
        out_dir: output folder (created); files of the same name are replaced.
        session_id: the recording id (one file only); default the file's ``session_id``, else
            its ``identifier``.
        region_column: units column with each unit's region; default: the first of
            :data:`REGION_COLUMNS` present, else the ``location`` of each unit's electrode, else
            one region (with a warning). Empty locations become ``"unknown"`` (counted).
        domain_from: ``"extent"`` (first spike or interval start to last spike or interval
            stop), ``"trials"`` or
            ``"epochs"`` (first start to last stop of that table; spikes outside are dropped,
            counted).
        split: ``"blocks"`` (interleaved blocks of ``block_length`` s; with a stimulus table,
            whole images are drawn so every repeat stays on one side) or ``"trials"`` (whole
            trials; the time between trials is train).
        valid_fraction: the share of blocks / images / trials in valid.
        test_fraction: the same for test.
        seed: seeds the draws.
        stimulus_table: an intervals table of presentations.
        stimulus_column: its column naming the image (its value, as a string, is the image id).
        images: folder of the images, copied (or symlinked with ``link_images``) to
            ``<out_dir>/images``; every image id must be a file in it.
        filters: :class:`UnitFilter` or strings such as ``"quality == good"``.
        trial_split_column: ``split="trials"`` only: take the splits from this trials column
            (NLB's ``split``: train -> train, val -> test, none -> left out; valid is drawn
            from the train trials with ``valid_fraction``).

    Returns:
        ``[(path, record)]`` per file, ``record`` the unit-selection counts also stored in
        ``session.unit_selection``.
    """
    if domain_from not in DOMAIN_FROM:
        raise ValueError(f"domain_from must be one of {DOMAIN_FROM}, got {domain_from!r}.")
    if split not in SPLIT_MODES:
        raise ValueError(f"split must be one of {SPLIT_MODES}, got {split!r}.")
    if trial_split_column is not None and split != "trials":
        raise ValueError("trial_split_column needs split='trials'.")
    check_fractions(valid_fraction, test_fraction)
    filters = [f if isinstance(f, UnitFilter) else UnitFilter.parse(f) for f in filters]
    paths = find_nwb_files(sources)
    if session_id is not None and len(paths) > 1:
        raise ValueError(f"session_id={session_id!r} names one recording, but {len(paths)} NWB "
                         "files were given; convert them one at a time or drop session_id.")
    out_dir = Path(out_dir)
    image_folder = None
    if images is not None:
        image_folder = Path(images)
        if not image_folder.is_dir():
            raise FileNotFoundError(f"Image folder {image_folder} (images=, --images) not found.")
    ids = []
    for path in paths:
        with open_nwb(path) as nwbfile:
            ids.append(_session_id(nwbfile, path, session_id))
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(
            f"Several NWB files give the session id {dup[0]!r}: "
            f"{[str(p) for p, i in zip(paths, ids) if i == dup[0]]}. Convert them separately, "
            "into different folders."
        )
    results = []
    for path in paths:
        out, record = _convert_one(
            path, out_dir, session_id=session_id, region_column=region_column,
            domain_from=domain_from, split=split, block_length=block_length,
            valid_fraction=valid_fraction, test_fraction=test_fraction, seed=seed,
            stimulus_table=stimulus_table, stimulus_column=stimulus_column, filters=filters,
            trial_split_column=trial_split_column, image_folder=image_folder,
        )
        logger.info("%s: %d of %d units kept", out.stem, record["kept"], record["in_table"])
        results.append((out, record))
    if image_folder is not None:
        target = out_dir / IMAGE_FOLDER
        if link_images:
            if target.is_symlink() or target.exists():
                target.unlink() if target.is_symlink() else shutil.rmtree(target)
            os.symlink(image_folder.resolve(), target, target_is_directory=True)
        else:
            shutil.copytree(image_folder, target, dirs_exist_ok=True)
    return results


def _check_images(path: Path, image_ids: np.ndarray, folder: Path) -> None:
    missing = sorted({i for i in image_ids.tolist() if not (folder / i).is_file()})
    if missing:
        raise FileNotFoundError(
            f"{path}: {len(missing)} image ids of the presentations are not files in {folder} "
            f"(e.g. {missing[:3]}); the stimulus column must hold paths relative to the image "
            "folder."
        )
