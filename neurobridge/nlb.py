"""The Neural Latents Benchmark protocol: held-out units, forward prediction, nlb_tools files.

Per recording, a fixed set of **held-out units** (the file's ``units.heldout`` where it stores
one, as NLB's files do; else a seeded ``heldout_fraction`` of the units) and the **evaluation
trials**: the test split tiled by windows of the model's ``sequence_length`` (one window per
trial when trials are that long; for a continuous recording, the test windows). In each
window of ``T`` bins the encoder sees the held-in units over the first ``T - F`` bins and
nothing else; ``F = forward_bins`` bins at the end are hidden for every unit. Then

- ``co_bps``: bits/spike of the held-out units over the first ``T - F`` bins,
- ``fp_bps``: bits/spike of all units over the last ``F`` bins,

both as NLB defines them (:func:`bits_per_spike`: Poisson log-likelihood against a null that
predicts each unit's mean count over the evaluated trials and bins, divided by the spike count
and ln 2). The smoothing baseline is scored on the same held-out cells (``baseline/co_bps``), and with a
latent ceiling (``task.ceiling=true``) that ceiling given the same held-in cells
(``ceiling/co_bps``, ``ceiling/fp_bps``).

:func:`write_nlb_files` writes ``predictions.h5`` (``eval_rates_heldin``,
``eval_rates_heldout``, ``eval_rates_heldin_forward``, ``eval_rates_heldout_forward``) and
``targets.h5`` (the matching ``eval_spikes_*``), ``[trials, time, units]`` float32 expected counts
per bin, one group per recording (named by its session id) as in nlb_tools' own files, so
``nlb_tools.evaluation.bits_per_spike`` scores them directly.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from neurobridge.baselines import LatentPosteriorCeiling, SmoothingGLMBaseline
from neurobridge.data import NeuralDataModule
from neurobridge.data.collate import collate
from neurobridge.io import atomic_path
from neurobridge.metrics import gain_over_mean_rate, log_rate_from_rate

__all__ = [
    "NLB_ARRAYS",
    "NLBResult",
    "bits_per_spike",
    "heldout_units",
    "nlb_evaluate",
    "write_nlb_files",
]

#: ``(predictions name, targets name)`` of the four arrays of each recording.
NLB_ARRAYS = tuple(
    (f"eval_rates_{part}", f"eval_spikes_{part}")
    for part in ("heldin", "heldout", "heldin_forward", "heldout_forward")
)


def bits_per_spike(rates: np.ndarray | list, spikes: np.ndarray | list) -> float:
    """NLB's bits/spike of rate predictions (expected counts per bin) ``[trials, time, units]``;
    lists of such arrays (one per recording) are pooled. NaN if there is no spike."""
    pairs = list(zip(rates, spikes)) if isinstance(rates, list) else [(rates, spikes)]
    gains = [gain_over_mean_rate(log_rate_from_rate(np.asarray(r, np.float64), 1e-9), s)
             for r, s in pairs if np.asarray(s).size]
    n = sum(g[1] for g in gains)
    return sum(g[0] for g in gains) / n / math.log(2) if n > 0 else float("nan")


def heldout_units(units, session_id: str, fraction: float, seed: int) -> np.ndarray:
    """``bool [n_units]``: the file's ``units.heldout`` if it has one, else a seeded
    ``fraction`` (at least one unit held out and one held in)."""
    n = len(units.id)
    if "heldout" in units.keys():
        out = np.asarray(units.heldout).astype(bool)
        source = "units.heldout"
    else:
        if not 0 < fraction < 1:
            raise ValueError(f"task.heldout_fraction must be in (0, 1), got {fraction}.")
        k = min(max(1, round(fraction * n)), n - 1)
        rng = np.random.default_rng([seed, zlib.crc32(session_id.encode())])
        out = np.zeros(n, dtype=bool)
        out[rng.choice(n, size=k, replace=False)] = True
        source = f"task.heldout_fraction={fraction}"
    if out.all() or not out.any():
        raise ValueError(
            f"Recording {session_id!r}: {source} holds out {int(out.sum())} of {n} units; the NLB "
            "protocol needs at least one held-in and one held-out unit."
        )
    return out


def _windows(interval, length: float) -> list[float]:
    starts = []
    for a, b in zip(np.asarray(interval.start), np.asarray(interval.end)):
        k = int(math.floor((b - a) / length + 1e-9))
        starts.extend(a + length * np.arange(k))
    return starts


@dataclass
class NLBResult:
    """Arrays per session id (``{session: {name: [trials, time, units]}}``) and the scores."""

    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    targets: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    baseline: dict[str, np.ndarray] = field(default_factory=dict)  # held-out rates
    ceiling: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # like predictions
    metrics: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def nlb_evaluate(
    model: torch.nn.Module,
    dm: NeuralDataModule,
    *,
    forward_bins: int,
    heldout_fraction: float = 0.25,
    seed: int = 0,
    baseline: SmoothingGLMBaseline | None = None,
    ceiling: LatentPosteriorCeiling | None = None,
    batch_size: int = 64,
    prefix: str = "test/nlb",
) -> NLBResult:
    """Score ``model`` (a :class:`~neurobridge.tasks.pretrain.MaskedPretraining` or anything
    that maps a masked batch to log-rates ``[B, Q]``) under the NLB protocol on ``dm``'s test
    split; ``dm.tokenizer`` must be the model's (``dm.masked_tokenizer``).

    Returns:
        The arrays and ``{prefix}/co_bps``, ``{prefix}/fp_bps`` (pooled over recordings),
        ``{prefix}/baseline/co_bps``, with ``ceiling`` ``{prefix}/ceiling/co_bps`` and
        ``.../fp_bps`` (the latent ceiling given the same held-in cells), and the same per
        session (``{prefix}/<session>/...``).
    """
    tokenizer = dm.tokenizer
    n_bins = tokenizer.n_bins
    if not (isinstance(forward_bins, int) and 0 <= forward_bins < n_bins - 1):
        raise ValueError(
            f"task.forward_bins must be an integer in [0, {n_bins - 2}] (the window has "
            f"{n_bins} bins of data.bin_size), got {forward_bins!r}."
        )
    observed_bins = n_bins - forward_bins
    device = next(model.parameters()).device
    result = NLBResult()
    for rid in dm.dataset.recording_ids:
        data = dm.dataset.get_recording(rid)
        sid = str(data.session.id)
        heldout = heldout_units(data.units, sid, heldout_fraction, seed)
        starts = _windows(dm.intervals["test"][rid], tokenizer.sequence_length)
        if not starts:
            raise ValueError(
                f"Recording {rid!r}: no test interval is as long as a window "
                f"({tokenizer.sequence_length} s); shorten model.encoder.sequence_length to the "
                "trial length."
            )
        mask = np.zeros((n_bins, heldout.size), dtype=bool)
        mask[:, heldout] = True
        mask[observed_bins:, :] = True
        rates, counts, base = [], [], []
        for b0 in range(0, len(starts), batch_size):
            windows = [dm.dataset.window(rid, t, t + tokenizer.sequence_length)
                       for t in starts[b0:b0 + batch_size]]
            samples = [tokenizer.sample(w, mask, mode="neuron", unmasked_queries=mask.size)
                       for w in windows]
            batch = _to_device(collate(samples), device)
            log_rate = model(batch).float()
            for i, window in enumerate(windows):
                grid = np.zeros((n_bins, heldout.size), dtype=np.float32)
                keep = batch["query_mask"][i] | batch["query_visible"][i]
                qb = batch["query_bin"][i][keep].cpu().numpy()
                qu = batch["query_unit"][i][keep].cpu().numpy()
                grid[qb, qu] = torch.exp(log_rate[i][keep]).cpu().numpy()
                rates.append(grid)
                counts.append(tokenizer.grid_targets(window, heldout.size)[0])
                if baseline is not None:
                    log_b = baseline.predict_log_rate(sid, counts[-1][:observed_bins],
                                                      mask[:observed_bins])
                    base.append(np.exp(log_b[:, heldout]).astype(np.float32))
        rates, counts = np.stack(rates), np.stack(counts).astype(np.float32)
        parts = {
            "heldin": (slice(None, observed_bins), ~heldout),
            "heldout": (slice(None, observed_bins), heldout),
            "heldin_forward": (slice(observed_bins, None), ~heldout),
            "heldout_forward": (slice(observed_bins, None), heldout),
        }
        result.predictions[sid] = {f"eval_rates_{k}": rates[:, t][:, :, u] for k, (t, u) in parts.items()}
        result.targets[sid] = {f"eval_spikes_{k}": counts[:, t][:, :, u] for k, (t, u) in parts.items()}
        if baseline is not None:
            result.baseline[sid] = np.stack(base)
        if ceiling is not None:
            full = np.exp(ceiling.predict_log_rates(sid, counts, np.broadcast_to(mask, counts.shape)))
            result.ceiling[sid] = {f"eval_rates_{k}": full[:, t][:, :, u]
                                   for k, (t, u) in parts.items()}
    _score(result, prefix, forward_bins)
    return result


def _score(result: NLBResult, prefix: str, forward_bins: int) -> None:
    sids = list(result.predictions)
    t = result.targets

    def fwd(d: dict, kind: str, s: str) -> np.ndarray:
        return np.concatenate([d[s][f"eval_{kind}_heldin_forward"],
                               d[s][f"eval_{kind}_heldout_forward"]], axis=2)

    m = result.metrics
    # the model, and the ceiling where scored, on the same held-out and forward cells
    for who, p in (("", result.predictions), ("ceiling/", result.ceiling)):
        if not p:
            continue
        m[f"{prefix}/{who}co_bps"] = bits_per_spike([p[s]["eval_rates_heldout"] for s in sids],
                                                    [t[s]["eval_spikes_heldout"] for s in sids])
        if forward_bins:
            m[f"{prefix}/{who}fp_bps"] = bits_per_spike([fwd(p, "rates", s) for s in sids],
                                                        [fwd(t, "spikes", s) for s in sids])
        for s in sids:
            m[f"{prefix}/{s}/{who}co_bps"] = bits_per_spike(p[s]["eval_rates_heldout"],
                                                            t[s]["eval_spikes_heldout"])
            if forward_bins:
                m[f"{prefix}/{s}/{who}fp_bps"] = bits_per_spike(fwd(p, "rates", s),
                                                                fwd(t, "spikes", s))
    if result.baseline:
        m[f"{prefix}/baseline/co_bps"] = bits_per_spike(
            [result.baseline[s] for s in sids], [t[s]["eval_spikes_heldout"] for s in sids])
    for s in sids:
        if result.baseline:
            m[f"{prefix}/{s}/baseline/co_bps"] = bits_per_spike(result.baseline[s],
                                                                t[s]["eval_spikes_heldout"])
        m[f"{prefix}/{s}/trials"] = float(result.predictions[s]["eval_rates_heldout"].shape[0])


def _to_device(batch, device):
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def write_nlb_files(result: NLBResult, folder: str | Path) -> tuple[Path, Path]:
    """Write ``folder/predictions.h5`` and ``folder/targets.h5`` (one group per session)."""
    folder = Path(folder)
    out = []
    for name, arrays in (("predictions.h5", result.predictions), ("targets.h5", result.targets)):
        path = folder / name
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            for sid, group in arrays.items():
                g = f.create_group(sid)
                for key, value in group.items():
                    g.create_dataset(key, data=np.asarray(value, dtype=np.float32))
        out.append(path)
    return out[0], out[1]
