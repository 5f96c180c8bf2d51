"""Run a task from a resolved Hydra config (used by ``examples/train.py``).

The task comes from the registry (:func:`neurobridge.tasks.get_task`); this module only checks
the config, makes the Trainer (callbacks and loggers from ``configs/callbacks`` and
``configs/logger``), fits, tests and writes the run folder.
"""

from __future__ import annotations

import logging
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from neurobridge.config_checks import check_config
from neurobridge.io import atomic_path, write_json_atomic
from neurobridge.modality import Modality
from neurobridge.models import encoder_class, set_attention_backend
from neurobridge.tasks import Task, get_task
from neurobridge.training.callbacks import EMAWeights, LastCheckpoint, RandomState
from neurobridge.training.checkpoint import (
    AtomicCheckpointIO,
    check_data_config,
    data_config,
    read_checkpoint_meta,
)
from neurobridge.training.loggers import ResumableCSVLogger

__all__ = ["PREEMPTED_EXIT", "Preempted", "run", "run_info"]

log = logging.getLogger(__name__)


def _validate(cfg: DictConfig, task: Task) -> None:
    """Reject config errors before any data is touched."""
    check_config(cfg)  # what needs neither torch nor the data
    enc = cfg.model.encoder
    if task.build is not None:
        steps = cfg.trainer.get("max_steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(
                f"trainer.max_steps must be a whole number of optimizer steps >= 1 (the learning-"
                f"rate schedule spans it), got {steps!r}."
            )
    reads = encoder_class(cfg.model).modality
    if reads is Modality.VALUES and int(enc.dim) % 2:
        raise ValueError(
            f"model.encoder.dim must be even for CaPOYO (half value embedding, half unit "
            f"embedding), got {enc.dim}."
        )
    set_attention_backend(cfg.get("attention_backend", "sdpa"))
    if task.check is not None:
        task.check(cfg)
    data_modality = Modality.parse(cfg.data.modality)
    # a task without a build (evaluate, reconstruct) reads its models from checkpoints, checked
    # against the data when they are loaded
    if task.build is not None and reads is not data_modality:
        raise ValueError(
            f"model.encoder ({enc._target_}) and data.modality ({cfg.data.modality!r}) disagree: "
            "POYO (and model=ndt) read spikes (data.modality=spikes), CaPOYO reads continuous values "
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


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_resume(cfg: DictConfig, task: Task, meta: dict) -> None:
    """``resume_from`` (its :func:`read_checkpoint_meta` ``meta``) must be a checkpoint of this
    task, with the model and the data options this config describes."""
    if task.checkpoint_kind is None:
        raise ValueError(f"task={task.name} does not train: resume_from does not apply to it.")
    if meta["kind"] != task.checkpoint_kind:
        raise ValueError(
            f"resume_from={cfg.resume_from} is a {meta['kind']!r} checkpoint, but "
            f"task={task.name} writes {task.checkpoint_kind!r} ones: resume a run with the task "
            "that wrote it."
        )
    if task.resume_needs_same_model:
        saved = _flatten(meta["model"])
        current = _flatten(OmegaConf.to_container(cfg.model, resolve=True))
        diff = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
        if diff:
            shown = ", ".join(f"model.{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:5])
            raise ValueError(
                f"resume_from={cfg.resume_from} was trained with another model ({shown}). Use the "
                "run's model overrides, or start a new run (init_from for a later stage)."
            )
    check_data_config(cfg.resume_from, cfg.data, "resume_from", meta=meta)


def _loggers(cfg: DictConfig, run_dir: Path, resume_step: int | None) -> list:
    """The loggers of ``cfg.logger`` (``configs/logger/``), each writing under ``run_dir``; a
    :class:`ResumableCSVLogger` of a run resumed from step ``resume_step`` continues the run's
    CSV file."""
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        try:
            logger = instantiate(node, save_dir=str(run_dir))
            if isinstance(logger, ResumableCSVLogger):
                logger.resume_step = resume_step
            loggers.append(logger)
        except InstantiationException as err:
            hint = " (Weights & Biases: pip install -e '.[wandb]')" if name == "wandb" else ""
            raise RuntimeError(f"logger.{name} could not be built{hint}: {err}") from err
    return loggers


def _callbacks(cfg: DictConfig) -> list[Callback]:
    """The callbacks of ``cfg.callbacks`` (``configs/callbacks/``) and, with
    ``task.ema_decay``, the moving average of the weights (:class:`EMAWeights`).

    A progress bar is left out when ``trainer.enable_progress_bar`` is false (Lightning
    refuses both together).
    """
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()
                 if node is not None]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    decay = cfg.task.get("ema_decay")
    if decay is not None:
        callbacks.append(EMAWeights(decay=float(decay)))
    return [*callbacks, RandomState()]


def _module_for_test(cfg: DictConfig, task: Task, module: L.LightningModule,
                     trainer: L.Trainer, last_ckpt: Path | None) -> L.LightningModule:
    """The fitted module; under FSDP a freshly built one holding ``last_ckpt``'s full weights.

    After ``fit`` an FSDP-wrapped module keeps only this rank's flat shard in its parameters,
    and ``trainer.test`` would wrap it a second time. The checkpoint holds the gathered state.
    """
    if not isinstance(trainer.strategy, FSDPStrategy):
        return module
    if last_ckpt is None:
        raise ValueError(
            "Under FSDP the test reloads the gathered weights from last.ckpt: keep "
            "callbacks.last_checkpoint (it is null in this config)."
        )
    trainer.strategy.barrier()
    fresh, _ = task.build(cfg)
    state = torch.load(last_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    fresh.load_state_dict(state, strict=fresh.strict_loading)
    return fresh


def _check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to overwrite another run's ``last.ckpt`` (a resumed run may rewrite its own)."""
    last = LastCheckpoint.default_path(run_dir)
    resume = cfg.get("resume_from")
    if last.exists() and not (resume and Path(resume).resolve() == last.resolve()):
        raise FileExistsError(
            f"{last} exists: {run_dir} holds an earlier run. Resume it with "
            f"resume_from={last}, or write this run elsewhere (hydra.run.dir=...)."
        )


def _write_config(cfg: DictConfig, run_dir: Path) -> None:
    """``run_dir/.hydra/config.yaml`` (the composed config) and, under Hydra,
    ``overrides.yaml`` (the command line's overrides): written once the run's checks pass."""
    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "config.yaml") as tmp:
        OmegaConf.save(cfg, tmp)
    if HydraConfig.initialized():
        with atomic_path(folder / "overrides.yaml") as tmp:
            OmegaConf.save(OmegaConf.create(list(HydraConfig.get().overrides.task)), tmp)


class Preempted(Exception):
    """A run stopped by SIGTERM or SIGUSR1 after saving its current step (``examples/train.py``
    exits with :data:`PREEMPTED_EXIT`); resume it with ``resume_from``."""


#: exit status of a preempted run (128 + SIGTERM), what a cluster script requeues on
PREEMPTED_EXIT = 143


def _resolve_auto_resume(cfg: DictConfig, run_dir: Path) -> None:
    """``resume_from=auto``: the run folder's ``checkpoints/last.ckpt`` if there is one (a
    requeued job continues), else a new run."""
    if cfg.get("resume_from") != "auto":
        return
    last = LastCheckpoint.default_path(run_dir)
    with open_dict(cfg):
        cfg.resume_from = str(last) if last.is_file() else None
    log.info("resume_from=auto: %s", f"resuming from {last}" if last.is_file()
             else f"no {last} yet, starting a new run")


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run ``cfg.task``: train, test and write ``run_dir/metrics.json`` and
    ``run_dir/checkpoints/last.ckpt`` (a task that does not train writes its own outputs).

    Raises :class:`Preempted` when SIGTERM or SIGUSR1 stopped training (its step saved)."""
    _resolve_auto_resume(cfg, Path(run_dir))
    task = get_task(cfg.task)
    _validate(cfg, task)
    # the checkpoint to resume is read (and its hash checked) once for every check here
    resume = read_checkpoint_meta(cfg.resume_from) if cfg.get("resume_from") else None
    if resume is not None:
        _check_resume(cfg, task, resume)
    if cfg.get("init_from"):
        check_data_config(cfg.init_from, cfg.data, "init_from")
    run_dir = Path(run_dir)
    _check_run_dir(cfg, run_dir)
    if rank_zero_only.rank == 0:
        write_json_atomic(run_dir / "run_info.json", run_info())
        _write_config(cfg, run_dir)
    L.seed_everything(int(cfg.seed), workers=True)
    if task.run is not None:
        return task.run(cfg, run_dir)
    module, dm = task.build(cfg)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    # trainer.plugins (e.g. trainer=slurm's SLURMEnvironment) join the run's checkpoint IO
    plugins = [instantiate(p) for p in trainer_cfg.pop("plugins", None) or []]
    trainer = L.Trainer(
        **trainer_cfg,
        default_root_dir=run_dir,
        logger=_loggers(cfg, run_dir, resume["global_step"] if resume is not None else None),
        callbacks=_callbacks(cfg),
        plugins=[*plugins, AtomicCheckpointIO(data=data_config(cfg.data))],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.resume_from)
    except SIGTERMException:
        pass  # LastCheckpoint saved the step; Lightning stops a SIGTERMed run by raising
    saver = next((c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)), None)
    if saver is not None and saver.stopped_by:
        raise Preempted(f"{saver.stopped_by} stopped the run at step {trainer.global_step}; "
                        f"resume it with resume_from={saver.last_path}.")
    last = saver.last_path if saver is not None else None
    module = _module_for_test(cfg, task, module, trainer, last)
    results = trainer.test(module, datamodule=dm)[0]
    metrics = {k: float(v) for k, v in results.items()}
    metrics["train/global_step"] = int(trainer.global_step)
    if trainer.is_global_zero:
        if task.after_test is not None:
            metrics.update(task.after_test(module, dm, cfg, run_dir))
        write_json_atomic(run_dir / "metrics.json", metrics)
        if cfg.task.get("plots", False) and task.plots is not None:
            task.plots(module, dm, run_dir)
    return metrics
