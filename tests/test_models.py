import pytest
import torch
import torch.nn.functional as F
from torch_brain.models import POYO, CaPOYO
from torch_brain.registry import MODALITY_REGISTRY

from neurobridge.losses import masked_mse, masked_poisson_nll
from neurobridge.models import (
    MaskedModel,
    NeuroBridgeCaPOYO,
    NeuroBridgePOYO,
    TargetSequenceDecoder,
)

KW = dict(sequence_length=1.0, latent_step=0.25, num_latents_per_step=4, dim=32, depth=2,
          dim_head=16, cross_heads=2, self_heads=2, ffn_dropout=0.0, lin_dropout=0.0)
UNITS = [f"u{i}" for i in range(6)]


def _vocab(model):
    model.unit_emb.initialize_vocab(UNITS)
    model.session_emb.initialize_vocab(["s0", "s1"])
    return model


def _spike_inputs(b=3, n=40, gen=None):
    gen = gen or torch.Generator().manual_seed(0)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 30:] = False
    return dict(
        input_unit_index=torch.randint(1, 7, (b, n), generator=gen),
        input_timestamps=torch.rand(b, n, generator=gen),
        input_token_type=torch.randint(0, 3, (b, n), generator=gen),
        input_mask=mask,
        latent_index=torch.arange(4).repeat(4).expand(b, -1),
        latent_timestamps=torch.linspace(0.125, 0.875, 4).repeat_interleave(4).expand(b, -1),
    )


def _capture_latents(model, inputs, forward_kwargs):
    captured = {}

    # the latents after the stack are the key/value input of dec_atn
    def hook(_m, args, _out):
        captured["latents"] = args[1]

    h = model.dec_atn.register_forward_hook(hook)
    out = model(**forward_kwargs)
    h.remove()
    return out, captured["latents"]


def test_poyo_forward_parity_and_encode_matches_upstream_latents():
    torch.manual_seed(0)
    spec = MODALITY_REGISTRY["cursor_velocity_2d"]
    upstream = _vocab(POYO(readout_spec=spec, **KW)).eval()
    ours = _vocab(NeuroBridgePOYO(readout_spec=spec, **KW)).eval()
    ours.load_state_dict(upstream.state_dict())  # upstream weights load as they are
    inputs = _spike_inputs()
    out_kwargs = dict(inputs, output_session_index=torch.ones(3, 5, dtype=torch.long),
                      output_timestamps=torch.rand(3, 5), output_mask=torch.ones(3, 5, dtype=torch.bool))
    ref, ref_latents = _capture_latents(upstream, inputs, out_kwargs)
    got = ours(**out_kwargs)
    assert torch.equal(ref, got)
    assert torch.allclose(ours.encode(**inputs), ref_latents, atol=1e-6)


def test_capoyo_forward_parity_and_encode_matches_upstream_latents():
    torch.manual_seed(0)
    specs = {"cursor_velocity_2d": MODALITY_REGISTRY["cursor_velocity_2d"]}
    upstream = _vocab(CaPOYO(readout_specs=specs, **KW)).eval()
    ours = _vocab(NeuroBridgeCaPOYO(readout_specs=specs, **KW)).eval()
    ours.load_state_dict(upstream.state_dict())
    inputs = _spike_inputs()
    inputs.pop("input_token_type")
    inputs["input_values"] = torch.randn(3, 40, 1)
    out_kwargs = dict(inputs, output_session_index=torch.ones(3, 5, dtype=torch.long),
                      output_timestamps=torch.rand(3, 5),
                      output_decoder_index=torch.full((3, 5), specs["cursor_velocity_2d"].id))
    ref, ref_latents = _capture_latents(upstream, inputs, out_kwargs)
    got = ours(**out_kwargs)
    assert ref.keys() == got.keys() and ref
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert torch.allclose(ours.encode(**inputs), ref_latents, atol=1e-6)


def test_encoder_without_head_loads_upstream_encoder_weights():
    spec = MODALITY_REGISTRY["cursor_velocity_2d"]
    upstream = _vocab(POYO(readout_spec=spec, **KW))
    enc = _vocab(NeuroBridgePOYO(**KW))
    missing, unexpected = enc.load_state_dict(upstream.state_dict(), strict=False)
    assert missing == []
    assert unexpected and all(k.split(".")[0] in {"dec_atn", "dec_ffn", "readout"} for k in unexpected)
    assert torch.equal(enc.enc_atn.to_q.weight, upstream.enc_atn.to_q.weight)
    with pytest.raises(RuntimeError, match="encode"):
        enc(**_spike_inputs())


