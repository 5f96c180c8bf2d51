"""Synthetic multi-region recordings with a known ground truth.

The generator simulates, for every session, a low-dimensional latent system with
region-specific dynamics and feed-forward coupling between regions (region ``k`` is driven
by the lagged latents of region ``k - 1``, e.g. V1 -> V4 -> IT). Each unit's log firing rate
is a linear read-out of its region's latents (plus a small weight on a shared global latent).
Spikes are drawn from the resulting piecewise-constant rate (one value per 10 ms sample),
or, for ``modality="mua"``, a noisy continuous signal derived from the rates is stored
instead; ``modality="mixed"`` writes spiking recordings for the even sessions (s00, s02, ...)
and MUA ones for the odd sessions, all sharing the region dynamics of the config. The rates and latents are saved alongside the observations so that models can be
scored against the truth.

Recordings are written as temporaldata HDF5 files ``<root>/<recording_id>.h5`` that
:class:`torch_brain.dataset.Dataset` reads directly.

Layout of one recording (``T = round(duration * 100)`` samples, ``N`` units/channels,
``L = len(regions) * latent_dim_per_region + global_latent_dim``)::

    session.id              str, e.g. "synthetic_s00" (== recording id)
    subject.id              str, e.g. "synthetic_s00_subject"
    brainset.id             str, "neurobridge_synthetic"
    session.modality        str, "spikes" or "mua"
    units.id                str [N], e.g. "synthetic_s00/u000" ("ch000" for MUA channels;
                            unique across sessions)
    units.brain_region      str [N]
    spikes.timestamps       float64 [S], sorted, seconds       (spiking sessions)
    spikes.unit_index       int64 [S], index into units        (spiking sessions)
    mua.values              float32 [T, N], clean + noise      (MUA sessions, 100 Hz)
    mua.clean               float32 [T, N], noise-free signal  (MUA sessions, 100 Hz)
    true_rates.rates        float32 [T, N], Hz, 100 Hz
    true_rates.latents      float32 [T, L], 100 Hz; columns are the latents of
                            regions[0], regions[1], ... then the global latent
    domain                  Interval(0, T / 100)
    train_domain, valid_domain, test_domain   disjoint Intervals covering the domain
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import lfilter
from temporaldata import Data, Interval, RegularTimeSeries

from neurobridge.data.images import IMAGE_FOLDER
from neurobridge.data.index import SPLITS
from neurobridge.data.writer import STIMULUS_KEY, make_recording, save_recording
from neurobridge.datasets import synthetic_visual
from neurobridge.io import atomic_path, write_json_atomic

__all__ = [
    "SAMPLING_RATE",
    "SyntheticConfig",
    "build_recording",
    "config_hash",
    "ensure_synthetic_recordings",
    "generate_synthetic_recordings",
    "recording_ids",
    "recording_summary",
    "session_modality",
    "split_intervals",
    "synthetic_image_ids",
    "synthetic_images",
    "write_synthetic_images",
    "MODALITIES",
    "STIMULUS_FIELD",
]

#: Sampling rate (Hz) of the latent/rate grid, of ``true_rates`` and of ``mua``.
SAMPLING_RATE = 100.0
_DT = 1.0 / SAMPLING_RATE
#: Bumped whenever the generated content changes, so cached folders are not reused.
_GENERATOR_VERSION = 1
_BURN_IN = 300  # samples simulated and discarded before t = 0
_INPUT_TAU = 0.05  # s, low-pass time constant of the noise driving the latents
_GLOBAL_TAU = 1.0  # s, time constant of the shared global latent
_SPLIT_PATTERN = ("train",) * 7 + ("valid",) + ("test",) * 2
_MANIFEST = "synthetic_config.json"
#: Modalities of :class:`SyntheticConfig` (``"mixed"``: spiking and MUA sessions).
MODALITIES = ("spikes", "mua", "mixed")
#: Stimulus kinds of :class:`SyntheticConfig`.
STIMULI = ("none", "images")
#: Name of the Interval of stimulus presentations (``start``, ``end``, ``image_id``).
STIMULUS_FIELD = STIMULUS_KEY
#: Sub-folder of a generated data folder that holds the images (``<split>/<nnnn>.png``).


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic data set.

    Attributes:
        n_sessions: number of recordings (>= 1); each has its own units and latent trajectory.
        regions: brain regions, in feed-forward order (region k is driven by region k - 1).
        units_per_region: units (or MUA channels) per region and session (>= 1).
        duration: seconds per session (>= 20), rounded to the 10 ms grid.
        latent_dim_per_region: latent dimensions per region (1..16): pairs form damped
            rotations, an odd leftover dimension is a slow damped (OU-like) mode.
        modality: ``"spikes"`` (Poisson spikes), ``"mua"`` (noisy continuous signal) or
            ``"mixed"`` (session ``k`` spikes for even ``k``, MUA for odd ``k``; see
            :func:`session_modality`).
        mua_noise_std: std of the Gaussian noise added to ``mua.clean`` (>= 0).
        seed: seed of everything (>= 0). Session ``k`` only depends on ``seed`` and ``k``.
        unit_count_jitter: each (session, region) gets ``units_per_region + U{-j..j}`` units
            (0 <= j < units_per_region).
        coupling: fraction (0..1) of a downstream region's latent drive that comes from the
            lagged upstream latents (the rest is private noise).
        coupling_lag: lag in seconds (0..1) of the feed-forward coupling.
        global_latent_dim: dimensions (0..8) of a slow latent shared by all regions.
        global_weight: share (0..1) of each unit's log-rate loading put on the global latent.
        mean_rate_median: median of the per-unit time-averaged rate in Hz (inside
            ``mean_rate_range``).
        mean_rate_range: (low, high) clip of the per-unit time-averaged rate in Hz,
            0 < low < high.
        log_rate_std_range: per-unit std over time of the log rate is drawn uniformly from
            this range.
        max_rate: rates are clipped at this value in Hz (> mean_rate_range[1]).
        split_block_len: nominal length in seconds (>= 2) of the blocks assigned to
            train/valid/test.
        recording_prefix: recording ids are ``f"{recording_prefix}_s{k:02d}"``.
        stimulus: ``"none"``, or ``"images"``: every session watches procedural images (see
            :mod:`neurobridge.datasets.synthetic_visual`) and the units respond to their
            content.
        n_train_images: size of the train image set (``stimulus="images"``). The three image
            sets are disjoint; presentations in a train / valid / test block show an image of
            that set, so repeated presentations of an image stay on one side of the split.
        n_valid_images: size of the valid image set.
        n_test_images: size of the test image set.
        image_size: image height and width in pixels (16..256).
        stimulus_on: seconds each image is shown.
        stimulus_off: seconds of the blank gap before the next image.
        stimulus_gain: scale of the stimulus term of the log-rate (each unit's drive has unit
            variance over images).
    """

    n_sessions: int = 4
    regions: tuple[str, ...] = ("V1", "V4", "IT")
    units_per_region: int = 20
    duration: float = 300.0
    latent_dim_per_region: int = 3
    modality: str = "spikes"
    mua_noise_std: float = 0.3
    seed: int = 0
    unit_count_jitter: int = 0
    coupling: float = 0.6
    coupling_lag: float = 0.05
    global_latent_dim: int = 1
    global_weight: float = 0.3
    mean_rate_median: float = 8.0
    mean_rate_range: tuple[float, float] = (2.0, 30.0)
    log_rate_std_range: tuple[float, float] = (0.5, 1.0)
    max_rate: float = 200.0
    split_block_len: float = 10.0
    recording_prefix: str = "synthetic"
    stimulus: str = "none"
    n_train_images: int = 600
    n_valid_images: int = 40
    n_test_images: int = 100
    image_size: int = 32
    stimulus_on: float = 0.3
    stimulus_off: float = 0.3
    stimulus_gain: float = 1.5

    def __post_init__(self) -> None:
        # accept lists (e.g. from YAML / OmegaConf) for the tuple fields
        for name in ("regions", "mean_rate_range", "log_rate_std_range"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} must be a sequence, not a string, got {value!r}.")
            if not isinstance(value, tuple):
                try:
                    object.__setattr__(self, name, tuple(value))
                except TypeError:
                    raise ValueError(f"{name} must be a sequence, got {value!r}.") from None
        _validate(self)

    @property
    def latent_total_dim(self) -> int:
        """Columns of ``true_rates.latents``."""
        return len(self.regions) * self.latent_dim_per_region + self.global_latent_dim

    @property
    def n_samples(self) -> int:
        """Samples ``T`` of the 10 ms grid per session."""
        return int(round(self.duration * SAMPLING_RATE))


