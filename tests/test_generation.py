import numpy as np
import pytest
import torch
from PIL import Image

from neurobridge.generation import (
    DiffusionAdapter,
    adapter_for_unet,
    build_tiny_stable_diffusion,
    check_adapter_matches_unet,
    encode_images,
    generate,
    load_stable_diffusion,
    noise_prediction_loss,
    pixcorr,
    save_image_grid,
    ssim,
)

CLIP_DIM = 16
TINY_ADAPTER = dict(num_tokens=8, hidden_dim=64, refiner_depth=1, refiner_heads=2)


@pytest.fixture(scope="module")
def sd():
    return build_tiny_stable_diffusion(cross_attention_dim=32, image_size=32)


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def embeds():
    return torch.randn(4, CLIP_DIM, generator=torch.Generator().manual_seed(2))


def _adapter(unet, **kwargs):
    torch.manual_seed(0)
    return adapter_for_unet(unet, clip_dim=CLIP_DIM, **{**TINY_ADAPTER, **kwargs})


# ---------------------------------------------------------------------------- adapter


def test_adapter_conditioning_feeds_unet(sd, embeds):
    adapter = _adapter(sd.unet).eval()
    check_adapter_matches_unet(adapter, sd.unet)
    cond = adapter.conditioning(embeds)
    assert set(cond) == {"encoder_hidden_states"}
    assert cond["encoder_hidden_states"].shape == (4, 8, 32)
    assert torch.equal(adapter(embeds), cond["encoder_hidden_states"])
    sample = torch.randn(4, 4, 16, 16)
    with torch.no_grad():
        out = sd.unet(sample, torch.tensor([10, 200, 500, 900]), **cond).sample
        null_out = sd.unet(sample, 10, **adapter.null_conditioning(4)).sample
    assert out.shape == null_out.shape == sample.shape


def test_adapter_class_labels_route(embeds):
    sd_unclip = build_tiny_stable_diffusion(class_embed_dim=24)
    adapter = _adapter(sd_unclip.unet).eval()
    assert adapter.class_embed_dim == 24
    cond = adapter.conditioning(embeds)
    assert cond["class_labels"].shape == (4, 24)
    null = adapter.null_conditioning(4)
    assert set(null) == {"encoder_hidden_states", "class_labels"}
    assert torch.equal(null["class_labels"], torch.zeros(4, 24))
    with torch.no_grad():
        out = sd_unclip.unet(torch.randn(4, 4, 16, 16), 50, **cond).sample
    assert out.shape == (4, 4, 16, 16)
    # an adapter without class labels does not fit this UNet
    plain = DiffusionAdapter(clip_dim=CLIP_DIM, cond_dim=32, **TINY_ADAPTER)
    with pytest.raises(ValueError, match="class_embed_dim=None"):
        check_adapter_matches_unet(plain, sd_unclip.unet)


def test_adapter_unet_dim_mismatch_raises(sd):
    adapter = DiffusionAdapter(clip_dim=CLIP_DIM, cond_dim=64, **TINY_ADAPTER)
    with pytest.raises(ValueError, match="adapter cond_dim=64 != UNet cross_attention_dim=32"):
        check_adapter_matches_unet(adapter, sd.unet)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(clip_dim=0), "clip_dim"),
        (dict(num_tokens=-1), "num_tokens"),
        (dict(refiner_depth=1.5), "refiner_depth"),
        (dict(refiner_heads=3), "refiner_heads"),
        (dict(cond_drop_prob=1.0), "cond_drop_prob"),
        (dict(cond_drop_prob=-0.1), "cond_drop_prob"),
        (dict(class_embed_dim=0), "class_embed_dim"),
    ],
)
def test_adapter_validates_arguments(kwargs, name):
    args = dict(clip_dim=CLIP_DIM, cond_dim=32, **TINY_ADAPTER) | kwargs
    with pytest.raises(ValueError, match=name):
        DiffusionAdapter(**args)


