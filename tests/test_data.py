import shutil

import h5py
import numpy as np
import pytest
import torch

from neurobridge.data import MaskedTokenizer, NeuralDataModule, RecordingDataset
from neurobridge.masking import MASKING_MODES, MaskingController


def _datamodule(root, **kw):
    dm = NeuralDataModule(root=str(root), batch_size=8, eval_batch_size=8, **kw)
    dm.setup()
    vocab_u = {u: i + 1 for i, u in enumerate(dm.unit_ids)}
    vocab_s = {s: i + 1 for i, s in enumerate(dm.session_ids)}
    dm.tokenizer = MaskedTokenizer(
        modality="spikes", unit_vocab=vocab_u, session_vocab=vocab_s,
        masking=MaskingController(mode_probs={m: 1.0 for m in MASKING_MODES}),
        sequence_length=1.0, bin_size=0.02, latent_step=0.125, num_latents_per_step=4,
    )
    return dm


def test_train_batches_mix_modes_with_per_sample_masks(small_recordings):
    dm = _datamodule(small_recordings)
    batch = next(iter(dm.train_dataloader()))
    assert batch["grid"].shape[0] == 8 and batch["grid"].shape[-1] == 50
    masks = batch["grid_mask"]
    # masks are drawn per sample (two inter-region masks of one region may coincide)
    assert len({m.numpy().tobytes() for m in masks}) >= 5
    assert len(set(batch["mode"].tolist())) >= 2
    # decoded cells never exceed the cap and are all masked cells
    assert batch["query_mask"].sum(1).max() <= dm.train_max_queries
    for b in range(8):
        q = batch["query_mask"][b]
        assert masks[b][batch["query_unit"][b][q], batch["query_bin"][b][q]].all()


def test_unmasked_queries_are_decoded_next_to_the_masked_cells(small_recordings):
    dm = _datamodule(small_recordings, train_unmasked_queries=10)
    batch = next(iter(dm.train_dataloader()))
    masked, visible = batch["query_mask"], batch["query_visible"]
    assert masked.dtype == visible.dtype == torch.bool and not (masked & visible).any()
    assert visible.sum(1).tolist() == [10] * 8  # every window has more than 10 visible cells
    assert masked.sum(1).max() <= dm.train_max_queries
    for b in range(8):
        v = visible[b]
        assert not batch["grid_mask"][b][batch["query_unit"][b][v], batch["query_bin"][b][v]].any()
    # evaluation windows decode masked cells only
    assert not next(iter(dm.val_dataloader()))["query_visible"].any()


@pytest.mark.parametrize("value", [-1, 2.5, True])
def test_bad_unmasked_query_counts_are_refused(small_recordings, value):
    with pytest.raises(ValueError, match="data.train_unmasked_queries must be an integer >= 0"):
        NeuralDataModule(root=str(small_recordings), train_unmasked_queries=value)


def test_training_windows_and_masks_depend_only_on_seed_and_epoch(small_recordings):
    dm = _datamodule(small_recordings)
    s1 = list(dm.train_dataloader().sampler)
    s2 = list(dm.train_dataloader().sampler)
    assert [(i.recording_id, i.start, i.mask_seed) for i in s1] == [
        (i.recording_id, i.start, i.mask_seed) for i in s2]
    sampler = dm.train_dataloader().sampler
    sampler.set_epoch(1)
    assert [i.start for i in sampler] != [i.start for i in s1]


def test_eval_masks_are_fixed_and_cover_every_mode(small_recordings):
    dm = _datamodule(small_recordings)
    a = [dm.dataset[i]["grid_mask"].obj for i in dm.eval_sampler("test")]
    b = [dm.dataset[i]["grid_mask"].obj for i in dm.eval_sampler("test")]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    modes = [i.mode for i in dm.eval_sampler("test")]
    assert set(modes) == set(MASKING_MODES)
    # test windows lie inside the test split
    for i in dm.eval_sampler("test"):
        dom = dm.intervals["test"][i.recording_id]
        assert any(s - 1e-9 <= i.start and i.end <= e + 1e-9 for s, e in zip(dom.start, dom.end))


