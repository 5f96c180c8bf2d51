"""Pretrained folders: exact round trips for both model kinds, refusals, checkpoint export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from neurobridge.models import (
    AlignmentModel,
    MaskedModel,
    build_alignment_model,
    build_masked_model,
)
from neurobridge.models.pretrained import CONFIG_NAME, load_pretrained

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")
HEAD = {"readout": {"num_queries": 4, "heads": 2, "dim_head": 16},
        "projector": {"hidden_dim": 32, "dropout": 0.1}}


def _model_config(name="poyo_small", **decoder):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}", "model.encoder.dim=32",
                                           "model.encoder.dim_head=16", "model.decoder.dim_head=16"])
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg.model, resolve=True)
    config["decoder"].update(decoder)
    return config


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        if isinstance(sa[key], torch.Tensor):
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
        else:
            assert list(sa[key].items()) == list(sb[key].items()), key


@pytest.mark.parametrize("name", ["poyo_small", "capoyo_small"])
def test_masked_model_round_trips_bit_identically(tmp_path, name):
    torch.manual_seed(0)
    model = build_masked_model(_model_config(name), unit_ids=["s/u0", "s/u1", "s/u2"],
                               session_ids=["s"])
    torch.nn.init.normal_(model.decoder.head.bias)  # a non-default value survives too
    model.save_pretrained(tmp_path / "m")
    loaded = MaskedModel.from_pretrained(tmp_path / "m")
    _assert_same_state(model, loaded)
    assert loaded.config == model.config and not loaded.training
    assert type(loaded.encoder) is type(model.encoder)


def test_alignment_model_round_trips_bit_identically(tmp_path):
    torch.manual_seed(0)
    model = build_alignment_model({**_model_config(), **HEAD}, clip_dim=24,
                                  unit_ids=["s/u0", "s/u1"], session_ids=["s"])
    model.save_pretrained(tmp_path / "a")
    loaded = AlignmentModel.from_pretrained(tmp_path / "a")
    _assert_same_state(model, loaded)
    assert loaded.projector.out_dim == 24


def test_a_per_session_projector_round_trips(tmp_path):
    torch.manual_seed(0)
    head = {**HEAD, "projector": {**HEAD["projector"], "per_session": True}}
    model = build_alignment_model({**_model_config(), **head}, clip_dim=24,
                                  unit_ids=["s/u0", "t/u0"], session_ids=["s", "t"])
    assert model.projector.num_sessions == 3  # two sessions and the padding index
    assert "per_session" not in model.config["projector"]
    torch.nn.init.normal_(model.projector.session_weight)
    model.save_pretrained(tmp_path / "a")
    loaded = AlignmentModel.from_pretrained(tmp_path / "a")
    _assert_same_state(model, loaded)
    assert loaded.projector.num_sessions == 3


def test_a_folder_of_another_kind_or_version_is_refused(tmp_path):
    masked = build_masked_model(_model_config(), unit_ids=["u"], session_ids=["s"])
    masked.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="kind 'masked_model'.*AlignmentModel|MaskedModel.from"):
        AlignmentModel.from_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    (tmp_path / "m" / CONFIG_NAME).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99.*upgrade"):
        load_pretrained(tmp_path / "m")
    (tmp_path / "m" / CONFIG_NAME).write_text(json.dumps({**config, "format": "other"}))
    with pytest.raises(ValueError, match="not written by NeuroBridge"):
        load_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(tmp_path)
    hand_made = MaskedModel(encoder=masked.encoder, decoder=masked.decoder)
    with pytest.raises(ValueError, match="no factory config"):
        hand_made.save_pretrained(tmp_path / "h")


def test_a_lightning_checkpoint_exports_to_the_same_model(small_recordings, tmp_path):
    from neurobridge.training import load_masked_model
    from neurobridge.training.run import run

    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=[
            "data=recordings", f"data.root={small_recordings}", "model.encoder.dim=32",
            "model.encoder.dim_head=16", "model.decoder.dim_head=16", "data.batch_size=8",
            "trainer.max_steps=2", "trainer.val_check_interval=2", "data.max_val_windows=2",
            "task.baseline=null", "task.plots=false", "trainer.enable_progress_bar=false",
            "+trainer.limit_test_batches=1"])
    run(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    script = Path(__file__).resolve().parent.parent / "scripts" / "export_pretrained.py"
    subprocess.run([sys.executable, str(script), "--checkpoint", str(ckpt), "--out",
                    str(tmp_path / "exported")], check=True, capture_output=True)
    _assert_same_state(load_masked_model(ckpt), MaskedModel.from_pretrained(tmp_path / "exported"))
    # shareable: the files get the permissions of a plain open() (0o666 minus the umask)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "exported" / name).stat().st_mode & 0o777 == 0o666 & ~mask
