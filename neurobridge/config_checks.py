"""Checks of a run's config that need neither torch nor the data.

``examples/train.py`` runs :func:`check_config` before it imports torch and Lightning, so a
mistyped value is refused in a second instead of after the imports; :func:`~neurobridge.training.run.run`
runs it again (for callers that build configs themselves), then the checks that need the model
classes or the task registry.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

__all__ = ["check_config", "check_positive_seconds", "check_train_seconds"]


def check_train_seconds(value) -> None:
    """``data.train_seconds`` is ``None`` or a positive number of seconds."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if not ok or not math.isfinite(value):
        raise ValueError(
            f"data.train_seconds must be null (all training data) or a positive number of "
            f"seconds, got {value!r}."
        )


def check_positive_seconds(key: str, value) -> None:
    """``value`` (the option ``key``) is a finite number of seconds > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{key} must be a positive number of seconds, got {value!r}.")


def check_config(cfg: DictConfig) -> None:
    """Model sizes, time grids, the weight average and the masking options of ``cfg``."""
    from neurobridge.masking import MaskingController

    enc = cfg.model.encoder
    # the NDT-style peer (model=ndt) has no latents, rotary heads or latent grid of its own
    for key in ("dim", "dim_head", "depth", "num_latents_per_step"):
        if key in enc and int(enc[key]) < 1:
            raise ValueError(f"model.encoder.{key} must be >= 1, got {enc[key]}.")
    heads = {where: node.dim_head for where, node in (("model.encoder", enc),
             ("model.decoder", cfg.model.decoder)) if "dim_head" in node}
    if "readout" in cfg.task:
        heads["task.readout"] = cfg.task.readout.dim_head
    for where, dim_head in heads.items():
        if int(dim_head) % 4:
            raise ValueError(
                f"{where}.dim_head must be a multiple of 4 (rotary time embeddings rotate "
                f"half of each head in pairs), got {dim_head}; e.g. {4 * max(1, int(dim_head) // 4)}."
            )
    check_positive_seconds("data.bin_size", cfg.data.bin_size)
    check_positive_seconds("model.encoder.sequence_length", enc.sequence_length)
    if "latent_step" in enc:
        check_positive_seconds("model.encoder.latent_step", enc.latent_step)
    seq, step = float(enc.sequence_length), float(enc.get("latent_step", cfg.data.bin_size))
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
    MaskingController(**_plain(cfg.masking))  # checks the modes and ratios
    check_train_seconds(cfg.data.get("train_seconds"))


def _plain(node) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)
