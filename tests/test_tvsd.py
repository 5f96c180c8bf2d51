"""TVSD converter, on miniature folders written in the published layout."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from temporaldata import Data

from neurobridge.data import RecordingDataset
from neurobridge.data.stimuli import read_presentations, stimulus_windows
from neurobridge.datasets.tvsd import (
    IMAGES_FILE,
    MAPPING_FILE,
    MUA_FILE,
    NORM_FILE,
    channel_regions,
    convert_tvsd,
)

N_TIME = 300
SIGNAL_CHANNEL = 5  # recording-order channel carrying a large offset
CONCEPTS = ("aardvark", "abacus", "coffee_bean", "zucchini")


def _v73(path: Path) -> h5py.File:
    """An HDF5 file with MATLAB's v7.3 header in its 512-byte user block."""
    return h5py.File(path, "w", userblock_size=512)


def _stamp_header(path: Path) -> None:
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(text.ljust(116) + b"\0" * 8 + b"\x00\x02" + b"IM")


def _matlab(ds: h5py.Dataset, cls: str) -> None:
    ds.attrs["MATLAB_class"] = np.bytes_(cls)


def _write_char_refs(f: h5py.File, group: str, field: str, texts: list[str]) -> None:
    refs = f.require_group("#refs#")
    out = f.require_group(group).create_dataset(field, shape=(len(texts), 1), dtype=h5py.ref_dtype)
    for k, text in enumerate(texts):
        codes = np.frombuffer(text.encode("utf-16-le"), dtype="<u2").reshape(-1, 1)
        char = refs.create_dataset(f"{group}_{field}_{k}", data=codes)
        _matlab(char, "char")
        char.attrs["MATLAB_int_decode"] = 2
        out[k, 0] = char.ref


def write_tvsd_fixture(
    root: Path,
    *,
    monkey: str = "N",
    n_train_images: int = 6,
    n_test_images: int = 2,
    train_reps: int = 2,
    test_reps: int = 3,
    n_days: int = 2,
    seed: int = 0,
) -> dict:
    """Write ``root/monkey{monkey}`` in the published TVSD layout, with all 1024 channels and
    few trials (stored in shuffled trial order); return what was written."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / f"monkey{monkey}"
    (folder / "_logs").mkdir(parents=True)

    n_images = n_train_images + n_test_images
    names = [f"{CONCEPTS[i % len(CONCEPTS)]}_{i:02d}b.jpg" for i in range(n_images)]
    ids = [f"{CONCEPTS[i % len(CONCEPTS)]}/{name}" for i, name in enumerate(names)]
    train_ids, test_ids = ids[:n_train_images], ids[n_train_images:]
    # train paths relative (Windows separators), test paths with an absolute Windows prefix
    train_paths = [i.replace("/", "\\") for i in train_ids]
    test_paths = ["C:\\THINGS\\Images\\" + i.replace("/", "\\") for i in test_ids]

    rows = [(i + 1, 0, r + 1) for i in range(n_train_images) for r in range(train_reps)]
    rows += [(0, i + 1, r + 1) for i in range(n_test_images) for r in range(test_reps)]
    train_idx, test_idx, rep = np.array(rows).T
    n_trials = len(rows)
    trial = rng.permutation(n_trials) + 1  # ALLMUA column j is trial number trial[j]
    day = 1 + (trial - 1) * n_days // n_trials
    allmat = np.stack([trial, train_idx, test_idx, rep, trial, day]).astype(np.float64)

    allmua = rng.standard_normal((N_TIME, n_trials, 1024), dtype=np.float32)
    allmua[:, :, SIGNAL_CHANNEL] += 100.0
    order = rng.permutation(1024)  # physical channel p = recording channel order[p]
    tb = np.arange(-100, 200, dtype=np.float64).reshape(-1, 1)

    path = folder / MUA_FILE
    with _v73(path) as f:
        _matlab(f.create_dataset("ALLMUA", data=allmua, chunks=(N_TIME, 1, 1024)), "single")
        _matlab(f.create_dataset("ALLMAT", data=allmat), "double")
        _matlab(f.create_dataset("tb", data=tb), "double")
    _stamp_header(path)

    scipy.io.savemat(folder / MAPPING_FILE, {"mapping": (order + 1)[None, :].astype(np.float64)})

    path = folder / IMAGES_FILE
    with _v73(path) as f:
        for group, paths in (("train_imgs", train_paths), ("test_imgs", test_paths)):
            _write_char_refs(f, group, "things_path", paths)
            _write_char_refs(f, group, "class", [p.split("\\")[-2] for p in paths])
            f[group].attrs["MATLAB_class"] = np.bytes_("struct")
    _stamp_header(path)

    snr = rng.uniform(0.0, 10.0, size=(1024, 1))
    reliab = rng.uniform(-0.2, 1.0, size=(3, 1024))
    reliab[0, :10] = np.nan
    path = folder / NORM_FILE
    with _v73(path) as f:
        _matlab(f.create_dataset("SNR_max", data=snr), "double")
        _matlab(f.create_dataset("reliab", data=reliab), "double")
        _matlab(f.create_dataset("tb", data=tb), "double")
    _stamp_header(path)

    return {
        "folder": folder,
        "allmua": allmua,
        "order": order,
        "allmat": allmat.astype(np.int64),
        "train_ids": train_ids,
        "test_ids": test_ids,
        "snr": snr.ravel(),
        "reliab": np.nanmean(reliab, axis=0),
    }


def _binned(allmua: np.ndarray, column: int, channels: np.ndarray) -> np.ndarray:
    """``[30, C]``: 10 ms means of one ALLMUA trial in physical order."""
    return allmua[:, column, channels].reshape(30, 10, -1).mean(axis=1)


def _link_folder(src: Path, dst: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """A monkey folder ``dst`` of symlinks to ``src``'s files (without ``skip``)."""
    (dst / "_logs").mkdir(parents=True)
    for rel in (MUA_FILE, NORM_FILE, MAPPING_FILE, IMAGES_FILE):
        if rel not in skip:
            (dst / rel).symlink_to(src / rel)
    return dst


