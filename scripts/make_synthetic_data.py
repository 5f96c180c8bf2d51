#!/usr/bin/env python
"""Write the built-in synthetic recordings (see ``neurobridge.datasets.synthetic``) to a folder.

Example::

    python scripts/make_synthetic_data.py --out data/synthetic --sessions 4 --modality spikes
    python scripts/make_synthetic_data.py --out data/visual --stimulus images   # + images/
    python scripts/make_synthetic_data.py --out data/mixed --modality mixed     # spikes + MUA
"""

from __future__ import annotations

import argparse
import sys
import time

from neurobridge.datasets.synthetic import (
    MODALITIES,
    SyntheticConfig,
    config_hash,
    generate_synthetic_recordings,
    recording_summary,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = SyntheticConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder for <recording_id>.h5 files")
    p.add_argument("--sessions", type=int, default=defaults.n_sessions)
    p.add_argument("--units-per-region", type=int, default=defaults.units_per_region)
    p.add_argument("--duration", type=float, default=defaults.duration, help="seconds")
    p.add_argument("--modality", choices=MODALITIES, default=defaults.modality,
                   help="'mixed': even sessions spike, odd sessions are MUA")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--stimulus", choices=("none", "images"), default=defaults.stimulus,
                   help="'images': sessions watch procedural images (written to OUT/images/)")
    p.add_argument("--overwrite", action="store_true", help="replace existing recordings")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = SyntheticConfig(
            n_sessions=args.sessions,
            units_per_region=args.units_per_region,
            duration=args.duration,
            modality=args.modality,
            seed=args.seed,
            stimulus=args.stimulus,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    try:
        paths = generate_synthetic_recordings(args.out, config, overwrite=args.overwrite)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - t0

    print(
        f"wrote {len(paths)} {config.modality} recordings to {args.out} "
        f"(config {config_hash(config)}, regions {', '.join(config.regions)}) "
        f"in {elapsed:.2f} s"
    )
    total_units = total_spikes = 0
    for path in paths:
        s = recording_summary(path)
        total_units += s["units"]
        line = f"  {s['recording_id']}: {s['units']} units, {s['duration']:.1f} s"
        if "spikes" in s:
            total_spikes += s["spikes"]
            line += f", {s['spikes']} spikes, mean rate {s['mean_rate_hz']:.2f} Hz"
        else:
            line += f", {s['samples']} samples"
        line += f" (true mean rate {s['true_mean_rate_hz']:.2f} Hz)"
        print(line)
    summary = f"total: {total_units} units"
    if config.modality != "mua":
        summary += f", {total_spikes} spikes"
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
