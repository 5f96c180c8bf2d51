"""Recordings, windows, tokenization and the Lightning data module."""

from .binning import bin_regular, bin_spikes, num_bins
from .datamodule import NeuralDataModule, default_cache_dir
from .dataset import RecordingDataset
from .samplers import EvalWindowSampler, TrainWindowSampler
from .tokenizer import MaskedTokenizer, WindowIndex

__all__ = [
    "bin_spikes",
    "bin_regular",
    "num_bins",
    "NeuralDataModule",
    "default_cache_dir",
    "RecordingDataset",
    "EvalWindowSampler",
    "TrainWindowSampler",
    "MaskedTokenizer",
    "WindowIndex",
]
