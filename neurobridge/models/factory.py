"""The one way to build a NeuroBridge model from its config.

Hydra tasks, checkpoint loading, :mod:`neurobridge.models.pretrained` and the benchmark scripts
all call these functions, so a model option is added in one place: its module, its argument
here (when the factory must compute it) and its yaml key. A model config is a plain dict:

``build_masked_model`` reads
    ``{"encoder": {"_target_": ..., <encoder arguments>}, "decoder": {"_target_": ...,
    <decoder arguments>}, "mode_prompt": bool}`` (``configs/model/*.yaml``);
``build_alignment_model`` reads the same plus
    ``{"readout": {<LatentReadout arguments>}, "projector": {<NeuralProjector arguments>}}``.

The decoder's ``dim`` / ``unit_emb_dim``, the readout's ``dim`` / ``sequence_length`` /
``t_min`` / ``t_max`` and the projector's ``in_dim`` come from the modules they attach to and
are filled in when absent. ``_target_`` names are looked up in :data:`ENCODERS` and
:data:`DECODERS` (a config, or a checkpoint, never chooses arbitrary code to run).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from neurobridge.models.aligned import AlignmentModel
from neurobridge.models.encoders import NeuroBridgeCaPOYO, NeuroBridgePOYO
from neurobridge.models.masked_model import MaskedModel
from neurobridge.models.ndt import NDTEncoder, NDTMaskedModel, NDTReadout
from neurobridge.models.readout import LatentReadout, NeuralProjector
from neurobridge.models.target_decoder import TargetSequenceDecoder

__all__ = [
    "DECODERS",
    "ENCODERS",
    "alignment_head_config",
    "build_alignment_model",
    "build_masked_model",
    "encoder_class",
]

#: ``_target_`` of ``model.encoder`` → class.
ENCODERS: dict[str, type] = {
    "neurobridge.models.NeuroBridgePOYO": NeuroBridgePOYO,
    "neurobridge.models.NeuroBridgeCaPOYO": NeuroBridgeCaPOYO,
    "neurobridge.baselines.NDTEncoder": NDTEncoder,
}
#: ``_target_`` of ``model.decoder`` → class.
DECODERS: dict[str, type] = {
    "neurobridge.models.TargetSequenceDecoder": TargetSequenceDecoder,
    "neurobridge.baselines.NDTReadout": NDTReadout,
}


def _lookup(registry: Mapping[str, type], cfg: Mapping, where: str) -> tuple[type, dict]:
    kwargs = dict(cfg)
    target = kwargs.pop("_target_", None)
    if target not in registry:
        raise ValueError(
            f"{where}._target_ is {target!r}; a NeuroBridge model config (or checkpoint) can "
            f"name only {sorted(registry)}."
        )
    return registry[target], kwargs


def encoder_class(config: Mapping, where: str = "model") -> type:
    """The encoder class a model config names (its ``modality`` tells what it reads)."""
    return _lookup(ENCODERS, config["encoder"], f"{where}.encoder")[0]


def build_masked_model(
    config: Mapping[str, Any],
    *,
    unit_ids: Sequence[str] | None = None,
    session_ids: Sequence[str] | None = None,
    where: str = "model",
) -> MaskedModel:
    """An encoder + target decoder from a model config.

    Args:
        config: ``{"encoder", "decoder", "mode_prompt"}`` (see the module docstring).
        unit_ids: initialise the unit vocabulary (a new model); ``None`` leaves it lazy, to be
            filled by ``load_state_dict`` (a checkpoint).
        session_ids: the same for the session vocabulary.
        where: config path named in error messages.

    Parameters are created in a fixed order (encoder, its vocabularies, decoder, mode
    prompt), so a seeded call always gives the same weights. The model keeps the config it
    was built from, with the derived arguments filled in, as ``model.config`` (what
    :func:`neurobridge.models.pretrained.save_pretrained` writes).
    """
    enc_cls, enc_kwargs = _lookup(ENCODERS, config["encoder"], f"{where}.encoder")
    encoder = enc_cls(**enc_kwargs)
    mode_prompt = bool(config.get("mode_prompt", False))
    if enc_cls is NDTEncoder:  # the NDT-style peer (neurobridge.models.ndt)
        dec_cls, dec_kwargs = _lookup(DECODERS, config["decoder"], f"{where}.decoder")
        if dec_cls is not NDTReadout:
            raise ValueError(f"{where}.decoder of an NDTEncoder must be NDTReadout.")
        dec_kwargs.setdefault("dim", encoder.dim)
        model = NDTMaskedModel(encoder=encoder, decoder=dec_cls(**dec_kwargs),
                               mode_prompt=mode_prompt)
        model.initialize_vocab(unit_ids, session_ids)
        model.config = {
            "encoder": {"_target_": config["encoder"]["_target_"], **enc_kwargs},
            "decoder": {"_target_": config["decoder"]["_target_"], **dec_kwargs},
            "mode_prompt": mode_prompt,
        }
        return model
    if unit_ids is not None:
        encoder.unit_emb.initialize_vocab(list(unit_ids))
    if session_ids is not None:
        encoder.session_emb.initialize_vocab(list(session_ids))
    dec_cls, dec_kwargs = _lookup(DECODERS, config["decoder"], f"{where}.decoder")
    dec_kwargs.setdefault("dim", encoder.dim)
    dec_kwargs.setdefault("unit_emb_dim", encoder.unit_emb_dim)
    decoder = dec_cls(**dec_kwargs)
    model = MaskedModel(encoder=encoder, decoder=decoder, mode_prompt=mode_prompt)
    model.config = {
        "encoder": {"_target_": config["encoder"]["_target_"], **enc_kwargs},
        "decoder": {"_target_": config["decoder"]["_target_"], **dec_kwargs},
        "mode_prompt": mode_prompt,
    }
    return model


def _upstream_default(cls: type, name: str) -> Any:
    """The default of constructor argument ``name`` of ``cls`` or its upstream base."""
    for klass in cls.__mro__:
        param = inspect.signature(klass.__init__).parameters.get(name)
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    raise KeyError(name)


def alignment_head_config(
    config: Mapping[str, Any], *, clip_dim: int | None = None
) -> dict[str, dict]:
    """``{"readout", "projector"}`` of ``config`` with every derived argument filled in.

    The readout takes the encoder's ``dim``, ``sequence_length``, ``t_min`` and ``t_max`` (over
    any value the readout config states; the encoder's own defaults when its config omits
    them); the projector ``in_dim = num_queries * dim`` and ``out_dim = clip_dim`` (the CLIP
    embedding width) unless the config states them.
    """
    enc_cls, enc = _lookup(ENCODERS, config["encoder"], "model.encoder")
    if enc_cls is NDTEncoder:
        raise ValueError(
            "model.encoder is the NDT-style peer (model=ndt): it has no latent tokens for the "
            "alignment readout to attend to. Align a NeuroBridge encoder: init_from=<a "
            "task=pretrain run of a POYO or CaPOYO encoder>/checkpoints/last.ckpt.")
    derived = {}
    for key in ("dim", "sequence_length", "t_min", "t_max"):
        try:
            derived[key] = enc[key] if key in enc else _upstream_default(enc_cls, key)
        except KeyError:
            raise ValueError(f"model.encoder.{key} is not set (the readout takes it).") from None
    readout = {**config["readout"], **derived}
    projector = {"in_dim": readout["num_queries"] * readout["dim"], **config["projector"]}
    if clip_dim is not None:
        projector.setdefault("out_dim", int(clip_dim))
    if "out_dim" not in projector:
        raise ValueError("The projector's out_dim (the CLIP embedding width) is not set.")
    return {"readout": readout, "projector": projector}


def build_alignment_model(
    config: Mapping[str, Any],
    *,
    masked_model: MaskedModel | None = None,
    clip_dim: int | None = None,
    unit_ids: Sequence[str] | None = None,
    session_ids: Sequence[str] | None = None,
    where: str = "model",
) -> AlignmentModel:
    """A masked model with a readout + projector head, from an alignment model config.

    Args:
        config: a masked-model config plus ``readout`` and ``projector``.
        masked_model: an existing (pretrained) masked model to put the head on; by default one
            is built from ``config`` (with ``unit_ids`` / ``session_ids``, as
            :func:`build_masked_model`).
        clip_dim: the CLIP embedding width, when ``config["projector"]`` has no ``out_dim``.
        where: config path named in error messages.

    The model keeps its full config (derived arguments filled in) as ``model.config``.
    """
    if masked_model is None:
        masked_model = build_masked_model(config, unit_ids=unit_ids, session_ids=session_ids,
                                          where=where)
    head = alignment_head_config(config, clip_dim=clip_dim)
    if head["projector"].pop("per_session", False):
        head["projector"]["num_sessions"] = len(masked_model.encoder.session_emb.vocab)
    model = AlignmentModel(
        masked_model=masked_model,
        readout=LatentReadout(**head["readout"]),
        projector=NeuralProjector(**head["projector"]),
    )
    base = getattr(masked_model, "config", None) or {
        k: config[k] for k in ("encoder", "decoder", "mode_prompt") if k in config
    }
    model.config = {**base, **head}
    return model
