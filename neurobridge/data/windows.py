"""Windows cut from recordings read once per process: the data pipeline's hot path.

temporaldata's ``Data.slice`` (after torch_brain's ``Dataset.get_recording``, which deep-copies
the recording) is the reference for what a window holds, but costs milliseconds of Python per
window. A :class:`RecordingReader` reads a recording file once: the small fields (``units``,
``session``) eagerly, the large arrays (spikes, regular time series) memory-mapped from the HDF5
file where it stores them contiguously (so worker processes share the operating system's page
cache instead of each holding a copy), read into memory otherwise. :meth:`RecordingReader.window`
then cuts a window with two binary searches and a few array slices, and returns a
:class:`Window` with the values ``Data.slice(start, end)`` would give for the fields the
tokenizers read (a test compares the two on every field, window after window).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np
from temporaldata import Data

__all__ = ["Fields", "RecordingReader", "Window"]


class Fields:
    """Named arrays (or nested :class:`Fields`) with temporaldata's ``keys()``."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def keys(self) -> list[str]:
        return [k for k in self.__dict__ if not k.startswith("_")]


class Window(Fields):
    """One window of a recording: ``units`` and ``session`` as stored, ``spikes`` (timestamps
    relative to the window start) and each regular time series (the samples ``Data.slice``
    keeps, with their ``sampling_rate``); :attr:`absolute_start` is the window start in the
    recording's time."""

    def __init__(self, absolute_start: float, **fields):
        super().__init__(**fields)
        self._absolute_start = absolute_start

    @property
    def absolute_start(self) -> float:
        return self._absolute_start


class RecordingReader:
    """The arrays of one recording file, read once, windows cut by binary search.

    Args:
        path: a recording file (temporaldata HDF5).

    A regular time series whose domain has gaps (several intervals) is cut by temporaldata
    itself (:attr:`gappy` lists those series): the fast path covers contiguous series only.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with h5py.File(self.path, "r") as f:
            data = Data.from_hdf5(f, lazy=True)
            self.units = Fields(**{k: np.asarray(getattr(data.units, k)) for k in data.units.keys()})
            self.session = Fields(**{k: getattr(data.session, k) for k in data.session.keys()})
            self.spikes = None
            #: ``{name: (sampling_rate, domain_start, domain_end, {field: [n_samples, ...]})}``
            self.series: dict[str, tuple[float, float, float, dict[str, np.ndarray]]] = {}
            #: names of regular time series with gaps in their domain (cut by temporaldata)
            self.gappy: list[str] = []
            for name in data.keys():
                kind = f[name].attrs.get("object") if isinstance(f[name], h5py.Group) else None
                if kind == "IrregularTimeSeries" and name == "spikes":
                    self.spikes = {k: self._array(f[name][k]) for k in data.spikes.keys()}
                elif kind == "RegularTimeSeries":
                    dom = f[name]["domain"]
                    if len(dom["start"]) != 1:
                        self.gappy.append(name)
                        continue
                    fields = {k: self._array(f[name][k]) for k in getattr(data, name).keys()}
                    self.series[name] = (float(f[name].attrs["sampling_rate"]),
                                         float(dom["start"][0]), float(dom["end"][0]), fields)
        self._lazy: Data | None = None
        self._stat = _identity(self.path)

    def _array(self, dset: h5py.Dataset) -> np.ndarray:
        """A memory map of a contiguous dataset, else its values."""
        offset = dset.id.get_offset()
        if offset is None or dset.chunks is not None or dset.dtype.kind not in "biuf" \
                or dset.size == 0:
            return dset[()]
        return np.memmap(self.path, mode="r", dtype=dset.dtype, shape=dset.shape, offset=offset)

    def window(self, start: float, end: float) -> Window:
        """The window ``[start, end)`` in the recording's time (what ``Data.slice`` gives).

        Raises an ``OSError`` naming the file and the window when the file was removed, or
        changed on disk, since it was read (memory-mapped data would then be another file's,
        or no longer readable).
        """
        try:
            now = _identity(self.path)
        except OSError as err:
            now = err
        if now != self._stat:
            what = (f"cannot be read any more ({now.strerror or now})" if isinstance(now, OSError)
                    else "changed on disk (size, modification time or inode)")
            raise OSError(
                f"{self.path} {what} since the run opened it, reading the window "
                f"[{start:.3f}, {end:.3f}) s. A recording must stay as it was while a run "
                "reads it: restore the file, then resume the run from its last checkpoint "
                "(resume_from=RUN/checkpoints/last.ckpt)."
            )
        fields = {"units": self.units, "session": self.session}
        if self.spikes is not None:
            ts = self.spikes["timestamps"]
            lo, hi = np.searchsorted(ts, start), np.searchsorted(ts, end)
            spikes = {k: np.array(v[lo:hi]) for k, v in self.spikes.items()}
            spikes["timestamps"] = spikes["timestamps"] - start
            fields["spikes"] = Fields(**spikes)
        for name, (rate, d0, d1, arrays) in self.series.items():
            n = min((len(v) for v in arrays.values()), default=0)
            lo, hi = _sample_index(start, rate, d0, d1, n), _sample_index(end, rate, d0, d1, n)
            fields[name] = Fields(sampling_rate=rate,
                                  **{k: np.array(v[lo:max(lo, hi)]) for k, v in arrays.items()})
        if self.gappy:
            if self._lazy is None:
                self._lazy = Data.from_hdf5(h5py.File(self.path, "r"), lazy=True)
            for name in self.gappy:
                fields[name] = getattr(self._lazy, name).slice(start, end)
        return Window(float(start), **fields)


def _sample_index(time: float, rate: float, d0: float, d1: float, n: int, eps: float = 1e-9) -> int:
    """The first sample at or after ``time`` of a contiguous series sampled at ``rate`` on
    ``[d0, d1]`` with ``n`` samples (temporaldata's ``RegularTimeSeries._time_to_idx``)."""
    if time <= d0:
        return 0
    if time > d1:
        return n
    idx = (time - d0) * rate
    if abs(idx - round(idx)) < eps:
        idx = float(round(idx))
    return math.ceil(idx)



def _identity(path: Path) -> tuple[int, int, int]:
    """``(inode, size, mtime)`` of a file: what changes when it is rewritten or replaced."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns
