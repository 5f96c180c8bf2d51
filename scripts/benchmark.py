#!/usr/bin/env python
"""Speed, memory and scale of NeuroBridge masked pretraining, measured side by side in one run.

Sections of the report (markdown, printed; ``--markdown PATH`` also writes it to a file):

a. Train step against upstream torch_brain POYO with the same encoder sizes, and the ratio:
   on the same synthetic tokens (the functions of ``scripts/benchmark_encoder.py``: the cost
   of the models alone), and on the same training windows of the default config, POYO reading
   every spike token and NeuroBridge the tokens left after masking (what pretraining costs
   against supervised POYO).
b. Throughput of the masked-pretraining train step on real batches of the default config
   (``configs/config.yaml``: built-in synthetic data, ``poyo_small``): windows/s and input
   tokens/s.
c. Scaling: train-step time and activation memory against spike tokens per window (fixed
   latents), against units in the vocabulary (fixed tokens), and against decoded cells; the
   log-log slopes are fitted.
d. Data pipeline: windows/s of the real DataLoaders (window cutting, binning, masking,
   tokenizing, collating) against the model's train-step rate of (b): training windows with 0,
   1, 2 (and, on 10 or more CPUs, 8) workers and, for the ratio, the path before the fast one
   (temporaldata slices, torch_brain collate); evaluation windows; stimulus-locked windows
   (``task=align``); a TVSD-shaped recording through CaPOYO against its own train step; a
   cProfile of the single-process pipeline.
e. Peak memory of the ``gpu_4090`` preset (``poyo_4090``, fp16 autocast, batch 64): measured
   with ``torch.cuda.max_memory_allocated`` on ``--device cuda``; on CPU an estimate.

Memory on CPU: PyTorch keeps no peak-allocation counter for CPU tensors, so the report gives
the *saved activations*: the bytes of the distinct tensors autograd keeps from the forward
pass for the backward pass (counted with ``torch.autograd.graph.saved_tensors_hooks``,
parameters excluded). That is the part of a train step's memory that grows with batch, tokens
and cells; parameters, gradients and optimizer state come on top.

Examples::

    python scripts/benchmark.py                      # CPU, a few minutes
    python scripts/benchmark.py --quick              # tiny sizes (the test)
    python scripts/benchmark.py --device cuda --markdown results.md
    python scripts/benchmark.py --override data=recordings --override data.root=DIR
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import io
import os
import pstats
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_brain.data import collate, pad8, track_mask8

from neurobridge.models import set_attention_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_encoder as enc  # noqa: E402  (a sibling script, not a package)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MIB = enc.MIB


@dataclass(frozen=True)
class Sizes:
    """What one run measures (``FULL`` by default, ``QUICK`` with ``--quick``)."""

    compare: dict  # benchmark_encoder options of section a
    steps: int  # timed steps per measurement (at least)
    warmup: int
    budget_s: float  # time more steps when they are fast, up to about this long
    long_budget_s: float  # the same for the headline figures (sections a and b)
    real_batches: int  # distinct real batches cycled through in section b
    overrides: tuple[str, ...]  # Hydra overrides of the default config (b, d)
    token_points: tuple[int, ...]
    token_batch: int
    unit_points: tuple[int, ...]
    unit_tokens: int
    cell_points: tuple[int, ...]
    cell_tokens: int
    scan_batch: int  # batch of the unit and cell scans
    pipeline_batches: int  # timed batches per worker count
    pipeline_repeats: int  # timings per pipeline rate (the median is reported)
    tvsd: tuple[int, int]  # channels and trials of section d's TVSD-shaped recording
    tvsd_batch: int
    profile_batches: int
    gpu_tokens: int  # spike tokens per window of section e
    gpu_batches: tuple[int, int]  # the two CPU batches the activation memory is fitted on


FULL = Sizes(
    compare={"batch": 32, "spikes": 512, "queries": 384, "units": 256},
    steps=3, warmup=1, budget_s=2.0, long_budget_s=8.0, real_batches=8, overrides=(),
    token_points=(100, 316, 1000, 3162, 10_000, 31_623, 100_000), token_batch=2,
    unit_points=(10, 50, 200, 1000, 2000), unit_tokens=1024,
    cell_points=(96, 384, 1536, 6144), cell_tokens=512, scan_batch=4,
    pipeline_batches=24, pipeline_repeats=3, tvsd=(1024, 400), tvsd_batch=8,
    profile_batches=12, gpu_tokens=1024, gpu_batches=(2, 4),
)
QUICK = Sizes(
    compare={"batch": 2, "spikes": 32, "queries": 16, "units": 16},
    steps=2, warmup=1, budget_s=0.0, long_budget_s=0.0, real_batches=2,
    overrides=("data.synthetic.n_sessions=1", "data.synthetic.duration=40",
               "data.synthetic.units_per_region=4", "data.batch_size=8",
               "data.max_val_windows=8"),
    token_points=(100, 300, 1000), token_batch=1,
    unit_points=(10, 100), unit_tokens=64,
    cell_points=(16, 64, 256), cell_tokens=64, scan_batch=2,
    pipeline_batches=3, pipeline_repeats=1, tvsd=(48, 40), tvsd_batch=4,
    profile_batches=2, gpu_tokens=64, gpu_batches=(1, 2),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds (for the tests)")
    p.add_argument("--markdown", type=Path, default=None,
                   help="also write the report (a markdown section) to this file")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override of the default config for sections b, a2 and d "
                        "(repeatable)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's default)")
    enc.add_attention_argument(p)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    return args


# ------------------------------------------------------------------------------ helpers


def options(device: str, sizes: Sizes, **kw) -> argparse.Namespace:
    """benchmark_encoder options (``--model small``, fp32 unless given) with ``kw`` set."""
    base = {"model": "small", "batch": 8, "spikes": 512, "queries": 384, "units": 256,
            "steps": sizes.steps, "warmup": sizes.warmup, "device": device, "precision": "32",
            "threads": None, "record": None}
    return argparse.Namespace(**{**base, **kw})


def saved_activation_mib(model: torch.nn.Module, loss_fn, batch, args) -> float:
    """MiB of the distinct tensors autograd saves for backward in one train step (parameters
    excluded; under autocast their low-precision copies count)."""
    model.to(args.device).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without storage
            return t
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), enc._autocast(args)():
        loss = loss_fn(model, batch)
    loss.float().backward()
    model.zero_grad(set_to_none=True)
    return sum(saved.values()) / MIB


def slope(x, y) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def max_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _move(batch, device: str):
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def _mean(values) -> float:
    return float(np.mean(values))


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


# ------------------------------------------------------------------ a. against POYO


def section_compare(device: str, sizes: Sizes) -> tuple[list[str], dict]:
    args = options(device, sizes, **sizes.compare)
    preset = enc.load_preset(args.model)
    results = enc.compare(args, preset, names=("POYO train step", "NeuroBridge train step"),
                          budget_s=sizes.long_budget_s, interleave=device != "cuda")
    poyo, ours = results["POYO train step"], results["NeuroBridge train step"]
    ratio = ours["median_ms"] / poyo["median_ms"]
    cuda = device == "cuda"
    lines = [
        "### a. Train step against upstream POYO",
        "",
        f"Model small, fp32, batch {args.batch}, {args.spikes} spike tokens and {args.queries} "
        f"queries (POYO outputs / decoded cells) per window, {args.units} units; same encoder "
        "sizes, same tokens (`scripts/benchmark_encoder.py`)"
        + ("; the two steps alternate, so that load from other processes hits both alike."
           if not cuda else "; one after the other, each with its CUDA peak memory."),
        "",
        *_table(["configuration", "step ms (median)", "mean ± std", "steps timed"]
                + (["peak MiB"] if cuda else []),
                [[name, f"{r['median_ms']:.1f}", f"{r['mean_ms']:.1f} ± {r['std_ms']:.1f}",
                  r["steps"]] + ([f"{r['peak_mib']:.0f}"] if cuda else [])
                 for name, r in results.items()]),
        "",
        f"- train step time NeuroBridge / POYO: {ratio:.3f}",
    ]
    return lines, {"ratio": ratio}


def same_window_batches(dm, n_batches: int) -> tuple[list[dict], list[dict]]:
    """``n_batches`` training batches of ``dm`` (masked, as pretraining draws them) and, for
    the same windows, upstream POYO batches: every spike token of the window (nothing masked)
    and as many output queries as the masked window decodes cells, at random times, with
    random 2-d targets."""
    rng = np.random.default_rng(enc.SEED)
    tokenizer, length = dm.tokenizer, dm.sequence_length
    indices = iter(dm.train_dataloader().sampler)
    masked, full = [], []
    for _ in range(n_batches):
        windows = [next(indices) for _ in range(dm.batch_size)]
        slices = [dm.dataset.get_recording(w.recording_id).slice(w.start, w.end) for w in windows]
        samples = [tokenizer(data, w) for data, w in zip(slices, windows)]
        masked.append(collate(samples))
        outputs = []
        for sample in samples:
            q = len(sample["query_mask"].obj)
            outputs.append({
                "output_session_index": pad8(np.full(q, sample["session_index"])),
                "output_timestamps": pad8(np.sort(rng.uniform(0.0, length, q)).astype(np.float32)),
                "output_mask": track_mask8(np.ones(q, dtype=bool)),
                "target": pad8(rng.standard_normal((q, enc.READOUT.dim)).astype(np.float32)),
            })
        outputs = collate(outputs)
        full.append({
            "spikes": collate([tokenizer.encoder_tokens(data) for data in slices]),
            "target": outputs.pop("target"),
            "outputs": outputs,
        })
    return masked, full


def section_same_windows(device: str, sizes: Sizes, module, dm) -> tuple[list[str], dict]:
    """The masked-pretraining train step of the default config against a supervised upstream
    POYO step (same encoder sizes) on the same windows, POYO reading every spike token."""
    from torch_brain.models import POYO

    enc_cfg = {k: v for k, v in module.model_config["encoder"].items() if k in enc.POYO_ARGS}
    masked, full = same_window_batches(dm, sizes.real_batches)
    masked = [_move(b, device) for b in masked]
    full = [_move(b, device) for b in full]

    def build_poyo():
        torch.manual_seed(enc.SEED)
        poyo = POYO(readout_spec=enc.READOUT, **enc_cfg)
        poyo.unit_emb.initialize_vocab(dm.unit_ids)
        poyo.session_emb.initialize_vocab(dm.session_ids)
        return poyo

    cycle_masked, cycle_full = forever(masked), forever(full)
    args = options(device, sizes, batch=dm.batch_size)
    results = enc.measure_interleaved({
        "POYO train step (all tokens)": (
            build_poyo, lambda m: enc.train_step(
                m, lambda mod, _: enc.poyo_loss(mod, next(cycle_full)), None, args)),
        "NeuroBridge train step (masked)": (
            lambda: module, lambda m: enc.train_step(
                m, lambda mod, _: pretrain_loss(mod, next(cycle_masked)), None, args)),
    }, args, budget_s=sizes.long_budget_s)
    poyo, ours = results.values()
    ratio = ours["median_ms"] / poyo["median_ms"]
    tokens_full = _mean([float(b["spikes"]["input_mask"].sum()) for b in full])
    tokens_masked = _mean([float(b["encoder_inputs"]["input_mask"].sum()) for b in masked])
    cells = _mean([float(b["query_mask"].sum()) for b in masked])
    per = dm.batch_size
    lines = [
        "#### Same windows: masked pretraining against supervised POYO",
        "",
        f"{sizes.real_batches} training batches of the config of b (batch {per}), cycled; "
        f"POYO (the encoder's sizes: dim {enc_cfg['dim']}, depth {enc_cfg['depth']}) reads every "
        f"input token of each window (spikes and every unit's start and end tokens: "
        f"{tokens_full / per:.0f} on average) and outputs a 2-d "
        "value (MSE) at as many random times as NeuroBridge decodes cells in the window "
        f"({cells / per:.0f} on average); NeuroBridge reads the tokens left after masking "
        f"({tokens_masked / per:.0f}) and decodes the masked cells (Poisson NLL); forward + "
        "backward + AdamW, the steps alternating.",
        "",
        *_table(["configuration", "step ms (median)", "mean ± std", "steps timed"],
                [[name, f"{r['median_ms']:.1f}", f"{r['mean_ms']:.1f} ± {r['std_ms']:.1f}",
                  r["steps"]] for name, r in results.items()]),
        "",
        f"- train step time NeuroBridge / POYO, same windows: {ratio:.3f}",
    ]
    return lines, {"ratio": ratio}


# --------------------------------------------------- b. real batches of the default config


def compose_default(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=overrides)


def forever(loader) -> Iterator[dict]:
    while True:
        yield from loader


def pretrain_loss(module, batch: dict) -> torch.Tensor:
    """``MaskedPretraining.training_step``'s loss (masked cells, plus the weighted unmasked
    ones with ``data.train_unmasked_queries``); ``module`` comes from :func:`section_throughput`,
    which switches its logging off (no Trainer)."""
    return module.training_step(batch, 0)


def section_throughput(device: str, sizes: Sizes, overrides: list[str]):
    from neurobridge.tasks.pretrain import build_pretraining

    cfg = compose_default([*sizes.overrides, *overrides])
    torch.manual_seed(0)
    module, dm = build_pretraining(cfg)
    module.log = lambda *args, **kwargs: None  # no Trainer attached: training_step logs nothing
    batches = [_move(b, device) for b, _ in zip(forever(dm.train_dataloader()),
                                                range(sizes.real_batches))]
    windows = _mean([len(b["mode"]) for b in batches])
    tokens = _mean([float(b["encoder_inputs"]["input_mask"].sum()) for b in batches])
    padded = _mean([b["encoder_inputs"]["input_mask"].numel() for b in batches])
    cells = _mean([float(b["query_mask"].sum()) for b in batches])
    cycle = iter(forever(batches))
    args = options(device, sizes, batch=windows, spikes=tokens / windows)
    r = enc.measure(lambda: module,
                    lambda m: enc.train_step(m, lambda mod, _: pretrain_loss(mod, next(cycle)),
                                             None, args),
                    args, budget_s=sizes.long_budget_s)
    windows_s = windows / (r["median_ms"] / 1e3)
    tokens_s = tokens / (r["median_ms"] / 1e3)
    enc_cfg = cfg.model.encoder
    lines = [
        "### b. Masked-pretraining train step on real batches (default config)",
        "",
        "Default config (`data=synthetic model=poyo_small trainer=cpu`"
        + (f", overrides {' '.join(sizes.overrides + tuple(overrides))}" if
           sizes.overrides or overrides else "")
        + f"): encoder dim {enc_cfg.dim}, depth {enc_cfg.depth}; batch {windows:.0f} windows "
        f"with on average {tokens / windows:.0f} input tokens (spikes and each visible unit's "
        f"start and end tokens; {padded / windows:.0f} with padding) and "
        f"{cells / windows:.0f} decoded cells per window; forward + masked "
        f"Poisson NLL + backward + AdamW, {sizes.real_batches} batches cycled, {r['steps']} steps "
        "timed.",
        "",
        f"- train step: {r['median_ms']:.1f} ms (median; mean {r['mean_ms']:.1f} ± "
        f"{r['std_ms']:.1f})",
        f"- throughput: {windows_s:.1f} windows/s, {tokens_s:.0f} input tokens/s",
    ]
    if device == "cuda":
        lines.append(f"- peak memory (torch.cuda.max_memory_allocated): {r['peak_mib']:.0f} MiB")
    return lines, {"windows_s": windows_s, "tokens_s": tokens_s}, module, dm


# ------------------------------------------------------------------------- c. scaling


def _scan(device: str, sizes: Sizes, points, make: Callable[[int], argparse.Namespace],
          budget_s: float) -> list[dict]:
    """Train step (``MaskedModel``, model small, fp32) at each point: time and memory."""
    preset = enc.load_preset("small")
    out = []
    for point in points:
        args = make(point)
        batch = enc._to(enc.make_batch(args, preset["encoder"]), device)

        def build(args=args):
            return enc.build_masked_model(preset, args.units)

        r = enc.measure(build, lambda m, b=batch, a=args: enc.train_step(m, enc.masked_loss, b, a),
                        args, budget_s=budget_s)
        r["saved_mib"] = saved_activation_mib(build(), enc.masked_loss, batch, args)
        r["point"] = point
        out.append(r)
    return out


def _scan_table(name: str, results: list[dict], cuda: bool, per: str | None = None,
                batch: int = 1) -> list[str]:
    """One row per point; with ``per``, also µs per ``per`` (per token / per cell of the batch)."""
    return _table(
        [name, "step ms (median)", "steps timed"] + ([f"µs per {per}"] if per else [])
        + ["saved activations MiB"] + (["CUDA peak MiB"] if cuda else []),
        [[f"{r['point']:,}", f"{r['median_ms']:.1f}", r["steps"]]
         + ([f"{1e3 * r['median_ms'] / (batch * r['point']):.2f}"] if per else [])
         + [f"{r['saved_mib']:.1f}"] + ([f"{r['peak_mib']:.0f}"] if cuda else [])
         for r in results],
    )


def _growth_slope(results: list[dict], key: str, first: int = 0) -> float:
    """Log-log slope, over ``results[first:]``, of ``key`` minus its value at the smallest point
    (the part that grows with the point); NaN where that part is not positive."""
    base = results[0][key]
    rest = results[max(first, 1):]
    grown = [r[key] - base for r in rest]
    if len(rest) < 2 or min(grown) <= 0:
        return float("nan")
    return slope([r["point"] for r in rest], grown)


def section_scaling(device: str, sizes: Sizes) -> tuple[list[str], dict]:
    cuda = device == "cuda"
    preset = enc.load_preset("small")["encoder"]
    latents = round(preset["sequence_length"] / preset["latent_step"]) * preset[
        "num_latents_per_step"]
    tokens = _scan(device, sizes, sizes.token_points,
                   lambda n: options(device, sizes, batch=sizes.token_batch, spikes=n),
                   sizes.budget_s)
    units = _scan(device, sizes, sizes.unit_points,
                  lambda n: options(device, sizes, batch=sizes.scan_batch,
                                    spikes=sizes.unit_tokens, units=n),
                  sizes.budget_s / 2)
    cells = _scan(device, sizes, sizes.cell_points,
                  lambda n: options(device, sizes, batch=sizes.scan_batch,
                                    spikes=sizes.cell_tokens, queries=n),
                  sizes.budget_s / 2)

    def xy(rs, key="median_ms"):
        return [r["point"] for r in rs], [r[key] for r in rs]

    # the top decade of the token scan (all points when it spans less)
    first = next(i for i, r in enumerate(tokens) if r["point"] >= tokens[-1]["point"] / 10)
    slopes = {
        "step time vs tokens, all points": slope(*xy(tokens)),
        "step time vs tokens, top decade": slope(*xy(tokens[first:])),
        "token-dependent step time vs tokens, top decade": _growth_slope(
            tokens, "median_ms", first),
        "token-dependent saved activations vs tokens, top decade": _growth_slope(
            tokens, "saved_mib", first),
        "step time vs units": slope(*xy(units)),
        "step time vs decoded cells": slope(*xy(cells)),
        "cell-dependent saved activations vs decoded cells": _growth_slope(cells, "saved_mib"),
    }
    lines = [
        "### c. Scaling of the masked-pretraining train step",
        "",
        f"`MaskedModel` with the small preset ({latents} latents), fp32, synthetic tokens "
        "(`benchmark_encoder.make_batch`). Saved activations: bytes of the distinct tensors "
        "autograd keeps for backward (parameters excluded)"
        + ("; CUDA peak: `torch.cuda.max_memory_allocated`." if cuda else
           "; on CPU there is no allocator peak counter (see the end of the report for the "
           "process's peak RSS)."),
        "",
        f"Spike tokens per window (batch {sizes.token_batch}, {latents} latents, 384 decoded "
        "cells, 256 units):",
        "",
        *_scan_table("tokens per window", tokens, cuda, "token", sizes.token_batch),
        "",
        f"Units in the vocabulary (batch {sizes.scan_batch}, {sizes.unit_tokens} tokens, 384 "
        "decoded cells):",
        "",
        *_scan_table("units", units, cuda),
        "",
        f"Decoded cells per window (batch {sizes.scan_batch}, {sizes.cell_tokens} tokens, 256 "
        "units):",
        "",
        *_scan_table("decoded cells", cells, cuda, "cell", sizes.scan_batch),
        "",
        "Log-log slopes (1 = linear; \"X-dependent\": minus the value at the smallest point, "
        "i.e. the part that grows):",
        "",
        *(f"- log-log slope of {k}: {v:.3f}" for k, v in slopes.items()),
    ]
    return lines, slopes


# ----------------------------------------------------------------------- d. data pipeline


def loader_rate(make_loader: Callable, n_batches: int, repeats: int) -> tuple[float, float]:
    """``(windows/s, first-batch seconds)`` of the loaders ``make_loader()`` builds: the median of
    ``repeats`` timings of ``n_batches`` batches after the first two, and the start-up of the
    first loader (worker start and its first batch)."""
    rates, first = [], None
    for _ in range(repeats):
        loader = make_loader()
        it = forever(loader)
        start = time.perf_counter()
        next(it)
        first = time.perf_counter() - start if first is None else first
        next(it)
        start, windows = time.perf_counter(), 0
        for _ in range(n_batches):
            windows += len(next(it)["session_index"])
        rates.append(windows / (time.perf_counter() - start))
        del it, loader
        gc.collect()
    return float(np.median(rates)), first


def pipeline_rate(dm, workers: int, n_batches: int, split: str = "train",
                  repeats: int = 1) -> dict:
    """windows/s of ``dm``'s ``split`` DataLoader with ``workers`` worker processes
    (:func:`loader_rate`)."""
    dm.num_workers = workers
    rate, first = loader_rate(getattr(dm, f"{split}_dataloader"), n_batches, repeats)
    return {"workers": workers, "windows_s": rate, "first_s": first}


class ReferencePath(torch.utils.data.Dataset):
    """The pipeline before the fast path, for the ratio: temporaldata's ``Data.slice`` of
    torch_brain's (deep-copied) recording per window, batched by torch_brain's ``collate``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, index):
        window = self.dataset.reference_window(index.recording_id, index.start, index.end)
        return self.dataset.tokenizer(window, index)


