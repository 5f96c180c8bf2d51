#!/usr/bin/env python
"""Convert Allen Brain Observatory Visual Coding Neuropixels sessions (NWB) into recordings.

Example::

    python scripts/convert_allen.py --nwb /data/allen_cache --out data/allen
    python scripts/convert_allen.py --nwb /data/allen_cache/session_715093703 --out data/allen \\
        --structures VISp VISl VISal LGd --max-isi-violations none

Needs pynwb (``pip install "neurobridge[allen]"``). See ``neurobridge.datasets.allen`` for the
layout read and written.
"""

from __future__ import annotations

import argparse
import sys
import time

from neurobridge.datasets.allen import STIMULUS_TABLE, UnitFilters, convert_allen, summarize_allen


def _optional_float(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nwb", required=True, nargs="+",
                   help="session NWB files and/or AllenSDK cache folders "
                        "(session_<id>/session_<id>.nwb)")
    p.add_argument("--out", required=True, help="output folder for the .h5 recordings and images/")
    p.add_argument("--templates", default=None,
                   help="folder of natural_scene_<n>.tiff (default: the cache's "
                        "natural_scene_templates/)")
    p.add_argument("--stimulus-table", default=STIMULUS_TABLE,
                   help="intervals table of the scene presentations")
    p.add_argument("--max-amplitude-cutoff", type=_optional_float, default=0.1,
                   help="keep units with amplitude_cutoff <= this ('none': no filter)")
    p.add_argument("--min-presence-ratio", type=_optional_float, default=0.95,
                   help="keep units with presence_ratio >= this ('none': no filter)")
    p.add_argument("--max-isi-violations", type=_optional_float, default=0.5,
                   help="keep units with isi_violations <= this ('none': no filter)")
    p.add_argument("--quality", default="good",
                   help="keep units with this quality ('none': no filter)")
    p.add_argument("--all-channels", action="store_true",
                   help="keep units whose peak channel is not valid_data")
    p.add_argument("--structures", nargs="+", default=None,
                   help="keep units in these structures only (acronyms, e.g. VISp LGd)")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="share of valid scenes")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of test scenes")
    p.add_argument("--block-length", type=float, default=10.0,
                   help="seconds per split block of the time outside scene presentations")
    p.add_argument("--seed", type=int, default=0, help="seed of the scene split and blocks")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        filters = UnitFilters(
            max_amplitude_cutoff=args.max_amplitude_cutoff,
            min_presence_ratio=args.min_presence_ratio,
            max_isi_violations=args.max_isi_violations,
            quality=None if args.quality.lower() == "none" else args.quality,
            valid_channels_only=not args.all_channels,
            structures=args.structures,
        )
        paths = convert_allen(
            args.nwb,
            args.out,
            templates_dir=args.templates,
            stimulus_table=args.stimulus_table,
            filters=filters,
            valid_fraction=args.valid_fraction,
            test_fraction=args.test_fraction,
            block_length=args.block_length,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} recording(s) to {args.out} in {time.perf_counter() - t0:.1f} s")
    for path in paths:
        s = summarize_allen(path)
        selection = s["unit_selection"]
        regions = ", ".join(f"{region} {n}" for region, n in s["units"].items())
        dropped = ", ".join(f"{name} {n}" for name, n in selection["dropped"].items())
        splits = ", ".join(
            f"{split} {c['presentations']} presentations / {c['images']} images / "
            f"{c['seconds']:.0f} s"
            for split, c in s["splits"].items()
        )
        print(f"  {s['recording_id']}: {selection['kept']} of {selection['in_table']} units "
              f"({regions}), {s['spikes']} spikes, {s['duration']:.0f} s")
        print(f"    units dropped by: {dropped or 'no filter'}")
        print(f"    {splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
