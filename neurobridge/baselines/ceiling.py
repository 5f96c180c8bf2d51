"""An achievable ceiling on data with a known latent ground truth (the built-in synthetic data).

The true-rate oracle scores the rates that generated the spikes; no model can reach it, because
the masked cells' rates are not determined by the observed spikes. The best any model can do
from the observed cells of a window is the posterior-mean rate under the true generative model,
and that is what :class:`LatentPosteriorCeiling` predicts:

* **generative model** (estimated from the ground truth of the recording's training split, not
  from its spikes): per-bin latents ``z_t`` (the bin means of ``true_rates.latents``) and a
  log-linear read-out ``log E[count] = a + C z_t`` fitted by least squares on the true expected
  counts per bin (exact in the generator up to the averaging of two 10 ms samples per bin and
  the rate cap); a Gaussian prior over a window's latent trajectory: a vector autoregression
  of the latents (``order`` bins of history, fitted on the training split's latents) started
  from the stationary law of its first bins (the generator's latents are a linear filter of
  Gaussian noise, so the prior is Gaussian; 4 lags score as the exact window covariance does);
* **inference** per window: the Laplace approximation of ``p(z | observed counts)`` (Newton's
  method on the concave log posterior; the prior precision is block-tridiagonal, so each step
  is a block Cholesky, batched over windows), then the posterior mean of each cell's expected
  count, ``exp(a + C m + diag(C S C^T) / 2)``; optionally corrected by importance sampling
  with the Laplace Gaussian as the proposal (``samples``), which converges to the exact
  posterior mean.

It reads only the observed cells of the test window, as the model's encoder does. Being an
actual predictor from the observed spikes, its score is achievable (a lower estimate of the
Bayes-optimal score: the Laplace approximation is not exact); the oracle is the upper one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import h5py
import numpy as np
import torch
from torch import Tensor

from neurobridge.data.binning import FileBlocks

__all__ = ["LatentModel", "LatentPosteriorCeiling", "SplitTruth", "fit_latent_model",
           "posterior_mean_log_rates"]

#: A read-out fit of the log expected counts below this R² means the rates are not a
#: log-linear function of the stored latents (e.g. a stimulus drive): no ceiling.
MIN_READOUT_R2 = 0.98
_NEWTON_TOL = 1e-6
_MAX_LOG_RATE = 30.0  # exp() guard during the line search
_WINDOWS_PER_CHUNK = 8  # windows whose draws are weighed at once (memory: 8 x S x T x N)


@dataclass(frozen=True)
class SplitTruth(FileBlocks):
    """The ground truth of some blocks (e.g. the training split) of one recording file, read
    when called: ``truth() -> (latents, expected_counts)``, lists with one ``[n_bins, L]`` and
    one ``[n_bins, N]`` array per block, binned to ``bin_size`` (the bin means of
    ``true_rates.latents``; the expected count per bin from ``true_rates.rates``)."""

    def __call__(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        with h5py.File(self.path, "r") as f:
            group = f["true_rates"]
            rate = float(group.attrs["sampling_rate"])
            origin = float(group["domain/start"][0])
            per_bin = self.bin_size * rate
            k = round(per_bin)
            if k < 1 or abs(per_bin - k) > 1e-6:
                raise ValueError(
                    f"{self.path}: the ceiling needs data.bin_size ({self.bin_size} s) to be a "
                    f"whole number of true_rates samples (1 / {rate:g} s)."
                )
            latents, counts = [], []
            for start, end in zip(self.starts, self.ends):
                i0 = math.ceil((start - origin) * rate - 1e-6)
                n = (math.floor((end - origin) * rate + 1e-6) - i0) // k
                if n < 1:
                    continue
                z = np.asarray(group["latents"][i0 : i0 + n * k], np.float64)
                r = np.asarray(group["rates"][i0 : i0 + n * k], np.float64)
                latents.append(z.reshape(n, k, -1).mean(axis=1))
                counts.append(r.reshape(n, k, -1).mean(axis=1) * self.bin_size)
        return latents, counts


@dataclass
class LatentModel:
    """The generative model of one recording, on windows of ``window_bins`` bins."""

    offset: np.ndarray  #: ``[N]`` ``a``
    loading: np.ndarray  #: ``[N, L]`` ``C``
    prior_mean: np.ndarray  #: ``[L]`` stationary mean of the latents
    prior_precision: np.ndarray  #: ``[W * L, W * L]`` of a time-major ``[W, L]`` trajectory
    bandwidth: int  #: ``prior_precision[i, j] == 0`` for ``|i - j| > bandwidth``
    readout_r2: float  #: R² of the read-out fit on the log expected counts

    @property
    def window_bins(self) -> int:
        return self.prior_precision.shape[0] // self.loading.shape[1]


def _var_prior_precision(
    latents: list[np.ndarray], mean: np.ndarray, order: int, window_bins: int
) -> np.ndarray:
    """Precision of ``[W, L]`` windows of the order-``order`` vector autoregression fitted to
    the (centred) latent blocks: the stationary law of the first ``order`` bins, then the
    fitted transitions and innovation covariance."""
    n_latents = len(mean)
    p = min(order, window_bins - 1)
    past, now, first = [], [], []
    for block in latents:
        z = block - mean
        if len(z) <= p:
            continue
        # [T - p, p * L]: z_{t-1}, ..., z_{t-p}
        past.append(np.concatenate([z[p - k - 1 : len(z) - k - 1] for k in range(p)], axis=1))
        now.append(z[p:])
        first.append(np.lib.stride_tricks.sliding_window_view(z, p, axis=0)
                     .transpose(0, 2, 1).reshape(-1, p * n_latents))
    if not now:
        raise ValueError(f"No block of the ground truth is longer than {p} bins: the latent "
                         "prior cannot be estimated.")
    past, now = np.concatenate(past), np.concatenate(now)
    coef, *_ = np.linalg.lstsq(past, now, rcond=None)  # [p * L, L]
    innovation = now - past @ coef
    noise_precision = np.linalg.inv(np.cov(innovation, rowvar=False))
    first = np.concatenate(first)
    initial = first.T @ first / len(first)  # stationary covariance of p consecutive bins

    size = window_bins * n_latents
    precision = np.zeros((size, size))
    precision[: p * n_latents, : p * n_latents] = np.linalg.inv(initial)
    # z_t - sum_k A_k z_{t-k} ~ N(0, E), A_k = lag_blocks[k - 1].T: D = [-A_p .. -A_1, I] on
    # bins t-p .. t
    lag_blocks = coef.reshape(p, n_latents, n_latents)
    d = np.concatenate([-lag_blocks[k].T for k in range(p - 1, -1, -1)] + [np.eye(n_latents)],
                       axis=1)  # [L, (p + 1) L]
    term = d.T @ noise_precision @ d
    for t in range(p, window_bins):
        sl = slice((t - p) * n_latents, (t + 1) * n_latents)
        precision[sl, sl] += term
    return precision


def fit_latent_model(
    latents: list[np.ndarray], expected_counts: list[np.ndarray], window_bins: int,
    order: int = 4,
) -> LatentModel:
    """Fit the read-out and the window prior from ground-truth blocks (see the module docstring).

    Args:
        latents: one ``[T_b, L]`` array per block of contiguous bins.
        expected_counts: one ``[T_b, N]`` array per block, expected spike count per bin (> 0).
        window_bins: bins per window.
        order: lags of the vector autoregression of the latent prior (bins).
    """
    z = np.concatenate(latents)
    log_counts = np.log(np.maximum(np.concatenate(expected_counts), 1e-12))
    design = np.column_stack([np.ones(len(z)), z])
    coef, *_ = np.linalg.lstsq(design, log_counts, rcond=None)
    residual = log_counts - design @ coef
    total = ((log_counts - log_counts.mean(axis=0)) ** 2).sum()
    r2 = 1.0 - float((residual**2).sum() / total) if total > 0 else 1.0
    mean = z.mean(axis=0)
    precision = _var_prior_precision(latents, mean, order, window_bins)
    p = min(order, window_bins - 1)
    return LatentModel(offset=coef[0], loading=coef[1:].T.copy(), prior_mean=mean,
                       prior_precision=precision, bandwidth=(p + 1) * z.shape[1] - 1,
                       readout_r2=r2)


def _blocks(matrix: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal ``[K, size, size]`` and sub-diagonal ``[K - 1, size, size]`` blocks of a
    block-tridiagonal matrix."""
    k = matrix.shape[0] // size
    grid = matrix.reshape(k, size, k, size).permute(0, 2, 1, 3)
    idx = torch.arange(k)
    return grid[idx, idx], grid[idx[1:], idx[:-1]]


