"""Ridge readout: the linear peer of the learned alignment readout.

Per recording, the evoked spike counts of each presentation (``bins`` of ``bin_size`` seconds
from onset, every unit: ``[units * bins]`` features, z-scored with the training presentations'
mean and std) are mapped to the presented image's CLIP embedding (the same, centred, targets
as the alignment task) by ridge regression fitted on the training presentations. The penalty is
chosen per recording among ``alphas`` by the validation presentations' mean cosine with their
target; the test presentations are then scored with the alignment task's own retrieval and
2-way metrics (``test/ridge/retrieval_top1``, ``test/ridge/retrieval_top5``,
``test/ridge/two_way``). The linear probe (:func:`latent_probe_scores`) fits the same ridge
on the encoder's latents instead of the counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device

from neurobridge.alignment.retrieval import RetrievalMetrics, TwoWayIdentification
from neurobridge.data.binning import bin_spikes

__all__ = [
    "RIDGE_ALPHAS", "evoked_counts", "fit_ridge", "latent_probe_scores", "ridge_readout_scores",
]

#: The ridge penalties tried (one chosen per recording on the validation presentations).
RIDGE_ALPHAS = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


def evoked_counts(cut: Callable, onsets: Sequence[float], *, n_units: int, bin_size: float,
                  n_bins: int) -> np.ndarray:
    """``[P, n_units * n_bins]`` spike counts of ``n_bins`` bins of ``bin_size`` s after each
    onset; ``cut(start, end)`` returns a window of the recording (a
    :class:`~neurobridge.data.windows.RecordingReader`'s ``window``, or temporaldata's
    ``Data.slice``)."""
    out = np.zeros((len(onsets), n_units * n_bins), dtype=np.float64)
    for i, t in enumerate(onsets):
        window = cut(float(t), float(t) + n_bins * bin_size)
        counts = bin_spikes(window.spikes.timestamps, window.spikes.unit_index, num_units=n_units,
                            start=0.0, end=n_bins * bin_size, bin_size=bin_size)
        out[i] = counts.T.reshape(-1)
    return out


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``(W [F, D], b [D])`` minimising ``||x W + b - y||^2 + alpha ||W||^2`` (x centred inside)."""
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    n, f = xc.shape
    if f <= n:
        w = np.linalg.solve(xc.T @ xc + alpha * np.eye(f), xc.T @ yc)
    else:  # the dual form is cheaper with more features than presentations
        w = xc.T @ np.linalg.solve(xc @ xc.T + alpha * np.eye(n), yc)
    return w, y_mean - x_mean @ w


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(axis=1).mean())


def _fit_and_score(module, parts: dict, alphas: Sequence[float], prefix: str) -> dict[str, float]:
    """Per group (a recording), fit the ridge on ``parts[group]["train"] = (x, rows)``, pick the
    penalty on ``"valid"``, and score ``"test"`` with the alignment task's metrics."""
    targets = module.image_embeddings.double().cpu().numpy()
    first, n_test = module.split_rows["test"]
    retrieval = RetrievalMetrics(
        candidates=module.image_embeddings[first : first + n_test].float().cpu())
    two_way = TwoWayIdentification()
    chosen = {}
    for group, split in parts.items():
        (x_tr, r_tr), (x_va, r_va), (x_te, r_te) = split["train"], split["valid"], split["test"]
        if not len(r_tr) or not len(r_te):
            continue
        mu, sd = x_tr.mean(axis=0), x_tr.std(axis=0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        z = [(x - mu) / sd for x in (x_tr, x_va, x_te)]
        scores = {}
        for alpha in alphas:
            w, b = fit_ridge(z[0], targets[r_tr], alpha)
            scores[alpha] = _cosine(z[1] @ w + b, targets[r_va]) if len(r_va) else 0.0
        alpha = max(scores, key=scores.get)
        chosen[group] = alpha
        w, b = fit_ridge(z[0], targets[r_tr], alpha)
        pred = torch.as_tensor(z[2] @ w + b, dtype=torch.float32)
        retrieval.update(pred, torch.as_tensor(r_te - first))
        two_way.update(pred, torch.as_tensor(targets[r_te], dtype=torch.float32))
    results = retrieval.compute()
    out = {f"{prefix}/retrieval_{k}": float(v) for k, v in results.items()
           if k in ("top1", "top5", "image_to_neural_top1", "image_to_neural_top5")}
    out[f"{prefix}/two_way"] = float(two_way.compute())
    out.update({f"{prefix}/{group}/alpha": float(a) for group, a in chosen.items()})
    return out


def ridge_readout_scores(
    module, dm, *, bin_size: float = 0.1, n_bins: int = 4,
    alphas: Sequence[float] = RIDGE_ALPHAS,
) -> dict[str, float]:
    """Fit and score the ridge readout on ``dm``'s stimulus windows; ``module`` is the
    alignment task's LightningModule (its image embeddings, split rows and metrics)."""
    parts = {}
    for rid in dm.dataset.recording_ids:
        reader = dm.dataset.reader(rid)
        parts[rid] = {}
        for split in ("train", "valid", "test"):
            windows = [w for w in dm.stimulus.windows[split] if w.recording_id == rid]
            rows = np.array([dm.image_rows[w.image_id] for w in windows], dtype=np.int64)
            x = evoked_counts(reader.window, [w.onset for w in windows], n_units=len(reader.units.id),
                              bin_size=bin_size, n_bins=n_bins)
            parts[rid][split] = (x, rows)
    return _fit_and_score(module, parts, alphas, "test/ridge")


def latent_probe_scores(
    module, dm, *, alphas: Sequence[float] = RIDGE_ALPHAS,
) -> dict[str, float]:
    """The linear probe of the encoder: the same ridge, per recording, from the flattened
    latents ``[L * dim]`` of each whole stimulus window (the encoder as the module holds it)
    instead of the evoked counts (``test/latent_probe/...``). It measures what a linear map
    of those latents reads; the gap to ``test/ridge`` is what the encoder loses of the evoked
    response. Every window of each split is read, whatever the DDP rank."""
    encoder = module.model.encoder
    vocab = encoder.session_emb.vocab
    session_of = {vocab[sid]: rid
                  for rid, sid in zip(dm.dataset.recording_ids, dm.dataset.session_ids())}
    loaders = {s: dm.whole_split_dataloader(s) for s in ("train", "valid", "test")}
    collected: dict = {rid: {s: ([], []) for s in loaders} for rid in dm.dataset.recording_ids}
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        for split, loader in loaders.items():
            for batch in loader:
                batch = move_data_to_device(batch, module.device)
                latents = encoder.encode(**batch["encoder_inputs"]).flatten(1).double().cpu()
                for x, row, sess in zip(latents.numpy(), batch["image_index"].tolist(),
                                        batch["session_index"].tolist()):
                    xs, rows = collected[session_of[sess]][split]
                    xs.append(x)
                    rows.append(row)
    encoder.train(was_training)
    parts = {rid: {s: (np.stack(xs) if xs else np.zeros((0, 1)), np.array(rows, dtype=np.int64))
                   for s, (xs, rows) in splits.items()} for rid, splits in collected.items()}
    return _fit_and_score(module, parts, alphas, "test/latent_probe")
