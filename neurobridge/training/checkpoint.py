"""Rebuild trained NeuroBridge models from checkpoints, without the data.

Every NeuroBridge checkpoint stores its kind (``"masked"`` for pretraining, ``"alignment"``
for align / finetune, ``"adapter"`` for the diffusion adapter) and the model config under ``checkpoint["neurobridge"]``, and the unit /
session vocabularies inside the state dict, so loading needs neither the data folder nor Hydra.
Files are read with ``torch.load(..., weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from neurobridge.alignment import AlignmentModel, LatentReadout, NeuralProjector
from neurobridge.generation import (
    DiffusionAdapter,
    DiffusionComponents,
    IPAdapterConditioning,
    build_tiny_stable_diffusion,
    load_stable_diffusion,
)
from neurobridge.io import atomic_path
from neurobridge.models import (
    MaskedModel,
    NeuroBridgeCaPOYO,
    NeuroBridgePOYO,
    TargetSequenceDecoder,
)

__all__ = [
    "CHECKPOINT_KEY",
    "CHECKPOINT_KINDS",
    "AtomicCheckpointIO",
    "checkpoint_payload",
    "ADAPTER_ROUTES",
    "build_conditioning",
    "build_diffusion",
    "load_adapter",
    "load_alignment_model",
    "load_masked_model",
    "read_checkpoint_kind",
    "read_checkpoint_meta",
]

CHECKPOINT_KEY = "neurobridge"
#: What a checkpoint holds: a pretrained masked model, that model with a CLIP-space head, or
#: the latter with a diffusion adapter.
CHECKPOINT_KINDS = ("masked", "alignment", "adapter")

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


def checkpoint_payload(model_config: dict, kind: str = "masked") -> dict:
    """What a training task stores under ``checkpoint["neurobridge"]``."""
    import neurobridge

    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"kind must be one of {CHECKPOINT_KINDS}, got {kind!r}.")
    return {"version": neurobridge.__version__, "kind": kind, "model": model_config}


def _build(registry: dict, cfg: dict, what: str, path: Path, **extra):
    cfg = dict(cfg)
    target = cfg.pop("_target_", None)
    if target not in registry:
        raise ValueError(
            f"{path}: model.{what}._target_ is {target!r}; a NeuroBridge checkpoint can name "
            f"only {sorted(registry)}."
        )
    return registry[target](**cfg, **extra)


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


def _masked_model(cfg: dict, path: Path) -> MaskedModel:
    encoder = _build(_ENCODERS, cfg["encoder"], "encoder", path)
    decoder = _build(
        _DECODERS, cfg["decoder"], "decoder", path, dim=encoder.dim, unit_emb_dim=encoder.unit_emb_dim
    )
    return MaskedModel(encoder=encoder, decoder=decoder, mode_prompt=cfg.get("mode_prompt", False))


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
    prefix = {"masked": "model.", "alignment": "model.masked_model.",
              "adapter": "aligned.masked_model."}[kind]
    cfg = {k: meta["model"][k] for k in ("encoder", "decoder", "mode_prompt") if k in meta["model"]}
    model = _masked_model(cfg, path)
    _load_state(model, _with_prefix(ckpt["state_dict"], prefix), path)
    model.eval()
    return (model, cfg) if with_config else model


def _alignment_model(cfg: dict, state: dict, path: Path) -> AlignmentModel:
    model = AlignmentModel(
        masked_model=_masked_model(cfg, path),
        readout=LatentReadout(**cfg["readout"]),
        projector=NeuralProjector(**cfg["projector"]),
    )
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


#: conditioning routes of ``task=adapter`` (``task.route``)
ADAPTER_ROUTES = ("prompt_embeds", "ip_adapter")


def build_conditioning(adapter_cfg: dict, unet: torch.nn.Module):
    """The conditioning module an adapter checkpoint's ``model.adapter`` config describes.

    ``route`` (absent in checkpoints written before the ip_adapter route: ``prompt_embeds``)
    picks :class:`DiffusionAdapter` or :class:`IPAdapterConditioning`; the latter is
    installed in ``unet`` (its ``weights`` entry, the file it started from, is not read: the
    checkpoint holds the trained weights).
    """
    cfg = dict(adapter_cfg)
    route = cfg.pop("route", "prompt_embeds")
    if route == "ip_adapter":
        cfg.pop("weights", None)
        return IPAdapterConditioning(unet, **cfg)
    if route != "prompt_embeds":
        raise ValueError(f"adapter route must be one of {ADAPTER_ROUTES}, got {route!r}.")
    return DiffusionAdapter(**cfg)


def load_adapter(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load an ``adapter`` checkpoint: ``(aligned_model, adapter, diffusion, model_config)``.

    The diffusion model (UNet, VAE, noise schedule) is rebuilt from the stored config: the
    local Stable Diffusion folder it names, or the tiny random-weight model with its seed.
    ``adapter`` is a :class:`DiffusionAdapter` (route ``prompt_embeds``) or an
    :class:`IPAdapterConditioning` installed in ``diffusion.unet`` with its trained
    IP-Adapter weights (route ``ip_adapter``).
    """
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


def build_diffusion(cfg: dict) -> DiffusionComponents:
    """Frozen diffusion components from a ``task.diffusion`` config: ``pretrained`` (a local
    Stable Diffusion folder or a cached model id) or, when null, the tiny random model."""
    if cfg.get("pretrained"):
        return load_stable_diffusion(cfg["pretrained"])
    return build_tiny_stable_diffusion(**cfg["tiny"])
