"""Allen Brain Observatory Visual Coding Neuropixels sessions to NeuroBridge recordings.

Layout read: the NWB 2 files of the AllenSDK cache, one per session, read with pynwb (the
``allen`` extra: ``pip install "neurobridge[allen]"``)::

    <cache>/session_<id>/session_<id>.nwb
        units                     one row per sorted unit; id = the Allen unit id
            spike_times           ragged column: the unit's spike times (s)
            peak_channel_id       id (row id of 'electrodes') of the unit's peak channel
            amplitude_cutoff, presence_ratio, isi_violations, snr, firing_rate   float
            quality               str, "good" for units passing the Allen curation
        electrodes                one row per channel; row id = the channel id
            location              structure acronym ("VISp", "VISl", "LGd", "CA1", ...)
            probe_id              int
            valid_data            bool
        intervals/natural_scenes_presentations   (another table with stimulus_table=...)
            start_time, stop_time float (s)
            frame                 scene number 0 ... 117, -1 for a blank screen
    <cache>/natural_scene_templates/natural_scene_<n>.tiff    the scene shown as frame n

Units are kept when ``amplitude_cutoff <= 0.1``, ``presence_ratio >= 0.95``,
``isi_violations <= 0.5`` (the AllenSDK defaults), ``quality == "good"`` and their peak
channel has ``valid_data``; each filter can be changed or turned off, and ``structures``
keeps only units in the named structures. A unit with a NaN metric fails that filter. The
region of a unit is the ``location`` of its peak channel (empty locations become
``"unknown"``).

:func:`convert_allen` writes ``<out_dir>/allen_<id>.h5`` (temporaldata HDF5) per session and
copies the scenes shown into ``<out_dir>/images/natural_scenes/`` (the default image folder of
``data=recordings``). ``U`` kept units, ``S`` spikes, ``P`` non-blank presentations::

    session.id                 str, the recording id "allen_<id>"
    session.unit_selection     str, JSON: units in the table, dropped per filter, kept
    subject.id                 str, "allen_mouse_<subject_id>"
    brainset.id                str, "allen_visual_coding_neuropixels"
    units.id                   str [U], "allen_<id>/<unit id>"
    units.brain_region         str [U], location of the peak channel
    units.allen_id, units.peak_channel_id, units.probe_id   int64 [U] (probe_id: -1 if the
                               electrodes table has no probe_id column)
    units.<metric>             float64 [U] for each of amplitude_cutoff, presence_ratio,
                               isi_violations, snr, firing_rate in the units table
    spikes.timestamps          float64 [S], sorted, seconds on the NWB clock (unchanged)
    spikes.unit_index          int64 [S], index into units
    domain                     Interval [t0, t1]: from min(0, first spike or stimulus) to
                               just after the last spike or stimulus of any intervals table
    stimulus_presentations     Interval [P], sorted by onset; blanks dropped: start, end
                               (start_time, stop_time), image_id (e.g.
                               "natural_scenes/natural_scene_12.tiff"), frame (int64)
    train_domain, valid_domain, test_domain
                               disjoint Intervals tiling the domain

Splits: a seeded ``test_fraction`` / ``valid_fraction`` of the scenes shown in the converted
sessions are test / valid scenes, the rest train scenes, so all repeats of a scene are on
one side. Each presentation owns the time from its onset to the next presentation's onset
(its stop time if the next onset comes more than 50 ms later) and that time goes to its
scene's split. The rest of the session (spontaneous activity, other stimuli, blanks) is cut
into blocks of about ``block_length`` seconds drawn into the splits with the same fractions
(seeded per session); pieces shorter than ``block_length`` (blanks and gaps between
presentations) go to train. Presentations are back to back (250 ms), so stimulus-locked
windows must fit in one presentation (``data.pre_onset=0 data.post_onset=0.25``): a longer
window reaches into neighbours that mostly belong to another split and is dropped.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import warnings
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from temporaldata import Data

from neurobridge.data.images import IMAGE_FOLDER
from neurobridge.data.nwb import (
    column,
    find_nwb_files,
    interval_extent,
    numbers,
    open_nwb,
    read_spike_times,
    strings,
    units_table,
    whole,
)
from neurobridge.data.splits import assign_splits, check_fractions, labelled_splits
from neurobridge.data.stimuli import presentations_by_split
from neurobridge.data.writer import make_recording, save_recording
from neurobridge.io import atomic_path

__all__ = [
    "BLANK_FRAME",
    "IMAGE_SUBFOLDER",
    "QUALITY_METRICS",
    "STIMULUS_TABLE",
    "TEMPLATE_FOLDER",
    "UnitFilters",
    "convert_allen",
    "find_sessions",
    "read_electrodes",
    "read_presentations_table",
    "read_units",
    "select_units",
    "summarize_allen",
    "template_name",
]

logger = logging.getLogger(__name__)

#: Intervals table of the natural-scene presentations.
STIMULUS_TABLE = "natural_scenes_presentations"
#: Folder of the scene templates in the AllenSDK cache.
TEMPLATE_FOLDER = "natural_scene_templates"
#: Sub-folder of ``<out_dir>/images`` the scenes are copied to (the image ids start with it).
IMAGE_SUBFOLDER = "natural_scenes"
#: ``frame`` of a blank-screen presentation.
BLANK_FRAME = -1
#: Quality metrics copied to ``units`` when the units table has them.
QUALITY_METRICS = ("amplitude_cutoff", "presence_ratio", "isi_violations", "snr", "firing_rate")
#: A presentation owns the time up to the next onset if that comes at most this late (s).
_GAP_TOLERANCE = 0.05
_BRAINSET = "allen_visual_coding_neuropixels"
_LAYOUT_HINT = (
    "Use the session NWB files of the AllenSDK cache (session_<id>/session_<id>.nwb) as "
    "downloaded."
)


def template_name(frame: int) -> str:
    """File name of the template of scene ``frame``: ``natural_scene_<frame>.tiff``."""
    return f"natural_scene_{int(frame)}.tiff"


# --------------------------------------------------------------------------------------
# readers


def find_sessions(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """The NWB files of ``sources``, each an ``.nwb`` file or a folder (an AllenSDK cache:
    ``session_*/session_*.nwb``, else the ``*.nwb`` files directly in it)."""
    return find_nwb_files(sources, patterns=("session_*/session_*.nwb", "*.nwb"),
                          what="Allen NWB file", hint=_LAYOUT_HINT)


def _recording_id(path: Path) -> str:
    match = re.fullmatch(r"session_(\d+)", path.stem)
    name = match.group(1) if match else re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)
    return f"allen_{name}"


def _column(table, name: str, path: Path, table_name: str, content: str) -> np.ndarray:
    return column(table, name, path, table_name, content, _LAYOUT_HINT)


def read_units(nwbfile, path: str | Path) -> dict[str, np.ndarray]:
    """The units table without its spike times: ``allen_id``, ``peak_channel_id`` (int64),
    ``quality`` (str, if present) and each metric of :data:`QUALITY_METRICS` present (float64)."""
    path = Path(path)
    units = units_table(nwbfile, path, _LAYOUT_HINT)
    if "spike_times" not in units.colnames:
        raise ValueError(
            f"{path}: the units table has no column 'spike_times' (the spike times of each "
            f"unit, a ragged column). {_LAYOUT_HINT}"
        )
    out = {
        "allen_id": whole(units.id.data[:], path, "units.id"),
        "peak_channel_id": whole(
            _column(units, "peak_channel_id", path, "units", "the channel id of each unit's "
                    "peak channel, a row id of 'electrodes'"),
            path, "units.peak_channel_id",
        ),
    }
    if "quality" in units.colnames:
        out["quality"] = strings(units["quality"].data[:])
    for name in QUALITY_METRICS:
        if name in units.colnames:
            out[name] = numbers(units[name].data[:], path, f"units.{name}")
    return out


def read_electrodes(nwbfile, path: str | Path) -> dict[str, np.ndarray]:
    """The electrodes table: ``channel_id`` (row ids), ``location`` (str; empty -> "unknown"),
    and ``probe_id`` (int64) / ``valid_data`` (bool) where present."""
    path = Path(path)
    table = nwbfile.electrodes
    if table is None:
        raise ValueError(
            f"{path}: no electrodes table (one row per channel with 'location', the structure "
            f"acronym; the units' peak_channel_id refers to its row ids). {_LAYOUT_HINT}"
        )
    location = strings(_column(table, "location", path, "electrodes", "structure acronym"))
    location = np.where(np.isin(np.char.strip(location), ["", "nan", "None"]), "unknown", location)
    out = {"channel_id": whole(table.id.data[:], path, "electrodes.id"), "location": location}
    if "probe_id" in table.colnames:
        out["probe_id"] = whole(table["probe_id"].data[:], path, "electrodes.probe_id")
    if "valid_data" in table.colnames:
        out["valid_data"] = np.asarray(table["valid_data"].data[:]).astype(bool)
    return out


def _peak_rows(units: dict, electrodes: dict, path: Path) -> np.ndarray:
    """Row of ``electrodes`` of each unit's peak channel."""
    channel_id = electrodes["channel_id"]
    if np.unique(channel_id).size != channel_id.size:
        raise ValueError(f"{path}: the electrodes table has duplicate row ids (channel ids).")
    order = np.argsort(channel_id)
    peak = units["peak_channel_id"]
    pos = np.clip(np.searchsorted(channel_id[order], peak), 0, max(channel_id.size - 1, 0))
    found = channel_id.size > 0
    ok = channel_id[order][pos] == peak if found else np.zeros(peak.size, bool)
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"{path}: units.peak_channel_id of unit {units['allen_id'][k]} is {peak[k]}, which "
            f"is not a row id of the electrodes table ({int((~ok).sum())} units like this; "
            f"channel ids {channel_id.min() if found else '-'} ... "
            f"{channel_id.max() if found else '-'}). {_LAYOUT_HINT}"
        )
    return order[pos]


