#!/usr/bin/env python
"""Convert the small public example recordings (MATLAB files) into NeuroBridge recordings.

Example::

    python scripts/convert_examples.py --src ../shared/data/real --out data/real

Reads, when present in ``--src``: ``pmd_datahigh_ex1_spikecounts.mat`` (DataHigh's macaque
PMd trials, 61 units), ``rat_ca1_linear_track_spikes.mat`` and ``rat_ca1_w_maze_spikes.mat``
(nelpy's rat CA1 tetrode units); see ``neurobridge.datasets.matlab_examples``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neurobridge.datasets.matlab_examples import convert_tetrode_spikes, convert_trial_counts

#: file -> (converter, session id, region)
EXAMPLES = {
    "pmd_datahigh_ex1_spikecounts.mat": (convert_trial_counts, "pmd_datahigh", "PMd"),
    "rat_ca1_linear_track_spikes.mat": (convert_tetrode_spikes, "rat_linear_track", "CA1"),
    "rat_ca1_w_maze_spikes.mat": (convert_tetrode_spikes, "rat_w_maze", "CA1"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", required=True, help="folder holding the .mat files")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per recording)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split draws")
    args = p.parse_args(argv)
    src, out = Path(args.src), Path(args.out)
    done = 0
    for name, (convert, sid, region) in EXAMPLES.items():
        if not (src / name).is_file():
            continue
        try:
            path = convert(src / name, out / sid, session_id=sid, region=region, seed=args.seed)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{name} -> {path}")
        done += 1
    if not done:
        print(f"error: none of {sorted(EXAMPLES)} is in {src}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
