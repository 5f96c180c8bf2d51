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
    return {vci: (run(_cfg(small_recordings, f"trainer.val_check_interval={vci}"),
                      out / str(vci)), _losses(out / str(vci))) for vci in (5, 8)}


def _losses(run_dir: Path) -> list[tuple[str, str]]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return [(r["step"], r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.parametrize("vci, fail_at, extra", [
    (8, 18, []),                         # mid-epoch (epoch 1, batch 6), resumed from step 16
    (5, 12, []),                         # resumed from step 10: the last batch of epoch 0
    (8, 18, ["data.num_workers=2"]),     # worker processes (persistent)
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
    assert _losses(tmp_path) == losses and len(losses) == 12
