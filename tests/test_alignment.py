"""CLIP image encoder, readout heads, InfoNCE and the retrieval / 2-way metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from neurobridge.alignment import (
    TINY_MODEL_NAME,
    LogitScale,
    RetrievalMetrics,
    TwoWayIdentification,
    build_clip_image_encoder,
    clip_infonce,
    fit_kernel_ridge,
    fit_ridge,
    paired_accuracy_difference,
    two_way_identification,
)
from neurobridge.models import LatentReadout, NeuralProjector


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]


def _tiny(seed: int = 0, **kwargs):
    torch.manual_seed(12345)  # the global state must not matter: the seed argument decides
    with pytest.warns(UserWarning, match="RANDOM weights.*meaningless.*pretrained="):
        return build_clip_image_encoder(model_name=TINY_MODEL_NAME, seed=seed, **kwargs)


# ---------------------------------------------------------------- CLIP image encoder


def test_tiny_clip_embeddings():
    encoder = _tiny()
    assert encoder.embed_dim == 32 and encoder.pretrained is None
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.model.training

    images = _images(3)
    emb = encoder.embed_pil(images)
    assert emb.shape == (3, 32) and emb.dtype == torch.float32 and not emb.requires_grad
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    pixels = torch.stack([encoder.preprocess(im) for im in images])
    assert pixels.shape == (3, 3, 32, 32)
    torch.testing.assert_close(encoder(pixels), emb)

    torch.testing.assert_close(_tiny(seed=0).embed_pil(images), emb)
    assert not torch.allclose(_tiny(seed=1).embed_pil(images), emb)


def test_clip_local_checkpoint(tmp_path):
    source = _tiny(seed=3)
    path = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), path)
    encoder = build_clip_image_encoder(model_name=TINY_MODEL_NAME, pretrained=str(path))
    images = _images(2)
    torch.testing.assert_close(encoder.embed_pil(images), source.embed_pil(images))

    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(RuntimeError, match=r"junk\.pt could not be loaded"):
        build_clip_image_encoder(model_name=TINY_MODEL_NAME, pretrained=str(tmp_path / "junk.pt"))


def test_clip_errors(monkeypatch, tmp_path):
    import huggingface_hub.constants

    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        build_clip_image_encoder(model_name="no-such-model")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast
    with pytest.raises(RuntimeError, match=r"no internet.*local checkpoint"):
        build_clip_image_encoder(
            model_name="ViT-B-32", pretrained="openai", cache_dir=str(tmp_path)
        )


# ---------------------------------------------------------------- readout and projector


def test_latent_readout_shapes_and_queries():
    torch.manual_seed(0)
    readout = LatentReadout(dim=16, num_queries=4, sequence_length=0.5, dim_head=8)
    latents, times = torch.randn(3, 6, 16), torch.rand(3, 6)
    out = readout(latents, times)
    assert out.shape == (3, 4, 16)
    default = torch.linspace(0, 0.5, 4)
    torch.testing.assert_close(readout(latents, times, default), out)
    torch.testing.assert_close(readout(latents, times, default.expand(3, 4)), out)
    assert not torch.allclose(readout(latents, times, default.flip(0)), out)
    with pytest.raises(ValueError, match="K=4"):
        readout(latents, times, torch.zeros(3))


def test_latent_readout_mask_and_gradients():
    torch.manual_seed(0)
    readout = LatentReadout(dim=16, num_queries=2, dim_head=8)
    latents = torch.randn(2, 5, 16, requires_grad=True)
    times = torch.rand(2, 5)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = readout(latents, times, latent_mask=mask)
    changed = latents.detach().clone()
    changed[1, 3:] = 100.0
    torch.testing.assert_close(readout(changed, times, latent_mask=mask), out)

    out.square().sum().backward()
    assert latents.grad[0].abs().sum() > 0 and latents.grad[1, :3].abs().sum() > 0
    assert latents.grad[1, 3:].abs().sum() == 0
    for name, p in readout.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_neural_projector():
    torch.manual_seed(0)
    projector = NeuralProjector(in_dim=3 * 8, hidden_dim=32, out_dim=10, dropout=0.0)
    x = torch.randn(5, 3, 8, requires_grad=True)
    out = projector(x)
    assert out.shape == (5, 10)
    torch.testing.assert_close(projector(x.reshape(5, 24)), out)
    out.sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in projector.parameters())
    with pytest.raises(ValueError, match="24 features"):
        projector(torch.randn(5, 2, 8))


def test_neural_projector_per_session():
    """A per-session first layer: sessions start equal, then learn independently."""
    torch.manual_seed(0)
    projector = NeuralProjector(in_dim=8, hidden_dim=16, out_dim=4, dropout=0.0, num_sessions=3)
    x = torch.randn(4, 8)
    sessions = torch.tensor([1, 2, 1, 2])
    torch.testing.assert_close(projector(x, torch.ones(4, dtype=torch.long)),
                               projector(x, torch.full((4,), 2)))
    projector(x[:2], sessions[:1].expand(2)).sum().backward()
    assert projector.session_weight.grad[1].abs().sum() > 0
    assert projector.session_weight.grad[2].abs().sum() == 0
    before = projector(x, sessions)
    with torch.no_grad():
        projector.session_weight[2] += 1.0
    after = projector(x, sessions)
    torch.testing.assert_close(after[sessions == 1], before[sessions == 1])
    assert not torch.allclose(after[sessions == 2], before[sessions == 2])
    with pytest.raises(ValueError, match="pass session_index"):
        projector(x)
    with pytest.raises(ValueError, match="align the model on this session"):
        projector(x, torch.tensor([1, 2, 3, 1]))
    shared = NeuralProjector(in_dim=8, hidden_dim=16, out_dim=4)
    assert "net.0.weight" in shared.state_dict()  # the shared layout of earlier checkpoints


# ---------------------------------------------------------------- InfoNCE


def test_logit_scale():
    scale = LogitScale()
    assert scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert scale().item() == pytest.approx(100.0, rel=1e-6)


def test_infonce_hand_computed():
    r = 1 / math.sqrt(2)
    t = 2.0
    neural = torch.tensor([[1.0, 0.0], [0.0, 5.0], [3.0, 3.0]])  # normalised by the loss
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-2.0, 0.0]])

    def nll(target, *others):  # -log softmax of `target` among {target, others}
        return -target + math.log(math.exp(target) + sum(math.exp(o) for o in others))

    rows = [nll(t, 0, -t), nll(t, 0, 0), nll(-t * r, t * r, t * r)]
    cols = [nll(t, 0, t * r), nll(t, 0, t * r), nll(-t * r, -t, 0)]
    expected = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
    loss = clip_infonce(neural, image, logit_scale=torch.tensor(t))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    ids = torch.tensor([0, 1, 2])
    assert clip_infonce(neural, image, logit_scale=t, image_ids=ids).item() == pytest.approx(
        expected, rel=1e-6
    )

    # samples 0 and 2 saw the same image: both are positives for each other, never negatives
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    z1 = math.log(2 * math.exp(t) + 1)  # row 0 logits [t, 0, t]
    z2 = math.log(math.exp(t) + 2)  # row 1 logits [0, t, 0]
    rows = [z1 - t, z2 - t, math.log(3)]  # row 2 logits [tr, tr, tr], positives 0 and 2
    c1 = math.log(math.exp(t) + 1 + math.exp(t * r))  # column 0 (= column 2) logits [t, 0, tr]
    c2 = math.log(1 + math.exp(t) + math.exp(t * r))  # column 1 logits [0, t, tr]
    col0 = -0.5 * ((t - c1) + (t * r - c1))
    cols = [col0, c2 - t, col0]
    expected = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
    loss = clip_infonce(neural, image, logit_scale=t, image_ids=torch.tensor([7, 3, 7]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_infonce_matches_clip_loss_and_has_gradients():
    torch.manual_seed(0)
    neural = torch.randn(6, 4, requires_grad=True)
    image = torch.randn(6, 4)
    scale = LogitScale()
    logits = scale() * F.normalize(neural, dim=-1) @ F.normalize(image, dim=-1).T
    labels = torch.arange(6)
    reference = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    loss = clip_infonce(neural, image, logit_scale=scale(), image_ids=torch.arange(6) * 10)
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(clip_infonce(neural, image, logit_scale=scale()), reference)
    loss.backward()
    assert neural.grad.abs().sum() > 0 and scale.log_scale.grad.abs() > 0
    with pytest.raises(ValueError, match="image_ids"):
        clip_infonce(neural, image, logit_scale=1.0, image_ids=torch.arange(5))


# ---------------------------------------------------------------- retrieval and 2-way


def test_retrieval_identity_and_repeats():
    torch.manual_seed(0)
    candidates = torch.eye(10)
    index = torch.randint(0, 10, (40,))
    metric = RetrievalMetrics(candidates=candidates)
    metric.update(candidates[index[:25]] + 0.01 * torch.randn(25, 10), index[:25])
    metric.update(candidates[index[25:]] + 0.01 * torch.randn(15, 10), index[25:])
    out = metric.compute()
    for key in ("top1", "top5", "image_to_neural_top1", "image_to_neural_top5"):
        assert out[key].item() == 1.0, key
    assert out["n_candidates"].item() == 10 and out["n_images"].item() == len(index.unique())
    assert out["chance_top1"].item() == pytest.approx(0.1)
    assert out["chance_top5"].item() == pytest.approx(0.5)
    assert "top1_300way" not in out

    # image 0 shown twice (once decoded as image 1); image 3 never shown
    metric = RetrievalMetrics(candidates=torch.eye(4))
    e = torch.eye(4)
    metric.update(torch.stack([e[0], e[1], e[1], e[2]]), torch.tensor([0, 0, 1, 2]))
    out = metric.compute()
    assert out["top1"].item() == 0.75 and out["top5"].item() == 1.0
    assert out["n_images"].item() == 3 and out["image_to_neural_top1"].item() == 1.0
    assert out["chance_top5"].item() == 1.0


def test_retrieval_random_is_near_chance():
    torch.manual_seed(0)
    metric = RetrievalMetrics(candidates=torch.randn(50, 64))
    metric.update(torch.randn(3000, 64), torch.randint(0, 50, (3000,)))
    out = metric.compute()
    assert abs(out["top1"].item() - 0.02) < 0.012
    assert abs(out["top5"].item() - 0.10) < 0.03
    assert out["image_to_neural_top1"].item() < 0.2


def test_retrieval_300way_matches_random_subsets():
    torch.manual_seed(0)
    n, d, p = 400, 8, 200
    candidates = F.normalize(torch.randn(n, d), dim=-1)
    index = torch.randint(0, n, (p,))
    neural = candidates[index] + 0.3 * torch.randn(p, d)
    metric = RetrievalMetrics(candidates=candidates)
    metric.update(neural, index)
    out = metric.compute()
    assert out["top1"] < out["top1_300way"] <= out["top5_300way"] <= 1.0

    # Monte Carlo version of the same convention: 299 random distractors per presentation
    sims = F.normalize(neural, dim=-1) @ candidates.T
    beats = sims > sims.gather(1, index[:, None])
    keys = torch.rand(100, p, n)
    keys[:, torch.arange(p), index] = -1.0  # never draw the true image as a distractor
    drawn = keys.topk(299, dim=-1).indices
    n_better = beats.expand(100, p, n).gather(2, drawn).sum(-1)
    for k in (1, 5):
        assert out[f"top{k}_300way"].item() == pytest.approx(
            (n_better < k).float().mean().item(), abs=0.01
        )


def test_hits_by_image_count_what_compute_averages():
    # image 0 shown twice (once decoded as image 1), image 1 once, image 2 once, image 3 never
    metric = RetrievalMetrics(candidates=torch.eye(4))
    e = torch.eye(4)
    metric.update(torch.stack([e[0], e[1], e[1], e[2]]), torch.tensor([0, 0, 1, 2]))
    hits = metric.hits_by_image()
    assert hits["presentations"].tolist() == [2, 1, 1, 0]
    assert hits["top1"].tolist() == [1, 1, 1, 0] and hits["top5"].tolist() == [2, 1, 1, 0]
    assert hits["top1"].sum() / hits["presentations"].sum() == metric.compute()["top1"]


def test_paired_difference_resamples_images_and_covers_the_truth():
    shown = torch.tensor([3, 2, 0, 1])
    assert paired_accuracy_difference(shown, shown, shown) == (0.0, 0.0, 0.0)
    assert paired_accuracy_difference(shown, torch.zeros(4), shown) == (1.0, 1.0, 1.0)
    # 100 images x 4 presentations whose hits come all or none per image (A: p = 0.6, B: 0.4):
    # the interval must be as wide as the images, not the 400 presentations, allow
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    for _ in range(40):
        a = 4 * (rng.random(100) < 0.6)
        b = 4 * (rng.random(100) < 0.4)
        diff, low, high = paired_accuracy_difference(a, b, np.full(100, 4), n_boot=2000)
        assert low <= diff <= high
        covered += low <= 0.2 <= high
        widths.append(high - low)
    # per image d = (a - b) / 4 has sd sqrt(0.24 + 0.24) = 0.69: the 95 % width is
    # 2 * 1.96 * 0.69 / sqrt(100) = 0.27 (0.14 if presentations were independent)
    assert np.mean(widths) == pytest.approx(0.27, rel=0.1)
    assert covered >= 34
    with pytest.raises(ValueError, match=r"positive total weight"):
        paired_accuracy_difference(shown, shown, torch.zeros(4))


def test_retrieval_update_errors():
    metric = RetrievalMetrics(candidates=torch.eye(3))
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        metric.update(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metric.update(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(TypeError):
        metric.update(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))


def test_two_way_identification():
    torch.manual_seed(0)
    target = torch.randn(20, 16)
    assert two_way_identification(target, target).item() == 1.0
    assert two_way_identification(-target, target).item() == 0.0
    random = two_way_identification(torch.randn(400, 16), torch.randn(400, 16)).item()
    assert abs(random - 0.5) < 0.03

    # sample 0: r(p0, t0) = -1 < r(p0, t1) → no win; sample 1: r(p1, t1) = 1 > r(p1, t0) → win
    pred = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 8.0]])
    target = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 4.0]])
    assert two_way_identification(pred, target).item() == pytest.approx(0.5)

    metric = TwoWayIdentification()
    noisy = torch.randn(30, 16)
    truth = torch.randn(30, 16)
    metric.update(noisy[:10] + truth[:10], truth[:10])
    metric.update(noisy[10:] + truth[10:], truth[10:])
    torch.testing.assert_close(metric.compute(), two_way_identification(noisy + truth, truth))


# ---------------------------------------------------------------- ridge peers


def test_kernel_ridge_fits_what_the_linear_ridge_cannot():
    """On y = cos(||x||) (no linear part: an even function of x) the Gaussian-kernel ridge
    predicts held-out points, the linear ridge explains nothing; both recover a linear map."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 3))
    x_new = rng.standard_normal((200, 3))

    def r2(pred, y):
        return 1.0 - ((pred - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()

    def curved(v):
        return np.cos(np.linalg.norm(v, axis=1, keepdims=True))

    w, b = fit_ridge(x, curved(x), alpha=1.0)
    assert r2(x_new @ w + b, curved(x_new)) < 0.05
    predict = fit_kernel_ridge(x, curved(x), alpha=0.01, gamma=1.0)
    assert r2(predict(x_new), curved(x_new)) > 0.9
    true_w = rng.standard_normal((3, 2))
    w, b = fit_ridge(x, x @ true_w + 1.0, alpha=1e-6)
    np.testing.assert_allclose(w, true_w, atol=1e-6)
    np.testing.assert_allclose(b, 1.0, atol=1e-6)
    assert r2(fit_kernel_ridge(x, x @ true_w, alpha=0.01, gamma=0.1)(x_new), x_new @ true_w) > 0.95


@pytest.mark.parametrize("override, name", [
    ({"alphas": []}, "task.ridge.alphas"),
    ({"alphas": [0.0, 1.0]}, "task.ridge.alphas"),
    ({"kernel": {"alphas": [1.0], "gammas": []}}, "task.ridge.kernel.gammas"),
])
def test_ridge_grids_are_checked_before_any_data_is_read(override, name):
    from omegaconf import OmegaConf

    from neurobridge.tasks.align import check_alignment

    ridge = {"alphas": [1.0, 10.0], "kernel": {"alphas": [1.0], "gammas": [0.3]}, **override}
    check_alignment(OmegaConf.create({"task": {"ridge": {"alphas": [1.0], "kernel": None}}}))
    with pytest.raises(ValueError, match=rf"{name}=.*positive values.*=null"):
        check_alignment(OmegaConf.create({"task": {"ridge": ridge}}))
