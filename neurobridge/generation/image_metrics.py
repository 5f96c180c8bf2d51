"""Low-level image reconstruction metrics (PixCorr, SSIM) and a stimulus | reconstruction grid.

Images are ``[B, 3, H, W]`` floats in ``[0, 1]``. As in the usual reconstruction benchmarks,
a reconstruction whose size differs from its stimulus is first resized to the stimulus size
(bilinear, antialiased).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from neurobridge.io import atomic_path

__all__ = ["pixcorr", "save_image_grid", "ssim"]

# ITU-R BT.709 luma weights (those of scikit-image's rgb2gray)
_GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)


def _matched(pred: Tensor, target: Tensor, name: str) -> Tensor:
    """``pred`` as float32, resized to ``target``'s height and width, after shape checks."""
    if pred.ndim != 4 or target.ndim != 4:
        raise ValueError(
            f"{name}: pred and target must be [B, C, H, W], got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}."
        )
    if pred.shape[:2] != target.shape[:2]:
        raise ValueError(
            f"{name}: pred and target must have the same batch size and channels, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}."
        )
    pred = pred.float()
    if pred.shape[2:] != target.shape[2:]:
        pred = F.interpolate(
            pred,
            size=tuple(target.shape[2:]),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    return pred


def pixcorr(pred: Tensor, target: Tensor) -> Tensor:
    """Pearson correlation between the flattened pixels (all channels) of each image pair.

    Computed on the colour images, as MindEye's PixCorr (no grayscale conversion); ``pred`` is
    resized to ``target``'s size when they differ. A constant image gives NaN.

    Args:
        pred: ``[B, C, h, w]`` reconstructions.
        target: ``[B, C, H, W]`` stimuli.

    Returns:
        ``[B]`` float32 correlations.
    """
    pred = _matched(pred, target, "pixcorr").flatten(1)
    target = target.float().flatten(1)
    pred = pred - pred.mean(dim=1, keepdim=True)
    target = target - target.mean(dim=1, keepdim=True)
    return (pred * target).sum(dim=1) / (pred.norm(dim=1) * target.norm(dim=1))


def _grayscale(images: Tensor) -> Tensor:
    weights = images.new_tensor(_GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Structural similarity of each image pair, on grayscale (BT.709 luma) images.

    Gaussian window (sigma 1.5, 11 pixels), data range 1; ``pred`` is resized to ``target``'s
    size when they differ. Images must be at least 11 × 11.

    Args:
        pred: ``[B, 3, h, w]`` reconstructions in ``[0, 1]``.
        target: ``[B, 3, H, W]`` stimuli in ``[0, 1]``.

    Returns:
        ``[B]`` float32 SSIM values.
    """
    pred = _matched(pred, target, "ssim")
    if target.shape[1] != 3:
        raise ValueError(f"ssim: images must have 3 channels, got {target.shape[1]}.")
    return structural_similarity_index_measure(
        _grayscale(pred), _grayscale(target.float()), data_range=1.0, reduction="none"
    )


def _to_uint8(images: Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` in ``[0, 1]`` → ``[B, H, W, 3]`` uint8."""
    images = images.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def save_image_grid(
    path: str | Path,
    stimuli: Tensor,
    reconstructions: Tensor,
    *,
    titles: Sequence[str] | None = None,
    pad: int = 2,
) -> Path:
    """Write a PNG with one row per pair: stimulus | reconstruction.

    Reconstructions are resized to the stimulus size. Without titles the image is
    ``(2 W + 3 pad) × (B (H + pad) + pad)`` pixels (width × height); with titles each row gets
    a text band above it. Written atomically.

    Args:
        path: output file.
        stimuli: ``[B, 3, H, W]`` in ``[0, 1]``.
        reconstructions: ``[B, 3, h, w]`` in ``[0, 1]``.
        titles: one caption per pair, or None.
        pad: white margin in pixels between and around the images.

    Returns:
        ``path`` as a ``Path``.
    """
    reconstructions = _matched(reconstructions, stimuli, "save_image_grid")
    if stimuli.shape[1] != 3:
        raise ValueError(f"save_image_grid: images must have 3 channels, got {stimuli.shape[1]}.")
    batch, _, height, width = stimuli.shape
    if titles is not None and len(titles) != batch:
        raise ValueError(f"save_image_grid: got {len(titles)} titles for {batch} pairs.")
    font = ImageFont.load_default()
    band = 0
    if titles is not None:
        band = int(font.getbbox("Ag")[3]) + pad  # text height
    row_height = band + height + pad
    grid = Image.new("RGB", (2 * width + 3 * pad, batch * row_height + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, (stim, recon) in enumerate(zip(_to_uint8(stimuli), _to_uint8(reconstructions))):
        y = pad + i * row_height
        if titles is not None:
            draw.text((pad, y), str(titles[i]), fill="black", font=font)
        grid.paste(Image.fromarray(stim), (pad, y + band))
        grid.paste(Image.fromarray(recon), (2 * pad + width, y + band))
    path = Path(path)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path