def test_encode_without_vocab_explains_the_fix():
    enc = NeuroBridgePOYO(**KW)
    with pytest.raises(ValueError, match="initialize_vocab"):
        enc.encode(**_spike_inputs())


@pytest.mark.parametrize("change, message", [
    ({"input_unit_index": "float"}, r"input_unit_index must be an integer tensor \[batch, n_in\], "
                                    r"got shape \(3, 40\) and dtype torch.float32"),
    ({"input_timestamps": "flat"}, r"input_timestamps must be a floating point tensor .*got shape \(120,\)"),
    ({"input_mask": "float"}, r"input_mask must be a bool tensor"),
    ({"input_token_type": "short"}, r"input_token_type has shape \(3, 39\) but input_unit_index has \(3, 40\)"),
    ({"latent_index": "batch"}, r"latent_index has batch size 2 but input_unit_index has 3"),
    ({"latent_timestamps": "list"}, r"latent_timestamps must be a torch.Tensor"),
])
def test_encode_names_the_argument_with_the_wrong_shape_or_dtype(change, message):
    enc = _vocab(NeuroBridgePOYO(**KW))
    inputs = _spike_inputs()
    (name, how), = change.items()
    t = inputs[name]
    inputs[name] = {"float": lambda: t.float(), "flat": lambda: t.reshape(-1),
                    "short": lambda: t[:, :-1], "batch": lambda: t[:2],
                    "list": lambda: t.tolist()}[how]()
    with pytest.raises((ValueError, TypeError), match=message):
        enc.encode(**inputs)


