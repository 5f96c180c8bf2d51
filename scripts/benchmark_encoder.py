#!/usr/bin/env python
"""Time a NeuroBridge masked-pretraining step against upstream torch_brain POYO, in one run.

Both models get the same synthetic spike tokens and the sizes of a model preset
(``configs/model/poyo_<model>.yaml``). Four configurations are timed:

- POYO train step: upstream ``torch_brain.models.POYO`` with its 2-d readout
  (``cursor_velocity_2d``), ``--queries`` output queries per sample, MSE loss, backward, AdamW.
- NeuroBridge train step: :class:`~neurobridge.models.MaskedModel` (NeuroBridgePOYO encoder +
  TargetSequenceDecoder), ``--queries`` (unit, time-bin) cells per sample, masked Poisson NLL,
  backward, AdamW.
- POYO forward and NeuroBridge encode: upstream ``forward()`` against ``encode()`` alone, in
  eval mode without gradients.

Example::

    python scripts/benchmark_encoder.py --model small --batch 16 --spikes 2048 --queries 1024
    python scripts/benchmark_encoder.py --model 4090 --device cuda --precision bf16 \\
        --record docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import inspect
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch_brain.models import POYO
from torch_brain.registry import MODALITY_REGISTRY
from torch_brain.utils import create_linspace_latent_tokens

from neurobridge import models
from neurobridge.losses import masked_poisson_nll
from neurobridge.models import (
    ATTENTION_BACKENDS,
    MaskedModel,
    NeuroBridgePOYO,
    attention_backend,
    set_attention_backend,
)

MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
PRESETS = {"small": "poyo_small", "4090": "poyo_4090"}
READOUT = MODALITY_REGISTRY["cursor_velocity_2d"]
POYO_ARGS = set(inspect.signature(POYO).parameters) - {"readout_spec"}
SEED = 0
BIN_SIZE = 0.02  # seconds, the grid of the default data config (data.bin_size)
MIB = 2**20
CONFIGURATIONS = ("POYO train step", "NeuroBridge train step", "POYO forward", "NeuroBridge encode")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(PRESETS), default="small",
                   help="sizes from configs/model/poyo_<model>.yaml")
    p.add_argument("--batch", type=int, default=16, help="samples per batch")
    p.add_argument("--spikes", type=int, default=1024, help="spike tokens per sample")
    p.add_argument("--queries", type=int, default=512,
                   help="output queries (POYO) / decoded cells (NeuroBridge) per sample")
    p.add_argument("--units", type=int, default=256, help="units in the vocabulary")
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("32", "bf16", "16"), default="32",
                   help="bf16 / 16: torch.autocast (16 with a GradScaler; cuda only)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's default)")
    p.add_argument("--record", type=Path, default=None,
                   help="append the report as a markdown section to this file")
    add_attention_argument(p)
    args = p.parse_args(argv)
    for name in ("batch", "spikes", "queries", "units", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.device == "cpu" and args.precision == "16":
        p.error("--precision 16 needs --device cuda (use bf16 on cpu)")
    return args


def _compose(name: str):
    """A model preset merged with its Hydra ``defaults`` (``_self_`` last unless listed)."""
    cfg = OmegaConf.load(MODEL_CONFIGS / f"{name}.yaml")
    defaults = list(cfg.pop("defaults", []))
    if "_self_" not in defaults:
        defaults.append("_self_")
    return OmegaConf.merge(*(cfg if d == "_self_" else _compose(d) for d in defaults))


def load_preset(model: str) -> dict:
    """``{"model", "encoder", "decoder", "mode_prompt"}`` of a preset, resolved: ``model`` is
    the whole model config (for :func:`neurobridge.models.build_masked_model`), ``encoder``
    its upstream POYO arguments only."""
    root = OmegaConf.create({"model": _compose(PRESETS[model])})
    cfg = OmegaConf.to_container(root, resolve=True)["model"]
    cfg["model"] = {k: cfg[k] for k in ("encoder", "decoder", "mode_prompt")}
    cfg["encoder"] = {k: v for k, v in cfg["encoder"].items() if k in POYO_ARGS}
    return cfg


def _sorted_times(gen: torch.Generator, shape: tuple[int, int], length: float) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * length).sort(dim=1).values


def make_batch(args: argparse.Namespace, encoder: dict) -> dict:
    """Synthetic spike tokens, latents, and both models' queries and targets (CPU tensors)."""
    gen = torch.Generator().manual_seed(SEED)
    b, s, q, length = args.batch, args.spikes, args.queries, encoder["sequence_length"]
    latent_index, latent_timestamps = create_linspace_latent_tokens(
        0.0, length, step=encoder["latent_step"],
        num_latents_per_step=encoder["num_latents_per_step"],
    )
    # (unit, time-bin) cells: times on the bin grid, as the tokenizer's queries
    n_bins = round(length / BIN_SIZE)
    query_bins = torch.randint(n_bins, (b, q), generator=gen).sort(dim=1).values
    query_timestamps = (query_bins + 0.5) * BIN_SIZE
    session_index = torch.ones(b, q, dtype=torch.long)  # index 0 is the vocabulary's "NA"
    return {
        "spikes": {
            "input_unit_index": torch.randint(1, args.units + 1, (b, s), generator=gen),
            "input_timestamps": _sorted_times(gen, (b, s), length),
            "input_token_type": torch.zeros(b, s, dtype=torch.long),
            "input_mask": torch.ones(b, s, dtype=torch.bool),
            "latent_index": torch.as_tensor(latent_index).repeat(b, 1),
            "latent_timestamps": torch.as_tensor(latent_timestamps, dtype=torch.float32).repeat(b, 1),
        },
        "outputs": {
            "output_session_index": session_index,
            "output_timestamps": query_timestamps,
            "output_mask": torch.ones(b, q, dtype=torch.bool),
        },
        "target": torch.randn(b, q, READOUT.dim, generator=gen),
        "queries": {
            "query_unit_index": torch.randint(1, args.units + 1, (b, q), generator=gen),
            "query_timestamps": query_timestamps,
            "query_session_index": session_index,
        },
        "counts": torch.poisson(torch.full((b, q), 0.5), generator=gen),
        "weight": torch.ones(b, q, dtype=torch.bool),
        "mode_index": torch.zeros(b, dtype=torch.long),
    }


