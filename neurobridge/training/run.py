"""Build and run a task from a resolved Hydra config (used by ``examples/train.py``)."""

from __future__ import annotations

import logging
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from neurobridge.data.datamodule import check_train_seconds
from neurobridge.io import write_json_atomic
from neurobridge.masking import MaskingController
from neurobridge.models import set_attention_backend
from neurobridge.training.adapt import INIT_MODES
from neurobridge.training.builders import (
    build_adapter,
    build_alignment,
    build_pretraining,
    build_session_adaptation,
    check_adaptation_source,
)
from neurobridge.training.checkpoint import AtomicCheckpointIO, read_checkpoint_meta
from neurobridge.training.evaluate import run_evaluation
from neurobridge.training.reconstruct import run_reconstruction

__all__ = ["run", "run_info", "TASKS"]

log = logging.getLogger(__name__)

#: training task name -> builder of (LightningModule, data module)
_BUILDERS = {
    "pretrain": build_pretraining,
    "adapt_session": build_session_adaptation,
    "align": build_alignment,
    "finetune": build_alignment,
    "adapter": build_adapter,
}
TASKS = (*_BUILDERS, "reconstruct", "evaluate")


def _validate(cfg: DictConfig) -> None:
    """Reject config errors before any data is touched."""
    if cfg.task.name not in TASKS:
        raise ValueError(f"Unknown task {cfg.task.name!r}; valid tasks: {list(TASKS)}.")
    enc = cfg.model.encoder
    for key in ("dim", "dim_head", "depth", "num_latents_per_step"):
        if int(enc[key]) < 1:
            raise ValueError(f"model.encoder.{key} must be >= 1, got {enc[key]}.")
    heads = {"model.encoder": enc.dim_head, "model.decoder": cfg.model.decoder.dim_head}
    if "readout" in cfg.task:
        heads["task.readout"] = cfg.task.readout.dim_head
    for where, dim_head in heads.items():
        if int(dim_head) % 4:
            raise ValueError(
                f"{where}.dim_head must be a multiple of 4 (rotary time embeddings rotate "
                f"half of each head in pairs), got {dim_head}; e.g. {4 * max(1, int(dim_head) // 4)}."
            )
    if "CaPOYO" in str(enc._target_) and int(enc.dim) % 2:
        raise ValueError(
            f"model.encoder.dim must be even for CaPOYO (half value embedding, half unit "
            f"embedding), got {enc.dim}."
        )
    seq, step = float(enc.sequence_length), float(enc.latent_step)
    if abs(seq / step - round(seq / step)) > 1e-6:
        raise ValueError(
            f"model.encoder.sequence_length ({seq}) must be a multiple of latent_step ({step})."
        )
    bins = seq / float(cfg.data.bin_size)
    if abs(bins - round(bins)) > 1e-6:
        raise ValueError(
            f"model.encoder.sequence_length ({seq}) must be a multiple of data.bin_size "
            f"({cfg.data.bin_size})."
        )
    ema_decay = cfg.task.get("ema_decay")
    if ema_decay is not None:
        if not (isinstance(ema_decay, (int, float)) and 0 < ema_decay < 1):
            raise ValueError(
                f"task.ema_decay must be a number in (0, 1), e.g. 0.999, or null, got {ema_decay!r}."
            )
        if "fsdp" in str(cfg.trainer.get("strategy", "")).lower():
            raise ValueError(
                "task.ema_decay does not work with FSDP (the weight average is not sharded): "
                "use trainer=ddp or set task.ema_decay=null."
            )
    MaskingController(**OmegaConf.to_container(cfg.masking, resolve=True))  # checks ratios
    set_attention_backend(cfg.get("attention_backend", "sdpa"))
    check_train_seconds(cfg.data.get("train_seconds"))
    if cfg.task.name == "adapt_session":
        if cfg.task.init not in INIT_MODES:
            raise ValueError(f"task.init must be one of {list(INIT_MODES)}, got {cfg.task.init!r}.")
        check_adaptation_source(cfg.get("init_from"))
    wants_values = "CaPOYO" in str(enc._target_)
    # task=evaluate reads its models from checkpoints (checked against the data when loaded)
    if cfg.task.name != "evaluate" and wants_values != (cfg.data.modality == "values"):
        raise ValueError(
            f"model.encoder ({enc._target_}) and data.modality ({cfg.data.modality!r}) disagree: "
            "POYO reads spikes (data.modality=spikes), CaPOYO reads continuous values "
            "(data.modality=values, e.g. data=synthetic_mua model=capoyo_small)."
        )


