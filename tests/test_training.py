import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from neurobridge.training.run import run

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")
FAST = [
    "model.encoder.dim=32", "model.encoder.dim_head=16", "model.decoder.dim_head=16",
    "model.encoder.num_latents_per_step=4", "data.batch_size=16", "data.max_val_windows=8",
    "task.plots=false", "trainer.enable_progress_bar=false",
]


def _cfg(overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("config", overrides=overrides)


def test_pretraining_learns_and_writes_the_contract_outputs(small_recordings, tmp_path):
    base = ["data=recordings", f"data.root={small_recordings}", *FAST]
    untrained = run(_cfg(base + ["trainer.max_steps=1", "trainer.val_check_interval=1",
                                 "task.baseline=null"]), tmp_path / "untrained")
    cfg = _cfg(base + ["trainer.max_steps=600", "trainer.val_check_interval=300", "task.plots=true"])
    metrics = run(cfg, tmp_path / "run")

    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics)
    for mode in ("temporal", "neuron", "intra_region", "inter_region"):
        for prefix in ("test/co_bps", "test/baseline/co_bps", "test/oracle/co_bps"):
            assert f"{prefix}/{mode}" in on_disk
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "run" / "loss_curves.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "masked_rates.png").stat().st_size > 10_000
    # the model against the baseline on the same cells, with a bootstrap interval over units
    for mode in ("", "/neuron"):
        delta = on_disk[f"test/baseline/delta_co_bps{mode}"]
        assert delta == pytest.approx(
            on_disk[f"test/co_bps{mode}"] - on_disk[f"test/baseline/co_bps{mode}"], abs=1e-5)
        assert on_disk[f"test/baseline/delta_co_bps{mode}_ci_low"] <= delta
        assert delta <= on_disk[f"test/baseline/delta_co_bps{mode}_ci_high"]
    # masked co-bps rises above 0 (an untrained model scores below 0) and stays below the oracle
    assert untrained["test/co_bps"] < 0 < metrics["test/co_bps"] < metrics["test/oracle/co_bps"]


@pytest.mark.slow
def test_per_cell_decoder_learns_from_a_sample_of_masked_cells(small_recordings, tmp_path):
    """The per-cell decoder (attention blocks per decoded cell) on 384 masked cells a window
    (about 100 s on 2 cores: ``pytest -m slow``; the default suite keeps the default decoder)."""
    from neurobridge.training import load_masked_model

    cfg = _cfg(["data=recordings", f"data.root={small_recordings}", *FAST, "task.baseline=null",
                "model.decoder.factorized=false", "data.train_max_queries=384",
                "trainer.max_steps=600", "trainer.val_check_interval=300"])
    metrics = run(cfg, tmp_path / "run")
    assert 0 < metrics["test/co_bps"] < metrics["test/oracle/co_bps"]
    model = load_masked_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert not model.decoder.factorized and model.decoder.bin_query is None


