#!/usr/bin/env python
"""Paired comparison of masked-model runs scored on the same test cells: each run's co-bps per
masking mode and its difference from the first run, with a 95 % bootstrap interval over units.

Every test of task=pretrain, adapt_session or evaluate writes ``RUN/test_unit_scores.npz``;
runs on the same recordings with the same data options score the same cells (fixed masks), and
the script refuses runs that did not. The interval says whether another sample of neurons
would keep the order; it does not cover seed-to-seed spread (compare seeds for that).

    python scripts/compare_runs.py runs/pretrain runs/ndt
    python scripts/compare_runs.py runs/a runs/b runs/c --out comparison.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neurobridge.comparison import compare_unit_scores

GROUPS = ("all", "temporal", "neuron", "intra_region", "inter_region")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders; every run after the first is compared "
                                           "with the first")
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples")
    args = p.parse_args(argv)
    if len(args.runs) < 2:
        p.error("give at least two run folders: the reference, then the runs to compare")
    return args


def comparison_table(runs: list[str], n_boot: int = 10_000) -> str:
    """Markdown: the first run's co-bps per group, then for each other run its co-bps and its
    difference from the first with the interval."""
    results = [compare_unit_scores(run, runs[0], n_boot=n_boot) for run in runs[1:]]
    groups = [g for g in GROUPS if all(g in r for r in results)]
    header = ["run", *("pooled" if g == "all" else g.replace("_", "-") for g in groups)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|",
             f"| {runs[0]} (reference) | "
             + " | ".join(f"{results[0][g]['b']:.4f}" for g in groups) + " |"]
    for run, r in zip(runs[1:], results):
        lines.append(f"| {run} | " + " | ".join(
            f"{r[g]['a']:.4f} ({r[g]['delta']:+.4f} [{r[g]['ci_low']:+.4f}, "
            f"{r[g]['ci_high']:+.4f}])" for g in groups) + " |")
    return "\n".join(lines) + ("\n\nco-bps on the same test cells; in brackets the difference "
                               "from the reference with its 95 % bootstrap interval over units.\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    table = comparison_table(args.runs, n_boot=args.n_boot)
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
