"""Multi-task masking of the neuron × time grid: temporal, neuron, intra- and inter-region.

The controller draws one mode per sample and returns a boolean grid ``[n_bins, n_units]``
(True = masked). The tokenizer removes every input token that falls in a masked cell before
the encoder, and the loss is computed on exactly the masked cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from neurobridge.memo import MemoByIdentity

__all__ = ["MASKING_MODES", "GridMask", "MaskingController"]

MASKING_MODES: tuple[str, ...] = ("temporal", "neuron", "intra_region", "inter_region")


@dataclass(frozen=True)
class GridMask:
    """One sample's mask.

    Attributes:
        mask: ``[n_bins, n_units]`` bool, True where the cell is hidden from the encoder and
            scored by the loss.
        mode: the mode that was applied.
        requested_mode: the mode that was drawn; differs from ``mode`` when inter-region
            masking fell back to neuron masking because the window had fewer than 2 regions.
        region: the region that was masked (intra/inter-region modes), else ``None``.
    """

    mask: np.ndarray
    mode: str
    requested_mode: str
    region: str | None = None

    @property
    def fell_back(self) -> bool:
        return self.mode != self.requested_mode


def _check_ratio(name: str, value: Sequence[float]) -> tuple[float, float]:
    if len(value) != 2:
        raise ValueError(f"masking.{name} must be a [low, high] pair, got {list(value)}.")
    low, high = float(value[0]), float(value[1])
    if not (0.0 < low <= high < 1.0):
        raise ValueError(
            f"masking.{name} must satisfy 0 < low <= high < 1, got [{low}, {high}]. "
            "Ratios are fractions of time bins or units to hide."
        )
    return low, high


class MaskingController:
    """Draws a masking mode and mask for each sample.

    Args:
        mode_probs: probability of each mode (keys from :data:`MASKING_MODES`; missing modes
            get 0), normalised to sum to 1; ``None``: the four modes equally likely.
        temporal_ratio: ``[low, high]`` fraction of time bins masked (all units) in temporal mode.
        neuron_ratio: ``[low, high]`` fraction of units masked (all bins) in neuron mode.
        intra_region_ratio: ``[low, high]`` fraction of one region's units masked in
            intra-region mode.

    Inter-region mode masks all units of one region; it needs at least 2 regions with units in
    the window and otherwise falls back to neuron mode (reported by ``GridMask.fell_back``).
    Every mask leaves at least one unit and one bin visible.
    """

    def __init__(
        self,
        *,
        mode_probs: Mapping[str, float] | None = None,
        temporal_ratio: Sequence[float] = (0.5, 0.75),
        neuron_ratio: Sequence[float] = (0.3, 0.5),
        intra_region_ratio: Sequence[float] = (0.5, 0.75),
    ):
        if mode_probs is None:
            mode_probs = dict.fromkeys(MASKING_MODES, 1.0)
        if not isinstance(mode_probs, Mapping):
            raise ValueError(
                "masking.mode_probs must be a mapping of modes to probabilities, e.g. "
                f"'{{neuron: 0.5, inter_region: 0.5}}', or null (all four modes), got "
                f"{mode_probs!r}."
            )
        unknown = set(mode_probs) - set(MASKING_MODES)
        if unknown:
            raise ValueError(
                f"masking.mode_probs has unknown modes {sorted(unknown)}; "
                f"valid modes are {list(MASKING_MODES)}."
            )
        probs = np.array([float(mode_probs.get(m, 0.0)) for m in MASKING_MODES])
        if np.any(probs < 0) or not np.isfinite(probs).all() or probs.sum() <= 0:
            raise ValueError(
                f"masking.mode_probs must be non-negative with a positive sum, got {dict(mode_probs)}."
            )
        self.mode_probs = probs / probs.sum()
        self.temporal_ratio = _check_ratio("temporal_ratio", temporal_ratio)
        self.neuron_ratio = _check_ratio("neuron_ratio", neuron_ratio)
        self.intra_region_ratio = _check_ratio("intra_region_ratio", intra_region_ratio)
        self._factorised = MemoByIdentity(_factorise)

    @property
    def enabled_modes(self) -> list[str]:
        return [m for m, p in zip(MASKING_MODES, self.mode_probs) if p > 0]

    def sample(
        self,
        *,
        n_bins: int,
        unit_regions: np.ndarray,
        rng: np.random.Generator,
        mode: str | None = None,
    ) -> GridMask:
        """Draw a mask for one window.

        Args:
            n_bins: number of time bins of the grid.
            unit_regions: ``[n_units]`` region label of each unit.
            rng: the sample's random generator (seed it per window for fixed eval masks).
            mode: force a mode instead of drawing one from ``mode_probs``.
        """
        n_units = len(unit_regions)
        if n_units < 2 or n_bins < 2:
            raise ValueError(
                f"Masking needs at least 2 units and 2 time bins in a window, got {n_units} "
                f"units and {n_bins} bins."
            )
        if mode is None:
            mode = MASKING_MODES[rng.choice(len(MASKING_MODES), p=self.mode_probs)]
        elif mode not in MASKING_MODES:
            raise ValueError(f"Unknown masking mode {mode!r}; valid modes: {list(MASKING_MODES)}.")

        mask = np.zeros((n_bins, n_units), dtype=bool)
        regions, region_of_unit = self._factorised(unit_regions)
        requested, region = mode, None

        if mode == "inter_region" and len(regions) < 2:
            mode = "neuron"

        if mode == "temporal":
            k = _count(rng, self.temporal_ratio, n_bins)
            mask[rng.choice(n_bins, size=k, replace=False), :] = True
        elif mode == "neuron":
            k = _count(rng, self.neuron_ratio, n_units)
            mask[:, rng.choice(n_units, size=k, replace=False)] = True
        elif mode == "intra_region":
            r = rng.integers(len(regions))
            members = np.flatnonzero(region_of_unit == r)
            k = _count(rng, self.intra_region_ratio, len(members))
            if len(regions) == 1:  # keep at least one unit visible
                k = min(k, len(members) - 1)
            mask[:, rng.choice(members, size=k, replace=False)] = True
            region = str(regions[r])
        else:  # inter_region
            r = rng.integers(len(regions))
            mask[:, region_of_unit == r] = True
            region = str(regions[r])
        return GridMask(mask=mask, mode=mode, requested_mode=requested, region=region)


def _count(rng: np.random.Generator, ratio: tuple[float, float], n: int) -> int:
    """Number of items to mask: round(U(low, high) * n), clipped to [1, n - 1] (or 1 if n == 1)."""
    k = int(round(rng.uniform(*ratio) * n))
    return max(1, min(k, n - 1)) if n > 1 else 1


def _factorise(labels) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted unique labels, [n] index of each label among them)``."""
    return np.unique(np.asarray(labels).astype(str), return_inverse=True)
