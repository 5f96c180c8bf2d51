#!/usr/bin/env python
"""Convert NWB ecephys sessions (e.g. downloaded from DANDI) into NeuroBridge recordings.

Examples::

    # a DANDI download: every .nwb file below the folder, one <session>.h5 each
    python scripts/convert_nwb.py --nwb 000128/sub-Jenkins --out data/mc_maze \\
        --split trials --trial-split-column split
    # human single-neuron recordings: regions from each unit's electrode location
    python scripts/convert_nwb.py --nwb sub-P01_ses-1.nwb --out data/human --filter "snr >= 2"
    # presentations of images: every repeat of an image stays in one split
    python scripts/convert_nwb.py --nwb session.nwb --out data/vis --stimulus-table \\
        natural_scenes --stimulus-column image_path --images /data/scenes

See ``neurobridge.data.nwb`` for what is read; the output format is docs/data-format.md.
"""

from __future__ import annotations

import argparse
import sys
import time

from neurobridge.data.nwb import DOMAIN_FROM, SPLIT_MODES, UnitFilter, convert_nwb


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nwb", required=True, nargs="+", help="NWB files and/or folders (recursive)")
    p.add_argument("--out", required=True, help="output folder for the .h5 recordings")
    p.add_argument("--session-id", default=None,
                   help="recording id (one file only; default: the file's session_id/identifier)")
    p.add_argument("--region-column", default=None,
                   help="units column with each unit's region (default: location, brain_area, "
                        "region, else the unit's electrode location)")
    p.add_argument("--domain-from", choices=DOMAIN_FROM, default="extent",
                   help="the recording's extent: all spikes and intervals, or the trials / "
                        "epochs table")
    p.add_argument("--split", choices=SPLIT_MODES, default="blocks",
                   help="interleaved blocks (whole images with --stimulus-table) or whole trials")
    p.add_argument("--trial-split-column", default=None,
                   help="with --split trials: take the split from this trials column (NLB's "
                        "'split': train, val -> test, none -> left out)")
    p.add_argument("--block-length", type=float, default=10.0, help="seconds per split block")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="share of valid blocks/trials")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of test blocks/trials")
    p.add_argument("--seed", type=int, default=0, help="seed of the split draws")
    p.add_argument("--stimulus-table", default=None,
                   help="intervals table of stimulus presentations")
    p.add_argument("--stimulus-column", default=None,
                   help="its column naming the image shown (a path under --images)")
    p.add_argument("--images", default=None, help="image folder copied to OUT/images")
    p.add_argument("--link-images", action="store_true", help="symlink --images instead of copying")
    p.add_argument("--filter", dest="filters", action="append", default=[], type=UnitFilter.parse,
                   metavar="EXPR", help="keep units passing '<column> <op> <value>', e.g. "
                   "'quality == good' (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        results = convert_nwb(
            args.nwb, args.out, session_id=args.session_id, region_column=args.region_column,
            domain_from=args.domain_from, split=args.split, block_length=args.block_length,
            valid_fraction=args.valid_fraction, test_fraction=args.test_fraction,
            seed=args.seed, stimulus_table=args.stimulus_table,
            stimulus_column=args.stimulus_column, images=args.images,
            link_images=args.link_images, filters=args.filters,
            trial_split_column=args.trial_split_column,
        )
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, r in results:
        dropped = ", ".join(f"{n} {why}" for why, n in r["dropped"].items() if n) or "none"
        print(f"{path}: {r['kept']} of {r['in_table']} units (dropped: {dropped}); regions from "
              f"{r['region_from']} ({r['unknown_region']} unknown); "
              f"{r['spikes_outside_domain']} spikes outside the domain"
              + (f"; {r['heldout']} held-out units" if r["heldout"] is not None else ""))
    print(f"{len(results)} recording(s) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