def test_continuous_values_path_trains_with_mse(tmp_path):
    cfg = _cfg(["data=synthetic_mua", "model=capoyo_small", *FAST, "trainer.max_steps=40",
                "trainer.val_check_interval=20", "data.synthetic.n_sessions=1",
                "data.synthetic.duration=40", "data.synthetic.units_per_region=4"])
    metrics = run(cfg, tmp_path / "run")
    assert {"test/r2", "test/r2/neuron", "test/oracle/r2", "test/loss/temporal"} <= set(metrics)
    assert metrics["test/oracle/r2"] > 0.5  # the clean signal explains most of the noisy one
    assert metrics["test/loss"] < 10


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task.name=dance"], "Unknown task 'dance'"),
        (["model=capoyo_small"], "disagree"),
        (["data.bin_size=0.03"], "multiple of data.bin_size"),
        (["model.encoder.latent_step=0.3"], "multiple of latent_step"),
        (["masking.neuron_ratio=[0.5,1.5]"], "neuron_ratio"),
        (["model.encoder.dim_head=30"], r"model.encoder.dim_head must be a multiple of 4.*28"),
        (["model.decoder.dim_head=18"], r"model.decoder.dim_head must be a multiple of 4"),
        (["model=capoyo_small", "data.modality=values", "model.encoder.dim=33"],
         "must be even for CaPOYO"),
        (["task=align", "task.readout.dim_head=6"], r"task.readout.dim_head must be a multiple"),
        (["attention_backend=flash"], r"attention_backend must be one of \['sdpa', 'auto'\]"),
        (["task.ema_decay=1.5"], r"task.ema_decay must be a number in \(0, 1\)"),
        (["trainer=fsdp", "task.ema_decay=0.999"], "does not work with FSDP"),
        (["data.bin_size=0"], "data.bin_size must be a positive number of seconds, got 0"),
        (["model.encoder.sequence_length=-1"], "model.encoder.sequence_length must be a positive"),
        (["trainer.max_steps=0"], r"trainer.max_steps must be a whole number .*>= 1.*got 0"),
        (["data.train_max_queries=0"], "data.train_max_queries must be a whole number >= 1 or null"),
        (["data.num_workers=-1"], "data.num_workers must be a whole number >= 0, got -1"),
    ],
)
def test_config_errors_are_rejected_before_any_data_is_read(tmp_path, overrides, message):
    cfg = _cfg(["data=recordings", f"data.root={tmp_path / 'does_not_exist'}", *overrides])
    with pytest.raises(ValueError, match=message):
        run(cfg, tmp_path / "run")


def test_decoded_unmasked_cells_add_their_weighted_loss(small_recordings):
    import torch

    from neurobridge.tasks.pretrain import build_pretraining

    base = ["data=recordings", f"data.root={small_recordings}", *FAST]
    module, dm = build_pretraining(_cfg(base + ["data.train_unmasked_queries=16"]))
    batch = next(iter(dm.train_dataloader()))
    assert batch["query_visible"].sum() == 16 * len(batch["mode"])
    module.log = lambda *args, **kwargs: None  # no Trainer attached
    with torch.no_grad():
        pred = module(batch)
        masked = module.loss(pred, batch, batch["query_mask"]).item()
        unmasked = module.loss(pred, batch, batch["query_visible"]).item()
        for weight in (0.0, 2.5):
            module.unmasked_weight = weight
            total = module.training_step(batch, 0).item()
            assert total == pytest.approx(masked + weight * unmasked)
    assert unmasked != pytest.approx(masked)
    with pytest.raises(ValueError, match="task.unmasked_weight must be a finite number >= 0"):
        build_pretraining(_cfg(base + ["task.unmasked_weight=-1"]))


def test_unknown_config_group_option_lists_choices():
    with pytest.raises(ConfigCompositionException, match="poyo_small"):
        _cfg(["model=poyo_huge"])


