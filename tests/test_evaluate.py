"""Ensembles of masked models and ``task=evaluate``."""

import json

import numpy as np
import pytest
import torch
from test_benchmark_script import _load_script
from test_models import KW, UNITS, _spike_inputs
from test_training import FAST, _cfg

from neurobridge.comparison import compare_unit_scores
from neurobridge.masking import MASKING_MODES
from neurobridge.models import (
    MaskedModel,
    MaskedModelEnsemble,
    NeuroBridgeCaPOYO,
    NeuroBridgePOYO,
    TargetSequenceDecoder,
)
from neurobridge.training.run import run


def _model(seed, encoder_cls=NeuroBridgePOYO, units=UNITS, **kw):
    torch.manual_seed(seed)
    enc = encoder_cls(**{**KW, **kw})
    enc.unit_emb.initialize_vocab(units)
    enc.session_emb.initialize_vocab(["s0", "s1"])
    dec = TargetSequenceDecoder(dim=enc.dim, unit_emb_dim=enc.unit_emb_dim, dim_head=16)
    return MaskedModel(encoder=enc, decoder=dec).eval()


def _query():
    return dict(encoder_inputs=_spike_inputs(), query_unit_index=torch.randint(1, 7, (3, 9)),
                query_timestamps=torch.rand(3, 9), query_session_index=torch.ones(3, 9, dtype=torch.long))


def test_ensemble_predicts_the_mean_of_its_members():
    members = [_model(0), _model(1), _model(2)]
    q = _query()
    outs = torch.stack([m(**q) for m in members])
    assert not torch.allclose(outs[0], outs[1])  # different weights, different predictions
    ens = MaskedModelEnsemble(members)
    assert torch.allclose(ens(**q), outs.mean(0), atol=1e-6)
    assert ens.encoder is members[0].encoder and ens.modality == "spikes"
    assert torch.equal(MaskedModelEnsemble(members[:1])(**q), outs[0])


@pytest.mark.parametrize(
    "other, message",
    [
        (lambda: _model(1, units=UNITS[::-1]), r"b\.ckpt and a\.ckpt have different unit vocab.*another order"),
        (lambda: _model(1, units=UNITS[:4]), r"different unit vocab.*\['u4', 'u5'\] only in a\.ckpt"),
        (lambda: _model(1, latent_step=0.5), r"b\.ckpt has encoder\.latent_step=0\.5 but a\.ckpt has 0\.25"),
        (lambda: _model(1, NeuroBridgeCaPOYO), r"b\.ckpt reads values but a\.ckpt reads spikes"),
    ],
)
def test_ensemble_refuses_members_that_cannot_share_a_batch(other, message):
    with pytest.raises(ValueError, match=message):
        MaskedModelEnsemble([_model(0), other()], names=["a.ckpt", "b.ckpt"])


def _evaluate(small_recordings, checkpoints: list[str]) -> list[str]:
    """Overrides of ``task=evaluate`` (which makes no plots) on the small recordings."""
    fast = [o for o in FAST if not o.startswith("task.")]
    return ["data=recordings", f"data.root={small_recordings}", *fast, "task=evaluate",
            f"task.checkpoints=[{','.join(checkpoints)}]"]


def test_evaluate_scores_checkpoints_alone_and_as_an_ensemble(small_recordings, tmp_path):
    base = ["data=recordings", f"data.root={small_recordings}", *FAST]
    runs = {}
    for seed in (0, 1):
        runs[seed] = run(_cfg(base + [f"seed={seed}", "trainer.max_steps=40", "task.baseline=null",
                                      "trainer.val_check_interval=30"]), tmp_path / f"s{seed}")
    ckpts = [str(tmp_path / f"s{seed}" / "checkpoints" / "last.ckpt") for seed in (0, 1)]
    # last.ckpt holds the final step, not the last multiple of val_check_interval
    assert torch.load(ckpts[0], weights_only=True)["global_step"] == 40
    metrics = run(_cfg(_evaluate(small_recordings, ckpts)), tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == pytest.approx(metrics)
    assert metrics["n_members"] == 2
    for mode in ("", *(f"/{m}" for m in MASKING_MODES)):
        key = f"test/co_bps{mode}"
        # each member scores what its own run scored at the end of training: same cells, masks
        for i in (0, 1):
            assert metrics[f"member{i}/{key}"] == pytest.approx(runs[i][key], abs=1e-5)
        # the Poisson log-likelihood is concave in the log-rate: the mean log-rate scores at
        # least the members' mean, and it differs from both members
        members = [metrics[f"member{i}/{key}"] for i in (0, 1)]
        assert metrics[key] >= sum(members) / 2 - 1e-6
        assert metrics[key] != pytest.approx(members[0], abs=1e-4)
        assert metrics[f"test/baseline/co_bps{mode}"] < metrics[f"test/oracle/co_bps{mode}"]
    # one checkpoint: its own scores, no member keys; with the latent ceiling on the same cells,
    # also under the NLB protocol
    single = run(_cfg(_evaluate(small_recordings, ckpts[1:]) + ["task.ceiling=true",
                                                                 "task.protocol=nlb"]),
                 tmp_path / "one")
    assert single["test/co_bps"] == pytest.approx(runs[1]["test/co_bps"], abs=1e-5)
    assert not any(k.startswith("member") for k in single)
    for mode in ("", *(f"/{m}" for m in MASKING_MODES)):
        assert (single[f"test/baseline/co_bps{mode}"] < single[f"test/ceiling/co_bps{mode}"]
                < single[f"test/oracle/co_bps{mode}"]), mode
    # NLB: held-out units given the held-in ones, forward bins given the observed ones
    assert single["test/nlb/ceiling/co_bps"] > single["test/nlb/baseline/co_bps"] > 0
    assert single["test/nlb/ceiling/co_bps"] > single["test/nlb/co_bps"]
    assert single["test/nlb/ceiling/fp_bps"] > single["test/nlb/fp_bps"]
    assert np.isfinite(single["test/nlb/synthetic_s00/ceiling/co_bps"])
    # every test wrote its per-unit sums: runs on the same cells compare unit by unit
    same = compare_unit_scores(tmp_path / "one", tmp_path / "s1")
    assert same["all"]["delta"] == same["all"]["ci_low"] == same["all"]["ci_high"] == 0.0
    for mode in ("all", *MASKING_MODES):
        key = "test/co_bps" + ("" if mode == "all" else f"/{mode}")
        pair = compare_unit_scores(tmp_path / "eval", tmp_path / "s0")[mode]
        assert pair["a"] == pytest.approx(metrics[key], abs=1e-5)
        assert pair["b"] == pytest.approx(runs[0][key], abs=1e-5)
        assert pair["delta"] == pytest.approx(metrics[key] - runs[0][key], abs=1e-5)
        assert pair["ci_low"] <= pair["delta"] <= pair["ci_high"]
    table = _load_script("compare_runs").comparison_table(
        [str(tmp_path / "s0"), str(tmp_path / "s1")], n_boot=200)
    assert f"| {tmp_path / 's0'} (reference) | {runs[0]['test/co_bps']:.4f} |" in table


def test_evaluate_start_up_errors(small_recordings, tmp_path):
    with pytest.raises(ValueError, match=r"task=evaluate needs task.checkpoints"):
        run(_cfg(_evaluate(small_recordings, [])), tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="missing.ckpt does not exist"):
        run(_cfg(_evaluate(small_recordings, [f"{tmp_path}/missing.ckpt"])), tmp_path / "missing")