def reference_rate(dm, n_batches: int, repeats: int) -> float:
    """windows/s of :class:`ReferencePath` over the training windows (one process,
    :func:`loader_rate`)."""
    def make():
        return torch.utils.data.DataLoader(
            ReferencePath(dm.dataset), sampler=dm.train_dataloader().sampler,
            batch_size=dm.batch_size, collate_fn=collate)

    return loader_rate(make, n_batches, repeats)[0]


def profile_pipeline(dm, n_batches: int, top: int = 12) -> list[str]:
    """cProfile of the single-process pipeline: the top functions by cumulative time (the
    DataLoader's own frames and built-ins left out)."""
    dm.num_workers = 0
    it = forever(dm.train_dataloader())
    next(it)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n_batches):
        next(it)
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO()).sort_stats("cumulative")
    total = max(stats.total_tt, 1e-9)
    rows = []
    for key in stats.fcn_list:
        filename, line, func = key
        if filename == "~" or "torch/utils/data" in filename or func == "forever":
            continue  # the DataLoader's own plumbing and built-ins
        cc, nc, tt, ct, _ = stats.stats[key]
        where = "/".join(Path(filename).parts[-2:])
        rows.append([f"`{func}` ({where}:{line})", nc, f"{1e3 * ct / n_batches:.1f}",
                     f"{100 * ct / total:.0f}%", f"{1e3 * tt / n_batches:.1f}"])
        if len(rows) == top:
            break
    return _table(["function", "calls", "cumulative ms / batch", "of total", "own ms / batch"],
                  rows)


