"""Tests of the built-in synthetic data generator."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from temporaldata import Interval
from torch_brain.dataset import Dataset

from neurobridge.data.binning import bin_regular, bin_spikes
from neurobridge.datasets import synthetic
from neurobridge.datasets.synthetic import (
    SyntheticConfig,
    build_recording,
    config_hash,
    ensure_synthetic_recordings,
    generate_synthetic_recordings,
)

SMALL = SyntheticConfig(n_sessions=2, units_per_region=4, duration=40.0, seed=3)


def _total(interval: Interval) -> float:
    return float(np.sum(np.asarray(interval.end) - np.asarray(interval.start)))


def _overlap(a: Interval, b: Interval) -> float:
    total = 0.0
    for s1, e1 in zip(a.start, a.end, strict=True):
        for s2, e2 in zip(b.start, b.end, strict=True):
            total += max(0.0, min(e1, e2) - max(s1, s2))
    return total


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_small")
    generate_synthetic_recordings(root, SMALL)
    return root


def test_folder_loads_with_torch_brain_dataset(small_root):
    ds = Dataset(small_root)
    assert ds.recording_ids == ["synthetic_s00", "synthetic_s01"]
    n_t = SMALL.n_samples
    for rid in ds.recording_ids:
        data = ds.get_recording(rid)
        assert data.session.id == rid
        n_units = len(data.units.id)
        assert n_units == 3 * SMALL.units_per_region
        assert data.units.brain_region.shape == (n_units,)

        ts, ui = data.spikes.timestamps, data.spikes.unit_index
        assert ts.dtype == np.float64 and ui.dtype == np.int64
        assert len(ts) == len(ui) > 0
        assert np.all(np.diff(ts) >= 0)
        assert ui.min() >= 0 and ui.max() < n_units
        assert ts.min() >= 0.0 and ts.max() < SMALL.duration

        assert data.true_rates.rates.shape == (n_t, n_units)
        assert data.true_rates.rates.dtype == np.float32
        assert data.true_rates.latents.shape == (n_t, SMALL.latent_total_dim)
        assert data.true_rates.latents.dtype == np.float32
        assert data.true_rates.sampling_rate == 100.0

        assert float(data.domain.start[0]) == 0.0
        assert float(data.domain.end[-1]) == SMALL.duration
        splits = [data.train_domain, data.valid_domain, data.test_domain]
        for split in splits:
            assert len(split) > 0 and split.is_sorted() and split.is_disjoint()
            assert split.start.min() >= 0.0 and split.end.max() <= SMALL.duration
            assert np.all(split.end - split.start >= 2.0 - 1e-9)
        for i in range(3):
            for j in range(i + 1, 3):
                assert _overlap(splits[i], splits[j]) == 0.0
        # together the splits tile the recording
        assert sum(_total(s) for s in splits) == pytest.approx(SMALL.duration)


def test_slice_of_train_window_is_relative(small_root):
    ds = Dataset(small_root)
    full = ds.get_recording("synthetic_s01")
    start = float(full.train_domain.start[0]) + 0.5
    window = ds.get_recording("synthetic_s01").slice(start, start + 1.0)
    assert window.session.id == "synthetic_s01"
    ts = window.spikes.timestamps
    assert len(ts) > 0 and ts.min() >= 0.0 and ts.max() < 1.0
    all_ts = full.spikes.timestamps
    expected = all_ts[(all_ts >= start) & (all_ts < start + 1.0)] - start
    np.testing.assert_allclose(np.sort(ts), np.sort(expected), atol=1e-9)
    assert window.true_rates.rates.shape == (100, len(full.units.id))


def test_same_seed_is_deterministic_and_seed_matters():
    cfg = SyntheticConfig(n_sessions=2, units_per_region=3, duration=20.0, seed=11)
    a, b = build_recording(cfg, 1), build_recording(cfg, 1)
    np.testing.assert_array_equal(a.spikes.timestamps, b.spikes.timestamps)
    np.testing.assert_array_equal(a.spikes.unit_index, b.spikes.unit_index)
    np.testing.assert_array_equal(a.true_rates.rates, b.true_rates.rates)
    np.testing.assert_array_equal(a.train_domain.start, b.train_domain.start)

    # a session does not depend on how many sessions are generated
    c = build_recording(
        SyntheticConfig(n_sessions=5, units_per_region=3, duration=20.0, seed=11), 1
    )
    np.testing.assert_array_equal(a.spikes.timestamps, c.spikes.timestamps)

    other = build_recording(
        SyntheticConfig(n_sessions=2, units_per_region=3, duration=20.0, seed=12), 1
    )
    assert not np.array_equal(a.true_rates.rates, other.true_rates.rates)
    same_spikes = len(a.spikes.timestamps) == len(other.spikes.timestamps) and np.array_equal(
        a.spikes.timestamps, other.spikes.timestamps
    )
    assert not same_spikes
    # sessions of one config differ from each other
    assert not np.array_equal(a.true_rates.latents, build_recording(cfg, 0).true_rates.latents)


def test_written_files_are_deterministic(tmp_path):
    cfg = SyntheticConfig(n_sessions=1, units_per_region=2, duration=20.0, seed=5)
    (p1,) = generate_synthetic_recordings(tmp_path / "a", cfg)
    (p2,) = generate_synthetic_recordings(tmp_path / "b", cfg)
    d1 = Dataset(tmp_path / "a").get_recording(p1.stem)
    d2 = Dataset(tmp_path / "b").get_recording(p2.stem)
    np.testing.assert_array_equal(d1.spikes.timestamps[:], d2.spikes.timestamps[:])
    np.testing.assert_array_equal(d1.true_rates.rates[:], d2.true_rates.rates[:])


def test_ground_truth_rates_are_honest_and_informative():
    cfg = SyntheticConfig(n_sessions=1, units_per_region=6, duration=200.0, seed=1)
    data = build_recording(cfg, 0)
    rates = data.true_rates.rates.astype(np.float64)
    n_units = rates.shape[1]

    # empirical spike counts match the integral of the piecewise-constant rate
    counts = np.bincount(data.spikes.unit_index, minlength=n_units)
    expected = rates.sum(axis=0) * 0.01
    z = (counts - expected) / np.sqrt(expected)
    assert np.all(np.abs(z) < 5), z

    # the rates are in the intended range and clearly modulated
    mean_rate = rates.mean(axis=0)
    assert 2.0 <= np.median(mean_rate) <= 30.0
    assert mean_rate.min() >= 1.9 and mean_rate.max() <= 31.0
    log_std = np.log(rates).std(axis=0)
    assert 0.4 <= np.median(log_std) <= 1.1

    # true-rate Poisson likelihood beats a per-unit constant rate on 20 ms bins
    bins = bin_spikes(
        data.spikes.timestamps,
        data.spikes.unit_index,
        num_units=n_units,
        start=0.0,
        end=cfg.duration,
        bin_size=0.02,
    ).astype(np.float64)
    lam = bin_regular(rates, sampling_rate=100.0, bin_size=0.02, n_bins=bins.shape[0]) * 0.02
    lam = lam.astype(np.float64)
    # bin 0 holds exactly the two first rate samples' expected count
    np.testing.assert_allclose(lam[0], 0.01 * (rates[0] + rates[1]), rtol=1e-5)
    null = bins.mean(axis=0, keepdims=True)
    ll_true = np.sum(bins * np.log(lam) - lam)
    ll_null = np.sum(bins * np.log(null) - null)
    bits_per_spike = (ll_true - ll_null) / bins.sum() / np.log(2)
    assert bits_per_spike > 0.1, bits_per_spike


def _lagged_r2(target: np.ndarray, source: np.ndarray, max_lag: int = 30) -> float:
    """R^2 of a linear prediction of ``target`` [T, d] from the past ``source`` [T, d']."""
    t = len(target)
    design = [source[max_lag - lag : t - lag] for lag in range(max_lag + 1)]
    x = np.concatenate(design + [np.ones((t - max_lag, 1))], axis=1)
    y = target[max_lag:]
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    return 1.0 - resid.var(axis=0).sum() / y.var(axis=0).sum()


def test_downstream_region_is_partly_predictable_from_upstream():
    kw = dict(n_sessions=1, units_per_region=1, duration=60.0, seed=2)
    d = 3
    coupled = build_recording(SyntheticConfig(**kw), 0).true_rates.latents.astype(np.float64)
    r2 = _lagged_r2(coupled[:, d : 2 * d], coupled[:, :d])  # V4 from past V1
    assert r2 > 0.3, r2
    free = build_recording(SyntheticConfig(coupling=0.0, **kw), 0).true_rates.latents
    r2_free = _lagged_r2(free[:, d : 2 * d].astype(np.float64), free[:, :d].astype(np.float64))
    assert r2_free < 0.1, r2_free


def test_regions_and_globally_unique_unit_ids(small_root):
    ds = Dataset(small_root)
    ids = np.concatenate([ds.get_recording(r).units.id for r in ds.recording_ids])
    assert len(set(ids.tolist())) == len(ids)
    for rid in ds.recording_ids:
        regions = ds.get_recording(rid).units.brain_region.astype(str)
        names, counts = np.unique(regions, return_counts=True)
        assert len(names) >= 3
        assert set(names) == set(SMALL.regions)
        assert np.all(counts == SMALL.units_per_region)


def test_unit_count_jitter_varies_counts():
    cfg = SyntheticConfig(n_sessions=4, units_per_region=6, unit_count_jitter=3, duration=20.0)
    sizes = {len(build_recording(cfg, k).units.id) for k in range(cfg.n_sessions)}
    assert len(sizes) > 1
    assert all(3 * 3 <= s <= 3 * 9 for s in sizes)


def test_mua_variant(tmp_path):
    cfg = SyntheticConfig(
        n_sessions=1, units_per_region=4, duration=30.0, modality="mua", mua_noise_std=0.5
    )
    generate_synthetic_recordings(tmp_path, cfg)
    data = Dataset(tmp_path).get_recording("synthetic_s00")
    assert "spikes" not in data
    n_ch = len(data.units.id)
    assert n_ch == 12 and data.units.id[0].endswith("ch000")
    values, clean = data.mua.values[:], data.mua.clean[:]
    assert values.shape == clean.shape == (cfg.n_samples, n_ch)
    assert values.dtype == clean.dtype == np.float32
    assert data.mua.sampling_rate == 100.0
    noise_std = float(np.std(values.astype(np.float64) - clean))
    assert abs(noise_std - 0.5) < 0.05, noise_std
    # the clean signal is a monotone per-channel function of the true rate
    rates = data.true_rates.rates[:]
    for c in range(n_ch):
        assert np.corrcoef(clean[:, c], np.log1p(rates[:, c]))[0, 1] > 0.999
    # slice a fresh copy: temporaldata 0.1.6 cannot slice a half-loaded LazyInterval
    start = float(data.train_domain.start[0])
    window = Dataset(tmp_path).get_recording("synthetic_s00").slice(start, start + 1.0)
    assert window.mua.values.shape == (100, n_ch)
    np.testing.assert_array_equal(window.mua.values, values[int(round(start * 100)) :][:100])


def test_ensure_is_idempotent_and_keyed_by_config(tmp_path):
    cfg = SyntheticConfig(n_sessions=2, units_per_region=2, duration=20.0)
    folder = ensure_synthetic_recordings(tmp_path, cfg)
    assert folder == tmp_path / config_hash(cfg)
    files = sorted(folder.glob("*.h5"))
    assert [f.stem for f in files] == ["synthetic_s00", "synthetic_s01"]
    mtimes = {f: f.stat().st_mtime_ns for f in files}

    assert ensure_synthetic_recordings(tmp_path, cfg) == folder
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes
    assert len(Dataset(folder).recording_ids) == 2
    manifest = json.loads((folder / "synthetic_config.json").read_text())
    assert manifest["config_hash"] == config_hash(cfg)

    other = ensure_synthetic_recordings(
        tmp_path, SyntheticConfig(n_sessions=2, units_per_region=2, duration=20.0, seed=1)
    )
    assert other != folder and other.parent == tmp_path
    assert config_hash(cfg) == config_hash(
        SyntheticConfig(n_sessions=2, units_per_region=2, duration=20.0)
    )
    # nothing temporary is left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_ensure_ignores_leftover_temporary_folder(tmp_path):
    cfg = SyntheticConfig(n_sessions=1, units_per_region=2, duration=20.0)
    key = config_hash(cfg)
    leftover = tmp_path / f".{key}.tmp-99999-deadbeef"
    leftover.mkdir()
    (leftover / "synthetic_s00.h5.tmp").write_bytes(b"half written")
    folder = ensure_synthetic_recordings(tmp_path, cfg)
    assert folder == tmp_path / key
    data = Dataset(folder).get_recording("synthetic_s00")
    assert len(data.spikes.timestamps) > 0
    assert not (folder / "synthetic_s00.h5.tmp").exists()


def test_ensure_keeps_folder_of_a_concurrent_winner(tmp_path, monkeypatch):
    cfg = SyntheticConfig(n_sessions=1, units_per_region=2, duration=20.0)
    final = tmp_path / config_hash(cfg)
    original = synthetic.generate_synthetic_recordings
    calls = []

    def racing_generate(root, config=None, *, overwrite=False):
        if not calls:  # another process finishes first while we generate
            original(final, config)
            calls.append(final)
        calls.append(Path(root))
        return original(root, config, overwrite=overwrite)

    monkeypatch.setattr(synthetic, "generate_synthetic_recordings", racing_generate)
    folder = ensure_synthetic_recordings(tmp_path, cfg)
    winner_mtime = (final / "synthetic_s00.h5").stat().st_mtime_ns
    assert folder == final
    assert calls[1] != final and calls[1].parent == tmp_path  # we generated in a sibling
    assert not calls[1].exists()  # ... and discarded it
    assert ensure_synthetic_recordings(tmp_path, cfg) == final
    assert (final / "synthetic_s00.h5").stat().st_mtime_ns == winner_mtime
    assert len(Dataset(final).recording_ids) == 1


def test_generate_refuses_to_overwrite_unless_asked(tmp_path):
    cfg = SyntheticConfig(n_sessions=1, units_per_region=1, duration=20.0)
    (path,) = generate_synthetic_recordings(tmp_path, cfg)
    with pytest.raises(FileExistsError):
        generate_synthetic_recordings(tmp_path, cfg)
    before = path.stat().st_mtime_ns
    generate_synthetic_recordings(tmp_path, cfg, overwrite=True)
    assert path.stat().st_mtime_ns >= before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "synthetic_config.json",
        "synthetic_s00.h5",
    ]


