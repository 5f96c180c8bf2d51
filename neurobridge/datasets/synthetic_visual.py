"""Visual stimuli for the synthetic recordings: procedural images and the units' responses.

Images are small RGB scenes drawn procedurally (a two-colour gradient background with two to
four objects: discs, rings, rectangles, triangles and grating patches of random colour, size and
position), so the content varies in colour, layout, shape and orientation.

Each unit responds to an image through a filter of its region, in the feed-forward order of
``SyntheticConfig.regions`` (the first region is "V1", the last "IT"):

- region 0 (V1-like): a simple cell, a Gabor receptive field on luminance at a random position
  (Gaussian envelope sigma = 6 % of the image width), rectified: local and phase-sensitive;
- deeper regions: pooled feature energies (4 orientation energies, luminance, red-green and
  blue-yellow opponency) weighted at random and read through a Gaussian receptive field whose
  width grows with depth up to the whole image (IT-like: global);

each drive is z-scored over the image set. A presentation adds ``drive * kernel(t - onset)`` to
the unit's log-rate, where the kernel is the presentation's boxcar delayed by the region's
latency (50 ms + 30 ms per region) and low-passed (20 ms + 15 ms per region), so responses
arrive later and are smoother deeper in the hierarchy.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import fftconvolve, lfilter

__all__ = [
    "make_images",
    "image_features",
    "region_drives",
    "stimulus_log_rate",
    "region_latency",
]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size) + 0.5) / size
    return np.meshgrid(c, c, indexing="xy")


def _draw_object(img: np.ndarray, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> None:
    """Paint one random object onto ``img`` ``[H, W, 3]`` in place."""
    kind = rng.integers(5)
    cx, cy = rng.uniform(0.15, 0.85, size=2)
    r = rng.uniform(0.1, 0.3)
    color = rng.uniform(0.0, 1.0, size=3)
    dx, dy = xx - cx, yy - cy
    if kind == 0:  # disc
        inside = dx**2 + dy**2 < r**2
    elif kind == 1:  # ring
        d = np.sqrt(dx**2 + dy**2)
        inside = (d < r) & (d > 0.6 * r)
    elif kind == 2:  # rotated rectangle
        a = rng.uniform(0, math.pi)
        u = dx * math.cos(a) + dy * math.sin(a)
        v = -dx * math.sin(a) + dy * math.cos(a)
        inside = (np.abs(u) < r) & (np.abs(v) < r * rng.uniform(0.3, 1.0))
    elif kind == 3:  # triangle (three half-planes)
        a0 = rng.uniform(0, 2 * math.pi)
        inside = np.ones_like(xx, dtype=bool)
        for j in range(3):
            a = a0 + 2 * math.pi * j / 3
            inside &= dx * math.cos(a) + dy * math.sin(a) < 0.5 * r
    else:  # grating patch
        a = rng.uniform(0, math.pi)
        freq = rng.uniform(3.0, 8.0)
        wave = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (dx * math.cos(a) + dy * math.sin(a)))
        mask = dx**2 + dy**2 < r**2
        img[mask] = (wave[mask, None] * color + (1 - wave[mask, None]) * (1 - color))
        return
    img[inside] = color


def make_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` procedural RGB images, uint8 ``[n, size, size, 3]``."""
    xx, yy = _grid(size)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        c0, c1 = rng.uniform(0.0, 1.0, size=(2, 3))
        a = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a), 0.0, 1.0)
        img = (1 - t)[..., None] * c0 + t[..., None] * c1
        for _ in range(rng.integers(2, 5)):
            _draw_object(img, rng, xx, yy)
        out[i] = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    return out


def _gabor(size: int, sigma: float, theta: float, freq: float, phase: float, cx=0.5, cy=0.5):
    xx, yy = _grid(size)
    dx, dy = xx - cx, yy - cy
    env = np.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    return env * np.cos(2 * math.pi * freq * (dx * math.cos(theta) + dy * math.sin(theta)) + phase)