@dataclass(frozen=True)
class UnitFilters:
    """Which units are kept (AllenSDK defaults); ``None`` turns a filter off.

    Attributes:
        max_amplitude_cutoff: keep ``amplitude_cutoff <= this``.
        min_presence_ratio: keep ``presence_ratio >= this``.
        max_isi_violations: keep ``isi_violations <= this``.
        quality: keep units whose ``quality`` is this.
        valid_channels_only: keep units whose peak channel has ``valid_data``.
        structures: keep units whose peak channel's ``location`` is one of these.
    """

    max_amplitude_cutoff: float | None = 0.1
    min_presence_ratio: float | None = 0.95
    max_isi_violations: float | None = 0.5
    quality: str | None = "good"
    valid_channels_only: bool = True
    structures: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("max_amplitude_cutoff", "min_presence_ratio", "max_isi_violations"):
            value = getattr(self, name)
            ok = value is None or (
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value)
            )
            if not ok:
                raise ValueError(f"{name} must be a finite number or None, got {value!r}.")
        if self.structures is not None:
            if isinstance(self.structures, str):
                raise ValueError(
                    f"structures must be a sequence of acronyms, not a string: "
                    f"got {self.structures!r}."
                )
            object.__setattr__(self, "structures", tuple(str(s) for s in self.structures))
            if not self.structures:
                raise ValueError("structures must name at least one structure (or be None).")