def _check_int(cfg: SyntheticConfig, name: str, low: int, high: int | None = None) -> None:
    value = getattr(cfg, name)
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    ok = ok and value >= low and (high is None or value <= high)
    if not ok:
        valid = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {valid}, got {value!r}.")


def _is_number(value) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _check_float(
    cfg: SyntheticConfig, name: str, low: float, high: float | None = None, *, strict=False
) -> None:
    value = getattr(cfg, name)
    ok = _is_number(value)
    ok = ok and (value > low if strict else value >= low) and (high is None or value <= high)
    if not ok:
        lo = f"> {low}" if strict else f">= {low}"
        valid = lo if high is None else f"{lo} and <= {high}"
        raise ValueError(f"{name} must be a number {valid}, got {value!r}.")


def _validate(cfg: SyntheticConfig) -> None:
    _check_int(cfg, "n_sessions", 1)
    if len(cfg.regions) < 1:
        raise ValueError("regions must name at least 1 region, got ().")
    if any(not isinstance(r, str) or not r or "/" in r for r in cfg.regions):
        raise ValueError(f"regions must be non-empty strings without '/', got {cfg.regions!r}.")
    if len(set(cfg.regions)) != len(cfg.regions):
        raise ValueError(f"regions must be unique, got {cfg.regions!r}.")
    _check_int(cfg, "units_per_region", 1)
    _check_float(cfg, "duration", 20.0)
    _check_int(cfg, "latent_dim_per_region", 1, 16)
    if cfg.modality not in MODALITIES:
        raise ValueError(f"modality must be one of {list(MODALITIES)}, got {cfg.modality!r}.")
    _check_float(cfg, "mua_noise_std", 0.0)
    _check_int(cfg, "seed", 0)
    _check_int(cfg, "unit_count_jitter", 0, cfg.units_per_region - 1)
    _check_float(cfg, "coupling", 0.0, 1.0)
    _check_float(cfg, "coupling_lag", 0.0, 1.0)
    _check_int(cfg, "global_latent_dim", 0, 8)
    _check_float(cfg, "global_weight", 0.0, 1.0)
    rr = cfg.mean_rate_range
    if len(rr) != 2 or not all(_is_number(v) for v in rr) or not 0 < rr[0] < rr[1]:
        raise ValueError(f"mean_rate_range must be (low, high) with 0 < low < high Hz, got {rr!r}.")
    _check_float(cfg, "mean_rate_median", rr[0], rr[1])
    sr = cfg.log_rate_std_range
    if len(sr) != 2 or not all(_is_number(v) for v in sr) or not 0 <= sr[0] <= sr[1] <= 3:
        raise ValueError(
            f"log_rate_std_range must be (low, high) with 0 <= low <= high <= 3, got {sr!r}."
        )
    _check_float(cfg, "max_rate", rr[1], strict=True)
    _check_float(cfg, "split_block_len", 2.0)
    if (
        not isinstance(cfg.recording_prefix, str)
        or not cfg.recording_prefix
        or any(c in cfg.recording_prefix for c in "/\\. ")
    ):
        raise ValueError(
            "recording_prefix must be a non-empty string without '/', '\\', '.' or spaces, "
            f"got {cfg.recording_prefix!r}."
        )
    if cfg.stimulus not in STIMULI:
        raise ValueError(f"stimulus must be one of {set(STIMULI)}, got {cfg.stimulus!r}.")
    for name in ("n_train_images", "n_valid_images", "n_test_images"):
        _check_int(cfg, name, 1)
    _check_int(cfg, "image_size", 16, 256)
    _check_float(cfg, "stimulus_on", 0.01, 5.0)
    _check_float(cfg, "stimulus_off", 0.0, 5.0)
    _check_float(cfg, "stimulus_gain", 0.0, 5.0)


