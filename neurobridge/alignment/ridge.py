"""Ridge readout: the linear peer of the learned alignment readout.

Per recording, the evoked spike counts of each presentation (``bins`` of ``bin_size`` seconds
from onset, every unit: ``[units * bins]`` features, z-scored with the training presentations'
mean and std) are mapped to the presented image's CLIP embedding (the same, centred, targets
as the alignment task) by ridge regression fitted on the training presentations. The penalty is
chosen per recording among ``alphas`` by the validation presentations' mean cosine with their
target; the test presentations are then scored with the alignment task's own retrieval and
2-way metrics (``test/ridge/retrieval_top1``, ``test/ridge/retrieval_top5``,
``test/ridge/two_way``). With ``kernel`` the same counts also feed a nonlinear peer, kernel
ridge regression with a Gaussian kernel (``test/kernel_ridge/...``; penalty and kernel width
chosen together on validation). The linear probe (:func:`latent_probe_scores`) fits the linear
ridge on the encoder's latents instead of the counts. Each peer is compared with the alignment
head on the same test presentations: ``test/<peer>/delta_top1`` (the head's top-1 minus the
peer's; also ``top5``) with its 95 % bootstrap interval over test images
(``..._ci_low``, ``..._ci_high``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device

from neurobridge.alignment.retrieval import (
    RetrievalMetrics,
    TwoWayIdentification,
    paired_accuracy_difference,
)
from neurobridge.data.binning import bin_spikes

__all__ = [
    "RIDGE_ALPHAS", "check_ridge_options", "evoked_counts", "fit_kernel_ridge", "fit_ridge",
    "latent_probe_scores", "ridge_readout_scores",
]

Predictor = Callable[[np.ndarray], np.ndarray]

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


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` squared Euclidean distances."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def fit_kernel_ridge(x: np.ndarray, y: np.ndarray, alpha: float, gamma: float) -> Predictor:
    """Kernel ridge regression of ``y [N, D]`` on ``x [N, F]`` with the Gaussian kernel
    ``exp(-gamma * ||a - b||^2 / F)`` (``gamma`` is relative to the feature count, so 1 is the
    kernel width of z-scored features); returns ``predict(x_new [M, F]) -> [M, D]``."""
    scale = gamma / x.shape[1]
    y_mean = y.mean(axis=0)
    kernel = np.exp(-scale * _sq_distances(x, x))
    coef = np.linalg.solve(kernel + alpha * np.eye(len(x)), y - y_mean)
    return lambda x_new: np.exp(-scale * _sq_distances(x_new, x)) @ coef + y_mean


def _linear_fit(alpha: float) -> Callable[[np.ndarray, np.ndarray], Predictor]:
    def fit(x: np.ndarray, y: np.ndarray) -> Predictor:
        w, b = fit_ridge(x, y, alpha)
        return lambda x_new: x_new @ w + b
    return fit


def _linear_candidates(alphas: Sequence[float]) -> list:
    return [({"alpha": float(a)}, _linear_fit(a)) for a in alphas]


def _kernel_candidates(alphas: Sequence[float], gammas: Sequence[float]) -> list:
    return [({"alpha": float(a), "gamma": float(g)}, partial(fit_kernel_ridge, alpha=a, gamma=g))
            for a in alphas for g in gammas]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(axis=1).mean())


def _fit_and_score(module, parts: dict, candidates: list, prefix: str) -> dict[str, float]:
    """Per group (a recording), fit each of ``candidates`` (``(params, fit)``, ``fit(x, y) ->
    predict``) on ``parts[group]["train"] = (x, rows)``, pick the one whose predictions of
    ``"valid"`` have the highest mean cosine with their targets, and score ``"test"`` with the
    alignment task's metrics; the chosen ``params`` are reported per group."""
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
        best, best_score = None, -np.inf
        for params, fit in candidates:
            predict = fit(z[0], targets[r_tr])
            score = _cosine(predict(z[1]), targets[r_va]) if len(r_va) else 0.0
            if score > best_score:
                best, best_score = (params, predict), score
        chosen[group], predict = best
        pred = torch.as_tensor(predict(z[2]), dtype=torch.float32)
        retrieval.update(pred, torch.as_tensor(r_te - first))
        two_way.update(pred, torch.as_tensor(targets[r_te], dtype=torch.float32))
    results = retrieval.compute()
    out = {f"{prefix}/retrieval_{k}": float(v) for k, v in results.items()
           if k in ("top1", "top5", "image_to_neural_top1", "image_to_neural_top5")}
    out[f"{prefix}/two_way"] = float(two_way.compute())
    out.update(_head_minus_peer(getattr(module, "test_hits", None), retrieval.hits_by_image(),
                                prefix))
    out.update({f"{prefix}/{group}/{k}": v for group, params in chosen.items()
                for k, v in params.items()})
    return out


def _head_minus_peer(head: Mapping | None, peer: Mapping, prefix: str) -> dict[str, float]:
    """``{prefix}/delta_top{k}`` (the head's accuracy minus the peer's) with its 95 % bootstrap
    interval over test images (``_ci_low``, ``_ci_high``), when both scored the same
    presentations (none otherwise, e.g. a peer that skipped a recording)."""
    if head is None or not torch.equal(head["presentations"], peer["presentations"]):
        return {}
    out = {}
    for k in ("top1", "top5"):
        diff, low, high = paired_accuracy_difference(head[k], peer[k], peer["presentations"])
        out.update({f"{prefix}/delta_{k}": diff, f"{prefix}/delta_{k}_ci_low": low,
                    f"{prefix}/delta_{k}_ci_high": high})
    return out


def check_ridge_options(alphas: Sequence[float],
                        kernel: Mapping[str, Sequence[float]] | None = None) -> None:
    """Refuse empty or non-positive grids of :func:`ridge_readout_scores` (``task.ridge``)."""
    grids = {"task.ridge.alphas": alphas}
    if kernel:
        grids.update({f"task.ridge.kernel.{k}": kernel.get(k) for k in ("alphas", "gammas")})
    for name, grid in grids.items():
        if not grid or any(float(v) <= 0 for v in grid):
            raise ValueError(f"{name}={grid!r}: list the positive values to try on validation, "
                             "or set task.ridge=null (task.ridge.kernel=null) to skip the peer.")


def ridge_readout_scores(
    module, dm, *, bin_size: float = 0.1, n_bins: int = 4,
    alphas: Sequence[float] = RIDGE_ALPHAS, kernel: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, float]:
    """Fit and score the ridge readout on ``dm``'s stimulus windows (``test/ridge/...``) and,
    with ``kernel = {"alphas": [...], "gammas": [...]}``, the Gaussian-kernel ridge on the same
    counts (``test/kernel_ridge/...``, every pair tried); ``module`` is the alignment task's
    LightningModule (its image embeddings, split rows and metrics)."""
    check_ridge_options(alphas, kernel)
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
    out = _fit_and_score(module, parts, _linear_candidates(alphas), "test/ridge")
    if kernel:
        candidates = _kernel_candidates(kernel["alphas"], kernel["gammas"])
        out.update(_fit_and_score(module, parts, candidates, "test/kernel_ridge"))
    return out


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
    return _fit_and_score(module, parts, _linear_candidates(alphas), "test/latent_probe")
