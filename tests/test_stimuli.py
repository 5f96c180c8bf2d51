import dataclasses

import numpy as np
import pytest
from temporaldata import Data, Interval

from neurobridge.data import StimulusDataModule, StimulusWindowSampler
from neurobridge.data.images import ImageFolderSource
from neurobridge.data.stimuli import read_presentations, stimulus_windows
from neurobridge.datasets.synthetic import (
    STIMULUS_FIELD,
    SyntheticConfig,
    build_recording,
    generate_synthetic_recordings,
    synthetic_image_ids,
    synthetic_images,
)
from neurobridge.datasets.synthetic_visual import region_latency

VISUAL = SyntheticConfig(
    n_sessions=2, units_per_region=10, duration=120.0, seed=5, stimulus="images",
    n_train_images=60, n_valid_images=10, n_test_images=20,
)


@pytest.fixture(scope="module")
def visual_recordings(tmp_path_factory):
    root = tmp_path_factory.mktemp("visual")
    generate_synthetic_recordings(root, VISUAL)
    return root


# ------------------------------------------------------------------ synthetic visual data


def test_images_are_deterministic_varied_and_written_as_pngs(visual_recordings):
    images = synthetic_images(VISUAL)
    assert images.shape == (90, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, synthetic_images(VISUAL))
    flat = images.reshape(90, -1).astype(float)
    assert np.corrcoef(flat).min() < 0.5  # not 90 copies of one picture
    source = ImageFolderSource(visual_recordings / "images")
    assert source.ids == sorted(synthetic_image_ids(VISUAL))
    np.testing.assert_array_equal(np.asarray(source.load("test/0003.png")), images[60 + 10 + 3])


def test_presentations_show_each_split_its_own_images():
    data = build_recording(VISUAL, 0)
    table = getattr(data, STIMULUS_FIELD)
    assert len(table.start) > 100
    assert np.all(np.diff(table.start) > 0) and np.allclose(table.end - table.start, 0.3)
    for split in ("train", "valid", "test"):
        dom = getattr(data, f"{split}_domain")
        onsets_in = [
            np.any((dom.start <= t) & (t < dom.end)) for t in table.start
        ]
        shown = np.asarray(table.image_id)[onsets_in].astype(str)
        assert len(shown) and all(s.startswith(split + "/") for s in shown)


def test_units_respond_to_image_content_with_region_latencies():
    data = build_recording(VISUAL, 0)
    rates = np.asarray(data.true_rates.rates, dtype=float)
    table = getattr(data, STIMULUS_FIELD)
    regions = np.asarray(data.units.brain_region).astype(str)
    onset_idx = np.round(np.asarray(table.start) * 100).astype(int)
    ids = np.asarray(table.image_id).astype(str)
    # responses to repeated presentations of one image agree more than across images
    evoked = np.stack([rates[i + 10 : i + 35].mean(0) for i in onset_idx])  # [P, N]
    same, diff = [], []
    for i in range(len(ids)):
        for j in range(i + 1, min(i + 200, len(ids))):
            c = np.corrcoef(evoked[i], evoked[j])[0, 1]
            (same if ids[i] == ids[j] else diff).append(c)
    assert np.mean(same) > np.mean(diff) + 0.2
    # V1 responds before IT: the stimulus-locked average rises earlier
    psth = np.stack([rates[i - 5 : i + 30] for i in onset_idx if i >= 5]).mean(0)  # [35, N]
    rise = {}
    for region in ("V1", "IT"):
        trace = np.abs(psth[:, regions == region] - psth[:5, regions == region].mean(0)).mean(1)
        rise[region] = np.argmax(trace > 0.5 * trace.max())
    assert rise["V1"] < rise["IT"]
    assert region_latency(0) < region_latency(2)


def test_visual_config_is_validated():
    with pytest.raises(ValueError, match="stimulus must be one of"):
        dataclasses.replace(VISUAL, stimulus="movies")
    with pytest.raises(ValueError, match="image_size"):
        dataclasses.replace(VISUAL, image_size=4)


