"""scripts/learning_curves.py: the sweep's commands, reuse of finished runs, and its outputs
(with stand-in runs: the real sweep trains for about an hour)."""

from __future__ import annotations

import json

import numpy as np
from test_benchmark_script import _load_script

from neurobridge.comparison import write_unit_scores


def test_learning_curves_sweep_commands_tables_and_reuse(tmp_path, monkeypatch, capsys):
    script = _load_script("learning_curves")
    commands = []

    def fake_train(overrides):
        """Write what examples/train.py would: a pretraining run or an evaluation."""
        commands.append(overrides)
        opts = dict(o.split("=", 1) for o in overrides if "=" in o)
        run_dir = tmp_path / opts["hydra.run.dir"]
        (run_dir / "logs").mkdir(parents=True)
        if opts.get("task") == "evaluate":
            k = 4 if "neurobridge_4s" in opts["hydra.run.dir"] else 1
            # per-unit sums of 2 units on the same cells; NeuroBridge 1 nat better per unit
            better = 1.0 if "neurobridge" in opts["hydra.run.dir"] else 0.0
            write_unit_scores(run_dir / "test_unit_scores.npz", ["NA", "u0", "u1"], {
                group: {"model_ll": np.array([0.0, -50.0 + better, -40.0 + better]),
                        "spikes": np.array([0.0, 10.0, 10.0]), "cells": np.array([0, 50, 50])}
                for group in ("all", *script.MODES)})
            metrics = {f"test/{who}co_bps{m}": v for who, v in
                       (("", 0.1 * k), ("baseline/", 0.11), ("ceiling/", 0.26), ("oracle/", 0.39))
                       for m in ("", *(f"/{mode}" for mode in script.MODES))}
        else:
            (run_dir / "logs" / "metrics.csv").write_text(
                "step,val/co_bps,train/loss\n10,,0.5\n299,0.01,\n599,0.05,\n")
            metrics = {}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))

    monkeypatch.setattr(script, "train", fake_train)
    out = tmp_path / "curves"
    script.main(["--out", str(out), "--sessions", "1", "4", "--models", "neurobridge"])
    pretrain = [c for c in commands if "task=evaluate" not in c]
    assert [c for c in pretrain[0] if c.startswith("data.recording_ids")] == [
        "data.recording_ids=[synthetic_s00]"]
    assert "data.recording_ids=[synthetic_s00,synthetic_s01,synthetic_s02,synthetic_s03]" in \
        pretrain[1]
    # every checkpoint is scored on the session all runs share, with the ceiling
    evaluations = [c for c in commands if "task=evaluate" in c]
    assert all("data.recording_ids=[synthetic_s00]" in c and "task.ceiling=true" in c
               for c in evaluations) and len(evaluations) == 2
    table = (out / "learning_curves.md").read_text()
    assert "| neurobridge | 1 | 1,200 | 0.100 |" in table
    assert "| neurobridge | 4 | 1,200 | 0.400 |" in table
    assert "| ceiling | – | – | 0.260 |" in table
    assert "neurobridge_1s: 299: 0.010, 599: 0.050" in table
    assert (out / "learning_curves.png").stat().st_size > 0
    # a second call reuses every finished run and evaluation
    commands.clear()
    script.main(["--out", str(out), "--sessions", "1", "4", "--models", "neurobridge"])
    assert commands == []
    assert "| neurobridge | 4 |" in capsys.readouterr().out
    # both models with one session: NeuroBridge minus the peer on the same cells, paired
    both = tmp_path / "both"
    script.main(["--out", str(both), "--sessions", "1"])
    assert "| neurobridge − ndt, 1 sessions (95 % interval over units) | 1 | – | +0.144 [" in (
        both / "learning_curves.md").read_text()  # 2 nats / (20 spikes ln 2)
    commands.clear()
    # overrides reach the pretraining runs only, and the table names them
    script.main(["--out", str(tmp_path / "ndt"), "--models", "ndt", "--ndt-sessions", "4",
                 "--ndt-overrides", "model.encoder.dropout=0.0"])
    assert commands[0][:2] == ["model=ndt", "model.encoder.dropout=0.0"]
    assert "model.encoder.dropout=0.0" not in commands[1]
    assert "| ndt `model.encoder.dropout=0.0` | 4 | 3,600 |" in (
        tmp_path / "ndt" / "learning_curves.md").read_text()
