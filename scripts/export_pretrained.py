#!/usr/bin/env python
"""Turn a NeuroBridge Lightning checkpoint into a shareable pretrained folder.

    python scripts/export_pretrained.py --checkpoint RUN/checkpoints/last.ckpt --out model_dir
    python scripts/export_pretrained.py --checkpoint ALIGN/checkpoints/last.ckpt --out enc_dir \\
        --kind masked_model        # only the encoder + target decoder of an aligned model

The folder holds ``config.json`` and ``model.safetensors`` and loads with
``MaskedModel.from_pretrained(dir)`` / ``AlignmentModel.from_pretrained(dir)``, without
Lightning, Hydra or the data.
"""

from __future__ import annotations

import argparse

from neurobridge.training.checkpoint import export_pretrained


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a NeuroBridge last.ckpt")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--kind", choices=("masked_model", "alignment_model"), default=None,
                   help="default: the alignment model when the checkpoint holds one")
    args = p.parse_args(argv)
    out = export_pretrained(args.checkpoint, args.out, kind=args.kind)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
