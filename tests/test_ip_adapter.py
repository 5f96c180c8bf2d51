"""The ip_adapter conditioning route: diffusers' IP-Adapter parts driven by the neural embedding."""

import json
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from hydra import compose, initialize_config_dir

from neurobridge.generation import (
    DiffusionAdapter,
    IPAdapterConditioning,
    adapter_for_unet,
    build_tiny_stable_diffusion,
    check_adapter_matches_unet,
    encode_images,
    generate,
    has_ip_adapter,
    ip_adapter_state_dict,
    load_ip_adapter_weights,
    noise_prediction_loss,
    save_ip_adapter_weights,
)
from neurobridge.generation.stable_diffusion import _unet_kwargs

CLIP_DIM = 16
CROSS_DIM = 32
N_CROSS_LAYERS = 4  # tiny UNet: down 1, up 2, mid 1


def _sd():
    """A fresh tiny SD (the IP-Adapter parts are installed into its UNet)."""
    return build_tiny_stable_diffusion(cross_attention_dim=CROSS_DIM, image_size=32, seed=0)


def _ip(sd, **kwargs):
    torch.manual_seed(0)
    return IPAdapterConditioning(sd.unet, clip_dim=CLIP_DIM, **{"text_tokens": 5, **kwargs})


@pytest.fixture(scope="module")
def embeds():
    return torch.randn(3, CLIP_DIM, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def noisy():
    return torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(3))


def _predict(sd, cond, noisy, t=400):
    with torch.no_grad():
        return sd.unet(noisy, t, **_unet_kwargs(cond)).sample


def _published(seed=0, *, clip_dim=CLIP_DIM, cross=CROSS_DIM, tokens=4, layers=None):
    """Random weights in the published IP-Adapter layout, for the tiny UNet by default."""
    g = torch.Generator().manual_seed(seed)
    hidden = layers or [32, 32, 32, 64]  # to_k out dims of the tiny UNet's cross-attention
    ip = {}
    for i, h in enumerate(hidden):
        ip[f"{2 * i + 1}.to_k_ip.weight"] = torch.randn(h, cross, generator=g) * 0.1
        ip[f"{2 * i + 1}.to_v_ip.weight"] = torch.randn(h, cross, generator=g) * 0.1
    return {
        "image_proj": {
            "proj.weight": torch.randn(tokens * cross, clip_dim, generator=g) * 0.3,
            "proj.bias": torch.randn(tokens * cross, generator=g) * 0.1,
            "norm.weight": 1 + 0.1 * torch.randn(cross, generator=g),
            "norm.bias": 0.1 * torch.randn(cross, generator=g),
        },
        "ip_adapter": ip,
    }


