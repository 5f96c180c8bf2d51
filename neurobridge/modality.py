"""What a model reads: spike events or continuous values. Decided once, read everywhere."""

from __future__ import annotations

from enum import Enum

__all__ = ["Modality"]


class Modality(str, Enum):
    """The kind of recording a model reads (``data.modality``).

    ``SPIKES``: one POYO token per spike; grid targets are spike counts (Poisson NLL,
    co-smoothing bits/spike). ``VALUES``: one CaPOYO token per (channel, bin) value, e.g.
    multi-unit activity; grid targets are the binned values (MSE, R²). Members compare equal
    to their strings (``Modality.SPIKES == "spikes"``), so configs keep plain strings.
    """

    SPIKES = "spikes"
    VALUES = "values"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def parse(cls, value: str | Modality, where: str = "data.modality") -> Modality:
        """``value`` as a :class:`Modality`; a ValueError naming ``where`` and the choices."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"{where} must be one of {[m.value for m in cls]}, got {value!r}."
            ) from None
