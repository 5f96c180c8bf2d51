"""What one sample of the pipeline is: a window of a recording, its split and its mask seed.

A sampler yields these indices and :class:`~neurobridge.data.RecordingDataset` turns each into
a tokenized sample; the index fixes everything random about the sample (its mask), so a window
is reproducible from its index alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch_brain.dataset import DatasetIndex

__all__ = ["SPLITS", "StimulusWindowIndex", "WindowIndex"]

#: The splits every recording defines (``<split>_domain`` Intervals), in this order.
SPLITS = ("train", "valid", "test")


@dataclass
class WindowIndex(DatasetIndex):
    """A torch_brain :class:`DatasetIndex` that also fixes the window's mask.

    Attributes:
        mask_seed: seed of the window's mask generator (fixed per eval window, drawn per
            training sample).
        mode: force this masking mode; ``None`` draws one from the controller's probabilities.
        max_queries: decode at most this many masked cells (a uniform random subset, an
            unbiased estimate of the loss over all masked cells); ``None`` decodes all of them.
        unmasked_queries: also decode this many cells the encoder saw (a uniform random
            subset of the unmasked cells, fewer when the window has fewer), flagged by
            ``query_visible``; 0 (the default) decodes only masked cells.
    """

    mask_seed: int = 0
    mode: str | None = None
    max_queries: int | None = None
    unmasked_queries: int = 0


@dataclass
class StimulusWindowIndex(WindowIndex):
    """A window locked to one presentation; ``mask_seed`` fixes its masked view (finetune) and
    which units ``unit_dropout`` hides.

    Attributes:
        image_id: the presented image.
        onset: presentation onset in seconds.
        unit_dropout: fraction of the window's units hidden from the encoder (all their spikes;
            a training augmentation, 0 for evaluation windows).
    """

    image_id: str = ""
    onset: float = 0.0
    unit_dropout: float = 0.0
