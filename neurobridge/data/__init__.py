"""Recordings, windows, tokenization and the Lightning data module."""

from .binning import bin_regular, bin_spikes, num_bins
from .datamodule import NeuralDataModule, StimulusDataModule, default_cache_dir
from .dataset import RecordingDataset
from .images import (
    HDF5ImageStore,
    ImageFolderSource,
    ImagePixels,
    ImageSource,
    open_image_source,
)
from .samplers import EvalWindowSampler, TrainWindowSampler
from .stimuli import StimulusTokenizer, StimulusWindowIndex, StimulusWindowSampler
from .tokenizer import SPIKE_VALUES, VALUE_SOURCES, MaskedTokenizer, WindowIndex

__all__ = [
    "bin_spikes",
    "bin_regular",
    "num_bins",
    "NeuralDataModule",
    "StimulusDataModule",
    "StimulusTokenizer",
    "StimulusWindowIndex",
    "StimulusWindowSampler",
    "default_cache_dir",
    "RecordingDataset",
    "ImageSource",
    "ImageFolderSource",
    "HDF5ImageStore",
    "ImagePixels",
    "open_image_source",
    "EvalWindowSampler",
    "TrainWindowSampler",
    "MaskedTokenizer",
    "WindowIndex",
    "SPIKE_VALUES",
    "VALUE_SOURCES",
]
