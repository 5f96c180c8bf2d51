"""``task=reconstruct``: images generated from test-set neural activity, saved and scored."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image

from neurobridge.alignment import (
    build_clip_image_encoder,
    mean_test_embeddings,
    two_way_identification,
)
from neurobridge.data import ImagePixels, StimulusTokenizer, open_image_source
from neurobridge.generation import (
    IPAdapterConditioning,
    generate,
    pixcorr,
    save_image_grid,
    ssim,
)
from neurobridge.io import write_json_atomic
from neurobridge.tasks.common import build_datamodule, build_masking
from neurobridge.tasks.registry import Task
from neurobridge.training.checkpoint import load_adapter, read_checkpoint_kind

__all__ = ["TASK", "run_reconstruction"]

log = logging.getLogger(__name__)


def _to_pil(images: torch.Tensor) -> list[Image.Image]:
    arrays = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


def run_reconstruction(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Reconstruct test images from an adapter checkpoint (``init_from``, either route); write
    ``reconstructions.png`` and ``metrics.json`` into ``run_dir``."""
    init_from = cfg.get("init_from")
    if not init_from or read_checkpoint_kind(init_from) != "adapter":
        raise ValueError(
            f"task=reconstruct needs init_from=<checkpoint of task=adapter>, got {init_from!r}."
        )
    run_dir = Path(run_dir)
    task = cfg.task
    if int(task.max_images) < 2:
        raise ValueError(f"task.max_images must be >= 2 (2-way needs pairs), got {task.max_images}.")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    aligned, adapter, diffusion, model_config = load_adapter(init_from)
    if task.get("ip_adapter_scale") is not None:
        if not isinstance(adapter, IPAdapterConditioning):
            raise ValueError(
                f"task.ip_adapter_scale is set, but {init_from} was trained with the "
                "prompt_embeds route: leave task.ip_adapter_scale=null."
            )
        adapter.scale = float(task.ip_adapter_scale)
    for module in (aligned, adapter, diffusion.unet, diffusion.vae):
        module.to(device).eval()

    dm = build_datamodule(cfg, stimulus=True)
    dm.tokenizer = StimulusTokenizer(
        dm.masked_tokenizer(aligned.encoder, build_masking(cfg)),
        dm.image_rows,
    )
    ids, neural = mean_test_embeddings(aligned, dm, device)
    pick = np.unique(np.linspace(0, len(ids) - 1, min(int(task.max_images), len(ids))).round().astype(int))
    ids, neural = [ids[i] for i in pick], neural[torch.as_tensor(pick, device=device)]
    if len(ids) < 2:
        raise ValueError(f"The test split has {len(ids)} distinct image(s); 2-way needs at least 2.")

    size = diffusion.image_size
    pixels = ImagePixels(open_image_source(dm.images), size)
    truth = torch.as_tensor(np.stack([pixels(i) for i in ids]), device=device)
    with torch.no_grad():
        generator = torch.Generator(device=device).manual_seed(int(task.seed))
        recon = generate(
            diffusion,
            adapter.conditioning(neural),
            adapter.null_conditioning(len(ids)),
            num_inference_steps=int(task.num_inference_steps),
            guidance_scale=float(task.guidance_scale),
            generator=generator,
            height=size,
            width=size,
        )
    clip = build_clip_image_encoder(
        model_name=model_config["clip"]["model_name"],
        pretrained=model_config["clip"].get("pretrained"),
        device=device,
    )
    clip_recon, clip_truth = clip.embed_pil(_to_pil(recon)), clip.embed_pil(_to_pil(truth))
    shuffled = truth.roll(1, dims=0)  # each reconstruction against another test image
    metrics = {
        "test/pixcorr": float(pixcorr(recon, truth).mean()),
        "test/ssim": float(ssim(recon, truth).mean()),
        "test/clip_2way": float(two_way_identification(clip_recon, clip_truth)),
        "test/pixcorr_shuffled": float(pixcorr(recon, shuffled).mean()),
        "test/ssim_shuffled": float(ssim(recon, shuffled).mean()),
        "test/n_images": float(len(ids)),
    }
    scale = max(1, 96 // size)  # small (demo) images are enlarged for viewing
    save_image_grid(
        run_dir / "reconstructions.png",
        F.interpolate(truth.cpu(), scale_factor=scale, mode="nearest"),
        F.interpolate(recon.cpu(), scale_factor=scale, mode="nearest"),
        titles=ids,
    )
    write_json_atomic(run_dir / "metrics.json", metrics)
    log.info("Reconstructions of %d test images written to %s", len(ids), run_dir)
    return metrics


TASK = Task(name="reconstruct", run=run_reconstruction)
