"""task=adapt_session: extending the vocabularies of a pretrained model to a new recording and
training only the new rows."""

import numpy as np
import pytest
import torch
from test_training import FAST, _cfg

from neurobridge.data import NeuralDataModule
from neurobridge.models import MaskedModel, NeuroBridgePOYO, TargetSequenceDecoder
from neurobridge.tasks.adapt_session import (
    PinnedRowsEmbedding,
    extend_vocab,
    freeze_for_adaptation,
)
from neurobridge.training import load_masked_model
from neurobridge.training.optim import build_optimizer
from neurobridge.training.run import run

NEW = "synthetic_s01"  # the conftest data: pretrain on s00, adapt to s01 (same dynamics)


def _base(root):
    return ["data=recordings", f"data.root={root}", *FAST]


@pytest.fixture(scope="module")
def pretrained(small_recordings, tmp_path_factory):
    """A checkpoint pretrained on synthetic_s00 only."""
    out = tmp_path_factory.mktemp("pretrain")
    run(_cfg(_base(small_recordings) + [
        "data.recording_ids=[synthetic_s00]", "trainer.max_steps=300",
        "trainer.val_check_interval=300", "task.baseline=null",
    ]), out)
    return out / "checkpoints" / "last.ckpt"


def _tiny_model(units=("a", "b", "c"), sessions=("s0",)) -> MaskedModel:
    enc = NeuroBridgePOYO(sequence_length=1.0, latent_step=0.5, num_latents_per_step=2, dim=16,
                          depth=1, dim_head=8, cross_heads=1, self_heads=1)
    enc.unit_emb.initialize_vocab(list(units))
    enc.session_emb.initialize_vocab(list(sessions))
    with torch.no_grad():  # known rows unlike any initialisation
        enc.unit_emb.weight[1:] = torch.randn_like(enc.unit_emb.weight[1:])
    dec = TargetSequenceDecoder(dim=16, unit_emb_dim=enc.unit_emb_dim, depth=1, dim_head=8)
    return MaskedModel(encoder=enc, decoder=dec)


def test_extension_keeps_known_rows_and_token_indices():
    torch.manual_seed(0)
    model = _tiny_model()
    emb = model.encoder.unit_emb
    before, rows = dict(emb.vocab), emb.weight.detach().clone()
    added = extend_vocab(model, ["b", "d", "a", "e"], ["s0", "s1"], init="mean")
    assert (added.units, added.sessions) == (["d", "e"], ["s1"])
    assert {w: emb.vocab[w] for w in before} == before  # known words keep their index
    assert [emb.vocab["d"], emb.vocab["e"]] == [4, 5]
    assert torch.equal(emb.weight[:4], rows)
    assert torch.allclose(emb.weight[4], rows[1:].mean(0)) and torch.equal(emb.weight[4], emb.weight[5])
    assert model.encoder.session_emb.tokenizer("s1") == 2

    model = _tiny_model()
    extend_vocab(model, ["d"], [], init="random")  # torch_brain's N(0, 0.02^2)
    assert 0 < model.encoder.unit_emb.weight[4].std() < 0.1
    with pytest.raises(ValueError, match="task.init"):
        extend_vocab(model, ["x"], [], init="zeros")


@pytest.mark.parametrize("optimizer", ["adamw", "sparse_lamb"])
def test_known_rows_cannot_move_even_with_weight_decay(optimizer):
    torch.manual_seed(0)
    model = _tiny_model()
    added = extend_vocab(model, ["d", "e"], ["s1"])
    frozen = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    trainable = freeze_for_adaptation(model, added)
    assert trainable == ["encoder.unit_emb.new_rows", "encoder.session_emb.new_rows"]
    # weight decay on every group: known rows must still not move
    opt = build_optimizer(model, name=optimizer, lr=0.1, weight_decay=0.5)
    for group in opt.param_groups:
        group["weight_decay"] = 0.5
    for _ in range(3):
        units = torch.tensor([[1, 2, 3, 4, 5]])
        out = model.encoder.unit_emb(units).sum() + model.encoder.session_emb(torch.tensor([1, 2])).sum()
        out = out + model(encoder_inputs=_inputs(units), query_unit_index=units,
                          query_timestamps=torch.full((1, 5), 0.5),
                          query_session_index=torch.full((1, 5), 2)).pow(2).sum()
        opt.zero_grad()
        out.backward()
        opt.step()
    state = model.state_dict()
    for key, value in frozen.items():
        if key == "encoder.unit_emb.weight":
            assert torch.equal(state[key][:4], value[:4]) and not torch.equal(state[key][4:], value[4:])
        elif key == "encoder.session_emb.weight":
            assert torch.equal(state[key][:2], value[:2]) and not torch.equal(state[key][2], value[2])
        else:
            assert torch.equal(state[key], value), key


