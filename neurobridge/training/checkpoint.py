"""Rebuild trained NeuroBridge models from checkpoints, without the data.

Every NeuroBridge checkpoint stores its kind (``"masked"`` for pretraining, ``"alignment"``
for align / finetune, ``"adapter"`` for the diffusion adapter) and the model config under
``checkpoint["neurobridge"]``, and the unit / session vocabularies inside the state dict, so
loading needs neither the data folder nor Hydra. Models are rebuilt by the factories of
:mod:`neurobridge.models.factory`. Files are read with ``torch.load(..., weights_only=True)``:
no pickled code runs. Only :func:`load_adapter` imports diffusers (when called).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from neurobridge.io import atomic_path
from neurobridge.models.aligned import AlignmentModel
from neurobridge.models.factory import build_alignment_model, build_masked_model

__all__ = [
    "CHECKPOINT_KEY",
    "CHECKPOINT_KINDS",
    "AtomicCheckpointIO",
    "checkpoint_payload",
    "export_pretrained",
    "load_adapter",
    "load_alignment_model",
    "load_masked_model",
    "read_checkpoint_kind",
    "read_checkpoint_meta",
]

CHECKPOINT_KEY = "neurobridge"
#: The built-in checkpoint kinds: a pretrained masked model, that model with a CLIP-space head,
#: or the latter with a diffusion adapter. A task of its own may name another kind.
CHECKPOINT_KINDS = ("masked", "alignment", "adapter")

class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the target folder, fsyncs it, then renames
    it over the target: a run killed mid-write leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def checkpoint_payload(model_config: dict, kind: str = "masked") -> dict:
    """What a training task stores under ``checkpoint["neurobridge"]``."""
    import neurobridge

    if not (isinstance(kind, str) and kind.isidentifier()):
        raise ValueError(
            f"A checkpoint kind is a name such as {CHECKPOINT_KINDS}, got {kind!r}."
        )
    return {"version": neurobridge.__version__, "kind": kind, "model": model_config}


def _read(path: str | Path, map_location) -> tuple[dict, dict, Path]:
    """``(checkpoint, its NeuroBridge entry, path)``, with clear errors for unusable files."""
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
    meta = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if meta is None:
        raise ValueError(
            f"{path} has no '{CHECKPOINT_KEY}' entry: it was not written by a NeuroBridge "
            "training task, so its model config is unknown."
        )
    return ckpt, meta, path


def read_checkpoint_meta(path: str | Path) -> dict:
    """The NeuroBridge entry of a checkpoint: ``version``, ``kind`` and the ``model`` config."""
    meta = dict(_read(path, "cpu")[1])
    meta.setdefault("kind", "masked")
    return meta


def read_checkpoint_kind(path: str | Path) -> str:
    """``"masked"``, ``"alignment"`` or ``"adapter"``: what the checkpoint at ``path`` holds."""
    return read_checkpoint_meta(path)["kind"]


def _load_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise RuntimeError(
            f"{path}: the weights do not fit the model its config describes ({err})."
        ) from None


def load_masked_model(
    path: str | Path, map_location: str | torch.device = "cpu", *, with_config: bool = False
):
    """Load the encoder + target decoder of a pretraining (or alignment) checkpoint.

    Returns the model in eval mode, with the checkpoint's unit and session vocabularies, and
    with ``with_config`` also its model config (``encoder``, ``decoder``, ``mode_prompt``).
    """
    ckpt, meta, path = _read(path, map_location)
    kind = meta.get("kind", "masked")
    prefixes = {"masked": "model.", "alignment": "model.masked_model.",
                "adapter": "aligned.masked_model."}
    if kind not in prefixes:
        raise ValueError(
            f"{path} is a {kind!r} checkpoint; load_masked_model reads the masked model of "
            f"{sorted(prefixes)} checkpoints."
        )
    prefix = prefixes[kind]
    cfg = {k: meta["model"][k] for k in ("encoder", "decoder", "mode_prompt") if k in meta["model"]}
    model = build_masked_model(cfg, where=f"{path}: model")
    _load_state(model, _with_prefix(ckpt["state_dict"], prefix), path)
    model.eval()
    return (model, cfg) if with_config else model


def _alignment_model(cfg: dict, state: dict, path: Path) -> AlignmentModel:
    model = build_alignment_model(cfg, where=f"{path}: model")
    _load_state(model, state, path)
    return model.eval()


def _with_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_alignment_model(
    path: str | Path, map_location: str | torch.device = "cpu", *, with_config: bool = False
):
    """Load the :class:`AlignmentModel` (encoder, decoder, readout, projector) of an ``align`` /
    ``finetune`` (or ``adapter``) checkpoint, in eval mode; with ``with_config`` also its model
    config."""
    ckpt, meta, path = _read(path, map_location)
    kind = meta.get("kind", "masked")
    if kind == "masked":
        raise ValueError(
            f"{path} is a pretraining checkpoint, not an alignment one: run task=align with "
            f"init_from={path} first."
        )
    cfg = meta["model"]
    prefix = "model." if kind == "alignment" else "aligned."
    model = _alignment_model(cfg, _with_prefix(ckpt["state_dict"], prefix), path)
    return (model, cfg) if with_config else model


def load_adapter(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load an ``adapter`` checkpoint: ``(aligned_model, adapter, diffusion, model_config)``.

    The diffusion model (UNet, VAE, noise schedule) is rebuilt from the stored config: the
    local Stable Diffusion folder it names, or the tiny random-weight model with its seed.
    ``adapter`` is a :class:`DiffusionAdapter` (route ``prompt_embeds``) or an
    :class:`IPAdapterConditioning` installed in ``diffusion.unet`` with its trained
    IP-Adapter weights (route ``ip_adapter``).
    """
    from neurobridge.generation import build_conditioning, build_diffusion

    ckpt, meta, path = _read(path, map_location)
    if meta.get("kind") != "adapter":
        raise ValueError(
            f"{path} is not a diffusion-adapter checkpoint: run task=adapter with "
            "init_from=<align checkpoint> first."
        )
    cfg = meta["model"]
    aligned = _alignment_model(cfg, _with_prefix(ckpt["state_dict"], "aligned."), path)
    diffusion = build_diffusion(cfg["diffusion"])
    adapter = build_conditioning(cfg["adapter"], diffusion.unet)
    _load_state(adapter, _with_prefix(ckpt["state_dict"], "adapter."), path)
    return aligned, adapter.eval(), diffusion, cfg


def export_pretrained(path: str | Path, directory: str | Path, *, kind: str | None = None) -> Path:
    """Write the model of a Lightning checkpoint as a pretrained folder (``config.json`` +
    ``model.safetensors``, :mod:`neurobridge.models.pretrained`); returns the folder.

    Args:
        path: a NeuroBridge checkpoint (``RUN/checkpoints/last.ckpt``).
        directory: the folder to write.
        kind: ``"masked_model"`` (the encoder + target decoder, from any checkpoint) or
            ``"alignment_model"`` (with the readout and projector, from an ``align`` /
            ``finetune`` / ``adapter`` checkpoint); ``None``: the alignment model when the
            checkpoint holds one, else the masked model.
    """
    if kind is None:
        kind = "masked_model" if read_checkpoint_kind(path) == "masked" else "alignment_model"
    if kind == "masked_model":
        model = load_masked_model(path)
    elif kind == "alignment_model":
        model = load_alignment_model(path)
    else:
        raise ValueError(f"kind must be 'masked_model' or 'alignment_model', got {kind!r}.")
    return model.save_pretrained(directory)