# ---------------------------------------------------------------------- presentations


def _recording(**stim):
    data = Data(domain=Interval(0.0, 10.0))
    if stim:
        data.stimulus_presentations = Interval(**stim)
    return data


def test_read_presentations_names_file_and_field():
    with pytest.raises(ValueError, match=r"rec\.h5.*no 'stimulus_presentations'"):
        read_presentations(_recording(), "rec.h5")
    no_id = _recording(start=np.array([1.0]), end=np.array([1.5]))
    with pytest.raises(ValueError, match="no 'image_id' field"):
        read_presentations(no_id, "rec.h5")
    bad = dict(start=np.array([2.0, 1.0]), end=np.array([2.5, 1.5]), image_id=np.array(["a", "b"]))
    with pytest.raises(ValueError, match="not sorted"):
        read_presentations(_recording(**bad), "rec.h5")
    nan = dict(start=np.array([1.0, 2.0]), end=np.array([1.5, np.inf]), image_id=np.array(["a", "b"]))
    with pytest.raises(ValueError, match="NaN"):
        read_presentations(_recording(**nan), "rec.h5")


def test_repeated_images_stay_on_one_side_of_the_split():
    domains = {
        "train": {"r": Interval(np.array([0.0]), np.array([10.0]))},
        "valid": {"r": Interval(np.array([10.0]), np.array([12.0]))},
        "test": {"r": Interval(np.array([12.0]), np.array([20.0]))},
    }
    table = {
        "start": np.array([1.0, 3.0, 5.0, 9.7, 13.0, 15.0]),
        "end": np.array([1.3, 3.3, 5.3, 10.0, 13.3, 15.3]),
        # "a" is shown in train and in test: it is a test image, its train showing is dropped;
        # the showing at 9.7 s straddles the train/valid boundary and is dropped too
        "image_id": np.array(["a", "b", "c", "d", "a", "e"]),
    }
    out = stimulus_windows({"r": table}, domains, pre=0.2, post=0.8)
    assert out.image_ids == {"train": ["b", "c"], "valid": [], "test": ["a", "e"]}
    assert out.dropped == {"outside_split": 1, "image_in_other_split": 1}
    assert [w.onset for w in out.windows["test"]] == [13.0, 15.0]
    w = out.windows["train"][0]
    assert (w.start, w.end) == pytest.approx((2.8, 3.8)) and w.image_id == "b"


def test_stimulus_sampler_order_depends_on_seed_and_epoch(monkeypatch):
    from neurobridge.data import samplers

    domains = {s: {"r": Interval(np.array([a]), np.array([b]))}
               for s, (a, b) in zip(("train", "valid", "test"), ((0, 100), (100, 110), (110, 120)))}
    table = {"start": np.arange(1.0, 99.0), "end": np.arange(1.0, 99.0) + 0.3,
             "image_id": np.array([f"i{k}" for k in range(98)])}
    windows = stimulus_windows({"r": table}, domains, pre=0.2, post=0.8).windows["train"]
    sampler = StimulusWindowSampler(windows, shuffle=True, seed=1)
    first = [w.onset for w in sampler]
    assert first == [w.onset for w in StimulusWindowSampler(windows, shuffle=True, seed=1)]
    assert sorted(first) == [w.onset for w in windows] and first != sorted(first)
    sampler.set_epoch(1)
    assert [w.onset for w in sampler] != first
    ordered = StimulusWindowSampler(windows, shuffle=False)
    assert [w.onset for w in ordered] == [w.onset for w in windows]
    shards, train_shards = [], []
    for rank in (0, 1, 2):
        monkeypatch.setattr(samplers, "rank_world", lambda r=rank: (r, 3))
        shards.append([w.onset for w in ordered])
        train_shards.append([w.onset for w in sampler])
        assert len(train_shards[-1]) == len(sampler) == len(windows) // 3
    # evaluation keeps every window; training drops len % world so every rank steps alike
    assert sorted(sum(shards, [])) == [w.onset for w in windows]
    assert len(windows) % 3 != 0 and len(set(sum(train_shards, []))) == len(windows) // 3 * 3
    # shard=False: every rank (here still rank 2 of 3) yields every window (whole-split passes)
    whole = StimulusWindowSampler(windows, shuffle=False, shard=False)
    assert [w.onset for w in whole] == [w.onset for w in windows] and len(whole) == len(windows)
    with pytest.raises(ValueError, match="No stimulus-locked window"):
        StimulusWindowSampler([], shuffle=False)