def _inputs(units):
    n = units.shape[1]
    return {"input_unit_index": units, "input_timestamps": torch.linspace(0.1, 0.9, n)[None],
            "input_token_type": torch.zeros_like(units), "input_mask": torch.ones_like(units).bool(),
            "latent_index": torch.arange(2).repeat(2)[None],
            "latent_timestamps": torch.tensor([[0.25, 0.25, 0.75, 0.75]])}


def test_pinned_embedding_saves_and_loads_as_a_plain_one():
    torch.manual_seed(0)
    model = _tiny_model()
    extend_vocab(model, ["d"], [])
    plain = model.encoder.unit_emb
    pinned = PinnedRowsEmbedding(plain, n_pinned=4)
    with torch.no_grad():
        pinned.new_rows.add_(1.0)
    state = pinned.state_dict()
    assert set(state) == {"weight", "vocab"} and state["weight"].shape == (5, 16)
    restored = type(plain)(16)  # lazy: takes the vocabulary from the state dict
    restored.load_state_dict(pinned.state_dict())
    assert torch.equal(restored.weight, pinned.weight) and restored.vocab == pinned.vocab
    again = PinnedRowsEmbedding(plain, n_pinned=4)
    again.load_state_dict(pinned.state_dict())
    assert torch.equal(again.weight, pinned.weight)
    with pytest.raises(NotImplementedError):
        pinned.extend_vocab(["x"])


def test_unfreeze_prefixes():
    model = _tiny_model()
    added = extend_vocab(model, ["d"], [])
    names = freeze_for_adaptation(model, added, ["decoder.unit_readout"])
    assert names[0] == "encoder.unit_emb.new_rows"
    assert names[1:] and all(n.startswith("decoder.unit_readout.") for n in names[1:])
    for bad, message in [("decoder.nope", "names no parameter"), ("encoder.unit_emb", "stay frozen")]:
        model = _tiny_model()
        with pytest.raises(ValueError, match=message):
            freeze_for_adaptation(model, extend_vocab(model, ["d"], []), [bad])


def test_train_seconds_keeps_the_first_seconds_of_each_training_split(small_recordings):
    full = NeuralDataModule(root=str(small_recordings))
    full.setup()
    dm = NeuralDataModule(root=str(small_recordings), train_seconds=15)
    dm.setup()
    for rid, iv in dm.intervals["train"].items():
        kept = np.asarray(iv.end) - np.asarray(iv.start)
        assert kept.sum() == pytest.approx(15.0)
        assert iv.start[0] == full.intervals["train"][rid].start[0]
        assert np.all(np.asarray(iv.end) <= np.asarray(full.intervals["train"][rid].end)[: len(kept)] + 1e-9)
    windows = list(dm.train_dataloader().sampler)
    assert 0 < len(windows) <= 2 * 15
    assert all(w.end <= dm.intervals["train"][w.recording_id].end[-1] + 1e-6 for w in windows)
    for bad in (0, -1.0, "30"):
        with pytest.raises(ValueError, match="positive number"):
            NeuralDataModule(root=str(small_recordings), train_seconds=bad)
    with pytest.raises(ValueError, match="synthetic_s00.*no full training window"):
        NeuralDataModule(root=str(small_recordings), train_seconds=0.5,
                         recording_ids=["synthetic_s00"]).setup()