def test_checkpoint_rebuilds_the_model_without_data_and_resumes(small_recordings, tmp_path):
    import torch

    from neurobridge.data import NeuralDataModule
    from neurobridge.tasks.pretrain import build_pretraining
    from neurobridge.training import load_masked_model

    base = ["data=recordings", f"data.root={small_recordings}", *FAST, "task.baseline=null",
            "trainer.val_check_interval=4"]
    run(_cfg(base + ["trainer.max_steps=4"]), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    loaded = load_masked_model(ckpt)  # weights_only=True, no data folder, no Hydra

    module, dm = build_pretraining(_cfg(base + ["trainer.max_steps=4"]))
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    module.load_state_dict(state)
    module.eval()
    assert isinstance(dm, NeuralDataModule)
    batch = next(iter(dm.val_dataloader()))
    expected = module(batch)
    got = loaded(encoder_inputs=batch["encoder_inputs"], query_unit_index=batch["query_unit_index"],
                 query_timestamps=batch["query_timestamps"],
                 query_session_index=batch["query_session_index"])
    assert torch.allclose(got, expected, atol=1e-5)
    assert loaded.encoder.unit_emb.vocab == module.model.encoder.unit_emb.vocab

    # resuming continues the same run from its step
    resumed = run(_cfg(base + ["trainer.max_steps=6", f"resume_from={ckpt}"]), tmp_path / "run")
    assert resumed["train/global_step"] == 6
    # ... but not with another model size
    with pytest.raises(ValueError, match=r"another model \(model.encoder.depth: 2 -> 3"):
        run(_cfg(base + ["trainer.max_steps=8", f"resume_from={ckpt}", "model.encoder.depth=3"]),
            tmp_path / "run")
    # a new run in the same folder would overwrite the run's checkpoint: refused
    with pytest.raises(FileExistsError, match=r"last.ckpt exists: .*holds an earlier run"):
        run(_cfg(base + ["trainer.max_steps=4"]), tmp_path / "run")


def test_bad_checkpoints_are_named(tmp_path):
    import torch

    from neurobridge.training import load_masked_model

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="bad.ckpt"):
        load_masked_model(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not written by a NeuroBridge"):
        load_masked_model(foreign)
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "neurobridge": {"model": {"encoder": {"_target_": "os.system"},
                                                            "decoder": {}}}}, hostile)
    with pytest.raises(ValueError, match="can name only"):
        load_masked_model(hostile)


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    import torch

    from neurobridge.training.checkpoint import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)

    def dies_mid_write(obj, f):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["step"] == 1
    # no temp file left (beside the checkpoint: its hash record, checkpoint_files)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]


def test_same_seed_gives_identical_metrics_and_records_the_run(small_recordings, tmp_path):
    base = ["data=recordings", f"data.root={small_recordings}", *FAST, "trainer.max_steps=8",
            "trainer.val_check_interval=4", "task.baseline=null"]
    for name in ("a", "b"):
        run(_cfg(base), tmp_path / name)
    a = (tmp_path / "a" / "metrics.json").read_text()
    assert a == (tmp_path / "b" / "metrics.json").read_text()  # byte-identical
    assert json.loads(a)["test/co_bps"] != 0
    other = run(_cfg(base + ["seed=1"]), tmp_path / "c")
    assert other["test/co_bps"] != json.loads(a)["test/co_bps"]
    info = json.loads((tmp_path / "a" / "run_info.json").read_text())
    assert info["versions"]["torch_brain"] == "0.1.1" and info["versions"]["neurobridge"]
    assert "git_revision" in info and info["python"]


@pytest.mark.parametrize("ema", [[], ["task.ema_decay=0.9"]], ids=["plain", "ema"])
def test_run_killed_between_epochs_resumes_to_the_same_metrics(small_recordings, tmp_path, ema):
    """A run stopped at an epoch boundary and resumed from its checkpoint ends with exactly the
    metrics of the uninterrupted run (tolerance 1e-6: the same computations in the same order),
    with or without a moving average of the weights."""
    import torch

    from neurobridge.data import NeuralDataModule

    base = ["data=recordings", f"data.root={small_recordings}", *FAST, "task.baseline=null", *ema]
    dm = NeuralDataModule(root=str(small_recordings), batch_size=16)
    dm.setup()
    epoch = len(dm.train_dataloader())  # steps per epoch
    cfg = base + [f"trainer.max_steps={2 * epoch}", f"trainer.val_check_interval={epoch}"]
    full = run(_cfg(cfg), tmp_path / "full")
    # the same run stopped after its first epoch (same schedule), then resumed from last.ckpt
    run(_cfg(cfg + ["+trainer.max_epochs=1"]), tmp_path / "killed")
    killed = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    resumed = run(_cfg(cfg + [f"resume_from={killed}"]), tmp_path / "killed")
    assert resumed["train/global_step"] == full["train/global_step"] == 2 * epoch
    for key, value in full.items():
        assert resumed[key] == pytest.approx(value, abs=1e-6, rel=0), key
    ckpt = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    if ema:  # the checkpoint's weights are the average; the current ones are kept for resuming
        assert int(ckpt["averaging_state"]["n_averaged"]) == 2 * epoch
        key = "model.decoder.head.weight"
        assert not torch.equal(ckpt["state_dict"][key], ckpt["current_model_state"][key])
    else:
        assert "current_model_state" not in ckpt


