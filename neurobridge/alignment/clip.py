"""Frozen open_clip image encoder giving the L2-normalised targets of the visual alignment.

Weights come only from local files: a checkpoint path, or an open_clip pretrained tag that is
already in the local cache (``cache_dir``). Without weights the architecture is built with random
initialisation, which is only good for tests and CPU demos.

open_clip is imported on first use (:func:`open_clip_module`), which also registers the tiny
test architecture ``"neurobridge-tiny"`` (ViT, 32 px images, patch 8, width 64, 2 layers,
2 heads, 32-d embeddings; config in ``neurobridge/alignment/model_configs/``) with open_clip's
model registry: importing :mod:`neurobridge.alignment` does not import open_clip.
"""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = ["TINY_MODEL_NAME", "CLIPImageEncoder", "build_clip_image_encoder", "open_clip_module"]

TINY_MODEL_NAME = "neurobridge-tiny"


@functools.cache
def open_clip_module() -> types.ModuleType:
    """``open_clip``, imported once, with NeuroBridge's model configs registered."""
    import open_clip

    open_clip.add_model_config(Path(__file__).parent / "model_configs")
    return open_clip


class CLIPImageEncoder(nn.Module):
    """A frozen open_clip model used as an image embedder (build it with
    :func:`build_clip_image_encoder`).

    The wrapped model stays in eval mode and has no trainable parameters, also when a parent
    module calls ``.train()``.

    Args:
        model: an open_clip model with ``encode_image``.
        preprocess: open_clip's eval transform, PIL image → ``[3, H, W]`` tensor.
        embed_dim: width ``d`` of the image embedding.
        model_name: open_clip architecture name.
        pretrained: the weights source (tag or path), or None for random weights.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        preprocess: Callable[[Image.Image], Tensor],
        embed_dim: int,
        model_name: str,
        pretrained: str | None,
    ):
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.preprocess = preprocess
        self.model_name = model_name
        self.pretrained = pretrained
        self._embed_dim = int(embed_dim)

    @property
    def embed_dim(self) -> int:
        """Width ``d`` of the embeddings."""
        return self._embed_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> CLIPImageEncoder:
        """Keep the frozen model in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, pixels: Tensor) -> Tensor:
        """Embed preprocessed images.

        Args:
            pixels: ``[B, 3, H, W]`` output of :attr:`preprocess`, stacked.

        Returns:
            ``[B, d]`` float32 L2-normalised embeddings.
        """
        features = self.model.encode_image(pixels.to(self.device))
        return F.normalize(features.float(), dim=-1)

    def embed_pil(self, images: Sequence[Image.Image]) -> Tensor:
        """Preprocess and embed PIL images; returns ``[B, d]`` float32 L2-normalised embeddings."""
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images])
        return self(pixels)


def build_clip_image_encoder(
    *,
    model_name: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
    seed: int = 0,
) -> CLIPImageEncoder:
    """Build a frozen :class:`CLIPImageEncoder` from local weights only.

    Args:
        model_name: an open_clip architecture name (``open_clip.list_models()``), e.g.
            ``"ViT-H-14"`` or ``"neurobridge-tiny"``.
        pretrained: an open_clip pretrained tag whose weights are already in the local cache
            (``open_clip.list_pretrained()``), or a path to a local checkpoint file. None builds
            random weights (with a warning).
        device: where the model lives.
        cache_dir: the open_clip / Hugging Face cache that holds tagged weights (open_clip's
            default cache when None).
        seed: seed of the random weights when ``pretrained`` is None (the global torch random
            state is left untouched), so every stage of a run embeds with the same network.

    A tag makes open_clip look for its weights on the Hugging Face Hub, which falls back to the
    cache after network retries; set ``HF_HUB_OFFLINE=1`` to go to the cache directly.
    """
    open_clip = open_clip_module()
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise ValueError(
            f"unknown open_clip architecture {model_name!r}; choose one of open_clip.list_models() "
            f"(e.g. {TINY_MODEL_NAME!r}, 'ViT-B-32', 'ViT-H-14')."
        )
    if pretrained is None:
        warnings.warn(
            f"CLIP model {model_name!r} is built with RANDOM weights: its image embeddings are "
            "meaningless for real data (use them only for tests and demos). Pass pretrained=<tag "
            "already in the local open_clip cache> or pretrained=<path to a local checkpoint> "
            "(--pretrained in scripts/embed_images.py).",
            UserWarning,
            stacklevel=2,
        )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device, cache_dir=cache_dir
            )
    except Exception as err:
        if pretrained is None:
            raise
        if Path(pretrained).is_file():
            hint = f"the checkpoint file {pretrained} could not be loaded into it"
        else:
            hint = (
                f"no internet is available, so the weights of pretrained={pretrained!r} must "
                f"already be in the local cache (cache_dir={cache_dir!r}); otherwise pass "
                "pretrained=<path to a local checkpoint file>"
            )
        raise RuntimeError(f"could not load open_clip model {model_name!r}: {hint}.") from err
    return CLIPImageEncoder(
        model=model,
        preprocess=preprocess,
        embed_dim=config["embed_dim"],
        model_name=model_name,
        pretrained=pretrained,
    )
