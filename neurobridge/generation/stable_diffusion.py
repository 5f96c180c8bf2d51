"""Stable Diffusion components driven directly: latent encoding, the denoising loss, sampling.

No diffusers pipeline is used (``StableDiffusionPipeline`` needs ``transformers``); the
conditioning comes from :class:`~neurobridge.generation.adapter.DiffusionAdapter` (prompt_embeds
route) or :class:`~neurobridge.generation.ip_adapter.IPAdapterConditioning` (ip_adapter route)
as a dict of ``UNet2DConditionModel.forward`` keyword arguments, except ``"image_embeds"``
``[B, d_clip]``, the IP-Adapter image embedding, which is passed as
``added_cond_kwargs={"image_embeds": [image_embeds[:, None]]}``. Images are ``[B, 3, H, W]`` floats in
``[0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import Tensor

__all__ = [
    "DiffusionComponents",
    "build_tiny_stable_diffusion",
    "encode_images",
    "freeze",
    "generate",
    "load_stable_diffusion",
    "noise_prediction_loss",
    "tiny_unet_config",
    "tiny_vae_config",
]

_SUBFOLDERS = ("unet", "vae", "scheduler")


@dataclass
class DiffusionComponents:
    """The parts of a latent diffusion model that NeuroBridge uses.

    Attributes:
        unet: the denoiser, conditioned by cross-attention.
        vae: the image ↔ latent autoencoder.
        scheduler: the training noise schedule (a ``DDPMScheduler``); sampling builds a
            ``DDIMScheduler`` from its config.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: DDPMScheduler

    @property
    def vae_scale_factor(self) -> int:
        """Spatial downsampling factor image → latent (diffusers' meaning of the name)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """Height and width in pixels the UNet is built for (``sample_size * vae_scale_factor``)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def latent_scaling(self) -> float:
        """``vae.config.scaling_factor``: latents are multiplied by it after encoding."""
        return float(self.vae.config.scaling_factor)


def freeze(components: DiffusionComponents) -> DiffusionComponents:
    """Put the UNet and the VAE in eval mode with ``requires_grad=False``; returns the input.

    Call it again after a parent module's ``.train()`` switched them back to training mode.
    IP-Adapter parts installed in the UNet are frozen too (``AdapterTraining`` re-enables them).
    """
    for module in (components.unet, components.vae):
        module.requires_grad_(False)
        module.eval()
    return components


def tiny_unet_config(
    *, cross_attention_dim: int = 32, sample_size: int = 8, class_embed_dim: int | None = None
) -> dict:
    """Config of a tiny ``UNet2DConditionModel`` (two levels, 32/64 channels) for tests.

    With ``class_embed_dim`` set, the UNet takes ``class_labels`` ``[B, class_embed_dim]``
    through a projection class embedding, as unCLIP models do.
    """
    config = dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
    )
    if class_embed_dim is not None:
        config.update(
            class_embed_type="projection", projection_class_embeddings_input_dim=class_embed_dim
        )
    return config


def tiny_vae_config(*, sample_size: int = 32) -> dict:
    """Config of a tiny ``AutoencoderKL`` (32/64 channels, downsampling 2, 4 latent channels)."""
    return dict(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
    )


