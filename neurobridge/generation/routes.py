"""The two conditioning routes of ``task=adapter`` and how a config picks one."""

from __future__ import annotations

import torch.nn as nn

from .adapter import DiffusionAdapter
from .conditioning import has_ip_adapter, unet_conditioning_dims
from .ip_adapter import IPAdapterConditioning

__all__ = ["ADAPTER_ROUTES", "build_conditioning", "check_adapter_matches_unet"]

#: conditioning routes of ``task=adapter`` (``task.route``)
ADAPTER_ROUTES = ("prompt_embeds", "ip_adapter")


def build_conditioning(adapter_cfg: dict, unet: nn.Module) -> DiffusionAdapter | IPAdapterConditioning:
    """The conditioning module an adapter checkpoint's ``model.adapter`` config describes.

    ``route`` (absent in checkpoints written before the ip_adapter route: ``prompt_embeds``)
    picks :class:`DiffusionAdapter` or :class:`IPAdapterConditioning`; the latter is
    installed in ``unet`` (its ``weights`` entry, the file it started from, is not read: the
    checkpoint holds the trained weights).
    """
    cfg = dict(adapter_cfg)
    route = cfg.pop("route", "prompt_embeds")
    if route == "ip_adapter":
        cfg.pop("weights", None)
        return IPAdapterConditioning(unet, **cfg)
    if route != "prompt_embeds":
        raise ValueError(f"adapter route must be one of {ADAPTER_ROUTES}, got {route!r}.")
    return DiffusionAdapter(**cfg)


def check_adapter_matches_unet(adapter: nn.Module, unet: nn.Module) -> None:
    """Raise ValueError if ``adapter``'s conditioning does not fit ``unet``'s inputs.

    ``adapter`` is a :class:`DiffusionAdapter` or an
    :class:`~neurobridge.generation.ip_adapter.IPAdapterConditioning` (which must be installed
    in ``unet``).
    """
    if isinstance(adapter, IPAdapterConditioning):
        adapter.check_unet(unet)
        return
    if has_ip_adapter(unet):
        raise ValueError(
            "The UNet has an IP-Adapter installed; a DiffusionAdapter (route prompt_embeds) "
            "conditions a plain UNet."
        )
    cond_dim, class_embed_dim = unet_conditioning_dims(unet)
    if adapter.cond_dim != cond_dim:
        raise ValueError(
            f"adapter cond_dim={adapter.cond_dim} != UNet cross_attention_dim={cond_dim}; set "
            f"cond_dim={cond_dim} (or build the adapter with adapter_for_unet)."
        )
    if adapter.class_embed_dim != class_embed_dim:
        raise ValueError(
            f"adapter class_embed_dim={adapter.class_embed_dim} != UNet projection class "
            f"embedding input dim={class_embed_dim}; set class_embed_dim={class_embed_dim} "
            "(or build the adapter with adapter_for_unet)."
        )