#: Distributions whose versions are recorded in every run folder.
_RECORDED_PACKAGES = (
    "neurobridge", "torch", "torch_brain", "temporaldata", "lightning", "hydra-core",
    "torchmetrics", "numpy", "open_clip_torch", "diffusers",
)


def run_info() -> dict[str, Any]:
    """Package versions, Python, platform and the git revision of the NeuroBridge checkout
    (``None`` outside a git checkout; ``git_dirty`` when it has uncommitted changes)."""
    versions = {}
    for name in _RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    rev = git("rev-parse", "HEAD")
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_revision": rev,
        "git_dirty": bool(git("status", "--porcelain")) if rev else None,
    }


#: checkpoint kind each training task writes (and resumes from)
_KIND_OF_TASK = {"pretrain": "masked", "adapt_session": "masked", "align": "alignment",
                 "finetune": "alignment", "adapter": "adapter"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_resume(cfg: DictConfig) -> None:
    """``resume_from`` must be a checkpoint of this task, with the model this config describes."""
    meta = read_checkpoint_meta(cfg.resume_from)
    task = cfg.task.name
    if meta["kind"] != _KIND_OF_TASK[task]:
        raise ValueError(
            f"resume_from={cfg.resume_from} is a {meta['kind']!r} checkpoint, but task={task} "
            f"writes {_KIND_OF_TASK[task]!r} ones: resume a run with the task that wrote it."
        )
    if task == "pretrain":
        saved = _flatten(meta["model"])
        current = _flatten(OmegaConf.to_container(cfg.model, resolve=True))
        diff = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
        if diff:
            shown = ", ".join(f"model.{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:5])
            raise ValueError(
                f"resume_from={cfg.resume_from} was trained with another model ({shown}). Use the "
                "run's model overrides, or start a new run (init_from for a later stage)."
            )


def _loggers(cfg: DictConfig, run_dir: Path) -> list:
    """CSV and TensorBoard always; Weights & Biases when ``wandb_project`` is set."""
    loggers = [
        CSVLogger(run_dir, name="logs", version=""),
        TensorBoardLogger(run_dir, name="tensorboard", version=""),
    ]
    if cfg.get("wandb_project"):
        try:
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(project=cfg.wandb_project, save_dir=run_dir))
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                "wandb_project is set but wandb is not installed: pip install -e '.[wandb]'."
            ) from err
    return loggers


