"""Turns a recording window into masked-pretraining model inputs (runs in DataLoader workers).

Per window: bin the activity onto the neuron × time grid (the targets), draw a mask with the
:class:`~neurobridge.masking.MaskingController`, drop every input token inside a masked cell,
and list the masked cells as decoder queries. Everything is padded with torch_brain's
``pad8`` / ``track_mask8`` so :func:`torch_brain.data.collate` batches it.

A ``values`` run reads each recording's value series; with ``spike_values`` set, a recording
that has spikes but no value series is read as (transformed) binned spike counts instead, so
one CaPOYO model sees both kinds of recording. The choice is made per window from the fields
the recording holds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from temporaldata import Data
from torch_brain.data import pad8, track_mask8
from torch_brain.utils import create_linspace_latent_tokens, create_start_end_unit_tokens

from neurobridge.data.batch import MaskedSample
from neurobridge.data.binning import bin_regular, bin_spikes, num_bins
from neurobridge.data.index import WindowIndex
from neurobridge.data.spike_values import (
    VALUE_SOURCES,
    check_spike_values,
    expected_spike_values,
    spike_values_from_counts,
)
from neurobridge.masking import MASKING_MODES, MaskingController
from neurobridge.memo import MemoByIdentity
from neurobridge.modality import Modality

__all__ = ["MaskedTokenizer"]

log = logging.getLogger(__name__)

UNKNOWN_REGION = "unknown"


class MaskedTokenizer:
    """Builds model inputs, decoder queries and targets for one window.

    Args:
        modality: ``"spikes"`` (POYO tokens, one per spike, Poisson targets = counts) or
            ``"values"`` (CaPOYO tokens, one per visible (channel, bin) value, MSE targets).
        unit_vocab: global unit id → embedding index (the encoder's ``unit_emb.vocab``).
        session_vocab: session id → embedding index (the encoder's ``session_emb.vocab``).
        masking: the masking controller.
        sequence_length: window length in seconds.
        bin_size: grid bin width in seconds.
        latent_step: the encoder's latent grid step in seconds.
        num_latents_per_step: the encoder's latents per grid step.
        region_key: field of ``units`` that holds each unit's region.
        value_key: for ``"values"``: ``"<timeseries>.<field>"`` of the regular time series
            holding the channel values, e.g. ``"mua.values"``.
        spike_values: for ``"values"``: how a window without that series but with spikes is
            read (one of :data:`SPIKE_VALUES`: binned counts per (unit, bin), or their square
            root); ``None`` (default) reads the value series only. With it set, each sample
            also carries ``value_source`` (an index into :data:`VALUE_SOURCES`).
        spike_value_stats: ``{session_id: (mean, std)}``, per-unit ``[n_units]`` statistics
            of the spike-derived values; spike-derived values (and their ground truth) of
            those sessions are standardised as ``(value - mean) / std``.
        binned_inputs: ``"spikes"`` only: give the encoder the masked counts per (unit, bin)
            (``input_counts``, ``input_observed`` ``[units, bins]``, ``input_unit_index``,
            ``input_session_index``) instead of spike tokens, for encoders that read binned
            counts (``reads_binned_counts``, the NDT-style peer).
    """

    def __init__(
        self,
        *,
        modality: Modality | str,
        unit_vocab: Mapping[str, int],
        session_vocab: Mapping[str, int],
        masking: MaskingController,
        sequence_length: float,
        bin_size: float,
        latent_step: float,
        num_latents_per_step: int,
        region_key: str = "brain_region",
        value_key: str = "mua.values",
        spike_values: str | None = None,
        spike_value_stats: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
        binned_inputs: bool = False,
    ):
        self.modality = Modality.parse(modality, "modality")
        check_spike_values(spike_values, self.modality)
        self.spike_values = spike_values
        if binned_inputs and self.modality is not Modality.SPIKES:
            raise ValueError("binned_inputs reads spike counts: it needs modality='spikes'.")
        self.binned_inputs = binned_inputs
        self.spike_value_stats = {
            str(k): (np.asarray(m, dtype=np.float32), np.asarray(sd, dtype=np.float32))
            for k, (m, sd) in (spike_value_stats or {}).items()
        }
        self.unit_vocab = dict(unit_vocab)
        self.session_vocab = dict(session_vocab)
        self.masking = masking
        self.sequence_length = float(sequence_length)
        self.bin_size = float(bin_size)
        self.n_bins = num_bins(self.sequence_length, self.bin_size)
        self.region_key = region_key
        self.value_key = value_key
        self.value_series, _, self.value_field = value_key.partition(".")
        self.latent_index, self.latent_timestamps = create_linspace_latent_tokens(
            0.0, self.sequence_length, step=latent_step, num_latents_per_step=num_latents_per_step
        )
        self.bin_centers = ((np.arange(self.n_bins) + 0.5) * self.bin_size).astype(np.float32)
        self._warned_regions: set[str] = set()
        self._start_end: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        # per-recording lookups, made once for the units arrays a RecordingReader shares
        self._unit_index = MemoByIdentity(self._unit_index_of)
        self._regions = MemoByIdentity(_as_str)

    # ------------------------------------------------------------------ helpers
    def unit_regions(self, data: Data) -> np.ndarray:
        """``[n_units]`` region labels; one shared label (with a warning) if the field is absent."""
        units = data.units
        if self.region_key in units.keys():
            return self._regions(getattr(units, self.region_key))
        sid = str(data.session.id)
        if sid not in self._warned_regions:
            self._warned_regions.add(sid)
            log.warning(
                "Recording %s has no units.%s field: all its units are treated as one region "
                "(inter-region masking will fall back to neuron masking). Set data.region_key "
                "to the field that holds the region, or add it to the file.",
                sid,
                self.region_key,
            )
        return np.full(len(units.id), UNKNOWN_REGION)

    def global_unit_index(self, data: Data) -> np.ndarray:
        """``[n_units]`` vocabulary index of each unit (a fresh array)."""
        return self._unit_index(data.units.id, data.session.id).copy()

    def _unit_index_of(self, unit_ids: np.ndarray, session_id) -> np.ndarray:
        try:
            return np.array([self.unit_vocab[u] for u in np.asarray(unit_ids).astype(str)],
                            dtype=np.int64)
        except KeyError as err:
            raise KeyError(
                f"Unit {err.args[0]!r} of session {session_id!r} is not in the model's unit "
                "vocabulary. Initialise the vocabulary from these recordings, or add the new "
                "units to a trained model with encoder.unit_emb.extend_vocab(unit_ids)."
            ) from None

    def value_source(self, data: Data) -> str:
        """Where a ``values`` window's values come from (one of :data:`VALUE_SOURCES`): the
        value series when the recording has it, else its spikes when ``spike_values`` is set."""
        if self.value_series in data.keys() or self.spike_values is None:
            return "value_series"
        if "spikes" in data.keys():
            return "spikes"
        raise ValueError(
            f"Session {data.session.id!r} has neither {self.value_key} nor spikes: a values run "
            f"reads {self.value_key}, or spikes with data.spike_values."
        )

    def _spike_counts(self, data: Data, n_units: int) -> np.ndarray:
        return bin_spikes(
            data.spikes.timestamps,
            data.spikes.unit_index,
            num_units=n_units,
            start=0.0,
            end=self.sequence_length,
            bin_size=self.bin_size,
        )

    def _standardise(self, data: Data, values: np.ndarray) -> np.ndarray:
        stats = self.spike_value_stats.get(str(data.session.id))
        if stats is None:
            return values
        mean, std = stats
        return ((values - mean) / std).astype(np.float32)

    def grid_targets(self, data: Data, n_units: int) -> tuple[np.ndarray, np.ndarray]:
        """Observed grid ``[n_bins, n_units]`` and ground-truth grid (NaN where unknown)."""
        if self.modality is Modality.SPIKES:
            grid = self._spike_counts(data, n_units)
        elif self.value_source(data) == "spikes":
            counts = self._spike_counts(data, n_units)
            grid = self._standardise(data, spike_values_from_counts(counts, self.spike_values))
        else:
            series = getattr(data, self.value_series)
            grid = bin_regular(
                getattr(series, self.value_field),
                sampling_rate=series.sampling_rate,
                bin_size=self.bin_size,
                n_bins=self.n_bins,
            )
            if not np.isfinite(grid).all():
                raise ValueError(
                    f"Session {data.session.id!r}: {self.value_key} has NaN/Inf values (or no "
                    f"sample in a {self.bin_size} s bin) in the window starting at "
                    f"{data.absolute_start:.3f} s. Clean or interpolate the signal before training."
                )
        return grid, self.true_grid(data, n_units)

    def true_grid(self, data: Data, n_units: int) -> np.ndarray:
        """Expected counts (spikes) or clean values per cell when the file stores them.

        A spike-derived ``values`` window (``spike_values``) gets the expected value of its
        transformed count given the true rates (:func:`expected_spike_values`), standardised
        like the values.
        """
        from_spikes = self.modality is Modality.SPIKES or self.value_source(data) == "spikes"
        if from_spikes and "true_rates" in data.keys():
            series = data.true_rates
            rates = bin_regular(
                series.rates, sampling_rate=series.sampling_rate, bin_size=self.bin_size,
                n_bins=self.n_bins,
            )
            if self.modality is Modality.SPIKES:
                return rates * self.bin_size
            expected = expected_spike_values(rates * self.bin_size, self.spike_values)
            return self._standardise(data, expected)
        if self.modality is Modality.VALUES and not from_spikes:
            series = getattr(data, self.value_series)
            if "clean" in series.keys():
                return bin_regular(
                    series.clean, sampling_rate=series.sampling_rate, bin_size=self.bin_size,
                    n_bins=self.n_bins,
                )
        return np.full((self.n_bins, n_units), np.nan, dtype=np.float32)

    # ------------------------------------------------------------------ main
    def __call__(self, data: Data, index: WindowIndex) -> MaskedSample:
        rng = np.random.default_rng(index.mask_seed)
        gm = self.masking.sample(n_bins=self.n_bins, unit_regions=self.unit_regions(data),
                                 rng=rng, mode=index.mode)
        return self.sample(data, gm.mask, mode=gm.mode, requested_mode=gm.requested_mode,
                           rng=rng, max_queries=index.max_queries,
                           unmasked_queries=index.unmasked_queries)

    def sample(
        self,
        data: Data,
        mask: np.ndarray,
        *,
        mode: str,
        requested_mode: str | None = None,
        rng: np.random.Generator | None = None,
        max_queries: int | None = None,
        unmasked_queries: int = 0,
    ) -> MaskedSample:
        """The sample of a window under a given ``mask`` ``[n_bins, n_units]`` (True = hidden
        from the encoder and scored); ``mode`` is the masking mode the model is told.

        ``max_queries`` subsamples the masked cells and ``unmasked_queries`` adds visible cells
        as decoder queries (both drawn with ``rng``); ``unmasked_queries >= mask.size`` decodes
        every cell of the grid.
        """
        n_units = len(data.units.id)
        unit_index = self.global_unit_index(data)
        session_index = self.session_vocab[str(data.session.id)]
        grid, true_grid = self.grid_targets(data, n_units)
        rng = np.random.default_rng(0) if rng is None else rng

        encoder_inputs = self._tokens(data, unit_index, grid, mask)

        q_bin, q_unit = np.nonzero(mask)
        if max_queries is not None and len(q_bin) > max_queries:
            pick = np.sort(rng.choice(len(q_bin), size=max_queries, replace=False))
            q_bin, q_unit = q_bin[pick], q_unit[pick]
        n_masked = len(q_bin)
        if unmasked_queries > 0:  # drawn after the masked cells: those stay the same
            v_bin, v_unit = np.nonzero(~mask)
            n = min(unmasked_queries, len(v_bin))
            pick = np.sort(rng.choice(len(v_bin), size=n, replace=False))
            q_bin = np.concatenate([q_bin, v_bin[pick]])
            q_unit = np.concatenate([q_unit, v_unit[pick]])
        visible = np.arange(len(q_bin)) >= n_masked
        out = {
            "encoder_inputs": encoder_inputs,
            "query_unit_index": pad8(unit_index[q_unit]),
            "query_timestamps": pad8(self.bin_centers[q_bin]),
            "query_session_index": pad8(np.full(len(q_bin), session_index, dtype=np.int64)),
            # query_mask: decoded masked cells (the loss and the metrics); query_visible: decoded
            # cells the encoder saw (data.train_unmasked_queries); padding is in neither
            "query_mask": pad8(torch.from_numpy(~visible)),
            "query_visible": pad8(torch.from_numpy(visible)),
            "query_bin": pad8(q_bin.astype(np.int64)),
            "query_unit": pad8(q_unit.astype(np.int64)),
            "target": pad8(grid[q_bin, q_unit]),
            "true_target": pad8(true_grid[q_bin, q_unit]),
            # full grids, units first so pad8 pads across sessions with different unit counts
            "grid": pad8(np.ascontiguousarray(grid.T)),
            "grid_mask": pad8(np.ascontiguousarray(mask.T)),
            "grid_unit_index": pad8(unit_index),
            "mode": MASKING_MODES.index(mode),
            "requested_mode": MASKING_MODES.index(requested_mode or mode),
            "session_index": session_index,
            "window_start": float(data.absolute_start),
        }
        if self.modality is Modality.VALUES and self.spike_values is not None:
            out["value_source"] = VALUE_SOURCES.index(self.value_source(data))
        return out

    def encoder_tokens(self, data: Data, mask: np.ndarray | None = None) -> dict:
        """Encoder inputs of a window with the cells of ``mask`` ``[n_bins, n_units]`` removed
        (nothing removed by default)."""
        n_units = len(data.units.id)
        if mask is None:
            mask = np.zeros((self.n_bins, n_units), dtype=bool)
        grid = None if self.modality is Modality.SPIKES else self.grid_targets(data, n_units)[0]
        return self._tokens(data, self.global_unit_index(data), grid, mask)

    def _tokens(self, data: Data, unit_index: np.ndarray, grid, mask: np.ndarray) -> dict:
        if self.binned_inputs:
            out = self._binned_inputs(data, unit_index, grid, mask)
        elif self.modality is Modality.SPIKES:
            out = self._spike_tokens(data, unit_index, mask)
        else:
            out = self._value_tokens(grid, unit_index, mask)
        out["latent_index"] = self.latent_index
        out["latent_timestamps"] = self.latent_timestamps.astype(np.float32)
        return out

    def _spike_tokens(self, data: Data, unit_index: np.ndarray, mask: np.ndarray) -> dict:
        ts = np.asarray(data.spikes.timestamps, dtype=np.float64)
        local = np.asarray(data.spikes.unit_index, dtype=np.int64)
        bins = np.clip(np.floor(ts / self.bin_size).astype(np.int64), 0, self.n_bins - 1)
        keep = ~mask[bins, local]
        # start/end tokens only for units that keep at least one visible cell
        visible_units = np.flatnonzero(~mask.all(axis=0))
        se_type, se_unit, se_ts = self._start_end_tokens(len(visible_units))
        se_unit = visible_units[se_unit]
        token_type = np.concatenate([se_type, np.zeros(keep.sum(), dtype=np.int64)])
        units = unit_index[np.concatenate([se_unit, local[keep]])]
        times = np.concatenate([se_ts, ts[keep]]).astype(np.float32)
        return {
            "input_unit_index": pad8(units),
            "input_timestamps": pad8(times),
            "input_token_type": pad8(token_type),
            "input_mask": track_mask8(units),
        }

    def _start_end_tokens(self, n_units: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """torch_brain's start and end tokens of ``n_units`` units (type, position, time),
        made once per unit count."""
        tokens = self._start_end.get(n_units)
        if tokens is None:
            tokens = self._start_end[n_units] = create_start_end_unit_tokens(
                np.arange(n_units), 0.0, self.sequence_length)
        return tokens

    def _binned_inputs(self, data: Data, unit_index: np.ndarray, grid, mask: np.ndarray) -> dict:
        """Masked counts per (unit, bin), units first so pad8 pads across sessions."""
        counts = self._spike_counts(data, len(unit_index)) if grid is None else grid
        return {
            "input_counts": pad8(np.ascontiguousarray(np.where(mask, 0, counts).T, np.float32)),
            "input_observed": pad8(np.ascontiguousarray(~mask.T)),
            "input_unit_index": pad8(unit_index),
            "input_session_index": self.session_vocab[str(data.session.id)],
        }

    def _value_tokens(self, grid: np.ndarray, unit_index: np.ndarray, mask: np.ndarray) -> dict:
        b, u = np.nonzero(~mask)
        return {
            "input_unit_index": pad8(unit_index[u]),
            "input_timestamps": pad8(self.bin_centers[b]),
            "input_values": pad8(grid[b, u][:, None].astype(np.float32)),
            "input_mask": track_mask8(b),
        }


def _as_str(labels) -> np.ndarray:
    return np.asarray(labels).astype(str)