def test_cond_drop_replaces_exactly_dropped_samples(embeds):
    adapter = DiffusionAdapter(
        clip_dim=CLIP_DIM, cond_dim=32, class_embed_dim=6, cond_drop_prob=0.5, **TINY_ADAPTER
    )
    with torch.no_grad():
        adapter.null_tokens.normal_()  # distinguishable from any real conditioning
    adapter.eval()
    clean = adapter.conditioning(embeds)
    null = adapter.null_conditioning(4)
    adapter.train()  # dropout is 0: train mode changes only the conditioning drop
    drop = torch.tensor([True, False, False, True])
    cond = adapter.conditioning(embeds, drop_mask=drop)
    for key in ("encoder_hidden_states", "class_labels"):
        assert torch.equal(cond[key][drop], null[key][drop])
        assert torch.allclose(cond[key][~drop], clean[key][~drop])
        assert not torch.allclose(cond[key][drop], clean[key][drop])

    # drawn masks: reproducible with a generator, every replaced sample is exactly the null one
    big = embeds.repeat(16, 1)
    mask = adapter.sample_drop_mask(64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(
        mask, adapter.sample_drop_mask(64, generator=torch.Generator().manual_seed(5))
    )
    assert 0 < int(mask.sum()) < 64
    hidden = adapter(big, generator=torch.Generator().manual_seed(5))
    is_null = (hidden == adapter.null_tokens).flatten(1).all(1)
    assert torch.equal(is_null, mask)
    # eval mode never drops
    adapter.eval()
    assert not adapter.sample_drop_mask(64, generator=torch.Generator().manual_seed(5)).any()


# ---------------------------------------------------------------------------- training


def test_adapter_training_lowers_loss_with_frozen_diffusion(sd, images, embeds):
    latents = encode_images(sd, images)
    assert latents.shape == (4, 4, 16, 16)
    adapter = _adapter(sd.unet, cond_drop_prob=0.0)
    frozen_before = {
        name: p.clone() for module in (sd.unet, sd.vae) for name, p in module.state_dict().items()
    }
    adapter_before = [p.detach().clone() for p in adapter.parameters()]

    def eval_loss():
        adapter.eval()
        with torch.no_grad():
            loss = noise_prediction_loss(
                sd,
                latents.repeat(8, 1, 1, 1),
                adapter.conditioning(embeds.repeat(8, 1)),
                generator=torch.Generator().manual_seed(99),
            )
        adapter.train()
        return loss.item()

    eval_before = eval_loss()
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(50):
        loss = noise_prediction_loss(sd, latents, adapter.conditioning(embeds), generator=gen)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert eval_loss() < 0.97 * eval_before

    frozen_after = {
        name: p for module in (sd.unet, sd.vae) for name, p in module.state_dict().items()
    }
    assert all(torch.equal(frozen_before[k], frozen_after[k]) for k in frozen_before)
    assert all(p.grad is None for p in sd.unet.parameters())
    assert not sd.unet.training and not sd.vae.training
    assert any(not torch.equal(a, b) for a, b in zip(adapter_before, adapter.parameters()))


def test_noise_prediction_loss_v_prediction(sd, images, embeds):
    from diffusers import DDPMScheduler

    adapter = _adapter(sd.unet).eval()
    v_sd = type(sd)(
        unet=sd.unet,
        vae=sd.vae,
        scheduler=DDPMScheduler.from_config(sd.scheduler.config, prediction_type="v_prediction"),
    )
    with torch.no_grad():
        loss = noise_prediction_loss(
            v_sd,
            encode_images(sd, images),
            adapter.conditioning(embeds),
            generator=torch.Generator().manual_seed(0),
        )
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------- sampling


def test_generate_shape_range_and_determinism(sd, embeds):
    adapter = _adapter(sd.unet).eval()
    with torch.no_grad():
        cond, null = adapter.conditioning(embeds[:2]), adapter.null_conditioning(2)

    def run(seed, **kwargs):
        return generate(
            sd,
            cond,
            null,
            num_inference_steps=3,
            guidance_scale=3.0,
            generator=torch.Generator().manual_seed(seed),
            **kwargs,
        )

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (2, 3, 32, 32) and a.dtype == torch.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert run(0, height=16, width=24).shape == (2, 3, 16, 24)
    unguided = generate(
        sd,
        cond,
        None,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert unguided.shape == (2, 3, 32, 32)


def test_generate_guidance_without_null_raises(sd, embeds):
    adapter = _adapter(sd.unet).eval()
    with pytest.raises(ValueError, match="null_conditioning"):
        generate(sd, adapter.conditioning(embeds), None, guidance_scale=2.0)


# ---------------------------------------------------------------------------- loading


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks`:UserWarning")  # diffusers
def test_load_stable_diffusion_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)) as info:
        load_stable_diffusion(tmp_path)
    assert "unet/, vae/ and scheduler/" in str(info.value)
    with pytest.raises(FileNotFoundError, match="not-a-cached/model-id"):
        load_stable_diffusion("not-a-cached/model-id")


def test_load_stable_diffusion_round_trip(sd, tmp_path):
    sd.unet.save_pretrained(tmp_path / "unet")
    sd.vae.save_pretrained(tmp_path / "vae")
    sd.scheduler.save_pretrained(tmp_path / "scheduler")
    loaded = load_stable_diffusion(tmp_path)
    for original, restored in [(sd.unet, loaded.unet), (sd.vae, loaded.vae)]:
        assert not restored.training
        assert not any(p.requires_grad for p in restored.parameters())
        state = restored.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in original.state_dict().items())
    assert loaded.scheduler.config.beta_schedule == "scaled_linear"
    assert torch.equal(loaded.scheduler.alphas_cumprod, sd.scheduler.alphas_cumprod)
    assert loaded.vae_scale_factor == 2
    assert loaded.latent_scaling == pytest.approx(0.18215)


# ---------------------------------------------------------------------------- image metrics


def test_pixcorr_identity_and_negation(images):
    assert torch.allclose(pixcorr(images, images), torch.ones(4), atol=1e-5)
    assert torch.allclose(pixcorr(-images, images), -torch.ones(4), atol=1e-5)
    assert torch.allclose(pixcorr(1.0 - images, images), -torch.ones(4), atol=1e-5)
    # a smaller reconstruction is resized to the stimulus size
    small = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear")
    assert pixcorr(small, images).shape == (4,)
    with pytest.raises(ValueError, match="batch size"):
        pixcorr(images[:2], images)


def test_ssim_identical_is_one(images):
    assert torch.allclose(ssim(images, images), torch.ones(4), atol=1e-5)
    noisy = (images + 0.3 * torch.randn_like(images)).clamp(0, 1)
    assert (ssim(noisy, images) < 0.9).all()
    with pytest.raises(ValueError, match="3 channels"):
        ssim(images[:, :1], images[:, :1])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ssim(images[0], images[0])


def test_save_image_grid(tmp_path, images):
    recon = torch.rand(4, 3, 16, 16)
    path = save_image_grid(tmp_path / "grid.png", images, recon)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (2 * 32 + 3 * 2, 4 * (32 + 2) + 2)
        pixels = np.asarray(im.convert("RGB"))
    expected = (images[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(pixels[2:34, 2:34], expected)
    titled = save_image_grid(tmp_path / "titled.png", images, recon, titles=list("abcd"))
    with Image.open(titled) as im:
        assert im.size[0] == 70 and im.size[1] > 4 * 34 + 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "titled.png"]
    with pytest.raises(ValueError, match="titles"):
        save_image_grid(tmp_path / "bad.png", images, recon, titles=["a"])


def test_generate_null_batch_mismatch_raises(sd, embeds):
    adapter = _adapter(sd.unet).eval()
    with pytest.raises(ValueError, match="keys and shapes"):
        generate(
            sd, adapter.conditioning(embeds), adapter.null_conditioning(2), num_inference_steps=1
        )
