"""``save_pretrained`` / ``from_pretrained`` on the model classes (the folder format and its
checks are in :mod:`neurobridge.models.pretrained`, imported on call: it imports the factory,
which imports the model classes)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["Shareable"]


class Shareable:
    """Mixin of :class:`MaskedModel` and :class:`AlignmentModel`.

    Attributes:
        config: the factory config the model was built from (set by
            :mod:`neurobridge.models.factory`; ``None`` for a model assembled by hand).
        pretrained_kind: the ``kind`` its folders record.
    """

    config: dict | None = None
    pretrained_kind: str = ""

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to ``directory``; returns it."""
        from neurobridge.models.pretrained import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location="cpu"):
        """The model of a folder written by :meth:`save_pretrained`, in eval mode; a folder of
        another kind is refused."""
        from neurobridge.models.pretrained import load_pretrained

        return load_pretrained(directory, kind=cls.pretrained_kind, map_location=map_location)
