"""The one recording writer and the shared split helpers."""

from __future__ import annotations

import numpy as np
import pytest
from temporaldata import Data, RegularTimeSeries

from neurobridge.data import RecordingDataset
from neurobridge.data.splits import (
    assign_splits,
    block_splits,
    stimulus_splits,
    trial_splits,
)
from neurobridge.data.writer import make_recording, write_recording


def _pieces(splits: dict) -> list[tuple[float, float, str]]:
    out = [(a, b, s) for s, iv in splits.items() for a, b in zip(iv.start, iv.end)]
    return sorted(out)


def _recording(**overrides) -> dict:
    rng = np.random.default_rng(0)
    spike_times = [np.sort(rng.uniform(0, 100, 300)) for _ in range(4)]
    kwargs = dict(
        session_id="rec",
        unit_ids=[f"rec/u{i}" for i in range(4)],
        domain=(0.0, 100.0),
        splits=block_splits((0.0, 100.0), block_length=10.0, seed=0),
        spike_times=spike_times,
        brain_regions=["M1", "M1", "PMd", "PMd"],
        heldout=np.array([False, False, False, True]),
    )
    kwargs.update(overrides)
    return kwargs


def test_written_recording_reads_back(tmp_path):
    kwargs = _recording()
    path = write_recording(tmp_path / "rec.h5", **kwargs)
    data = Data.load(path, lazy=False)
    assert data.units.id.tolist() == kwargs["unit_ids"]
    assert data.units.heldout.tolist() == [False, False, False, True]
    assert np.all(np.diff(data.spikes.timestamps) >= 0)
    for u, times in enumerate(kwargs["spike_times"]):
        np.testing.assert_array_equal(np.sort(data.spikes.timestamps[data.spikes.unit_index == u]),
                                      times)
    ds = RecordingDataset(tmp_path)
    assert ds.unit_ids() == kwargs["unit_ids"]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"unit_ids": ["rec/u0", "rec/u0", "rec/u2", "rec/u3"]}, "repeats"),
        ({"unit_ids": ["u0", "u1", "u2", "u3"]}, "do not start with 'rec/'"),
        ({"domain": (0.0, 50.0), "splits": block_splits((0.0, 50.0), seed=0)}, "outside the domain"),
        ({"spike_times": [np.array([1.0, np.nan])] + [np.zeros(0)] * 3}, "NaN"),
        ({"splits": {"train": [(0, 60)], "valid": [], "test": [(50, 100)]}}, "overlap at 50"),
        ({"splits": {"train": [(0, 60)], "test": [(60, 100)]}}, "has keys"),
        ({"splits": {"train": [(0, 60)], "valid": [], "test": [(60, 120)]}}, "outside the domain"),
        ({"brain_regions": ["M1", ""]}, "brain_regions"),
        ({"heldout": np.array([True])}, "units.heldout"),
        ({"stimuli": {"start": [1.0], "end": [2.0]}}, "image_id"),
        ({"spike_times": None, "timestamps": [2.0, 1.0], "unit_index": [0, 1]}, "is not sorted"),
        ({"spike_times": None, "timestamps": [1.0], "unit_index": [7]}, "outside the 4 units"),
        ({"values": RegularTimeSeries(values=np.full((10, 4), np.nan), sampling_rate=1.0)},
         "values.values holds NaN"),
    ],
)
def test_bad_recordings_name_the_field(overrides, field, tmp_path):
    with pytest.raises(ValueError, match=field) as info:
        write_recording(tmp_path / "rec.h5", **_recording(**overrides), source="fixture.mat")
    assert "recording 'rec' (from fixture.mat)" in str(info.value)
    assert not (tmp_path / "rec.h5").exists()


def test_block_splits_tile_and_are_seeded():
    splits = block_splits((0.0, 300.0), block_length=10.0, valid_fraction=0.1,
                          test_fraction=0.2, seed=3)
    pieces = _pieces(splits)
    assert pieces[0][0] == 0.0 and pieces[-1][1] == 300.0
    assert all(a[1] == pytest.approx(b[0]) for a, b in zip(pieces, pieces[1:]))  # tiles
    seconds = {s: float(np.sum(iv.end - iv.start)) for s, iv in splits.items()}
    assert seconds == pytest.approx({"train": 210.0, "valid": 30.0, "test": 60.0})
    again = block_splits((0.0, 300.0), block_length=10.0, valid_fraction=0.1,
                         test_fraction=0.2, seed=3)
    assert _pieces(again) == pieces
    other = block_splits((0.0, 300.0), block_length=10.0, valid_fraction=0.1,
                         test_fraction=0.2, seed=4)
    assert _pieces(other) != pieces


def test_trial_splits_never_cut_a_trial():
    start = np.arange(40) * 1.0 + 0.2
    end = start + 0.6
    splits = trial_splits((0.0, 40.0), start, end, valid_fraction=0.1, test_fraction=0.25,
                          seed=0)
    test = splits["test"]
    # every test interval is one or several whole trials
    inside = [(a, b) for a, b in zip(start, end)
              if np.any((test.start <= a + 1e-9) & (test.end >= b - 1e-9))]
    assert len(inside) == 10
    assert float(np.sum(test.end - test.start)) == pytest.approx(10 * 0.6)
    # the time between trials is train; with between_trials="none" it is in no split
    gaps_none = trial_splits((0.0, 40.0), start, end, seed=0, between_trials="none")
    total = sum(float(np.sum(iv.end - iv.start)) for iv in gaps_none.values())
    assert total == pytest.approx(40 * 0.6)
    labels = np.zeros(40, dtype=int)
    labels[:5] = 2
    fixed = trial_splits((0.0, 40.0), start, end, labels=labels)
    np.testing.assert_allclose(fixed["test"].start, start[:5])
    np.testing.assert_allclose(fixed["test"].end, end[:5])
    with pytest.raises(ValueError, match="overlaps the next"):
        trial_splits((0.0, 40.0), start, start + 1.5)


def test_stimulus_splits_keep_repeats_together():
    rng = np.random.default_rng(0)
    images = rng.permutation(np.repeat([f"img{i}.png" for i in range(20)], 5))
    start = 50.0 + np.arange(images.size) * 0.5
    splits = stimulus_splits((0.0, 150.0), start, start + 0.4, images, block_length=10.0,
                             valid_fraction=0.1, test_fraction=0.2, seed=1)
    split_of = {}
    for t, image in zip(start + 0.1, images):
        (s,) = [k for k, iv in splits.items() if np.any((iv.start <= t) & (t < iv.end))]
        split_of.setdefault(image, set()).add(s)
    assert all(len(s) == 1 for s in split_of.values())
    counts = {k: sum(v == {k} for v in split_of.values()) for k in ("train", "valid", "test")}
    assert counts == {"train": 14, "valid": 2, "test": 4}
    # the 50 s before the first presentation are blocks drawn into the splits too
    assert make_recording(**_recording(domain=(0.0, 150.0), splits=splits))


def test_assign_splits_refuses_no_train():
    with pytest.raises(ValueError, match="leave no train trial"):
        assign_splits(3, valid_fraction=0.5, test_fraction=0.5, seed=0, what="trial")