def _block_cholesky(diag: Tensor, sub: Tensor) -> tuple[Tensor, Tensor]:
    """Cholesky ``H = L L^T`` of batched block-tridiagonal ``H`` (``diag [B, K, m, m]``,
    ``sub [B, K - 1, m, m]`` = ``H[k + 1, k]``): ``L``'s diagonal blocks ``D [B, K, m, m]``
    (lower triangular) and sub-diagonal blocks ``E [B, K - 1, m, m]``."""
    d, e = [torch.linalg.cholesky(diag[:, 0])], []
    for k in range(1, diag.shape[1]):
        # E = H[k, k-1] D^-T
        e.append(torch.linalg.solve_triangular(d[-1], sub[:, k - 1].mT, upper=False).mT)
        d.append(torch.linalg.cholesky(diag[:, k] - e[-1] @ e[-1].mT))
    return torch.stack(d, 1), torch.stack(e, 1) if e else sub


def _block_forward(d: Tensor, e: Tensor, g: Tensor) -> Tensor:
    """``L^-1 g`` for ``g [B, K, m, S]`` given :func:`_block_cholesky`'s factor of ``H = L L^T``."""
    tri = torch.linalg.solve_triangular
    y = [tri(d[:, 0], g[:, 0], upper=False)]
    for k in range(1, d.shape[1]):
        y.append(tri(d[:, k], g[:, k] - e[:, k - 1] @ y[-1], upper=False))
    return torch.stack(y, 1)


