"""The recording format: writing it (:func:`write_recording`, the split helpers of
:mod:`~neurobridge.data.splits`, the NWB converter of :mod:`~neurobridge.data.nwb`) and reading
it into batches (windows, tokenization and the Lightning data modules).

Producers of particular data sets (synthetic generators, the TVSD and Allen converters) live in
:mod:`neurobridge.datasets` and write through :func:`write_recording`; nothing here imports them.
"""

from .batch import MaskedBatch, MaskedSample, StimulusBatch
from .binning import bin_regular, bin_spikes, bin_spikes_in_blocks, num_bins
from .datamodule import NeuralDataModule, StimulusDataModule, cache_folder, default_cache_dir
from .dataset import RecordingDataset
from .images import (
    IMAGE_FOLDER,
    HDF5ImageStore,
    ImageFolderSource,
    ImagePixels,
    ImageSource,
    open_image_source,
)
from .index import SPLITS, StimulusWindowIndex, WindowIndex
from .samplers import EvalWindowSampler, TrainWindowSampler
from .spike_values import SPIKE_VALUES, VALUE_SOURCES
from .stimuli import StimulusTokenizer, StimulusWindowSampler
from .tokenizer import MaskedTokenizer
from .writer import make_recording, save_recording, write_recording

__all__ = [
    "IMAGE_FOLDER",
    "SPIKE_VALUES",
    "SPLITS",
    "VALUE_SOURCES",
    "EvalWindowSampler",
    "HDF5ImageStore",
    "ImageFolderSource",
    "ImagePixels",
    "ImageSource",
    "MaskedBatch",
    "MaskedSample",
    "MaskedTokenizer",
    "NeuralDataModule",
    "RecordingDataset",
    "StimulusBatch",
    "StimulusDataModule",
    "StimulusTokenizer",
    "StimulusWindowIndex",
    "StimulusWindowSampler",
    "TrainWindowSampler",
    "WindowIndex",
    "bin_regular",
    "bin_spikes",
    "bin_spikes_in_blocks",
    "cache_folder",
    "default_cache_dir",
    "make_recording",
    "num_bins",
    "open_image_source",
    "save_recording",
    "write_recording",
]