def _module_for_test(cfg: DictConfig, module: L.LightningModule, trainer: L.Trainer,
                     last_ckpt: str) -> L.LightningModule:
    """The fitted module; under FSDP a freshly built one holding ``last_ckpt``'s full weights.

    After ``fit`` an FSDP-wrapped module keeps only this rank's flat shard in its parameters,
    and ``trainer.test`` would wrap it a second time. The checkpoint holds the gathered state.
    """
    if not isinstance(trainer.strategy, FSDPStrategy):
        return module
    trainer.strategy.barrier()
    fresh, _ = _BUILDERS[cfg.task.name](cfg)
    state = torch.load(last_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    fresh.load_state_dict(state, strict=fresh.strict_loading)
    return fresh


class _LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps and at the final step.

    Lightning's callback saves at training end only when it has saved nothing before, so a run
    whose ``max_steps`` is not a multiple of the interval would keep the weights of the last
    multiple in ``last.ckpt``. Saving at the final batch (after the EMA update of that step, and
    before the EMA callback copies the average into the module at training end) keeps the
    checkpoint equal to what the test scores.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        final = 0 < trainer.max_steps <= trainer.global_step
        if (final and self._last_global_step_saved != trainer.global_step
                and not self._should_skip_saving_checkpoint(trainer)):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to overwrite another run's ``last.ckpt`` (a resumed run may rewrite its own)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = cfg.get("resume_from")
    if last.exists() and not (resume and Path(resume).resolve() == last.resolve()):
        raise FileExistsError(
            f"{last} exists: {run_dir} holds an earlier run. Resume it with "
            f"resume_from={last}, or write this run elsewhere (hydra.run.dir=...)."
        )


class _EMAWeights(EMAWeightAveraging):
    """Lightning's EMA callback, resuming with torch_brain's vocabularies intact.

    Loading an ``InfiniteVocabEmbedding`` pops the words out of the incoming vocabulary dict in
    place. Lightning restores the module from ``checkpoint["state_dict"]`` (the average) before
    this callback loads the averaged model from the same, by then empty, dicts; they are
    restored here from the current-model state, which holds the same vocabularies.
    """

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        current = checkpoint.get("current_model_state")
        if current is not None:
            for key, value in current.items():
                if key.endswith(".vocab") and value is not None:
                    checkpoint["state_dict"][key] = value.copy()
        super().on_load_checkpoint(trainer, pl_module, checkpoint)


def _weight_averaging(cfg: DictConfig) -> list[EMAWeightAveraging]:
    """``task.ema_decay``: an exponential moving average of the weights, updated every step.

    Validation, the test and ``last.ckpt``'s ``state_dict`` use the averaged weights; the
    checkpoint also keeps the current ones (``current_model_state``), so a run resumes exactly.
    """
    decay = cfg.task.get("ema_decay")
    return [] if decay is None else [_EMAWeights(decay=float(decay))]


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train, test and write ``run_dir/metrics.json`` and ``run_dir/checkpoints/last.ckpt``."""
    _validate(cfg)
    if cfg.get("resume_from"):
        _check_resume(cfg)
    run_dir = Path(run_dir)
    _check_run_dir(cfg, run_dir)
    if rank_zero_only.rank == 0:
        write_json_atomic(run_dir / "run_info.json", run_info())
    L.seed_everything(int(cfg.seed), workers=True)
    if cfg.task.name == "reconstruct":
        return run_reconstruction(cfg, run_dir)
    if cfg.task.name == "evaluate":
        return run_evaluation(cfg, run_dir)
    module, dm = _BUILDERS[cfg.task.name](cfg)

    # last.ckpt only, rewritten atomically every val_check_interval steps and at the end
    ckpt = _LastCheckpoint(
        dirpath=run_dir / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=int(cfg.trainer.val_check_interval),
        enable_version_counter=False,
    )
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        default_root_dir=run_dir,
        logger=_loggers(cfg, run_dir),
        callbacks=[ckpt, LearningRateMonitor(logging_interval="step")]
        + ([RichProgressBar()] if cfg.trainer.get("enable_progress_bar", True) else [])
        + _weight_averaging(cfg),
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.resume_from)
    module = _module_for_test(cfg, module, trainer, ckpt.last_model_path)
    results = trainer.test(module, datamodule=dm)[0]
    metrics = {k: float(v) for k, v in results.items()}
    metrics["train/global_step"] = int(trainer.global_step)
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "metrics.json", metrics)
        if cfg.task.get("plots", False):
            from neurobridge.training import plots

            if cfg.task.name in ("pretrain", "adapt_session"):
                plots.save_pretraining_plots(module, dm, run_dir)
            elif cfg.task.name in ("align", "finetune"):
                plots.plot_retrieval(module, dm, run_dir / "retrieval.png")
    return metrics
