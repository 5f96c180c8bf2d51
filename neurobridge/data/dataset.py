"""A folder of recordings (temporaldata HDF5, brainsets layout) served as tokenized windows."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from temporaldata import Data, Interval
from torch_brain.dataset import Dataset

from neurobridge.data.index import SPLITS, WindowIndex
from neurobridge.data.spike_values import SPIKE_VALUES, check_spike_values
from neurobridge.data.windows import RecordingReader, Window
from neurobridge.modality import Modality

__all__ = ["RecordingDataset"]

log = logging.getLogger(__name__)


class RecordingDataset(Dataset):
    """torch_brain's lazy HDF5 :class:`~torch_brain.dataset.Dataset` with checked recordings.

    ``dataset[WindowIndex(...)]`` slices the window and passes it, with its index (which fixes
    the mask), to ``tokenizer``. Each file is checked when opened: a missing folder, a file
    that is not a readable HDF5 recording, or a recording without the fields that
    ``modality`` needs raises an error naming the file, the field and the fix.

    Args:
        root: folder of ``<recording_id>.h5`` files.
        modality: ``"spikes"`` (needs ``spikes.timestamps``, ``spikes.unit_index``) or
            ``"values"`` (needs the regular time series named by ``value_key``).
        recording_ids: subset of recordings (file stems); all ``*.h5`` files by default.
        value_key: ``"<timeseries>.<field>"`` holding continuous values (``"values"`` only).
        spike_values: ``"values"`` only: ``None`` (every recording needs ``value_key``), or
            one of :data:`~neurobridge.data.spike_values.SPIKE_VALUES`: a recording without
            ``value_key`` but with spikes is accepted (checked as a spiking recording) and
            read as binned spike counts (see :attr:`value_sources`).
        tokenizer: ``(window: Data, index: WindowIndex) -> dict``; set later with
            :attr:`tokenizer` once the model's vocabularies exist.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        modality: Modality | str = Modality.SPIKES,
        recording_ids: list[str] | None = None,
        value_key: str = "mua.values",
        spike_values: str | None = None,
        tokenizer: Callable[[Data, WindowIndex], dict] | None = None,
    ):
        modality = Modality.parse(modality)
        check_spike_values(spike_values, modality)
        root = Path(root)
        if root.is_file():
            raise NotADirectoryError(
                f"data.root={root} is a file; it must be the folder that holds the recording "
                f"files (<recording_id>.h5): data.root={root.parent}."
            )
        series, dot, field = value_key.partition(".")
        if not (series and dot and field):
            raise ValueError(
                f"data.value_key must name a regular time series and its field, "
                f"'<series>.<field>' (e.g. 'mua.values'), got {value_key!r}."
            )
        if not root.is_dir():
            raise FileNotFoundError(
                f"Data folder {root} does not exist. Set data.root to a folder of recording "
                "files (<recording_id>.h5), or use data=synthetic to generate one."
            )
        found = sorted(p.stem for p in root.glob("*.h5"))
        if not found:
            raise FileNotFoundError(
                f"Data folder {root} holds no recording (*.h5) files. Convert your data with the "
                "scripts in scripts/, or use data=synthetic."
            )
        unknown = [r for r in recording_ids or () if r not in found]
        if unknown:
            raise ValueError(
                f"data.recording_ids names recordings that are not in {root}: {unknown}; "
                f"it holds {found[:10]}{' ...' if len(found) > 10 else ''}."
            )
        for rid in found:
            _check_hdf5(root / f"{rid}.h5")
        super().__init__(root, recording_ids=recording_ids, keep_files_open=True)
        self.root = root
        self.modality = modality
        self.value_key = value_key
        self.spike_values = spike_values
        self.tokenizer = tokenizer
        self._readers: dict[str, RecordingReader] = {}
        #: ``{recording_id: "value_series" | "spikes"}``: where a ``values`` run reads each
        #: recording's values (``"spikes"`` for every recording of a ``spikes`` run).
        self.value_sources = {
            rid: _check_recording(
                self.get_recording(rid), root / f"{rid}.h5", modality, value_key, spike_values
            )
            for rid in self.recording_ids
        }
        _check_unique_sessions(
            {rid: str(self.get_recording(rid).session.id) for rid in self.recording_ids}, root)

    def __getitem__(self, index: WindowIndex) -> dict:
        if self.tokenizer is None:
            raise RuntimeError("RecordingDataset.tokenizer is not set; the data module sets it.")
        return self.tokenizer(self.window(index.recording_id, index.start, index.end), index)

    def reader(self, recording_id: str) -> RecordingReader:
        """The process's :class:`~neurobridge.data.windows.RecordingReader` of a recording
        (the file is read when first asked for)."""
        reader = self._readers.get(recording_id)
        if reader is None:
            if recording_id not in self.recording_ids:
                raise KeyError(f"No recording {recording_id!r} in {self.root}.")
            reader = self._readers[recording_id] = RecordingReader(self.root / f"{recording_id}.h5")
        return reader

    def window(self, recording_id: str, start: float, end: float) -> Window:
        """The window ``[start, end)`` of a recording, cut by its :meth:`reader`."""
        return self.reader(recording_id).window(start, end)

    def reference_window(self, recording_id: str, start: float, end: float) -> Data:
        """The same window cut by temporaldata (``get_recording(...).slice``): the reference
        :meth:`window` is tested against, and the one to use for fields a reader does not cut
        (intervals, nested data)."""
        return self.get_recording(recording_id).slice(start, end)

    def __getstate__(self) -> dict:
        # DataLoader workers open their own readers: memory maps are not pickled
        state = self.__dict__.copy()
        state["_readers"] = {}
        return state

    def split_intervals(self, split: str) -> dict[str, Interval]:
        """``{recording_id: Interval}`` of the split's domain in each recording."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        out = {}
        for rid in self.recording_ids:
            data = self.get_recording(rid)
            key = f"{split}_domain"
            if key not in data.keys():
                raise ValueError(
                    f"{self.root / (rid + '.h5')}: no '{key}'. Every recording needs train_domain, "
                    "valid_domain and test_domain Intervals (temporaldata Data.set_train_domain "
                    "etc.)."
                )
            dom = getattr(data, key)
            out[rid] = Interval(np.asarray(dom.start).copy(), np.asarray(dom.end).copy())
        return out

    def unit_ids(self) -> list[str]:
        """All unit ids over the recordings, in recording order."""
        ids: list[str] = []
        owner: dict[str, str] = {}
        for rid in self.recording_ids:
            for uid in np.asarray(self.get_recording(rid).units.id).astype(str).tolist():
                if uid in owner:
                    where = (f"recordings {owner[uid]!r} and {rid!r}" if owner[uid] != rid
                             else f"recording {rid!r} (twice)")
                    raise ValueError(
                        f"Unit ids in {self.root} are not unique across recordings: {uid!r} is "
                        f"in {where}. All recordings of a run, spiking and continuous alike, "
                        "share one unit vocabulary: prefix unit ids with the session id (e.g. "
                        "'<session>/<unit>') when converting the data."
                    )
                owner[uid] = rid
                ids.append(uid)
        return ids

    def session_ids(self) -> list[str]:
        return [str(self.get_recording(rid).session.id) for rid in self.recording_ids]


def _check_hdf5(path: Path) -> None:
    try:
        with h5py.File(path, "r") as f:
            f.keys()
    except OSError as err:
        raise OSError(
            f"{path} is not a readable HDF5 file ({err}). It may be truncated or not a recording; "
            "re-create it with the conversion script or remove it from the folder."
        ) from None


def _check_recording(
    data: Data, path: Path, modality: Modality, value_key: str, spike_values: str | None = None
) -> str:
    """Check the fields ``modality`` needs; return where the values come from
    (``"value_series"`` or ``"spikes"``, see :attr:`RecordingDataset.value_sources`)."""

    def need(cond: bool, field: str, fix: str) -> None:
        if not cond:
            raise ValueError(f"{path}: missing or invalid field '{field}'. {fix}")

    keys = data.keys()
    need("units" in keys and "id" in data.units.keys(), "units.id",
         "Each recording needs a units ArrayDict with a string id per unit.")
    need("session" in keys and "id" in data.session.keys(), "session.id",
         "Each recording needs session=Data(id=...).")
    need(data.domain is not None, "domain", "Give the recording a domain Interval.")
    n_units = len(data.units.id)
    need(n_units >= 2, "units.id",
         f"It has {n_units} unit(s); masked pretraining hides some units of a window and scores "
         "them from the others, so every recording needs at least 2 units (channels). Leave "
         "this recording out (data.recording_ids) or merge it with another session's units.")
    for name in data.units.keys():
        length = len(getattr(data.units, name))
        need(length == n_units, f"units.{name}",
             f"It has {length} entries for {n_units} units (units.id): every units column needs "
             "one entry per unit. Re-write the file with neurobridge.data.write_recording, which "
             "checks this.")
    _check_splits(data, path)
    if modality is Modality.SPIKES:
        _check_spikes(data, path, n_units, need)
        return "spikes"
    series_name, _, field = value_key.partition(".")
    if series_name not in keys and spike_values is not None and "spikes" in keys:
        _check_spikes(data, path, n_units, need)
        return "spikes"
    if spike_values is not None:
        hint = f"It has no spikes either (data.spike_values={spike_values} reads those)."
    elif "spikes" in keys:
        hint = (f"This recording has spikes: set data.spike_values to one of "
                f"{list(SPIKE_VALUES)} to read spiking recordings as binned spike counts in this "
                f"data.modality=values run (null, the default, needs {value_key} in every "
                "recording).")
    else:
        hint = (f"(data.spike_values, one of {list(SPIKE_VALUES)}, would read a recording with "
                "spikes instead.)")
    need(series_name in keys and field in getattr(data, series_name).keys(), value_key,
         f"A continuous recording needs {series_name}=RegularTimeSeries({field}=[T, n_units]). "
         + hint)
    shape = np.shape(getattr(getattr(data, series_name), field))
    need(len(shape) == 2 and shape[1] == n_units, value_key,
         f"Expected shape [n_samples, {n_units}] (one column per unit), got {shape}.")
    return "value_series"


def _check_unique_sessions(sessions: dict[str, str], root: Path) -> None:
    """Two files of one folder must not hold the same ``session.id``."""
    owner: dict[str, str] = {}
    for rid, sid in sessions.items():
        if sid in owner:
            raise ValueError(
                f"{root / (owner[sid] + '.h5')} and {root / (rid + '.h5')} both have session.id "
                f"{sid!r}. Every recording of a run needs its own session id (the session "
                "embedding and the per-session baseline are keyed by it): give each file its "
                "own id when converting, or leave one out with data.recording_ids."
            )
        owner[sid] = rid


def _check_splits(data: Data, path: Path) -> None:
    """Split intervals: ordered, inside the domain, and no two splits sharing time."""
    dom_start = float(np.min(data.domain.start))
    dom_end = float(np.max(data.domain.end))
    blocks = {}
    for split in SPLITS:
        key = f"{split}_domain"
        if key not in data.keys():
            continue  # a missing split is named when the splits are read
        start = np.asarray(getattr(data, key).start, dtype=np.float64)
        end = np.asarray(getattr(data, key).end, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(start) | ~np.isfinite(end) | (end < start))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{path}: {key} interval {i} is [{start[i]}, {end[i]}]: every interval needs "
                f"a finite start <= end ({bad.size} do not). Fix the split when converting the "
                "data (neurobridge.data.splits builds valid ones)."
            )
        outside = np.flatnonzero((start < dom_start - 1e-6) | (end > dom_end + 1e-6))
        if outside.size:
            i = int(outside[0])
            raise ValueError(
                f"{path}: {key} interval {i} [{start[i]:g}, {end[i]:g}] s lies outside the "
                f"recording's domain [{dom_start:g}, {dom_end:g}] s ({outside.size} intervals "
                "do). Splits must be inside the domain; check the time units (seconds) of the "
                "split and of the domain."
            )
        blocks[split] = (start, end)
    names = list(blocks)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            (s1, e1), (s2, e2) = blocks[names[a]], blocks[names[b]]
            overlap = (s1[:, None] < e2[None, :] - 1e-9) & (s2[None, :] < e1[:, None] - 1e-9)
            if overlap.any():
                i, j = (int(x[0]) for x in np.nonzero(overlap))
                raise ValueError(
                    f"{path}: {names[a]}_domain [{s1[i]:g}, {e1[i]:g}] and {names[b]}_domain "
                    f"[{s2[j]:g}, {e2[j]:g}] overlap: a split must not share time with another "
                    "(test windows would be trained on). Make the splits disjoint (see "
                    "neurobridge.data.splits)."
                )


#: more than this fraction of spikes outside the domain is an error, fewer a counted warning
MAX_SPIKES_OUTSIDE = 0.01


def _check_spikes(data: Data, path: Path, n_units: int, need) -> None:
    need("spikes" in data.keys(), "spikes",
         "A spiking recording needs spikes=IrregularTimeSeries(timestamps, unit_index).")
    need("unit_index" in data.spikes.keys(), "spikes.unit_index",
         "Give each spike the index of its unit in units.id.")
    ui = np.asarray(data.spikes.unit_index)
    if len(ui) and (ui.min() < 0 or ui.max() >= n_units):
        raise ValueError(
            f"{path}: spikes.unit_index has values in [{ui.min()}, {ui.max()}] but units.id "
            f"has {n_units} units. Indices must be in [0, {n_units})."
        )
    ts = np.asarray(data.spikes.timestamps)
    if not np.isfinite(ts).all():
        raise ValueError(f"{path}: spikes.timestamps has NaN/Inf values. Drop those spikes.")
    if len(ts) > 1 and np.any(np.diff(ts) < 0):
        raise ValueError(
            f"{path}: spikes.timestamps is not sorted. Sort spikes by time (with their "
            "unit_index) before saving."
        )
    dom_start, dom_end = float(np.min(data.domain.start)), float(np.max(data.domain.end))
    # sorted: the spikes outside the domain are at the two ends
    n_out = int(np.searchsorted(ts, dom_start - 1e-6) + len(ts)
                - np.searchsorted(ts, dom_end + 1e-6, side="right"))
    if n_out > MAX_SPIKES_OUTSIDE * len(ts):
        raise ValueError(
            f"{path}: {n_out} of {len(ts)} spikes.timestamps lie outside the recording's domain "
            f"[{dom_start:g}, {dom_end:g}] s (they span [{ts[0]:g}, {ts[-1]:g}]). Spike times "
            "must be in seconds on the domain's clock: milliseconds or samples would look like "
            "this (divide by 1000 or by the sampling rate when converting)."
        )
    if n_out:
        log.warning("%s: %d of %d spikes lie outside the domain [%g, %g] s; windows never "
                    "reach them.", path, n_out, len(ts), dom_start, dom_end)