def select_units(
    units: dict, electrodes: dict, path: str | Path, filters: UnitFilters | None = None
) -> tuple[np.ndarray, dict]:
    """Rows of the units table that pass ``filters`` (int64, table order) and the selection
    record ``{"in_table": n, "dropped": {"<filter>": n failing}, "kept": n}`` (a unit failing
    several filters is counted under each)."""
    path = Path(path)
    peak = _peak_rows(units, electrodes, path)
    n = units["allen_id"].size
    fails: dict[str, np.ndarray] = {}

    def metric(name: str, option: str) -> np.ndarray:
        if name not in units:
            raise ValueError(
                f"{path}: the units table has no column '{name}', which the unit filter {option} "
                f"needs. Pass {option}=None to skip this filter."
            )
        return units[name]

    f = UnitFilters() if filters is None else filters
    with np.errstate(invalid="ignore"):
        if f.max_amplitude_cutoff is not None:
            v = metric("amplitude_cutoff", "max_amplitude_cutoff")
            fails[f"amplitude_cutoff > {f.max_amplitude_cutoff:g}"] = ~(v <= f.max_amplitude_cutoff)
        if f.min_presence_ratio is not None:
            v = metric("presence_ratio", "min_presence_ratio")
            fails[f"presence_ratio < {f.min_presence_ratio:g}"] = ~(v >= f.min_presence_ratio)
        if f.max_isi_violations is not None:
            v = metric("isi_violations", "max_isi_violations")
            fails[f"isi_violations > {f.max_isi_violations:g}"] = ~(v <= f.max_isi_violations)
    if f.quality is not None:
        fails[f"quality != {f.quality}"] = metric("quality", "quality") != f.quality
    if f.valid_channels_only:
        if "valid_data" not in electrodes:
            raise ValueError(
                f"{path}: the electrodes table has no column 'valid_data', which the unit filter "
                "valid_channels_only needs. Pass valid_channels_only=False to skip this filter."
            )
        fails["peak channel not valid_data"] = ~electrodes["valid_data"][peak]
    if f.structures is not None:
        fails["structure not selected"] = ~np.isin(electrodes["location"][peak], f.structures)
    keep = np.ones(n, dtype=bool)
    for mask in fails.values():
        keep &= ~mask
    record = {
        "in_table": int(n),
        "dropped": {name: int(mask.sum()) for name, mask in fails.items()},
        "kept": int(keep.sum()),
    }
    return np.flatnonzero(keep), record


