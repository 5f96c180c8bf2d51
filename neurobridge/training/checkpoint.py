"""Rebuild trained NeuroBridge models from checkpoints, without the data.

Every NeuroBridge checkpoint stores its kind (``"masked"`` for pretraining, ``"alignment"``
for align / finetune, ``"adapter"`` for the diffusion adapter) and the model config under
``checkpoint["neurobridge"]``, and the unit / session vocabularies inside the state dict, so
loading needs neither the data folder nor Hydra. Models are rebuilt by the factories of
:mod:`neurobridge.models.factory`. Files are read with ``torch.load(..., weights_only=True)``:
no pickled code runs. Only :func:`load_adapter` imports diffusers (when called).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from neurobridge.models.aligned import AlignmentModel
from neurobridge.models.factory import build_alignment_model, build_masked_model
from neurobridge.training import checkpoint_files

__all__ = [
    "CHECKPOINT_KEY",
    "CHECKPOINT_KINDS",
    "DATA_KEYS",
    "AtomicCheckpointIO",
    "check_data_config",
    "checkpoint_payload",
    "data_config",
    "export_pretrained",
    "load_adapter",
    "load_alignment_model",
    "load_masked_model",
    "read_checkpoint_kind",
    "read_checkpoint_meta",
]

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "neurobridge"
#: The built-in checkpoint kinds: a pretrained masked model, that model with a CLIP-space head,
#: or the latter with a diffusion adapter. A task of its own may name another kind.
CHECKPOINT_KINDS = ("masked", "alignment", "adapter")

#: The data options a trained model's numbers depend on, stored with every checkpoint a run
#: writes (``checkpoint["neurobridge"]["data"]``) and compared when a checkpoint is read
#: again: these refuse when they differ ...
DATA_KEYS = ("bin_size", "modality", "value_key", "spike_values", "spike_values_zscore")
#: ... and these warn (they change which units are masked together, not what a cell means)
DATA_KEYS_WARNED = ("region_key",)


def data_config(data: Mapping) -> dict:
    """The :data:`DATA_KEYS` and :data:`DATA_KEYS_WARNED` options of a ``data`` config."""
    return {k: data.get(k) for k in (*DATA_KEYS, *DATA_KEYS_WARNED)}


def check_data_config(path: str | Path, data: Mapping, option: str,
                      meta: Mapping | None = None) -> None:
    """Refuse ``path`` (given as ``option``) when it was trained with other data options than
    ``data`` (a ``data`` config); warn where only the region field differs. ``meta``: the
    checkpoint's :func:`read_checkpoint_meta`, when the caller has read it already."""
    saved = (read_checkpoint_meta(path) if meta is None else meta).get("data")
    if saved is None:
        log.warning("%s=%s was written before checkpoints stored their data options: its "
                    "data.bin_size and data.modality are not compared with this run's.", option, path)
        return
    now = data_config(data)

    def differs(key: str) -> bool:
        a, b = saved.get(key), now.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return not math.isclose(a, b, rel_tol=1e-9)
        return a != b

    refused = [k for k in DATA_KEYS if k in saved and differs(k)]
    if refused:
        raise ValueError(
            f"{option}={path} was trained with "
            + ", ".join(f"data.{k}={saved[k]!r}" for k in refused)
            + " but this run has " + ", ".join(f"data.{k}={now[k]!r}" for k in refused)
            + ": the model would read windows binned and scaled otherwise than it learned. Set "
            + " ".join(f"data.{k}={saved[k]}" for k in refused) + " (or train a model on these "
            "options)."
        )
    for key in DATA_KEYS_WARNED:
        if key in saved and differs(key):
            log.warning("%s=%s was trained with data.%s=%r, this run has %r: regions (and so "
                        "intra- and inter-region masks) are read from another field.", option,
                        path, key, saved[key], now[key])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint atomically with its content hash, keeping the previous one beside
    it (:mod:`~neurobridge.training.checkpoint_files`), and checks the hash when Lightning loads
    one to resume: a run killed mid-write leaves a loadable checkpoint, a damaged file is refused.

    Args:
        data: the run's data options (:func:`data_config`), added to the NeuroBridge entry of
            every checkpoint written.
    """

    def __init__(self, data: Mapping | None = None):
        super().__init__()
        self.data = None if data is None else dict(data)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if self.data is not None and isinstance(checkpoint.get(CHECKPOINT_KEY), dict):
            checkpoint[CHECKPOINT_KEY] = {**checkpoint[CHECKPOINT_KEY], "data": self.data}
        checkpoint_files.save(checkpoint, path)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage,
                        weights_only=None) -> dict[str, Any]:
        checkpoint_files.verify(path)
        return super().load_checkpoint(path, map_location=map_location,
                                       weights_only=weights_only)


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
    checkpoint_files.verify(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        prev = checkpoint_files.previous_path(path)
        hint = f" The previous checkpoint {prev} is kept beside it." if prev.is_file() else ""
        raise RuntimeError(
            f"{path} could not be read as a checkpoint ({type(err).__name__}: {err}). It may be "
            f"truncated or not a NeuroBridge checkpoint.{hint}"
        ) from None
    meta = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if meta is None:
        raise ValueError(
            f"{path} has no '{CHECKPOINT_KEY}' entry: it was not written by a NeuroBridge "
            "training task, so its model config is unknown."
        )
    return ckpt, meta, path


def read_checkpoint_meta(path: str | Path) -> dict:
    """The NeuroBridge entry of a checkpoint: ``version``, ``kind``, the ``model`` config,
    (checkpoints written by a run since 2026-12) the ``data`` options (:func:`data_config`), and
    the ``global_step`` it was saved at."""
    ckpt, meta, _ = _read(path, "cpu")
    meta = dict(meta)
    meta.setdefault("kind", "masked")
    meta["global_step"] = int(ckpt.get("global_step", 0))
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
