"""NeuroBridge encoders: torch_brain's POYO and CaPOYO with a public ``encode()``.

Both classes subclass the upstream models and leave their ``forward()`` untouched, so the
same weights give the same outputs as upstream. ``encode()`` runs the input embedding, the
PerceiverIO cross-attention and the self-attention stack, and returns the latents that the
upstream decoder (or any NeuroBridge head) reads from.

With ``readout_spec=None`` (POYO) or ``readout_specs=None`` (CaPOYO) the upstream output
decoder and readout are not built: the encoder is then used through ``encode()`` alone, as in
masked pretraining, where a :class:`~neurobridge.models.TargetSequenceDecoder` is the head.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from torch_brain.models import POYO, CaPOYO
from torch_brain.nn.loss import MSELoss
from torch_brain.registry import DataType, ModalitySpec

from neurobridge.modality import Modality

__all__ = ["NeuroBridgePOYO", "NeuroBridgeCaPOYO"]

_UPSTREAM_HEAD_MODULES = ("dec_atn", "dec_ffn", "readout")


def _placeholder_spec() -> ModalitySpec:
    """A one-dimensional spec used only to run the upstream constructor."""
    return ModalitySpec(
        id=0,
        dim=1,
        type=DataType.CONTINUOUS,
        timestamp_key="",
        value_key="",
        loss_fn=MSELoss(),
    )


def _drop_upstream_head(model: torch.nn.Module, extra: tuple[str, ...] = ()) -> None:
    for name in _UPSTREAM_HEAD_MODULES + extra:
        delattr(model, name)
        setattr(model, name, None)


class _EncoderMixin:
    """What NeuroBridgePOYO and NeuroBridgeCaPOYO share on top of their upstream class."""

    @property
    def unit_emb_dim(self) -> int:
        """Width of the unit embedding (``dim`` for POYO, ``dim // 2`` for CaPOYO)."""
        return self.unit_emb.embedding_dim

    def forward(self, **kwargs):  # noqa: D102 - upstream behaviour
        if not self.has_upstream_head:
            raise RuntimeError(
                f"This {type(self).__name__} was built without a readout spec and has no "
                "upstream decoder: use encode(), or pass the readout spec(s) to use the "
                "upstream forward()."
            )
        return super().forward(**kwargs)

    def layer_parameters(self) -> list[list[torch.nn.Parameter]]:
        """The parameters of :meth:`encode`'s layers, bottom to top: the input cross-attention
        that forms the latents (with its feed-forward, the latent and the anchor embeddings),
        then each processor layer. The token embeddings (units, token types, sessions) belong
        to no layer."""
        input_stage = [p for m in (self.enc_atn, self.enc_ffn, self.latent_emb)
                       for p in m.parameters()]
        if self.anchor_emb is not None:
            input_stage.append(self.anchor_emb)
        return [input_stage, *(list(layer.parameters()) for layer in self.proc_layers)]

    def _encode_tokens(
        self,
        inputs: Tensor,
        input_timestamps: Tensor,
        input_mask: Tensor | None,
        latent_index: Tensor,
        latent_timestamps: Tensor,
        latent_prompt: Tensor | None,
    ) -> Tensor:
        """Cross-attend latents to embedded tokens ``[batch, n_in, dim]``, then self-attend."""
        if self.anchor_emb is not None:
            inputs, input_timestamps, input_mask = self._append_anchors(
                inputs, input_timestamps, input_mask, latent_timestamps
            )
        input_timestamp_emb = self.rotary_emb(input_timestamps)
        latents = self.latent_emb(latent_index)
        if latent_prompt is not None:
            latents = latents + latent_prompt[:, None, :]
        latent_timestamp_emb = self.rotary_emb(latent_timestamps)
        latents = self._run(
            self._cross_attend, latents, inputs, latent_timestamp_emb, input_timestamp_emb,
            input_mask,
        )
        for self_attn, self_ff in self.proc_layers:
            latents = self._run(self._process, self_attn, self_ff, latents, latent_timestamp_emb)
        return latents

    def _run(self, block, *args) -> Tensor:
        """``block(*args)``, under activation checkpointing when it is on and autograd records."""
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _cross_attend(
        self, latents: Tensor, inputs: Tensor, latent_timestamp_emb: Tensor,
        input_timestamp_emb: Tensor, input_mask: Tensor | None,
    ) -> Tensor:
        """The PerceiverIO cross-attention + feed-forward: ``[batch, n_latent, dim]``."""
        latents = latents + self.enc_atn(
            latents, inputs, latent_timestamp_emb, input_timestamp_emb, input_mask
        )
        return latents + self.enc_ffn(latents)

    def _process(self, self_attn, self_ff, latents: Tensor, latent_timestamp_emb: Tensor) -> Tensor:
        """One self-attention + feed-forward block of the processor: ``[batch, n_latent, dim]``."""
        latents = latents + self.dropout(self_attn(latents, latent_timestamp_emb))
        return latents + self.dropout(self_ff(latents))

    def _init_extras(self, anchor_tokens: bool, activation_checkpointing: bool) -> None:
        """The NeuroBridge options of ``encode()`` (see the class docstrings)."""
        self.activation_checkpointing = activation_checkpointing
        self.anchor_emb = (
            torch.nn.Parameter(torch.randn(self.dim) * self.dim**-0.5) if anchor_tokens else None
        )

    def _append_anchors(
        self, inputs: Tensor, input_timestamps: Tensor, input_mask: Tensor | None,
        latent_timestamps: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Append one anchor token per latent time: ``[batch, n_in + n_latent, ...]``.

        Softmax cross-attention normalises over the tokens a latent attends to, so a window
        where every unit fires twice as often gives the same weighted average. An anchor (a
        learned, unit-free token at each latent's time) is a fixed reference mass: the share
        of attention left for the spike tokens then grows with how many spikes lie near the
        latent, which keeps spike counts visible to the encoder.
        """
        b, n_latent = latent_timestamps.shape
        anchors = self.anchor_emb.to(inputs.dtype).expand(b, n_latent, -1)
        inputs = torch.cat((inputs, anchors), dim=1)
        input_timestamps = torch.cat((input_timestamps, latent_timestamps), dim=1)
        if input_mask is not None:
            input_mask = torch.cat((input_mask, input_mask.new_ones(b, n_latent)), dim=1)
        return inputs, input_timestamps, input_mask


def _check_vocab(model: POYO | CaPOYO) -> None:
    if model.unit_emb.is_lazy():
        raise ValueError(
            "The unit vocabulary is not initialised: call "
            "`model.unit_emb.initialize_vocab(unit_ids)` (the data module does this from the "
            "recordings) or load a checkpoint before encoding."
        )


def _check_inputs(method: str, tokens: dict, latents: dict) -> None:
    """Shapes and dtypes of :meth:`encode`'s arguments, each error naming the argument.

    ``tokens`` and ``latents`` map a name to ``(tensor or None, dims, kind)`` with ``kind``
    one of ``"integer"``, ``"floating point"``, ``"bool"``; the token arguments share
    ``[batch, n_in]``, the latent ones ``[batch, n_latent]``. Shapes only: no device sync.
    """
    kinds = {"integer": lambda t: not t.is_floating_point() and not t.is_complex()
             and t.dtype is not torch.bool,
             "floating point": lambda t: t.is_floating_point(),
             "bool": lambda t: t.dtype is torch.bool}
    batch = None
    for group, what in ((tokens, "n_in"), (latents, "n_latent")):
        first = None
        for name, (t, dims, kind) in group.items():
            if t is None:
                continue
            shape = f"[batch, {what}{', 1' if dims == 3 else ''}]"
            if not isinstance(t, Tensor):
                raise TypeError(f"{method}: {name} must be a torch.Tensor {shape}, got "
                                f"{type(t).__name__}.")
            if t.ndim != dims or not kinds[kind](t):
                article = "an" if kind[0] in "aeiou" else "a"
                raise ValueError(f"{method}: {name} must be {article} {kind} tensor {shape}, got shape "
                                 f"{tuple(t.shape)} and dtype {t.dtype}.")
            lead = tuple(t.shape[:2])
            first = first or (name, lead)
            if lead != first[1]:
                raise ValueError(f"{method}: {name} has shape {tuple(t.shape)} but {first[0]} "
                                 f"has {first[1]}: they must share {shape[:-1]}].")
            batch = batch or (name, lead[0])
            if lead[0] != batch[1]:
                raise ValueError(f"{method}: {name} has batch size {lead[0]} but {batch[0]} has "
                                 f"{batch[1]}.")


class NeuroBridgePOYO(_EncoderMixin, POYO):
    """POYO with a public :meth:`encode`. Accepts every upstream constructor argument.

    Reads spike events (:attr:`modality` ``Modality.SPIKES``): one token per spike.

    Args:
        readout_spec: as upstream; ``None`` builds an encoder without the upstream output
            decoder (``forward()`` then raises, ``encode()`` works).
        anchor_tokens: ``encode()`` appends one learned anchor token per latent time to the
            inputs, so the cross-attention sees spike counts, not only their composition
            (off: upstream's encoding). ``forward()`` never uses them.
        activation_checkpointing: ``encode()`` recomputes the activations of the
            cross-attention and of each processor layer in the backward pass instead of storing
            them (less memory, about one more encoder forward per step; same gradients).
        **kwargs: the upstream :class:`torch_brain.models.POYO` arguments.
    """

    modality = Modality.SPIKES

    def __init__(
        self,
        *,
        readout_spec: ModalitySpec | None = None,
        anchor_tokens: bool = False,
        activation_checkpointing: bool = False,
        **kwargs,
    ):
        has_head = readout_spec is not None
        super().__init__(readout_spec=readout_spec or _placeholder_spec(), **kwargs)
        self.has_upstream_head = has_head
        self._init_extras(anchor_tokens, activation_checkpointing)
        if not has_head:
            self.readout_spec = None
            _drop_upstream_head(self)

    def encode(
        self,
        *,
        input_unit_index: Tensor,
        input_timestamps: Tensor,
        input_token_type: Tensor,
        input_mask: Tensor | None = None,
        latent_index: Tensor,
        latent_timestamps: Tensor,
        latent_prompt: Tensor | None = None,
    ) -> Tensor:
        """Encode a batch of spike tokens into latents.

        Args:
            input_unit_index: ``[batch, n_in]`` global unit index of each token.
            input_timestamps: ``[batch, n_in]`` token times in seconds from the window start.
            input_token_type: ``[batch, n_in]`` 0 spike, 1 unit start, 2 unit end.
            input_mask: ``[batch, n_in]`` True for real tokens, False for padding.
            latent_index: ``[batch, n_latent]`` latent token identity.
            latent_timestamps: ``[batch, n_latent]`` latent token times in seconds.
            latent_prompt: optional ``[batch, dim]`` vector added to every latent token before
                the cross-attention (e.g. a masking-mode prompt); ``None`` is upstream's path.

        Returns:
            ``[batch, n_latent, dim]`` latents after the self-attention stack.
        """
        _check_vocab(self)
        _check_inputs("NeuroBridgePOYO.encode", {
            "input_unit_index": (input_unit_index, 2, "integer"),
            "input_timestamps": (input_timestamps, 2, "floating point"),
            "input_token_type": (input_token_type, 2, "integer"),
            "input_mask": (input_mask, 2, "bool")}, {
            "latent_index": (latent_index, 2, "integer"),
            "latent_timestamps": (latent_timestamps, 2, "floating point")})
        inputs = self.unit_emb(input_unit_index) + self.token_type_emb(input_token_type)
        return self._encode_tokens(
            inputs, input_timestamps, input_mask, latent_index, latent_timestamps, latent_prompt
        )


class NeuroBridgeCaPOYO(_EncoderMixin, CaPOYO):
    """CaPOYO (continuous values per token) with a public :meth:`encode`.

    Reads continuous values (:attr:`modality` ``Modality.VALUES``). Each input token carries a
    value (a calcium trace sample upstream; a binned MUA value in
    NeuroBridge), embedded as ``[value_map(value) ‖ unit_emb(unit)]``.

    Args:
        readout_specs: as upstream; ``None`` builds an encoder without the upstream output
            decoder, readout and task embedding.
        anchor_tokens: as for :class:`NeuroBridgePOYO`.
        activation_checkpointing: as for :class:`NeuroBridgePOYO`.
        **kwargs: the upstream :class:`torch_brain.models.CaPOYO` arguments.
    """

    modality = Modality.VALUES

    def __init__(
        self,
        *,
        readout_specs: dict[str, ModalitySpec] | None = None,
        anchor_tokens: bool = False,
        activation_checkpointing: bool = False,
        **kwargs,
    ):
        has_head = readout_specs is not None
        if has_head:
            super().__init__(readout_specs=readout_specs, **kwargs)
        else:
            super().__init__(readout_specs={"_": _placeholder_spec()}, **kwargs)
            self.readout_specs = None
            _drop_upstream_head(self, extra=("task_emb",))
        self.has_upstream_head = has_head
        self._init_extras(anchor_tokens, activation_checkpointing)

    def encode(
        self,
        *,
        input_unit_index: Tensor,
        input_timestamps: Tensor,
        input_values: Tensor,
        input_mask: Tensor | None = None,
        latent_index: Tensor,
        latent_timestamps: Tensor,
        latent_prompt: Tensor | None = None,
    ) -> Tensor:
        """Encode a batch of value tokens into latents.

        Args:
            input_unit_index: ``[batch, n_in]`` global unit (channel) index of each token.
            input_timestamps: ``[batch, n_in]`` token times in seconds from the window start.
            input_values: ``[batch, n_in, 1]`` token values.
            input_mask: ``[batch, n_in]`` True for real tokens, False for padding.
            latent_index: ``[batch, n_latent]`` latent token identity.
            latent_timestamps: ``[batch, n_latent]`` latent token times in seconds.
            latent_prompt: optional ``[batch, dim]`` vector added to every latent token before
                the cross-attention (e.g. a masking-mode prompt); ``None`` is upstream's path.

        Returns:
            ``[batch, n_latent, dim]`` latents after the self-attention stack.
        """
        _check_vocab(self)
        _check_inputs("NeuroBridgeCaPOYO.encode", {
            "input_unit_index": (input_unit_index, 2, "integer"),
            "input_timestamps": (input_timestamps, 2, "floating point"),
            "input_values": (input_values, 3, "floating point"),
            "input_mask": (input_mask, 2, "bool")}, {
            "latent_index": (latent_index, 2, "integer"),
            "latent_timestamps": (latent_timestamps, 2, "floating point")})
        inputs = torch.cat(
            (self.input_value_map(input_values), self.unit_emb(input_unit_index)), dim=-1
        )
        return self._encode_tokens(
            inputs, input_timestamps, input_mask, latent_index, latent_timestamps, latent_prompt
        )