def _write(state, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({f"{g}.{k}": v for g, d in state.items() for k, v in d.items()}, str(path))
    else:
        torch.save(state, path)
    return path


# ---------------------------------------------------------------------------- conditioning


def test_ip_conditioning_shapes_and_installation(embeds, noisy):
    sd = _sd()
    base_keys = set(sd.unet.state_dict())
    ip = _ip(sd).eval()
    check_adapter_matches_unet(ip, sd.unet)
    assert has_ip_adapter(sd.unet) and ip.cond_dim == CROSS_DIM
    assert len(ip.layer_names) == N_CROSS_LAYERS
    assert all(name.endswith("attn2.processor") for name in ip.layer_names)
    procs = sd.unet.attn_processors
    assert all(isinstance(procs[n], IPAdapterAttnProcessor2_0) for n in ip.layer_names)
    assert not any(isinstance(p, IPAdapterAttnProcessor2_0)
                   for n, p in procs.items() if n not in ip.layer_names)
    # the IP parts are shared with the UNet; its base weights are all still there
    added = set(sd.unet.state_dict()) - base_keys
    assert base_keys <= set(sd.unet.state_dict()) and len(added) == 4 + 2 * N_CROSS_LAYERS
    assert all("encoder_hid_proj" in k or ".processor.to_" in k for k in added)

    cond = ip.conditioning(embeds)
    assert set(cond) == {"encoder_hidden_states", "image_embeds"}
    assert cond["encoder_hidden_states"].shape == (3, 5, CROSS_DIM)
    assert torch.equal(cond["image_embeds"], embeds)
    assert ip.image_tokens(embeds).shape == (3, 4, CROSS_DIM)
    null = ip.null_conditioning(3)
    assert torch.equal(null["image_embeds"], torch.zeros(3, CLIP_DIM))
    assert torch.equal(null["encoder_hidden_states"], cond["encoder_hidden_states"])
    out = _predict(sd, cond, noisy)
    assert out.shape == noisy.shape and torch.isfinite(out).all()
    # the image embedding steers the UNet; scale 0 removes the image attention entirely
    assert not torch.allclose(out, _predict(sd, ip.conditioning(-embeds), noisy))
    ip.scale = 0.0
    assert torch.equal(_predict(sd, ip.conditioning(embeds), noisy),
                       _predict(sd, ip.conditioning(-embeds), noisy))
    # kv_init="text": the image keys / values start as the text ones
    attn = sd.unet.get_submodule(ip.layer_names[0].removesuffix(".processor"))
    assert torch.equal(ip.attn_processors[0].to_k_ip[0].weight, attn.to_k.weight)
    rand = _ip(_sd(), kv_init="random")
    assert not torch.equal(rand.attn_processors[0].to_k_ip[0].weight, attn.to_k.weight)


def test_ip_route_refuses_misuse(embeds):
    sd = _sd()
    ip = _ip(sd)
    with pytest.raises(ValueError, match="already has an encoder_hid_proj"):
        _ip(sd)
    with pytest.raises(ValueError, match="not installed in the UNet"):
        check_adapter_matches_unet(ip, _sd().unet)
    with pytest.raises(ValueError, match="IP-Adapter installed; a DiffusionAdapter"):
        check_adapter_matches_unet(adapter_for_unet(_sd().unet, clip_dim=CLIP_DIM), sd.unet)
    with pytest.raises(ValueError, match="needs a UNet with an IP-Adapter installed"):
        noise_prediction_loss(_sd(), torch.zeros(3, 4, 16, 16), ip.conditioning(embeds))
    with pytest.raises(ValueError, match="projection class embedding"):
        _ip(build_tiny_stable_diffusion(class_embed_dim=24))
    with pytest.raises(ValueError, match=r"clip_embeds must have shape \[B, 16\]"):
        ip.conditioning(torch.zeros(3, 8))
    for kwargs, name in [(dict(num_tokens=0), "num_tokens"), (dict(cond_drop_prob=1.0), "cond_drop_prob"),
                         (dict(scale=-1.0), "scale"), (dict(kv_init="zeros"), "kv_init")]:
        with pytest.raises(ValueError, match=name):
            _ip(_sd(), **kwargs)


# ---------------------------------------------------------------------------- training


def test_only_ip_parts_learn_and_base_unet_is_bit_identical(embeds):
    sd = _sd()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    latents = encode_images(sd, images)
    base_before = {k: v.clone() for k, v in sd.unet.state_dict().items()}
    vae_before = {k: v.clone() for k, v in sd.vae.state_dict().items()}
    ip = _ip(sd, cond_drop_prob=0.0)
    ip_keys = set(sd.unet.state_dict()) - set(base_before)
    ip_before = {k: v.clone() for k, v in ip.state_dict().items()}
    trainable = [n for n, p in sd.unet.named_parameters() if p.requires_grad]
    assert trainable and all(n in ip_keys for n in trainable)

    opt = torch.optim.AdamW(ip.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        loss = noise_prediction_loss(sd, latents, ip.conditioning(embeds), generator=gen)
        opt.zero_grad()
        loss.backward()
        got_grad = {n for n, p in sd.unet.named_parameters() if p.grad is not None}
        assert got_grad == ip_keys
        assert ip.text_context.grad is not None
        opt.step()

    after = sd.unet.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in base_before.items())
    assert all(torch.equal(v, sd.vae.state_dict()[k]) for k, v in vae_before.items())
    changed = {k for k, v in ip.state_dict().items() if not torch.equal(v, ip_before[k])}
    assert changed == set(ip_before)  # projection, every to_k_ip / to_v_ip, text context


def test_cond_drop_zeroes_exactly_the_dropped_embeddings(embeds):
    ip = _ip(_sd(), cond_drop_prob=0.5).train()
    drop = torch.tensor([True, False, True])
    cond = ip.conditioning(embeds, drop_mask=drop)
    assert torch.equal(cond["image_embeds"][drop], torch.zeros(2, CLIP_DIM))
    assert torch.equal(cond["image_embeds"][~drop], embeds[~drop])
    mask = ip.sample_drop_mask(64, generator=torch.Generator().manual_seed(5))
    drawn = ip.conditioning(embeds.repeat(22, 1)[:64], generator=torch.Generator().manual_seed(5))
    assert torch.equal((drawn["image_embeds"] == 0).all(1), mask) and 0 < int(mask.sum()) < 64
    assert not ip.eval().sample_drop_mask(64).any()


def test_guidance_with_zero_image_embedding(embeds, noisy):
    sd = _sd()
    ip = _ip(sd).eval()
    cond, null = ip.conditioning(embeds), ip.null_conditioning(3)
    assert not torch.allclose(_predict(sd, cond, noisy), _predict(sd, null, noisy))

    def run(scale, null_cond=null):
        return generate(sd, cond, null_cond, num_inference_steps=2, guidance_scale=scale,
                        generator=torch.Generator().manual_seed(0))

    guided, plain = run(3.0), run(1.0, None)
    assert guided.shape == (3, 3, 32, 32) and 0 <= guided.min() and guided.max() <= 1
    assert torch.equal(guided, run(3.0))
    assert not torch.allclose(guided, plain)
    unconditional = generate(sd, null, None, num_inference_steps=2, guidance_scale=1.0,
                             generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(plain, unconditional)


# ---------------------------------------------------------------------------- weight files


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_published_weight_file_round_trip(tmp_path, suffix, embeds, noisy):
    path = _write(_published(), tmp_path / f"ip-adapter_tiny{suffix}")
    sd = _sd()
    ip = _ip(sd).eval()
    load_ip_adapter_weights(ip, path)
    exported = ip_adapter_state_dict(ip)
    original = _published()
    for group in ("image_proj", "ip_adapter"):
        assert exported[group].keys() == original[group].keys()
        assert all(torch.equal(exported[group][k], original[group][k]) for k in original[group])
    ours = _predict(sd, ip.conditioning(embeds), noisy)

    # diffusers' own IP-Adapter loader on an identical UNet gives the same predictions
    reference = _sd()
    reference.unet._load_ip_adapter_weights([_published()], low_cpu_mem_usage=False)
    with torch.no_grad():
        theirs = reference.unet(
            noisy, 400, encoder_hidden_states=torch.zeros(3, 5, CROSS_DIM),
            added_cond_kwargs={"image_embeds": [embeds[:, None]]},
        ).sample
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)

    # save -> load into a fresh UNet: identical predictions
    saved = save_ip_adapter_weights(ip, tmp_path / f"exported{suffix}")
    sd2 = _sd()
    ip2 = _ip(sd2, kv_init="random").eval()
    load_ip_adapter_weights(ip2, saved)
    torch.testing.assert_close(_predict(sd2, ip2.conditioning(embeds), noisy), ours, rtol=0, atol=0)


@pytest.mark.parametrize(
    "state, message",
    [
        (dict(clip_dim=24), r"takes 24-d CLIP image embeddings, but the aligned neural embedding is 16-d"),
        (dict(cross=48), r"makes 48-d tokens \(cross-attention dim\), but the UNet's cross_attention_dim is 32"),
        (dict(tokens=8), r"makes 8 tokens of 32 dims, but num_tokens=4: set task.ip_adapter.num_tokens=8"),
        (dict(layers=[32, 32, 32]), r"holds 6 tensors .* UNet has 4 cross-attention layers"),
        (dict(layers=[32, 32, 32, 32]), r"7.to_k_ip.weight has shape \(32, 32\), but UNet layer mid_block"),
    ],
)
def test_mismatched_weight_file_names_file_and_dims(tmp_path, state, message):
    path = _write(_published(**state), tmp_path / "ip-adapter_wrong.bin")
    ip = _ip(_sd())
    with pytest.raises(ValueError, match=message) as info:
        load_ip_adapter_weights(ip, path)
    assert str(path) in str(info.value)


def test_unsupported_or_unreadable_weight_files(tmp_path):
    ip = _ip(_sd())
    plus = _published()
    plus["image_proj"] = {"latents": torch.zeros(1, 16, 32), "proj_in.weight": torch.zeros(32, 16)}
    with pytest.raises(ValueError, match="IP-Adapter Plus; only the base IP-Adapter"):
        load_ip_adapter_weights(ip, _write(plus, tmp_path / "plus.bin"))
    torch.save({"state_dict": {}}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match=r"other.bin is not an IP-Adapter weight file"):
        load_ip_adapter_weights(ip, tmp_path / "other.bin")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"broken.safetensors could not be read"):
        load_ip_adapter_weights(ip, tmp_path / "broken.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.bin does not exist"):
        load_ip_adapter_weights(ip, tmp_path / "missing.bin")


