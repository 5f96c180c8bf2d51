"""LightningDataModule over a folder of recordings (or the built-in synthetic data)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from temporaldata import Interval
from torch.utils.data import DataLoader

from neurobridge.config_checks import check_positive_seconds, check_train_seconds
from neurobridge.data.binning import SplitCounts
from neurobridge.data.dataset import RecordingDataset
from neurobridge.data.images import IMAGE_FOLDER
from neurobridge.data.loader import BatchLoader
from neurobridge.data.samplers import (
    EvalWindowSampler,
    TrainWindowSampler,
    check_recording_weighting,
)
from neurobridge.data.spike_values import check_spike_values, spike_value_stats
from neurobridge.data.stimuli import (
    STIMULUS_KEY,
    StimulusWindowSampler,
    check_unit_dropout,
    read_presentations,
    stimulus_windows,
)
from neurobridge.data.tokenizer import MaskedTokenizer
from neurobridge.masking import MASKING_MODES, MaskingController
from neurobridge.modality import Modality

__all__ = [
    "NeuralDataModule",
    "StimulusDataModule",
    "cache_folder",
    "check_train_seconds",
    "default_cache_dir",
    "first_seconds",
]

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$NEUROBRIDGE_CACHE`` or ``~/.cache/neurobridge``."""
    return Path(os.environ.get("NEUROBRIDGE_CACHE", Path.home() / ".cache" / "neurobridge"))


