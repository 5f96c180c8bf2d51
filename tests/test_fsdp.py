"""trainer=fsdp: the preset composes and builds Lightning's FSDPStrategy; Lightning 2.6 refuses
FSDP on CPU (checked, so that a release that allows it is noticed); with a test-only shim that
gives torch's FSDP the CPU device, masked pretraining trains sharded on 2 gloo CPU processes.

Run as a script (``python tests/test_fsdp.py RUN_DIR OVERRIDES...``) it is the shim's launcher:
Lightning starts rank 1 by re-running the same command.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy, StrategyRegistry
from omegaconf import OmegaConf

HERE = Path(__file__).resolve()
SHIM = "fsdp_cpu_test_shim"
TINY = [
    "data.synthetic.n_sessions=1", "data.synthetic.duration=40", "data.synthetic.units_per_region=4",
    "model.encoder.dim=32", "model.encoder.dim_head=16", "model.decoder.dim_head=16",
    "model.encoder.num_latents_per_step=4", "data.batch_size=8", "data.max_val_windows=8",
    "task.baseline=null", "task.plots=false", "trainer.enable_progress_bar=false",
]


def _cfg(overrides):
    from test_training import _cfg as compose

    return compose(overrides)


def test_fsdp_preset_composes_and_builds_the_strategy():
    from torch.distributed.fsdp import ShardingStrategy

    cfg = _cfg(["trainer=fsdp", "model=poyo_4090"])
    trainer = cfg.trainer
    assert (trainer.strategy, trainer.accelerator, trainer.devices) == ("fsdp", "gpu", -1)
    assert trainer.precision == "bf16-mixed" and trainer.gradient_clip_val is None
    assert cfg.data.batch_size == 64 and trainer.max_steps == 100000  # from gpu_4090
    strategy = StrategyRegistry.get(trainer.strategy)
    assert type(strategy) is FSDPStrategy
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert strategy.kwargs == {"use_orig_params": True}  # no auto-wrap policy: one FSDP unit
    assert strategy._state_dict_type == "full"
    mixed = FSDPPrecision(trainer.precision).mixed_precision_config
    assert mixed.param_dtype == mixed.reduce_dtype == torch.bfloat16


def test_lightning_refuses_fsdp_on_cpu():
    cfg = _cfg(["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2",
                "trainer.precision=32-true"])
    with pytest.raises(ValueError, match=r"The strategy `fsdp` requires a GPU accelerator, but "
                                         r"received `accelerator='cpu'`"):
        L.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), logger=False)


def test_fsdp_trains_sharded_on_two_cpu_processes_with_a_device_shim(tmp_path):
    from neurobridge.training import load_masked_model

    run_dir = tmp_path / "fsdp"
    cmd = [sys.executable, str(HERE), str(run_dir), *TINY, "trainer=fsdp",
           f"trainer.strategy={SHIM}", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.precision=32-true", "data.num_workers=0", "trainer.max_steps=4",
           "trainer.val_check_interval=4"]
    path = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    # training and validation ran sharded; last.ckpt holds the full (gathered) state dict
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file(), done.stderr[-3000:]
    fit = {}  # the first wrap of each rank (fit); the test stage wraps a fresh module
    for rank, local, total in re.findall(r"rank (\d): FSDP holds (\d+) of (\d+) parameters",
                                         done.stdout):
        fit.setdefault(rank, (int(local), int(total)))
    assert sorted(fit) == ["0", "1"], done.stdout[-2000:]
    assert all(0 < local < total for local, total in fit.values()), fit
    assert sum(local for local, _ in fit.values()) >= fit["0"][1]
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 4
    model = load_masked_model(ckpt)
    assert model.encoder.unit_emb.weight.ndim == 2 and model.encoder.dim == 32
    logged = (run_dir / "logs" / "metrics.csv").read_text()
    assert "val/co_bps" in logged

    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/global_step"] == 4 and math.isfinite(metrics["test/co_bps"])


# ---------------------------------------------------------------- the shim's launcher


class CPUShimFSDPStrategy(FSDPStrategy):
    """FSDPStrategy that wraps the module itself with ``device_id=cpu`` on a CPU root device
    (Lightning passes ``device_id=None`` there, which torch's FSDP rejects), then lets
    Lightning carry on with the already-wrapped module. For tests only."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.root_device.type == "cpu":
            from torch.distributed.fsdp import FullyShardedDataParallel

            total = sum(p.numel() for p in model.parameters())
            model = FullyShardedDataParallel(
                model, device_id=torch.device("cpu"), sharding_strategy=self.sharding_strategy,
                mixed_precision=self.mixed_precision_config, **self.kwargs,
            )
            local = sum(p.numel() for p in model.parameters())  # views into this rank's shard
            sys.stdout.write(f"rank {self.global_rank}: FSDP holds {local} of {total} "
                             f"parameters (world size {self.world_size})\n")
            sys.stdout.flush()
        return super()._setup_model(model)


def _main(run_dir: str, overrides: list[str]) -> None:
    from test_training import _cfg as compose

    from neurobridge.training.run import run

    StrategyRegistry.register(SHIM, CPUShimFSDPStrategy, "FSDP on CPU (test shim)")
    run(compose(overrides), run_dir)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2:])