def _kept(path: Path) -> list[str]:
    return np.asarray(Data.load(path, lazy=False).units.id).astype(str).tolist()


def _names(physical: np.ndarray) -> list[str]:
    return [f"tvsd_N/ch{p + 1:04d}" for p in np.sort(physical)]


def _split_of(data: Data) -> dict[str, np.ndarray]:
    onset = np.asarray(data.stimulus_presentations.start)
    out = {}
    for split in ("train", "valid", "test"):
        dom = getattr(data, f"{split}_domain")
        s, e = np.asarray(dom.start), np.asarray(dom.end)
        out[split] = ((s[None] <= onset[:, None]) & (onset[:, None] < e[None])).any(axis=1)
    return out


@pytest.fixture(scope="module")
def tvsd_n(tmp_path_factory):
    """The monkey N fixture and its conversion (chunks of 4 trials)."""
    root = tmp_path_factory.mktemp("tvsd")
    fx = write_tvsd_fixture(root)
    fx["paths"] = convert_tvsd(fx["folder"], root / "out", chunk_trials=4)
    fx["data"] = Data.load(fx["paths"][0], lazy=False)
    return fx


def test_channel_regions_boundaries():
    regions, arrays = channel_regions("N")
    assert regions[[0, 511, 512, 767, 768, 1023]].tolist() == ["V1", "V1", "V4", "V4", "IT", "IT"]
    regions, _ = channel_regions("F")
    assert regions[[511, 512, 831, 832, 1023]].tolist() == ["V1", "IT", "IT", "V4", "V4"]
    assert arrays[[0, 63, 64, 1023]].tolist() == [0, 0, 1, 15]
    with pytest.raises(ValueError, match="'F', 'N'"):
        channel_regions("X")


