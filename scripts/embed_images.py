#!/usr/bin/env python
"""Embed every stimulus image with a frozen open_clip model into an HDF5 embedding cache.

Only local weights are used (no internet): ``--pretrained`` is an open_clip tag already in the
local cache, or a checkpoint file (set ``HF_HUB_OFFLINE=1`` to skip network retries for a tag).
Without it the model has random weights (tests and demos only).

Example::

    python scripts/embed_images.py --images data/things_images --out data/clip_vith14.h5 \\
        --model-name ViT-H-14 --pretrained /path/to/open_clip_model.bin --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time

from neurobridge.alignment import (
    TINY_MODEL_NAME,
    build_clip_image_encoder,
    embed_image_source,
    write_embedding_cache,
)
from neurobridge.data.images import open_image_source


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", required=True, help="image folder or HDF5 image store (.h5)")
    p.add_argument("--out", required=True, help="output embedding cache (.h5)")
    p.add_argument("--model-name", default=TINY_MODEL_NAME, help="open_clip architecture")
    p.add_argument(
        "--pretrained",
        default=None,
        help="open_clip tag in the local cache or local checkpoint path (default: random weights)",
    )
    p.add_argument("--cache-dir", default=None, help="open_clip cache holding tagged weights")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        source = open_image_source(args.images)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    encoder = build_clip_image_encoder(
        model_name=args.model_name,
        pretrained=args.pretrained,
        device=args.device,
        cache_dir=args.cache_dir,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    ids, embeddings = embed_image_source(encoder, source, batch_size=args.batch_size)
    out = write_embedding_cache(
        args.out, ids, embeddings, model_name=args.model_name, pretrained=args.pretrained
    )
    print(
        f"embedded {len(ids)} images from {args.images} with {args.model_name} "
        f"(pretrained={args.pretrained or 'random'}, d={encoder.embed_dim}) in "
        f"{time.perf_counter() - t0:.1f} s -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
