"""The NLB protocol: held-out units from the file, forward bins, nlb_tools-compatible files,
and co-bps recomputed from those files by an independent implementation of NLB's definition."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
from scipy.special import gammaln
from temporaldata import ArrayDict
from test_nwb import write_mc_maze
from test_training import FAST, _cfg

from neurobridge.data.nwb import convert_nwb
from neurobridge.nlb import bits_per_spike, heldout_units
from neurobridge.training.run import run


def _poisson_nll(rates: np.ndarray, spikes: np.ndarray) -> float:
    return float(np.sum(rates - spikes * np.log(np.where(rates > 0, rates, 1.0))
                        + gammaln(spikes + 1)))


def _nlb_bps(rates: list[np.ndarray], spikes: list[np.ndarray]) -> float:
    """NLB's bits/spike written out from its definition: Poisson NLL with the log-factorial,
    the null predicting each neuron's mean over all its evaluated cells, pooled over cells."""
    gain = n = 0.0
    for r, s in zip(rates, spikes):
        r, s = np.maximum(r.astype(np.float64), 1e-9), s.astype(np.float64)
        null = np.tile(s.mean(axis=(0, 1), keepdims=True), (s.shape[0], s.shape[1], 1))
        gain += _poisson_nll(null, s) - _poisson_nll(r, s)
        n += s.sum()
    return gain / n / math.log(2)


def test_bits_per_spike_on_known_rates():
    rng = np.random.default_rng(0)
    rates = rng.gamma(2.0, 0.2, size=(50, 20, 8))
    spikes = rng.poisson(rates).astype(float)
    null = np.broadcast_to(spikes.mean(axis=(0, 1), keepdims=True), spikes.shape)
    assert bits_per_spike(null, spikes) == pytest.approx(0.0, abs=1e-12)
    assert bits_per_spike(rates, spikes) > 0.05            # the true rates beat the null
    assert bits_per_spike(rates * 3, spikes) < 0           # a wrong scale loses to it
    assert bits_per_spike(rates, spikes) == pytest.approx(_nlb_bps([rates], [spikes]), abs=1e-9)


def test_heldout_units_from_the_file_or_seeded():
    units = ArrayDict(id=np.array([f"s/u{i}" for i in range(8)]),
                      heldout=np.array([0, 1, 0, 0, 1, 0, 0, 0], bool))
    assert heldout_units(units, "s", 0.25, 0).tolist() == units.heldout.tolist()
    plain = ArrayDict(id=units.id)
    a = heldout_units(plain, "s", 0.25, 0)
    assert a.sum() == 2 and np.array_equal(a, heldout_units(plain, "s", 0.25, 0))
    assert not np.array_equal(a, heldout_units(plain, "t", 0.25, 0))  # per recording
    with pytest.raises(ValueError, match="at least one held-in and one held-out"):
        heldout_units(ArrayDict(id=units.id, heldout=np.ones(8, bool)), "s", 0.25, 0)


def test_nlb_protocol_files_and_independent_co_bps(tmp_path):
    """MC_Maze-layout fixture (3 held-out units in the file, 8 'val' trials of 1 s as the test
    split): a short pretraining with task.protocol=nlb writes the files, whose co-bps and fp-bps
    recomputed independently match metrics.json."""
    write_mc_maze(tmp_path / "mc_maze.nwb", n_trials=30)
    convert_nwb(tmp_path / "mc_maze.nwb", tmp_path / "data", split="trials",
                trial_split_column="split")
    cfg = _cfg(["data=recordings", f"data.root={tmp_path / 'data'}", *FAST,
                "model.encoder.sequence_length=1.0", "data.bin_size=0.05", "trainer.max_steps=3",
                "trainer.val_check_interval=3", "task.protocol=nlb", "task.forward_bins=4"])
    metrics = run(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == pytest.approx(metrics)
    with h5py.File(tmp_path / "run" / "nlb" / "predictions.h5") as p, \
            h5py.File(tmp_path / "run" / "nlb" / "targets.h5") as t:
        assert list(p) == ["full"] and list(t) == ["full"]
        pred = {k: p["full"][k][()] for k in p["full"]}
        tgt = {k: t["full"][k][()] for k in t["full"]}
    # one trial per test trial, 20 bins of 50 ms: 16 observed + 4 forward; 9 held-in, 3 held-out
    assert pred["eval_rates_heldout"].shape == (8, 16, 3)
    assert pred["eval_rates_heldin"].shape == (8, 16, 9)
    assert pred["eval_rates_heldin_forward"].shape == (8, 4, 9)
    assert tgt["eval_spikes_heldout_forward"].shape == (8, 4, 3)
    assert np.all(pred["eval_rates_heldout"] > 0)
    assert metrics["test/nlb/full/trials"] == 8
    co = _nlb_bps([pred["eval_rates_heldout"]], [tgt["eval_spikes_heldout"]])
    assert metrics["test/nlb/co_bps"] == pytest.approx(co, abs=1e-6)
    fp = _nlb_bps(
        [np.dstack([pred["eval_rates_heldin_forward"], pred["eval_rates_heldout_forward"]])],
        [np.dstack([tgt["eval_spikes_heldin_forward"], tgt["eval_spikes_heldout_forward"]])])
    assert metrics["test/nlb/fp_bps"] == pytest.approx(fp, abs=1e-6)
    assert np.isfinite(metrics["test/nlb/baseline/co_bps"])
    # the targets are the recorded counts of the test trials: their total is the spike count
    # of the 8 val trials over the 12 units (each unit fires ~15 Hz in the fixture)
    total = sum(tgt[k].sum() for k in tgt)
    assert 0.5 * 15 * 12 * 8 < total < 1.5 * 15 * 12 * 8
    # task=evaluate task.protocol=nlb scores the checkpoint the same way
    fast = [o for o in FAST if not o.startswith("task.")]
    scored = run(_cfg(["data=recordings", f"data.root={tmp_path / 'data'}", *fast,
                       "model.encoder.sequence_length=1.0", "data.bin_size=0.05",
                       "task=evaluate", "task.protocol=nlb", "task.forward_bins=4",
                       f"task.checkpoints=[{tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}]"]),
                 tmp_path / "eval")
    for key in ("test/nlb/co_bps", "test/nlb/fp_bps", "test/nlb/baseline/co_bps"):
        assert scored[key] == pytest.approx(metrics[key], abs=1e-6)
    assert (tmp_path / "eval" / "nlb" / "predictions.h5").is_file()


def test_nlb_protocol_config_errors(small_recordings, tmp_path):
    base = ["data=recordings", f"data.root={small_recordings}", *FAST, "trainer.max_steps=1"]
    with pytest.raises(ValueError, match=r"task.forward_bins must be an integer in \[0, 48\]"):
        run(_cfg(base + ["task.protocol=nlb", "task.forward_bins=60"]), tmp_path / "a")
    with pytest.raises(ValueError, match="task.protocol must be one of"):
        run(_cfg(base + ["task.protocol=nlb2"]), tmp_path / "b")
    with pytest.raises(ValueError, match=r"task.heldout_fraction must be in \(0, 1\)"):
        run(_cfg(base + ["task.protocol=nlb", "task.heldout_fraction=1.5"]), tmp_path / "c")