def read_presentations_table(
    nwbfile, path: str | Path, name: str = STIMULUS_TABLE
) -> dict[str, np.ndarray]:
    """``start``, ``stop`` (float64) and ``frame`` (int64, -1 = blank) of every row of the
    intervals table ``name``, sorted by onset."""
    path = Path(path)
    intervals = nwbfile.intervals or {}
    if name not in intervals:
        raise ValueError(
            f"{path}: no intervals table '{name}' (tables: {sorted(intervals) or 'none'}). "
            "Natural scenes are shown in the Brain Observatory sessions; pass stimulus_table= "
            "if yours has another name."
        )
    table = intervals[name]
    where = f"intervals/{name}"
    start = numbers(_column(table, "start_time", path, where, "onset, s"), path,
                     f"{where}.start_time")
    stop = numbers(_column(table, "stop_time", path, where, "offset, s"), path,
                    f"{where}.stop_time")
    frame = whole(_column(table, "frame", path, where, "scene number, -1 for a blank"), path,
                   f"{where}.frame")
    bad = ~(np.isfinite(start) & np.isfinite(stop) & (stop > start))
    if bad.any():
        raise ValueError(
            f"{path}: {where} has rows with NaN times or stop_time <= start_time (rows "
            f"{np.flatnonzero(bad)[:3].tolist()})."
        )
    if (frame < BLANK_FRAME).any():
        raise ValueError(
            f"{path}: {where}.frame must be a scene number >= 0 or {BLANK_FRAME} (blank), got "
            f"{frame[frame < BLANK_FRAME][:3].tolist()}."
        )
    order = np.argsort(start, kind="stable")
    start, stop, frame = start[order], stop[order], frame[order]
    if start.size > 1 and not (np.diff(start) > 0).all():
        raise ValueError(f"{path}: {where} has two presentations with the same start_time.")
    return {"start": start, "stop": stop, "frame": frame}


# --------------------------------------------------------------------------------------
# conversion


@dataclass
class _Session:
    path: Path
    recording_id: str
    subject_id: str
    units: dict
    electrodes: dict
    rows: np.ndarray
    peak: np.ndarray
    record: dict
    presentations: dict


def _plan_session(path: Path, filters: UnitFilters, stimulus_table: str) -> _Session:
    """Read and check everything of one session but the spike times."""
    with open_nwb(path) as nwbfile:
        units = read_units(nwbfile, path)
        electrodes = read_electrodes(nwbfile, path)
        rows, record = select_units(units, electrodes, path, filters)
        presentations = read_presentations_table(nwbfile, path, stimulus_table)
        subject = getattr(nwbfile, "subject", None)
        subject_id = getattr(subject, "subject_id", None) if subject is not None else None
    rid = _recording_id(path)
    return _Session(
        path=path,
        recording_id=rid,
        subject_id=f"allen_mouse_{subject_id}" if subject_id else f"{rid}_subject",
        units=units,
        electrodes=electrodes,
        rows=rows,
        peak=_peak_rows(units, electrodes, path),
        record=record,
        presentations=presentations,
    )


def _find_templates(sources: Sequence[Path], templates_dir: str | Path | None) -> Path:
    if templates_dir is not None:
        folder = Path(templates_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"Scene template folder {folder} not found.")
        return folder
    tried = []
    for source in sources:
        parents = [source] if source.is_dir() else [source.parent.parent, source.parent]
        for parent in parents:
            folder = parent / TEMPLATE_FOLDER
            if folder.is_dir():
                return folder
            tried.append(str(folder))
    raise FileNotFoundError(
        f"No scene template folder found (tried {', '.join(dict.fromkeys(tried))}). Pass "
        f"templates_dir= (the AllenSDK cache's {TEMPLATE_FOLDER}/ with natural_scene_<n>.tiff)."
    )