# --------------------------------------------------------------------------------------
# ground-truth simulation


def session_modality(config: SyntheticConfig, session_index: int) -> str:
    """``"spikes"`` or ``"mua"``: what session ``session_index`` of ``config`` records
    (with ``modality="mixed"``, even sessions spike and odd sessions are MUA)."""
    if config.modality == "mixed":
        return "spikes" if session_index % 2 == 0 else "mua"
    return config.modality


def recording_ids(config: SyntheticConfig) -> list[str]:
    """Recording ids ``f"{prefix}_s{k:02d}"`` for ``k < n_sessions``."""
    return [f"{config.recording_prefix}_s{k:02d}" for k in range(config.n_sessions)]


def _zscore(x: np.ndarray, ref: slice = slice(None)) -> np.ndarray:
    mu = x[ref].mean(axis=0)
    sd = x[ref].std(axis=0)
    return (x - mu) / np.where(sd > 0, sd, 1.0)


def _smooth_noise(rng: np.random.Generator, n: int, m: int, tau: float) -> np.ndarray:
    """``[n, m]`` unit-variance Gaussian noise low-passed with time constant ``tau``."""
    rho = math.exp(-_DT / tau)
    x = lfilter([1.0 - rho], [1.0, -rho], rng.standard_normal((n, m)), axis=0)
    return _zscore(x)