def test_bf16_mixed_precision_lowers_the_loss_without_nan(small_recordings, tmp_path):
    """bf16 autocast on CPU for 60 steps: every logged loss finite, the training loss falls
    (the run of 400 steps that reaches co-bps above 0 is ``-m slow``: bf16 matrix products are
    slow on CPU)."""
    import csv

    cfg = _cfg(["data=recordings", f"data.root={small_recordings}", *FAST, "task.baseline=null",
                "trainer.precision=bf16-mixed", "trainer.max_steps=60",
                "trainer.val_check_interval=60", "trainer.log_every_n_steps=2",
                "+trainer.limit_test_batches=2"])
    metrics = run(cfg, tmp_path / "run")
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert math.isfinite(metrics["test/loss"])


@pytest.mark.slow
def test_bf16_mixed_precision_trains_without_nan(small_recordings, tmp_path):
    """bf16 autocast on CPU for a few hundred steps: every logged loss finite, and the model
    learns (co-bps above 0, which an untrained model does not reach). About 2 minutes on 2
    cores: ``pytest -m slow``."""
    import csv

    cfg = _cfg(["data=recordings", f"data.root={small_recordings}", *FAST, "task.baseline=null",
                "trainer.precision=bf16-mixed", "trainer.max_steps=400",
                "trainer.val_check_interval=200", "trainer.log_every_n_steps=5"])
    metrics = run(cfg, tmp_path / "run")
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) >= 50 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(metrics["test/loss"]) and metrics["test/co_bps"] > 0


#: the README's long recipe: factorized decoder (the default), encoder depth 4, mode prompts,
#: dropout 0.2, 8,000 steps
LONG_RECIPE = [
    "trainer.max_steps=8000", "trainer.val_check_interval=2000", "model.encoder.depth=4",
    "model.mode_prompt=true", "model.encoder.ffn_dropout=0.2", "model.encoder.lin_dropout=0.2",
    "model.decoder.ffn_dropout=0.2", "task.plots=false", "trainer.enable_progress_bar=false",
]


@pytest.mark.slow
def test_readme_ensemble_beats_the_smoothing_baseline_in_every_mode(tmp_path):
    """The README's ensemble row: the long recipe with seeds 0 and 1 (about 45 min each on one
    core), scored together with task=evaluate. Run with ``pytest -m slow``."""
    ckpts = []
    for seed in (0, 1):
        run(_cfg([*LONG_RECIPE, f"seed={seed}"]), tmp_path / f"s{seed}")
        ckpts.append(str(tmp_path / f"s{seed}" / "checkpoints" / "last.ckpt"))
    metrics = run(_cfg(["task=evaluate", f"task.checkpoints=[{','.join(ckpts)}]",
                        "trainer.enable_progress_bar=false"]), tmp_path / "ensemble")
    for mode in ("temporal", "neuron", "intra_region", "inter_region"):
        assert metrics[f"test/co_bps/{mode}"] > metrics[f"test/baseline/co_bps/{mode}"], mode
    assert metrics["test/co_bps/neuron"] > 0.5 * metrics["test/oracle/co_bps/neuron"]


