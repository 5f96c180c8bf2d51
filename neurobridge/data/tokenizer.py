"""Turns a recording window into masked-pretraining model inputs (runs in DataLoader workers).

Per window: bin the activity onto the neuron × time grid (the targets), draw a mask with the
:class:`~neurobridge.masking.MaskingController`, drop every input token inside a masked cell,
and list the masked cells as decoder queries. Everything is padded with torch_brain's
``pad8`` / ``track_mask8`` so :func:`torch_brain.data.collate` batches it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from temporaldata import Data
from torch_brain.data import pad8, track_mask8
from torch_brain.dataset import DatasetIndex
from torch_brain.utils import create_linspace_latent_tokens, create_start_end_unit_tokens

from neurobridge.data.binning import bin_regular, bin_spikes, num_bins
from neurobridge.masking import MASKING_MODES, MaskingController

__all__ = ["WindowIndex", "MaskedTokenizer"]

log = logging.getLogger(__name__)

UNKNOWN_REGION = "unknown"


@dataclass
class WindowIndex(DatasetIndex):
    """A torch_brain :class:`DatasetIndex` that also fixes the window's mask.

    Attributes:
        mask_seed: seed of the window's mask generator (fixed per eval window, drawn per
            training sample).
        mode: force this masking mode; ``None`` draws one from the controller's probabilities.
        max_queries: decode at most this many masked cells (a uniform random subset, an
            unbiased estimate of the loss over all masked cells); ``None`` decodes all of them.
    """

    mask_seed: int = 0
    mode: str | None = None
    max_queries: int | None = None


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
        latent_step, num_latents_per_step: the encoder's latent grid.
        region_key: field of ``units`` that holds each unit's region.
        value_key: for ``"values"``: ``"<timeseries>.<field>"`` of the regular time series
            holding the channel values, e.g. ``"mua.values"``.
    """

    def __init__(
        self,
        *,
        modality: str,
        unit_vocab: Mapping[str, int],
        session_vocab: Mapping[str, int],
        masking: MaskingController,
        sequence_length: float,
        bin_size: float,
        latent_step: float,
        num_latents_per_step: int,
        region_key: str = "brain_region",
        value_key: str = "mua.values",
    ):
        if modality not in ("spikes", "values"):
            raise ValueError(f"modality must be 'spikes' or 'values', got {modality!r}.")
        self.modality = modality
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

    # ------------------------------------------------------------------ helpers
    def unit_regions(self, data: Data) -> np.ndarray:
        """``[n_units]`` region labels; one shared label (with a warning) if the field is absent."""
        units = data.units
        if self.region_key in units.keys():
            return np.asarray(getattr(units, self.region_key)).astype(str)
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
        ids = np.asarray(data.units.id).astype(str)
        try:
            return np.array([self.unit_vocab[u] for u in ids], dtype=np.int64)
        except KeyError as err:
            raise KeyError(
                f"Unit {err.args[0]!r} of session {data.session.id!r} is not in the model's unit "
                "vocabulary. Initialise the vocabulary from these recordings, or add the new "
                "units to a trained model with encoder.unit_emb.extend_vocab(unit_ids)."
            ) from None

    def grid_targets(self, data: Data, n_units: int) -> tuple[np.ndarray, np.ndarray]:
        """Observed grid ``[n_bins, n_units]`` and ground-truth grid (NaN where unknown)."""
        if self.modality == "spikes":
            grid = bin_spikes(
                data.spikes.timestamps,
                data.spikes.unit_index,
                num_units=n_units,
                start=0.0,
                end=self.sequence_length,
                bin_size=self.bin_size,
            )
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
        """Expected counts (spikes) or clean values per cell when the file stores them."""
        if self.modality == "spikes" and "true_rates" in data.keys():
            series = data.true_rates
            rates = bin_regular(
                series.rates, sampling_rate=series.sampling_rate, bin_size=self.bin_size,
                n_bins=self.n_bins,
            )
            return rates * self.bin_size
        if self.modality == "values":
            series = getattr(data, self.value_series)
            if "clean" in series.keys():
                return bin_regular(
                    series.clean, sampling_rate=series.sampling_rate, bin_size=self.bin_size,
                    n_bins=self.n_bins,
                )
        return np.full((self.n_bins, n_units), np.nan, dtype=np.float32)

    # ------------------------------------------------------------------ main
    def __call__(self, data: Data, index: WindowIndex) -> dict:
        n_units = len(data.units.id)
        unit_index = self.global_unit_index(data)
        regions = self.unit_regions(data)
        session_index = self.session_vocab[str(data.session.id)]

        grid, true_grid = self.grid_targets(data, n_units)
        rng = np.random.default_rng(index.mask_seed)
        gm = self.masking.sample(n_bins=self.n_bins, unit_regions=regions, rng=rng, mode=index.mode)
        mask = gm.mask

        encoder_inputs = self._tokens(data, unit_index, grid, mask)

        q_bin, q_unit = np.nonzero(mask)
        if index.max_queries is not None and len(q_bin) > index.max_queries:
            pick = np.sort(rng.choice(len(q_bin), size=index.max_queries, replace=False))
            q_bin, q_unit = q_bin[pick], q_unit[pick]
        return {
            "encoder_inputs": encoder_inputs,
            "query_unit_index": pad8(unit_index[q_unit]),
            "query_timestamps": pad8(self.bin_centers[q_bin]),
            "query_session_index": pad8(np.full(len(q_bin), session_index, dtype=np.int64)),
            "query_mask": track_mask8(q_bin),
            "query_bin": pad8(q_bin.astype(np.int64)),
            "query_unit": pad8(q_unit.astype(np.int64)),
            "target": pad8(grid[q_bin, q_unit]),
            "true_target": pad8(true_grid[q_bin, q_unit]),
            # full grids, units first so pad8 pads across sessions with different unit counts
            "grid": pad8(np.ascontiguousarray(grid.T)),
            "grid_mask": pad8(np.ascontiguousarray(mask.T)),
            "grid_unit_index": pad8(unit_index),
            "mode": MASKING_MODES.index(gm.mode),
            "requested_mode": MASKING_MODES.index(gm.requested_mode),
            "session_index": session_index,
            "window_start": float(data.absolute_start),
        }

    def encoder_tokens(self, data: Data, mask: np.ndarray | None = None) -> dict:
        """Encoder inputs of a window with the cells of ``mask`` ``[n_bins, n_units]`` removed
        (nothing removed by default)."""
        n_units = len(data.units.id)
        if mask is None:
            mask = np.zeros((self.n_bins, n_units), dtype=bool)
        grid = None if self.modality == "spikes" else self.grid_targets(data, n_units)[0]
        return self._tokens(data, self.global_unit_index(data), grid, mask)

    def _tokens(self, data: Data, unit_index: np.ndarray, grid, mask: np.ndarray) -> dict:
        if self.modality == "spikes":
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
        se_type, se_unit, se_ts = create_start_end_unit_tokens(
            visible_units, 0.0, self.sequence_length
        )
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

    def _value_tokens(self, grid: np.ndarray, unit_index: np.ndarray, mask: np.ndarray) -> dict:
        b, u = np.nonzero(~mask)
        return {
            "input_unit_index": pad8(unit_index[u]),
            "input_timestamps": pad8(self.bin_centers[b]),
            "input_values": pad8(grid[b, u][:, None].astype(np.float32)),
            "input_mask": track_mask8(b),
        }