def test_sampler_shards_by_rank_without_loss(small_recordings, monkeypatch):
    import neurobridge.data.samplers as samplers

    dm = _datamodule(small_recordings)
    full = [(i.recording_id, i.start, i.mode) for i in dm.eval_sampler("test")]
    shards = []
    for rank in range(2):
        monkeypatch.setattr(samplers, "rank_world", lambda r=rank: (r, 2))
        shards.append([(i.recording_id, i.start, i.mode) for i in dm.eval_sampler("test")])
    assert sorted(shards[0] + shards[1]) == sorted(full)
    assert not set(shards[0]) & set(shards[1])


@pytest.mark.parametrize("world", [4, 7])
def test_training_shards_are_disjoint_and_equally_long(small_recordings, monkeypatch, world):
    """Each rank draws different training windows, and every rank as many (DDP pairs the
    ranks' optimizer steps); at most world - 1 windows of the epoch are left out."""
    import neurobridge.data.samplers as samplers

    dm = _datamodule(small_recordings)
    sampler = dm.train_dataloader().sampler
    sampler.set_epoch(3)
    everything = [(i.recording_id, i.start, i.mask_seed) for i in sampler]
    assert len(everything) % world, "the fixture should not divide evenly"
    shards = []
    for rank in range(world):
        monkeypatch.setattr(samplers, "rank_world", lambda r=rank: (r, world))
        shard = [(i.recording_id, i.start, i.mask_seed) for i in sampler]
        assert len(shard) == len(sampler) == len(everything) // world
        shards.append(shard)
    union = [w for shard in shards for w in shard]
    assert len(set(union)) == len(union)  # disjoint
    assert set(union) <= set(everything)
    assert len(everything) - len(union) == len(everything) % world


