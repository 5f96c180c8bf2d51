"""Which attention kernel torch_brain's rotary attention layers use.

torch_brain 0.1.1 picks xformers' memory-efficient attention whenever ``xformers`` is importable
and the tensors are on CUDA, and then expands the padding mask into a dense
``[batch, heads, n_query, n_key]`` additive bias (its own code warns that this is slow). With
the ``"sdpa"`` backend (NeuroBridge's default) every layer uses PyTorch's
``scaled_dot_product_attention`` instead, which takes the boolean mask directly. ``"auto"``
restores torch_brain's own choice. The switch is process-wide: it sets the module-level handle
that torch_brain's layers consult at every call.
"""

from __future__ import annotations

import torch_brain.nn.rotary_attention as _rotary_attention

__all__ = ["ATTENTION_BACKENDS", "attention_backend", "set_attention_backend"]

#: ``"sdpa"``: PyTorch SDPA everywhere. ``"auto"``: torch_brain's choice (xformers on CUDA when
#: installed, else SDPA).
ATTENTION_BACKENDS = ("sdpa", "auto")


def _xformers_ops():
    try:
        import xformers.ops as xops
    except ImportError:
        return None
    return xops


def set_attention_backend(name: str) -> None:
    """Route torch_brain's rotary attention through ``name`` (one of :data:`ATTENTION_BACKENDS`)."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(
            f"attention_backend must be one of {list(ATTENTION_BACKENDS)}, got {name!r}."
        )
    _rotary_attention.xops = None if name == "sdpa" else _xformers_ops()


def attention_backend() -> str:
    """``"sdpa"`` when torch_brain cannot reach xformers, else ``"auto"``."""
    return "sdpa" if _rotary_attention.xops is None else "auto"
