"""The NDT-style peer: binned inputs that hide the masked cells, and a short run that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_training import FAST, _cfg

from neurobridge.baselines import NDTMaskedModel
from neurobridge.comparison import compare_unit_scores
from neurobridge.models import build_masked_model
from neurobridge.training.run import run

NDT = ["model=ndt", "model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.heads=2"]
#: the fast settings that are not NeuroBridge-model options
DATA_FAST = [o for o in FAST if not o.startswith("model.")]


def _model() -> NDTMaskedModel:
    torch.manual_seed(0)
    cfg = {"encoder": {"_target_": "neurobridge.baselines.NDTEncoder", "sequence_length": 1.0,
                       "bin_size": 0.1, "dim": 16, "depth": 1, "heads": 2},
           "decoder": {"_target_": "neurobridge.baselines.NDTReadout"}}
    return build_masked_model(cfg, unit_ids=["s/u0", "s/u1", "s/u2"], session_ids=["s"]).eval()


def test_binned_inputs_hide_the_masked_cells(small_recordings):
    """The tokenizer gives the NDT encoder the counts of the visible cells only."""
    from neurobridge.data import NeuralDataModule
    from neurobridge.masking import MaskingController

    dm = NeuralDataModule(root=small_recordings, sequence_length=1.0, bin_size=0.1)
    dm.setup()
    cfg = {"encoder": {"_target_": "neurobridge.baselines.NDTEncoder", "sequence_length": 1.0,
                       "bin_size": 0.1, "dim": 16, "depth": 1, "heads": 2},
           "decoder": {"_target_": "neurobridge.baselines.NDTReadout"}}
    torch.manual_seed(0)
    model = build_masked_model(cfg, unit_ids=dm.unit_ids, session_ids=dm.session_ids).eval()
    assert isinstance(model, NDTMaskedModel) and model.config["decoder"]["dim"] == 16
    tokenizer = dm.masked_tokenizer(model.encoder, MaskingController(mode_probs={"neuron": 1.0}))
    rid = dm.dataset.recording_ids[0]
    window = dm.dataset.get_recording(rid).slice(10.0, 11.0)
    counts = tokenizer.grid_targets(window, len(window.units.id))[0]  # [10 bins, 36 units]
    mask = np.zeros(counts.shape, bool)
    mask[:, :12] = True          # 12 units held out
    mask[7:, :] = True           # the last 3 bins hidden for all
    inputs = tokenizer.sample(window, mask, mode="neuron")["encoder_inputs"]
    got = np.asarray(inputs["input_counts"].obj if hasattr(inputs["input_counts"], "obj")
                     else inputs["input_counts"]).T
    assert counts[mask].sum() > 0 and np.all(got[mask] == 0)
    np.testing.assert_array_equal(got[~mask], counts[~mask])


def test_ndt_trains_tests_and_reloads(small_recordings, tmp_path):
    base = ["data=recordings", f"data.root={small_recordings}", *DATA_FAST, *NDT]
    metrics = run(_cfg(base + ["trainer.max_steps=300", "trainer.val_check_interval=300",
                               "task.optimizer.lr=0.01", "model.encoder.dropout=0.0",
                               "task.baseline=null"]), tmp_path / "ndt")
    # the small recordings have strongly modulated known rates: the peer learns them
    assert metrics["test/co_bps"] > 0.03
    for mode in ("temporal", "neuron", "intra_region", "inter_region"):
        assert np.isfinite(metrics[f"test/co_bps/{mode}"])
    fast = [o for o in DATA_FAST if not o.startswith("task.")]
    again = run(_cfg(["data=recordings", f"data.root={small_recordings}", *fast, *NDT,
                      "task=evaluate", "task.baseline=null",
                      f"task.checkpoints=[{tmp_path / 'ndt' / 'checkpoints' / 'last.ckpt'}]"]),
                tmp_path / "eval")
    assert again["test/co_bps"] == pytest.approx(metrics["test/co_bps"], abs=1e-5)
    # the peer's per-unit sums pair with its re-scoring, cell for cell
    pair = compare_unit_scores(tmp_path / "eval", tmp_path / "ndt")["neuron"]
    assert pair["a"] == pytest.approx(metrics["test/co_bps/neuron"], abs=1e-5)
    assert pair["delta"] == pytest.approx(0.0, abs=1e-9)


def test_alignment_refuses_the_ndt_encoder():
    """The NDT peer has no latent tokens for the readout: the alignment factory says so."""
    from neurobridge.models import build_alignment_model

    masked = _model()
    head = {"readout": {"num_queries": 2}, "projector": {}}
    with pytest.raises(ValueError, match=r"NDT-style peer \(model=ndt\).*init_from"):
        build_alignment_model({**masked.config, **head}, masked_model=masked, clip_dim=8)
