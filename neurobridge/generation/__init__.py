"""Image reconstruction: the conditioning routes (diffusion adapter, IP-Adapter), Stable
Diffusion driving and image metrics. The only package that imports diffusers."""

from .adapter import DiffusionAdapter, adapter_for_unet
from .conditioning import ConditioningDrop, has_ip_adapter
from .image_metrics import pixcorr, save_image_grid, ssim
from .ip_adapter import (
    IPAdapterConditioning,
    ip_adapter_state_dict,
    load_ip_adapter_weights,
    read_ip_adapter_file,
    save_ip_adapter_weights,
)
from .routes import ADAPTER_ROUTES, build_conditioning, check_adapter_matches_unet
from .stable_diffusion import (
    DiffusionComponents,
    build_diffusion,
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
    "ADAPTER_ROUTES",
    "ConditioningDrop",
    "DiffusionAdapter",
    "DiffusionComponents",
    "IPAdapterConditioning",
    "adapter_for_unet",
    "build_conditioning",
    "build_diffusion",
    "build_tiny_stable_diffusion",
    "check_adapter_matches_unet",
    "encode_images",
    "freeze",
    "generate",
    "has_ip_adapter",
    "ip_adapter_state_dict",
    "load_ip_adapter_weights",
    "load_stable_diffusion",
    "noise_prediction_loss",
    "pixcorr",
    "read_ip_adapter_file",
    "save_image_grid",
    "save_ip_adapter_weights",
    "ssim",
    "tiny_unet_config",
    "tiny_vae_config",
]