def _to(batch: dict, device: str) -> dict:
    return {k: _to(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}


def _unit_ids(n_units: int) -> list[str]:
    return [f"unit_{i}" for i in range(n_units)]


def _with_vocab(model: POYO, n_units: int) -> POYO:
    model.unit_emb.initialize_vocab(_unit_ids(n_units))
    model.session_emb.initialize_vocab(["session_0"])
    return model


def build_poyo(preset: dict, n_units: int) -> POYO:
    """Upstream POYO with its readout."""
    torch.manual_seed(SEED)
    return _with_vocab(POYO(readout_spec=READOUT, **preset["encoder"]), n_units)


def build_encoder(preset: dict, n_units: int) -> NeuroBridgePOYO:
    """NeuroBridgePOYO without the upstream head."""
    torch.manual_seed(SEED)
    return _with_vocab(NeuroBridgePOYO(readout_spec=None, **preset["encoder"]), n_units)


def build_masked_model(preset: dict, n_units: int) -> MaskedModel:
    """NeuroBridgePOYO + TargetSequenceDecoder, as in masked pretraining (the model factory)."""
    torch.manual_seed(SEED)
    return models.build_masked_model(preset["model"], unit_ids=_unit_ids(n_units),
                                     session_ids=["session_0"])


def poyo_loss(model: POYO, batch: dict) -> torch.Tensor:
    out = model(**batch["spikes"], **batch["outputs"])
    return F.mse_loss(out.float(), batch["target"])


def masked_loss(model: MaskedModel, batch: dict) -> torch.Tensor:
    mode_index = batch["mode_index"] if model.mode_emb is not None else None
    log_rate = model(encoder_inputs=batch["spikes"], **batch["queries"], mode_index=mode_index)
    return masked_poisson_nll(log_rate, batch["counts"], batch["weight"])


def _autocast(args: argparse.Namespace) -> Callable[[], contextlib.AbstractContextManager]:
    if args.precision == "32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
    return lambda: torch.autocast(args.device, dtype=dtype)


def train_step(model, loss_fn, batch, args) -> Callable[[], None]:
    """One optimisation step: zero grads, forward + loss (autocast), backward, AdamW."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(args.device, enabled=args.precision == "16")
    autocast = _autocast(args)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model, batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def forward_step(run, model, args) -> Callable[[], None]:
    """``run(model)`` in eval mode without gradients (autocast)."""
    model.eval()
    autocast = _autocast(args)

    def step() -> None:
        with torch.no_grad(), autocast():
            run(model)

    return step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(step: Callable[[], None], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def _n_warmup(args: argparse.Namespace, budget_s: float | None) -> int:
    """``--warmup``, at least one step when a budget needs the speed of one."""
    return max(args.warmup, 1) if budget_s is not None else args.warmup


def _n_steps(args: argparse.Namespace, budget_s: float | None, last: float) -> int:
    """``--steps``, or with ``budget_s`` as many as fit in it at ``last`` s a step (at most 50)."""
    if budget_s is None:
        return args.steps
    return max(args.steps, min(50, int(budget_s / max(last, 1e-6))))


def _stats(times: list[float], args: argparse.Namespace) -> dict:
    mean = statistics.fmean(times)
    return {
        "mean_ms": 1e3 * mean,
        "std_ms": 1e3 * statistics.stdev(times) if len(times) > 1 else 0.0,
        "median_ms": 1e3 * statistics.median(times),
        "steps": len(times),
        "steps_s": 1.0 / mean,
        "tokens_s": args.batch * args.spikes / mean,
        "peak_mib": None,
    }


def measure(build, make_step, args, budget_s: float | None = None) -> dict:
    """Build a fresh model, run ``--warmup`` + ``--steps`` steps; times and CUDA peak memory.

    With ``budget_s``, more steps are timed when they are fast: as many as fit in about
    ``budget_s`` seconds at the speed of the last warm-up step (at least ``--steps``, at most 50).
    """
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build().to(args.device)
    step = make_step(model)
    warm = [_timed(step, args.device) for _ in range(_n_warmup(args, budget_s))]
    n_steps = _n_steps(args, budget_s, max(warm[-1:], default=0.0))
    times = [_timed(step, args.device) for _ in range(n_steps)]
    out = _stats(times, args)
    if args.device == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated() / MIB
    return out


def measure_interleaved(configurations: dict[str, tuple], args,
                        budget_s: float | None = None) -> dict[str, dict]:
    """:func:`measure` for several ``{name: (build, make_step)}`` at once, their timed steps
    taken in turn (one of each per round) so that a change in the machine's load hits them
    alike. ``peak_mib`` is ``None`` (the models are alive together)."""
    gc.collect()
    steps = {name: make_step(build().to(args.device))
             for name, (build, make_step) in configurations.items()}
    round_s = 0.0  # one step of each, at the speed of the last warm-up steps
    for step in steps.values():
        warm = [_timed(step, args.device) for _ in range(_n_warmup(args, budget_s))]
        round_s += max(warm[-1:], default=0.0)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(_n_steps(args, budget_s, round_s)):
        for name, step in steps.items():
            times[name].append(_timed(step, args.device))
    return {name: _stats(t, args) for name, t in times.items()}


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, else ``platform.processor()``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def add_attention_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attention", choices=ATTENTION_BACKENDS, default="sdpa",
                   help="attention kernel of torch_brain's layers, as the config's "
                        "attention_backend (auto: xformers on CUDA when installed)")


def machine(device: str) -> str:
    """CPU model, logical CPUs, torch threads, torch version, device (with the GPU's name) and
    the attention backend in use."""
    name = f"cuda ({torch.cuda.get_device_name()})" if device == "cuda" else device
    return (f"{cpu_model()} ({os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch "
            f"threads), torch {torch.__version__}, device {name}, attention "
            f"{attention_backend()}")


def format_report(args: argparse.Namespace, preset: dict, results: dict[str, dict]) -> str:
    """The markdown section: date, machine, settings, results table and ratios."""
    enc = preset["encoder"]
    n_latents = round(enc["sequence_length"] / enc["latent_step"]) * enc["num_latents_per_step"]
    cuda = args.device == "cuda"
    lines = [
        f"## Encoder benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- machine: {machine(args.device)}",
        f"- settings: model {args.model} (dim {enc['dim']}, depth {enc['depth']}, "
        f"{n_latents} latents, decoder depth {preset['decoder']['depth']}), batch {args.batch}, "
        f"spikes {args.spikes}, queries {args.queries}, units {args.units}, "
        f"precision {args.precision}, warmup {args.warmup}, steps {args.steps}",
        "- tokens/s counts the input spike tokens (batch × spikes) per step",
        "",
        "| configuration | step ms (mean ± std) | steps/s | tokens/s |"
        + (" peak MiB |" if cuda else ""),
        "|---|---:|---:|---:|" + ("---:|" if cuda else ""),
    ]
    for name, r in results.items():
        row = (f"| {name} | {r['mean_ms']:.2f} ± {r['std_ms']:.2f} | {r['steps_s']:.2f} "
               f"| {r['tokens_s']:.0f} |")
        lines.append(row + (f" {r['peak_mib']:.1f} |" if cuda else ""))
    poyo, ours = results["POYO train step"], results["NeuroBridge train step"]
    forward, encode = results["POYO forward"], results["NeuroBridge encode"]
    lines += [
        "",
        "Ratios NeuroBridge / POYO:",
        "",
        f"- train step time: {ours['mean_ms'] / poyo['mean_ms']:.3f}",
    ]
    if cuda:
        lines.append(f"- train step peak memory: {ours['peak_mib'] / poyo['peak_mib']:.3f}")
    lines.append(f"- encode / forward time: {encode['mean_ms'] / forward['mean_ms']:.3f}")
    if cuda:
        lines.append(
            f"- encode / forward peak memory: {encode['peak_mib'] / forward['peak_mib']:.3f}"
        )
    return "\n".join(lines) + "\n"


def compare(args: argparse.Namespace, preset: dict, names: tuple[str, ...] = CONFIGURATIONS,
            budget_s: float | None = None, interleave: bool = False) -> dict[str, dict]:
    """Time the configurations ``names`` (all four by default) on one synthetic batch, one
    after the other (with each one's CUDA peak memory) or ``interleave``\ d."""
    batch = _to(make_batch(args, preset["encoder"]), args.device)
    n = args.units
    configurations = {
        "POYO train step": (
            lambda: build_poyo(preset, n), lambda m: train_step(m, poyo_loss, batch, args)
        ),
        "NeuroBridge train step": (
            lambda: build_masked_model(preset, n),
            lambda m: train_step(m, masked_loss, batch, args),
        ),
        "POYO forward": (
            lambda: build_poyo(preset, n),
            lambda m: forward_step(lambda p: p(**batch["spikes"], **batch["outputs"]), m, args),
        ),
        "NeuroBridge encode": (
            lambda: build_encoder(preset, n),
            lambda m: forward_step(lambda e: e.encode(**batch["spikes"]), m, args),
        ),
    }
    if interleave:
        return measure_interleaved({name: configurations[name] for name in names}, args, budget_s)
    return {name: measure(*configurations[name], args, budget_s=budget_s) for name in names}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    set_attention_backend(args.attention)
    preset = load_preset(args.model)
    report = format_report(args, preset, compare(args, preset))
    print(report, end="")
    if args.record is not None:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        with args.record.open("a") as f:
            f.write(("\n" if args.record.stat().st_size else "") + report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
