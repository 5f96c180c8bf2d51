"""The fast data path gives what the reference path (temporaldata slices, torch_brain collate)
gives: the same windows, masks, targets and batches, bit for bit."""

import h5py
import numpy as np
import pytest
import torch
from temporaldata import ArrayDict, Data, Interval, RegularTimeSeries
from torch_brain.data import collate as torch_brain_collate

from neurobridge.data import MaskedTokenizer, NeuralDataModule, RecordingDataset, bin_regular
from neurobridge.data.collate import PackedBatch, collate
from neurobridge.data.windows import RecordingReader
from neurobridge.datasets.synthetic import SyntheticConfig, generate_synthetic_recordings
from neurobridge.masking import MASKING_MODES, MaskingController


@pytest.fixture(scope="module")
def mixed_recordings(tmp_path_factory):
    """Two short sessions: one spiking, one MUA (value series, clean signal, true rates)."""
    root = tmp_path_factory.mktemp("mixed")
    generate_synthetic_recordings(root, SyntheticConfig(
        n_sessions=2, units_per_region=4, duration=30.0, seed=5, modality="mixed"))
    return root


def _same(a, b, path="batch"):
    """Same keys, types, dtypes, shapes and values (NaN equal to NaN)."""
    if isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for key in b:
            _same(a[key], b[key], f"{path}.{key}")
    elif isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a.isnan(), b.isnan()) if b.is_floating_point() else True, path
        assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)), path
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), path


def _same_fields(window, reference, path):
    """Every field the reader cuts holds what temporaldata's slice holds; returns their count."""
    n = 0
    for key in window.keys():
        got, want = getattr(window, key), getattr(reference, key)
        if hasattr(want, "keys"):
            if hasattr(want, "sampling_rate"):
                assert got.sampling_rate == want.sampling_rate, f"{path}.{key}"
            n += _same_fields(got, want, f"{path}.{key}")
        else:
            _same(got, want, f"{path}.{key}")
            n += 1
    return n


@pytest.mark.parametrize("which", ["spikes", "mixed"])
def test_reader_windows_equal_temporaldata_slices(small_recordings, mixed_recordings, which):
    root = small_recordings if which == "spikes" else mixed_recordings
    ds = RecordingDataset(root, modality="values" if which == "mixed" else "spikes",
                          spike_values="counts" if which == "mixed" else None)
    rng = np.random.default_rng(0)
    checked = set()
    for rid in ds.recording_ids:
        end = float(ds.get_recording(rid).domain.end[-1])
        # random windows, windows on the sample grid, and windows reaching outside the domain
        starts = [*rng.uniform(0.0, end - 1.0, 25), 0.0, 1.0, 2.5, -0.4, end - 0.3, end + 1.0]
        for start in starts:
            length = float(rng.choice([0.01, 0.3, 1.0, 2.0]))
            window = ds.window(rid, start, start + length)
            reference = ds.reference_window(rid, start, start + length)
            assert window.absolute_start == reference.absolute_start
            assert _same_fields(window, reference, rid) >= 4
            checked.update(window.keys())
    want = {"units", "session", "spikes"} if which == "spikes" else {"units", "session", "mua",
                                                                      "true_rates"}
    assert want <= checked


def test_series_with_gaps_are_cut_by_temporaldata(tmp_path):
    times = np.concatenate([np.arange(0, 10, 0.01), np.arange(12, 20, 0.01)])
    values = np.random.default_rng(0).normal(size=(len(times), 3)).astype(np.float32)
    mua = RegularTimeSeries.from_gappy_timeseries(times, sampling_rate=100.0, values=values)
    data = Data(units=ArrayDict(id=np.array(["a", "b", "c"])), session=Data(id="gappy"), mua=mua,
                domain=Interval(0.0, 20.0))
    path = tmp_path / "gappy.h5"
    with h5py.File(path, "w") as f:
        data.to_hdf5(f)
    reader = RecordingReader(path)
    assert reader.gappy == ["mua"] and "mua" not in reader.series
    with h5py.File(path, "r") as f:
        full = Data.from_hdf5(f, lazy=False)
        for start in (1.0, 9.5, 10.5, 11.99):
            got, want = reader.window(start, start + 1.0).mua, full.slice(start, start + 1.0).mua
            _same(got.values, want.values, f"mua@{start}")