def _training_scheduler() -> DDPMScheduler:
    """Stable Diffusion's noise schedule: 1000 steps, scaled-linear betas, epsilon target."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def build_tiny_stable_diffusion(
    *,
    cross_attention_dim: int = 32,
    image_size: int = 32,
    class_embed_dim: int | None = None,
    seed: int = 0,
) -> DiffusionComponents:
    """Randomly initialised, frozen tiny UNet + VAE with Stable Diffusion's schedule (tests).

    The UNet's ``sample_size`` is ``image_size // 2`` (the VAE downsamples by 2).
    """
    if image_size % 2 != 0:
        raise ValueError(f"image_size must be even, got {image_size}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(
            tiny_unet_config(
                cross_attention_dim=cross_attention_dim,
                sample_size=image_size // 2,
                class_embed_dim=class_embed_dim,
            )
        )
        vae = AutoencoderKL.from_config(tiny_vae_config(sample_size=image_size))
    return freeze(DiffusionComponents(unet=unet, vae=vae, scheduler=_training_scheduler()))


def load_stable_diffusion(
    path_or_id: str | Path, *, torch_dtype: torch.dtype = torch.float32
) -> DiffusionComponents:
    """Load the UNet, the VAE and the noise schedule of a diffusers Stable Diffusion model.

    Never downloads (``local_files_only=True``). The UNet and VAE are returned frozen
    (:func:`freeze`); the scheduler config, whatever its class on disk, is loaded into a
    ``DDPMScheduler``.

    Args:
        path_or_id: a local diffusers model folder with ``unet/``, ``vae/`` and ``scheduler/``
            subfolders, or a model id already in the Hugging Face cache.
        torch_dtype: dtype of the UNet and VAE weights.

    Raises:
        FileNotFoundError: the folder lacks a subfolder, or the id is not in the local cache.
    """
    expected = (
        "expected a diffusers Stable Diffusion folder with unet/, vae/ and scheduler/ "
        "subfolders, or a model id already in the Hugging Face cache (nothing is downloaded)"
    )
    local = Path(path_or_id).expanduser()
    if local.exists():
        missing = [name for name in _SUBFOLDERS if not (local / name).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{local}: missing subfolder(s) {', '.join(missing)}; {expected}."
            )
        source = str(local)
    else:
        source = str(path_or_id)
    try:
        unet = UNet2DConditionModel.from_pretrained(
            source, subfolder="unet", torch_dtype=torch_dtype, local_files_only=True
        )
        vae = AutoencoderKL.from_pretrained(
            source, subfolder="vae", torch_dtype=torch_dtype, local_files_only=True
        )
        scheduler = DDPMScheduler.from_pretrained(
            source, subfolder="scheduler", local_files_only=True
        )
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"cannot load Stable Diffusion from {path_or_id}: {expected}."
        ) from err
    return freeze(DiffusionComponents(unet=unet, vae=vae, scheduler=scheduler))


def _randn(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Standard normal draw on ``generator``'s device (so a CPU generator serves CUDA too)."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


def _check_images(images: Tensor, factor: int) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [B, 3, H, W], got {tuple(images.shape)}.")
    if images.shape[2] % factor or images.shape[3] % factor:
        raise ValueError(
            f"image height and width must be multiples of the VAE factor {factor}, got "
            f"{tuple(images.shape[2:])}."
        )


def encode_images(components: DiffusionComponents, images: Tensor) -> Tensor:
    """Latents of ``images`` for the UNet: the mean of the VAE posterior, scaled.

    The posterior mean (not a sample) is used, so latents are deterministic and can be cached.
    Runs without gradient.

    Args:
        components: the model.
        images: ``[B, 3, H, W]`` in ``[0, 1]``; ``H`` and ``W`` multiples of
            ``components.vae_scale_factor``.

    Returns:
        ``[B, latent_channels, H / f, W / f]`` latents in the VAE's dtype.
    """
    vae = components.vae
    _check_images(images, components.vae_scale_factor)
    with torch.no_grad():
        pixels = images.to(device=vae.device, dtype=vae.dtype) * 2.0 - 1.0
        latents = vae.encode(pixels).latent_dist.mean
    if vae.config.shift_factor is not None:
        latents = latents - vae.config.shift_factor
    return latents * components.latent_scaling


def _decode_latents(components: DiffusionComponents, latents: Tensor) -> Tensor:
    vae = components.vae
    latents = latents / components.latent_scaling
    if vae.config.shift_factor is not None:
        latents = latents + vae.config.shift_factor
    images = vae.decode(latents.to(vae.dtype)).sample
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def _to_unet(conditioning: dict[str, Tensor], unet: UNet2DConditionModel) -> dict[str, Tensor]:
    """``conditioning`` on the UNet's device and dtype, checked against its IP-Adapter state."""
    if "encoder_hidden_states" not in conditioning:
        raise ValueError("conditioning must contain 'encoder_hidden_states'.")
    ip_installed = getattr(unet.config, "encoder_hid_dim_type", None) == "ip_image_proj"
    if ("image_embeds" in conditioning) != ip_installed:
        raise ValueError(
            "conditioning with 'image_embeds' (the ip_adapter route) needs a UNet with an "
            "IP-Adapter installed (IPAdapterConditioning), and such a UNet needs them; got "
            f"keys {sorted(conditioning)} for a UNet "
            f"{'with' if ip_installed else 'without'} an IP-Adapter."
        )
    return {k: v.to(device=unet.device, dtype=unet.dtype) for k, v in conditioning.items()}


def _unet_kwargs(conditioning: dict[str, Tensor]) -> dict:
    """``UNet2DConditionModel.forward`` keyword arguments: ``image_embeds`` ``[B, d]`` becomes
    ``added_cond_kwargs={"image_embeds": [[B, 1, d]]}`` (one IP-Adapter, one image each)."""
    kwargs = {k: v for k, v in conditioning.items() if k != "image_embeds"}
    if "image_embeds" in conditioning:
        kwargs["added_cond_kwargs"] = {"image_embeds": [conditioning["image_embeds"][:, None]]}
    return kwargs


