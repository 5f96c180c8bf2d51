"""Runs that survive interruption: a run stopped at any step and resumed from its last.ckpt
ends with the metrics of an uninterrupted run, bit for bit."""

import csv
import json
from pathlib import Path

import pytest
from faults import InjectedFault
from hydra import compose, initialize_config_dir

from neurobridge.training.run import run

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")
#: a tiny model with dropout (so the random state matters), 3 epochs of 10 batches
FAST = [
    "model.encoder.dim=32", "model.encoder.dim_head=16", "model.decoder.dim_head=16",
    "model.encoder.num_latents_per_step=4", "model.encoder.ffn_dropout=0.2",
    "model.encoder.lin_dropout=0.2", "data.batch_size=16", "data.max_val_windows=8",
    "task.plots=false", "trainer.enable_progress_bar=false", "task.baseline=null",
    "+trainer.limit_test_batches=2", "trainer.max_steps=24", "trainer.log_every_n_steps=2",
]


def _cfg(root, *overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=["data=recordings", f"data.root={root}", *FAST,
                                            *overrides])


@pytest.fixture(scope="module")
def uninterrupted(small_recordings, tmp_path_factory):
    """``{val_check_interval: (metrics, train/loss rows of metrics.csv)}`` of uninterrupted
    runs."""
    out = tmp_path_factory.mktemp("uninterrupted")
    runs = {5: [], 8: [], 4: ["trainer.accumulate_grad_batches=2", "trainer.max_steps=12"]}
    return {vci: (run(_cfg(small_recordings, f"trainer.val_check_interval={vci}", *extra),
                      out / str(vci)), _losses(out / str(vci))) for vci, extra in runs.items()}


def _losses(run_dir: Path) -> list[tuple[str, str]]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return [(r["step"], r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.parametrize("vci, fail_at, extra", [
    (8, 18, []),                         # mid-epoch (epoch 1, batch 6), resumed from step 16
    (5, 12, []),                         # resumed from step 10: the last batch of epoch 0
    (8, 18, ["data.num_workers=2"]),     # worker processes (persistent)
    (4, 10, ["trainer.accumulate_grad_batches=2", "trainer.max_steps=12"]),  # 2 batches a step
])
def test_a_failed_run_resumes_to_the_uninterrupted_metrics(small_recordings, uninterrupted,
                                                           tmp_path, vci, fail_at, extra):
    base = [f"trainer.val_check_interval={vci}", *extra]
    with pytest.raises(InjectedFault):
        run(_cfg(small_recordings, *base, "+callbacks.fault._target_=faults.FailAtStep",
                 f"+callbacks.fault.step={fail_at}"), tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    resumed = run(_cfg(small_recordings, *base, f"resume_from={last}"), tmp_path)
    metrics, losses = uninterrupted[vci]
    assert resumed == metrics  # every metric, exactly
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    # the CSV log continues: the interrupted run's rows up to the checkpoint, then the rest
    assert _losses(tmp_path) == losses and len(losses) >= 6


def test_sigterm_saves_the_step_in_progress_and_the_resumed_run_ends_the_same(
        small_recordings, uninterrupted, tmp_path, caplog):
    """SIGTERM mid-epoch (between steps 13 and 14): step 14 is saved, the run stops without
    testing (Preempted), and resuming from it ends with the uninterrupted metrics."""
    from neurobridge.training.run import Preempted

    base = ["trainer.val_check_interval=8"]
    with caplog.at_level("WARNING"), pytest.raises(Preempted, match="SIGTERM stopped the run "
                                                                    "at step 14"):
        run(_cfg(small_recordings, *base, "+callbacks.fault._target_=faults.FailAtStep",
                 "+callbacks.fault.step=13", "+callbacks.fault.how=SIGTERM"), tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert "SIGTERM received" in caplog.text and f"resume_from={last}" in caplog.text
    assert not (tmp_path / "metrics.json").exists()
    resumed = run(_cfg(small_recordings, *base, "resume_from=auto"), tmp_path)
    assert resumed == uninterrupted[8][0]


def test_sigusr1_under_slurm_saves_requeues_and_exits_143(small_recordings, tmp_path):
    """examples/train.py gets SIGUSR1 (SLURM's time-limit warning with --signal): it saves the
    step, calls ``scontrol requeue $SLURM_JOB_ID`` (a stand-in here) and exits with 143."""
    import os
    import subprocess
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "scontrol").chmod(0o755)
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "PYTHONPATH": f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("NEUROBRIDGE_TRACEBACK", None)
    run_dir = tmp_path / "run"
    overrides = ["data=recordings", f"data.root={small_recordings}", *FAST,
                 "trainer.val_check_interval=8", f"hydra.run.dir={run_dir}",
                 "callbacks.last_checkpoint.requeue_on_signal=true",
                 "+callbacks.fault._target_=faults.FailAtStep", "+callbacks.fault.step=5",
                 "+callbacks.fault.how=SIGUSR1"]
    done = subprocess.run([sys.executable, str(tests.parent / "examples" / "train.py"),
                           *overrides], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "SIGUSR1 stopped the run at step 6" in done.stderr
    assert calls.read_text().split() == ["requeue", "4242"]
    import torch
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6


def test_the_slurm_preset_resumes_automatically_and_requeues():
    from hydra.utils import instantiate
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=["trainer=slurm"])
    assert cfg.resume_from == "auto" and cfg.callbacks.last_checkpoint.requeue_on_signal
    assert cfg.trainer.strategy == "ddp"
    (plugin,) = [instantiate(p) for p in cfg.trainer.plugins]
    assert isinstance(plugin, SLURMEnvironment) and not plugin.auto_requeue


def test_a_recording_damaged_mid_run_is_named_and_the_last_checkpoint_is_intact(
        small_recordings, tmp_path):
    import shutil

    import torch

    from neurobridge.training import checkpoint_files

    data = tmp_path / "data"
    shutil.copytree(small_recordings, data)
    victim = sorted(data.glob("*.h5"))[0]
    with pytest.raises(OSError, match=rf"{victim.name} changed on disk .* reading the window "
                                      r"\[[0-9.]+, [0-9.]+\) s.*resume the run"):
        run(_cfg(data, "trainer.val_check_interval=8",
                 "+callbacks.fault._target_=faults.DamageFileAtStep", "+callbacks.fault.step=9",
                 f"+callbacks.fault.path={victim}"), tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint_files.verify(last)
    assert torch.load(last, weights_only=True)["global_step"] == 8


def test_a_run_killed_without_warning_at_a_random_step_resumes_exactly(
        small_recordings, uninterrupted, tmp_path):
    """SIGKILL (no handler runs) at a seeded random step of examples/train.py; the resumed run
    repeats the steps since the last checkpoint and ends with the uninterrupted metrics."""
    import os
    import random
    import subprocess
    import sys

    step = random.Random(19).randrange(9, 23)  # seeded: the same step on every run of the test
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, str(tests.parent / "examples" / "train.py"), "data=recordings",
         f"data.root={small_recordings}", *FAST, "trainer.val_check_interval=8",
         f"hydra.run.dir={tmp_path}", "+callbacks.fault._target_=faults.FailAtStep",
         f"+callbacks.fault.step={step}", "+callbacks.fault.how=SIGKILL"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]  # killed, nothing ran after the signal
    resumed = run(_cfg(small_recordings, "trainer.val_check_interval=8", "resume_from=auto"),
                  tmp_path)
    assert resumed == uninterrupted[8][0]
    assert _losses(tmp_path) == uninterrupted[8][1]