def test_stimulus_datamodule_windows_and_errors(visual_recordings):
    dm = StimulusDataModule(root=str(visual_recordings), batch_size=4)
    dm.setup()
    assert dm.images == str(visual_recordings / "images")
    assert set(dm.split_image_ids["test"]).isdisjoint(dm.split_image_ids["train"])
    assert all(i.startswith("test/") for i in dm.split_image_ids["test"])
    assert dm.image_ids[: len(dm.split_image_ids["train"])] == dm.split_image_ids["train"]
    for w in dm.stimulus.windows["test"]:
        assert w.end - w.start == pytest.approx(1.0) and w.onset - w.start == pytest.approx(0.2)
    with pytest.raises(ValueError, match="must equal the encoder's sequence_length"):
        StimulusDataModule(root=str(visual_recordings), pre_onset=0.2, post_onset=0.5)
    with pytest.raises(ValueError, match="train_unmasked_queries is for masked pretraining"):
        StimulusDataModule(root=str(visual_recordings), train_unmasked_queries=8)


def test_unit_dropout_hides_whole_units_of_training_windows_only(visual_recordings):
    from neurobridge.data import MaskedTokenizer, StimulusTokenizer
    from neurobridge.masking import MaskingController

    dm = StimulusDataModule(root=str(visual_recordings), batch_size=4, unit_dropout=0.6)
    dm.setup()
    vocab = {u: i + 1 for i, u in enumerate(dm.unit_ids)}
    masked = MaskedTokenizer(
        modality="spikes", unit_vocab=vocab,
        session_vocab={s: i + 1 for i, s in enumerate(dm.session_ids)},
        masking=MaskingController(), sequence_length=1.0, bin_size=0.02, latent_step=0.125,
        num_latents_per_step=4,
    )
    tokenizer = StimulusTokenizer(masked, dm.image_rows)
    train = list(dm.stimulus_sampler("train"))
    assert all(0.0 <= w.unit_dropout <= 0.6 for w in train) and train[0].unit_dropout > 0
    assert all(w.unit_dropout == 0.0 for w in dm.stimulus_sampler("test"))
    w = max(train, key=lambda w: w.unit_dropout)
    data = dm.dataset.window(w.recording_id, w.start, w.end)
    n_units = len(data.units.id)

    def units_of(index):
        tokens = tokenizer(data, index)["encoder_inputs"]
        return set(tokens["input_unit_index"].obj.tolist())

    full = units_of(dataclasses.replace(w, unit_dropout=0.0))
    kept = units_of(w)
    # floor(fraction * units) units lose every token (spikes, start and end tokens)
    assert len(full) == n_units and len(full - kept) == int(w.unit_dropout * n_units)
    assert kept <= full and units_of(w) == kept  # the same units for the same mask seed
    assert units_of(dataclasses.replace(w, mask_seed=w.mask_seed + 1)) != kept
    with pytest.raises(ValueError, match=r"data.unit_dropout must be in \[0, 1\)"):
        StimulusDataModule(root=str(visual_recordings), unit_dropout=1.0)
    with pytest.raises(ValueError, match="training augmentation"):
        StimulusWindowSampler(train, shuffle=False, unit_dropout=0.2)
