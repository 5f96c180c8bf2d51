"""Image reconstruction: the conditioning routes (diffusion adapter, IP-Adapter), Stable
Diffusion driving and image metrics."""

from .adapter import (
    ConditioningDrop,
    DiffusionAdapter,
    adapter_for_unet,
    check_adapter_matches_unet,
)
from .image_metrics import pixcorr, save_image_grid, ssim
from .ip_adapter import (
    IPAdapterConditioning,
    has_ip_adapter,
    ip_adapter_state_dict,
    load_ip_adapter_weights,
    read_ip_adapter_file,
    save_ip_adapter_weights,
)
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
    "ConditioningDrop",
    "DiffusionAdapter",
    "DiffusionComponents",
    "IPAdapterConditioning",
    "adapter_for_unet",
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
