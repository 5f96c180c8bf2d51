"""IP-Adapter route: the neural embedding as the image prompt of decoupled cross-attention.

The aligned neural embedding lives in CLIP image-embedding space, so it can take the place of
the CLIP image embedding an IP-Adapter is fed. The route uses diffusers' own IP-Adapter
machinery: an ``ImageProjection`` (Linear → ``num_tokens`` tokens → LayerNorm) wrapped in a
``MultiIPAdapterImageProjection`` as the UNet's ``encoder_hid_proj``
(``encoder_hid_dim_type="ip_image_proj"``), and an ``IPAdapterAttnProcessor2_0`` on every
cross-attention layer, which adds ``scale`` × attention over the image tokens (keys and
values from its own ``to_k_ip`` / ``to_v_ip``) to the attention over the text tokens. The UNet
then takes ``encoder_hidden_states`` (text tokens) and
``added_cond_kwargs={"image_embeds": [embeds[:, None]]}``; the conditioning dicts of this
module carry the embedding as ``"image_embeds"`` ``[B, clip_dim]``, which
:mod:`neurobridge.generation.stable_diffusion` passes on that way.

Weight files use the published IP-Adapter layout that diffusers' ``load_ip_adapter`` reads:
``{"image_proj": {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}, "ip_adapter":
{"1.to_k_ip.weight", "1.to_v_ip.weight", "3.to_k_ip.weight", ...}}`` (a ``torch.save`` file,
e.g. ``ip-adapter_sd15.bin``), or the same keys flattened with a ``image_proj.`` /
``ip_adapter.`` prefix in a ``.safetensors`` file. The i-th cross-attention layer (in
``unet.attn_processors`` order) has key ``2 i + 1``. Only the base IP-Adapter (a linear image
projection) is supported, not the Plus / Full / FaceID variants.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection
from torch import Tensor

from .conditioning import (
    ConditioningDrop,
    check_positive_int,
    has_ip_adapter,
    unet_conditioning_dims,
)

__all__ = [
    "IPAdapterConditioning",
    "has_ip_adapter",
    "ip_adapter_state_dict",
    "load_ip_adapter_weights",
    "read_ip_adapter_file",
    "save_ip_adapter_weights",
]

_OWNER = "IPAdapterConditioning"
_IMAGE_PROJ_KEYS = {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
#: key of the published layout -> attribute of diffusers' ``ImageProjection``
_IMAGE_PROJ_NAMES = {
    "proj.weight": "image_embeds.weight",
    "proj.bias": "image_embeds.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
KV_INITS = ("text", "random")


def _cross_attention_layers(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(processor name, Attention module)`` of each cross-attention layer, in
    ``unet.attn_processors`` order (the order of the published key ids)."""
    layers = []
    for name in unet.attn_processors:
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if getattr(attn, "is_cross_attention", False):
            layers.append((name, attn))
    return layers


