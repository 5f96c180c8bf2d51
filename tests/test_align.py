"""The alignment stages end to end on a small synthetic visual data set (tiny models)."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from neurobridge.datasets.synthetic import SyntheticConfig, generate_synthetic_recordings
from neurobridge.tasks.align import build_alignment
from neurobridge.training import load_alignment_model, load_masked_model
from neurobridge.training.run import run

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")
VISUAL = SyntheticConfig(
    n_sessions=2, units_per_region=8, duration=80.0, seed=7, stimulus="images",
    n_train_images=40, n_valid_images=8, n_test_images=16,
)
FAST = [
    "model.encoder.dim=32", "model.encoder.dim_head=16", "model.decoder.dim_head=16",
    "model.encoder.num_latents_per_step=4", "data.batch_size=8", "data.max_val_windows=4",
    "trainer.enable_progress_bar=false", "trainer.max_steps=6",
    "trainer.val_check_interval=3",
]
ALIGN = ["task.readout.num_queries=2", "task.readout.dim_head=16", "task.projector.hidden_dim=32"]


@pytest.fixture(scope="module")
def visual_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("visual_align")
    generate_synthetic_recordings(root, VISUAL)
    return root


@pytest.fixture(scope="module")
def pretrained(visual_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    run(_cfg(["data=recordings", f"data.root={visual_root}", *FAST, "task.baseline=null", "task.plots=false"]), out)
    return out / "checkpoints" / "last.ckpt"


def _cfg(overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=overrides)


def _align_cfg(visual_root, *extra):
    return _cfg(["task=align", "data=recordings", f"data.root={visual_root}", *FAST, *ALIGN, *extra])


def test_align_freezes_the_encoder_and_writes_retrieval_metrics(visual_root, pretrained, tmp_path):
    cfg = _align_cfg(visual_root, f"init_from={pretrained}", "task.latent_probe=true")
    module, _ = build_alignment(cfg)
    before = {k: v.clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}
    metrics = run(cfg, tmp_path / "align")

    on_disk = json.loads((tmp_path / "align" / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics)
    assert (tmp_path / "align" / "retrieval.png").stat().st_size > 10_000
    assert metrics["test/retrieval_n_candidates"] == len(set(VISUAL_TEST_IDS(visual_root)))
    assert metrics["test/retrieval_chance_top5"] == pytest.approx(5 / metrics["test/retrieval_n_candidates"])
    for key in ("test/retrieval_top1", "test/retrieval_top5", "test/two_way",
                "test/retrieval_image_to_neural_top5"):
        assert 0.0 <= metrics[key] <= 1.0
    # the ridge peer, on the same presentations and targets: the synthetic units respond to the
    # images, so evoked counts identify them well above chance
    assert metrics["test/ridge/two_way"] > 0.6
    assert metrics["test/ridge/retrieval_top5"] > 2 * metrics["test/retrieval_chance_top5"]
    # the nonlinear peer (Gaussian-kernel ridge) on the same counts
    assert metrics["test/kernel_ridge/two_way"] > 0.6
    assert metrics["test/kernel_ridge/retrieval_top5"] != metrics["test/ridge/retrieval_top5"]
    # the linear probe of the frozen latents: the same ridge, fitted per recording
    assert metrics["test/latent_probe/two_way"] > 0.6
    assert metrics["test/latent_probe/retrieval_top5"] > metrics["test/retrieval_chance_top5"]
    assert metrics["test/latent_probe/retrieval_top5"] != metrics["test/ridge/retrieval_top5"]
    # each peer's accuracy against the head's, paired on the same presentations
    for peer in ("ridge", "kernel_ridge", "latent_probe"):
        for k in ("top1", "top5"):
            delta = metrics[f"test/{peer}/delta_{k}"]
            assert delta == pytest.approx(
                metrics[f"test/retrieval_{k}"] - metrics[f"test/{peer}/retrieval_{k}"])
            assert metrics[f"test/{peer}/delta_{k}_ci_low"] <= delta
            assert delta <= metrics[f"test/{peer}/delta_{k}_ci_high"]

    aligned = load_alignment_model(tmp_path / "align" / "checkpoints" / "last.ckpt")
    after = {f"model.{k}": v for k, v in aligned.state_dict().items() if torch.is_tensor(v)}
    pretrained_model = load_masked_model(pretrained)
    # the encoder and decoder kept their pretrained weights; the head learned
    for k, v in pretrained_model.state_dict().items():
        if not torch.is_tensor(v):
            continue
        torch.testing.assert_close(after[f"model.masked_model.{k}"], v, rtol=0, atol=0)
    changed = [k for k in after if "readout" in k or "projector" in k]
    assert changed and any(not torch.equal(after[k], before[k]) for k in changed)


def VISUAL_TEST_IDS(root):
    from neurobridge.data import StimulusDataModule

    dm = StimulusDataModule(root=str(root))
    dm.setup()
    return dm.split_image_ids["test"]


def test_finetune_trains_only_the_last_encoder_layers(visual_root, pretrained, tmp_path):
    run(_align_cfg(visual_root, f"init_from={pretrained}"), tmp_path / "align")
    align_ckpt = tmp_path / "align" / "checkpoints" / "last.ckpt"
    cfg = _cfg(["task=finetune", "data=recordings", f"data.root={visual_root}", *FAST, *ALIGN,
                f"init_from={align_ckpt}", "task.trainable_layers=1"])
    run(cfg, tmp_path / "finetune")
    start = _tensors(load_alignment_model(align_ckpt))
    end = _tensors(load_alignment_model(tmp_path / "finetune" / "checkpoints" / "last.ckpt"))
    last = "masked_model.encoder.proc_layers.1."
    moved = {k for k in start if not torch.equal(start[k], end[k])}
    assert any(k.startswith(last) for k in moved)
    frozen = [k for k in start if k.startswith("masked_model.") and not k.startswith(last)]
    assert frozen and not moved.intersection(frozen)


def _tensors(module):
    return {k: v for k, v in module.state_dict().items() if torch.is_tensor(v)}


@pytest.mark.parametrize("name, extra", [("poyo_small", ["model.encoder.anchor_tokens=true"]),
                                         ("capoyo_small", [])])
def test_trainable_layers_open_the_encoder_from_the_top(name, extra):
    from omegaconf import OmegaConf

    from neurobridge.models import build_alignment_model

    cfg = OmegaConf.to_container(_cfg(["task=align", f"model={name}", *FAST[:4], *ALIGN, *extra]),
                                 resolve=True)
    model = build_alignment_model(
        {**cfg["model"], "readout": cfg["task"]["readout"], "projector": cfg["task"]["projector"]},
        clip_dim=8, unit_ids=["s/u0", "s/u1"], session_ids=["s"])
    depth = len(model.encoder.proc_layers)

    def learning(module):
        return {p.requires_grad for p in module.parameters()} == {True}

    model.freeze_encoder(depth)  # every processor layer, not the input cross-attention
    assert all(learning(layer) for layer in model.encoder.proc_layers)
    assert not any(p.requires_grad for p in model.encoder.enc_atn.parameters())
    model.freeze_encoder(depth + 1)  # and the cross-attention that forms the latents
    input_stage = [model.encoder.enc_atn, model.encoder.enc_ffn, model.encoder.latent_emb]
    assert all(learning(m) for m in input_stage)
    assert name != "poyo_small" or model.encoder.anchor_emb.requires_grad
    frozen = [model.encoder.unit_emb, model.encoder.session_emb, model.masked_model.decoder]
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert learning(model.readout) and learning(model.projector)
    with pytest.raises(ValueError, match=rf"in \[0, {depth + 1}\].*\+ 1 for its input"):
        model.freeze_encoder(depth + 2)


def test_random_init_control_and_config_errors(visual_root, pretrained, tmp_path):
    metrics = run(_align_cfg(visual_root), tmp_path / "control")  # init_from=null
    assert "test/retrieval_top5" in metrics
    other = tmp_path / "other_lab"
    generate_synthetic_recordings(other, dataclasses.replace(VISUAL, recording_prefix="lab2"))
    with pytest.raises(ValueError, match=r"not in the vocabulary of .*last.ckpt.*lab2_s00"):
        build_alignment(_align_cfg(other, f"init_from={pretrained}"))
    with pytest.raises(ValueError, match="trainable_layers must be in"):
        build_alignment(_align_cfg(visual_root, "task.trainable_layers=5"))
    with pytest.raises(ValueError, match="pretraining checkpoint, not an alignment one"):
        load_alignment_model(_pretrain_ckpt(visual_root, tmp_path))


def _pretrain_ckpt(visual_root, tmp_path):
    run(_cfg(["data=recordings", f"data.root={visual_root}", *FAST, "task.baseline=null", "task.plots=false",
              "trainer.max_steps=1"]), tmp_path / "p")
    return tmp_path / "p" / "checkpoints" / "last.ckpt"


def test_adapter_and_reconstruction_chain(visual_root, pretrained, tmp_path):
    from neurobridge.training.checkpoint import load_adapter

    run(_align_cfg(visual_root, f"init_from={pretrained}"), tmp_path / "align")
    align_ckpt = tmp_path / "align" / "checkpoints" / "last.ckpt"
    tiny = ["task.adapter.num_tokens=4", "task.adapter.hidden_dim=32", "task.adapter.refiner_depth=1"]
    metrics = run(_cfg(["task=adapter", "data=recordings", f"data.root={visual_root}", *FAST, *tiny,
                        f"init_from={align_ckpt}"]), tmp_path / "adapter")
    assert 0 < metrics["test/loss"] < 10
    adapter_ckpt = tmp_path / "adapter" / "checkpoints" / "last.ckpt"
    saved = torch.load(adapter_ckpt, weights_only=True)["state_dict"]
    assert not any(k.startswith(("unet.", "vae.")) for k in saved)  # frozen SD is not stored
    aligned, adapter, diffusion, _ = load_adapter(adapter_ckpt)
    cond = adapter.conditioning(torch.randn(3, aligned.projector.out_dim))
    assert cond["encoder_hidden_states"].shape == (3, 4, diffusion.unet.config.cross_attention_dim)
    # an adapter checkpoint also restores its aligned model for further alignment
    module, _ = build_alignment(_align_cfg(visual_root, f"init_from={adapter_ckpt}"))
    for k, v in _tensors(aligned).items():
        torch.testing.assert_close(_tensors(module.model)[k], v, rtol=0, atol=0)
    assert "diffusion" not in module.model_config

    out = tmp_path / "reconstruct"
    metrics = run(_cfg(["task=reconstruct", "data=recordings", f"data.root={visual_root}", *FAST,
                        f"init_from={adapter_ckpt}", "task.max_images=4",
                        "task.num_inference_steps=2"]), out)
    assert metrics["test/n_images"] == 4
    assert -1 <= metrics["test/pixcorr"] <= 1 and -1 <= metrics["test/ssim"] <= 1
    assert 0 <= metrics["test/clip_2way"] <= 1
    assert (out / "reconstructions.png").stat().st_size > 1000
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    with pytest.raises(ValueError, match="needs init_from=<checkpoint of task=align"):
        run(_cfg(["task=adapter", "data=recordings", f"data.root={visual_root}", *FAST,
                  f"init_from={pretrained}"]), tmp_path / "bad")


def test_alignment_on_continuous_values_through_capoyo(tmp_path):
    """The CaPOYO (MUA) path aligns too: the synthetic visual data with continuous values."""
    root = tmp_path / "mua"
    generate_synthetic_recordings(root, dataclasses.replace(VISUAL, modality="mua", n_sessions=1))
    cfg = _cfg(["task=align", "data=synthetic_mua", "model=capoyo_small", "data.synthetic=null",
                f"data.root={root}", *FAST, *ALIGN, "task.plots=false"])
    metrics = run(cfg, tmp_path / "align")
    assert 0 <= metrics["test/retrieval_top5"] <= 1 and metrics["test/retrieval_n_candidates"] > 1


def test_clip_dimension_must_match_the_aligned_projector(visual_root, pretrained, tmp_path):
    """Continuing from an aligned checkpoint with a CLIP model of another width is rejected at
    start-up, naming both widths."""
    from neurobridge.alignment.clip import TINY_MODEL_NAME, open_clip_module

    open_clip = open_clip_module()  # open_clip with NeuroBridge's tiny config registered
    cfg_dir = tmp_path / "clip_configs"
    cfg_dir.mkdir()
    tiny = open_clip.get_model_config(TINY_MODEL_NAME)
    (cfg_dir / "nb-test-tiny-16.json").write_text(json.dumps({**tiny, "embed_dim": 16}))
    open_clip.add_model_config(cfg_dir)
    run(_align_cfg(visual_root, f"init_from={pretrained}"), tmp_path / "align")
    ckpt = tmp_path / "align" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"outputs 32-d embeddings but .*nb-test-tiny-16.* 16-d"):
        build_alignment(_align_cfg(visual_root, f"init_from={ckpt}",
                                   "task.clip.model_name=nb-test-tiny-16"))


def test_missing_images_and_the_random_init_control_are_said_plainly(visual_root, tmp_path,
                                                                     caplog):
    """A presented image missing from data.images is named with its path; aligning without
    init_from warns that the encoder is randomly initialised."""
    import shutil

    images = tmp_path / "images"
    shutil.copytree(visual_root / "images", images)
    gone = sorted(p for p in images.rglob("*.png"))[0]
    gone.unlink()
    with pytest.raises(FileNotFoundError, match=rf"not in the image source .*{gone.name}.*data.images"):
        build_alignment(_align_cfg(visual_root, f"data.images={images}"))
    with caplog.at_level("WARNING"):
        build_alignment(_align_cfg(visual_root))
    assert "WITHOUT init_from: the encoder is RANDOMLY INITIALISED" in caplog.text
