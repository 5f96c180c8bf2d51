"""Token masking for multi-task masked pretraining."""

from .controller import MASKING_MODES, GridMask, MaskingController

__all__ = ["MASKING_MODES", "GridMask", "MaskingController"]
