"""Build each task's data module and LightningModule from a resolved Hydra config."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from neurobridge.alignment import (
    AlignmentModel,
    EmbeddingCache,
    LatentReadout,
    NeuralProjector,
    build_clip_image_encoder,
    embed_image_source,
    write_embedding_cache,
)
from neurobridge.data import (
    ImagePixels,
    MaskedTokenizer,
    NeuralDataModule,
    StimulusDataModule,
    StimulusTokenizer,
    default_cache_dir,
    open_image_source,
)
from neurobridge.generation import (
    IPAdapterConditioning,
    adapter_for_unet,
    load_ip_adapter_weights,
)
from neurobridge.masking import MaskingController
from neurobridge.models import MaskedModel, MaskedModelEnsemble, NeuroBridgeCaPOYO
from neurobridge.training.adapt import extend_vocab, freeze_for_adaptation
from neurobridge.training.adapter import AdapterTraining
from neurobridge.training.align import AlignmentTraining
from neurobridge.training.checkpoint import (
    ADAPTER_ROUTES,
    build_diffusion,
    load_alignment_model,
    load_masked_model,
    read_checkpoint_kind,
)
from neurobridge.training.pretrain import MaskedPretraining

__all__ = [
    "STIMULUS_OPTIONS",
    "build_adapter",
    "build_alignment",
    "build_datamodule",
    "build_evaluation",
    "build_pretraining",
    "build_session_adaptation",
    "check_adaptation_source",
    "center_embeddings",
    "image_embeddings",
]

log = logging.getLogger(__name__)

#: ``data`` options that only stimulus-locked tasks (align, finetune, adapter, reconstruct) use.
STIMULUS_OPTIONS = ("stimulus_key", "pre_onset", "post_onset", "images")


def _container(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def build_datamodule(cfg: DictConfig, *, stimulus: bool) -> NeuralDataModule:
    """Random windows (``stimulus=False``) or stimulus-locked windows, set up."""
    kwargs = _container(cfg.data)
    kwargs.pop("_target_", None)
    extra = {k: kwargs.pop(k) for k in STIMULUS_OPTIONS if k in kwargs}
    dm = StimulusDataModule(**kwargs, **extra) if stimulus else NeuralDataModule(**kwargs)
    dm.setup()
    return dm


def build_tokenizer(cfg: DictConfig, encoder, dm: NeuralDataModule) -> MaskedTokenizer:
    """The masked tokenizer of ``encoder`` on ``dm``'s data (the encoder's vocabularies)."""
    modality = "values" if isinstance(encoder, NeuroBridgeCaPOYO) else "spikes"
    return MaskedTokenizer(
        modality=modality,
        unit_vocab=encoder.unit_emb.vocab,
        session_vocab=encoder.session_emb.vocab,
        masking=MaskingController(**_container(cfg.masking)),
        sequence_length=encoder.sequence_length,
        bin_size=dm.bin_size,
        latent_step=encoder.latent_step,
        num_latents_per_step=encoder.num_latents_per_step,
        region_key=dm.region_key,
        value_key=dm.value_key,
        spike_values=dm.spike_values if modality == "values" else None,
        spike_value_stats=dm.spike_value_stats if modality == "values" else None,
    )


def _mean_target(dm: NeuralDataModule, tokenizer: MaskedTokenizer, n_windows: int = 32) -> float:
    """Mean grid value over a few training windows (initialises the decoder's output bias)."""
    sampler = dm.eval_sampler("train", max_windows=n_windows)
    values = []
    for index in list(sampler)[:: len(dm.eval_modes)]:
        window = dm.dataset.get_recording(index.recording_id).slice(index.start, index.end)
        values.append(tokenizer.grid_targets(window, len(window.units.id))[0].mean())
    return float(np.mean(values))


def new_masked_model(cfg: DictConfig, dm: NeuralDataModule) -> MaskedModel:
    """A freshly initialised encoder + decoder with vocabularies from ``dm``'s recordings."""
    encoder = instantiate(cfg.model.encoder)
    encoder.unit_emb.initialize_vocab(dm.unit_ids)
    encoder.session_emb.initialize_vocab(dm.session_ids)
    tokenizer = build_tokenizer(cfg, encoder, dm)
    mean = _mean_target(dm, tokenizer)
    init_bias = math.log(max(mean, 1e-3)) if tokenizer.modality == "spikes" else mean
    decoder = instantiate(
        cfg.model.decoder, dim=encoder.dim, unit_emb_dim=encoder.unit_emb_dim, init_bias=init_bias
    )
    return MaskedModel(encoder=encoder, decoder=decoder, mode_prompt=cfg.model.mode_prompt)


def build_pretraining(cfg: DictConfig) -> tuple[MaskedPretraining, NeuralDataModule]:
    """Data module (set up, tokenizer attached) and LightningModule for ``task=pretrain``."""
    dm = build_datamodule(cfg, stimulus=False)
    model = new_masked_model(cfg, dm)
    return _masked_pretraining(cfg, model, dm, _container(cfg.model)), dm


def _masked_pretraining(
    cfg: DictConfig, model: MaskedModel, dm: NeuralDataModule, model_config: dict
) -> MaskedPretraining:
    """Attach ``model``'s tokenizer to ``dm`` and wrap ``model`` in the pretraining module."""
    dm.tokenizer = build_tokenizer(cfg, model.encoder, dm)
    task = cfg.task
    return MaskedPretraining(
        model=model,
        optimizer=_container(task.optimizer),
        scheduler=_container(task.scheduler),
        total_steps=int(cfg.trainer.max_steps),
        baseline=_container(task.baseline) if task.baseline else None,
        model_config=model_config,
        unmasked_weight=float(task.get("unmasked_weight", 1.0)),
    )


def build_session_adaptation(cfg: DictConfig) -> tuple[MaskedPretraining, NeuralDataModule]:
    """Data module and LightningModule for ``task=adapt_session``.

    The masked model of ``init_from`` (a pretraining checkpoint) gets the data's new units and
    sessions added to its vocabularies (``task.init``) and is frozen except their new rows
    (and the ``task.unfreeze`` prefixes); it trains with the masked-pretraining objective and
    metrics, and its checkpoint is a pretraining one with the extended vocabularies.
    """
    init_from = cfg.get("init_from")
    check_adaptation_source(init_from)
    model, model_config = load_masked_model(init_from, with_config=True)
    dm = build_datamodule(cfg, stimulus=False)
    _check_reads_data(model, dm, f"init_from={init_from}")
    task = cfg.task
    added = extend_vocab(model, dm.unit_ids, dm.session_ids, init=str(task.init))
    if not added.units and not added.sessions:
        raise ValueError(
            f"Every unit and session of the data is already in the vocabulary of {init_from}: "
            "task=adapt_session learns embeddings for new recordings. To train further on "
            "known recordings, continue the pretraining run (task=pretrain "
            "resume_from=<its last.ckpt>)."
        )
    known = [rid for rid, sid in zip(dm.dataset.recording_ids, dm.session_ids)
             if sid not in added.sessions]
    if known:
        log.warning("Recordings %s are already known to %s: their rows stay frozen.", known,
                    init_from)
    trainable = freeze_for_adaptation(model, added, list(task.get("unfreeze") or ()))
    model.train()  # load_masked_model returns eval mode; train as pretraining did
    log.info(
        "Adapting %s to %d new units and %d new sessions; trainable: %s",
        init_from, len(added.units), len(added.sessions), trainable,
    )
    return _masked_pretraining(cfg, model, dm, model_config), dm


def _check_reads_data(model: MaskedModel, dm: NeuralDataModule, source: str) -> None:
    """``model`` (loaded from ``source``) reads ``dm``'s modality and window length."""
    enc = model.encoder
    if model.modality != dm.modality:
        raise ValueError(
            f"{source} holds a {type(enc).__name__} encoder (data.modality="
            f"{model.modality}), but data.modality is {dm.modality!r}."
        )
    if abs(enc.sequence_length - dm.sequence_length) > 1e-9:
        raise ValueError(
            f"{source} was trained on {enc.sequence_length:g} s windows but "
            f"data.sequence_length is {dm.sequence_length:g}: set "
            f"model.encoder.sequence_length={enc.sequence_length:g}."
        )


def build_evaluation(cfg: DictConfig) -> tuple[MaskedPretraining, NeuralDataModule]:
    """Data module and test-only module for ``task=evaluate``.

    ``task.checkpoints`` names one or more masked-model checkpoints (pretraining or
    ``adapt_session``; the masked model of an alignment or adapter checkpoint works too)
    trained on the data's recordings; several are scored as a :class:`MaskedModelEnsemble`.
    """
    paths = cfg.task.get("checkpoints")
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise ValueError(
            "task=evaluate needs task.checkpoints=[<last.ckpt of a pretraining run>, ...] "
            "(one checkpoint, or several to score their ensemble)."
        )
    dm = build_datamodule(cfg, stimulus=False)
    members = []
    for path in paths:
        model = load_masked_model(path)
        _check_reads_data(model, dm, str(path))
        _check_vocab(model, dm, str(path))
        members.append(model)
    ensemble = MaskedModelEnsemble(members, names=[str(p) for p in paths]).eval()
    dm.tokenizer = build_tokenizer(cfg, ensemble.encoder, dm)
    baseline = cfg.task.get("baseline")
    return MaskedPretraining(
        model=ensemble, baseline=_container(baseline) if baseline else None
    ), dm


def check_adaptation_source(init_from) -> None:
    """``init_from`` must name a pretraining (``masked``) checkpoint."""
    if not init_from:
        raise ValueError(
            "task=adapt_session needs init_from=<checkpoint of task=pretrain> (e.g. "
            "outputs/pretrain/<date>/checkpoints/last.ckpt): it adapts a pretrained model to "
            "new recordings."
        )
    kind = read_checkpoint_kind(init_from)
    if kind != "masked":
        raise ValueError(
            f"init_from={init_from} is an {kind!r} checkpoint; task=adapt_session adapts a "
            "pretraining checkpoint (task=pretrain, or an earlier task=adapt_session run)."
        )


# ------------------------------------------------------------------------ alignment


def image_embeddings(dm: StimulusDataModule, clip_cfg: dict) -> torch.Tensor:
    """``[len(dm.image_ids), d_clip]`` CLIP embeddings of the data module's images, in order.

    Read from ``clip_cfg["embeddings"]`` (an HDF5 cache from ``scripts/embed_images.py``) when
    set; otherwise the images of ``dm.images`` are embedded once with the configured CLIP model
    and cached under ``$NEUROBRIDGE_CACHE/clip/`` (keyed by image folder, model and weights).
    """
    path = clip_cfg.get("embeddings")
    if path is None:
        source = open_image_source(dm.images)
        weights = clip_cfg.get("pretrained") or "random-seed0"
        key = f"{Path(dm.images).resolve()}|{len(source)}|{clip_cfg['model_name']}|{weights}"
        path = default_cache_dir() / "clip" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.h5"
        if not path.is_file():
            log.info("Embedding %d images of %s with CLIP %s", len(source), dm.images, clip_cfg["model_name"])
            encoder = build_clip_image_encoder(
                model_name=clip_cfg["model_name"], pretrained=clip_cfg.get("pretrained")
            )
            ids, emb = embed_image_source(encoder, source)
            write_embedding_cache(
                path, ids, emb, model_name=clip_cfg["model_name"], pretrained=clip_cfg.get("pretrained")
            )
    return EmbeddingCache(path).lookup(dm.image_ids)


def center_embeddings(embeddings: torch.Tensor, train_rows: tuple[int, int]) -> torch.Tensor:
    """Subtract the mean embedding of the training images and re-normalise: ``[n, d]``.

    CLIP image embeddings share a large common component (on the tiny random CLIP of the
    demo, a mean pairwise cosine of ~0.9); removing it lets InfoNCE and retrieval work on what
    distinguishes the images. Only training images enter the mean.
    """
    first, n = train_rows
    mean = embeddings[first : first + n].mean(dim=0, keepdim=True)
    return torch.nn.functional.normalize(embeddings - mean, dim=-1)


def _split_rows(dm: StimulusDataModule) -> dict[str, tuple[int, int]]:
    rows, first = {}, 0
    for split in ("train", "valid", "test"):
        rows[split] = (first, len(dm.split_image_ids[split]))
        first += rows[split][1]
    return rows


def _check_vocab(model: MaskedModel, dm: NeuralDataModule, path: str) -> None:
    known_units = set(model.encoder.unit_emb.vocab)
    missing = [u for u in dm.unit_ids if u not in known_units]
    known_sessions = set(model.encoder.session_emb.vocab)
    missing += [s for s in dm.session_ids if s not in known_sessions]
    if missing:
        raise ValueError(
            f"{len(missing)} units/sessions of the data are not in the vocabulary of {path} "
            f"(e.g. {missing[:3]}). Select the recordings the checkpoint was pretrained on "
            "(data.recording_ids=[...]), or first adapt the pretrained model to the new "
            "recordings with task=adapt_session init_from=<pretraining checkpoint> and use "
            "its checkpoint."
        )


def build_alignment(cfg: DictConfig) -> tuple[AlignmentTraining, StimulusDataModule]:
    """Data module and LightningModule for ``task=align`` and ``task=finetune``.

    ``init_from`` names a pretraining checkpoint (new readout + projector), an alignment or
    adapter checkpoint (the aligned model restored, e.g. ``finetune`` after ``align``), or is
    null: a randomly initialised encoder, the control that shows what pretraining brings.
    """
    task = cfg.task
    dm = build_datamodule(cfg, stimulus=True)
    clip_cfg = _container(task.clip)
    embeddings = image_embeddings(dm, clip_cfg)
    if clip_cfg.get("center"):
        embeddings = center_embeddings(embeddings, _split_rows(dm)["train"])
    init_from = cfg.get("init_from")
    kind = read_checkpoint_kind(init_from) if init_from else None
    if kind in ("alignment", "adapter"):  # an aligned model (an adapter checkpoint holds one)
        model, model_config = load_alignment_model(init_from, with_config=True)
        model_config = {k: v for k, v in model_config.items() if k not in ("adapter", "diffusion")}
        if model.projector.out_dim != embeddings.shape[1]:
            raise ValueError(
                f"{init_from}: the projector outputs {model.projector.out_dim}-d embeddings but "
                f"the CLIP model {clip_cfg['model_name']!r} gives {embeddings.shape[1]}-d ones; "
                "use the CLIP model the checkpoint was aligned to."
            )
    else:
        if kind == "masked":
            masked, model_config = load_masked_model(init_from, with_config=True)
        else:
            masked, model_config = new_masked_model(cfg, dm), _container(cfg.model)
        enc = masked.encoder
        readout_cfg = {
            **_container(task.readout),
            "dim": enc.dim,
            "sequence_length": enc.sequence_length,
            "t_min": model_config["encoder"].get("t_min", 1e-4),
            "t_max": model_config["encoder"].get("t_max", 2.0627),
        }
        projector_cfg = {
            **_container(task.projector),
            "in_dim": readout_cfg["num_queries"] * enc.dim,
            "out_dim": int(embeddings.shape[1]),
        }
        model = AlignmentModel(
            masked_model=masked,
            readout=LatentReadout(**readout_cfg),
            projector=NeuralProjector(**projector_cfg),
        )
        model_config = {**model_config, "readout": readout_cfg, "projector": projector_cfg}
    model_config["clip"] = {k: v for k, v in clip_cfg.items() if k != "embeddings"}
    if init_from:
        _check_vocab(model.masked_model, dm, init_from)
    dm.tokenizer = StimulusTokenizer(
        build_tokenizer(cfg, model.encoder, dm),
        dm.image_rows,
        masked_view=float(task.recon_weight) > 0,
    )
    module = AlignmentTraining(
        model=model,
        image_embeddings=embeddings,
        split_rows=_split_rows(dm),
        optimizer=_container(task.optimizer),
        scheduler=_container(task.scheduler),
        total_steps=int(cfg.trainer.max_steps),
        trainable_layers=int(task.trainable_layers),
        recon_weight=float(task.recon_weight),
        model_config=model_config,
    )
    return module, dm


# ------------------------------------------------------------------------- adapter


def build_adapter(cfg: DictConfig) -> tuple[AdapterTraining, StimulusDataModule]:
    """Data module (with image pixels) and LightningModule for ``task=adapter``.

    ``init_from`` must name an ``align`` / ``finetune`` checkpoint; its model is frozen.
    ``task.route`` picks the conditioning: ``prompt_embeds`` (a :class:`DiffusionAdapter`
    from ``task.adapter``) or ``ip_adapter`` (an :class:`IPAdapterConditioning` from
    ``task.ip_adapter``, started from the weight file ``task.ip_adapter.weights`` when set).
    """
    init_from = cfg.get("init_from")
    if not init_from or read_checkpoint_kind(init_from) != "alignment":
        raise ValueError(
            "task=adapter needs init_from=<checkpoint of task=align or task=finetune> (got "
            f"{init_from!r}): the adapter turns the aligned neural embedding into conditioning."
        )
    aligned, model_config = load_alignment_model(init_from, with_config=True)
    task = cfg.task
    route = task.get("route", "prompt_embeds")
    if route not in ADAPTER_ROUTES:
        raise ValueError(f"task.route must be one of {ADAPTER_ROUTES}, got {route!r}.")
    diffusion_cfg = _container(task.diffusion)
    diffusion = build_diffusion(diffusion_cfg)
    clip_dim = aligned.projector.out_dim
    if route == "ip_adapter":
        ip_cfg = _container(task.ip_adapter)
        weights = ip_cfg.pop("weights", None)
        adapter = IPAdapterConditioning(diffusion.unet, clip_dim=clip_dim, **ip_cfg)
        if weights:
            load_ip_adapter_weights(adapter, weights)
            log.info("IP-Adapter weights loaded from %s", weights)
        adapter_cfg = {"route": route, **ip_cfg, "clip_dim": clip_dim,
                       "weights": str(weights) if weights else None}
    else:
        adapter = adapter_for_unet(diffusion.unet, clip_dim=clip_dim, **_container(task.adapter))
        adapter_cfg = {
            "route": route,
            **_container(task.adapter),
            "clip_dim": adapter.clip_dim,
            "cond_dim": adapter.cond_dim,
            "class_embed_dim": adapter.class_embed_dim,
        }
    dm = build_datamodule(cfg, stimulus=True)
    _check_vocab(aligned.masked_model, dm, init_from)
    dm.tokenizer = StimulusTokenizer(
        build_tokenizer(cfg, aligned.encoder, dm),
        dm.image_rows,
        pixels=ImagePixels(open_image_source(dm.images), diffusion.image_size),
    )
    module = AdapterTraining(
        aligned=aligned,
        adapter=adapter,
        diffusion=diffusion,
        optimizer=_container(task.optimizer),
        scheduler=_container(task.scheduler),
        total_steps=int(cfg.trainer.max_steps),
        model_config={**model_config, "adapter": adapter_cfg, "diffusion": diffusion_cfg},
        seed=int(cfg.seed),
    )
    return module, dm