@pytest.mark.parametrize("factorized", [False, True])
@pytest.mark.parametrize("encoder_cls", [NeuroBridgePOYO, NeuroBridgeCaPOYO])
def test_masked_model_shapes_and_masked_queries_are_independent(encoder_cls, factorized):
    torch.manual_seed(0)
    enc = _vocab(encoder_cls(**KW)).eval()
    dec = TargetSequenceDecoder(dim=enc.dim, unit_emb_dim=enc.unit_emb_dim, depth=2, heads=2,
                                dim_head=16, factorized=factorized).eval()
    model = MaskedModel(encoder=enc, decoder=dec)
    inputs = _spike_inputs()
    if encoder_cls is NeuroBridgeCaPOYO:
        inputs.pop("input_token_type")
        inputs["input_values"] = torch.randn(3, 40, 1)
    q_unit = torch.randint(1, 7, (3, 11))
    q_t = torch.rand(3, 11)
    q_s = torch.ones(3, 11, dtype=torch.long)
    out = model(encoder_inputs=inputs, query_unit_index=q_unit, query_timestamps=q_t,
                query_session_index=q_s)
    assert out.shape == (3, 11) and out.dtype == torch.float32
    # decoding a subset of cells gives the same values for those cells
    sub = model(encoder_inputs=inputs, query_unit_index=q_unit[:, :4], query_timestamps=q_t[:, :4],
                query_session_index=q_s[:, :4])
    assert torch.allclose(sub, out[:, :4], atol=1e-5)
    assert enc.unit_emb_dim == (KW["dim"] if encoder_cls is NeuroBridgePOYO else KW["dim"] // 2)


def test_masked_model_gives_each_window_its_session_and_ignores_padding():
    torch.manual_seed(0)
    enc = _vocab(NeuroBridgePOYO(**KW)).eval()
    dec = TargetSequenceDecoder(dim=enc.dim, unit_emb_dim=enc.unit_emb_dim, dim_head=16).eval()
    model = MaskedModel(encoder=enc, decoder=dec)
    inputs = _spike_inputs()
    q_unit, q_t = torch.randint(1, 7, (3, 6)), torch.rand(3, 6)
    q_s = torch.tensor([[1] * 6, [2] * 6, [2] * 4 + [0] * 2])  # last window: 2 padded cells
    out = model(encoder_inputs=inputs, query_unit_index=q_unit, query_timestamps=q_t,
                query_session_index=q_s)
    # the decoder called with each cell's own session embedding agrees on the real cells
    ref = dec(latents=enc.encode(**inputs), latent_timestamps=inputs["latent_timestamps"],
              query_unit_emb=enc.unit_emb(q_unit), query_session_emb=enc.session_emb(q_s),
              query_timestamps=q_t)
    real = q_s > 0
    assert torch.allclose(out[real], ref[real], atol=1e-6)
    assert not torch.allclose(out[~real], ref[~real])  # padded cells took the window's session


def test_factorized_decoder_reads_every_cell_out_of_one_state_per_bin():
    torch.manual_seed(0)
    dim, n_units, n_bins = 8, 24, 20
    unit_emb = torch.randn(n_units, dim)
    times = (torch.arange(n_bins) + 0.5) * 0.05
    cells_t = times.repeat_interleave(n_units)[None]  # every (bin, unit) cell of one window
    cells_u = unit_emb.repeat(n_bins, 1)[None]
    kw = dict(latents=torch.randn(1, 16, dim), latent_timestamps=torch.rand(1, 16),
              query_session_emb=torch.randn(1, 1, dim))

    def grid(decoder):  # [bins, units]
        return decoder(query_unit_emb=cells_u, query_timestamps=cells_t, **kw).reshape(
            n_bins, n_units)

    factorized = TargetSequenceDecoder(dim=dim, unit_emb_dim=dim, depth=2, dim_head=8,
                                       factorized=True).eval()
    per_cell = TargetSequenceDecoder(dim=dim, unit_emb_dim=dim, depth=2, dim_head=8).eval()
    # with the per-unit readout at its zero init, units differ only in what the state reads:
    # a factorized decoder gives every unit of a bin the same value, a per-cell one does not
    g = grid(factorized)
    assert torch.allclose(g, g[:, :1].expand_as(g), atol=1e-6)
    assert g[:, 0].std() > 1e-3  # ... while the bins differ
    g = grid(per_cell)
    assert not torch.allclose(g, g[:, :1].expand_as(g), atol=1e-3)
    # with trained readouts: log-rate = c(t) + <h(t), w(u)> + b(u), linear in the readout row
    torch.nn.init.normal_(factorized.unit_readout[1].weight)
    b = factorized.unit_readout(unit_emb)[:, dim:]  # [units, 1]
    g = grid(factorized)
    assert torch.linalg.matrix_rank((g - b.T).double(), rtol=1e-5) <= dim + 1
    with pytest.raises(ValueError, match="unit_readout=True"):
        TargetSequenceDecoder(dim=dim, unit_emb_dim=dim, factorized=True, unit_readout=False)
    with pytest.raises(ValueError, match=r"one session embedding per window"):
        factorized(query_unit_emb=cells_u, query_timestamps=cells_t,
                   **dict(kw, query_session_emb=torch.randn(1, cells_t.shape[1], dim)))


def test_decoder_ffn_mult_sets_the_feed_forward_width():
    def ffn_hidden(decoder):
        return [block[1][1].net[-1].in_features for block in decoder.blocks]

    wide = TargetSequenceDecoder(dim=32, unit_emb_dim=32, depth=2, dim_head=16)
    narrow = TargetSequenceDecoder(dim=32, unit_emb_dim=32, depth=2, dim_head=16, ffn_mult=1)
    assert ffn_hidden(wide) == [128, 128] and ffn_hidden(narrow) == [32, 32]
    saved = sum(p.numel() for p in wide.parameters()) - sum(p.numel() for p in narrow.parameters())
    assert saved == 2 * 3 * (4 - 1) * 32 * 32 + 2 * (2 * 3 * 32)  # weights + biases, 2 blocks
    with pytest.raises(ValueError, match="ffn_mult must be >= 1"):
        TargetSequenceDecoder(dim=32, unit_emb_dim=32, ffn_mult=0)


def test_poisson_loss_matches_torch_on_masked_cells():
    gen = torch.Generator().manual_seed(0)
    log_rate = torch.randn(4, 30, generator=gen)
    counts = torch.poisson(torch.rand(4, 30, generator=gen) * 3, generator=gen)
    mask = torch.rand(4, 30, generator=gen) > 0.4
    expected = F.poisson_nll_loss(log_rate[mask], counts[mask], log_input=True, full=False)
    assert torch.allclose(masked_poisson_nll(log_rate, counts, mask), expected, atol=1e-6)
    # unmasked cells do not matter
    other = log_rate.clone()
    other[~mask] = 50.0
    assert torch.allclose(masked_poisson_nll(other, counts, mask), expected, atol=1e-6)
    assert torch.isfinite(masked_poisson_nll(log_rate.half() * 100, counts, mask))


def test_mse_loss_on_masked_cells_and_empty_mask():
    pred, target = torch.zeros(2, 5), torch.arange(10.0).reshape(2, 5)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, :2] = True
    assert masked_mse(pred, target, mask).item() == pytest.approx((25 + 36) / 2)
    empty = masked_mse(pred.requires_grad_(), target, torch.zeros_like(mask))
    assert empty.item() == 0.0 and empty.requires_grad