def test_units_and_channel_mapping(tvsd_n):
    data, order = tvsd_n["data"], tvsd_n["order"]
    assert tvsd_n["paths"][0].name == "tvsd_monkeyN.h5"
    assert (str(data.session.id), str(data.subject.id), str(data.brainset.id)) == (
        "tvsd_monkeyN", "monkeyN", "tvsd")
    ids = np.asarray(data.units.id).astype(str)
    assert ids[0] == "tvsd_N/ch0001" and ids[1023] == "tvsd_N/ch1024"
    assert np.asarray(data.units.brain_region).astype(str)[[511, 512, 768]].tolist() == [
        "V1", "V4", "IT"]
    assert np.asarray(data.units.array)[[63, 64]].tolist() == [0, 1]
    # the offset put on recording channel SIGNAL_CHANNEL lands on its physical channel
    physical = int(np.flatnonzero(order == SIGNAL_CHANNEL)[0])
    values = np.asarray(data.mua.values)
    assert values.dtype == np.float32 and values.shape == (18 * 30, 1024)
    assert int(np.argmax(values.mean(axis=0))) == physical
    assert data.mua.sampling_rate == pytest.approx(100.0)


def test_trials_segments_and_images(tvsd_n):
    data, allmat, allmua = tvsd_n["data"], tvsd_n["allmat"], tvsd_n["allmua"]
    trial, train_idx, test_idx, rep, _, day = allmat
    table = data.stimulus_presentations
    values = np.asarray(data.mua.values)
    assert np.asarray(table.trial).tolist() == list(range(1, 19))
    for column in range(allmat.shape[1]):
        k = trial[column] - 1  # position of the trial in the recording
        expected = (tvsd_n["test_ids"][test_idx[column] - 1] if test_idx[column]
                    else tvsd_n["train_ids"][train_idx[column] - 1])
        assert str(table.image_id[k]) == expected
        assert table.start[k] == pytest.approx(k * 0.3 + 0.1)
        assert table.end[k] - table.start[k] == pytest.approx(0.2)
        for name, row in (("train_idx", train_idx), ("test_idx", test_idx), ("rep", rep),
                          ("day", day)):
            assert getattr(table, name)[k] == row[column]
        segment = values[k * 30 : (k + 1) * 30]
        np.testing.assert_allclose(
            segment, _binned(allmua, column, tvsd_n["order"]), rtol=1e-5, atol=1e-5
        )
    assert "coffee_bean/coffee_bean_02b.jpg" in set(np.asarray(table.image_id).astype(str))
    np.testing.assert_allclose(
        [data.domain.start[0], data.domain.end[-1]], [0.0, 18 * 0.3], atol=1e-9
    )


def test_split_by_image(tvsd_n):
    data = tvsd_n["data"]
    inside = _split_of(data)
    assert (sum(m.astype(int) for m in inside.values()) == 1).all()  # one split per trial
    image_ids = np.asarray(data.stimulus_presentations.image_id).astype(str)
    test_trials = np.asarray(data.stimulus_presentations.test_idx) > 0
    assert (inside["test"] == test_trials).all()
    images = {split: set(image_ids[m]) for split, m in inside.items()}
    assert images["test"] == set(tvsd_n["test_ids"])
    assert len(images["valid"]) == 1 and len(images["train"]) == 5  # max(1, round(0.05 * 6))
    assert not (images["train"] & images["valid"] or images["train"] & images["test"]
                or images["valid"] & images["test"])
    total = sum(float(np.sum(np.asarray(getattr(data, f"{s}_domain").end)
                             - np.asarray(getattr(data, f"{s}_domain").start)))
                for s in ("train", "valid", "test"))
    assert total == pytest.approx(18 * 0.3)


def test_recording_dataset_opens_output(tvsd_n):
    out = tvsd_n["paths"][0].parent
    dataset = RecordingDataset(out, modality="values", value_key="mua.values")
    assert dataset.recording_ids == ["tvsd_monkeyN"]
    assert len(dataset.unit_ids()) == 1024
    domains = {s: dataset.split_intervals(s) for s in ("train", "valid", "test")}
    table = read_presentations(dataset.get_recording("tvsd_monkeyN"), out)
    windows = stimulus_windows({"tvsd_monkeyN": table}, domains, pre=0.1, post=0.2)
    assert windows.dropped == {"outside_split": 0, "image_in_other_split": 0}
    assert sum(len(w) for w in windows.windows.values()) == 18
    assert set(windows.image_ids["test"]) == set(tvsd_n["test_ids"])


