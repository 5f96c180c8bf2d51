"""Adapting a pretrained model to new recordings (``task=adapt_session``).

The unit and session vocabularies are extended with the data's new words; units and sessions
already known keep their rows and token indices. Training then moves only the new rows: every
other parameter is frozen, and the known rows are held by :class:`PinnedRowsEmbedding` as a
buffer, not as part of a parameter, so no gradient, optimiser moment or weight decay can reach
them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn
from torch_brain.nn import InfiniteVocabEmbedding

from neurobridge.data import NeuralDataModule
from neurobridge.models import MaskedModel
from neurobridge.tasks.common import build_datamodule, check_reads_data
from neurobridge.tasks.pretrain import (
    CHECKPOINT_KIND,
    MaskedPretraining,
    after_masked_test,
    masked_pretraining,
    save_pretraining_plots,
)
from neurobridge.tasks.registry import Task
from neurobridge.training.checkpoint import load_masked_model, read_checkpoint_kind

__all__ = [
    "INIT_MODES",
    "TASK",
    "AddedWords",
    "PinnedRowsEmbedding",
    "build_session_adaptation",
    "check_adaptation_source",
    "extend_vocab",
    "freeze_for_adaptation",
]

log = logging.getLogger(__name__)

#: How the rows of new units / sessions start: ``"random"``, torch_brain's small normal
#: initialisation (std ``init_scale``), or ``"mean"`` of the known rows (every new unit starts
#: as the average unit). On the synthetic data ``random`` adapts faster (docs/tasks.md).
INIT_MODES = ("random", "mean")


class PinnedRowsEmbedding(InfiniteVocabEmbedding):
    """An :class:`InfiniteVocabEmbedding` whose first ``n_pinned`` rows cannot change.

    The pinned rows are a non-persistent buffer and only the later rows are a parameter
    (``new_rows``), so an optimiser never holds the pinned ones. :attr:`weight` is both, in
    vocabulary order; the state dict is that of a plain :class:`InfiniteVocabEmbedding`
    (``weight`` with every row, ``vocab``), so checkpoints load into one unchanged.

    Args:
        source: the embedding to take the vocabulary and rows from (not modified).
        n_pinned: rows ``[0, n_pinned)`` are pinned (row 0 is the padding word ``"NA"``).
    """

    def __init__(self, source: InfiniteVocabEmbedding, n_pinned: int):
        # InfiniteVocabEmbedding.__init__ registers a lazy ``weight`` parameter: this class
        # computes ``weight`` instead, so it sets the same attributes itself.
        nn.Module.__init__(self)
        if source.is_lazy():
            raise ValueError("The source embedding has no vocabulary yet.")
        if not 1 <= n_pinned <= len(source.vocab):
            raise ValueError(f"n_pinned must be in [1, {len(source.vocab)}], got {n_pinned}.")
        self.embedding_dim = source.embedding_dim
        self.init_scale = source.init_scale
        self.padding_idx = source.padding_idx
        self.vocab = OrderedDict(source.vocab)
        rows = source.weight.detach()
        self.register_buffer("pinned_rows", rows[:n_pinned].clone(), persistent=False)
        self.new_rows = nn.Parameter(rows[n_pinned:].clone())

    @property
    def n_pinned(self) -> int:
        return len(self.pinned_rows)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return torch.cat((self.pinned_rows, self.new_rows))

    def extend_vocab(self, vocab, exist_ok=False):  # noqa: D102
        raise NotImplementedError("A PinnedRowsEmbedding is not extended: extend the source one.")

    def subset_vocab(self, vocab, inplace=True):  # noqa: D102
        raise NotImplementedError("A PinnedRowsEmbedding is not subset: subset the source one.")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        weight = self.weight
        destination[prefix + "weight"] = weight if keep_vars else weight.detach()
        destination[prefix + "vocab"] = self.vocab.copy()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        key = prefix + "weight"
        if key not in state_dict or prefix + "vocab" not in state_dict:
            missing_keys.extend(k for k in (key, prefix + "vocab") if k not in state_dict)
            return
        # upstream's hook checks the vocabularies and reorders the incoming rows to ours
        self._hook_vocab_on_load_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        weight = state_dict[key]
        if tuple(weight.shape) != (len(self.vocab), self.embedding_dim):
            error_msgs.append(
                f"size mismatch for {key}: copying a param with shape {tuple(weight.shape)}, the "
                f"shape in the current model is {(len(self.vocab), self.embedding_dim)}."
            )
            return
        with torch.no_grad():
            self.pinned_rows.copy_(weight[: self.n_pinned])
            self.new_rows.copy_(weight[self.n_pinned :])


@dataclass(frozen=True)
class AddedWords:
    """What :func:`extend_vocab` added to a model: new unit and session ids, in token order."""

    units: list[str]
    sessions: list[str]
    known_units: int  # rows before the extension (the padding row included)
    known_sessions: int


def _extend(emb: InfiniteVocabEmbedding, words: list[str], init: str) -> list[str]:
    new = [w for w in dict.fromkeys(words) if w not in emb.vocab]
    if not new:
        return []
    n_known = len(emb.vocab)
    known = emb.weight.detach()[1:n_known]  # without the padding row
    emb.extend_vocab(new)  # rows of known words are copied; new rows ~ N(0, init_scale)
    if init == "mean" and len(known):
        with torch.no_grad():
            emb.weight[n_known:] = known.mean(dim=0)
    return new


def extend_vocab(
    model: MaskedModel, unit_ids: list[str], session_ids: list[str], *, init: str = "random"
) -> AddedWords:
    """Add the units and sessions of ``unit_ids`` / ``session_ids`` that ``model``'s encoder
    does not know to its vocabularies, initialised by ``init`` (one of :data:`INIT_MODES`).

    Known words keep their token index and their row; new words get the next indices.
    """
    if init not in INIT_MODES:
        raise ValueError(f"task.init must be one of {list(INIT_MODES)}, got {init!r}.")
    enc = model.encoder
    n_units, n_sessions = len(enc.unit_emb.vocab), len(enc.session_emb.vocab)
    return AddedWords(
        units=_extend(enc.unit_emb, list(unit_ids), init),
        sessions=_extend(enc.session_emb, list(session_ids), init),
        known_units=n_units,
        known_sessions=n_sessions,
    )


def freeze_for_adaptation(
    model: MaskedModel, added: AddedWords, unfreeze: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """Freeze ``model`` except the rows of ``added``'s new words (and the ``unfreeze`` prefixes).

    The encoder's unit and session embeddings are replaced by :class:`PinnedRowsEmbedding`
    when they have new rows. ``unfreeze`` lists parameter-name prefixes of ``model`` that learn
    too (e.g. ``decoder.unit_readout``); the embeddings' known rows never do. Build the
    optimiser afterwards: it must see the new parameters. Returns the trainable parameters'
    names.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    enc = model.encoder
    if added.units:
        enc.unit_emb = PinnedRowsEmbedding(enc.unit_emb, added.known_units)
    if added.sessions:
        enc.session_emb = PinnedRowsEmbedding(enc.session_emb, added.known_sessions)
    names = dict(model.named_parameters())
    for prefix in unfreeze:
        if prefix.startswith(("encoder.unit_emb", "encoder.session_emb")):
            raise ValueError(
                f"task.unfreeze={prefix!r}: the known rows of the unit and session embeddings "
                "stay frozen (their new rows always learn)."
            )
        hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            tops = sorted({".".join(n.split(".")[:2]) for n in names})
            raise ValueError(f"task.unfreeze={prefix!r} names no parameter; e.g. {tops}.")
        for n in hits:
            names[n].requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- building