def _check_templates(sessions: list[_Session], folder: Path, stimulus_table: str) -> list[int]:
    """Sorted scene numbers shown (blanks excluded); raises if one has no template file."""
    frames: set[int] = set()
    for s in sessions:
        shown = np.unique(s.presentations["frame"])
        shown = shown[shown != BLANK_FRAME]
        for frame in shown:
            if not (folder / template_name(frame)).is_file():
                raise FileNotFoundError(
                    f"{s.path}: intervals/{stimulus_table}.frame shows scene {int(frame)}, but "
                    f"its template {folder / template_name(frame)} does not exist. Download the "
                    "scene templates into the template folder (AllenSDK: "
                    "cache.get_natural_scene_template(n))."
                )
        frames.update(int(f) for f in shown)
    if not frames:
        raise ValueError(
            f"No non-blank presentation in intervals/{stimulus_table} of "
            f"{', '.join(str(s.path) for s in sessions)}."
        )
    return sorted(frames)


def _slots(presentations: dict) -> np.ndarray:
    """End of the time each presentation owns: the next onset if it comes within the gap
    tolerance of this stop time, else the stop time."""
    start, stop = presentations["start"], presentations["stop"]
    nxt = np.append(start[1:], np.inf)
    return np.where(nxt - stop <= _GAP_TOLERANCE, nxt, stop)


def _check_options(valid_fraction, test_fraction, block_length, seed) -> None:
    check_fractions(valid_fraction, test_fraction)
    ok = isinstance(block_length, (int, float)) and math.isfinite(block_length)
    if not (ok and block_length > 0):
        raise ValueError(f"block_length must be a number > 0 (seconds), got {block_length!r}.")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}.")


def _build_recording(
    s: _Session,
    spike_times: list[np.ndarray],
    intervals_extent: tuple[float, float],
    image_split: dict[int, int],
    *,
    fractions: tuple[float, float],
    block_length: float,
    seed: int,
) -> Data:
    first = min((t[0] for t in spike_times if t.size), default=math.inf)
    last = max((t[-1] for t in spike_times if t.size), default=-math.inf)
    pres = s.presentations
    lo = min(0.0, intervals_extent[0], first)
    hi = max(intervals_extent[1], float(pres["stop"].max()), last)
    t0, t1 = float(lo), float(np.nextafter(hi, math.inf))

    ends = _slots(pres)
    shown = pres["frame"] != BLANK_FRAME
    labels = np.array([image_split[int(f)] for f in pres["frame"][shown]], dtype=np.int64)
    splits = labelled_splits(
        (t0, t1), (pres["start"][shown], ends[shown], labels), block_length=block_length,
        valid_fraction=fractions[0], test_fraction=fractions[1],
        seed=[seed, 1, zlib.crc32(s.recording_id.encode())],
    )

    rows, peak = s.rows, s.peak[s.rows]
    probe = s.electrodes.get("probe_id")
    frames = pres["frame"][shown]
    return make_recording(
        session_id=s.recording_id,
        unit_ids=[f"{s.recording_id}/{u}" for u in s.units["allen_id"][rows]],
        domain=(t0, t1),
        splits=splits,
        spike_times=spike_times,
        brain_regions=s.electrodes["location"][peak].astype(str),
        stimuli=dict(
            start=pres["start"][shown],
            end=pres["stop"][shown],
            image_id=np.array([f"{IMAGE_SUBFOLDER}/{template_name(f)}" for f in frames]),
            frame=frames.astype(np.int64),
        ),
        subject_id=s.subject_id,
        brainset=_BRAINSET,
        session_fields={"unit_selection": json.dumps(s.record)},
        source=s.path,
        allen_id=s.units["allen_id"][rows],
        peak_channel_id=s.units["peak_channel_id"][rows],
        probe_id=probe[peak] if probe is not None else np.full(rows.size, -1, np.int64),
        **{m: s.units[m][rows] for m in QUALITY_METRICS if m in s.units},
    )


