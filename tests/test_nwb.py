"""The generic NWB converter, on miniature pynwb-written files in three published layouts:
NLB's MC_Maze (DANDI 000128), the Allen Brain Observatory and a human single-neuron layout."""

from __future__ import annotations

import datetime
import importlib.util
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from temporaldata import Data

pynwb = pytest.importorskip("pynwb")

from neurobridge.data import RecordingDataset  # noqa: E402
from neurobridge.data.nwb import UnitFilter, convert_nwb  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import test_allen  # noqa: E402

START = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)


def _nwbfile(**kwargs):
    return pynwb.NWBFile(session_description="fixture", identifier=kwargs.pop("identifier", "id"),
                         session_start_time=START, **kwargs)


def _electrodes(nwb, locations: list[str]) -> None:
    device = nwb.create_device(name="array")
    groups = {}
    for loc in sorted(set(locations)):
        groups[loc] = nwb.create_electrode_group(name=f"group_{loc}", description="array",
                                                 location=loc, device=device)
    for loc in locations:
        nwb.add_electrode(group=groups[loc], location=loc)


def _write(nwb, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def write_mc_maze(path: Path, *, n_units=12, n_trials=30, outside_obs=False) -> dict:
    """NLB's MC_Maze layout: units (spike_times, obs_intervals, electrodes, heldout), trials
    with NLB's split column (train / val / none), M1 and PMd arrays."""
    rng = np.random.default_rng(0)
    nwb = _nwbfile(identifier="mc_maze_fixture", session_id="full")
    nwb.add_trial_column(name="split", description="NLB split")
    nwb.add_trial_column(name="move_onset_time", description="movement onset")
    trial_start = 1.0 + np.arange(n_trials) * 1.2
    splits = np.array(["train"] * 20 + ["val"] * 8 + ["none"] * 2)[:n_trials]
    for a, s in zip(trial_start, splits):
        nwb.add_trial(start_time=a, stop_time=a + 1.0, split=s, move_onset_time=a + 0.4)
    locations = ["M1"] * 6 + ["PMd"] * 6
    _electrodes(nwb, locations)
    nwb.add_unit_column(name="heldout", description="held out in NLB")
    end = trial_start[-1] + 2.0
    heldout = np.zeros(n_units, bool)
    heldout[[2, 5, 9]] = True
    for u in range(n_units):
        times = np.sort(rng.uniform(0.5, end - 0.5, rng.poisson(15 * end)))
        if outside_obs and u == 3:
            times = np.append(times, end + 5.0)
        nwb.add_unit(spike_times=times, obs_intervals=[[0.0, end]], electrodes=[u],
                     heldout=bool(heldout[u]))
    _write(nwb, path)
    return {"path": path, "heldout": heldout, "trial_start": trial_start, "splits": splits}


def write_human(path: Path, *, bad_electrode=False, empty=False, units=True) -> dict:
    """A human single-neuron layout (e.g. DANDI 000004): units -> electrodes -> 'location'
    strings such as 'hippocampus_right'; no quality column, a trials table of image onsets."""
    rng = np.random.default_rng(1)
    nwb = _nwbfile(identifier="P42_session1", session_id="P42 session 1")
    locations = ["hippocampus_right"] * 4 + ["amygdala_left"] * 4 + ["nan"] * 2
    _electrodes(nwb, locations)
    if units:
        nwb.add_unit_column(name="snr", description="signal to noise")
        for u in range(10):
            times = np.zeros(0) if empty else np.sort(rng.uniform(0.0, 200.0, 400))
            nwb.add_unit(spike_times=times, electrodes=[u], snr=float(1.0 + u))
    _write(nwb, path)
    if bad_electrode:  # pynwb refuses to write it: break the reference in the file
        with h5py.File(path, "r+") as f:
            f["units/electrodes"][4] = 99
    return {"path": path}


def test_mc_maze_layout(tmp_path):
    fx = write_mc_maze(tmp_path / "000128" / "sub-Jenkins" / "sub-Jenkins_ses-full.nwb")
    ((path, record),) = convert_nwb(tmp_path / "000128", tmp_path / "out", split="trials",
                                    trial_split_column="split", valid_fraction=0.1)
    assert path.name == "full.h5"
    data = Data.load(path, lazy=False)
    assert data.units.id.tolist()[:2] == ["full/0", "full/1"]
    assert data.units.brain_region.tolist() == ["M1"] * 6 + ["PMd"] * 6
    np.testing.assert_array_equal(data.units.heldout, fx["heldout"])
    assert record["heldout"] == 3 and record["region_from"] == "electrodes.location"
    # the 8 'val' trials are the test split, whole; 2 of the 20 train trials are valid
    test = data.test_domain
    np.testing.assert_allclose(test.start, fx["trial_start"][fx["splits"] == "val"])
    np.testing.assert_allclose(test.end - test.start, 1.0)
    assert len(data.valid_domain) == 2
    # 'none' trials are in no split; the time between trials is train
    for a in fx["trial_start"][fx["splits"] == "none"]:
        for split in ("train", "valid", "test"):
            iv = getattr(data, f"{split}_domain")
            assert not np.any((iv.start < a + 1.0) & (iv.end > a))
    assert RecordingDataset(tmp_path / "out").unit_ids()[0] == "full/0"


def test_allen_layout_generic(tmp_path):
    """The Allen files convert generically too: filters by column, presentations by frame
    (image ids are the frame numbers), one region (the units have no region or electrodes
    column: the Allen preset takes it from the peak channel)."""
    sid = 715093703
    session = test_allen.write_session(tmp_path / "allen.nwb", session_id=sid)
    with pytest.warns(UserWarning, match="one region 'unknown'"):
        ((path, record),) = convert_nwb(
            tmp_path / "allen.nwb", tmp_path / "out", filters=["quality == good",
                                                              "isi_violations <= 0.5"],
            stimulus_table="natural_scenes_presentations", stimulus_column="frame")
    assert record["dropped"] == {"not quality == good": 1, "not isi_violations <= 0.5": 2,
                                 "no spikes": 0}
    assert record["kept"] == test_allen.N_UNITS - 3
    data = Data.load(path, lazy=False)
    assert path.name == f"{sid}.h5"
    assert json.loads(str(data.session.unit_selection))["kept"] == record["kept"]
    frames = np.asarray(data.stimulus_presentations.image_id).astype(str)
    assert sorted(set(frames)) == sorted({str(f) for f in session["frames"]})
    # every repeat of a frame in one split
    for frame in set(frames):
        t = np.asarray(data.stimulus_presentations.start)[frames == frame] + 0.1
        owners = {s for s in ("train", "valid", "test")
                  for x in t if np.any((getattr(data, f"{s}_domain").start <= x)
                                       & (x < getattr(data, f"{s}_domain").end))}
        assert len(owners) == 1
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="image ids of the presentations are not files"):
        convert_nwb(tmp_path / "allen.nwb", tmp_path / "out2", images=tmp_path / "images",
                    stimulus_table="natural_scenes_presentations", stimulus_column="frame")