def _tokenizer(ds: RecordingDataset, modality: str, **kw) -> MaskedTokenizer:
    return MaskedTokenizer(
        modality=modality, masking=MaskingController(mode_probs={m: 1.0 for m in MASKING_MODES}),
        unit_vocab={u: i + 1 for i, u in enumerate(ds.unit_ids())},
        session_vocab={s: i + 1 for i, s in enumerate(ds.session_ids())},
        sequence_length=1.0, bin_size=0.02, latent_step=0.125, num_latents_per_step=4, **kw)


@pytest.mark.parametrize("which", ["spikes", "binned", "values"])
def test_samples_and_batches_equal_the_reference_path(small_recordings, mixed_recordings, which):
    """Training and evaluation samples from reader windows equal those from temporaldata slices,
    and :func:`collate` batches them as torch_brain's ``collate`` does."""
    values = which == "values"
    dm = NeuralDataModule(root=mixed_recordings if values else small_recordings, batch_size=16,
                          modality="values" if values else "spikes",
                          spike_values="counts" if values else None)
    dm.setup()
    dm.tokenizer = tok = _tokenizer(dm.dataset, "values" if values else "spikes",
                                    binned_inputs=which == "binned",
                                    spike_values="counts" if values else None)
    train = [i for _, i in zip(range(24), dm.train_dataloader().sampler)]
    evaluation = list(dm.eval_sampler("test"))[:24]
    for indices in (train, evaluation):
        fast = [dm.dataset[i] for i in indices]
        slow = [tok(dm.dataset.reference_window(i.recording_id, i.start, i.end), i) for i in indices]
        for a, b in zip(fast, slow):
            _same(torch_brain_collate([a]), torch_brain_collate([b]))
        _same(collate(fast), torch_brain_collate(slow))


def test_worker_batches_equal_single_process_batches(small_recordings):
    """Packed batches from 2 worker processes unpack to the single-process batches."""
    dm = NeuralDataModule(root=small_recordings, batch_size=8)
    dm.setup()
    dm.tokenizer = _tokenizer(dm.dataset, "spikes")
    it = iter(dm.train_dataloader())
    single = [next(it) for _ in range(3)]
    dm.num_workers = 2
    it = iter(dm.train_dataloader())
    for batch, want in zip([next(it) for _ in range(3)], single):
        _same(batch, want)


def test_packed_batches_round_trip():
    batch = {"a": torch.arange(5, dtype=torch.float32), "mask": torch.tensor([True, False]),
             "empty": torch.zeros(0, 3), "nested": {"i": torch.arange(6).view(2, 3)},
             "names": ["x", "y"], "t": torch.arange(12.0).view(3, 4).T}
    packed = PackedBatch(batch)
    assert packed.buffer.dtype == torch.uint8 and len(packed.spans) == 5
    _same(packed.unpack(), batch)
    restored = packed.unpack()
    restored["a"] += 1  # views of one buffer, but not of each other
    _same(restored["mask"], batch["mask"])


def test_bin_regular_sums_as_np_add_at_does():
    """The vectorised bin means equal a sequential per-bin sum (np.add.at), bit for bit."""
    rng = np.random.default_rng(0)
    for rate, bin_size in [(100, 0.02), (1000, 0.01), (100, 0.03), (33.3, 0.02), (250, 0.02),
                           (1000, 0.0125), (10, 0.02)]:
        for n_bins in (1, 7, 50):
            for n in {0, 1, 5, int(rate * bin_size * n_bins), int(rate * bin_size * n_bins) + 3}:
                x = (rng.standard_normal((n, 4)) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
                bins = np.floor(np.arange(n) / rate / bin_size + 1e-9).astype(np.int64)
                keep = bins < n_bins
                sums = np.zeros((n_bins, 4))
                np.add.at(sums, bins[keep], x[keep].astype(np.float64))
                counts = np.bincount(bins[keep], minlength=n_bins)[:, None]
                with np.errstate(invalid="ignore", divide="ignore"):
                    want = (sums / counts).astype(np.float32)
                got = bin_regular(x, sampling_rate=rate, bin_size=bin_size, n_bins=n_bins)
                assert got.dtype == np.float32
                assert np.array_equal(got, want, equal_nan=True), (rate, bin_size, n_bins, n)