def noise_prediction_loss(
    components: DiffusionComponents,
    latents: Tensor,
    conditioning: dict[str, Tensor],
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DDPM denoising loss of the (frozen) UNet under ``conditioning``.

    One uniformly drawn timestep and one Gaussian noise per sample; the target is the noise
    (``prediction_type="epsilon"``), the velocity (``"v_prediction"``) or the clean latents
    (``"sample"``), following ``components.scheduler.config.prediction_type``. Gradients flow
    into ``conditioning`` (the adapter) and into the UNet parameters that require them (the
    IP-Adapter parts of the ip_adapter route), not into the frozen base UNet.

    Args:
        components: the model.
        latents: ``[B, C, h, w]`` clean latents from :func:`encode_images`.
        conditioning: ``UNet2DConditionModel.forward`` keyword arguments with batch ``B`` (see
            the module docstring for ``"image_embeds"``).
        generator: random generator of timesteps and noise (drawn on its device).

    Returns:
        Scalar float32 mean squared error.
    """
    scheduler, unet = components.scheduler, components.unet
    latents = latents.to(device=unet.device, dtype=unet.dtype)
    batch = latents.shape[0]
    noise = _randn(tuple(latents.shape), generator, latents.device, latents.dtype)
    draw_device = generator.device if generator is not None else latents.device
    timesteps = torch.randint(
        0,
        scheduler.config.num_train_timesteps,
        (batch,),
        generator=generator,
        device=draw_device,
    ).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, **_unet_kwargs(_to_unet(conditioning, unet))).sample
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    elif prediction_type == "sample":
        target = latents
    else:
        raise ValueError(f"unsupported scheduler prediction_type {prediction_type!r}.")
    return F.mse_loss(prediction.float(), target.float())


@torch.no_grad()
def generate(
    components: DiffusionComponents,
    conditioning: dict[str, Tensor],
    null_conditioning: dict[str, Tensor] | None,
    *,
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
    generator: torch.Generator | None = None,
    height: int | None = None,
    width: int | None = None,
) -> Tensor:
    """Sample images with DDIM (eta = 0) and classifier-free guidance.

    The DDIM scheduler is built from the training scheduler's config with
    ``clip_sample=False`` (latents are not bounded to ``[-1, 1]``; configs saved without the
    key would otherwise get DDIM's default ``True``). Only the initial latents are random, so a
    generator with a fixed seed gives the same images.

    Args:
        components: the model.
        conditioning: ``UNet2DConditionModel.forward`` keyword arguments with batch ``B`` (see
            the module docstring for ``"image_embeds"``).
        null_conditioning: the unconditional branch, same keys and batch; required when
            ``guidance_scale > 1``, unused otherwise.
        num_inference_steps: number of DDIM steps.
        guidance_scale: ``uncond + scale * (cond - uncond)``; ``<= 1`` disables guidance
            (plain conditional prediction).
        generator: random generator of the initial latents (drawn on its device).
        height: image height; default ``components.image_size``.
        width: image width; default ``components.image_size``.

    Returns:
        ``[B, 3, height, width]`` float32 images in ``[0, 1]``.
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
    guided = guidance_scale > 1.0
    if guided and null_conditioning is None:
        raise ValueError(
            f"guidance_scale={guidance_scale} > 1 needs null_conditioning (the unconditional "
            "branch, e.g. adapter.null_conditioning(batch_size)); pass it or use "
            "guidance_scale=1."
        )
    unet = components.unet
    factor = components.vae_scale_factor
    height = components.image_size if height is None else height
    width = components.image_size if width is None else width
    if height % factor or width % factor:
        raise ValueError(
            f"height and width must be multiples of the VAE factor {factor}, got "
            f"({height}, {width})."
        )
    cond = _to_unet(conditioning, unet)
    batch = cond["encoder_hidden_states"].shape[0]
    if guided:
        null = _to_unet(null_conditioning, unet)
        null_shapes = {k: tuple(v.shape) for k, v in null.items()}
        cond_shapes = {k: tuple(v.shape) for k, v in cond.items()}
        if null_shapes != cond_shapes:
            raise ValueError(
                "null_conditioning must have the keys and shapes of conditioning, got "
                f"{null_shapes} vs {cond_shapes}."
            )
        cond = {k: torch.cat([null[k], cond[k]]) for k in cond}

    unet_kwargs = _unet_kwargs(cond)
    scheduler = DDIMScheduler.from_config(components.scheduler.config, clip_sample=False)
    scheduler.set_timesteps(num_inference_steps, device=unet.device)
    shape = (batch, unet.config.in_channels, height // factor, width // factor)
    latents = _randn(shape, generator, unet.device, unet.dtype) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = torch.cat([latents, latents]) if guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        prediction = unet(model_input, t, **unet_kwargs).sample
        if guided:
            uncond, conditional = prediction.chunk(2)
            prediction = uncond + guidance_scale * (conditional - uncond)
        latents = scheduler.step(prediction, t, latents).prev_sample
    return _decode_latents(components, latents)


def build_diffusion(cfg: dict) -> DiffusionComponents:
    """Frozen diffusion components from a ``task.diffusion`` config: ``pretrained`` (a local
    Stable Diffusion folder or a cached model id) or, when null, the tiny random model
    (``tiny``: the arguments of :func:`build_tiny_stable_diffusion`)."""
    if cfg.get("pretrained"):
        return load_stable_diffusion(cfg["pretrained"])
    return build_tiny_stable_diffusion(**cfg["tiny"])
