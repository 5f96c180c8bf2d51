"""Image reconstruction: the diffusion adapter, Stable Diffusion driving and image metrics."""

from .adapter import (
    DiffusionAdapter,
    adapter_for_unet,
    check_adapter_matches_unet,
)
from .image_metrics import pixcorr, save_image_grid, ssim
from .stable_diffusion import (
    DiffusionComponents,
    build_tiny_stable_diffusion,
    encode_images,
    freeze,
    generate,
    load_stable_diffusion,
    noise_prediction_loss,
    tiny_unet_config,
    tiny_vae_config,
)

__all__ = [
    "DiffusionAdapter",
    "DiffusionComponents",
    "adapter_for_unet",
    "build_tiny_stable_diffusion",
    "check_adapter_matches_unet",
    "encode_images",
    "freeze",
    "generate",
    "load_stable_diffusion",
    "noise_prediction_loss",
    "pixcorr",
    "save_image_grid",
    "ssim",
    "tiny_unet_config",
    "tiny_vae_config",
]