def image_features(images: np.ndarray) -> np.ndarray:
    """Feature maps ``[n, 7, H, W]``: 4 orientation energies, luminance, red-green, blue-yellow.

    Orientation energy is the quadrature-pair Gabor energy (sigma = 6 % of the width, 4 cycles
    per image width) at 0, 45, 90 and 135 degrees.
    """
    x = images.astype(np.float64) / 255.0
    n, size = x.shape[0], x.shape[1]
    lum = x.mean(axis=-1)
    rg = x[..., 0] - x[..., 1]
    by = x[..., 2] - 0.5 * (x[..., 0] + x[..., 1])
    energies = []
    for theta in np.arange(4) * math.pi / 4:
        even = _gabor(size, 0.06, theta, 4.0, 0.0)
        odd = _gabor(size, 0.06, theta, 4.0, math.pi / 2)
        e = fftconvolve(lum, even[None], mode="same", axes=(1, 2)) ** 2
        e += fftconvolve(lum, odd[None], mode="same", axes=(1, 2)) ** 2
        energies.append(np.sqrt(e))
    feats = np.stack([*energies, lum - lum.mean(axis=(1, 2), keepdims=True), rg, by], axis=1)
    return feats.reshape(n, 7, size, size)


def _zscore_columns(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def region_drives(
    images: np.ndarray, region_index: np.ndarray, n_regions: int, rng: np.random.Generator
) -> np.ndarray:
    """Stimulus drive of every unit to every image, z-scored over images: ``[n_images, n_units]``.

    Args:
        images: uint8 ``[n_images, H, W, 3]``.
        region_index: ``[n_units]`` region of each unit (0 = first, V1-like).
        n_regions: number of regions (depth ``k / (n_regions - 1)`` sets the receptive field).
        rng: draws the units' receptive fields and weights.
    """
    size = images.shape[1]
    lum = images.astype(np.float64).mean(axis=-1).reshape(len(images), -1) / 255.0
    feats = image_features(images).reshape(len(images), 7, -1)
    xx, yy = _grid(size)
    drives = np.empty((len(images), len(region_index)))
    for u, k in enumerate(region_index):
        depth = k / max(n_regions - 1, 1)
        cx, cy = rng.uniform(0.2, 0.8, size=2)
        if k == 0:
            theta, phase = rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi)
            gabor = _gabor(size, 0.06, theta, 4.0, phase, cx, cy).ravel()
            response = lum @ gabor
            drives[:, u] = np.log1p(np.exp(3.0 * response / (response.std() + 1e-12)))
        else:
            sigma = 0.08 + 0.42 * depth**1.5
            rf = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)).ravel()
            pooled = feats @ (rf / rf.sum())  # [n_images, 7]
            pooled = _zscore_columns(pooled)
            w = rng.standard_normal(7)
            drives[:, u] = np.tanh(pooled @ w / math.sqrt(7))
    return _zscore_columns(drives)


def region_latency(k: int) -> float:
    """Response latency in seconds of region ``k`` (50 ms + 30 ms per step down the hierarchy)."""
    return 0.05 + 0.03 * k


def stimulus_log_rate(
    *,
    n_samples: int,
    sampling_rate: float,
    onsets: np.ndarray,
    offsets: np.ndarray,
    image_index: np.ndarray,
    drives: np.ndarray,
    region_index: np.ndarray,
) -> np.ndarray:
    """Stimulus-driven log-rate term ``[n_samples, n_units]`` of one session.

    Args:
        n_samples: samples of the session's rate grid.
        sampling_rate: Hz of the rate grid.
        onsets: ``[P]`` presentation onsets in seconds.
        offsets: ``[P]`` presentation offsets in seconds.
        image_index: ``[P]`` row of ``drives`` shown at each presentation.
        drives: ``[n_images, n_units]`` from :func:`region_drives`.
        region_index: ``[n_units]`` region of each unit.
    """
    out = np.zeros((n_samples, drives.shape[1]))
    for k in np.unique(region_index):
        units = region_index == k
        lag = region_latency(int(k))
        box = np.zeros((n_samples, int(units.sum())))
        for on, off, img in zip(onsets, offsets, image_index):
            a = int(round((on + lag) * sampling_rate))
            b = int(round((off + lag) * sampling_rate))
            box[max(a, 0) : min(b, n_samples)] = drives[img, units]
        rho = math.exp(-1.0 / (sampling_rate * (0.02 + 0.015 * k)))
        out[:, units] = lfilter([1.0 - rho], [1.0, -rho], box, axis=0)
    return out