def cache_folder(name: str) -> Path:
    """``default_cache_dir() / name``, created; a PermissionError naming ``NEUROBRIDGE_CACHE``
    when it cannot be written."""
    folder = default_cache_dir() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test_{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        where = (f"NEUROBRIDGE_CACHE={os.environ['NEUROBRIDGE_CACHE']}"
                 if "NEUROBRIDGE_CACHE" in os.environ else "the default ~/.cache/neurobridge")
        raise PermissionError(
            f"The cache folder {folder} ({where}) cannot be written ({err.strerror or err}). "
            "Set the environment variable NEUROBRIDGE_CACHE to a writable folder."
        ) from None
    return folder


def first_seconds(interval: Interval, seconds: float, window: float, recording_id: str) -> Interval:
    """The first ``seconds`` of ``interval`` (its blocks in time order, the last one cut).

    Raises a ValueError naming the recording when no kept block holds a ``window``-long window.
    """
    start = np.asarray(interval.start, dtype=np.float64)
    end = np.asarray(interval.end, dtype=np.float64)
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    before = np.cumsum(end - start) - (end - start)  # seconds of the split before each block
    keep = before < seconds - 1e-9
    start, end = start[keep], np.minimum(end[keep], start[keep] + (seconds - before[keep]))
    if not np.any(end - start >= window - 1e-6):
        longest = float((end - start).max()) if len(start) else 0.0
        raise ValueError(
            f"data.train_seconds={seconds:g} leaves recording {recording_id!r} no full training "
            f"window of {window:g} s (its longest kept block is {longest:g} s); raise "
            "data.train_seconds."
        )
    return Interval(start=start, end=end)


class NeuralDataModule(L.LightningDataModule):
    """Windows of multi-session recordings for masked pretraining.

    Call :meth:`setup` first, initialise the model's unit and session vocabularies from
    :attr:`unit_ids` / :attr:`session_ids`, then set :attr:`tokenizer`; the dataloaders use it.

    Args:
        root: folder of recordings (``<recording_id>.h5``). The task builder fills it in for
            ``data=synthetic`` (generated into the cache on first use by
            :func:`neurobridge.datasets.synthetic.ensure_synthetic_recordings`).
        modality: ``"spikes"`` or ``"values"`` (continuous MUA, CaPOYO).
        recording_ids: subset of recordings; all by default.
        value_key: regular time series field with the values (``"values"`` modality).
        spike_values: ``"values"`` modality: ``None`` (every recording needs ``value_key``),
            ``"counts"`` or ``"sqrt"``: a recording without ``value_key`` but with spikes is
            read as binned spike counts per (unit, bin), or their square root, so spiking and
            continuous recordings train one CaPOYO model.
        spike_values_zscore: standardise each unit's spike-derived values with their mean and
            std over the recording's training split (after ``train_seconds``); value series
            are used as stored.
        region_key: units field with each unit's region.
        sequence_length: window length in seconds.
        bin_size: grid bin width in seconds.
        batch_size: training batch size (per process).
        eval_batch_size: batch size for validation and test (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        seed: seed of the training windows and masks.
        eval_seed: seed of the fixed evaluation masks.
        eval_modes: masking modes each evaluation window is scored under.
        max_val_windows: cap on validation windows (test always uses all windows).
        train_max_queries: decode at most this many masked cells per training window
            (``None``: all; a random subset when a window has more). Evaluation always decodes
            every masked cell. The factorized decoder (the default) reads a cell with a dot
            product; the per-cell decoder runs its blocks per cell and wants a few hundred.
        train_unmasked_queries: also decode this many unmasked cells (cells the encoder sees)
            per training window, a random subset, for a reconstruction loss next to the masked
            one (``task.unmasked_weight``); 0 decodes masked cells only. Masked pretraining
            only (a stimulus data module refuses it).
        recording_weighting: how training windows are shared between recordings:
            ``"proportional"`` to recorded time, ``"uniform"``, or ``"sqrt"`` (see
            :class:`~neurobridge.data.samplers.TrainWindowSampler`).
        train_seconds: few-shot training: keep only the first ``train_seconds`` seconds of
            each recording's training split (its blocks in time order, the last one cut);
            ``None`` keeps all. Windows never straddle two blocks, so a recording must keep at
            least one block of ``sequence_length``. The smoothing baseline is fitted on the
            same seconds.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        modality: Modality | str = Modality.SPIKES,
        recording_ids: list[str] | None = None,
        value_key: str = "mua.values",
        spike_values: str | None = None,
        spike_values_zscore: bool = False,
        region_key: str = "brain_region",
        sequence_length: float = 1.0,
        bin_size: float = 0.02,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        eval_seed: int = 1234,
        eval_modes: Sequence[str] = MASKING_MODES,
        max_val_windows: int | None = 64,
        train_max_queries: int | None = 4096,
        train_unmasked_queries: int = 0,
        recording_weighting: str = "proportional",
        train_seconds: float | None = None,
    ):
        super().__init__()
        if root is None:
            raise ValueError("Set data.root to a folder of recordings, or use data=synthetic.")
        modality = Modality.parse(modality)
        for key, value, low in (("batch_size", batch_size, 1),
                                ("eval_batch_size", eval_batch_size, 1),
                                ("num_workers", num_workers, 0),
                                ("max_val_windows", max_val_windows, 1),
                                ("train_max_queries", train_max_queries, 1)):
            optional = key in ("eval_batch_size", "max_val_windows", "train_max_queries")
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"data.{key} must be a whole number >= {low}"
                    f"{' or null' if optional else ''}, got {value!r}."
                )
        check_positive_seconds("data.bin_size", bin_size)
        check_positive_seconds("data.sequence_length", sequence_length)
        bad = set(eval_modes) - set(MASKING_MODES)
        if bad:
            raise ValueError(f"data.eval_modes has unknown modes {sorted(bad)}; valid: {list(MASKING_MODES)}.")
        if isinstance(train_unmasked_queries, bool) or not isinstance(train_unmasked_queries, int) \
                or train_unmasked_queries < 0:
            raise ValueError(
                "data.train_unmasked_queries must be an integer >= 0 (unmasked cells decoded per "
                f"training window), got {train_unmasked_queries!r}."
            )
        check_recording_weighting(recording_weighting)
        check_train_seconds(train_seconds)
        check_spike_values(spike_values, modality, spike_values_zscore)
        self.root = Path(root).expanduser()
        self.modality = modality
        self.recording_ids = recording_ids
        self.value_key = value_key
        self.spike_values = spike_values
        self.spike_values_zscore = bool(spike_values_zscore)
        #: ``{session_id: (mean, std)}`` of spike-derived values (``spike_values_zscore``)
        self.spike_value_stats: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self.region_key = region_key
        self.sequence_length = float(sequence_length)
        self.bin_size = float(bin_size)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.eval_seed = eval_seed
        self.eval_modes = list(eval_modes)
        self.max_val_windows = max_val_windows
        self.train_max_queries = train_max_queries
        self.train_unmasked_queries = train_unmasked_queries
        self.recording_weighting = recording_weighting
        self.train_seconds = None if train_seconds is None else float(train_seconds)
        self.dataset: RecordingDataset | None = None

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        self.dataset = RecordingDataset(
            self.root,
            modality=self.modality,
            recording_ids=self.recording_ids,
            value_key=self.value_key,
            spike_values=self.spike_values if self.modality is Modality.VALUES else None,
        )
        self.intervals = {s: self.dataset.split_intervals(s) for s in ("train", "valid", "test")}
        if self.train_seconds is not None:
            self.intervals["train"] = {
                rid: first_seconds(iv, self.train_seconds, self.sequence_length, rid)
                for rid, iv in self.intervals["train"].items()
            }
        self.recording_of_session = dict(zip(self.dataset.session_ids(), self.dataset.recording_ids))
        if self.modality is Modality.VALUES and self.spike_values is not None:
            from_spikes = [r for r, src in self.dataset.value_sources.items() if src == "spikes"]
            log.info(
                "data.modality=values: %d recordings read from %s, %d from spikes as %s values%s",
                len(self.dataset.recording_ids) - len(from_spikes), self.value_key,
                len(from_spikes), self.spike_values,
                " (z-scored per unit)" if self.spike_values_zscore else "",
            )
            if self.spike_values_zscore:
                self.spike_value_stats = {
                    str(self.dataset.get_recording(rid).session.id): self._spike_value_stats(rid)
                    for rid in from_spikes
                }

    @property
    def unit_ids(self) -> list[str]:
        return self.dataset.unit_ids()

    @property
    def session_ids(self) -> list[str]:
        return self.dataset.session_ids()

    def masked_tokenizer(self, encoder, masking: MaskingController) -> MaskedTokenizer:
        """The masked tokenizer of ``encoder`` on this data (call after :meth:`setup`).

        The encoder gives the modality, the vocabularies, the window and the latent grid
        (``modality``, ``unit_emb.vocab``, ``session_emb.vocab``, ``sequence_length``,
        ``latent_step``, ``num_latents_per_step``); this module the bins, the region and value
        fields and the spike-value options.
        """
        values = encoder.modality is Modality.VALUES
        return MaskedTokenizer(
            modality=encoder.modality,
            unit_vocab=encoder.unit_emb.vocab,
            session_vocab=encoder.session_emb.vocab,
            masking=masking,
            sequence_length=encoder.sequence_length,
            bin_size=self.bin_size,
            latent_step=encoder.latent_step,
            num_latents_per_step=encoder.num_latents_per_step,
            region_key=self.region_key,
            value_key=self.value_key,
            spike_values=self.spike_values if values else None,
            spike_value_stats=self.spike_value_stats if values else None,
            binned_inputs=getattr(encoder, "reads_binned_counts", False),
        )

    @property
    def tokenizer(self):
        return self.dataset.tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self.dataset.tokenizer = value

    # ----------------------------------------------------------- dataloaders
    def _loader(self, sampler, batch_size: int) -> DataLoader:
        return BatchLoader(
            self.dataset,
            sampler=sampler,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        sampler = TrainWindowSampler(
            intervals=self.intervals["train"],
            window_length=self.sequence_length,
            seed=self.seed,
            max_queries=self.train_max_queries,
            unmasked_queries=self.train_unmasked_queries,
            recording_weighting=self.recording_weighting,
        )
        return self._loader(sampler, self.batch_size)

    def eval_sampler(self, split: str, max_windows: int | None = None) -> EvalWindowSampler:
        return EvalWindowSampler(
            intervals=self.intervals[split],
            window_length=self.sequence_length,
            modes=self.eval_modes,
            seed=self.eval_seed,
            max_windows=max_windows,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_sampler("valid", self.max_val_windows), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_sampler("test"), self.eval_batch_size)

    # --------------------------------------------------------------- helpers
    def _spike_value_stats(self, recording_id: str) -> tuple[np.ndarray, np.ndarray]:
        data = self.dataset.get_recording(recording_id)
        return spike_value_stats(
            data.spikes.timestamps, data.spikes.unit_index, len(data.units.id),
            self.intervals["train"][recording_id], self.bin_size, self.spike_values,
        )

    def split_counts(self, split: str, recording_id: str) -> SplitCounts:
        """The spike counts of ``split`` of a recording (after ``train_seconds`` for the
        training split), binned with this module's ``bin_size`` when called."""
        return SplitCounts.of(self.dataset.root / f"{recording_id}.h5",
                              self.intervals[split][recording_id], self.bin_size)

    def train_counts(self, recording_id: str) -> np.ndarray:
        """``[n_bins, n_units]`` spike counts of the recording's whole training split.

        Blocks of the split are binned separately (with this module's ``bin_size``) and
        stacked in time; used to fit the smoothing baseline.
        """
        return self.split_counts("train", recording_id)()



class StimulusDataModule(NeuralDataModule):
    """Stimulus-locked windows (one per image presentation) for alignment and reconstruction.

    Takes every argument of :class:`NeuralDataModule` plus the ones below. After :meth:`setup`,
    :attr:`image_ids` lists every image used by a window (the rows of the image table) and
    :attr:`split_image_ids` the disjoint per-split sets and :attr:`image_rows` maps an id to its
    row; set :attr:`tokenizer` to a
    :class:`~neurobridge.data.stimuli.StimulusTokenizer` before asking for a dataloader.

    Args:
        stimulus_key: Interval of the presentations in each recording (``start``, ``end``,
            ``image_id``).
        pre_onset: seconds of the window before onset; ``pre_onset + post_onset`` must be
            ``sequence_length`` (the encoder's window).
        post_onset: seconds of the window after onset.
        images: image folder or HDF5 image store; by default ``<root>/images`` (where the
            synthetic generator writes them).
        unit_dropout: training augmentation: each training window hides from the encoder all
            spikes of a fraction of its units drawn uniformly from ``[0, unit_dropout]``.
    """

    def __init__(
        self,
        *,
        stimulus_key: str = STIMULUS_KEY,
        pre_onset: float = 0.2,
        post_onset: float = 0.8,
        images: str | None = None,
        unit_dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if self.train_unmasked_queries:
            raise ValueError(
                "data.train_unmasked_queries is for masked pretraining; stimulus-locked tasks "
                "(align, finetune, reconstruct) decode masked cells only: set it to 0."
            )
        if pre_onset < 0 or post_onset <= 0:
            raise ValueError(
                f"data.pre_onset must be >= 0 and data.post_onset > 0, got {pre_onset}, {post_onset}."
            )
        if abs(pre_onset + post_onset - self.sequence_length) > 1e-6:
            raise ValueError(
                f"data.pre_onset + data.post_onset ({pre_onset} + {post_onset}) must equal the "
                f"encoder's sequence_length ({self.sequence_length})."
            )
        self.stimulus_key = stimulus_key
        self.pre_onset = float(pre_onset)
        self.post_onset = float(post_onset)
        self.images = images
        check_unit_dropout(unit_dropout)
        self.unit_dropout = float(unit_dropout)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        super().setup(stage)
        root = Path(self.dataset.root)
        presentations = {
            rid: read_presentations(
                self.dataset.get_recording(rid), root / f"{rid}.h5", self.stimulus_key
            )
            for rid in self.dataset.recording_ids
        }
        self.stimulus = stimulus_windows(
            presentations, self.intervals, pre=self.pre_onset, post=self.post_onset
        )
        self.split_image_ids = self.stimulus.image_ids
        self.image_ids = [i for split in ("train", "valid", "test") for i in self.split_image_ids[split]]
        self.image_rows = {image_id: row for row, image_id in enumerate(self.image_ids)}
        if self.images is None:
            self.images = str(root / IMAGE_FOLDER)

    def stimulus_sampler(self, split: str) -> StimulusWindowSampler:
        return StimulusWindowSampler(
            self.stimulus.windows[split],
            shuffle=split == "train",
            seed=self.seed,
            max_queries=self.train_max_queries,
            unit_dropout=self.unit_dropout if split == "train" else 0.0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.stimulus_sampler("train"), self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.stimulus_sampler("valid"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.stimulus_sampler("test"), self.eval_batch_size)

    def whole_split_dataloader(self, split: str) -> DataLoader:
        """Every window of ``split`` in order, on every DDP rank alike (for passes over a
        whole split after training, such as the linear probe)."""
        sampler = StimulusWindowSampler(self.stimulus.windows[split], shuffle=False,
                                        seed=self.seed, shard=False)
        return self._loader(sampler, self.eval_batch_size)