def stimulus_datamodule(sizes: Sizes):
    """The ``task=align`` data module of the built-in visual data, with its tokenizer."""
    from neurobridge.data import StimulusTokenizer
    from neurobridge.tasks.common import build_datamodule, build_masking
    from neurobridge.tasks.pretrain import new_masked_model

    cfg = compose_default(["task=align", "data=synthetic_visual", *sizes.overrides])
    dm = build_datamodule(cfg, stimulus=True)
    model = new_masked_model(cfg, dm)
    dm.tokenizer = StimulusTokenizer(dm.masked_tokenizer(model.encoder, build_masking(cfg)),
                                     dm.image_rows)
    return dm


def tvsd_scale_module(sizes: Sizes, root: Path):
    """CaPOYO masked pretraining on a TVSD-shaped recording written to ``root``: 1,024 MUA
    channels (V1 / V4 / IT), 0.3 s trials of 30 bins of 10 ms laid back to back, as the TVSD
    converter writes them (``sizes.tvsd`` sets channels and trials)."""
    from temporaldata import RegularTimeSeries

    from neurobridge.data import write_recording
    from neurobridge.tasks.pretrain import build_pretraining

    channels, trials = sizes.tvsd
    length = 0.3 * trials
    values = np.random.default_rng(0).gamma(2.0, 0.5, size=(trials * 30, channels))
    regions = np.repeat(["V1", "V4", "IT"], [channels // 2, channels // 4,
                                             channels - channels // 2 - channels // 4])
    write_recording(
        root / "tvsd_like.h5", session_id="tvsd_like",
        unit_ids=[f"tvsd_like/ch{i:04d}" for i in range(channels)], domain=(0.0, length),
        splits={"train": [(0.0, 0.8 * length)], "valid": [(0.8 * length, 0.9 * length)],
                "test": [(0.9 * length, length)]},
        values=RegularTimeSeries(values=values.astype(np.float32), sampling_rate=100.0),
        brain_regions=regions, source="scripts/benchmark.py")
    cfg = compose_default([
        "data=recordings", f"data.root={root}", "data.modality=values",
        "data.value_key=mua.values", "model=capoyo_small", "model.encoder.sequence_length=0.3",
        "model.encoder.latent_step=0.05", "data.bin_size=0.01",
        f"data.batch_size={sizes.tvsd_batch}"])
    torch.manual_seed(0)
    module, dm = build_pretraining(cfg)
    module.log = lambda *args, **kwargs: None
    return module, dm


def section_pipeline(device: str, dm, sizes: Sizes, model_windows_s: float
                     ) -> tuple[list[str], dict]:
    import tempfile

    n, reps = sizes.pipeline_batches, sizes.pipeline_repeats
    workers = [0, 1, 2] + ([8] if (os.cpu_count() or 1) >= 10 else [])
    reference = reference_rate(dm, n, reps)
    rates = [pipeline_rate(dm, w, n, repeats=reps) for w in workers]
    ratios = {r["workers"]: r["windows_s"] / model_windows_s for r in rates}
    evaluation = pipeline_rate(dm, 0, n, split="test", repeats=reps)
    stimulus = pipeline_rate(stimulus_datamodule(sizes), 0, n, repeats=reps)
    with tempfile.TemporaryDirectory() as tmp:
        module, tvsd_dm = tvsd_scale_module(sizes, Path(tmp))
        tvsd = pipeline_rate(tvsd_dm, 0, max(2, n // 4), repeats=reps)
        batch = _move(next(iter(tvsd_dm.train_dataloader())), device)
        args = options(device, sizes, batch=tvsd_dm.batch_size)
        step = enc.measure(lambda: module,
                           lambda m: enc.train_step(m, lambda mod, _: pretrain_loss(mod, batch),
                                                    None, args),
                           args, budget_s=sizes.budget_s)
        tvsd_tokens = float(batch["encoder_inputs"]["input_mask"].sum()) / tvsd_dm.batch_size
        tvsd_step = tvsd_dm.batch_size / (step["median_ms"] / 1e3)
        channels, _ = sizes.tvsd
    rows = [["masked pretraining, before (temporaldata slices, torch_brain collate)", 0,
             f"{reference:.0f}", "", f"{reference / model_windows_s:.2f}"]]
    rows += [["masked pretraining (training windows)", r["workers"], f"{r['windows_s']:.0f}",
              f"{r['first_s']:.2f}", f"{ratios[r['workers']]:.2f}"] for r in rates]
    rows += [["evaluation windows (fixed masks, every mode)", 0, f"{evaluation['windows_s']:.0f}",
              f"{evaluation['first_s']:.2f}", f"{evaluation['windows_s'] / model_windows_s:.2f}"],
             ["stimulus-locked windows (`task=align`, `data=synthetic_visual`)", 0,
              f"{stimulus['windows_s']:.0f}", f"{stimulus['first_s']:.2f}", ""],
             [f"TVSD scale, CaPOYO ({channels} channels x 30 bins of 10 ms, trials/s)", 0,
              f"{tvsd['windows_s']:.0f}", f"{tvsd['first_s']:.2f}",
              f"{tvsd['windows_s'] / tvsd_step:.2f}"]]
    lines = [
        "### d. Data pipeline (real DataLoaders) against the model",
        "",
        f"Windows/s of the DataLoaders (window cutting, binning, masking, tokenizing, collating; "
        f"batch {dm.batch_size}), median of {reps} timings of {n} batches after the first two, "
        "alone (the model is not running meanwhile). The last column divides by the train "
        f"step's rate: section b's {model_windows_s:.1f} windows/s, and for the TVSD row the "
        f"CaPOYO step on those trials ({tvsd_step:.1f} trials/s at batch {tvsd_dm.batch_size}, "
        f"{tvsd_tokens:.0f} value tokens per trial after masking).",
        "",
        *_table(["pipeline", "workers", "windows/s", "first batch s (start-up)",
                 "pipeline / train step"], rows),
        "",
        f"- fast path / before, one process: {rates[0]['windows_s'] / reference:.1f}x",
        *(f"- pipeline / model windows/s with {w} workers: {v:.2f}" for w, v in ratios.items()),
        "",
        f"cProfile of the single-process pipeline ({sizes.profile_batches} batches; profiling "
        "slows it down):",
        "",
        *profile_pipeline(dm, sizes.profile_batches),
    ]
    return lines, {"ratios": ratios, "reference": reference, "tvsd": tvsd["windows_s"],
                   "stimulus": stimulus["windows_s"], "evaluation": evaluation["windows_s"]}


# ----------------------------------------------------------------- e. gpu_4090 memory


def section_gpu_memory(device: str, sizes: Sizes) -> tuple[list[str], dict]:
    """gpu_4090 preset: poyo_4090, 16-mixed, batch 64. Measured on CUDA; estimated always."""
    preset = enc.load_preset("4090")
    precision = "16" if device == "cuda" else "bf16"  # CPU autocast: bf16 (same 2 bytes)
    activations = []
    for b in sizes.gpu_batches:
        args = options(device, sizes, model="4090", batch=b, spikes=sizes.gpu_tokens,
                       precision=precision)
        batch = enc._to(enc.make_batch(args, preset["encoder"]), device)
        model = enc.build_masked_model(preset, args.units)
        activations.append(saved_activation_mib(model, enc.masked_loss, batch, args))
    n_params = sum(p.numel() for p in model.parameters())
    static = 16 * n_params / MIB  # fp32 weights + grads + AdamW's two moments
    (b1, b2), (m1, m2) = sizes.gpu_batches, activations
    per_window = (m2 - m1) / (b2 - b1)
    act64 = m1 + per_window * (64 - b1)
    estimate = static + act64
    lines = [
        "### e. Peak memory of the gpu_4090 preset (poyo_4090, fp16 autocast, batch 64)",
        "",
        f"{sizes.gpu_tokens} spike tokens and 384 decoded cells per window, 256 units, "
        f"{n_params / 1e6:.2f} M parameters.",
        "",
        f"- ESTIMATE of the peak memory at batch 64: {estimate:.0f} MiB (an estimate, not a "
        f"measurement: {static:.1f} MiB of fp32 weights, gradients and AdamW moments + "
        f"{act64:.0f} MiB of saved activations, extrapolated linearly from "
        f"{m1:.1f} / {m2:.1f} MiB measured at batch {b1} / {b2} on {device} with "
        f"{'fp16' if device == 'cuda' else 'bf16'} autocast, {per_window:.1f} MiB per window; "
        "it leaves out the allocator's caching and fragmentation, kernel workspaces and the "
        "transient tensors of the backward pass, and CPU autocast and attention kernels keep "
        "other tensors than CUDA's)",
    ]
    out = {"estimate_mib": estimate}
    if device == "cuda":
        args = options(device, sizes, model="4090", batch=64, spikes=sizes.gpu_tokens,
                       precision="16")
        r = enc.compare(args, preset, names=("NeuroBridge train step",))["NeuroBridge train step"]
        out["peak_mib"] = r["peak_mib"]
        lines.append(f"- measured peak memory at batch 64 (torch.cuda.max_memory_allocated): "
                     f"{r['peak_mib']:.0f} MiB, step {r['median_ms']:.1f} ms "
                     f"({64 * sizes.gpu_tokens / (r['median_ms'] / 1e3):.0f} input tokens/s)")
    else:
        lines.append("- measured peak memory: needs `--device cuda` (no GPU in this run)")
    return lines, out


# ------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    set_attention_backend(args.attention)
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    rss0 = max_rss_mib()
    load0 = os.getloadavg()[0]
    busy = load0 > (os.cpu_count() or 1) - torch.get_num_threads() + 0.5
    timings = {}

    def run(name, fn, *a):
        t = time.perf_counter()
        out = fn(*a)
        timings[name] = time.perf_counter() - t
        return out

    a_lines, _ = run("a", section_compare, args.device, sizes)
    b_lines, b, module, dm = run("b", section_throughput, args.device, sizes, args.override)
    a2_lines, _ = run("a2", section_same_windows, args.device, sizes, module, dm)
    c_lines, _ = run("c", section_scaling, args.device, sizes)
    d_lines, _ = run("d", section_pipeline, args.device, dm, sizes, b["windows_s"])
    e_lines, _ = run("e", section_gpu_memory, args.device, sizes)
    total = time.perf_counter() - started
    report = [
        f"## Benchmark{' (--quick)' if args.quick else ''}, {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- machine: {enc.machine(args.device)}",
        f"- load average (1 min) at start / end: {load0:.2f} / {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} logical CPUs",
        *([f"- WARNING: other processes were using the CPUs (load {load0:.2f} before the "
           f"start, with {torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs): "
           "timings are slower and noisier than on an idle machine; with more torch threads "
           "than free CPUs they can be off by orders of magnitude (try --threads 1)"]
          if busy else []),
        f"- command: `{' '.join(['python scripts/benchmark.py', *raw])}`",
        "",
        *a_lines, "", *a2_lines, "", *b_lines, "", *c_lines, "", *d_lines, "", *e_lines, "",
        "### Run",
        "",
        f"- wall time: {total:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + ")",
        f"- peak RSS of the process: {max_rss_mib():.0f} MiB ({rss0:.0f} MiB after imports; "
        "`resource.getrusage`, whole run)",
    ]
    text = "\n".join(report) + "\n"
    print(text, end="")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
