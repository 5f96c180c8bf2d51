#!/usr/bin/env python
"""Convert a TVSD monkey folder (THINGS Ventral Stream Spiking Dataset) into recordings.

Example::

    python scripts/convert_tvsd.py --monkey-dir /data/TVSD/monkeyN --out data/tvsd
    python scripts/convert_tvsd.py --monkey-dir /data/TVSD/monkeyF --out data/tvsd \\
        --top-reliable 256 --per-day

See ``neurobridge.datasets.tvsd`` for the layout read and written.
"""

from __future__ import annotations

import argparse
import sys
import time

from neurobridge.datasets.tvsd import REGIONS, convert_tvsd, summarize_tvsd


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--monkey-dir", required=True, help="the published monkeyN / monkeyF folder")
    p.add_argument("--out", required=True, help="output folder for the .h5 recordings")
    p.add_argument("--monkey", choices=sorted(REGIONS), default=None,
                   help="default: inferred from the folder name")
    p.add_argument("--bin-size", type=float, default=0.01, help="seconds per bin")
    p.add_argument("--valid-fraction", type=float, default=0.05,
                   help="share of the train images held out for validation")
    p.add_argument("--seed", type=int, default=0, help="seed of the valid images")
    p.add_argument("--min-snr", type=float, default=None,
                   help="keep channels with SNR_max >= this (needs THINGS_normMUA.mat)")
    p.add_argument("--top-reliable", type=int, default=None,
                   help="keep the N most reliable channels (needs THINGS_normMUA.mat)")
    p.add_argument("--per-day", action="store_true", help="one recording per recording day")
    p.add_argument("--chunk-trials", type=int, default=256, help="trials per read of ALLMUA")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        paths = convert_tvsd(
            args.monkey_dir,
            args.out,
            monkey=args.monkey,
            bin_size=args.bin_size,
            valid_fraction=args.valid_fraction,
            seed=args.seed,
            min_snr=args.min_snr,
            top_reliable=args.top_reliable,
            per_day=args.per_day,
            chunk_trials=args.chunk_trials,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} recording(s) to {args.out} in {time.perf_counter() - t0:.1f} s")
    for path in paths:
        s = summarize_tvsd(path)
        channels = ", ".join(f"{region} {n}" for region, n in s["channels"].items())
        splits = ", ".join(
            f"{split} {c['trials']} trials / {c['images']} images"
            for split, c in s["splits"].items()
        )
        print(f"  {s['recording_id']}: {s['trials']} trials, "
              f"{sum(s['channels'].values())} channels ({channels})")
        print(f"    {splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
