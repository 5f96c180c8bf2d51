"""scripts/benchmark_encoder.py: a tiny in-process run prints and records both rows and ratios."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_encoder.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmark_encoder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_prints_and_records_both_models(tmp_path, capsys):
    record = tmp_path / "bench" / "benchmarks.md"
    args = ["--steps", "2", "--warmup", "1", "--batch", "2", "--spikes", "32", "--queries", "16",
            "--model", "small", "--record", str(record)]
    script = _load_script()
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