def test_mode_prompt_changes_the_output_only_when_enabled():
    torch.manual_seed(0)
    enc = _vocab(NeuroBridgePOYO(**KW)).eval()
    dec = TargetSequenceDecoder(dim=enc.dim, unit_emb_dim=enc.unit_emb_dim, dim_head=16).eval()
    inputs = _spike_inputs()
    queries = dict(query_unit_index=torch.ones(3, 4, dtype=torch.long),
                   query_timestamps=torch.rand(3, 4),
                   query_session_index=torch.ones(3, 4, dtype=torch.long))
    plain = MaskedModel(encoder=enc, decoder=dec)
    a = plain(encoder_inputs=inputs, mode_index=torch.zeros(3, dtype=torch.long), **queries)
    b = plain(encoder_inputs=inputs, mode_index=torch.ones(3, dtype=torch.long), **queries)
    assert torch.equal(a, b)
    prompted = MaskedModel(encoder=enc, decoder=dec, mode_prompt=True).eval()
    a = prompted(encoder_inputs=inputs, mode_index=torch.zeros(3, dtype=torch.long), **queries)
    b = prompted(encoder_inputs=inputs, mode_index=torch.ones(3, dtype=torch.long), **queries)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="mode_index"):
        prompted(encoder_inputs=inputs, **queries)


def _duplicated(inputs):
    """Every token twice (same unit, time and type): twice the spike count everywhere."""
    dup = dict(inputs)
    for key in ("input_unit_index", "input_timestamps", "input_token_type", "input_mask"):
        dup[key] = torch.cat((inputs[key], inputs[key]), dim=1)
    return dup


def test_anchor_tokens_make_the_encoding_depend_on_spike_counts():
    torch.manual_seed(0)
    inputs = _spike_inputs()
    plain = _vocab(NeuroBridgePOYO(**KW)).eval()
    # softmax cross-attention cannot tell a window from one where every spike is doubled ...
    assert torch.allclose(plain.encode(**inputs), plain.encode(**_duplicated(inputs)), atol=1e-5)
    anchored = _vocab(NeuroBridgePOYO(anchor_tokens=True, **KW)).eval()
    anchored.load_state_dict(plain.state_dict(), strict=False)
    # ... with anchor tokens it can
    diff = (anchored.encode(**inputs) - anchored.encode(**_duplicated(inputs))).abs().max()
    assert diff > 1e-3
    assert set(anchored.state_dict()) - set(plain.state_dict()) == {"anchor_emb"}


def test_anchor_tokens_leave_forward_as_upstream():
    torch.manual_seed(0)
    spec = MODALITY_REGISTRY["cursor_velocity_2d"]
    upstream = _vocab(POYO(readout_spec=spec, **KW)).eval()
    ours = _vocab(NeuroBridgePOYO(readout_spec=spec, anchor_tokens=True, **KW)).eval()
    ours.load_state_dict(upstream.state_dict(), strict=False)
    inputs = _spike_inputs()
    out_kwargs = dict(inputs, output_session_index=torch.ones(3, 5, dtype=torch.long),
                      output_timestamps=torch.rand(3, 5), output_mask=torch.ones(3, 5, dtype=torch.bool))
    assert torch.equal(upstream(**out_kwargs), ours(**out_kwargs))


def _saved_bytes_and_grads(model, inputs):
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.encode(**inputs).square().mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return sum(saved), grads


def test_activation_checkpointing_stores_less_and_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = _vocab(NeuroBridgePOYO(**KW))
    ckpt = _vocab(NeuroBridgePOYO(activation_checkpointing=True, **KW))
    ckpt.load_state_dict(plain.state_dict())
    inputs = _spike_inputs(n=400)
    plain_bytes, plain_grads = _saved_bytes_and_grads(plain, inputs)
    ckpt_bytes, ckpt_grads = _saved_bytes_and_grads(ckpt, inputs)
    assert ckpt_bytes < 0.5 * plain_bytes
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 10
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, ckpt_grads[name], atol=1e-6), name