def test_reads_allmua_in_chunks(tvsd_n, tmp_path, monkeypatch):
    reads = []
    getitem, as_array, read_direct = (
        h5py.Dataset.__getitem__, h5py.Dataset.__array__, h5py.Dataset.read_direct)

    def spy(self, *args, **kwargs):
        out = getitem(self, *args, **kwargs)
        if self.name == "/ALLMUA":
            reads.append(np.shape(out))
        return out

    def refuse(original):
        def wrapper(self, *args, **kwargs):
            assert self.name != "/ALLMUA", "ALLMUA read whole"
            return original(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    monkeypatch.setattr(h5py.Dataset, "__array__", refuse(as_array))
    monkeypatch.setattr(h5py.Dataset, "read_direct", refuse(read_direct))
    convert_tvsd(tvsd_n["folder"], tmp_path, chunk_trials=5)
    assert len(reads) == math.ceil(18 / 5)
    assert all(shape[0] == N_TIME and shape[1] <= 5 and shape[2] == 1024 for shape in reads)
    assert sum(shape[1] for shape in reads) == 18


def test_channel_selection(tvsd_n, tmp_path):
    snr, reliab = tvsd_n["snr"], tvsd_n["reliab"]
    (path,) = convert_tvsd(tvsd_n["folder"], tmp_path / "snr", min_snr=5.0)
    assert _kept(path) == _names(np.flatnonzero(snr >= 5.0))
    (path,) = convert_tvsd(tvsd_n["folder"], tmp_path / "rel", top_reliable=100)
    assert _kept(path) == _names(np.argsort(-reliab)[:100])
    (path,) = convert_tvsd(tvsd_n["folder"], tmp_path / "both", min_snr=5.0, top_reliable=50)
    pool = np.flatnonzero(snr >= 5.0)
    assert _kept(path) == _names(pool[np.argsort(-reliab[pool])[:50]])
    data = Data.load(path, lazy=False)
    physical = np.sort(pool[np.argsort(-reliab[pool])[:50]])
    column = int(np.flatnonzero(tvsd_n["allmat"][0] == 1)[0])
    np.testing.assert_allclose(
        np.asarray(data.mua.values)[:30],
        _binned(tvsd_n["allmua"], column, tvsd_n["order"][physical]), rtol=1e-5, atol=1e-5,
    )

    folder = _link_folder(tvsd_n["folder"], tmp_path / "nonorm" / "monkeyN", skip=(NORM_FILE,))
    with pytest.raises(FileNotFoundError, match=NORM_FILE):
        convert_tvsd(folder, tmp_path / "x", min_snr=1.0)


def test_per_day(tvsd_n, tmp_path):
    paths = convert_tvsd(tvsd_n["folder"], tmp_path, per_day=True, chunk_trials=7)
    assert [p.name for p in paths] == ["tvsd_monkeyN_day1.h5", "tvsd_monkeyN_day2.h5"]
    trial, day = tvsd_n["allmat"][0], tvsd_n["allmat"][5]
    for d, path in enumerate(paths, start=1):
        data = Data.load(path, lazy=False)
        assert str(data.session.id) == f"tvsd_monkeyN_day{d}"
        table = data.stimulus_presentations
        assert (np.asarray(table.day) == d).all()
        assert np.asarray(table.trial).tolist() == sorted(trial[day == d].tolist())
        first = int(np.flatnonzero(trial == table.trial[0])[0])
        np.testing.assert_allclose(
            np.asarray(data.mua.values)[:30], _binned(tvsd_n["allmua"], first, tvsd_n["order"]),
            rtol=1e-5, atol=1e-5,
        )
        assert table.start[0] == pytest.approx(0.1)
    dataset = RecordingDataset(tmp_path, modality="values")
    assert len(dataset.recording_ids) == 2
    units = dataset.unit_ids()  # unique across the day files, so one data module takes them all
    assert len(units) == len(set(units)) and units[0].startswith("tvsd_N_day1/")
    trials = {s: dataset.split_intervals(s) for s in ("train", "valid", "test")}
    length = sum(float(np.sum(iv.end - iv.start)) for d in trials.values() for iv in d.values())
    assert length == pytest.approx(18 * 0.3)


def test_monkey_f_and_monkey_inference(tvsd_n, tmp_path):
    folder = _link_folder(tvsd_n["folder"], tmp_path / "monkeyF")
    (path,) = convert_tvsd(folder, tmp_path / "out")
    data = Data.load(path, lazy=False)
    assert path.name == "tvsd_monkeyF.h5" and str(data.units.id[0]) == "tvsd_F/ch0001"
    regions = np.asarray(data.units.brain_region).astype(str)
    assert regions[[511, 512, 831, 832]].tolist() == ["V1", "IT", "IT", "V4"]
    assert {r: int((regions == r).sum()) for r in ("V1", "V4", "IT")} == {
        "V1": 512, "V4": 192, "IT": 320}

    other = _link_folder(tvsd_n["folder"], tmp_path / "session1")
    with pytest.raises(ValueError, match="monkey='N' or 'F'"):
        convert_tvsd(other, tmp_path / "out2")
    with pytest.raises(ValueError, match="contradicts"):
        convert_tvsd(folder, tmp_path / "out2", monkey="N")


# ---------------------------------------------------------------------------- layout errors


def _delete(rel: str, name: str):
    def mutate(folder: Path) -> None:
        with h5py.File(folder / rel, "r+") as f:
            del f[name]
    return mutate


def _replace(name: str, change):
    def mutate(folder: Path) -> None:
        with h5py.File(folder / MUA_FILE, "r+") as f:
            value = change(f[name][()])
            del f[name]
            f.create_dataset(name, data=value)
    return mutate


def _set_allmat(row: int, column: int, value: float):
    def change(allmat: np.ndarray) -> np.ndarray:
        allmat[row, column] = value
        return allmat
    return _replace("ALLMAT", change)


def _mapping(change):
    def mutate(folder: Path) -> None:
        mapping = scipy.io.loadmat(folder / MAPPING_FILE)["mapping"]
        scipy.io.savemat(folder / MAPPING_FILE, {"mapping": change(mapping.copy())})
    return mutate


def _duplicate(mapping: np.ndarray) -> np.ndarray:
    mapping[0, 1] = mapping[0, 0]
    return mapping


def _non_ascii(folder: Path) -> None:
    with h5py.File(folder / IMAGES_FILE, "r+") as f:
        codes = f["#refs#/train_imgs_things_path_0"]
        text = codes[()].ravel().tobytes().decode("utf-16-le").replace("aardvark", "äardvark")
        codes[...] = np.frombuffer(text.encode("utf-16-le"), dtype="<u2").reshape(codes.shape)


# ALLMAT column 0 of the fixture is a train trial (train_idx 1, test_idx 0)
LAYOUT_ERRORS = {
    "missing tb": (_delete(MUA_FILE, "tb"), MUA_FILE, ["'tb'"]),
    "missing ALLMAT": (_delete(MUA_FILE, "ALLMAT"), MUA_FILE, ["'ALLMAT'"]),
    "missing things_path": (
        _delete(IMAGES_FILE, "test_imgs/things_path"), IMAGES_FILE, ["'test_imgs.things_path'"]),
    "transposed ALLMUA": (
        _replace("ALLMUA", lambda a: a.transpose(2, 1, 0)), MUA_FILE, ["'ALLMUA'", "transposed"]),
    "transposed ALLMAT": (
        _replace("ALLMAT", lambda a: a.T.copy()), MUA_FILE, ["'ALLMAT'", "transposed"]),
    "both indices": (_set_allmat(2, 0, 1.0), MUA_FILE, ["'ALLMAT'", "train_idx, test_idx"]),
    "no index": (_set_allmat(1, 0, 0.0), MUA_FILE, ["'ALLMAT'", "exactly one"]),
    "index beyond table": (_set_allmat(1, 0, 99.0), MUA_FILE, ["'ALLMAT'", "train_idx", "99"]),
    "duplicate mapping": (_mapping(_duplicate), MAPPING_FILE, ["'mapping'", "permutation"]),
    "non-ASCII image id": (
        _non_ascii, IMAGES_FILE, ["'train_imgs.things_path'", "äardvark/äardvark_00b.jpg"]),
    "0-based mapping": (_mapping(lambda m: m - 1), MAPPING_FILE, ["'mapping'", "0-based"]),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_ERRORS))