def _block_backward(d: Tensor, e: Tensor, y: Tensor) -> Tensor:
    """``L^-T y`` for ``y [B, K, m, S]`` given :func:`_block_cholesky`'s factor."""
    tri = torch.linalg.solve_triangular
    x = [tri(d[:, -1].mT, y[:, -1], upper=True)]
    for k in range(d.shape[1] - 2, -1, -1):
        x.append(tri(d[:, k].mT, y[:, k] - e[:, k].mT @ x[-1], upper=True))
    return torch.stack(x[::-1], 1)


def _block_solve(d: Tensor, e: Tensor, g: Tensor) -> Tensor:
    """``H^-1 g`` for ``g [B, K, m]`` given :func:`_block_cholesky`'s factor."""
    return _block_backward(d, e, _block_forward(d, e, g[..., None]))[..., 0]


def _block_inverse_diagonal(d: Tensor, e: Tensor) -> Tensor:
    """Diagonal blocks ``[B, K, m, m]`` of ``H^-1`` from :func:`_block_cholesky`'s factor
    (the backward recursion ``S_kk = M^T M + (E_k M)^T S_k+1,k+1 (E_k M)``, ``M = D_k^-1``)."""
    eye = torch.eye(d.shape[-1], dtype=d.dtype).expand_as(d[:, 0])
    inv = torch.linalg.solve_triangular(d, eye.unsqueeze(1).expand_as(d), upper=False)  # D^-1
    out = [inv[:, -1].mT @ inv[:, -1]]
    for k in range(d.shape[1] - 2, -1, -1):
        em = e[:, k] @ inv[:, k]
        out.append(inv[:, k].mT @ inv[:, k] + em.mT @ out[-1] @ em)
    return torch.stack(out[::-1], 1)


