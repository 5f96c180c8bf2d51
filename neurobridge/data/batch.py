"""The batch contract: every key a tokenizer produces, with its shape and dtype, in one place.

:class:`~neurobridge.data.MaskedTokenizer` returns one :class:`MaskedSample` per window
(arrays padded with torch_brain's ``pad8`` / ``track_mask8``); :func:`torch_brain.data.collate`
stacks them into a :class:`MaskedBatch` of tensors. Shapes below are those of the batch: ``B``
windows, ``N`` input tokens, ``L`` latents, ``Q`` decoded cells, ``U`` units (each padded to
the batch's largest window). A :class:`StimulusBatch` is what
:class:`~neurobridge.data.StimulusTokenizer` gives for stimulus-locked windows.

These are :class:`typing.TypedDict` s: at run time a batch is a plain ``dict``, so Lightning,
``collate`` and device transfer handle it as before; the classes document and type it.
"""

from __future__ import annotations

from typing import Any, TypedDict

from torch import Tensor

__all__ = [
    "MaskedBatch",
    "MaskedSample",
    "SpikeEncoderInputs",
    "StimulusBatch",
    "ValueEncoderInputs",
]


class SpikeEncoderInputs(TypedDict):
    """Keyword arguments of :meth:`NeuroBridgePOYO.encode` (one token per visible spike, plus a
    start and an end token per unit that keeps a visible cell)."""

    input_unit_index: Tensor  #: ``[B, N]`` int64 global unit index of each token
    input_timestamps: Tensor  #: ``[B, N]`` float32 seconds from the window start
    input_token_type: Tensor  #: ``[B, N]`` int64: 0 spike, 1 unit start, 2 unit end
    input_mask: Tensor  #: ``[B, N]`` bool, True for real tokens, False for padding
    latent_index: Tensor  #: ``[B, L]`` int64 latent token identity
    latent_timestamps: Tensor  #: ``[B, L]`` float32 latent times in seconds


class ValueEncoderInputs(TypedDict):
    """Keyword arguments of :meth:`NeuroBridgeCaPOYO.encode` (one token per visible
    (channel, bin) value, at the bin centre)."""

    input_unit_index: Tensor  #: ``[B, N]`` int64 global unit (channel) index of each token
    input_timestamps: Tensor  #: ``[B, N]`` float32 bin-centre seconds from the window start
    input_values: Tensor  #: ``[B, N, 1]`` float32 binned value
    input_mask: Tensor  #: ``[B, N]`` bool, True for real tokens
    latent_index: Tensor  #: ``[B, L]`` int64
    latent_timestamps: Tensor  #: ``[B, L]`` float32


class _MaskedBatchKeys(TypedDict):
    encoder_inputs: SpikeEncoderInputs | ValueEncoderInputs  #: the visible tokens only
    query_unit_index: Tensor  #: ``[B, Q]`` int64 global unit index of each decoded cell
    query_timestamps: Tensor  #: ``[B, Q]`` float32 bin-centre time of each decoded cell
    query_session_index: Tensor  #: ``[B, Q]`` int64 session index (0 on padding)
    query_mask: Tensor  #: ``[B, Q]`` bool: a decoded masked cell (loss and metrics)
    query_visible: Tensor  #: ``[B, Q]`` bool: a decoded cell the encoder saw (optional loss)
    query_bin: Tensor  #: ``[B, Q]`` int64 bin of each decoded cell in the window's grid
    query_unit: Tensor  #: ``[B, Q]`` int64 unit of each decoded cell in the window (local)
    target: Tensor  #: ``[B, Q]`` float32 observed count (spikes) or value of each cell
    true_target: Tensor  #: ``[B, Q]`` float32 expected count / clean value; NaN if unknown
    grid: Tensor  #: ``[B, U, n_bins]`` float32 the whole observed grid, units first
    grid_mask: Tensor  #: ``[B, U, n_bins]`` bool, True where a cell is masked
    grid_unit_index: Tensor  #: ``[B, U]`` int64 global unit index of the grid's rows (0: pad)
    mode: Tensor  #: ``[B]`` int64 masking mode applied (index into ``MASKING_MODES``)
    requested_mode: Tensor  #: ``[B]`` int64 mode drawn (differs on inter-region fallback)
    session_index: Tensor  #: ``[B]`` int64 session index of the window
    window_start: Tensor  #: ``[B]`` float64 absolute start time of the window in seconds


class MaskedBatch(_MaskedBatchKeys, total=False):
    """A collated batch of masked-pretraining samples (see the module docstring for shapes).

    ``value_source`` (``[B]`` int64, an index into
    :data:`~neurobridge.data.spike_values.VALUE_SOURCES`) is present only in a values run that
    reads spiking recordings too (``data.spike_values``).
    """

    value_source: Tensor


#: One window's sample, before :func:`torch_brain.data.collate`: the keys of
#: :class:`MaskedBatch`, each without the batch dimension (padded arrays and scalars).
MaskedSample = dict[str, Any]


class _StimulusBatchKeys(TypedDict):
    encoder_inputs: SpikeEncoderInputs | ValueEncoderInputs  #: the whole window, unmasked
    image_index: Tensor  #: ``[B]`` int64 row of the image in the image-embedding table
    session_index: Tensor  #: ``[B]`` int64
    onset: Tensor  #: ``[B]`` float64 absolute onset time of the presentation in seconds


class StimulusBatch(_StimulusBatchKeys, total=False):
    """A collated batch of stimulus-locked windows; ``masked`` (a :class:`MaskedBatch` of the
    same windows, finetune's reconstruction loss) and ``pixels`` (``[B, 3, H, W]`` float32 in
    ``[0, 1]``, diffusion adapter) only when the tokenizer was asked for them."""

    masked: MaskedBatch
    pixels: Tensor
