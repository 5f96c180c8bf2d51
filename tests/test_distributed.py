"""DDP through Lightning on 2 CPU processes (gloo), launched the way a user launches it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_training import FAST, _cfg

from neurobridge.training.run import run

TRAIN = Path(__file__).resolve().parent.parent / "examples" / "train.py"


def test_ddp_trains_checkpoints_once_and_scores_like_a_single_process(small_recordings, tmp_path):
    """Two gloo ranks pretrain from scratch for a few steps (each rank its own windows) and
    write one last.ckpt; re-scoring that checkpoint in a single process (a resume of the
    finished run, which trains nothing) gives the co-bps the two ranks gathered."""
    base = ["data=recordings", f"data.root={small_recordings}", *FAST, "task.baseline=null",
            "trainer.max_steps=4", "trainer.val_check_interval=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(TRAIN), *base, "trainer=ddp",
           "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
           "data.num_workers=0", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={tmp_path / 'ddp'}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["train/global_step"] == 4
    # one checkpoint file, written by rank 0 only
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == [
        "last.ckpt", "last.ckpt.sha256"]  # and its hash record (checkpoint_files)
    ckpt = tmp_path / "ddp" / "checkpoints" / "last.ckpt"
    single = run(_cfg([*base, f"resume_from={ckpt}"]), tmp_path / "single")
    assert single["train/global_step"] == 4
    modes = ("temporal", "neuron", "intra_region", "inter_region")
    for key in ["test/co_bps", "test/oracle/co_bps", *(f"test/co_bps/{m}" for m in modes)]:
        assert ddp[key] == pytest.approx(single[key], abs=1e-5), key


@pytest.mark.slow
def test_ddp_resumed_after_a_failure_ends_like_the_uninterrupted_run(small_recordings, tmp_path):
    """Two gloo ranks fail at step 7 (after the checkpoint of step 4) and resume: the metrics
    equal those of an uninterrupted 2-rank run (three DDP launches, about 80 s: ``-m slow``)."""
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    base = [str(TRAIN), "data=recordings", f"data.root={small_recordings}", *FAST,
            "task.baseline=null", "trainer.max_steps=10", "trainer.val_check_interval=4",
            "model.encoder.ffn_dropout=0.2", "trainer=ddp", "trainer.accelerator=cpu",
            "trainer.devices=2", "trainer.precision=32-true", "trainer.enable_progress_bar=false"]

    def launch(run_dir, *extra):
        return subprocess.run([sys.executable, *base, f"hydra.run.dir={run_dir}", *extra],
                              env=env, capture_output=True, text=True, timeout=600)

    done = launch(tmp_path / "a")
    assert done.returncode == 0, done.stderr[-3000:]
    failed = launch(tmp_path / "b", "+callbacks.fault._target_=faults.FailAtStep",
                    "+callbacks.fault.step=7")
    assert failed.returncode != 0 and "injected at step 7" in failed.stderr
    done = launch(tmp_path / "b", "resume_from=auto")
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("a", "b"))
    assert a == b
