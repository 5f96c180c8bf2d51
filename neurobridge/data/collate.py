"""Batching of tokenized samples: torch_brain's ``collate``, one array copy per field.

:func:`torch_brain.data.collate` turns every array of every sample into a tensor and pads
with ``pad_sequence``: a few microseconds of torch per array, a tenth of a millisecond per
window on a 2-core CPU. :func:`collate` builds each batched field with one numpy fill and one
``torch.from_numpy`` for the fields the tokenizers make (``pad8`` arrays and tensors, arrays
of one shape, Python numbers, nested dicts) and hands anything else to torch_brain's
``collate``; the batch is the same (a test compares every field, dtype and shape included).
"""

from __future__ import annotations

import numpy as np
import torch
from torch_brain.data import collate as torch_brain_collate
from torch_brain.data.collate import Padded8Object

__all__ = ["PackedBatch", "collate", "collate_packed"]


def collate(samples: list) -> object:
    """A batch of ``samples`` (what :func:`torch_brain.data.collate` returns for them)."""
    first = samples[0]
    if isinstance(first, dict):
        return {key: collate([s[key] for s in samples]) for key in first}
    if isinstance(first, Padded8Object):
        arrays = [_array(s.obj) for s in samples]
        if all(a is not None for a in arrays):
            return _pad8(arrays)
    elif isinstance(first, np.ndarray) and first.dtype.kind in "biuf":
        if all(isinstance(s, np.ndarray) and s.shape == first.shape for s in samples):
            return torch.from_numpy(np.stack(samples))
    elif type(first) is int and all(type(s) is int for s in samples):
        return torch.tensor(samples)
    elif type(first) is float and all(type(s) is float for s in samples):
        return torch.tensor(samples, dtype=torch.float64)
    return torch_brain_collate(samples)


def _array(obj) -> np.ndarray | None:
    """A numeric array (or CPU tensor) as numpy, else ``None``."""
    if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and obj.layout is torch.strided \
            and obj.ndim and not obj.requires_grad:
        return obj.numpy()
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf" and obj.ndim:
        return obj
    return None


def _pad8(arrays: list[np.ndarray]) -> torch.Tensor | object:
    """``[batch, length rounded up to a multiple of 8, ...]``, zero-padded (torch_brain's
    ``pad8``)."""
    tail, dtype = arrays[0].shape[1:], arrays[0].dtype
    if any(a.shape[1:] != tail or a.dtype != dtype for a in arrays):
        return torch_brain_collate([Padded8Object(a) for a in arrays])
    longest = max(len(a) for a in arrays)
    out = np.zeros((len(arrays), -(-longest // 8) * 8, *tail), dtype=dtype)
    for row, a in zip(out, arrays):
        row[:len(a)] = a
    return torch.from_numpy(out)


# ------------------------------------------------------- one buffer per batch across processes


class PackedBatch:
    """A batch whose tensors share one ``uint8`` buffer, for the trip from a DataLoader worker.

    Sending a tensor between processes costs a shared-memory segment and a file descriptor of
    its own (about a millisecond each on a small VM), twenty-odd per masked batch; packed, a
    batch costs one. :meth:`unpack` gives the batch back as views of the buffer.
    """

    _ALIGN = 64

    def __init__(self, batch):
        leaves: list[torch.Tensor] = []
        self.layout = self._layout(batch, leaves)
        sizes = [-(-t.numel() * t.element_size() // self._ALIGN) * self._ALIGN for t in leaves]
        self.buffer = torch.empty(sum(sizes), dtype=torch.uint8)
        self.spans = []
        offset = 0
        for t, size in zip(leaves, sizes):
            nbytes = t.numel() * t.element_size()
            part = self.buffer[offset:offset + nbytes]
            if nbytes:
                part.view(t.dtype).view(t.shape).copy_(t)
            self.spans.append((offset, nbytes, t.dtype, tuple(t.shape)))
            offset += size

    @classmethod
    def _layout(cls, obj, leaves: list):
        if isinstance(obj, dict):
            return {key: cls._layout(value, leaves) for key, value in obj.items()}
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and obj.layout is torch.strided:
            leaves.append(obj.contiguous())
            return _Leaf(len(leaves) - 1)
        return obj

    def pin_memory(self) -> PackedBatch:
        """Pin the buffer (the DataLoader's ``pin_memory`` calls this): one pinned copy."""
        self.buffer = self.buffer.pin_memory()
        return self

    def unpack(self):
        """The batch, each tensor a view of the one buffer."""
        views = [self.buffer[o:o + n].view(dtype).view(shape) if n else
                 torch.empty(shape, dtype=dtype) for o, n, dtype, shape in self.spans]
        return self._fill(self.layout, views)

    @classmethod
    def _fill(cls, layout, views):
        if isinstance(layout, dict):
            return {key: cls._fill(value, views) for key, value in layout.items()}
        return views[layout.index] if isinstance(layout, _Leaf) else layout


class _Leaf:
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


def collate_packed(samples: list) -> object:
    """:func:`collate`, packed into a :class:`PackedBatch` inside a DataLoader worker."""
    batch = collate(samples)
    return PackedBatch(batch) if torch.utils.data.get_worker_info() is not None else batch
