"""What several tasks build the same way: the data module, the masking controller, the
smoothing baseline, the latent ceiling, and the checks of a loaded model against the data."""

from __future__ import annotations

from pathlib import Path

import h5py
from omegaconf import DictConfig, OmegaConf

from neurobridge.baselines import LatentPosteriorCeiling, SmoothingGLMBaseline, SplitTruth
from neurobridge.data import NeuralDataModule, StimulusDataModule, cache_folder
from neurobridge.masking import MaskingController
from neurobridge.modality import Modality
from neurobridge.models import MaskedModel

__all__ = [
    "PROTOCOLS",
    "STIMULUS_OPTIONS",
    "build_datamodule",
    "build_masking",
    "check_protocol",
    "check_reads_data",
    "check_vocab",
    "container",
    "latent_ceiling",
    "nlb_protocol",
    "smoothing_baseline",
]

#: ``task.protocol``: the masked modes only, or also the NLB protocol (:mod:`neurobridge.nlb`).
PROTOCOLS = ("masked", "nlb")

#: ``data`` options that only stimulus-locked tasks (align, finetune, adapter, reconstruct) use.
STIMULUS_OPTIONS = ("stimulus_key", "pre_onset", "post_onset", "images", "unit_dropout")


def container(node) -> dict:
    """A config node as a plain, resolved dict (``{}`` for ``None``)."""
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def _synthetic_root(synthetic: dict):
    """The cached folder of the built-in synthetic recordings ``data.synthetic`` describes
    (generated on first use)."""
    from neurobridge.datasets.synthetic import SyntheticConfig, ensure_synthetic_recordings

    config = SyntheticConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                                for k, v in synthetic.items()})
    return ensure_synthetic_recordings(cache_folder("synthetic"), config)


def build_datamodule(cfg: DictConfig, *, stimulus: bool) -> NeuralDataModule:
    """Random windows (``stimulus=False``) or stimulus-locked windows, set up.

    ``data.synthetic`` (when ``data.root`` is null) names the built-in synthetic recordings.
    """
    kwargs = container(cfg.data)
    kwargs.pop("_target_", None)
    synthetic = kwargs.pop("synthetic", None)
    if kwargs.get("root") is None and synthetic is not None:
        kwargs["root"] = _synthetic_root(synthetic)
    extra = {k: kwargs.pop(k) for k in STIMULUS_OPTIONS if k in kwargs}
    dm = StimulusDataModule(**kwargs, **extra) if stimulus else NeuralDataModule(**kwargs)
    dm.setup()
    return dm


def build_masking(cfg: DictConfig) -> MaskingController:
    """The masking controller of ``cfg.masking``."""
    return MaskingController(**container(cfg.masking))


def smoothing_baseline(
    task_cfg: DictConfig, dm: NeuralDataModule
) -> SmoothingGLMBaseline | None:
    """The smoothing baseline of ``task.baseline`` on ``dm``'s recordings, keyed by session id,
    or ``None`` when ``task.baseline`` is null or the data are values.

    Each session is fitted on its training split when the test first scores it (the baseline
    holds only where to read the split until then, so copies of the module stay small); with
    ``task.baseline.tune`` its kernel widths and L2 are chosen on its validation split first.
    """
    cfg = task_cfg.get("baseline")
    if not cfg or dm.modality is not Modality.SPIKES:
        return None
    sessions = dm.recording_of_session.items()
    counts = {sid: dm.split_counts("train", rid) for sid, rid in sessions}
    valid = {sid: dm.split_counts("valid", rid) for sid, rid in sessions
             if len(dm.intervals["valid"][rid])}
    return SmoothingGLMBaseline(**container(cfg), training_counts=counts, validation_counts=valid)


def latent_ceiling(task_cfg: DictConfig, dm: NeuralDataModule) -> LatentPosteriorCeiling | None:
    """With ``task.ceiling`` true, the achievable ceiling of ``dm``'s recordings
    (:class:`~neurobridge.baselines.LatentPosteriorCeiling`, keyed by session id), fitted now on
    each training split's ground truth so that data without one are refused before training;
    ``None`` otherwise."""
    if not task_cfg.get("ceiling"):
        return None
    if dm.modality is not Modality.SPIKES:
        raise ValueError("task.ceiling=true scores spike counts: it needs data.modality=spikes.")
    truth = {}
    for sid, rid in dm.recording_of_session.items():
        path = dm.dataset.root / f"{rid}.h5"
        with h5py.File(path, "r") as f:
            missing = [k for k in ("true_rates/latents", "true_rates/rates") if k not in f]
        if missing:
            raise ValueError(
                f"task.ceiling=true needs recordings with a latent ground truth, but {path} has "
                f"no {' or '.join(missing)} (the built-in synthetic data store them). Set "
                "task.ceiling=false."
            )
        truth[sid] = SplitTruth.of(path, dm.intervals["train"][rid], dm.bin_size)
    ceiling = LatentPosteriorCeiling(truth=truth,
                                     window_bins=round(dm.sequence_length / dm.bin_size))
    for sid, rid in dm.recording_of_session.items():
        try:
            ceiling.model(sid)
        except ValueError as err:
            raise ValueError(f"task.ceiling=true: {dm.dataset.root / f'{rid}.h5'}: {err} "
                             "Set task.ceiling=false.") from None
    return ceiling


