"""``task=align``: CLIP alignment of a (pretrained) encoder; its LightningModule, also the one of
``task=finetune`` (:mod:`neurobridge.tasks.finetune`), and how both are built."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import Tensor

from neurobridge.alignment import (
    RIDGE_ALPHAS,
    EmbeddingCache,
    LogitScale,
    RetrievalMetrics,
    TwoWayIdentification,
    build_clip_image_encoder,
    check_ridge_options,
    clip_infonce,
    embed_image_source,
    latent_probe_scores,
    ridge_readout_scores,
    write_embedding_cache,
)
from neurobridge.data import (
    MaskedBatch,
    StimulusBatch,
    StimulusDataModule,
    StimulusTokenizer,
    cache_folder,
    open_image_source,
)
from neurobridge.losses import masked_mse, masked_poisson_nll
from neurobridge.modality import Modality
from neurobridge.models import AlignmentModel, build_alignment_model
from neurobridge.tasks.common import build_datamodule, build_masking, check_vocab, container
from neurobridge.tasks.pretrain import new_masked_model
from neurobridge.tasks.registry import Task
from neurobridge.training.checkpoint import (
    CHECKPOINT_KEY,
    checkpoint_payload,
    load_alignment_model,
    load_masked_model,
    read_checkpoint_kind,
)
from neurobridge.training.optim import configure_optimization

__all__ = [
    "CHECKPOINT_KIND",
    "TASK",
    "AlignmentTraining",
    "build_alignment",
    "center_embeddings",
    "check_alignment",
    "image_embeddings",
]

log = logging.getLogger(__name__)

#: What an alignment checkpoint holds (``task=align`` and ``task=finetune``).
CHECKPOINT_KIND = "alignment"


class AlignmentTraining(L.LightningModule):
    """Trains the readout + projector (and optionally the last encoder layers) with InfoNCE.

    ``align``: the masked model is frozen; only the readout, projector and temperature learn.
    ``finetune``: the last ``trainable_layers`` layers of the encoder learn too, and
    ``recon_weight · masked-reconstruction loss`` (through the frozen target decoder, on a
    masked view of the same windows) keeps the encoder close to what pretraining taught it.
    The masked model always runs in eval mode (no dropout).

    Validation and test score retrieval among the split's distinct images (both directions)
    and 2-way identification in CLIP space.

    Args:
        model: the alignment network.
        image_embeddings: ``[n_images, d_clip]`` CLIP embeddings, rows in the data module's
            ``image_ids`` order.
        split_rows: ``{split: (first_row, n_rows)}`` of each split's images in that table.
        optimizer: as in :class:`MaskedPretraining`.
        scheduler: as in :class:`MaskedPretraining`.
        total_steps: as in :class:`MaskedPretraining`.
        trainable_layers: encoder layers that learn, from the top (0 for ``align``; depth + 1
            includes the input cross-attention: :meth:`AlignmentModel.freeze_encoder`).
        recon_weight: weight α of the masked-reconstruction loss (needs ``masked`` views).
        model_config: stored in checkpoints (see :func:`neurobridge.training.load_alignment_model`).
    """

    def __init__(
        self,
        *,
        model: AlignmentModel,
        image_embeddings: Tensor,
        split_rows: dict[str, tuple[int, int]],
        optimizer: dict,
        scheduler: dict,
        total_steps: int,
        trainable_layers: int = 0,
        recon_weight: float = 0.0,
        model_config: dict | None = None,
    ):
        super().__init__()
        if recon_weight < 0:
            raise ValueError(f"task.recon_weight must be >= 0, got {recon_weight}.")
        self.model = model
        self.model.freeze_encoder(trainable_layers)
        self.logit_scale = LogitScale()
        self.register_buffer("image_embeddings", image_embeddings.float(), persistent=False)
        self.split_rows = dict(split_rows)
        self.optimizer_cfg = dict(optimizer)
        self.scheduler_cfg = dict(scheduler)
        self.total_steps = total_steps
        self.recon_weight = float(recon_weight)
        self.model_config = model_config
        self.is_spiking = model.masked_model.modality is Modality.SPIKES
        self.retrieval = torch.nn.ModuleDict(
            {s: RetrievalMetrics(candidates=self._split_embeddings(s)) for s in ("valid", "test")}
        )
        self.two_way = torch.nn.ModuleDict({s: TwoWayIdentification() for s in ("valid", "test")})
        #: the test split's :meth:`RetrievalMetrics.hits_by_image`, kept after the test epoch so
        #: that the peers scored after it are compared on the same presentations
        self.test_hits: dict[str, Tensor] | None = None

    def _split_embeddings(self, split: str) -> Tensor:
        first, n = self.split_rows[split]
        return self.image_embeddings[first : first + n]

    def train(self, mode: bool = True) -> AlignmentTraining:
        super().train(mode)
        self.model.masked_model.eval()
        return self

    # ------------------------------------------------------------------ training
    def forward(self, batch: StimulusBatch) -> Tensor:
        return self.model(batch["encoder_inputs"], batch["session_index"])

    def training_step(self, batch: StimulusBatch, batch_idx: int) -> Tensor:
        neural = self(batch)
        rows = batch["image_index"]
        loss = clip_infonce(
            neural, self.image_embeddings[rows], logit_scale=self.logit_scale(), image_ids=rows
        )
        bs = len(rows)
        self.log("train/infonce", loss, batch_size=bs, prog_bar=True)
        self.log("train/logit_scale", self.logit_scale(), batch_size=bs)
        if self.recon_weight > 0:
            recon = self._reconstruction_loss(batch["masked"])
            self.log("train/recon", recon, batch_size=bs)
            loss = loss + self.recon_weight * recon
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Non-finite alignment loss at step {self.global_step}. Lower optimizer.lr or "
                "use 32-bit precision (trainer.precision=32)."
            )
        self.log("train/loss", loss, batch_size=bs)
        return loss

    def _reconstruction_loss(self, masked: MaskedBatch) -> Tensor:
        pred = self.model.masked_model(
            encoder_inputs=masked["encoder_inputs"],
            query_unit_index=masked["query_unit_index"],
            query_timestamps=masked["query_timestamps"],
            query_session_index=masked["query_session_index"],
            mode_index=masked["mode"],
        )
        loss_fn = masked_poisson_nll if self.is_spiking else masked_mse
        return loss_fn(pred, masked["target"], masked["query_mask"])

    # ---------------------------------------------------------------- evaluation
    def _eval_step(self, batch: StimulusBatch, split: str) -> None:
        neural = self(batch).float()
        rows = batch["image_index"]
        first, _ = self.split_rows[split]
        self.retrieval[split].update(neural, rows - first)
        self.two_way[split].update(neural, self.image_embeddings[rows])

    def _log_eval(self, split: str, stage: str) -> None:
        results = self.retrieval[split].compute()
        for key, value in results.items():
            self.log(f"{stage}/retrieval_{key}", float(value), prog_bar=key == "top5")
        self.log(f"{stage}/two_way", self.two_way[split].compute())
        if split == "test":
            self.test_hits = self.retrieval[split].hits_by_image()
        self.retrieval[split].reset()
        self.two_way[split].reset()

    def validation_step(self, batch: StimulusBatch, batch_idx: int) -> None:
        self._eval_step(batch, "valid")

    def on_validation_epoch_end(self) -> None:
        self._log_eval("valid", "val")

    def test_step(self, batch: StimulusBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", "test")

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.model_config is not None:
            checkpoint[CHECKPOINT_KEY] = checkpoint_payload(self.model_config, CHECKPOINT_KIND)

    def configure_optimizers(self) -> Any:
        return configure_optimization(
            self, self.optimizer_cfg, self.scheduler_cfg, self.total_steps
        )


# ----------------------------------------------------------------------------- building


def image_embeddings(dm: StimulusDataModule, clip_cfg: dict) -> torch.Tensor:
    """``[len(dm.image_ids), d_clip]`` CLIP embeddings of the data module's images, in order.

    Read from ``clip_cfg["embeddings"]`` (an HDF5 cache from ``scripts/embed_images.py``) when
    set; otherwise the images of ``dm.images`` are embedded once with the configured CLIP model
    and cached under ``$NEUROBRIDGE_CACHE/clip/``, keyed by the model, its weights and the
    images' :meth:`~neurobridge.data.ImageSource.fingerprint` (ids, paths, sizes, modification
    times): replacing an image in place embeds the images again. A reused cache is logged.
    """
    path = clip_cfg.get("embeddings")
    if path is None:
        source = open_image_source(dm.images)
        weights = clip_cfg.get("pretrained") or "random-seed0"
        key = f"{source.fingerprint()}|{clip_cfg['model_name']}|{weights}"
        missing = [i for i in dm.image_ids if i not in source]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) that the recordings' stimulus presentations show are "
                f"not in the image source {dm.images}, e.g. "
                + ", ".join(str(Path(dm.images) / i) for i in missing[:3])
                + ". Add those files, or set data.images to the folder (or HDF5 store) that "
                "holds every presented image."
            )
        path = cache_folder("clip") / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.h5"
        if path.is_file():
            log.info("Reusing the CLIP embeddings of the %d images of %s (unchanged) from %s",
                     len(source), dm.images, path)
        else:
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


def build_alignment(cfg: DictConfig) -> tuple[AlignmentTraining, StimulusDataModule]:
    """Data module and LightningModule for ``task=align`` and ``task=finetune``.

    ``init_from`` names a pretraining checkpoint (new readout + projector), an alignment or
    adapter checkpoint (the aligned model restored, e.g. ``finetune`` after ``align``), or is
    null: a randomly initialised encoder, the control that shows what pretraining brings.
    """
    task = cfg.task
    dm = build_datamodule(cfg, stimulus=True)
    clip_cfg = container(task.clip)
    embeddings = image_embeddings(dm, clip_cfg)
    if clip_cfg.get("center"):
        embeddings = center_embeddings(embeddings, _split_rows(dm)["train"])
    init_from = cfg.get("init_from")
    if not init_from:
        log.warning(
            "\n%s\ntask=%s WITHOUT init_from: the encoder is RANDOMLY INITIALISED. This run is "
            "the random-init control, not an aligned pretrained model; to align a pretrained "
            "encoder pass init_from=<pretraining run>/checkpoints/last.ckpt.\n%s",
            "=" * 88, task.name, "=" * 88)
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
            masked, model_config = new_masked_model(cfg, dm), container(cfg.model)
        head = {"readout": container(task.readout), "projector": container(task.projector)}
        model = build_alignment_model({**model_config, **head}, masked_model=masked,
                                      clip_dim=int(embeddings.shape[1]))
        model_config = {**model_config, "readout": model.config["readout"],
                        "projector": model.config["projector"]}
    model_config["clip"] = {k: v for k, v in clip_cfg.items() if k != "embeddings"}
    if init_from:
        check_vocab(model.masked_model, dm, init_from)
    dm.tokenizer = StimulusTokenizer(
        dm.masked_tokenizer(model.encoder, build_masking(cfg)),
        dm.image_rows,
        masked_view=float(task.recon_weight) > 0,
    )
    module = AlignmentTraining(
        model=model,
        image_embeddings=embeddings,
        split_rows=_split_rows(dm),
        optimizer=container(task.optimizer),
        scheduler=container(task.scheduler),
        total_steps=int(cfg.trainer.max_steps),
        trainable_layers=int(task.trainable_layers),
        recon_weight=float(task.recon_weight),
        model_config=model_config,
    )
    return module, dm


def plot_retrieval(module: AlignmentTraining, dm: StimulusDataModule, run_dir: Path) -> None:
    """``retrieval.png``: test images and their top-5 retrievals."""
    from neurobridge.training import plots

    plots.plot_retrieval(module, dm, Path(run_dir) / "retrieval.png")


def linear_readouts(module: AlignmentTraining, dm: StimulusDataModule, cfg: DictConfig,
                    run_dir: Path) -> dict[str, float]:
    """``task.ridge``: the ridge readout from evoked counts, fitted and scored on the same
    presentations and targets (``test/ridge/...``; spikes only; null skips it); with
    ``task.latent_probe`` also the same ridge on the encoder's latents
    (``test/latent_probe/...``)."""
    ridge = cfg.task.get("ridge")
    out = {}
    if ridge and module.is_spiking:
        out.update(ridge_readout_scores(module, dm, **container(ridge)))
    if cfg.task.get("latent_probe"):
        alphas = container(ridge).get("alphas", RIDGE_ALPHAS) if ridge else RIDGE_ALPHAS
        out.update(latent_probe_scores(module, dm, alphas=alphas))
    return out


def check_alignment(cfg: DictConfig) -> None:
    """``task.ridge``'s grids, before any data is read."""
    ridge = cfg.task.get("ridge")
    if ridge:
        ridge = container(ridge)
        check_ridge_options(ridge.get("alphas", RIDGE_ALPHAS), ridge.get("kernel"))


TASK = Task(name="align", build=build_alignment, checkpoint_kind=CHECKPOINT_KIND,
            check=check_alignment, plots=plot_retrieval, after_test=linear_readouts)