class IPAdapterConditioning(ConditioningDrop):
    """Conditions a frozen UNet through IP-Adapter decoupled cross-attention; installs itself.

    Building it installs diffusers' IP-Adapter parts in ``unet`` (see the module docstring):
    the image projection and one ``IPAdapterAttnProcessor2_0`` per cross-attention layer. They
    are submodules of this module *and* of the UNet (shared, not copied), so this module's
    state dict holds exactly what the route trains and the UNet's base weights are untouched.
    Self-attention processors are left as they are.

    Initialisation: the image projection is random (``nn.Linear``'s default); the image keys /
    values ``to_k_ip`` / ``to_v_ip`` are copies of each layer's text ``to_k`` / ``to_v``
    (``kv_init="text"``, IP-Adapter's recipe) or random (``kv_init="random"``).
    :func:`load_ip_adapter_weights` replaces both with a pretrained IP-Adapter's.

    Text stream: without a text encoder the empty-prompt embedding is not available, so the
    text tokens are a context ``[text_tokens, cond_dim]`` shared by every sample, initialised
    to zero and learned (``learn_text_context=True``) or kept at zero. With zero text tokens
    the text attention of each layer outputs only its ``to_out`` bias, so at the start the
    image tokens alone steer the UNet.

    Classifier-free guidance: the unconditional branch is the same text context with a zero
    image embedding (what diffusers' IP-Adapter pipelines use as the negative image
    embedding); in training mode each sample's embedding is zeroed with probability
    ``cond_drop_prob``.

    Args:
        unet: the UNet to condition (cross-attention only, no class embedding, no IP-Adapter
            installed yet). Not stored as a submodule.
        clip_dim: width of the input (neural, CLIP-space) embedding.
        num_tokens: image tokens made by the projection (4 for the base IP-Adapter).
        text_tokens: length of the text context.
        learn_text_context: learn the text context (else it stays zero).
        cond_drop_prob: probability, per sample and in training mode only, of zeroing the
            image embedding.
        scale: weight of the image attention (IP-Adapter's ``scale``); see :attr:`scale`.
        kv_init: ``"text"`` or ``"random"``: initialisation of ``to_k_ip`` / ``to_v_ip``.
    """

    def __init__(
        self,
        unet: nn.Module,
        *,
        clip_dim: int,
        num_tokens: int = 4,
        text_tokens: int = 77,
        learn_text_context: bool = True,
        cond_drop_prob: float = 0.1,
        scale: float = 1.0,
        kv_init: str = "text",
    ):
        super().__init__()
        for name, value in [
            ("clip_dim", clip_dim),
            ("num_tokens", num_tokens),
            ("text_tokens", text_tokens),
        ]:
            check_positive_int(name, value, _OWNER)
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ValueError(f"{_OWNER} cond_drop_prob must lie in [0, 1), got {cond_drop_prob}.")
        if kv_init not in KV_INITS:
            raise ValueError(f"{_OWNER} kv_init must be one of {KV_INITS}, got {kv_init!r}.")
        if has_ip_adapter(unet) or getattr(unet, "encoder_hid_proj", None) is not None:
            raise ValueError(
                "The UNet already has an encoder_hid_proj (an IP-Adapter installed?): build "
                "IPAdapterConditioning on a freshly loaded UNet."
            )
        cond_dim, class_dim = unet_conditioning_dims(unet)
        if class_dim is not None:
            raise ValueError(
                "The ip_adapter route drives UNets conditioned by cross-attention only; this "
                "UNet has a projection class embedding (unCLIP-style): use route=prompt_embeds."
            )
        layers = _cross_attention_layers(unet)
        if not layers:
            raise ValueError("The UNet has no cross-attention layer to add image attention to.")
        self.clip_dim = clip_dim
        self.cond_dim = cond_dim
        self.num_tokens = num_tokens
        self.text_tokens = text_tokens
        self.cond_drop_prob = cond_drop_prob
        self.layer_names = [name for name, _ in layers]

        self.image_proj = ImageProjection(
            image_embed_dim=clip_dim, cross_attention_dim=cond_dim, num_image_text_embeds=num_tokens
        )
        processors = []
        for name, attn in layers:
            if attn.to_k.in_features != cond_dim:
                raise ValueError(
                    f"UNet layer {name} attends to {attn.to_k.in_features}-d tokens, not the "
                    f"cross_attention_dim {cond_dim}."
                )
            proc = IPAdapterAttnProcessor2_0(
                hidden_size=attn.to_k.out_features,
                cross_attention_dim=cond_dim,
                num_tokens=(num_tokens,),
                scale=1.0,
            )
            if kv_init == "text":
                with torch.no_grad():
                    proc.to_k_ip[0].weight.copy_(attn.to_k.weight)
                    proc.to_v_ip[0].weight.copy_(attn.to_v.weight)
            processors.append(proc)
        self.attn_processors = nn.ModuleList(processors)
        context = torch.zeros(text_tokens, cond_dim)
        if learn_text_context:
            self.text_context = nn.Parameter(context)
        else:
            self.register_buffer("text_context", context)
        self.scale = scale
        self._install(unet)

    # ------------------------------------------------------------------ the UNet side

    def _install(self, unet: nn.Module) -> None:
        """Put the image projection and the IP attention processors into ``unet``, as diffusers'
        ``UNet2DConditionModel._load_ip_adapter_weights`` does."""
        param = next(unet.parameters())
        self.to(device=param.device)
        self.image_proj.to(dtype=param.dtype)
        self.attn_processors.to(dtype=param.dtype)
        ours = dict(zip(self.layer_names, self.attn_processors))
        unet.set_attn_processor({name: ours.get(name, proc)
                                 for name, proc in unet.attn_processors.items()})
        unet.encoder_hid_proj = MultiIPAdapterImageProjection([self.image_proj])
        # what diffusers' loader sets; the UNet's forward reads this attribute
        unet.config.encoder_hid_dim_type = "ip_image_proj"

    def check_unet(self, unet: nn.Module) -> None:
        """Raise ValueError unless this module's parts are the ones installed in ``unet``."""
        proj = getattr(unet, "encoder_hid_proj", None)
        installed = (
            has_ip_adapter(unet)
            and isinstance(proj, MultiIPAdapterImageProjection)
            and len(proj.image_projection_layers) == 1
            and proj.image_projection_layers[0] is self.image_proj
        )
        procs = unet.attn_processors
        installed = installed and all(
            procs.get(name) is proc for name, proc in zip(self.layer_names, self.attn_processors)
        )
        if not installed:
            raise ValueError(
                "This IPAdapterConditioning is not installed in the UNet: build it on the UNet "
                "it conditions (IPAdapterConditioning(unet, ...))."
            )

    @property
    def scale(self) -> float:
        """Weight of the image attention in every layer (IP-Adapter's ``scale``; 0 ignores
        the image). Setting it updates the installed processors."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        value = float(value)
        if not value >= 0.0:
            raise ValueError(f"{_OWNER} scale must be >= 0, got {value}.")
        self._scale = value
        for proc in self.attn_processors:
            proc.scale = [value]

    # ------------------------------------------------------------------ conditioning

    def image_tokens(self, clip_embeds: Tensor) -> Tensor:
        """``[B, num_tokens, cond_dim]``: the image tokens the UNet attends to for
        ``clip_embeds`` ``[B, clip_dim]`` (the projection the UNet applies internally)."""
        self._check_embeds(clip_embeds)
        return self.image_proj(clip_embeds)

    def _check_embeds(self, clip_embeds: Tensor) -> None:
        if clip_embeds.ndim != 2 or clip_embeds.shape[1] != self.clip_dim:
            raise ValueError(
                f"clip_embeds must have shape [B, {self.clip_dim}], got {tuple(clip_embeds.shape)}."
            )

    def _text(self, batch_size: int) -> Tensor:
        return self.text_context.expand(batch_size, -1, -1)

    def conditioning(
        self,
        clip_embeds: Tensor,
        *,
        drop_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Conditioning of each sample, for :func:`~neurobridge.generation.generate` and
        :func:`~neurobridge.generation.noise_prediction_loss`.

        Args:
            clip_embeds: ``[B, clip_dim]`` neural embeddings in CLIP space.
            drop_mask: ``[B]`` bool, True where the image embedding is zeroed; None draws it
                (no drop in eval mode).
            generator: random generator for the drawn mask.

        Returns:
            ``{"encoder_hidden_states": [B, text_tokens, cond_dim], "image_embeds": [B,
            clip_dim]}``.
        """
        self._check_embeds(clip_embeds)
        drop = self._resolve_drop_mask(clip_embeds, drop_mask, generator)
        image = torch.where(drop[:, None], torch.zeros_like(clip_embeds), clip_embeds)
        return {"encoder_hidden_states": self._text(len(clip_embeds)), "image_embeds": image}

    forward = conditioning

    def null_conditioning(self, batch_size: int) -> dict[str, Tensor]:
        """The unconditional branch for classifier-free guidance: the text context and a zero
        image embedding, shaped as :meth:`conditioning`."""
        return {
            "encoder_hidden_states": self._text(batch_size),
            "image_embeds": self.text_context.new_zeros(batch_size, self.clip_dim),
        }


