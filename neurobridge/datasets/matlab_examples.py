"""Two MATLAB layouts of small public example recordings, converted through the one writer.

- **Trial spike counts** (the DataHigh toolbox's example data): a struct array ``D`` of trials,
  ``D(i).data`` a ``[units, 1-ms bins]`` count matrix and ``D(i).condition`` its condition.
  Trials are not contiguous in time: they are laid out one after another with ``gap`` seconds
  between them, each spike at the centre of its millisecond, and split by whole trials (the
  gaps, not recorded, belong to no split).
- **Tetrode spike times** (the Frank lab's ``spikes{day}{epoch}{tetrode}{cell}.time`` cell
  arrays, as in nelpy's example data): every non-empty ``time`` field is one unit, named
  ``t<tetrode>c<cell>``; the recording is continuous and split into interleaved blocks.

Both write ``<out_dir>/<session_id>.h5`` with :func:`~neurobridge.data.write_recording`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.io

from neurobridge.data.splits import block_splits, trial_splits
from neurobridge.data.writer import write_recording

__all__ = ["convert_tetrode_spikes", "convert_trial_counts"]


def _loadmat(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"MATLAB file {path} not found.")
    try:
        return scipy.io.loadmat(path)
    except Exception as err:  # scipy raises several kinds on a bad file
        raise ValueError(f"{path} is not a readable MATLAB file ({type(err).__name__}: {err}).") from None


def convert_trial_counts(
    path: str | Path,
    out_dir: str | Path,
    *,
    session_id: str,
    region: str,
    bin_size: float = 0.001,
    gap: float = 0.1,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Path:
    """Trials of spike counts (struct ``D`` with ``data [units, bins]``) to one recording.

    Args:
        path: the ``.mat`` file.
        out_dir: output folder.
        session_id: the recording id (unit ids are ``<session_id>/u<k>``).
        region: the region of every unit.
        bin_size: seconds per column of ``data``.
        gap: seconds between consecutive trials in the laid-out recording.
        valid_fraction: share of the trials in valid.
        test_fraction: share of the trials in test.
        seed: seeds the trial draw.

    Returns:
        The written file; each trial's ``condition`` is kept in ``session.trial_conditions``
        (a JSON list, in trial order).
    """
    path = Path(path)
    mat = _loadmat(path)
    if "D" not in mat or mat["D"].dtype.names is None or "data" not in mat["D"].dtype.names:
        raise ValueError(f"{path}: no struct array 'D' with a 'data' field (one trial each, "
                         "data = [units, bins] spike counts).")
    trials = mat["D"].ravel()
    counts = [np.asarray(t["data"]) for t in trials]
    n_units = counts[0].shape[0]
    bad = [i for i, c in enumerate(counts) if c.ndim != 2 or c.shape[0] != n_units]
    if bad:
        raise ValueError(f"{path}: D({bad[0] + 1}).data has shape {counts[bad[0]].shape}; every "
                         f"trial needs [{n_units} units, bins].")
    if any(np.any(c < 0) or not np.all(np.isfinite(c)) for c in counts):
        raise ValueError(f"{path}: D.data holds negative or non-finite counts.")
    starts, ends, times, units = [], [], [], []
    t = 0.0
    for c in counts:
        unit, col = np.nonzero(c)
        reps = c[unit, col].astype(np.int64)
        times.append(np.repeat(t + (col + 0.5) * bin_size, reps))
        units.append(np.repeat(unit, reps))
        starts.append(t)
        ends.append(t + c.shape[1] * bin_size)
        t = ends[-1] + gap
    times, units = np.concatenate(times), np.concatenate(units)
    order = np.argsort(times, kind="stable")
    domain = (0.0, ends[-1])
    conditions = [str(np.asarray(tr["condition"]).ravel()[0]) if "condition" in trials.dtype.names
                  else "" for tr in trials]
    return write_recording(
        Path(out_dir) / f"{session_id}.h5",
        session_id=session_id,
        unit_ids=[f"{session_id}/u{k:03d}" for k in range(n_units)],
        brain_regions=[region] * n_units,
        timestamps=times[order],
        unit_index=units[order],
        domain=domain,
        splits=trial_splits(domain, np.array(starts), np.array(ends),
                            valid_fraction=valid_fraction, test_fraction=test_fraction,
                            seed=seed, between_trials="none"),
        session_fields={"trial_conditions": json.dumps(conditions)},
        source=path,
    )


def _tetrode_units(node, path: tuple[int, ...], out: dict) -> None:
    if isinstance(node, np.ndarray) and node.dtype == object:
        for i, child in enumerate(node.ravel()):
            _tetrode_units(child, path + (i,), out)
    elif isinstance(node, np.ndarray) and node.dtype.names and "time" in node.dtype.names:
        for i, unit in enumerate(node.ravel()):
            times = np.asarray(unit["time"], dtype=np.float64).ravel()
            if times.size:
                out[path + ((i,) if node.size > 1 else ())] = times


def convert_tetrode_spikes(
    path: str | Path,
    out_dir: str | Path,
    *,
    session_id: str,
    region: str,
    block_length: float = 10.0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Path:
    """``spikes{day}{epoch}{tetrode}{cell}.time`` (s) to one continuous recording.

    Args:
        path: the ``.mat`` file (variable ``spikes``).
        out_dir: output folder.
        session_id: the recording id (unit ids ``<session_id>/t<tetrode>c<cell>``, 1-based).
        region: the region of every unit.
        block_length: seconds per split block.
        valid_fraction: share of the blocks in valid.
        test_fraction: share of the blocks in test.
        seed: seeds the block draw.
    """
    path = Path(path)
    mat = _loadmat(path)
    if "spikes" not in mat:
        raise ValueError(f"{path}: no variable 'spikes' (cell array spikes{{day}}{{epoch}}"
                         "{tetrode}{cell} with a 'time' field).")
    found: dict[tuple[int, ...], np.ndarray] = {}
    _tetrode_units(mat["spikes"], (), found)
    if not found:
        raise ValueError(f"{path}: 'spikes' holds no unit with spike times.")
    keys = sorted(found)
    names = [f"t{k[-2] + 1:02d}c{k[-1] + 1:02d}" if len(k) >= 2 else f"u{i}"
             for i, k in enumerate(keys)]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: units of different days or epochs share a tetrode and cell; "
                         "convert one epoch at a time.")
    spike_times = [np.sort(found[k]) for k in keys]
    t0 = float(np.floor(min(t[0] for t in spike_times)))
    t1 = float(np.ceil(max(t[-1] for t in spike_times) + 1e-6))
    return write_recording(
        Path(out_dir) / f"{session_id}.h5",
        session_id=session_id,
        unit_ids=[f"{session_id}/{n}" for n in names],
        brain_regions=[region] * len(names),
        spike_times=spike_times,
        domain=(t0, t1),
        splits=block_splits((t0, t1), block_length=block_length, valid_fraction=valid_fraction,
                            test_fraction=test_fraction, seed=seed),
        source=path,
    )