def _region_dynamics(config: SyntheticConfig) -> list[dict]:
    """Per-region poles and coupling matrices, shared by all sessions of a config."""
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(2**20,)))
    d = config.latent_dim_per_region
    out = []
    for k in range(len(config.regions)):
        # slower, lower-frequency dynamics further down the hierarchy
        tau = min(0.3, 0.1 * 1.5**k) * rng.uniform(0.9, 1.1)
        freq = max(0.75, 3.0 / 1.5**k) * rng.uniform(0.9, 1.1)
        poles = [
            complex(math.exp(-_DT / tau) * np.exp(2j * math.pi * freq * (1 + 0.4 * j) * _DT))
            for j in range(d // 2)
        ]
        real_pole = math.exp(-_DT / (2.0 * tau)) if d % 2 else None
        coupling = None
        if k > 0:
            coupling = rng.standard_normal((d, d))
            coupling /= np.linalg.norm(coupling, axis=1, keepdims=True)
        out.append({"poles": poles, "real_pole": real_pole, "coupling": coupling})
    return out


def _simulate_latents(
    config: SyntheticConfig, dynamics: list[dict], rng: np.random.Generator
) -> np.ndarray:
    """``[T, latent_total_dim]`` z-scored latents of one session."""
    n = config.n_samples + _BURN_IN
    d = config.latent_dim_per_region
    lag = int(round(config.coupling_lag * SAMPLING_RATE))
    keep = slice(_BURN_IN, None)
    blocks = []
    upstream = None
    for dyn in dynamics:
        drive = _smooth_noise(rng, n, d, _INPUT_TAU)
        if upstream is not None:
            shifted = np.zeros_like(upstream)
            shifted[lag:] = upstream[: n - lag]
            c = config.coupling
            drive = math.sqrt(1.0 - c) * drive + math.sqrt(c) * (shifted @ dyn["coupling"].T)
        z = np.empty((n, d))
        for j, pole in enumerate(dyn["poles"]):
            w = lfilter([1.0], [1.0, -pole], drive[:, 2 * j] + 1j * drive[:, 2 * j + 1])
            z[:, 2 * j], z[:, 2 * j + 1] = w.real, w.imag
        if dyn["real_pole"] is not None:
            z[:, -1] = lfilter([1.0], [1.0, -dyn["real_pole"]], drive[:, -1])
        z = _zscore(z, keep)
        blocks.append(z)
        upstream = z
    if config.global_latent_dim:
        rho = math.exp(-_DT / _GLOBAL_TAU)
        g = _smooth_noise(rng, n, config.global_latent_dim, _INPUT_TAU)
        blocks.append(_zscore(lfilter([1.0], [1.0, -rho], g, axis=0), keep))
    return np.concatenate(blocks, axis=1)[keep]


def _units_and_rates(
    config: SyntheticConfig,
    latents: np.ndarray,
    rng: np.random.Generator,
    stimulus_term: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw units and their rates; returns (region index [N], rates float32 [T, N] Hz).

    ``stimulus_term(region_index)`` returns a ``[T, N]`` term added to the log-rates before
    they are scaled to the units' mean rates.
    """
    d = config.latent_dim_per_region
    j = config.unit_count_jitter
    counts = config.units_per_region + rng.integers(-j, j + 1, size=len(config.regions))
    region_index = np.repeat(np.arange(len(config.regions)), counts)
    n_units = len(region_index)

    # loadings: a random direction in the unit's region latents (+ the global latent)
    g_dim = config.global_latent_dim
    w = config.global_weight if g_dim else 0.0
    loadings = np.zeros((latents.shape[1], n_units))
    v = rng.standard_normal((d, n_units))
    v /= np.linalg.norm(v, axis=0, keepdims=True)
    for i, r in enumerate(region_index):
        loadings[r * d : (r + 1) * d, i] = math.sqrt(1.0 - w**2) * v[:, i]
    if g_dim:
        u = rng.standard_normal((g_dim, n_units))
        loadings[-g_dim:] = w * u / np.linalg.norm(u, axis=0, keepdims=True)

    # per-unit modulation depth (std of the log rate) and time-averaged rate
    lo, hi = config.log_rate_std_range
    depth = rng.uniform(lo, hi, size=n_units)
    r_lo, r_hi = config.mean_rate_range
    mean_rate = np.exp(rng.normal(math.log(config.mean_rate_median), 0.6, size=n_units))
    mean_rate = np.clip(mean_rate, r_lo, r_hi)

    x = _zscore(latents @ loadings) * depth
    if stimulus_term is not None:
        x = x + stimulus_term(region_index)
    log_rate = np.log(mean_rate) - np.log(np.exp(x).mean(axis=0)) + x
    rates = np.minimum(np.exp(log_rate), config.max_rate).astype(np.float32)
    return region_index, rates


def _sample_spikes(rates: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Poisson spikes from the piecewise-constant ``rates`` [T, N] (Hz, 10 ms samples).

    Returns sorted ``timestamps`` float64 [S] and ``unit_index`` int64 [S].
    """
    n_units = rates.shape[1]
    counts = rng.poisson(rates.astype(np.float64) * _DT)
    flat = np.flatnonzero(counts)
    flat = np.repeat(flat, counts.ravel()[flat])
    sample, unit = np.divmod(flat, n_units)
    timestamps = (sample + rng.random(len(flat))) * _DT
    # guard against rounding up onto the next sample boundary
    upper = (sample + 1) * _DT
    timestamps = np.where(timestamps < upper, timestamps, np.nextafter(upper, 0.0))
    order = np.argsort(timestamps, kind="stable")
    return timestamps[order], unit[order].astype(np.int64)


def split_intervals(config: SyntheticConfig, rng: np.random.Generator) -> dict[str, Interval]:
    """Contiguous train/valid/test blocks of one session.

    The session is cut into ``max(10, floor(duration / split_block_len))`` equal blocks
    (edges on the 10 ms grid, so each block is >= 2 s). Each consecutive group of 10 blocks
    gets a random permutation of 7 train, 1 valid and 2 test blocks (a trailing partial
    group gets the first blocks of such a permutation). Adjacent blocks of the same split
    are merged. Returns ``{"train": Interval, "valid": Interval, "test": Interval}``.
    """
    n_samples = config.n_samples
    n_blocks = max(10, int(math.floor(config.duration / config.split_block_len + 1e-9)))
    edges = np.round(np.linspace(0, n_samples, n_blocks + 1)).astype(np.int64)
    labels: list[str] = []
    while len(labels) < n_blocks:
        perm = rng.permutation(len(_SPLIT_PATTERN))
        labels.extend(_SPLIT_PATTERN[p] for p in perm)
    labels = labels[:n_blocks]
    out = {}
    for split in ("train", "valid", "test"):
        starts, ends = [], []
        for b, label in enumerate(labels):
            if label != split:
                continue
            if ends and ends[-1] == edges[b]:
                ends[-1] = edges[b + 1]
            else:
                starts.append(edges[b])
                ends.append(edges[b + 1])
        out[split] = Interval(
            start=np.asarray(starts, dtype=np.float64) / SAMPLING_RATE,
            end=np.asarray(ends, dtype=np.float64) / SAMPLING_RATE,
        )
    return out


# --------------------------------------------------------------------------------------
# visual stimuli


def synthetic_image_ids(config: SyntheticConfig) -> list[str]:
    """Image ids ``"<split>/<nnnn>.png"``: train images, then valid, then test."""
    sizes = (config.n_train_images, config.n_valid_images, config.n_test_images)
    return [f"{split}/{i:04d}.png" for split, n in zip(SPLITS, sizes) for i in range(n)]


def synthetic_images(config: SyntheticConfig) -> np.ndarray:
    """uint8 ``[n_images, size, size, 3]`` in the order of :func:`synthetic_image_ids`."""
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(2**21,)))
    n = config.n_train_images + config.n_valid_images + config.n_test_images
    return synthetic_visual.make_images(n, config.image_size, rng)