def test_train_counts_cover_the_train_split(small_recordings):
    dm = _datamodule(small_recordings)
    rid = dm.dataset.recording_ids[0]
    counts = dm.train_counts(rid)
    dom = dm.intervals["train"][rid]
    assert counts.shape == (int(round((dom.end - dom.start).sum() / 0.02)), 36)
    data = dm.dataset.get_recording(rid)
    ts = data.spikes.timestamps
    inside = np.zeros(len(ts), dtype=bool)
    for s, e in zip(dom.start, dom.end):
        inside |= (ts >= s) & (ts < e)
    assert counts.sum() == inside.sum()


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RecordingDataset(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no recording"):
        RecordingDataset(tmp_path)


def test_a_file_as_data_root_and_a_value_key_without_field_are_named(small_recordings):
    one = sorted(small_recordings.glob("*.h5"))[0]
    with pytest.raises(NotADirectoryError, match=rf"is a file; .*data.root={small_recordings}"):
        RecordingDataset(one)
    with pytest.raises(ValueError, match=r"data.value_key must name .*'<series>.<field>'.*'mua'"):
        RecordingDataset(small_recordings, modality="values", value_key="mua")


def test_truncated_file_is_named(small_recordings, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(small_recordings, root)
    victim = sorted(root.glob("*.h5"))[0]
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(OSError, match=victim.name):
        RecordingDataset(root)


@pytest.mark.parametrize("field", ["spikes", "units", "test_domain"])
def test_missing_field_is_named(small_recordings, tmp_path, field):
    root = tmp_path / "data"
    shutil.copytree(small_recordings, root)
    victim = sorted(root.glob("*.h5"))[0]
    with h5py.File(victim, "a") as f:
        del f[field]
    if field == "test_domain":
        dm = NeuralDataModule(root=str(root))
        with pytest.raises(ValueError, match=f"{victim.name}.*test_domain"):
            dm.setup()
    else:
        with pytest.raises(ValueError, match=f"{victim.name}.*'{field}"):
            RecordingDataset(root)


def test_out_of_range_unit_index_is_named(small_recordings, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(small_recordings, root)
    victim = sorted(root.glob("*.h5"))[0]
    with h5py.File(victim, "a") as f:
        f["spikes/unit_index"][0] = 999
    with pytest.raises(ValueError, match="unit_index"):
        RecordingDataset(root)


def _edit_copy(small_recordings, tmp_path, edit):
    """A copy of the small recordings with ``edit(h5py.File)`` applied to the first file."""
    root = tmp_path / "data"
    shutil.copytree(small_recordings, root)
    victim = sorted(root.glob("*.h5"))[0]
    with h5py.File(victim, "a") as f:
        edit(f)
    return root, victim


def _replace(f, name, values):
    del f[name]
    f[name] = values


@pytest.mark.parametrize("defect, message", [
    ("reversed", r"test_domain interval 0 is \[.*\]: every interval needs a finite start <= end"),
    ("outside", r"test_domain interval \d+ .* lies outside the recording's domain"),
    ("overlap", r"train_domain .* and test_domain .* overlap"),
    ("milliseconds", r"spikes.timestamps lie outside the recording's domain.*milliseconds"),
    ("short_region", r"units.brain_region'. It has 5 entries for 36 units"),
])
def test_bad_splits_times_and_unit_columns_are_named(small_recordings, tmp_path, defect, message):
    def edit(f):
        if defect == "reversed":
            f["test_domain/end"][0] = f["test_domain/start"][0] - 1.0
        elif defect == "outside":
            f["test_domain/end"][-1] = f["domain/end"][-1] + 100.0
        elif defect == "overlap":
            f["train_domain/start"][0] = f["test_domain/start"][0]
            f["train_domain/end"][0] = f["test_domain/end"][0]
        elif defect == "milliseconds":
            _replace(f, "spikes/timestamps", f["spikes/timestamps"][()] * 1000.0)
        else:
            _replace(f, "units/brain_region", f["units/brain_region"][:5])

    root, victim = _edit_copy(small_recordings, tmp_path, edit)
    with pytest.raises(ValueError, match=f"{victim.name}: .*{message}"):
        RecordingDataset(root)


def test_a_few_spikes_outside_the_domain_are_counted_not_refused(small_recordings, tmp_path,
                                                                 caplog):
    def edit(f):
        ts = f["spikes/timestamps"][()]
        ts[-3:] = f["domain/end"][-1] + np.array([0.5, 0.6, 0.7])
        _replace(f, "spikes/timestamps", ts)

    root, victim = _edit_copy(small_recordings, tmp_path, edit)
    with caplog.at_level("WARNING"):
        RecordingDataset(root)
    assert f"{victim.name}: 3 of" in caplog.text and "outside the domain" in caplog.text


def test_one_unit_and_a_shared_session_id_are_named(small_recordings, tmp_path):
    from neurobridge.data import write_recording

    root = tmp_path / "one_unit"
    write_recording(root / "solo.h5", session_id="solo", unit_ids=["solo/u0"], domain=(0.0, 10.0),
                    splits={"train": [(0.0, 8.0)], "valid": [], "test": [(8.0, 10.0)]},
                    spike_times=[np.array([1.0, 2.0, 3.0])])
    with pytest.raises(ValueError, match=r"solo.h5: .*units.id'. It has 1 unit\(s\)"):
        RecordingDataset(root)
    twins = tmp_path / "twins"
    shutil.copytree(small_recordings, twins)
    first = sorted(twins.glob("*.h5"))[0]
    shutil.copy(first, twins / "zz_copy.h5")
    with pytest.raises(ValueError, match=f"{first.name} and .*zz_copy.h5 both have session.id"):
        RecordingDataset(twins)


def _tiny_model(dm):
    from neurobridge.models import MaskedModel, NeuroBridgePOYO, TargetSequenceDecoder

    enc = NeuroBridgePOYO(sequence_length=1.0, latent_step=0.125, num_latents_per_step=4, dim=16,
                          depth=1, dim_head=8, cross_heads=1, self_heads=1)
    enc.unit_emb.initialize_vocab(dm.unit_ids)
    enc.session_emb.initialize_vocab(dm.session_ids)
    return MaskedModel(encoder=enc, decoder=TargetSequenceDecoder(dim=16, unit_emb_dim=16, dim_head=8))


def _predict(model, batch):
    return model(encoder_inputs=batch["encoder_inputs"], query_unit_index=batch["query_unit_index"],
                 query_timestamps=batch["query_timestamps"],
                 query_session_index=batch["query_session_index"])


def test_collated_batch_feeds_the_model(small_recordings):
    dm = _datamodule(small_recordings)
    model = _tiny_model(dm)
    batch = next(iter(dm.train_dataloader()))
    out = _predict(model, batch)
    assert out.shape == batch["target"].shape and torch.isfinite(out).all()


@pytest.mark.parametrize("defect, message", [
    ("unsorted", "not sorted"), ("nonfinite", "NaN/Inf"),
])
def test_bad_spike_timestamps_are_named(small_recordings, tmp_path, defect, message):
    root = tmp_path / "data"
    shutil.copytree(small_recordings, root)
    victim = sorted(root.glob("*.h5"))[0]
    with h5py.File(victim, "a") as f:
        ts = f["spikes/timestamps"]
        ts[5] = ts[50] if defect == "unsorted" else np.inf
    with pytest.raises(ValueError, match=f"{victim.name}.*spikes.timestamps.*{message}"):
        RecordingDataset(root)


def test_silent_windows_and_silent_units_give_finite_losses(small_recordings):
    """A window without a single spike (and units that never fire) trains without NaN."""
    from torch_brain.data import collate

    from neurobridge.data import WindowIndex
    from neurobridge.losses import masked_poisson_nll

    dm = _datamodule(small_recordings)
    rid = dm.dataset.recording_ids[0]
    real = dm.dataset.get_recording(rid).slice(10.0, 11.0)
    silent = real.slice(0.0, 1.0)
    keep = np.zeros(len(silent.spikes.timestamps), dtype=bool)  # drop every spike
    silent.spikes = silent.spikes.select_by_mask(keep)
    samples = [dm.tokenizer(w, WindowIndex(rid, 10.0, 11.0, mask_seed=s, mode=m))
               for s, (w, m) in enumerate([(silent, "neuron"), (silent, "temporal"),
                                           (real, "inter_region")])]
    assert len(samples[0]["encoder_inputs"]["input_unit_index"].obj) > 0  # start/end tokens only
    batch = collate(samples)
    model = _tiny_model(dm)
    pred = _predict(model, batch)
    loss = masked_poisson_nll(pred, batch["target"], batch["query_mask"])
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert float(batch["target"][0][batch["query_mask"][0]].sum()) == 0.0


@pytest.mark.parametrize("weighting, expected_ratio", [
    ("proportional", 4.0), ("uniform", 1.0), ("sqrt", 2.0),
])
def test_recording_weighting_shares_training_windows(weighting, expected_ratio):
    """Recording a has 4x the time of recording b: windows per epoch follow the rule, the epoch
    length does not change, and every window lies in its recording's intervals."""
    from temporaldata import Interval

    from neurobridge.data import TrainWindowSampler

    intervals = {"a": Interval(np.array([0.0]), np.array([400.0])),
                 "b": Interval(np.array([0.0]), np.array([100.0]))}
    sampler = TrainWindowSampler(intervals=intervals, window_length=1.0, seed=3,
                                 recording_weighting=weighting)
    windows = list(sampler)
    assert len(windows) == len(sampler) == 500
    n_a = sum(w.recording_id == "a" for w in windows)
    n_b = len(windows) - n_a
    assert n_a / n_b == pytest.approx(expected_ratio, rel=0.02)
    for w in windows:
        iv = intervals[w.recording_id]
        assert iv.start[0] <= w.start and w.end <= iv.end[0] + 1e-9
    with pytest.raises(ValueError, match="recording_weighting must be one of"):
        TrainWindowSampler(intervals=intervals, window_length=1.0, recording_weighting="square")
    with pytest.raises(ValueError, match="recording_weighting must be one of"):
        NeuralDataModule(root="unused", recording_weighting="square")


def test_eval_windows_skip_intervals_shorter_than_a_window():
    """Presentation-long test pieces (e.g. Allen's 250 ms scenes) hold no 1 s window: they are
    skipped, longer blocks are still tiled, and a split with no long-enough piece is an error."""
    from temporaldata import Interval

    from neurobridge.data import EvalWindowSampler

    mixed = {"a": Interval(np.array([0.0, 5.0, 10.0]), np.array([0.25, 7.0, 10.25]))}
    sampler = EvalWindowSampler(intervals=mixed, window_length=1.0, modes=["neuron"])
    starts = sorted(w.start for w in sampler)
    assert starts == pytest.approx([5.0, 6.0])
    short = {"a": Interval(np.array([0.0, 1.0]), np.array([0.25, 1.25]))}
    with pytest.raises(ValueError, match=r"holds a 1.0 s window.*sequence_length"):
        EvalWindowSampler(intervals=short, window_length=1.0, modes=["neuron"])