def test_start_up_errors(small_recordings, pretrained, tmp_path):
    base = _base(small_recordings) + ["task=adapt_session", f"data.recording_ids=[{NEW}]"]
    with pytest.raises(ValueError, match="needs init_from=<checkpoint of task=pretrain>"):
        run(_cfg(base), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(_cfg(base + [f"init_from={tmp_path / 'nope.ckpt'}"]), tmp_path / "b")
    aligned = tmp_path / "aligned.ckpt"
    torch.save({"state_dict": {}, "neurobridge": {"kind": "alignment", "model": {}}}, aligned)
    with pytest.raises(ValueError, match="an 'alignment' checkpoint; task=adapt_session adapts a pre"):
        run(_cfg(base + [f"init_from={aligned}"]), tmp_path / "c")
    with pytest.raises(ValueError, match="task.init"):
        run(_cfg(base + [f"init_from={pretrained}", "task.init=zeros"]), tmp_path / "d")
    with pytest.raises(ValueError, match="train_seconds"):
        run(_cfg(base + [f"init_from={pretrained}", "data.train_seconds=-3"]), tmp_path / "e")
    known = _base(small_recordings) + ["task=adapt_session", f"init_from={pretrained}",
                                       "data.recording_ids=[synthetic_s00]"]
    with pytest.raises(ValueError, match="already in the vocabulary.*task=pretrain resume_from"):
        run(_cfg(known), tmp_path / "f")
    with pytest.raises(ValueError, match="not in .*synthetic_s00"):
        run(_cfg(base[:-1] + ["data.recording_ids=[synthetic_s09]", f"init_from={pretrained}"]),
            tmp_path / "g")


def test_adaptation_trains_only_the_new_rows_and_improves_on_the_new_session(
    small_recordings, pretrained, tmp_path
):
    from neurobridge.tasks.common import check_vocab as _check_vocab

    base = _base(small_recordings) + ["task=adapt_session", f"init_from={pretrained}",
                                      f"data.recording_ids=[{NEW}]", "data.train_seconds=40",
                                      "task.baseline=null"]
    # the starting point: one step at learning rate 0 (the new rows as initialised)
    start = run(_cfg(base + ["trainer.max_steps=1", "trainer.val_check_interval=1",
                             "task.optimizer.lr=0"]), tmp_path / "start")
    adapted = run(_cfg(base + ["trainer.max_steps=150", "trainer.val_check_interval=150"]),
                  tmp_path / "adapt")
    assert adapted["test/co_bps"] > start["test/co_bps"] + 0.05

    old = load_masked_model(pretrained)
    ckpt = tmp_path / "adapt" / "checkpoints" / "last.ckpt"
    new = load_masked_model(ckpt)  # a plain pretraining checkpoint with the extended vocabularies
    old_state, new_state = old.state_dict(), new.state_dict()
    n_units, n_sessions = len(old.encoder.unit_emb.vocab), len(old.encoder.session_emb.vocab)
    for key, value in old_state.items():
        if key.endswith("vocab"):
            continue
        if key == "encoder.unit_emb.weight":
            assert torch.equal(new_state[key][:n_units], value)  # bit-identical known rows
        elif key == "encoder.session_emb.weight":
            assert torch.equal(new_state[key][:n_sessions], value)
        else:
            assert torch.equal(new_state[key], value), key  # encoder and decoder unchanged
    dm = NeuralDataModule(root=str(small_recordings), recording_ids=[NEW])
    dm.setup()
    vocab = new.encoder.unit_emb.vocab
    assert list(vocab)[:n_units] == list(old.encoder.unit_emb.vocab)
    assert list(vocab)[n_units:] == dm.unit_ids
    assert list(new.encoder.session_emb.vocab)[n_sessions:] == [NEW]
    _check_vocab(new, dm, str(ckpt))  # what task=align checks: every unit of s01 is known
    rows = new.encoder.unit_emb.weight[n_units:]
    assert rows.std(0).mean() > 1e-3  # the new rows have learned, each its own

    # an interrupted adaptation resumes from its checkpoint (optimizer of the new rows included)
    resumed = run(_cfg(base + ["trainer.max_steps=152", "trainer.val_check_interval=150",
                               f"resume_from={ckpt}"]), tmp_path / "adapt")
    assert resumed["train/global_step"] == 152
