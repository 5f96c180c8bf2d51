"""Allen Visual Coding Neuropixels converter, on miniature NWB files in the AllenSDK layout."""

from __future__ import annotations

import datetime
import importlib.util
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from temporaldata import Data

pynwb = pytest.importorskip("pynwb")

from neurobridge.data import RecordingDataset  # noqa: E402
from neurobridge.data.stimuli import read_presentations, stimulus_windows  # noqa: E402
from neurobridge.datasets.allen import (  # noqa: E402
    UnitFilters,
    convert_allen,
    read_electrodes,
    read_units,
    select_units,
    summarize_allen,
)

SESSIONS = (715093703, 719161530)
N_UNITS = 30
N_SCENES = 10  # scenes 0..9 are shown; a template for scene 10 exists but is not shown
REPEATS = 4
N_BLANKS = 4
PERIOD, SHOWN = 0.2502, 0.2501  # onset to onset, and how long each scene is shown (s)
SCENES_START = 21.0
END = 59.5
# channel ids: probe 1000 -> 8500000xx, probe 1001 -> 8500001xx
CHANNELS = [
    (850000000 + k, 1000, "VISp" if k < 4 else "CA1", True) for k in range(8)
] + [
    (850000100 + k, 1001, "VISl" if k < 4 else "LGd", k != 7) for k in range(8)
]
INVALID_CHANNEL = 850000107
# units failing a filter (row in the units table -> changes); everything else passes
FAILING = {
    0: {"amplitude_cutoff": 0.3},
    1: {"amplitude_cutoff": 0.25},
    2: {"amplitude_cutoff": np.nan},
    3: {"presence_ratio": 0.8},
    4: {"presence_ratio": 0.9},
    5: {"isi_violations": 0.9},
    6: {"isi_violations": 2.5},
    7: {"quality": "noise"},
    8: {"peak_channel_id": INVALID_CHANNEL},
}


def _template(frame: int) -> np.ndarray:
    """A tiny grayscale scene, different for every frame."""
    y, x = np.mgrid[0:6, 0:8]
    return ((x * 20 + y * 7 + frame * 23) % 256).astype(np.uint8)


