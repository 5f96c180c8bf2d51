#!/usr/bin/env python
"""New-session adaptation vs training from scratch on the built-in synthetic data.

Pretrains on synthetic sessions s00-s03 (or takes a given pretraining checkpoint), then on the
held-out session s04 with the same few seconds of training data and the same number of steps:

1. ``task=adapt_session``: the pretrained model, only the new unit / session rows learn;
2. ``task=pretrain``: a model trained from scratch on s04;
3. (``--no-start``: skipped) the pretrained model with its new rows as initialised, untrained.

and prints the test co-bps of each, with the smoothing baseline (fitted on the same seconds)
and the true-rate oracle. Every stage is an ``examples/train.py`` command, printed as it runs.

    python scripts/adapt_session_demo.py --out runs/adapt_demo
    python scripts/adapt_session_demo.py --checkpoint runs/pretrain/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

TRAIN = Path(__file__).resolve().parent.parent / "examples" / "train.py"
MODES = ("temporal", "neuron", "intra_region", "inter_region")
#: every stage reads the same 5-session synthetic data set (s00-s03 are those of the default
#: 4-session one: session k depends only on the seed and k)
DATA = ["data.synthetic.n_sessions=5"]
PRETRAIN_IDS = "[synthetic_s00,synthetic_s01,synthetic_s02,synthetic_s03]"
NEW_ID = "[synthetic_s04]"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/adapt_demo", help="folder of the run folders")
    p.add_argument("--checkpoint", default=None,
                   help="pretraining checkpoint (trained on s00-s03); default: pretrain one")
    p.add_argument("--pretrain-steps", type=int, default=1200)
    p.add_argument("--steps", type=int, default=300, help="steps of adaptation and of scratch")
    p.add_argument("--train-seconds", type=float, default=30.0,
                   help="seconds of s04's training split that both runs see")
    p.add_argument("--init", default="random", choices=("random", "mean"), help="task.init")
    p.add_argument("--no-start", action="store_true",
                   help="skip scoring the untrained new rows (saves one test pass)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every stage")
    return p.parse_args(argv)


def train(run_dir: Path, overrides: list[str]) -> dict:
    """Run ``examples/train.py`` with ``overrides`` into ``run_dir``; return its metrics."""
    cmd = [sys.executable, str(TRAIN), *overrides, f"hydra.run.dir={run_dir}",
           "trainer.enable_progress_bar=false"]
    print("$ " + shlex.join(["python", "examples/train.py", *cmd[2:]]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)
    return json.loads((run_dir / "metrics.json").read_text())


def row(name: str, metrics: dict, prefix: str = "test/co_bps") -> str:
    cells = [metrics.get(prefix, float("nan"))] + [metrics.get(f"{prefix}/{m}", float("nan"))
                                                    for m in MODES]
    return f"| {name} | " + " | ".join(f"{v:.3f}" for v in cells) + " |"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    extra = list(args.overrides)
    ckpt = args.checkpoint
    if ckpt is None:
        train(out / "pretrain", [*DATA, f"data.recording_ids={PRETRAIN_IDS}",
                                 f"trainer.max_steps={args.pretrain_steps}", "task.baseline=null",
                                 "task.plots=false", *extra])
        ckpt = str(out / "pretrain" / "checkpoints" / "last.ckpt")
    data = [*DATA, f"data.recording_ids={NEW_ID}", f"data.train_seconds={args.train_seconds:g}",
            "task.plots=false"]
    adapt = ["task=adapt_session", f"init_from={ckpt}", f"task.init={args.init}"]
    budget = [f"trainer.max_steps={args.steps}"]
    adapted = train(out / "adapt", [*adapt, *data, *budget, *extra])
    scratch = train(out / "scratch", ["task=pretrain", *data, *budget, *extra])
    start = None
    if not args.no_start:  # one step at learning rate 0: the new rows stay as initialised
        start = train(out / "start", [*adapt, *data, "task.optimizer.lr=0", "task.baseline=null",
                                      "trainer.max_steps=1", "trainer.val_check_interval=1",
                                      *extra])

    print(f"\nTest co-bps on synthetic_s04 ({args.train_seconds:g} s of training data, "
          f"{args.steps} steps each):\n")
    print("| | pooled | " + " | ".join(MODES) + " |")
    print("|---" * (len(MODES) + 2) + "|")
    print(row("smoothing + GLM baseline (same seconds)", adapted, "test/baseline/co_bps"))
    if start is not None:
        print(row(f"pretrained, new rows as initialised ({args.init}), untrained", start))
    print(row("from scratch", scratch))
    print(row("adapt_session (new rows only)", adapted))
    print(row("true-rate oracle", adapted, "test/oracle/co_bps"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
