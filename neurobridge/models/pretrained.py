"""Shareable model folders: ``config.json`` + ``model.safetensors``, loadable without Lightning,
Hydra or the data.

``save_pretrained(model, directory)`` writes the model's factory config (every argument
:func:`~neurobridge.models.build_masked_model` / :func:`~neurobridge.models.build_alignment_model`
needs), its unit and session vocabularies and its weights; ``load_pretrained(directory)``
rebuilds it through the same factory. The round trip is exact: the same parameters, buffers
and vocabularies, bit for bit. ``MaskedModel.save_pretrained`` / ``.from_pretrained`` (and the
same on ``AlignmentModel``) call these. A folder of another kind, or written by a newer format
version, is refused with a message that says what it holds.

``config.json``::

    {"format": "neurobridge-pretrained", "format_version": 1, "kind": "masked_model" |
     "alignment_model", "neurobridge_version": "...", "model": {<factory config>},
     "vocab": {"<state-dict key>": [[word, index], ...]}}
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from neurobridge.io import atomic_path, write_json_atomic
from neurobridge.models.aligned import AlignmentModel
from neurobridge.models.factory import build_alignment_model, build_masked_model
from neurobridge.models.masked_model import MaskedModel

__all__ = ["CONFIG_NAME", "FORMAT", "FORMAT_VERSION", "WEIGHTS_NAME", "load_pretrained",
           "read_pretrained_config", "save_pretrained"]

FORMAT = "neurobridge-pretrained"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_KINDS = {cls: cls.pretrained_kind for cls in (MaskedModel, AlignmentModel)}


def _kind_of(model: torch.nn.Module) -> str:
    for cls, kind in _KINDS.items():
        if type(model) is cls:
            return kind
    raise TypeError(
        f"save_pretrained saves a MaskedModel or an AlignmentModel, got {type(model).__name__}."
    )


def save_pretrained(model: MaskedModel | AlignmentModel, directory: str | Path) -> Path:
    """Write ``model`` to ``directory`` (created if needed); returns the folder.

    The model must carry its factory config (``model.config``): every model built by
    :mod:`neurobridge.models.factory` or loaded from a checkpoint does.
    """
    kind = _kind_of(model)
    if getattr(model, "config", None) is None:
        raise ValueError(
            f"This {type(model).__name__} has no factory config (model.config): build it with "
            "neurobridge.models.build_masked_model / build_alignment_model, or load it from a "
            "checkpoint, to save it."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, vocab = {}, {}
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous()
        elif isinstance(value, dict):  # torch_brain's InfiniteVocabEmbedding vocabulary
            vocab[key] = [[str(word), int(index)] for word, index in value.items()]
        else:
            raise TypeError(f"state_dict entry {key!r} ({type(value).__name__}) cannot be saved.")
    import neurobridge

    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    write_json_atomic(directory / CONFIG_NAME, {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "neurobridge_version": neurobridge.__version__,
        "model": model.config,
        "vocab": vocab,
    })
    return directory


def read_pretrained_config(directory: str | Path) -> dict:
    """The checked ``config.json`` of a pretrained folder."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{directory} is not a NeuroBridge pretrained folder: it needs {CONFIG_NAME} and "
            f"{WEIGHTS_NAME} (written by save_pretrained, or by scripts/export_pretrained.py "
            "from a Lightning checkpoint)."
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(
            f"{path} was not written by NeuroBridge's save_pretrained (format "
            f"{config.get('format') if isinstance(config, dict) else None!r}, expected {FORMAT!r})."
        )
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version!r}; this NeuroBridge reads versions up to "
            f"{FORMAT_VERSION}: upgrade NeuroBridge to load it."
        )
    return config


def load_pretrained(
    directory: str | Path, *, kind: str | None = None, map_location: str | torch.device = "cpu"
) -> MaskedModel | AlignmentModel:
    """Rebuild the model of a pretrained folder, in eval mode.

    Args:
        directory: a folder written by :func:`save_pretrained`.
        kind: ``"masked_model"`` or ``"alignment_model"`` to insist on one (a folder of the
            other kind is refused); ``None`` accepts either.
        map_location: device of the loaded weights.
    """
    directory = Path(directory)
    config = read_pretrained_config(directory)
    found = config.get("kind")
    if found not in _KINDS.values():
        raise ValueError(f"{directory / CONFIG_NAME}: unknown kind {found!r}.")
    if kind is not None and found != kind:
        cls = {v: k for k, v in _KINDS.items()}[found].__name__
        raise ValueError(
            f"{directory} holds a model of kind {found!r}, not {kind!r}: load it with "
            f"{cls}.from_pretrained."
        )
    where = f"{directory / CONFIG_NAME}: model"
    if found == "masked_model":
        model = build_masked_model(config["model"], where=where)
    else:
        model = build_alignment_model(config["model"], where=where)
    state: dict = dict(load_file(str(directory / WEIGHTS_NAME), device=str(map_location)))
    for key, pairs in config.get("vocab", {}).items():
        state[key] = OrderedDict((word, index) for word, index in pairs)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise RuntimeError(
            f"{directory}: the weights do not fit the model its config describes ({err})."
        ) from None
    return model.eval()