def _presentations(
    config: SyntheticConfig, splits: dict[str, Interval], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """One image every ``stimulus_on + stimulus_off`` seconds, drawn from its block's image set.

    Each set is shown in a per-session random order, cycling. Returns ``start``, ``end`` [P]
    (seconds) and ``image_index`` [P] (rows of :func:`synthetic_images`).
    """
    period = config.stimulus_on + config.stimulus_off
    onsets = np.arange(0.5, config.duration - config.stimulus_on - 0.5, period)
    first = np.cumsum([0, config.n_train_images, config.n_valid_images])
    sizes = (config.n_train_images, config.n_valid_images, config.n_test_images)
    orders = {s: f + rng.permutation(n) for s, f, n in zip(SPLITS, first, sizes)}
    shown = dict.fromkeys(SPLITS, 0)
    keep, image_index = [], []
    for i, onset in enumerate(onsets):
        for split in SPLITS:
            iv = splits[split]
            if np.any((iv.start <= onset) & (onset < iv.end)):
                order = orders[split]
                image_index.append(order[shown[split] % len(order)])
                shown[split] += 1
                keep.append(i)
                break
    start = np.round(onsets[keep] * SAMPLING_RATE) / SAMPLING_RATE
    return {
        "start": start,
        "end": start + config.stimulus_on,
        "image_index": np.asarray(image_index, dtype=np.int64),
    }


def _stimulus_term(
    config: SyntheticConfig, presentations: dict[str, np.ndarray], rng: np.random.Generator
) -> Callable[[np.ndarray], np.ndarray]:
    """The log-rate term of the units' image responses, given their regions."""
    images = synthetic_images(config)

    def term(region_index: np.ndarray) -> np.ndarray:
        drives = synthetic_visual.region_drives(images, region_index, len(config.regions), rng)
        return config.stimulus_gain * synthetic_visual.stimulus_log_rate(
            n_samples=config.n_samples,
            sampling_rate=SAMPLING_RATE,
            onsets=presentations["start"],
            offsets=presentations["end"],
            image_index=presentations["image_index"],
            drives=drives,
            region_index=region_index,
        )

    return term


def write_synthetic_images(root: str | Path, config: SyntheticConfig) -> Path:
    """Write the images as PNG files ``<root>/images/<image_id>``; return the image folder."""
    from PIL import Image

    folder = Path(root) / IMAGE_FOLDER
    for image_id, pixels in zip(synthetic_image_ids(config), synthetic_images(config)):
        path = folder / image_id
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
    return folder


def build_recording(config: SyntheticConfig, session_index: int) -> Data:
    """Simulate session ``session_index`` of ``config`` in memory.

    Returns:
        The recording (a ``temporaldata.Data``), laid out as described in the module docstring.
    """
    if not 0 <= session_index < config.n_sessions:
        raise ValueError(
            f"session_index must be in [0, {config.n_sessions - 1}], got {session_index}."
        )
    rid = recording_ids(config)[session_index]
    streams = np.random.SeedSequence(config.seed, spawn_key=(session_index,)).spawn(5)
    rng_latent, rng_units, rng_obs, rng_split, rng_stim = (np.random.default_rng(s) for s in streams)

    latents = _simulate_latents(config, _region_dynamics(config), rng_latent)
    splits = split_intervals(config, rng_split)
    presentations = stimulus_term = None
    if config.stimulus == "images":
        presentations = _presentations(config, splits, rng_stim)
        stimulus_term = _stimulus_term(config, presentations, rng_stim)
    region_index, rates = _units_and_rates(config, latents, rng_units, stimulus_term)
    n_units = rates.shape[1]
    duration = config.n_samples / SAMPLING_RATE
    modality = session_modality(config, session_index)
    tag = "u" if modality == "spikes" else "ch"

    unit_ids = [f"{rid}/{tag}{i:03d}" for i in range(n_units)]
    observed: dict = {}
    if modality == "spikes":
        observed["timestamps"], observed["unit_index"] = _sample_spikes(rates, rng_obs)
    else:
        # clean = gain * standardized log1p(rate) + offset, per channel
        gain = rng_obs.uniform(0.75, 1.25, size=n_units)
        offset = rng_obs.normal(0.0, 0.5, size=n_units)
        clean = (gain * _zscore(np.log1p(rates.astype(np.float64))) + offset).astype(np.float32)
        noise = rng_obs.standard_normal(clean.shape) * config.mua_noise_std
        observed["values"] = RegularTimeSeries(
            values=(clean + noise).astype(np.float32),
            clean=clean,
            sampling_rate=SAMPLING_RATE,
        )
    stimuli = None
    if presentations is not None:
        stimuli = dict(
            start=presentations["start"],
            end=presentations["end"],
            image_id=np.asarray(synthetic_image_ids(config))[presentations["image_index"]],
        )
    return make_recording(
        session_id=rid,
        unit_ids=unit_ids,
        domain=(0.0, duration),
        splits=splits,
        brain_regions=np.asarray(config.regions)[region_index],
        stimuli=stimuli,
        true_rates=RegularTimeSeries(
            rates=rates,
            latents=latents.astype(np.float32),
            sampling_rate=SAMPLING_RATE,
        ),
        subject_id=f"{rid}_subject",
        brainset="neurobridge_synthetic",
        session_fields={"modality": modality},
        source="the synthetic generator",
        **observed,
    )


# --------------------------------------------------------------------------------------
# writing


def config_hash(config: SyntheticConfig) -> str:
    """Short (12 hex) hash of the config and generator version; names cache folders."""
    payload = {"generator_version": _GENERATOR_VERSION, **dataclasses.asdict(config)}
    blob = json.dumps(payload, sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _write_manifest(root: Path, config: SyntheticConfig) -> None:
    payload = {
        "generator_version": _GENERATOR_VERSION,
        "config_hash": config_hash(config),
        "config": dataclasses.asdict(config),
        "recording_ids": recording_ids(config),
    }
    write_json_atomic(root / _MANIFEST, payload)


def generate_synthetic_recordings(
    root: str | Path,
    config: SyntheticConfig | None = None,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``config.n_sessions`` recordings into ``root``; return their paths.

    Each file is written to a temporary file and then renamed to ``<name>.h5``. A
    ``synthetic_config.json`` manifest describing the config is written last.

    Args:
        root: output folder (created if missing).
        config: defaults to ``SyntheticConfig()``.
        overwrite: replace existing recordings; otherwise an existing target raises
            FileExistsError.

    Returns:
        ``<root>/<recording_id>.h5`` in session order.
    """
    config = SyntheticConfig() if config is None else config
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"{rid}.h5" for rid in recording_ids(config)]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"Recordings already exist (pass overwrite=True to replace them): {existing}"
        )
    for k, path in enumerate(paths):
        save_recording(build_recording(config, k), path)
    if config.stimulus == "images":
        write_synthetic_images(root, config)
    _write_manifest(root, config)
    return paths


def _cleanup_stale_tmp(cache_dir: Path, key: str, max_age_s: float = 3600.0) -> None:
    """Best-effort removal of temporary folders left by interrupted runs long ago."""
    now = time.time()
    for tmp in cache_dir.glob(f".{key}.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > max_age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def ensure_synthetic_recordings(
    cache_dir: str | Path, config: SyntheticConfig | None = None
) -> Path:
    """Return a folder holding the recordings of ``config``, generating them on first use.

    The folder is ``<cache_dir>/<config_hash(config)>``. It is generated in a temporary
    sibling folder (``.<hash>.tmp-<pid>-<random>``) that is renamed into place only when
    complete, so an existing folder is always complete. If another process finishes first,
    its folder is kept and ours is discarded.

    Args:
        cache_dir: parent folder of the per-config folders (created if missing).
        config: defaults to ``SyntheticConfig()``.

    Returns:
        Folder to pass to ``torch_brain.dataset.Dataset``.
    """
    config = SyntheticConfig() if config is None else config
    cache_dir = Path(cache_dir)
    key = config_hash(config)
    final = cache_dir / key
    if not final.is_dir():
        cache_dir.mkdir(parents=True, exist_ok=True)
        _cleanup_stale_tmp(cache_dir, key)
        tmp = cache_dir / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            generate_synthetic_recordings(tmp, config)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                # another process won the race: keep its folder
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    missing = [rid for rid in recording_ids(config) if not (final / f"{rid}.h5").is_file()]
    if missing:
        raise RuntimeError(
            f"Synthetic data folder {final} is incomplete (missing {missing}); delete it to "
            "regenerate."
        )
    return final


def recording_summary(path: str | Path) -> dict:
    """Counts of one written recording: id, modality, units, regions, spikes, mean rate (Hz)."""
    data = Data.load(path, lazy=False)
    duration = float(data.domain.end[-1] - data.domain.start[0])
    n_units = len(data.units.id)
    rates = np.asarray(data.true_rates.rates, dtype=np.float64)
    out = {
        "recording_id": str(data.session.id),
        "modality": "spikes" if "spikes" in data else "mua",
        "duration": duration,
        "units": n_units,
        "regions": sorted(set(data.units.brain_region.astype(str).tolist())),
        "true_mean_rate_hz": float(rates.mean()),
    }
    if "spikes" in data:
        n_spikes = len(data.spikes.timestamps)
        out["spikes"] = n_spikes
        out["mean_rate_hz"] = n_spikes / (n_units * duration)
    else:
        out["samples"] = int(data.mua.values.shape[0])
    return out