def convert_allen(
    sources: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    templates_dir: str | Path | None = None,
    stimulus_table: str = STIMULUS_TABLE,
    filters: UnitFilters | None = None,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    block_length: float = 10.0,
    seed: int = 0,
) -> list[Path]:
    """Convert Allen Visual Coding Neuropixels sessions into recordings (layout in the module
    docstring).

    Every session is read and checked (units, electrodes, presentations, templates) before
    anything is written; then the shown scenes are copied to ``<out_dir>/images`` and the
    sessions are written one at a time, reading the spike times of the kept units one unit at
    a time. The scene splits are drawn once over the scenes shown in all given sessions, so a
    scene has the same split in every session (and, as every Brain Observatory session shows
    the same 118 scenes, across separate conversions with the same seed).

    Args:
        sources: session NWB files and/or folders (an AllenSDK cache folder holds
            ``session_<id>/session_<id>.nwb``).
        out_dir: output folder (created); existing files of the same name are replaced.
        templates_dir: folder of ``natural_scene_<n>.tiff``; by default the
            ``natural_scene_templates`` folder of the cache (a source folder, or the parent or
            grandparent of a source file).
        stimulus_table: the intervals table of the presentations.
        filters: the unit filters (:class:`UnitFilters`; AllenSDK defaults).
        valid_fraction: share of the scenes (and of the blocks of the rest of each session)
            that goes to valid.
        test_fraction: share of the scenes (and of the blocks of the rest of each session)
            that goes to test.
        block_length: seconds per block of the time outside scene presentations.
        seed: seed of the scene split and of the block draws.

    Returns:
        The written recordings ``<out_dir>/allen_<id>.h5``, in source order. A session
        whose units all fail the filters is skipped with a warning.
    """
    filters = UnitFilters() if filters is None else filters
    _check_options(valid_fraction, test_fraction, block_length, seed)
    out_dir = Path(out_dir)
    sources = [Path(p) for p in ([sources] if isinstance(sources, (str, Path)) else sources)]
    paths = find_sessions(sources)
    templates = _find_templates(sources, templates_dir)

    sessions = [_plan_session(p, filters, stimulus_table) for p in paths]
    ids = Counter(s.recording_id for s in sessions)
    dup = [rid for rid, n in ids.items() if n > 1]
    if dup:
        raise ValueError(
            f"Several NWB files give the recording id {dup[0]!r}: "
            f"{[str(s.path) for s in sessions if s.recording_id == dup[0]]}. Convert them "
            "separately, into different folders."
        )
    empty = [s for s in sessions if s.rows.size == 0]
    for s in empty:
        warnings.warn(
            f"{s.path}: no unit passes the filters ({s.record}); the session is skipped.",
            stacklevel=2,
        )
    sessions = [s for s in sessions if s.rows.size]
    if not sessions:
        raise ValueError(
            "No unit of any session passes the unit filters; loosen them (UnitFilters) or "
            "check the structures asked for."
        )
    frames = _check_templates(sessions, templates, stimulus_table)
    labels = assign_splits(len(frames), valid_fraction=valid_fraction,
                           test_fraction=test_fraction, seed=[seed, 0], what="scene")
    image_split = dict(zip(frames, labels.tolist()))

    for frame in frames:
        target = out_dir / IMAGE_FOLDER / IMAGE_SUBFOLDER / template_name(frame)
        with atomic_path(target) as tmp:
            shutil.copyfile(templates / template_name(frame), tmp)

    written = []
    for s in sessions:
        with open_nwb(s.path) as nwbfile:
            spike_times = read_spike_times(nwbfile, s.rows, s.path, _LAYOUT_HINT)
            extent = interval_extent(nwbfile)
        data = _build_recording(
            s, spike_times, extent, image_split, fractions=(valid_fraction, test_fraction),
            block_length=block_length, seed=seed,
        )
        path = save_recording(data, out_dir / f"{s.recording_id}.h5")
        logger.info("%s: %d of %d units kept", s.recording_id, s.record["kept"],
                    s.record["in_table"])
        written.append(path)
    return written


def summarize_allen(path: str | Path) -> dict:
    """Counts of one converted recording: ``recording_id``, ``duration`` (s), ``units``
    (``{region: n}``, most units first), ``spikes``, ``unit_selection`` (the JSON record),
    ``presentations``, ``splits`` (``{split: {"presentations": n, "images": n, "seconds": x}}``)."""
    with Data.load(path, lazy=True) as data:
        regions = Counter(np.asarray(data.units.brain_region).astype(str).tolist())
        image_ids = np.asarray(data.stimulus_presentations.image_id).astype(str)
        splits = {}
        for split, (inside, seconds) in presentations_by_split(data).items():
            splits[split] = {
                "presentations": int(inside.sum()),
                "images": int(np.unique(image_ids[inside]).size),
                "seconds": seconds,
            }
        return {
            "recording_id": str(data.session.id),
            "duration": float(np.asarray(data.domain.end)[-1] - np.asarray(data.domain.start)[0]),
            "units": dict(regions.most_common()),
            "spikes": int(len(data.spikes.timestamps)),
            "unit_selection": json.loads(str(data.session.unit_selection)),
            "presentations": int(image_ids.size),
            "splits": splits,
        }