def posterior_mean_log_rates(
    model: LatentModel, counts: np.ndarray, observed: np.ndarray, *, samples: int = 0,
    seed: int = 0, max_iter: int = 50,
) -> np.ndarray:
    """``[B, T, N]`` log posterior-mean expected count of every cell given the ``observed``
    cells, for a batch of windows of one recording.

    Args:
        model: the recording's :class:`LatentModel` (``T == model.window_bins``).
        counts: ``[B, T, N]`` spike counts (only observed cells are read).
        observed: ``[B, T, N]`` bool.
        samples: draws per window of the importance-sampling correction of the Laplace
            approximation (its Gaussian as the proposal; self-normalised weights); 0 returns
            the Laplace approximation's own mean, ``exp(a + C m + diag(C S C^T) / 2)``.
        seed: seeds the draws.
        max_iter: Newton iterations at most.
    """
    n_windows, n_bins, n_units = counts.shape
    if n_bins != model.window_bins or n_units != len(model.offset):
        raise ValueError(f"The windows are [{n_bins}, {n_units}] but the latent model expects "
                         f"[{model.window_bins}, {len(model.offset)}].")
    f64 = torch.float64
    obs = torch.as_tensor(np.asarray(observed, bool))
    y = torch.where(obs, torch.as_tensor(np.asarray(counts), dtype=f64), 0.0)
    c = torch.as_tensor(model.loading, dtype=f64)  # [N, L]
    n_latents = c.shape[1]
    base = torch.as_tensor(model.offset + model.prior_mean @ model.loading.T, dtype=f64)
    # bins per block of the block-tridiagonal precision (>= the prior's reach in bins), the
    # trajectory padded with independent unit-variance bins to a whole number of blocks
    per_block = max(1, (model.bandwidth + 1) // n_latents - 1)
    n_blocks = -(-n_bins // per_block)
    size = per_block * n_latents
    q = torch.eye(n_blocks * size, dtype=f64)
    q[: n_bins * n_latents, : n_bins * n_latents] = torch.as_tensor(model.prior_precision)
    q_diag, q_sub = _blocks(q, size)
    n_pad = n_blocks * per_block

    def log_rate(x: Tensor) -> Tensor:  # x [B, n_pad * L] -> [B, T, N]
        return base + x.reshape(n_windows, n_pad, n_latents)[:, :n_bins] @ c.T

    def objective(x: Tensor) -> Tensor:  # [B]
        eta = log_rate(x).clamp(max=_MAX_LOG_RATE)
        fit = torch.where(obs, y * eta - eta.exp(), 0.0).sum((1, 2))
        return fit - 0.5 * torch.einsum("bi,ij,bj->b", x, q, x)

    def factor(eta: Tensor) -> tuple[Tensor, Tensor]:
        weight = torch.where(obs, eta.exp(), 0.0)  # [B, T, N]
        fisher = torch.zeros(n_windows, n_pad, n_latents, n_latents, dtype=f64)
        fisher[:, :n_bins] = torch.einsum("btn,nl,nm->btlm", weight, c, c)
        fisher = fisher.reshape(n_windows, n_blocks, per_block, n_latents, n_latents)
        diag = q_diag.expand(n_windows, -1, -1, -1).clone()
        for j in range(per_block):
            sl = slice(j * n_latents, (j + 1) * n_latents)
            diag[:, :, sl, sl] += fisher[:, :, j]
        return _block_cholesky(diag, q_sub.expand(n_windows, -1, -1, -1))

    x = torch.zeros(n_windows, n_blocks * size, dtype=f64)
    value = objective(x)
    for _ in range(max_iter):
        eta = log_rate(x)
        residual = torch.where(obs, y - eta.exp(), 0.0)  # [B, T, N]
        grad = torch.zeros(n_windows, n_pad, n_latents, dtype=f64)
        grad[:, :n_bins] = residual @ c
        grad = grad.reshape(n_windows, -1) - x @ q
        step = _block_solve(*factor(eta), grad.reshape(n_windows, n_blocks, size))
        step = step.reshape(n_windows, -1)
        decrement = (grad * step).sum(1)
        active = decrement > _NEWTON_TOL
        if not active.any():
            break
        t = torch.where(active, 1.0, 0.0).to(f64)
        for _ in range(30):  # backtracking, per window
            new_value = objective(x + t[:, None] * step)
            short = active & (new_value < value + 0.25 * t * decrement)
            if not short.any():
                break
            t = torch.where(short, t / 2, t)
        x = x + t[:, None] * step
        value = objective(x)
    d, e = factor(log_rate(x))
    if not samples:
        cov = _block_inverse_diagonal(d, e)  # [B, K, size, size]
        idx = torch.arange(per_block)
        per_bin = cov.reshape(n_windows, n_blocks, per_block, n_latents, per_block, n_latents)
        per_bin = per_bin[:, :, idx, :, idx].permute(1, 2, 0, 3, 4)  # [B, K, m, L, L]
        per_bin = per_bin.reshape(n_windows, n_pad, n_latents, n_latents)[:, :n_bins]
        variance = torch.einsum("nl,btlm,nm->btn", c, per_bin, c)
        return (log_rate(x) + 0.5 * variance).numpy()
    # importance sampling with the Laplace approximation N(x, H^-1) as the proposal
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(n_windows, n_bins, n_units, dtype=f64)
    for w in range(0, n_windows, _WINDOWS_PER_CHUNK):
        sl = slice(w, w + _WINDOWS_PER_CHUNK)
        b = len(range(n_windows)[sl])
        u = torch.randn(b, n_blocks, size, samples, generator=generator, dtype=f64)
        draws = (x[sl, :, None] + _block_backward(d[sl], e[sl], u).reshape(b, -1, samples))
        blocks = draws.reshape(b, n_blocks, size, samples)
        # x^T Q x of every draw, by the blocks of the block-tridiagonal prior precision
        quad = torch.einsum("bkis,kij,bkjs->bs", blocks, q_diag, blocks)
        quad += 2 * torch.einsum("bkis,kij,bkjs->bs", blocks[:, 1:], q_sub, blocks[:, :-1])
        z = draws.permute(0, 2, 1).reshape(b, samples, n_pad, n_latents)[:, :, :n_bins]
        eta = (base + z @ c.T).clamp(max=_MAX_LOG_RATE)  # [b, S, T, N]
        fit = torch.where(obs[sl, None], y[sl, None] * eta - eta.exp(), 0.0).sum((2, 3))
        log_weight = fit - 0.5 * quad + 0.5 * (u**2).sum((1, 2))
        weight = torch.softmax(log_weight, dim=1)
        out[sl] = torch.einsum("bs,bstn->btn", weight, eta.exp())
    return out.log().numpy()


class LatentPosteriorCeiling:
    """Posterior-mean predictions under the true latent model, per recording (see the module
    docstring).

    Args:
        truth: ``{key: SplitTruth}`` (any zero-argument callable returning ``(latents,
            expected_counts)`` blocks) of each recording's training split; a recording is
            fitted when it is first predicted. A NeuroBridge task keys recordings by session id.
        window_bins: bins per scored window.

    Attributes:
        models: ``{key: LatentModel}`` of the recordings fitted so far.
    """

    def __init__(self, *, truth: Mapping[str, Callable[[], tuple]], window_bins: int) -> None:
        if window_bins < 1:
            raise ValueError(f"window_bins must be >= 1, got {window_bins}.")
        self.truth = dict(truth)
        self.window_bins = int(window_bins)
        self.models: dict[str, LatentModel] = {}

    def model(self, recording_id: str) -> LatentModel:
        """The recording's fitted :class:`LatentModel`; raises if its rates are not log-linear
        in its latents (read-out R² below :data:`MIN_READOUT_R2`)."""
        if recording_id not in self.models:
            if recording_id not in self.truth:
                raise KeyError(f"No ground truth for recording {recording_id!r}.")
            model = fit_latent_model(*self.truth[recording_id](), self.window_bins)
            if model.readout_r2 < MIN_READOUT_R2:
                raise ValueError(
                    f"Recording {recording_id!r}: its true rates are not a log-linear function "
                    f"of true_rates.latents (read-out R² {model.readout_r2:.3f} < "
                    f"{MIN_READOUT_R2}; e.g. a stimulus drive): no latent ceiling."
                )
            self.models[recording_id] = model
        return self.models[recording_id]

    def predict_log_rates(
        self, recording_id: str, counts: np.ndarray, loss_mask: np.ndarray
    ) -> np.ndarray:
        """``[B, T, N]`` float32 log expected counts of windows of one recording, each given
        its cells outside ``loss_mask`` (``counts`` and ``loss_mask`` ``[B, T, N]``)."""
        observed = ~np.asarray(loss_mask, bool)
        return posterior_mean_log_rates(self.model(recording_id), np.asarray(counts),
                                        observed).astype(np.float32)