def check_adaptation_source(init_from) -> None:
    """``init_from`` must name a pretraining (``masked``) checkpoint."""
    if not init_from:
        raise ValueError(
            "task=adapt_session needs init_from=<checkpoint of task=pretrain> (e.g. "
            "outputs/pretrain/<date>/checkpoints/last.ckpt): it adapts a pretrained model to "
            "new recordings."
        )
    kind = read_checkpoint_kind(init_from)
    if kind != CHECKPOINT_KIND:
        raise ValueError(
            f"init_from={init_from} is an {kind!r} checkpoint; task=adapt_session adapts a "
            "pretraining checkpoint (task=pretrain, or an earlier task=adapt_session run)."
        )


def _check(cfg: DictConfig) -> None:
    if cfg.task.init not in INIT_MODES:
        raise ValueError(f"task.init must be one of {list(INIT_MODES)}, got {cfg.task.init!r}.")
    check_adaptation_source(cfg.get("init_from"))


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
    check_reads_data(model, dm, f"init_from={init_from}")
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
    return masked_pretraining(cfg, model, dm, model_config), dm


TASK = Task(
    name="adapt_session",
    build=build_session_adaptation,
    checkpoint_kind=CHECKPOINT_KIND,
    check=_check,
    plots=save_pretraining_plots,
    after_test=after_masked_test,
)
