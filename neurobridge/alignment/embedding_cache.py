"""Precomputed CLIP image embeddings, keyed by image id (written by ``scripts/embed_images.py``).

HDF5 layout:

- ``image_ids``: ``[N]`` variable-length UTF-8 strings, all distinct;
- ``embeddings``: float32 ``[N, d]``, finite; row ``i`` embeds ``image_ids[i]``;
- attributes ``model_name`` (open_clip architecture), ``pretrained`` (tag or checkpoint path,
  ``"random"`` for random weights) and ``embed_dim`` (``d``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor

from neurobridge.data.images import ImageSource
from neurobridge.io import atomic_path

from .clip import CLIPImageEncoder

__all__ = ["EmbeddingCache", "embed_image_source", "write_embedding_cache"]

_RANDOM = "random"


def write_embedding_cache(
    path: str | Path,
    image_ids: Sequence[str],
    embeddings: Tensor | np.ndarray,
    *,
    model_name: str,
    pretrained: str | None,
) -> Path:
    """Write an embedding cache atomically.

    Args:
        path: output ``.h5`` file; replaced if it exists.
        image_ids: ``[N]`` distinct image ids.
        embeddings: ``[N, d]`` finite embeddings (stored as float32).
        model_name: the open_clip architecture that produced them.
        pretrained: its weights (tag or path), or None for random weights (stored as
            ``"random"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    ids = [str(image_id) for image_id in image_ids]
    if isinstance(embeddings, Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    embeddings = np.asarray(embeddings, dtype=np.float32)
    where = f"write_embedding_cache({path})"
    if embeddings.ndim != 2 or embeddings.shape[0] != len(ids):
        raise ValueError(
            f"{where}: embeddings must have shape [N={len(ids)}, d], got {list(embeddings.shape)}."
        )
    if len(set(ids)) != len(ids):
        duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise ValueError(f"{where}: image_ids has duplicates, e.g. {duplicates[:5]}.")
    bad_rows = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if bad_rows.size:
        raise ValueError(
            f"{where}: embeddings contain NaN or Inf for image ids "
            f"{[ids[i] for i in bad_rows[:5]]} ({bad_rows.size} rows)."
        )
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("image_ids", data=ids, dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("embeddings", data=embeddings)
        f.attrs["model_name"] = model_name
        f.attrs["pretrained"] = _RANDOM if pretrained is None else str(pretrained)
        f.attrs["embed_dim"] = embeddings.shape[1]
    return path


class EmbeddingCache:
    """An embedding cache loaded eagerly into memory.

    Attributes:
        path: the file.
        ids: ``[N]`` image ids, in file order.
        embeddings: ``[N, d]`` float32 tensor.
        embed_dim: ``d``.
        model_name, pretrained: the encoder that produced the embeddings (``pretrained`` is
            ``"random"`` for random weights).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"embedding cache {self.path} does not exist; create it with "
                "scripts/embed_images.py."
            )
        with h5py.File(self.path, "r") as f:
            for name in ("image_ids", "embeddings"):
                if name not in f or not isinstance(f[name], h5py.Dataset):
                    raise ValueError(f"embedding cache {self.path}: missing dataset '{name}'.")
            for name in ("model_name", "pretrained", "embed_dim"):
                if name not in f.attrs:
                    raise ValueError(f"embedding cache {self.path}: missing attribute '{name}'.")
            if h5py.check_string_dtype(f["image_ids"].dtype) is None or f["image_ids"].ndim != 1:
                raise ValueError(
                    f"embedding cache {self.path}: field 'image_ids' must be a 1-D string dataset."
                )
            ids = f["image_ids"].asstr()[()].tolist()
            embeddings = np.asarray(f["embeddings"][()], dtype=np.float32)
            self.model_name = str(f.attrs["model_name"])
            self.pretrained = str(f.attrs["pretrained"])
            self.embed_dim = int(f.attrs["embed_dim"])
        if embeddings.shape != (len(ids), self.embed_dim):
            raise ValueError(
                f"embedding cache {self.path}: field 'embeddings' has shape "
                f"{list(embeddings.shape)}, expected [{len(ids)}, {self.embed_dim}] from "
                "'image_ids' and attribute 'embed_dim'."
            )
        self.ids = ids
        self.embeddings = torch.from_numpy(embeddings)
        self._index = {image_id: i for i, image_id in enumerate(ids)}
        if len(self._index) != len(ids):
            raise ValueError(f"embedding cache {self.path}: field 'image_ids' has duplicates.")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._index

    def __repr__(self) -> str:
        return (
            f"EmbeddingCache({str(self.path)!r}, n_images={len(self)}, d={self.embed_dim}, "
            f"model={self.model_name!r}, pretrained={self.pretrained!r})"
        )

    def index_of(self, ids: Sequence[str]) -> Tensor:
        """Row of each id: LongTensor ``[B]``; ``KeyError`` listing missing ids if any."""
        missing = [image_id for image_id in ids if image_id not in self._index]
        if missing:
            raise KeyError(
                f"{len(missing)} image id(s) not in embedding cache {self.path} "
                f"({len(self)} ids), e.g. {missing[:5]}; re-run scripts/embed_images.py on the "
                "image set of this dataset."
            )
        return torch.tensor([self._index[image_id] for image_id in ids], dtype=torch.long)

    def lookup(self, ids: Sequence[str]) -> Tensor:
        """Embeddings of ``ids``: ``[B, d]`` float32."""
        return self.embeddings[self.index_of(ids)]


def embed_image_source(
    encoder: CLIPImageEncoder, source: ImageSource, *, batch_size: int = 64
) -> tuple[list[str], Tensor]:
    """Embed every image of ``source`` in id order.

    Returns:
        ``(ids, embeddings)``: the source's ids and ``[N, d]`` float32 L2-normalised embeddings
        on the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    ids = list(source.ids)
    chunks = [
        encoder.embed_pil([source.load(i) for i in ids[start : start + batch_size]]).cpu()
        for start in range(0, len(ids), batch_size)
    ]
    return ids, torch.cat(chunks)
