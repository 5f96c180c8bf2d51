"""Optimiser and learning-rate schedule construction shared by the training tasks."""

from __future__ import annotations

import math

import torch
from torch_brain.optim import SparseLamb

__all__ = ["build_optimizer", "build_scheduler", "configure_optimization"]

# the embedding tables; ``new_rows``: their learnable rows during task=adapt_session
_EMBEDDING_SUFFIXES = ("unit_emb.weight", "session_emb.weight", "unit_emb.new_rows",
                       "session_emb.new_rows")


def _is_embedding_or_norm(pname: str) -> bool:
    """``latent_emb.weight``, ``mode_emb.weight``, ``…norm.weight``: but not a layer that merely
    has "emb" in its name, such as diffusers' ``image_proj.image_embeds`` (a Linear)."""
    return any(part.endswith("_emb") or "norm" in part for part in pname.split(".")[:-1])


def build_optimizer(
    module: torch.nn.Module, *, name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW over all trainable parameters, or torch_brain's SparseLamb with the unit and
    session embeddings in a ``sparse=True`` group (only rows with a gradient are updated).

    Embeddings, norms and biases get no weight decay.
    """
    decay, no_decay, sparse = [], [], []
    for pname, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if pname.endswith(_EMBEDDING_SUFFIXES):
            sparse.append(p)
        elif p.ndim < 2 or _is_embedding_or_norm(pname):
            no_decay.append(p)
        else:
            decay.append(p)
    if name == "adamw":
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay + sparse, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)
    if name == "sparse_lamb":
        groups = [
            {"params": decay, "weight_decay": weight_decay, "sparse": False},
            {"params": no_decay, "weight_decay": 0.0, "sparse": False},
            {"params": sparse, "weight_decay": 0.0, "sparse": True},
        ]
        return SparseLamb([g for g in groups if g["params"]], lr=lr)
    raise ValueError(f"optimizer.name must be 'adamw' or 'sparse_lamb', got {name!r}.")


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, name: str, total_steps: int, warmup_frac: float
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``cosine`` (linear warm-up then cosine decay to 0), ``onecycle`` or ``none``; stepped per batch."""
    if name == "none":
        return None
    if total_steps < 1:
        raise ValueError(f"The schedule needs a positive number of steps, got {total_steps}.")
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=max(warmup_frac, 1e-3),
            anneal_strategy="cos",
        )
    if name == "cosine":
        warmup = int(warmup_frac * total_steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    raise ValueError(f"scheduler.name must be 'cosine', 'onecycle' or 'none', got {name!r}.")


def configure_optimization(
    module: torch.nn.Module, optimizer: dict, scheduler: dict, total_steps: int
) -> torch.optim.Optimizer | dict:
    """What a LightningModule's ``configure_optimizers`` returns for the task configs'
    ``optimizer`` (``name``, ``lr``, ``weight_decay``) and ``scheduler`` (``name``,
    ``warmup_frac``) over ``module``'s trainable parameters; the schedule steps per batch."""
    opt = build_optimizer(
        module,
        name=optimizer["name"],
        lr=optimizer["lr"],
        weight_decay=optimizer.get("weight_decay", 0.0),
    )
    sched = build_scheduler(
        opt,
        name=scheduler["name"],
        total_steps=total_steps,
        warmup_frac=scheduler.get("warmup_frac", 0.05),
    )
    if sched is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
