"""An ensemble of masked models that predicts the mean of its members' outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from neurobridge.modality import Modality
from neurobridge.models.masked_model import MaskedModel

__all__ = ["MaskedModelEnsemble"]

#: encoder attributes the shared tokenizer reads: members must agree on all of them
_TOKENIZER_ATTRIBUTES = ("sequence_length", "latent_step", "num_latents_per_step")


class MaskedModelEnsemble(nn.Module):
    """Averages the predictions of independently trained :class:`MaskedModel` s.

    Spiking members predict log-rates and the ensemble returns their mean (the geometric mean
    of the rates): the Poisson log-likelihood is concave in the log-rate, so the ensemble's
    log-likelihood on any cells is at least the members' mean. Value members return values and
    the ensemble their mean.

    The members read one batch, so they must share the tokenizer's inputs: the same modality,
    the same unit and session vocabularies in the same token order (models trained on the same
    recordings have them), and the same window and latent grid. ``encoder`` is the first
    member's (its vocabularies and grid are everyone's), so the ensemble works wherever a
    :class:`MaskedModel` is expected for evaluation.

    Args:
        members: two or more masked models (one is allowed: the ensemble is then that model).
        names: one name per member for the error messages (e.g. checkpoint paths).
    """

    def __init__(self, members: Sequence[MaskedModel], names: Sequence[str] | None = None):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("MaskedModelEnsemble needs at least one member.")
        names = [str(n) for n in names] if names is not None else [f"member {i}" for i in range(len(members))]
        if len(names) != len(members):
            raise ValueError(f"Got {len(names)} names for {len(members)} members.")
        first, first_name = members[0], names[0]
        for model, name in zip(members[1:], names[1:]):
            if model.modality != first.modality:
                raise ValueError(
                    f"{name} reads {model.modality} but {first_name} reads {first.modality}: "
                    "an ensemble's members must read the same modality."
                )
            for attr in _TOKENIZER_ATTRIBUTES:
                a, b = getattr(model.encoder, attr), getattr(first.encoder, attr)
                if a != b:
                    raise ValueError(
                        f"{name} has encoder.{attr}={a} but {first_name} has {b}: the members "
                        "read one tokenized batch, so their windows and latent grids must match."
                    )
            for emb in ("unit_emb", "session_emb"):
                ours, theirs = getattr(model.encoder, emb).vocab, getattr(first.encoder, emb).vocab
                if list(ours.items()) != list(theirs.items()):
                    missing = [w for w in theirs if w not in ours][:3]
                    raise ValueError(
                        f"{name} and {first_name} have different {emb.split('_')[0]} "
                        f"vocabularies ({len(ours)} vs {len(theirs)} words"
                        + (f"; e.g. {missing} only in {first_name}" if missing else "; another order")
                        + "): ensemble models trained on the same recordings."
                    )
        self.members = nn.ModuleList(members)

    @property
    def encoder(self):
        """The first member's encoder (vocabularies and window grid shared by all members)."""
        return self.members[0].encoder

    @property
    def modality(self) -> Modality:
        """What every member reads."""
        return self.members[0].modality

    def forward(self, **inputs) -> Tensor:
        """The members' mean prediction: ``[batch, n_query]`` (see :meth:`MaskedModel.forward`)."""
        return torch.stack([member(**inputs) for member in self.members]).mean(dim=0)
