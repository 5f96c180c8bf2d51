"""A values (CaPOYO) run over spiking and MUA recordings at once (data.spike_values)."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from scipy.stats import poisson

from neurobridge.data import MaskedTokenizer, NeuralDataModule, WindowIndex, bin_regular, bin_spikes
from neurobridge.data.spike_values import VALUE_SOURCES, expected_spike_values, spike_value_stats
from neurobridge.datasets.synthetic import (
    SyntheticConfig,
    build_recording,
    generate_synthetic_recordings,
)
from neurobridge.masking import MASKING_MODES, MaskingController

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")
BIN = 0.02
# s00 spikes, s01 MUA; high rates so a short run has signal in the spike counts
MIXED = SyntheticConfig(n_sessions=2, modality="mixed", units_per_region=4, duration=40.0,
                        seed=5, mean_rate_median=20.0, mean_rate_range=(5.0, 40.0),
                        log_rate_std_range=(1.0, 1.4))
SPIKING, MUA = "synthetic_s00", "synthetic_s01"


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    generate_synthetic_recordings(root, MIXED)
    return root


def _datamodule(root, **kw):
    dm = NeuralDataModule(root=str(root), modality="values", batch_size=8, **kw)
    dm.setup()
    dm.tokenizer = MaskedTokenizer(
        modality="values",
        unit_vocab={u: i + 1 for i, u in enumerate(dm.unit_ids)},
        session_vocab={s: i + 1 for i, s in enumerate(dm.session_ids)},
        masking=MaskingController(mode_probs={m: 1.0 for m in MASKING_MODES}),
        sequence_length=1.0, bin_size=BIN, latent_step=0.125, num_latents_per_step=4,
        spike_values=dm.spike_values, spike_value_stats=dm.spike_value_stats,
    )
    return dm


def _unpad(x):
    return np.asarray(x.obj)


def _tokens(dm, rid, start, mode="intra_region", seed=3):
    index = WindowIndex(rid, start, start + 1.0, mask_seed=seed, mode=mode)
    out = dm.dataset[index]
    mask = _unpad(out["grid_mask"]).T  # [bins, units]
    enc = out["encoder_inputs"]
    b = np.round(_unpad(enc["input_timestamps"]) / BIN - 0.5).astype(int)
    u = _unpad(enc["input_unit_index"]) - 1 - dm.unit_ids.index(
        str(dm.dataset.get_recording(rid).units.id[0]))
    return out, mask, b, u, _unpad(enc["input_values"])[:, 0]


@pytest.mark.parametrize("how", ["counts", "sqrt"])
def test_values_run_tokenizes_spiking_and_mua_recordings(mixed_root, how):
    dm = _datamodule(mixed_root, spike_values=how)
    assert dm.dataset.value_sources == {SPIKING: "spikes", MUA: "value_series"}
    start = float(dm.intervals["train"][SPIKING].start[0]) + 2.0
    for rid in (SPIKING, MUA):
        out, mask, b, u, values = _tokens(dm, rid, start)
        data = dm.dataset.get_recording(rid).slice(start, start + 1.0)
        n_units = len(data.units.id)
        if rid == SPIKING:
            counts = bin_spikes(data.spikes.timestamps, data.spikes.unit_index,
                                num_units=n_units, start=0.0, end=1.0, bin_size=BIN)
            grid = counts if how == "counts" else np.sqrt(counts)
            assert counts.sum() > 100
        else:
            grid = bin_regular(data.mua.values, sampling_rate=100.0, bin_size=BIN, n_bins=50)
        assert VALUE_SOURCES[out["value_source"]] == ("spikes" if rid == SPIKING else "value_series")
        # one token per visible cell, with the cell's (transformed) value; masked cells removed
        assert mask.any() and not mask.all()
        assert sorted(zip(b, u)) == sorted(zip(*np.nonzero(~mask)))
        np.testing.assert_allclose(values, grid[b, u], rtol=1e-6, atol=1e-7)
        qb, qu = _unpad(out["query_bin"]), _unpad(out["query_unit"])
        assert set(zip(qb, qu)) == set(zip(*np.nonzero(mask)))
        np.testing.assert_allclose(_unpad(out["target"]), grid[qb, qu], rtol=1e-6, atol=1e-7)
        truth = _unpad(out["true_target"])
        if rid == SPIKING:  # expected value under the same transform, from the true rates
            rates = bin_regular(data.true_rates.rates, sampling_rate=100.0, bin_size=BIN,
                                n_bins=50)
            expected = expected_spike_values(rates * BIN, how)
            np.testing.assert_allclose(truth, expected[qb, qu], rtol=1e-5)
        else:
            clean = bin_regular(data.mua.clean, sampling_rate=100.0, bin_size=BIN, n_bins=50)
            np.testing.assert_allclose(truth, clean[qb, qu], rtol=1e-5)


def test_zscored_spike_values_use_the_training_split_statistics(mixed_root):
    dm = _datamodule(mixed_root, spike_values="sqrt", spike_values_zscore=True)
    assert set(dm.spike_value_stats) == {SPIKING}  # MUA values are used as stored
    mean, std = dm.spike_value_stats[SPIKING]
    dense = np.sqrt(dm.train_counts(SPIKING))  # the dense grid of the training split
    np.testing.assert_allclose(mean, dense.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(std, dense.std(0), rtol=1e-4)
    start = float(dm.intervals["test"][SPIKING].start[0])
    out, mask, b, u, values = _tokens(dm, SPIKING, start, mode="neuron")
    data = dm.dataset.get_recording(SPIKING).slice(start, start + 1.0)
    counts = bin_spikes(data.spikes.timestamps, data.spikes.unit_index,
                        num_units=len(data.units.id), start=0.0, end=1.0, bin_size=BIN)
    z = (np.sqrt(counts) - mean) / std
    np.testing.assert_allclose(values, z[b, u], rtol=1e-5, atol=1e-6)
    qb, qu = _unpad(out["query_bin"]), _unpad(out["query_unit"])
    np.testing.assert_allclose(_unpad(out["target"]), z[qb, qu], rtol=1e-5, atol=1e-6)
    # a unit that never spikes keeps std 1 (no division by zero)
    silent = spike_value_stats(np.array([0.5]), np.array([0]), 2,
                               dm.intervals["train"][SPIKING], BIN, "sqrt")[1]
    assert silent[1] == 1.0


def test_expected_sqrt_count_is_the_poisson_mean_of_sqrt():
    lam = np.array([0.0, 1e-4, 0.3, 2.0, 17.0, 99.0, 101.0, 400.0])
    got = expected_spike_values(lam, "sqrt")
    for value, mean in zip(got, lam):
        k = np.arange(int(mean + 40 * math.sqrt(mean) + 60))
        assert value == pytest.approx((np.sqrt(k) * poisson.pmf(k, mean)).sum(), rel=1e-6, abs=1e-9)
    np.testing.assert_array_equal(expected_spike_values(lam, "counts"), lam.astype(np.float32))


def test_default_refuses_a_spiking_recording_naming_file_field_and_option(mixed_root):
    dm = NeuralDataModule(root=str(mixed_root), modality="values")
    with pytest.raises(ValueError, match=rf"{SPIKING}\.h5.*'mua\.values'.*data\.spike_values"):
        dm.setup()


@pytest.mark.parametrize("kw, message", [
    (dict(modality="values", spike_values="log"), r"spike_values must be null or one of \['counts', 'sqrt'\]"),
    (dict(modality="spikes", spike_values="sqrt"), "data.modality=values"),
    (dict(modality="values", spike_values_zscore=True), "set data.spike_values"),
    (dict(modality="values", spike_values="sqrt", spike_values_zscore="yes"), "true or false"),
])
def test_bad_options_are_rejected_before_reading_data(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        NeuralDataModule(root=str(tmp_path / "does_not_exist"), **kw)


def test_bad_option_is_rejected_at_start_up(tmp_path):
    from neurobridge.training.run import run

    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=[
            "data=recordings", f"data.root={tmp_path / 'does_not_exist'}", "data.modality=values",
            "model=capoyo_small", "data.spike_values=poisson"])
    with pytest.raises(ValueError, match=r"\['counts', 'sqrt'\]"):
        run(cfg, tmp_path / "run")


def test_unit_ids_shared_by_a_spiking_and_a_mua_recording_are_refused(tmp_path):
    spiking, mua = build_recording(MIXED, 0), build_recording(MIXED, 1)
    mua.units.id = spiking.units.id.copy()
    spiking.save(tmp_path / f"{SPIKING}.h5")
    mua.save(tmp_path / f"{MUA}.h5")
    dm = NeuralDataModule(root=str(tmp_path), modality="values", spike_values="sqrt")
    dm.setup()
    with pytest.raises(ValueError, match=rf"not unique.*'{SPIKING}' and '{MUA}'"):
        dm.dataset.unit_ids()


def test_mixed_batches_and_recording_weighting(mixed_root):
    dm = _datamodule(mixed_root, spike_values="sqrt", recording_weighting="uniform")
    windows = list(dm.train_dataloader().sampler)
    n_spiking = sum(w.recording_id == SPIKING for w in windows)
    assert n_spiking == len(windows) - n_spiking  # uniform over recordings, whatever their kind
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["value_source"].tolist()) == {0, 1}


def test_short_mixed_pretraining_learns_both_kinds(tmp_path):
    """data=synthetic_mixed: finite losses for windows of both kinds, and test R² above 0 on
    both kinds of recording (below the oracle)."""
    from neurobridge.training.run import run

    overrides = [
        "data=synthetic_mixed", "model=capoyo_small", "model.encoder.dim=32",
        "model.encoder.dim_head=16", "model.decoder.dim_head=16",
        "model.encoder.num_latents_per_step=4", "data.batch_size=16", "data.max_val_windows=8",
        "task.plots=false", "trainer.enable_progress_bar=false", "trainer.max_steps=400",
        "trainer.val_check_interval=400", "trainer.log_every_n_steps=5", "task.optimizer.lr=0.005",
        # 100 ms bins: more spikes per cell (oracle R² of the sqrt counts ~0.65 instead of ~0.1
        # at 20 ms), so 400 steps (~15 s) learn both kinds (R² ~0.1; seeds 0-2 checked)
        "data.bin_size=0.1", "data.synthetic.n_sessions=2", "data.synthetic.duration=40",
        "data.synthetic.units_per_region=4", "data.synthetic.seed=5",
        "+data.synthetic.mean_rate_median=20.0", "+data.synthetic.mean_rate_range=[5.0,40.0]",
        "+data.synthetic.log_rate_std_range=[1.0,1.4]",
    ]
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    metrics = run(cfg, tmp_path / "run")
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for group in ("spike_recordings", "value_recordings"):
        losses = [float(r[f"train/loss/{group}"]) for r in rows if r.get(f"train/loss/{group}")]
        assert len(losses) >= 10 and all(math.isfinite(v) for v in losses)
        assert math.isfinite(metrics[f"test/loss/{group}"])
        assert 0 < metrics[f"test/r2/{group}"] < metrics[f"test/oracle/r2/{group}"]
    for mode in MASKING_MODES:
        assert f"test/r2/{mode}" in metrics and f"test/oracle/r2/{mode}" in metrics


def test_mixed_synthetic_sessions_are_those_of_the_single_modality_configs():
    """modality="mixed": even sessions are the spiking sessions, odd ones the MUA sessions of
    the same config with modality "spikes" / "mua" (ids, units and signals)."""
    import dataclasses

    small = dataclasses.replace(MIXED, n_sessions=2, duration=20.0, units_per_region=2)
    s00, s01 = build_recording(small, 0), build_recording(small, 1)
    spikes = build_recording(dataclasses.replace(small, modality="spikes"), 0)
    mua = build_recording(dataclasses.replace(small, modality="mua"), 1)
    assert "mua" not in s00.keys() and "spikes" not in s01.keys()
    assert (s00.session.modality, s01.session.modality) == ("spikes", "mua")
    np.testing.assert_array_equal(s00.units.id, spikes.units.id)
    np.testing.assert_array_equal(s00.spikes.timestamps, spikes.spikes.timestamps)
    np.testing.assert_array_equal(s01.units.id, mua.units.id)
    np.testing.assert_array_equal(s01.mua.values, mua.mua.values)