def test_split_fractions():
    cfg = SyntheticConfig(n_sessions=1, units_per_region=1, duration=100.0)
    data = build_recording(cfg, 0)
    assert _total(data.train_domain) == pytest.approx(70.0)
    assert _total(data.valid_domain) == pytest.approx(10.0)
    assert _total(data.test_domain) == pytest.approx(20.0)
    # 300 s: blocks of 10 s, interleaved (not one contiguous chunk per split)
    long = synthetic.split_intervals(SyntheticConfig(duration=300.0), np.random.default_rng(0))
    assert len(long["test"]) > 1 and len(long["train"]) > 1
    assert _total(long["train"]) == pytest.approx(210.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_sessions", 0),
        ("regions", ()),
        ("regions", ("V1", "V1")),
        ("units_per_region", 0),
        ("duration", 10.0),
        ("latent_dim_per_region", 0),
        ("modality", "lfp"),
        ("mua_noise_std", -0.1),
        ("seed", -1),
        ("coupling", 1.5),
        ("mean_rate_range", (5.0, 1.0)),
        ("mean_rate_median", 100.0),
        ("max_rate", 10.0),
        ("split_block_len", 1.0),
        ("unit_count_jitter", 20),
    ],
)
def test_bad_config_raises_value_error_naming_field(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**{field: value})


def test_script_writes_and_reports(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "scripts" / "make_synthetic_data.py"
    spec = importlib.util.spec_from_file_location("make_synthetic_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    rc = module.main(
        [
            "--out",
            str(out),
            "--sessions",
            "2",
            "--units-per-region",
            "2",
            "--duration",
            "20",
            "--seed",
            "4",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "synthetic_s00" in printed and "synthetic_s01" in printed and "spikes" in printed
    assert len(Dataset(out).recording_ids) == 2
    assert module.main(["--out", str(out), "--sessions", "2", "--duration", "20"]) == 1
    assert module.main(["--out", str(out), "--duration", "5"]) == 2