# ---------------------------------------------------------------------- weight files


def read_ip_adapter_file(path: str | Path) -> dict[str, dict[str, Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` of an IP-Adapter weight file.

    ``.safetensors`` files are read with safetensors (keys prefixed ``image_proj.`` /
    ``ip_adapter.``); other files with ``torch.load(..., weights_only=True)``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"IP-Adapter weight file {path} does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(str(path), device="cpu")
            state: dict = {"image_proj": {}, "ip_adapter": {}}
            for key, value in flat.items():
                group, _, name = key.partition(".")
                if group in state:
                    state[group][name] = value
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(
            f"{path} could not be read as an IP-Adapter weight file ({type(err).__name__}: "
            f"{err})."
        ) from None
    if not (
        isinstance(state, dict)
        and isinstance(state.get("image_proj"), dict)
        and isinstance(state.get("ip_adapter"), dict)
        and state["image_proj"]
        and state["ip_adapter"]
    ):
        raise ValueError(
            f"{path} is not an IP-Adapter weight file: expected the published layout "
            '{"image_proj": {...}, "ip_adapter": {...}} (safetensors: keys prefixed '
            '"image_proj." / "ip_adapter.").'
        )
    return state


def _check_file(state: dict, adapter: IPAdapterConditioning, path: Path) -> None:
    """Raise ValueError, naming ``path`` and the dimensions, unless ``state`` fits ``adapter``."""
    proj = state["image_proj"]
    if set(proj) != _IMAGE_PROJ_KEYS:
        variant = (
            "IP-Adapter Plus" if "latents" in proj
            else "IP-Adapter Full / FaceID" if any(k.startswith(("proj.0", "perceiver")) for k in proj)
            else "an unknown variant"
        )
        raise ValueError(
            f"{path}: image_proj holds {sorted(proj)[:6]}, which looks like {variant}; only "
            f"the base IP-Adapter (image_proj keys {sorted(_IMAGE_PROJ_KEYS)}) is supported."
        )
    file_cross = proj["norm.weight"].shape[0]
    rows, file_clip = proj["proj.weight"].shape
    if file_cross != adapter.cond_dim:
        raise ValueError(
            f"{path}: the image projection makes {file_cross}-d tokens (cross-attention dim), "
            f"but the UNet's cross_attention_dim is {adapter.cond_dim}: the IP-Adapter was "
            "trained for another Stable Diffusion version (SD 1.x: 768, SD 2.x: 1024)."
        )
    if file_clip != adapter.clip_dim:
        raise ValueError(
            f"{path}: the image projection takes {file_clip}-d CLIP image embeddings, but the "
            f"aligned neural embedding is {adapter.clip_dim}-d: align to the CLIP model the "
            "IP-Adapter was trained with (e.g. ViT-H-14, 1024-d, for ip-adapter_sd15)."
        )
    if rows % file_cross or rows // file_cross != adapter.num_tokens:
        raise ValueError(
            f"{path}: the image projection makes {rows / file_cross:g} tokens of "
            f"{file_cross} dims, but num_tokens={adapter.num_tokens}: set "
            f"task.ip_adapter.num_tokens={rows // file_cross}."
        )
    if proj["proj.bias"].shape != (rows,) or proj["norm.bias"].shape != (file_cross,):
        raise ValueError(f"{path}: image_proj biases do not fit its weights.")
    ip = state["ip_adapter"]
    expected = {
        f"{2 * i + 1}.{kv}.weight" for i in range(len(adapter.layer_names))
        for kv in ("to_k_ip", "to_v_ip")
    }
    if set(ip) != expected:
        n_file = len({k.split(".")[0] for k in ip})
        raise ValueError(
            f"{path}: ip_adapter holds {len(ip)} tensors ({n_file} layer ids, e.g. "
            f"{sorted(ip)[:2]}), but the UNet has {len(adapter.layer_names)} cross-attention "
            f"layers, i.e. keys 1, 3, ..., {2 * len(adapter.layer_names) - 1} with to_k_ip / "
            "to_v_ip weights only: the file was made for another UNet (or holds LoRA weights "
            "of a variant that is not supported)."
        )
    for i, (name, proc) in enumerate(zip(adapter.layer_names, adapter.attn_processors)):
        want = tuple(proc.to_k_ip[0].weight.shape)
        for kv in ("to_k_ip", "to_v_ip"):
            got = tuple(ip[f"{2 * i + 1}.{kv}.weight"].shape)
            if got != want:
                raise ValueError(
                    f"{path}: ip_adapter {2 * i + 1}.{kv}.weight has shape {got}, but UNet "
                    f"layer {name} needs {want} ([hidden size, cross-attention dim])."
                )


def load_ip_adapter_weights(adapter: IPAdapterConditioning, path: str | Path) -> None:
    """Load a (pretrained) IP-Adapter weight file into ``adapter``'s image projection and
    ``to_k_ip`` / ``to_v_ip`` weights, in place (the installed UNet sees them at once).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not in the base IP-Adapter layout, or its CLIP dim, token
            count, cross-attention dim or layers do not fit ``adapter`` and its UNet (the
            message names the file and the dimensions).
    """
    path = Path(path).expanduser()
    state = read_ip_adapter_file(path)
    _check_file(state, adapter, path)
    with torch.no_grad():
        proj = dict(adapter.image_proj.named_parameters())
        for key, name in _IMAGE_PROJ_NAMES.items():
            proj[name].copy_(state["image_proj"][key])
        for i, proc in enumerate(adapter.attn_processors):
            proc.to_k_ip[0].weight.copy_(state["ip_adapter"][f"{2 * i + 1}.to_k_ip.weight"])
            proc.to_v_ip[0].weight.copy_(state["ip_adapter"][f"{2 * i + 1}.to_v_ip.weight"])


def ip_adapter_state_dict(adapter: IPAdapterConditioning) -> dict[str, dict[str, Tensor]]:
    """``adapter``'s image projection and IP attention weights in the published layout (CPU
    copies); the learned text context is not part of it."""
    proj = dict(adapter.image_proj.named_parameters())
    ip = {}
    for i, proc in enumerate(adapter.attn_processors):
        ip[f"{2 * i + 1}.to_k_ip.weight"] = proc.to_k_ip[0].weight.detach().cpu().clone()
        ip[f"{2 * i + 1}.to_v_ip.weight"] = proc.to_v_ip[0].weight.detach().cpu().clone()
    return {
        "image_proj": {k: proj[n].detach().cpu().clone() for k, n in _IMAGE_PROJ_NAMES.items()},
        "ip_adapter": ip,
    }


def save_ip_adapter_weights(adapter: IPAdapterConditioning, path: str | Path) -> Path:
    """Write :func:`ip_adapter_state_dict` to ``path``: safetensors (flat prefixed keys) for a
    ``.safetensors`` name, else ``torch.save`` (nested dict). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = ip_adapter_state_dict(adapter)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        flat = {f"{group}.{k}": v.contiguous() for group, d in state.items() for k, v in d.items()}
        save_file(flat, str(path))
    else:
        torch.save(state, path)
    return path