def test_human_layout_regions_filters_and_script(tmp_path, capsys):
    write_human(tmp_path / "human.nwb")
    spec = importlib.util.spec_from_file_location(
        "convert_nwb", Path(__file__).resolve().parents[1] / "scripts" / "convert_nwb.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main(["--nwb", str(tmp_path / "human.nwb"), "--out", str(tmp_path / "out"),
                      "--filter", "snr >= 2", "--block-length", "20"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "9 of 10 units (dropped: 1 not snr >= 2" in out and "(2 unknown)" in out
    data = Data.load(tmp_path / "out" / "P42_session_1.h5", lazy=False)
    regions = data.units.brain_region.tolist()
    assert regions == ["hippocampus_right"] * 3 + ["amygdala_left"] * 4 + ["unknown"] * 2
    seconds = {s: float(np.sum(getattr(data, f"{s}_domain").end
                                - getattr(data, f"{s}_domain").start)) for s in ("train", "valid", "test")}
    duration = float(data.domain.end[-1] - data.domain.start[0])
    assert duration == pytest.approx(200.0, abs=1.0)  # 9 blocks of ~22 s: 2 test, 1 valid
    assert seconds["test"] == pytest.approx(2 / 9 * duration)
    assert seconds["valid"] == pytest.approx(1 / 9 * duration)
    assert module.main(["--nwb", str(tmp_path / "nowhere.nwb"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case, words",
    [
        ("no units", ["no units table", "'units'"]),
        ("empty spikes", ["units.spike_times", "empty for every unit"]),
        ("missing electrode", ["units.electrodes", "electrodes row 99", "does not exist"]),
        ("outside obs", ["units.spike_times", "unit 3", "obs_intervals"]),
    ],
)
def test_malformed_files_name_file_table_and_field(case, words, tmp_path):
    path = tmp_path / "bad.nwb"
    if case == "outside obs":
        write_mc_maze(path, outside_obs=True)
    else:
        write_human(path, units=case != "no units", empty=case == "empty spikes",
                    bad_electrode=case == "missing electrode")
    with pytest.raises(ValueError) as err:
        convert_nwb(path, tmp_path / "out")
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message
    assert not list((tmp_path / "out").glob("*.h5")) if (tmp_path / "out").exists() else True


def test_bad_options_and_filters(tmp_path):
    write_human(tmp_path / "human.nwb")
    with pytest.raises(ValueError, match="is not '<column> <op> <value>'"):
        UnitFilter.parse("snr bigger 2")
    with pytest.raises(ValueError, match="no column 'quality'.*filter 'quality == good'"):
        convert_nwb(tmp_path / "human.nwb", tmp_path / "out", filters=["quality == good"])
    with pytest.raises(ValueError, match="split='trials' needs a trials table"):
        convert_nwb(tmp_path / "human.nwb", tmp_path / "out", split="trials")
    with pytest.raises(ValueError, match="domain_from must be one of"):
        convert_nwb(tmp_path / "human.nwb", tmp_path / "out", domain_from="session")


def test_converted_nwb_trains_and_evaluates(tmp_path):
    """A converted fixture runs through the task runner with data=recordings."""
    from hydra import compose, initialize_config_dir

    from neurobridge.training.run import run

    write_mc_maze(tmp_path / "mc_maze.nwb", n_trials=30)
    convert_nwb(tmp_path / "mc_maze.nwb", tmp_path / "out", split="trials",
                trial_split_column="split")
    configs = Path(__file__).resolve().parent.parent / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose("config", overrides=[
            "data=recordings", f"data.root={tmp_path / 'out'}", "model.encoder.sequence_length=1.0",
            "model.encoder.dim=16", "model.encoder.dim_head=8", "model.decoder.dim_head=8",
            "data.batch_size=4", "data.max_val_windows=4", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "trainer.enable_progress_bar=false", "task.plots=false",
        ])
    metrics = run(cfg, tmp_path / "run")
    assert np.isfinite(metrics["test/co_bps"])
