"""scripts/benchmark_encoder.py and scripts/benchmark.py: tiny in-process runs print (and
record) every section with finite, positive figures."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text, re.M)
    assert match, pattern
    value = float(match.group(1).replace(",", ""))
    assert math.isfinite(value), pattern
    return value


def test_benchmark_prints_and_records_both_models(tmp_path, capsys, monkeypatch):
    import torch_brain.nn.rotary_attention as rotary

    # --attention sets torch_brain's process-wide kernel handle: restore it afterwards
    monkeypatch.setattr(rotary, "xops", rotary.xops)
    record = tmp_path / "bench" / "benchmarks.md"
    args = ["--steps", "2", "--warmup", "1", "--batch", "2", "--spikes", "32", "--queries", "16",
            "--model", "small", "--record", str(record), "--attention", "auto"]
    script = _load_script("benchmark_encoder")
    assert script.main(args) == 0
    printed = capsys.readouterr().out
    assert script.main(args) == 0  # a second run appends a second section
    recorded = record.read_text()
    assert recorded.count("## Encoder benchmark") == 2
    for text in (printed, recorded):
        for row in ("POYO train step", "NeuroBridge train step", "POYO forward",
                    "NeuroBridge encode"):
            assert re.search(rf"^\| {row} \| [0-9.]+ ± [0-9.]+ \|", text, re.M), row
        for ratio in ("train step time", "encode / forward time"):
            value = float(re.search(rf"^- {ratio}: ([0-9.]+)$", text, re.M).group(1))
            assert value > 0
    assert "model small (dim 64, depth 2, 64 latents" in printed
    assert "torch " in printed and "device cpu" in printed
    # auto is torch_brain's own choice: xformers only where it is importable
    assert f"attention {'sdpa' if rotary.xops is None else 'auto'}" in printed


NUM = r"(-?[0-9][0-9,]*\.?[0-9]*(?:e[-+]?[0-9]+)?)"


def test_quick_benchmark_prints_every_section(tmp_path, capsys):
    markdown = tmp_path / "results" / "benchmark.md"
    script = _load_script("benchmark")
    assert script.main(["--quick", "--markdown", str(markdown)]) == 0
    printed = capsys.readouterr().out
    assert markdown.read_text() == printed
    for heading in ("## Benchmark (--quick)", "### a. Train step against upstream POYO",
                    "### b. Masked-pretraining train step", "### c. Scaling",
                    "### d. Data pipeline", "### e. Peak memory of the gpu_4090 preset"):
        assert heading in printed, heading
    assert re.search(r"^- machine: .+ logical CPUs, \d+ torch threads\), torch \S+, "
                     r"device cpu, attention sdpa$", printed, re.M)

    # a: both train steps timed, their ratio
    for row in ("POYO train step", "NeuroBridge train step"):
        assert _number(rf"^\| {row} \| {NUM} \|", printed) > 0
    assert _number(rf"^- train step time NeuroBridge / POYO: {NUM}$", printed) > 0
    # a, same windows: POYO reads every token, NeuroBridge the tokens left after masking
    for row in ("POYO train step \\(all tokens\\)", "NeuroBridge train step \\(masked\\)"):
        assert _number(rf"^\| {row} \| {NUM} \|", printed) > 0
    assert _number(rf"^- train step time NeuroBridge / POYO, same windows: {NUM}$", printed) > 0
    every = _number(rf"start and end tokens: {NUM} on average\)", printed)
    visible = _number(rf"the tokens left after masking \({NUM}\)", printed)
    assert 0 < visible < every
    # b: throughput of the real train step
    assert _number(rf"^- throughput: {NUM} windows/s", printed) > 0
    assert _number(rf"windows/s, {NUM} input tokens/s$", printed) > 0
    # c: every scan point timed, activation memory growing with the tokens, slopes fitted
    rows = [re.search(rf"^\| {n} \| {NUM} \| \d+ \| {NUM} \| {NUM} \|$", printed, re.M)
            for n in ("100", "300", "1,000")]
    assert all(rows), rows
    step_ms, per_token, activations = (
        [float(row.group(i)) for row in rows] for i in (1, 2, 3)
    )
    assert min(step_ms) > 0 and min(per_token) > 0
    assert 0 < activations[0] < activations[1] < activations[2]
    for what in ("step time vs tokens, all points", "step time vs tokens, top decade",
                 "step time vs units", "step time vs decoded cells"):
        _number(rf"^- log-log slope of {what}: {NUM}$", printed)
    for what in ("token-dependent saved activations vs tokens, top decade",
                 "cell-dependent saved activations vs decoded cells"):
        assert _number(rf"^- log-log slope of {what}: {NUM}$", printed) > 0
    # d: the real DataLoader with 0, 1 and 2 workers against the train step, and its profile
    for workers in (0, 1, 2):
        assert _number(rf"^- pipeline / model windows/s with {workers} workers: {NUM}$",
                       printed) > 0
    assert "data/tokenizer.py" in printed.split("cProfile of the single-process pipeline")[1]
    # d: the path before the fast one, evaluation, stimulus-locked and TVSD-scale windows
    assert _number(rf"^- fast path / before, one process: {NUM}x$", printed) > 0
    for row in (r"evaluation windows \(fixed masks, every mode\)",
                r"stimulus-locked windows \(`task=align`, `data=synthetic_visual`\)",
                r"TVSD scale, CaPOYO \(48 channels x 30 bins of 10 ms, trials/s\)"):
        assert _number(rf"^\| {row} \| 0 \| {NUM} \|", printed) > 0, row
    # e: the gpu_4090 memory is an estimate on CPU, and says so
    assert _number(rf"^- ESTIMATE of the peak memory at batch 64: {NUM} MiB \(an estimate",
                   printed) > 0
    assert "needs `--device cuda`" in printed
