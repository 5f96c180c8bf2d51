#!/usr/bin/env python
"""Learning curves of NeuroBridge and the NDT-style peer on the built-in synthetic data:
co-bps against training steps and against the amount of pretraining data (sessions).

For each model and each number of sessions ``k`` it pretrains on sessions s00 .. s(k-1)
(``data.recording_ids``; the same steps for every ``k``), then scores every checkpoint on the
test split of s00, the session all runs share, with ``task=evaluate`` (same windows, same
masks; the tuned smoothing baseline and the latent ceiling of s00 on the same cells). Writes,
into ``--out``:

* ``learning_curves.md``: the table of test co-bps on s00 per model and ``k``, with the
  baseline, the ceiling and the oracle, and the validation co-bps of every run by step;
* ``learning_curves.png``: validation co-bps against the step for every run (left), test
  co-bps on s00 against ``k`` (right);
* ``learning_curves.json``: the numbers.

A run folder ``<out>/<model>_<k>s`` that holds a ``metrics.json`` is reused, so an
interrupted sweep continues where it stopped. Every stage is an ``examples/train.py`` command,
printed as it runs.

    python scripts/learning_curves.py --out runs/curves
    python scripts/learning_curves.py --out runs/curves --sessions 1 2 4 --ndt-sessions 4
    python scripts/learning_curves.py --out runs/curves_long --steps 4800 --ndt-sessions 4 \
        --ndt-steps 8000 --ndt-overrides model.encoder.dropout=0.0
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

TRAIN = Path(__file__).resolve().parent.parent / "examples" / "train.py"
MODES = ("temporal", "neuron", "intra_region", "inter_region")
SESSION = "synthetic_s00"
#: model -> overrides of its pretraining runs
MODELS = {"neurobridge": [], "ndt": ["model=ndt"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/curves", help="folder of the run folders and results")
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4],
                   help="numbers of pretraining sessions (of the built-in 4)")
    p.add_argument("--ndt-sessions", type=int, nargs="+", default=None,
                   help="numbers of pretraining sessions of the NDT-style runs (default: "
                        "--sessions)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--steps", type=int, default=1200, help="steps of the NeuroBridge runs")
    p.add_argument("--ndt-steps", type=int, default=3600, help="steps of the NDT-style runs")
    p.add_argument("--overrides", nargs="+", default=[],
                   help="Hydra overrides added to every NeuroBridge pretraining run")
    p.add_argument("--ndt-overrides", nargs="+", default=[],
                   help="Hydra overrides added to every NDT-style pretraining run, e.g. "
                        "model.encoder.dropout=0.0")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.ndt_sessions = args.ndt_sessions or args.sessions
    if any(not 1 <= k <= 4 for k in args.sessions + args.ndt_sessions):
        p.error("--sessions and --ndt-sessions must be in 1..4 (the built-in data have 4), got "
                f"{args.sessions} and {args.ndt_sessions}.")
    return args


def train(overrides: list[str]) -> None:
    cmd = [sys.executable, str(TRAIN), *overrides, "trainer.enable_progress_bar=false"]
    print("$", shlex.join(["python", "examples/train.py", *overrides]), flush=True)
    subprocess.run(cmd, check=True)


def session_ids(k: int) -> str:
    return "[" + ",".join(f"synthetic_s{i:02d}" for i in range(k)) + "]"


def evaluation_dir(run_dir: Path) -> Path:
    """Where a pretraining run's checkpoint is scored on the shared session."""
    return run_dir / f"eval_{SESSION}"


def validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    """``(step, validation co-bps)`` of a run's ``logs/metrics.csv``."""
    with open(run_dir / "logs" / "metrics.csv") as f:
        return [(int(r["step"]), float(r["val/co_bps"])) for r in csv.DictReader(f)
                if r.get("val/co_bps")]