def test_a_refused_run_prints_one_block_and_leaves_the_earlier_run_as_it_was(tmp_path):
    """``examples/train.py`` into an earlier run's folder: exit status 1, the message (no
    traceback), and every file of the earlier run unchanged (Hydra writes none of its own)."""
    import os
    import subprocess
    import sys

    earlier = tmp_path / "earlier"
    files = {"checkpoints/last.ckpt": b"weights", ".hydra/config.yaml": b"seed: 7\n",
             ".hydra/overrides.yaml": b"- seed=7\n", "metrics.json": b"{}"}
    for name, content in files.items():
        (earlier / name).parent.mkdir(parents=True, exist_ok=True)
        (earlier / name).write_bytes(content)
    script = Path(__file__).resolve().parent.parent / "examples" / "train.py"
    env = {k: v for k, v in os.environ.items() if k != "NEUROBRIDGE_TRACEBACK"}
    done = subprocess.run([sys.executable, str(script), f"hydra.run.dir={earlier}",
                           "trainer.max_steps=5"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 1, done.stderr
    assert "neurobridge: FileExistsError:" in done.stderr and "resume_from=" in done.stderr
    assert "Traceback" not in done.stderr
    for name, content in files.items():
        assert (earlier / name).read_bytes() == content, name


def test_checkpoints_store_their_data_options_and_refuse_other_ones(small_recordings, tmp_path,
                                                                  caplog):
    """A run's checkpoint keeps the data options its numbers depend on; resuming, evaluating
    or initialising from it with another bin size is refused (the region field only warns), and
    task=pretrain refuses init_from instead of ignoring it."""
    from neurobridge.training.checkpoint import read_checkpoint_meta

    base = ["data=recordings", f"data.root={small_recordings}", *FAST, "task.baseline=null",
            "task.plots=false"]
    run(_cfg(base + ["trainer.max_steps=2", "trainer.val_check_interval=2"]), tmp_path / "a")
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    data = read_checkpoint_meta(ckpt)["data"]
    assert data["bin_size"] == 0.02 and data["modality"] == "spikes"
    assert data["region_key"] == "brain_region" and data["spike_values"] is None
    refused = r"was trained with data.bin_size=0.02 but this run has data.bin_size=0.01.*Set data.bin_size=0.02"
    with pytest.raises(ValueError, match="resume_from=.*" + refused):
        run(_cfg(base + ["trainer.max_steps=4", f"resume_from={ckpt}", "data.bin_size=0.01"]),
            tmp_path / "a")
    with pytest.raises(ValueError, match="task.checkpoints=.*" + refused):
        run(_cfg(["task=evaluate", f"task.checkpoints=[{ckpt}]", "data=recordings",
                  f"data.root={small_recordings}", "data.bin_size=0.01"]), tmp_path / "b")
    with pytest.raises(ValueError, match="task=pretrain starts from a new model and does not "
                                         "read init_from.*resume_from"):
        run(_cfg(base + ["trainer.max_steps=2", f"init_from={ckpt}"]), tmp_path / "c")
    with caplog.at_level("WARNING"):
        run(_cfg(["task=evaluate", f"task.checkpoints=[{ckpt}]", "data=recordings",
                  f"data.root={small_recordings}", "data.region_key=id", "task.baseline=null",
                  "trainer.enable_progress_bar=false", "+trainer.limit_test_batches=1"]),
            tmp_path / "d")
    assert "trained with data.region_key='brain_region', this run has 'id'" in caplog.text
    assert not (tmp_path / "b").exists() and not (tmp_path / "c" / ".hydra").exists()


def test_config_mistakes_are_refused_before_torch_is_imported():
    """examples/train.py checks the config with neurobridge.config_checks first: the check
    itself imports neither torch nor Lightning (refused in about a second, not after them)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from neurobridge.config_checks import check_config\n"
        f"with initialize_config_dir(config_dir={CONFIGS!r}, version_base='1.3'):\n"
        "    cfg = compose('config', overrides=['data.bin_size=0'])\n"
        "try:\n"
        "    check_config(cfg)\n"
        "except ValueError as err:\n"
        "    print('refused:', err)\n"
        "print('heavy:', sorted({'torch', 'lightning'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert "refused: data.bin_size must be a positive number" in done.stdout, done.stderr
    assert "heavy: []" in done.stdout
