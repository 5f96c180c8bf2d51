"""Rebuild a pretrained :class:`MaskedModel` from a NeuroBridge checkpoint, without the data.

A pretraining checkpoint stores the model config under ``checkpoint["neurobridge"]`` and the
unit / session vocabularies inside the state dict, so loading needs neither the data folder
nor Hydra. Files are read with ``torch.load(..., weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from neurobridge.io import atomic_path
from neurobridge.models import (
    MaskedModel,
    NeuroBridgeCaPOYO,
    NeuroBridgePOYO,
    TargetSequenceDecoder,
)

__all__ = ["CHECKPOINT_KEY", "AtomicCheckpointIO", "checkpoint_payload", "load_masked_model"]

CHECKPOINT_KEY = "neurobridge"

# Only these classes can be named by a checkpoint (a file never chooses arbitrary code to run).
_ENCODERS = {
    "neurobridge.models.NeuroBridgePOYO": NeuroBridgePOYO,
    "neurobridge.models.NeuroBridgeCaPOYO": NeuroBridgeCaPOYO,
}
_DECODERS = {"neurobridge.models.TargetSequenceDecoder": TargetSequenceDecoder}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the target folder, fsyncs it, then renames
    it over the target: a run killed mid-write leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def checkpoint_payload(model_config: dict) -> dict:
    """What a training task stores under ``checkpoint["neurobridge"]``."""
    import neurobridge

    return {"version": neurobridge.__version__, "model": model_config}


def _build(registry: dict, cfg: dict, what: str, path: Path, **extra):
    cfg = dict(cfg)
    target = cfg.pop("_target_", None)
    if target not in registry:
        raise ValueError(
            f"{path}: model.{what}._target_ is {target!r}; a NeuroBridge checkpoint can name "
            f"only {sorted(registry)}."
        )
    return registry[target](**cfg, **extra)


def load_masked_model(path: str | Path, map_location: str | torch.device = "cpu") -> MaskedModel:
    """Load the encoder + target decoder of a pretraining checkpoint (``last.ckpt``).

    Returns the model in eval mode, with the checkpoint's unit and session vocabularies.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise RuntimeError(
            f"{path} could not be read as a checkpoint ({type(err).__name__}: {err}). It may be "
            "truncated or not a NeuroBridge checkpoint."
        ) from None
    meta = ckpt.get(CHECKPOINT_KEY)
    if meta is None:
        raise ValueError(
            f"{path} has no '{CHECKPOINT_KEY}' entry: it was not written by a NeuroBridge "
            "training task, so its model config is unknown."
        )
    cfg = meta["model"]
    encoder = _build(_ENCODERS, cfg["encoder"], "encoder", path)
    decoder = _build(
        _DECODERS, cfg["decoder"], "decoder", path, dim=encoder.dim, unit_emb_dim=encoder.unit_emb_dim
    )
    model = MaskedModel(encoder=encoder, decoder=decoder, mode_prompt=cfg.get("mode_prompt", False))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise RuntimeError(
            f"{path}: the weights do not fit the model its config describes ({err})."
        ) from None
    return model.eval()