def test_layout_errors_name_file_and_variable(case, tmp_path):
    mutate, rel, words = LAYOUT_ERRORS[case]
    fx = write_tvsd_fixture(tmp_path, n_train_images=2, n_test_images=1, train_reps=1,
                            test_reps=1, n_days=1)
    mutate(fx["folder"])
    with pytest.raises(ValueError) as err:
        convert_tvsd(fx["folder"], tmp_path / "out")
    message = str(err.value)
    assert str(fx["folder"] / rel) in message
    for word in words:
        assert word in message
    assert not (tmp_path / "out").exists()


def test_missing_file(tmp_path):
    fx = write_tvsd_fixture(tmp_path, n_train_images=1, n_test_images=1, train_reps=1,
                            test_reps=1, n_days=1)
    (fx["folder"] / MAPPING_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=MAPPING_FILE):
        convert_tvsd(fx["folder"], tmp_path / "out")


def test_script(tvsd_n, tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "scripts" / "convert_tvsd.py"
    spec = importlib.util.spec_from_file_location("convert_tvsd", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--monkey-dir", str(tvsd_n["folder"]), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tvsd_monkeyN: 18 trials, 1024 channels" in out
    assert "(V1 512, V4 256, IT 256)" in out
    assert "test 6 trials / 2 images" in out and "valid 2 trials / 1 images" in out
    rc = module.main(["--monkey-dir", str(tmp_path / "monkeyN"), "--out", str(tmp_path)])
    assert rc == 2
    assert "not found" in capsys.readouterr().err


def test_converted_tvsd_feeds_pretraining_and_alignment(tvsd_n, tmp_path):
    """The TVSD overrides of docs/converters.md: CaPOYO pretraining on one trial per window, then alignment
    against (stand-in) THINGS images stored under their image ids."""
    from hydra import compose, initialize_config_dir
    from PIL import Image

    from neurobridge.training.run import run

    images = tmp_path / "things"
    rng = np.random.default_rng(0)
    for image_id in set(np.asarray(tvsd_n["data"].stimulus_presentations.image_id).astype(str)):
        (images / image_id).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / image_id)
    common = [
        "data=recordings", f"data.root={tvsd_n['paths'][0].parent}", "data.modality=values",
        "data.value_key=mua.values", "model=capoyo_small", "model.encoder.sequence_length=0.3",
        "model.encoder.latent_step=0.05", "model.encoder.num_latents_per_step=2",
        "model.encoder.dim=16", "model.encoder.dim_head=8", "model.decoder.dim_head=8",
        "data.bin_size=0.01", "data.batch_size=4", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
    ]
    configs = Path(__file__).resolve().parent.parent / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        pre = compose("config", overrides=[*common, "task.plots=false"])
    metrics = run(pre, tmp_path / "pretrain")
    assert np.isfinite(metrics["test/r2"])
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        align = compose("config", overrides=[
            *common, "task=align", "task.plots=false", "data.pre_onset=0.1",
            "data.post_onset=0.2", f"data.images={images}", "task.readout.num_queries=2",
            "task.readout.dim_head=8", "task.projector.hidden_dim=16",
            f"init_from={tmp_path / 'pretrain' / 'checkpoints' / 'last.ckpt'}",
        ])
    metrics = run(align, tmp_path / "align")
    n_test = len(set(tvsd_n["test_ids"]))
    assert metrics["test/retrieval_n_candidates"] == n_test
