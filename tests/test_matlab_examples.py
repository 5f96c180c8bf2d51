"""The MATLAB example layouts (trial spike counts, tetrode spike times), on fixture files."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from temporaldata import Data

from neurobridge.datasets.matlab_examples import convert_tetrode_spikes, convert_trial_counts


def test_trial_counts_keep_every_spike_and_whole_trials(tmp_path):
    rng = np.random.default_rng(0)
    trials = np.zeros((1, 20), dtype=[("data", object), ("condition", object)])
    for i in range(20):
        trials[0, i]["data"] = rng.poisson(0.02, size=(5, 300)).astype(np.uint8)
        trials[0, i]["condition"] = f"reach{i % 3}"
    scipy.io.savemat(tmp_path / "d.mat", {"D": trials})
    path = convert_trial_counts(tmp_path / "d.mat", tmp_path / "out", session_id="pmd",
                                region="PMd", gap=0.1, test_fraction=0.25)
    data = Data.load(path, lazy=False)
    total = sum(int(trials[0, i]["data"].sum()) for i in range(20))
    assert len(data.spikes.timestamps) == total
    # trial k starts at 0.4 k s; spikes of unit 2 in trial 3 sit at its bin centres
    t3 = trials[0, 3]["data"][2]
    got = data.spikes.timestamps[(data.spikes.unit_index == 2)
                                 & (data.spikes.timestamps >= 1.2) & (data.spikes.timestamps < 1.5)]
    np.testing.assert_allclose(np.sort(got), np.repeat(1.2 + (np.flatnonzero(t3) + 0.5) * 1e-3,
                                                       t3[t3 > 0]))
    assert len(data.test_domain) == 5
    np.testing.assert_allclose(data.test_domain.end - data.test_domain.start, 0.3)
    covered = sum(float(np.sum(getattr(data, f"{s}_domain").end - getattr(data, f"{s}_domain").start))
                  for s in ("train", "valid", "test"))
    assert covered == pytest.approx(20 * 0.3)  # the gaps are in no split
    with pytest.raises(ValueError, match="no struct array 'D'"):
        scipy.io.savemat(tmp_path / "bad.mat", {"X": np.zeros(3)})
        convert_trial_counts(tmp_path / "bad.mat", tmp_path / "out", session_id="x", region="r")


def test_tetrode_spikes_skip_empty_units(tmp_path):
    unit = np.zeros((1, 1), dtype=[("time", object)])
    unit[0, 0]["time"] = np.array([[10.5], [11.0], [30.2]])
    empty = np.zeros((1, 0))
    tetrode1 = np.empty((1, 2), dtype=object)
    tetrode1[0, 0], tetrode1[0, 1] = unit, empty
    tetrode2 = np.empty((1, 1), dtype=object)
    tetrode2[0, 0] = unit
    epoch = np.empty((1, 2), dtype=object)
    epoch[0, 0], epoch[0, 1] = tetrode1, tetrode2
    day = np.empty((1, 1), dtype=object)
    day[0, 0] = epoch
    spikes = np.empty((1, 1), dtype=object)
    spikes[0, 0] = day
    scipy.io.savemat(tmp_path / "s.mat", {"spikes": spikes})
    path = convert_tetrode_spikes(tmp_path / "s.mat", tmp_path / "out", session_id="rat",
                                  region="CA1", block_length=2.0)
    data = Data.load(path, lazy=False)
    assert data.units.id.tolist() == ["rat/t01c01", "rat/t02c01"]
    assert len(data.spikes.timestamps) == 6
    assert data.domain.start[0] == 10.0 and data.domain.end[-1] == 31.0