def check_protocol(cfg: DictConfig) -> None:
    """``task.protocol`` and, for ``nlb``, ``task.forward_bins`` / ``task.heldout_fraction``."""
    protocol = cfg.task.get("protocol", "masked")
    if protocol not in PROTOCOLS:
        raise ValueError(f"task.protocol must be one of {PROTOCOLS}, got {protocol!r}.")
    if protocol != "nlb":
        return
    if Modality.parse(cfg.data.modality) is not Modality.SPIKES:
        raise ValueError("task.protocol=nlb scores spike counts (co-bps, fp-bps): it needs "
                         "data.modality=spikes.")
    n_bins = round(float(cfg.model.encoder.sequence_length) / float(cfg.data.bin_size))
    forward = cfg.task.get("forward_bins")
    if not (isinstance(forward, int) and 0 <= forward < n_bins - 1):
        raise ValueError(
            f"task.forward_bins must be an integer in [0, {n_bins - 2}] (a window has {n_bins} "
            f"bins of data.bin_size), got {forward!r}."
        )
    fraction = cfg.task.get("heldout_fraction")
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise ValueError(f"task.heldout_fraction must be in (0, 1), got {fraction!r}.")


def nlb_protocol(module, dm: NeuralDataModule, cfg: DictConfig, run_dir) -> dict[str, float]:
    """With ``task.protocol=nlb``: score ``module`` under the NLB protocol on the test split,
    write ``run_dir/nlb/predictions.h5`` and ``targets.h5``, return the ``test/nlb/...``
    metrics (``{}`` for the masked protocol)."""
    if cfg.task.get("protocol", "masked") != "nlb":
        return {}
    from neurobridge.nlb import nlb_evaluate, write_nlb_files

    result = nlb_evaluate(
        module.eval(), dm, forward_bins=int(cfg.task.forward_bins),
        heldout_fraction=float(cfg.task.heldout_fraction), seed=int(cfg.seed),
        baseline=module.baseline, ceiling=module.ceiling,
        batch_size=int(cfg.data.eval_batch_size),
    )
    write_nlb_files(result, Path(run_dir) / "nlb")
    return result.metrics


def check_reads_data(model: MaskedModel, dm: NeuralDataModule, source: str) -> None:
    """``model`` (loaded from ``source``) reads ``dm``'s modality and window length."""
    enc = model.encoder
    if model.modality != dm.modality:
        raise ValueError(
            f"{source} holds a {type(enc).__name__} encoder (data.modality="
            f"{model.modality}), but data.modality is {dm.modality.value!r}."
        )
    if abs(enc.sequence_length - dm.sequence_length) > 1e-9:
        raise ValueError(
            f"{source} was trained on {enc.sequence_length:g} s windows but "
            f"data.sequence_length is {dm.sequence_length:g}: set "
            f"model.encoder.sequence_length={enc.sequence_length:g}."
        )


def check_vocab(model: MaskedModel, dm: NeuralDataModule, path: str) -> None:
    """Every unit and session of ``dm`` is in the vocabularies of ``model`` (from ``path``)."""
    known_units = set(model.encoder.unit_emb.vocab)
    missing = [u for u in dm.unit_ids if u not in known_units]
    known_sessions = set(model.encoder.session_emb.vocab)
    missing += [s for s in dm.session_ids if s not in known_sessions]
    if missing:
        raise ValueError(
            f"{len(missing)} units/sessions of the data are not in the vocabulary of {path} "
            f"(e.g. {missing[:3]}). Select the recordings the checkpoint was pretrained on "
            "(data.recording_ids=[...]), or first adapt the pretrained model to the new "
            "recordings with task=adapt_session init_from=<pretraining checkpoint> and use "
            "its checkpoint."
        )