def write_templates(folder: Path, frames=range(N_SCENES + 1)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for frame in frames:
        Image.fromarray(_template(frame)).save(folder / f"natural_scene_{frame}.tiff")


def write_session(
    path: Path,
    *,
    session_id: int,
    seed: int = 0,
    units: bool = True,
    spike_times: bool = True,
    bad_peak: bool = False,
    stimulus: bool = True,
) -> dict:
    """One session NWB file laid out like the AllenSDK's; returns what was written."""
    rng = np.random.default_rng(seed)
    nwb = pynwb.NWBFile(
        session_description="Allen Brain Observatory Visual Coding Neuropixels (fixture)",
        identifier=str(session_id),
        session_start_time=datetime.datetime(2019, 1, 1, tzinfo=datetime.timezone.utc),
        subject=pynwb.file.Subject(subject_id=str(700000 + seed), species="Mus musculus"),
    )
    nwb.add_electrode_column(name="probe_id", description="probe of the channel")
    nwb.add_electrode_column(name="valid_data", description="channel usable")
    groups = {}
    for probe, name in ((1000, "probeA"), (1001, "probeB")):
        device = nwb.create_device(name=name)
        groups[probe] = nwb.create_electrode_group(
            name=name, description="Neuropixels", location="brain", device=device)
    for channel, probe, location, valid in CHANNELS:
        nwb.add_electrode(id=channel, group=groups[probe], location=location, probe_id=probe,
                          valid_data=valid)

    valid_channels = [c for c, _, _, v in CHANNELS if v]
    allen_ids = 951000000 + rng.permutation(1000)[:N_UNITS]
    rows = []
    for u in range(N_UNITS):
        row = {
            "id": int(allen_ids[u]),
            "peak_channel_id": valid_channels[u % len(valid_channels)],
            "amplitude_cutoff": float(rng.uniform(0.0, 0.09)),
            "presence_ratio": float(rng.uniform(0.96, 1.0)),
            "isi_violations": float(rng.uniform(0.0, 0.4)),
            "snr": float(rng.uniform(1.0, 5.0)),
            "firing_rate": float(rng.uniform(2.0, 20.0)),
            "quality": "good",
        }
        row.update(FAILING.get(u, {}))
        rate = rng.uniform(5.0, 20.0)
        row["spike_times"] = np.sort(rng.uniform(0.5, END, size=rng.poisson(rate * 59)))
        rows.append(row)
    if bad_peak:
        rows[12]["peak_channel_id"] = 123456
    if units:
        for name in ("peak_channel_id", "amplitude_cutoff", "presence_ratio", "isi_violations",
                     "snr", "firing_rate", "quality"):
            nwb.add_unit_column(name=name, description=name)
        for row in rows:
            row = dict(row)
            if not spike_times:
                del row["spike_times"]
            nwb.add_unit(**row)

    spont = pynwb.epoch.TimeIntervals(name="spontaneous_presentations", description="grey")
    spont.add_interval(start_time=0.5, stop_time=20.5)
    nwb.add_time_intervals(spont)
    frames = np.concatenate([np.repeat(np.arange(N_SCENES), REPEATS), np.full(N_BLANKS, -1)])
    frames = rng.permutation(frames)
    start = SCENES_START + np.arange(frames.size) * PERIOD
    if stimulus:
        scenes = pynwb.epoch.TimeIntervals(
            name="natural_scenes_presentations", description="natural scenes")
        scenes.add_column(name="frame", description="scene, -1 blank")
        # stored in shuffled row order: the converter sorts by onset
        for k in rng.permutation(frames.size):
            scenes.add_interval(start_time=start[k], stop_time=start[k] + SHOWN,
                                frame=float(frames[k]))
        nwb.add_time_intervals(scenes)
    gratings = pynwb.epoch.TimeIntervals(name="drifting_gratings_presentations",
                                         description="gratings")
    for k in range(30):
        gratings.add_interval(start_time=33.0 + 0.8 * k, stop_time=33.5 + 0.8 * k)
    nwb.add_time_intervals(gratings)

    path.parent.mkdir(parents=True, exist_ok=True)
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return {"path": path, "units": rows, "frames": frames, "start": start}


def write_cache(root: Path, **kwargs) -> dict:
    """An AllenSDK-like cache: two sessions and the scene templates."""
    sessions = {
        sid: write_session(root / f"session_{sid}" / f"session_{sid}.nwb", session_id=sid,
                           seed=k, **kwargs)
        for k, sid in enumerate(SESSIONS)
    }
    write_templates(root / "natural_scene_templates")
    return sessions


@pytest.fixture(scope="module")
def allen(tmp_path_factory):
    root = tmp_path_factory.mktemp("allen")
    sessions = write_cache(root / "cache")
    paths = convert_allen(root / "cache", root / "out")
    return {
        "root": root,
        "cache": root / "cache",
        "out": root / "out",
        "sessions": sessions,
        "paths": paths,
        "data": {sid: Data.load(p, lazy=False) for sid, p in zip(SESSIONS, paths)},
    }


def _kept_rows() -> list[int]:
    return [u for u in range(N_UNITS) if u not in FAILING]


def _split_of(data: Data, t: np.ndarray) -> np.ndarray:
    """Index of the split whose domain contains each time, -1 if none."""
    out = np.full(t.size, -1)
    for s, split in enumerate(("train", "valid", "test")):
        dom = getattr(data, f"{split}_domain")
        a, b = np.asarray(dom.start), np.asarray(dom.end)
        out[((a[None] <= t[:, None]) & (t[:, None] < b[None])).any(axis=1)] = s
    return out


def test_units_regions_and_ids(allen):
    for sid, data in allen["data"].items():
        assert str(data.session.id) == f"allen_{sid}"
        assert str(data.brainset.id) == "allen_visual_coding_neuropixels"
        rows = [allen["sessions"][sid]["units"][u] for u in _kept_rows()]
        assert np.asarray(data.units.allen_id).tolist() == [r["id"] for r in rows]
        assert np.asarray(data.units.id).astype(str).tolist() == [
            f"allen_{sid}/{r['id']}" for r in rows]
        channel = {c: (probe, loc) for c, probe, loc, _ in CHANNELS}
        expected = [channel[r["peak_channel_id"]] for r in rows]
        assert np.asarray(data.units.brain_region).astype(str).tolist() == [e[1] for e in expected]
        assert np.asarray(data.units.probe_id).tolist() == [e[0] for e in expected]
        assert set(np.asarray(data.units.brain_region).astype(str)) == {"VISp", "CA1", "VISl",
                                                                        "LGd"}
        np.testing.assert_array_equal(np.asarray(data.units.snr), [r["snr"] for r in rows])
        assert json.loads(str(data.session.unit_selection)) == {
            "in_table": 30,
            "dropped": {"amplitude_cutoff > 0.1": 3, "presence_ratio < 0.95": 2,
                        "isi_violations > 0.5": 2, "quality != good": 1,
                        "peak channel not valid_data": 1},
            "kept": 21,
        }


def _tables(path: Path):
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        return read_units(nwbfile, path), read_electrodes(nwbfile, path)


def test_each_quality_filter_drops_its_units(allen):
    path = allen["sessions"][SESSIONS[0]]["path"]
    units, electrodes = _tables(path)
    rows, _ = select_units(units, electrodes, path)
    assert rows.tolist() == _kept_rows()
    off = {
        "max_amplitude_cutoff": None, "min_presence_ratio": None, "max_isi_violations": None,
        "quality": None, "valid_channels_only": False,
    }
    freed = {"max_amplitude_cutoff": [0, 1, 2], "min_presence_ratio": [3, 4],
             "max_isi_violations": [5, 6], "quality": [7], "valid_channels_only": [8]}
    for name, value in off.items():
        rows, _ = select_units(units, electrodes, path, UnitFilters(**{name: value}))
        assert rows.tolist() == sorted(_kept_rows() + freed[name]), name
    # thresholds are configurable: a looser amplitude cutoff keeps 0.25 but not 0.3 (nor NaN)
    rows, _ = select_units(units, electrodes, path, UnitFilters(max_amplitude_cutoff=0.26))
    assert rows.tolist() == sorted(_kept_rows() + [1])
    everything = UnitFilters(**off)
    assert select_units(units, electrodes, path, everything)[0].tolist() == list(range(N_UNITS))
    rows, record = select_units(units, electrodes, path, UnitFilters(structures=["LGd", "VISp"]))
    region = dict((c, loc) for c, _, loc, _ in CHANNELS)
    assert rows.size and all(region[units["peak_channel_id"][r]] in ("LGd", "VISp") for r in rows)
    assert set(rows) < set(_kept_rows()) and record["dropped"]["structure not selected"] > 0
    with pytest.raises(ValueError, match="not a string"):
        UnitFilters(structures="VISp")


def test_structures_restrict_the_recording(allen, tmp_path):
    filters = UnitFilters(structures=("VISp", "VISl"))
    paths = convert_allen(allen["cache"], tmp_path, filters=filters)
    for path in paths:
        regions = set(np.asarray(Data.load(path, lazy=False).units.brain_region).astype(str))
        assert regions == {"VISp", "VISl"}
    # a session left without units is skipped with a warning; none left is an error
    with pytest.warns(UserWarning, match="skipped"):
        with pytest.raises(ValueError, match="No unit of any session"):
            convert_allen(allen["cache"], tmp_path / "x", filters=UnitFilters(structures=["SCig"]))


def test_presentations_images_and_blanks(allen):
    for sid, data in allen["data"].items():
        fx = allen["sessions"][sid]
        shown = fx["frames"] != -1
        table = data.stimulus_presentations
        assert len(table) == N_SCENES * REPEATS  # blanks dropped
        np.testing.assert_array_equal(np.asarray(table.start), fx["start"][shown])
        np.testing.assert_array_equal(np.asarray(table.end), fx["start"][shown] + SHOWN)
        assert np.asarray(table.frame).tolist() == fx["frames"][shown].tolist()
        image_ids = np.asarray(table.image_id).astype(str)
        assert image_ids.tolist() == [
            f"natural_scenes/natural_scene_{f}.tiff" for f in fx["frames"][shown]]
        # each id names a copy of the right template in <out>/images
        for image_id, frame in zip(image_ids, fx["frames"][shown]):
            with Image.open(allen["out"] / "images" / image_id) as image:
                np.testing.assert_array_equal(np.asarray(image), _template(frame))
    copied = sorted(p.name for p in (allen["out"] / "images" / "natural_scenes").iterdir())
    assert copied == sorted(f"natural_scene_{f}.tiff" for f in range(N_SCENES))  # not 10


def test_spikes_preserved_exactly(allen):
    for sid, data in allen["data"].items():
        rows = [allen["sessions"][sid]["units"][u] for u in _kept_rows()]
        timestamps = np.asarray(data.spikes.timestamps)
        unit_index = np.asarray(data.spikes.unit_index)
        assert timestamps.dtype == np.float64 and (np.diff(timestamps) >= 0).all()
        assert timestamps.size == sum(r["spike_times"].size for r in rows)
        for k, row in enumerate(rows):
            np.testing.assert_array_equal(timestamps[unit_index == k], row["spike_times"])
        assert data.domain.start[0] == 0.0
        assert data.domain.end[-1] > max(r["spike_times"][-1] for r in rows)
        assert data.domain.end[-1] == pytest.approx(END, abs=0.01)


def test_split_by_scene(allen):
    splits = {}
    for data in allen["data"].values():
        table = data.stimulus_presentations
        start, image_ids = np.asarray(table.start), np.asarray(table.image_id).astype(str)
        # the whole presentation (onset to stop) lies in one split, that of its scene
        at_start, at_end = _split_of(data, start), _split_of(data, np.asarray(table.end) - 1e-6)
        assert (at_start >= 0).all() and (at_start == at_end).all()
        for image_id, s in zip(image_ids, at_start):
            assert splits.setdefault(image_id, s) == s  # all repeats, both sessions
        # the three domains tile the session without overlap
        pieces = sorted(
            (a, b) for split in ("train", "valid", "test")
            for a, b in zip(np.asarray(getattr(data, f"{split}_domain").start),
                            np.asarray(getattr(data, f"{split}_domain").end)))
        assert pieces[0][0] == data.domain.start[0] and pieces[-1][1] == data.domain.end[-1]
        assert all(abs(b0 - a1) < 1e-9 for (_, b0), (a1, _) in zip(pieces, pieces[1:]))
        # time outside the scenes has valid and test blocks too (pretraining evaluation)
        outside = np.array([1.0, 5.0, 10.0, 15.0, 19.0, 35.0, 40.0, 45.0, 50.0, 55.0])
        assert set(_split_of(data, outside).tolist()) == {0, 1, 2}
    counts = np.bincount(list(splits.values()), minlength=3).tolist()
    assert counts == [7, 1, 2]  # train, valid (round(0.1 * 10)), test (round(0.2 * 10))

    dataset = RecordingDataset(allen["out"])
    assert dataset.recording_ids == [f"allen_{sid}" for sid in SESSIONS]
    assert len(dataset.unit_ids()) == 42
    domains = {s: dataset.split_intervals(s) for s in ("train", "valid", "test")}
    tables = {rid: read_presentations(dataset.get_recording(rid), allen["out"])
              for rid in dataset.recording_ids}
    windows = stimulus_windows(tables, domains, pre=0.0, post=0.25)
    assert windows.dropped == {"outside_split": 0, "image_in_other_split": 0}
    assert sum(len(w) for w in windows.windows.values()) == 2 * N_SCENES * REPEATS
    assert {s: len(ids) for s, ids in windows.image_ids.items()} == {
        "train": 7, "valid": 1, "test": 2}


def test_split_options(allen, tmp_path):
    (path,) = convert_allen(allen["sessions"][SESSIONS[0]]["path"], tmp_path / "a",
                            valid_fraction=0.0, test_fraction=0.5, seed=3)
    s = summarize_allen(path)
    assert [s["splits"][k]["images"] for k in ("train", "valid", "test")] == [5, 0, 5]
    with pytest.raises(ValueError, match="leave no train scene"):
        convert_allen(allen["cache"], tmp_path / "b", valid_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="block_length"):
        convert_allen(allen["cache"], tmp_path / "b", block_length=0)


def test_spike_times_read_one_unit_at_a_time(allen, tmp_path, monkeypatch):
    reads = []
    getitem = h5py.Dataset.__getitem__

    def spy(self, *args, **kwargs):
        out = getitem(self, *args, **kwargs)
        if self.name == "/units/spike_times":
            reads.append(np.shape(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    path = allen["sessions"][SESSIONS[0]]["path"]
    convert_allen(path, tmp_path)
    rows = [allen["sessions"][SESSIONS[0]]["units"][u] for u in _kept_rows()]
    assert reads == [(r["spike_times"].size,) for r in rows]


# ---------------------------------------------------------------------------- layout errors


def _one_session(root: Path, **kwargs) -> Path:
    path = root / "cache" / "session_1" / "session_1.nwb"
    write_session(path, session_id=1, **kwargs)
    write_templates(root / "cache" / "natural_scene_templates")
    return root / "cache"


LAYOUT_ERRORS = {
    "no units table": ({"units": False}, ValueError, ["no units table", "'units'"]),
    "no spike_times": ({"spike_times": False}, ValueError, ["units", "'spike_times'"]),
    "unknown peak channel": (
        {"bad_peak": True}, ValueError, ["peak_channel_id", "123456", "electrodes"]),
    "no stimulus table": (
        {"stimulus": False}, ValueError, ["'natural_scenes_presentations'",
                                          "drifting_gratings_presentations"]),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_ERRORS))
def test_layout_errors_name_file_and_field(case, tmp_path):
    kwargs, error, words = LAYOUT_ERRORS[case]
    cache = _one_session(tmp_path, **kwargs)
    with pytest.raises(error) as err:
        convert_allen(cache, tmp_path / "out")
    message = str(err.value)
    assert str(cache / "session_1" / "session_1.nwb") in message
    for word in words:
        assert word in message
    assert not (tmp_path / "out").exists()


def test_missing_template(tmp_path):
    cache = _one_session(tmp_path)
    (cache / "natural_scene_templates" / "natural_scene_4.tiff").unlink()
    with pytest.raises(FileNotFoundError) as err:
        convert_allen(cache, tmp_path / "out")
    message = str(err.value)
    assert str(cache / "session_1" / "session_1.nwb") in message
    assert "natural_scenes_presentations.frame" in message and "scene 4" in message
    assert str(cache / "natural_scene_templates" / "natural_scene_4.tiff") in message
    assert not (tmp_path / "out").exists()


def test_missing_nwb_and_templates(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No NWB file in .*empty"):
        convert_allen(tmp_path / "empty", tmp_path / "out")
    path = tmp_path / "lone" / "session_2.nwb"
    write_session(path, session_id=2)
    with pytest.raises(FileNotFoundError, match="natural_scene_templates"):
        convert_allen(path, tmp_path / "out")
    write_templates(tmp_path / "scenes")
    (out,) = convert_allen(path, tmp_path / "out", templates_dir=tmp_path / "scenes")
    assert out.name == "allen_2.h5"
    (tmp_path / "bad.nwb").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not a readable NWB file"):
        convert_allen(tmp_path / "bad.nwb", tmp_path / "out2", templates_dir=tmp_path / "scenes")


def test_missing_pynwb_is_explained(tmp_path, monkeypatch):
    cache = _one_session(tmp_path)
    monkeypatch.setitem(sys.modules, "pynwb", None)
    with pytest.raises(ImportError, match=r"pip install pynwb.*neurobridge\[allen\]"):
        convert_allen(cache, tmp_path / "out")


def test_script(allen, tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "scripts" / "convert_allen.py"
    spec = importlib.util.spec_from_file_location("convert_allen", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main(["--nwb", str(allen["cache"]), "--out", str(tmp_path),
                      "--max-isi-violations", "none", "--structures", "VISp", "VISl", "CA1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "wrote 2 recording(s)" in out
    assert f"allen_{SESSIONS[0]}: 17 of 30 units" in out
    assert "isi_violations" not in out and "structure not selected 7" in out
    assert "test 8 presentations / 2 images" in out
    assert module.main(["--nwb", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_converted_allen_feeds_pretraining_and_alignment(allen, tmp_path):
    """Pretraining on the converted spikes, then alignment to the copied scenes (the default
    image folder <data.root>/images), one presentation per window."""
    from hydra import compose, initialize_config_dir

    from neurobridge.training.run import run

    common = [
        "data=recordings", f"data.root={allen['out']}", "model.encoder.sequence_length=0.25",
        "model.encoder.latent_step=0.125", "model.encoder.num_latents_per_step=2",
        "model.encoder.dim=16", "model.encoder.dim_head=8", "model.decoder.dim_head=8",
        "data.bin_size=0.025", "data.batch_size=4", "data.max_val_windows=4",
        "trainer.max_steps=2", "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
    ]
    configs = Path(__file__).resolve().parent.parent / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        pre = compose("config", overrides=[*common, "task.plots=false"])
    metrics = run(pre, tmp_path / "pretrain")
    assert np.isfinite(metrics["test/co_bps"])
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        align = compose("config", overrides=[
            *common, "task=align", "task.plots=false", "data.pre_onset=0.0",
            "data.post_onset=0.25", "task.readout.num_queries=2", "task.readout.dim_head=8",
            "task.projector.hidden_dim=16",
            f"init_from={tmp_path / 'pretrain' / 'checkpoints' / 'last.ckpt'}",
        ])
    metrics = run(align, tmp_path / "align")
    assert metrics["test/retrieval_n_candidates"] == 2