def run_sweep(args: argparse.Namespace, out: Path) -> dict:
    results = {"session": SESSION, "runs": {}}
    for model in args.models:
        steps = args.steps if model == "neurobridge" else args.ndt_steps
        extra = args.overrides if model == "neurobridge" else args.ndt_overrides
        for k in args.sessions if model == "neurobridge" else args.ndt_sessions:
            name = f"{model}_{k}s"
            run_dir = out / name
            if not (run_dir / "metrics.json").exists():
                train([*MODELS[model], *extra, f"data.recording_ids={session_ids(k)}",
                       f"trainer.max_steps={steps}", "task.baseline=null", f"seed={args.seed}",
                       f"hydra.run.dir={run_dir}"])
            eval_dir = evaluation_dir(run_dir)
            if not (eval_dir / "metrics.json").exists():
                train(["task=evaluate", f"data.recording_ids=[{SESSION}]", "task.ceiling=true",
                       f"task.checkpoints=[{run_dir / 'checkpoints' / 'last.ckpt'}]",
                       f"hydra.run.dir={eval_dir}"])
            test = json.loads((eval_dir / "metrics.json").read_text())
            results["runs"][name] = {
                "model": model, "sessions": k, "steps": steps, "overrides": extra,
                "validation": validation_curve(run_dir),
                "test": {m: test[f"test/co_bps/{m}" if m != "pooled" else "test/co_bps"]
                         for m in ("pooled", *MODES)},
            }
            for who in ("baseline", "ceiling", "oracle"):
                results[who] = {m: test[f"test/{who}/co_bps" + ("" if m == "pooled" else f"/{m}")]
                                for m in ("pooled", *MODES)}
    results["paired"] = paired_differences(results, out)
    return results


def paired_differences(results: dict, out: Path) -> dict:
    """NeuroBridge minus the NDT-style peer on the same test cells of the shared session, per
    number of sessions both were pretrained on (:mod:`neurobridge.comparison`; runs scored
    before ``test_unit_scores.npz`` existed are left out)."""
    from neurobridge.comparison import compare_unit_scores

    paired = {}
    for name, r in results["runs"].items():
        peer = f"ndt_{r['sessions']}s"
        if r["model"] != "neurobridge" or peer not in results["runs"]:
            continue
        try:
            paired[str(r["sessions"])] = compare_unit_scores(evaluation_dir(out / name),
                                                             evaluation_dir(out / peer))
        except (FileNotFoundError, ValueError) as err:
            print(f"(no paired comparison for {r['sessions']} sessions: {err})")
    return paired


def write_table(results: dict, path: Path) -> None:
    cols = ("pooled", *MODES)
    lines = [f"Test co-bps on {results['session']} (the session every run pretrains on), "
             "same windows and masks for every row.", "",
             "| model | pretraining sessions | steps | " + " | ".join(cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for r in results["runs"].values():
        model = " ".join([r["model"], *(f"`{o}`" for o in r["overrides"])])
        lines.append(f"| {model} | {r['sessions']} | {r['steps']:,} | "
                     + " | ".join(f"{r['test'][c]:.3f}" for c in cols) + " |")
    for who in ("baseline", "ceiling", "oracle"):
        lines.append(f"| {who} | – | – | " + " | ".join(f"{results[who][c]:.3f}" for c in cols)
                     + " |")
    for k, groups in results.get("paired", {}).items():
        lines.append(f"| neurobridge − ndt, {k} sessions (95 % interval over units) | {k} | – | "
                     + " | ".join(f"{groups[c]['delta']:+.3f} [{groups[c]['ci_low']:+.3f}, "
                                  f"{groups[c]['ci_high']:+.3f}]"
                                  for c in ("all", *MODES)) + " |")
    lines += ["", "Validation co-bps by step (each run's own validation split):", ""]
    for name, r in results["runs"].items():
        lines.append(f"- {name}: " + ", ".join(f"{s:,}: {v:.3f}" for s, v in r["validation"]))
    path.write_text("\n".join(lines) + "\n")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (steps_ax, data_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in results["runs"].items():
        steps_ax.plot(*zip(*r["validation"]), "-o", markersize=3, label=name)
    steps_ax.axhline(0.0, color="grey", linewidth=0.8)
    steps_ax.set(xlabel="training step", ylabel="validation co-bps (pooled)",
                 title="Co-bps against training steps")
    steps_ax.legend(fontsize=8)
    for model in dict.fromkeys(r["model"] for r in results["runs"].values()):
        runs = [r for r in results["runs"].values() if r["model"] == model]
        pts = sorted((r["sessions"], r["test"]["pooled"]) for r in runs)
        data_ax.plot(*zip(*pts), "-o", label=f"{model} ({runs[0]['steps']:,} steps)")
    for who, style in (("baseline", "k:"), ("ceiling", "k--"), ("oracle", "k-")):
        data_ax.axhline(results[who]["pooled"], linestyle=style[1:], color="k", linewidth=1,
                        label=who)
    data_ax.set(xlabel="pretraining sessions", ylabel=f"test co-bps on {results['session']}",
                title="Co-bps against pretraining data")
    data_ax.set_xticks(sorted({r["sessions"] for r in results["runs"].values()}))
    data_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = run_sweep(args, out)
    (out / "learning_curves.json").write_text(json.dumps(results, indent=2))
    write_table(results, out / "learning_curves.md")
    plot(results, out / "learning_curves.png")
    print((out / "learning_curves.md").read_text())


if __name__ == "__main__":
    main()