# ---------------------------------------------------------------------------- CLI chain

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")
FAST = [
    "data=recordings", "model.encoder.dim=32", "model.encoder.dim_head=16",
    "model.decoder.dim_head=16", "model.encoder.num_latents_per_step=4", "data.batch_size=8",
    "data.max_val_windows=4", "trainer.enable_progress_bar=false", "trainer.max_steps=4",
    "trainer.val_check_interval=2",
]


def _cfg(overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=overrides)


def test_cli_adapter_ip_route_then_reconstruct(tmp_path):
    """task=align (random-init encoder) → task=adapter task.route=ip_adapter (from a published
    weight file) → task=reconstruct, on tiny synthetic visual data."""
    from neurobridge.datasets.synthetic import SyntheticConfig, generate_synthetic_recordings
    from neurobridge.generation import build_conditioning
    from neurobridge.tasks.adapter import AdapterTraining
    from neurobridge.training.checkpoint import load_adapter
    from neurobridge.training.run import run

    root = tmp_path / "data"
    generate_synthetic_recordings(root, SyntheticConfig(
        n_sessions=1, units_per_region=6, duration=40.0, seed=7, stimulus="images",
        n_train_images=16, n_valid_images=4, n_test_images=6,
    ))
    data = [*FAST, f"data.root={root}"]
    run(_cfg(["task=align", *data, "task.readout.num_queries=2", "task.readout.dim_head=16",
              "task.projector.hidden_dim=32", "task.plots=false"]), tmp_path / "align")
    align_ckpt = tmp_path / "align" / "checkpoints" / "last.ckpt"

    # the aligned embedding of the tiny CLIP is 32-d: a published-layout file for it
    clip_dim = torch.load(align_ckpt, weights_only=True)["neurobridge"]["model"]["projector"]["out_dim"]
    weights = _write(_published(clip_dim=clip_dim), tmp_path / "ip-adapter_tiny.safetensors")
    ip_args = ["task=adapter", *data, f"init_from={align_ckpt}", "task.route=ip_adapter",
               "task.ip_adapter.text_tokens=4"]
    metrics = run(_cfg([*ip_args, f"task.ip_adapter.weights={weights}"]), tmp_path / "adapter")
    assert 0 < metrics["test/loss"] < 10
    adapter_ckpt = tmp_path / "adapter" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(adapter_ckpt, weights_only=True)
    saved = ckpt["state_dict"]
    assert not any(k.startswith(("unet.", "vae.")) for k in saved)  # no base UNet weights
    assert ckpt["neurobridge"]["model"]["adapter"]["route"] == "ip_adapter"
    assert ckpt["neurobridge"]["model"]["adapter"]["weights"] == str(weights)

    aligned, ip, diffusion, _ = load_adapter(adapter_ckpt)
    assert isinstance(ip, IPAdapterConditioning) and has_ip_adapter(diffusion.unet)
    check_adapter_matches_unet(ip, diffusion.unet)
    for k, v in ip.state_dict().items():  # the trained IP weights are restored
        assert torch.equal(v, saved[f"adapter.{k}"])
    start = _published(clip_dim=clip_dim)
    moved = ip_adapter_state_dict(ip)
    assert not torch.equal(moved["image_proj"]["proj.weight"], start["image_proj"]["proj.weight"])
    assert not torch.equal(moved["ip_adapter"]["1.to_k_ip.weight"], start["ip_adapter"]["1.to_k_ip.weight"])
    # train(): the UNet is frozen again, its IP parts stay trainable
    module = AdapterTraining(aligned=aligned, adapter=ip, diffusion=diffusion,
                             optimizer={"name": "adamw", "lr": 1e-3}, scheduler={"name": "none"},
                             total_steps=1).train()
    assert ip.training and not diffusion.unet.training
    ip_params = {id(p) for p in ip.parameters()}
    assert all(p.requires_grad == (id(p) in ip_params) for p in diffusion.unet.parameters())
    assert ip.text_context.requires_grad
    opt = module.configure_optimizers()
    assert sum(len(g["params"]) for g in opt.param_groups) == len(ip_params)
    tiny = build_tiny_stable_diffusion(**ckpt["neurobridge"]["model"]["diffusion"]["tiny"])
    base = diffusion.unet.state_dict()
    assert all(torch.equal(v, base[k]) for k, v in tiny.unet.state_dict().items())

    out = tmp_path / "reconstruct"
    metrics = run(_cfg(["task=reconstruct", *data, f"init_from={adapter_ckpt}", "task.max_images=2",
                        "task.num_inference_steps=2", "task.ip_adapter_scale=0.5"]), out)
    assert metrics["test/n_images"] == 2 and -1 <= metrics["test/pixcorr"] <= 1
    assert (out / "reconstructions.png").stat().st_size > 1000
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)

    with pytest.raises(ValueError, match=rf"{weights.parent.name}.*wrong.bin: the image projection takes 24-d"):
        run(_cfg([*ip_args, f"task.ip_adapter.weights={_write(_published(clip_dim=24), tmp_path / 'wrong.bin')}"]),
            tmp_path / "bad")
    with pytest.raises(ValueError, match="task.route must be one of"):
        run(_cfg(["task=adapter", *data, f"init_from={align_ckpt}", "task.route=text"]), tmp_path / "bad2")

    # the default route is unchanged, and its checkpoints reload as a DiffusionAdapter
    prompt_args = ["task=adapter", *data, f"init_from={align_ckpt}", "task.adapter.num_tokens=4",
                   "task.adapter.hidden_dim=32", "task.adapter.refiner_depth=1"]
    run(_cfg(prompt_args), tmp_path / "prompt")
    prompt_ckpt = tmp_path / "prompt" / "checkpoints" / "last.ckpt"
    _, adapter, diffusion, config = load_adapter(prompt_ckpt)
    assert isinstance(adapter, DiffusionAdapter) and not has_ip_adapter(diffusion.unet)
    assert config["adapter"]["route"] == "prompt_embeds"
    legacy = {k: v for k, v in config["adapter"].items() if k != "route"}  # written before routes
    assert isinstance(build_conditioning(legacy, diffusion.unet), DiffusionAdapter)
    with pytest.raises(ValueError, match="prompt_embeds route: leave task.ip_adapter_scale=null"):
        run(_cfg(["task=reconstruct", *data, f"init_from={prompt_ckpt}", "task.ip_adapter_scale=0.5"]),
            tmp_path / "bad3")
