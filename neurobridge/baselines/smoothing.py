"""Classical smoothing baseline scored on the same masked cells as the model, and its tuning.

The baseline follows the co-smoothing recipe of the Neural Latents Benchmark, adapted to the
masking modes of NeuroBridge:

* **held-out units** (every cell of the unit in the window is masked: ``neuron``,
  ``intra_region`` and ``inter_region`` modes) are predicted by a Poisson GLM from the
  Gaussian-smoothed counts of the **held-in units** (units with no masked cell in the window);
* **partially masked units** (``temporal`` mode) are predicted from their own observed cells in
  the window, smoothed with the same Gaussian kernel (:func:`gaussian_smooth_observed`).

The baseline only ever reads counts on observed cells of the test window, so it is scored on
exactly the information the model's encoder receives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import correlate1d

from neurobridge.baselines.poisson_glm import PoissonGLMFit, fit_poisson_glm, torch_threads
from neurobridge.metrics import gain_over_mean_rate

__all__ = [
    "SmoothingChoice",
    "SmoothingGLMBaseline",
    "gaussian_kernel",
    "gaussian_smooth_observed",
    "tune_smoothing",
]

_TRUNCATE_SIGMAS = 4.0


def gaussian_kernel(sigma_bins: float, truncate: float = _TRUNCATE_SIGMAS) -> np.ndarray:
    """Normalised Gaussian kernel with standard deviation ``sigma_bins`` (in bins).

    The kernel spans ``ceil(truncate * sigma_bins)`` bins on each side; ``sigma_bins == 0`` gives
    the identity kernel ``[1.0]``.
    """
    if not (sigma_bins >= 0 and math.isfinite(sigma_bins)):
        raise ValueError(f"sigma_bins must be finite and >= 0, got {sigma_bins}.")
    if sigma_bins == 0:
        return np.ones(1)
    radius = max(1, int(math.ceil(truncate * sigma_bins)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_bins) ** 2)
    return k / k.sum()


def _smooth_num_den(
    counts: np.ndarray, observed: np.ndarray, kernel: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Kernel-weighted sums of observed counts (numerator) and of observed indicators (denominator)."""
    values = np.where(observed, counts.astype(np.float64), 0.0)
    num = correlate1d(values, kernel, axis=0, mode="constant", cval=0.0)
    den = correlate1d(observed.astype(np.float64), kernel, axis=0, mode="constant", cval=0.0)
    return num, den


def _check_grid(counts: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = np.asarray(counts)
    observed = np.asarray(observed, dtype=bool)
    if counts.ndim != 2 or counts.shape != observed.shape:
        raise ValueError(
            f"counts and observed must both be [T, N], got {counts.shape} and {observed.shape}."
        )
    return counts, observed


def gaussian_smooth_observed(
    counts: np.ndarray, observed: np.ndarray, sigma_bins: float
) -> np.ndarray:
    """Gaussian smoothing along time that only uses observed cells.

    ``out[t, n] = sum_s k(t - s) counts[s, n] observed[s, n] / sum_s k(t - s) observed[s, n]``,
    i.e. a kernel-weighted mean of the unit's observed counts around ``t`` (renormalised at the
    window edges and around gaps). Values of ``counts`` on unobserved cells are never read.

    Args:
        counts: ``[T, N]`` counts per bin.
        observed: ``[T, N]`` bool, True where the cell may be used.
        sigma_bins: kernel standard deviation in bins (the kernel is truncated at 4 sigma).

    Returns:
        ``[T, N]`` float64 estimate of the count per bin; NaN where the unit has no observed cell
        within the kernel's reach.
    """
    counts, observed = _check_grid(counts, observed)
    num, den = _smooth_num_den(counts, observed, gaussian_kernel(sigma_bins))
    out = np.full(counts.shape, np.nan)
    # Kernel weights and counts are >= 0, so den is exactly 0 iff no observed cell is in reach.
    np.divide(num, den, out=out, where=den > 0)
    return out


# ----------------------------------------------------------------- tuning (NLB-style)


@dataclass
class SmoothingChoice:
    """The chosen settings and the validation bits/spike of every grid point."""

    sigma_bins: float
    l2: float
    temporal_sigma_bins: float
    glm_scores: dict[tuple[float, float], float] = field(default_factory=dict)
    temporal_scores: dict[float, float] = field(default_factory=dict)


def _masked_bps(log_rate: np.ndarray, counts: np.ndarray, cells: np.ndarray) -> float:
    """Bits/spike on the ``cells`` of ``[T, N]`` grids (:func:`gain_over_mean_rate`)."""
    gain, spikes = gain_over_mean_rate(log_rate, counts, cells)
    return gain / spikes / math.log(2) if spikes > 0 else float("nan")


def tune_smoothing(
    train_counts: np.ndarray,
    valid_counts: np.ndarray,
    *,
    sigma_grid: Sequence[float],
    l2_grid: Sequence[float],
    heldout_fraction: float = 0.4,
    n_splits: int = 2,
    max_train_bins: int | None = 5000,
    temporal_fraction: float = 0.6,
    window_bins: int = 50,
    prior_bins: float = 2.0,
    min_rate: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    num_threads: int | None = 1,
) -> SmoothingChoice:
    """Pick the baseline's settings for one recording (see the module docstring).

    Args:
        train_counts: ``[T_train, N]`` binned training split.
        valid_counts: ``[T_valid, N]`` binned validation split (same bin size).
        sigma_grid: candidate kernel widths (bins), for both choices.
        l2_grid: candidate L2 strengths of the GLM.
        heldout_fraction: share of the units held out in each GLM split.
        n_splits: seeded held-out sets scored per grid point (their mean is compared).
        max_train_bins: the GLMs of the choice are fitted on at most this many training bins
            (the first ones; the baseline's final fits use them all).
        temporal_fraction: share of each validation window's bins hidden (temporal choice).
        window_bins: bins per validation window (temporal choice).
        prior_bins: the baseline's shrinkage towards the training mean.
        min_rate: the baseline's rate floor.
        max_iter: Newton iterations per GLM fit.
        seed: seeds the held-out sets and the hidden bins.
        num_threads: torch threads during the GLM fits.
    """
    train = np.asarray(train_counts, np.float64)[:max_train_bins]
    valid = np.asarray(valid_counts, np.float64)
    if train.ndim != 2 or valid.ndim != 2 or train.shape[1] != valid.shape[1]:
        raise ValueError(f"train and valid counts must be [T, N] with the same N, got "
                         f"{train.shape} and {valid.shape}.")
    if not sigma_grid or not l2_grid:
        raise ValueError("sigma_grid and l2_grid need at least one value each.")
    n = train.shape[1]
    rng = np.random.default_rng(seed)
    k = min(max(1, round(heldout_fraction * n)), n - 1)
    splits = [np.sort(rng.choice(n, size=k, replace=False)) for _ in range(n_splits)]
    min_log = math.log(min_rate)
    mean_rate = np.maximum(train.mean(axis=0), min_rate)

    glm_scores = {}
    for sigma in sigma_grid:
        s_train = gaussian_smooth_observed(train, np.ones(train.shape, bool), sigma)
        s_valid = gaussian_smooth_observed(valid, np.ones(valid.shape, bool), sigma)
        mu, sd = s_train.mean(axis=0), s_train.std(axis=0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        x_train, x_valid = (s_train - mu) / sd, (s_valid - mu) / sd
        for l2 in l2_grid:
            scores = []
            for out in splits:
                held_in = np.setdiff1d(np.arange(n), out)
                with torch_threads(num_threads):
                    fit = fit_poisson_glm(x_train[:, held_in], train[:, out], l2=l2,
                                          max_iter=max_iter, min_rate=min_rate)
                eta = np.minimum(x_valid[:, held_in] @ fit.weight + fit.bias, fit.eta_max)
                y = valid[:, out]
                scores.append(_masked_bps(np.maximum(eta, min_log), y, np.ones(y.shape, bool)))
            glm_scores[(float(sigma), float(l2))] = float(np.nanmean(scores))
    best_sigma, best_l2 = max(glm_scores, key=lambda k: np.nan_to_num(glm_scores[k], nan=-np.inf))

    # temporal choice: windows of the validation split, a share of each window's bins hidden
    n_windows = valid.shape[0] // window_bins
    temporal_scores = {}
    if n_windows:
        grid = valid[: n_windows * window_bins].reshape(n_windows, window_bins, n)
        hidden = np.zeros(grid.shape, bool)
        m = max(1, round(temporal_fraction * window_bins))
        for w in range(n_windows):
            hidden[w, rng.choice(window_bins, size=m, replace=False)] = True
        for sigma in sigma_grid:
            kernel = gaussian_kernel(sigma)
            prior = prior_bins * kernel.max()
            log_rate = np.empty(grid.shape)
            for w in range(n_windows):
                num, den = _smooth_num_den(grid[w], ~hidden[w], kernel)
                log_rate[w] = np.log(np.maximum((num + prior * mean_rate) / (den + prior),
                                                min_rate))
            temporal_scores[float(sigma)] = _masked_bps(
                log_rate.reshape(-1, n), grid.reshape(-1, n), hidden.reshape(-1, n))
    best_temporal = (max(temporal_scores, key=lambda s: np.nan_to_num(temporal_scores[s], nan=-np.inf))
                     if temporal_scores else best_sigma)
    return SmoothingChoice(
        sigma_bins=best_sigma, l2=best_l2, temporal_sigma_bins=best_temporal,
        glm_scores=glm_scores, temporal_scores=temporal_scores,
    )


@dataclass
class _Recording:
    num_units: int
    sigma_bins: float  # kernel of the GLM features
    temporal_sigma_bins: float  # kernel of the own-cells smoothing
    l2: float
    smoothed: np.ndarray  # [T_train, N] float64 smoothed training counts (GLM features)
    counts: np.ndarray  # [T_train, N] float64 training counts (GLM targets)
    feat_mean: np.ndarray  # [N] mean of smoothed training counts
    feat_std: np.ndarray  # [N] std of smoothed training counts (1 where constant)
    mean_rate: np.ndarray  # [N] training mean count per bin, floored at min_rate



class SmoothingGLMBaseline:
    """Smoothing + Poisson-GLM co-smoothing baseline, fitted per recording.

    Usage::

        baseline = SmoothingGLMBaseline(sigma_bins=2.5)
        baseline.fit_recording("rec0", train_counts)      # [T_train, N] binned train split
        log_rate = baseline.predict_log_rate("rec0", counts, loss_mask)   # [T, N] per window

    For a window with loss mask ``M`` (True = masked / scored):

    * units with every cell masked (held-out) get ``log rate = X W + b`` where ``X`` are the
      standardised Gaussian-smoothed counts of the held-in units (no masked cell) in the window,
      standardised with the mean / std of the same smoothing of the training counts. ``W, b`` come
      from a Poisson GLM (log link, intercept, L2 penalty ``l2 / 2 * ||W||^2`` on the per-bin mean
      negative log-likelihood) fitted on the recording's training counts, all held-out units at
      once (one ``[H, K]`` weight matrix) by batched Newton's method in float64. Fits are cached
      per ``(recording, held-in set, held-out set)``; if there is no held-in unit, held-out units
      get their training mean rate. GLM log-rates are floored at ``log(min_rate)`` and capped at
      the largest log-rate the fit gives on its training data (no extrapolation beyond the
      training range: a window more strongly driven than any training bin would otherwise get
      an exponentially large rate);
    * all other units (partially masked, e.g. the ``temporal`` mode) get the Gaussian-weighted
      mean of their own observed cells in the window (:func:`gaussian_smooth_observed`), shrunk
      towards the unit's training mean rate ``m`` by ``prior_bins`` pseudo-bins::

          rate = (sum_s k(t-s) y_s o_s + a m) / (sum_s k(t-s) o_s + a),   a = prior_bins * max(k)

      (the posterior mean of a Gamma prior with ``prior_bins`` bins' worth of evidence at ``m``),
      then floored at ``min_rate``. With ``prior_bins=0`` this is the raw smoothed estimate, with
      ``m`` used only where no observed cell is in reach. The shrinkage matters: with most bins
      masked, a few observed bins often hold no spike, and a raw estimate of ~0 costs
      ``log(min_rate)`` per spike on the scored cells (in simulation at 60 % temporal masking
      the raw rule scores clearly negative co-bps, ``prior_bins`` in 1-4 scores positive).

    Args:
        sigma_bins: Gaussian kernel standard deviation, in bins (truncated at 4 sigma).
        l2: L2 penalty on GLM weights (not on the intercept), relative to the per-bin mean
            negative log-likelihood.
        max_iter: maximum Newton iterations per GLM fit (a warning is raised if not converged).
        min_rate: floor on every predicted rate (expected count per bin: smoothing, GLM and
            training mean rates), so that log-rates stay finite.
        prior_bins: strength of the shrinkage of smoothed estimates towards the training mean rate,
            in bins; 0 disables it.
        num_threads: torch intra-op threads used during a GLM fit (the process-wide setting is
            restored afterwards); ``None`` keeps torch's setting. The fit is a few dozen
            medium-sized tensor ops, which run fastest single-threaded on a busy CPU.
        training_counts: ``{key: counts()}``, a zero-argument callable per recording that
            returns its ``[T_train, N]`` training counts (e.g.
            :class:`~neurobridge.data.binning.SplitCounts`); a recording not yet fitted is
            fitted from it when it is first predicted. A NeuroBridge task keys recordings by
            session id. ``None``: recordings are fitted only by :meth:`fit_recording`.
        temporal_sigma_bins: kernel of the own-cells smoothing of partially masked units
            (default ``sigma_bins``).
        tune: ``{"sigma_grid": [...], "l2_grid": [...]}``: choose ``sigma_bins``, ``l2`` and
            ``temporal_sigma_bins`` per recording on its validation split
            (:func:`tune_smoothing`), as NLB tunes its smoothing baseline; the fixed values
            apply to recordings without validation counts.
        validation_counts: ``{key: counts()}`` like ``training_counts``, for the validation
            splits that ``tune`` scores on.

    Attributes:
        num_glm_fits: number of GLM fits performed (cache misses), for monitoring.

    Caveats: the training counts are smoothed as one series, so if they are concatenated train
    blocks the kernel mixes a few bins across block boundaries. The cache is unbounded; with a
    fresh random held-out set per window every window costs one fit (call :meth:`clear_cache`).
    """

    def __init__(
        self,
        *,
        sigma_bins: float = 2.5,
        l2: float = 1e-2,
        max_iter: int = 100,
        min_rate: float = 1e-3,
        prior_bins: float = 2.0,
        num_threads: int | None = 1,
        training_counts: Mapping[str, Callable[[], np.ndarray]] | None = None,
        temporal_sigma_bins: float | None = None,
        tune: Mapping[str, Sequence[float]] | None = None,
        validation_counts: Mapping[str, Callable[[], np.ndarray]] | None = None,
    ) -> None:
        gaussian_kernel(sigma_bins)  # validates sigma_bins
        if temporal_sigma_bins is not None:
            gaussian_kernel(temporal_sigma_bins)
        if tune is not None:
            unknown = set(tune) - {"sigma_grid", "l2_grid"}
            if unknown or not tune.get("sigma_grid") or not tune.get("l2_grid"):
                raise ValueError(
                    f"tune must be {{'sigma_grid': [...], 'l2_grid': [...]}} (non-empty), got "
                    f"{dict(tune)}."
                )
            for sigma in tune["sigma_grid"]:
                gaussian_kernel(sigma)
            if any(v < 0 for v in tune["l2_grid"]):
                raise ValueError(f"tune.l2_grid values must be >= 0, got {list(tune['l2_grid'])}.")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}.")
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}.")
        if not min_rate > 0:
            raise ValueError(f"min_rate must be > 0, got {min_rate}.")
        if not prior_bins >= 0:
            raise ValueError(f"prior_bins must be >= 0, got {prior_bins}.")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}.")
        self.sigma_bins = float(sigma_bins)
        self.l2 = float(l2)
        self.max_iter = int(max_iter)
        self.min_rate = float(min_rate)
        self.prior_bins = float(prior_bins)
        self.num_threads = num_threads
        self.training_counts = dict(training_counts or {})
        self.temporal_sigma_bins = (float(temporal_sigma_bins) if temporal_sigma_bins is not None
                                    else self.sigma_bins)
        self.tune = ({k: [float(v) for v in vals] for k, vals in tune.items()}
                     if tune is not None else None)
        self.validation_counts = dict(validation_counts or {})
        #: ``{recording: SmoothingChoice}`` of the recordings whose settings were tuned
        self.choices: dict[str, SmoothingChoice] = {}
        self.num_glm_fits = 0
        self._recordings: dict[str, _Recording] = {}
        self._glm_cache: dict[tuple[str, tuple[int, ...], tuple[int, ...]], PoissonGLMFit] = {}

    # ------------------------------------------------------------------ fitting

    def fit_recording(
        self, recording_id: str, train_counts: np.ndarray, valid_counts: np.ndarray | None = None
    ) -> None:
        """Store the smoothed training counts of one recording (GLMs are fitted lazily).

        Args:
            recording_id: key used in :meth:`predict_log_rate`.
            train_counts: ``[T_train, N]`` binned counts of the recording's whole training split,
                binned with the model's bin size. Refitting a recording drops its cached GLMs.
            valid_counts: ``[T_valid, N]`` its validation split; with ``tune`` set, the kernel
                widths and L2 of this recording are chosen on it (:func:`tune_smoothing`, kept
                in :attr:`choices`); without it the fixed settings are used.
        """
        counts = np.asarray(train_counts, dtype=np.float64)
        if counts.ndim != 2 or counts.shape[0] == 0 or counts.shape[1] == 0:
            raise ValueError(f"train_counts must be a non-empty [T, N] array, got {counts.shape}.")
        if not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise ValueError("train_counts must be finite and non-negative.")
        sigma, temporal_sigma, l2 = self.sigma_bins, self.temporal_sigma_bins, self.l2
        if self.tune is not None and valid_counts is not None and counts.shape[1] > 1:
            choice = tune_smoothing(
                counts, valid_counts, sigma_grid=self.tune["sigma_grid"],
                l2_grid=self.tune["l2_grid"], prior_bins=self.prior_bins,
                min_rate=self.min_rate, max_iter=self.max_iter, num_threads=self.num_threads,
            )
            self.choices[recording_id] = choice
            sigma, temporal_sigma, l2 = choice.sigma_bins, choice.temporal_sigma_bins, choice.l2
        smoothed = gaussian_smooth_observed(counts, np.ones(counts.shape, dtype=bool), sigma)
        std = smoothed.std(axis=0)
        self._recordings[recording_id] = _Recording(
            num_units=counts.shape[1],
            sigma_bins=sigma,
            temporal_sigma_bins=temporal_sigma,
            l2=l2,
            smoothed=smoothed,
            counts=counts,
            feat_mean=smoothed.mean(axis=0),
            feat_std=np.where(std > 1e-12, std, 1.0),
            mean_rate=np.maximum(counts.mean(axis=0), self.min_rate),
        )
        self._glm_cache = {k: v for k, v in self._glm_cache.items() if k[0] != recording_id}

    def clear_cache(self) -> None:
        """Drop all cached GLM fits (fitted recordings are kept)."""
        self._glm_cache.clear()

    def _get_glm(self, recording_id: str, held_in: np.ndarray, held_out: np.ndarray) -> PoissonGLMFit:
        key = (recording_id, tuple(int(i) for i in held_in), tuple(int(i) for i in held_out))
        fit = self._glm_cache.get(key)
        if fit is None:
            rec = self._recordings[recording_id]
            x = (rec.smoothed[:, held_in] - rec.feat_mean[held_in]) / rec.feat_std[held_in]
            with torch_threads(self.num_threads):
                fit = fit_poisson_glm(
                    x, rec.counts[:, held_out], l2=rec.l2, max_iter=self.max_iter,
                    min_rate=self.min_rate,
                )
            self._glm_cache[key] = fit
            self.num_glm_fits += 1
        return fit

    # --------------------------------------------------------------- prediction

    def predict_log_rate(
        self, recording_id: str, counts: np.ndarray, loss_mask: np.ndarray
    ) -> np.ndarray:
        """Predict log expected count per bin for one window.

        Args:
            recording_id: a recording passed to :meth:`fit_recording` or named in
                ``training_counts``.
            counts: ``[T, N]`` binned counts of the window (only unmasked cells are read).
            loss_mask: ``[T, N]`` bool, True on masked (scored) cells.

        Returns:
            ``[T, N]`` float32 log-rates, finite on every cell.
        """
        if recording_id not in self._recordings and recording_id in self.training_counts:
            valid = self.validation_counts.get(recording_id)
            self.fit_recording(recording_id, self.training_counts[recording_id](),
                               valid() if valid is not None else None)
        if recording_id not in self._recordings:
            raise KeyError(f"Recording {recording_id!r} was not fitted; call fit_recording first.")
        rec = self._recordings[recording_id]
        counts = np.asarray(counts)
        masked = np.asarray(loss_mask, dtype=bool)
        if counts.ndim != 2 or counts.shape != masked.shape or counts.shape[1] != rec.num_units:
            raise ValueError(
                f"counts and loss_mask must be [T, {rec.num_units}], got {counts.shape} and "
                f"{masked.shape}."
            )
        observed = ~masked
        held_out = np.flatnonzero(masked.all(axis=0))
        held_in = np.flatnonzero(observed.all(axis=0))

        # GLM features: the held-in units smoothed with the GLM's kernel
        num, den = _smooth_num_den(counts, observed, gaussian_kernel(rec.sigma_bins))
        smoothed = np.full(counts.shape, np.nan)
        np.divide(num, den, out=smoothed, where=den > 0)
        if rec.temporal_sigma_bins != rec.sigma_bins:
            kernel = gaussian_kernel(rec.temporal_sigma_bins)
            num, den = _smooth_num_den(counts, observed, kernel)
        else:
            kernel = gaussian_kernel(rec.sigma_bins)
        if self.prior_bins > 0:
            # Gamma-prior shrinkage towards the training mean: `prior_bins` pseudo-bins (in units of
            # the kernel's peak weight) observed at the unit's training mean rate.
            prior = self.prior_bins * kernel.max()
            rate = (num + prior * rec.mean_rate[None, :]) / (den + prior)
        else:
            own = np.full(counts.shape, np.nan)
            np.divide(num, den, out=own, where=den > 0)
            rate = np.where(np.isnan(own), rec.mean_rate[None, :], own)
        rate = np.maximum(rate, self.min_rate)
        log_rate = np.log(rate)

        if held_out.size:
            if held_in.size:
                fit = self._get_glm(recording_id, held_in, held_out)
                x = (smoothed[:, held_in] - rec.feat_mean[held_in]) / rec.feat_std[held_in]
                eta = np.minimum(x @ fit.weight + fit.bias, fit.eta_max)
                log_rate[:, held_out] = np.maximum(eta, math.log(self.min_rate))
            else:
                log_rate[:, held_out] = np.log(rec.mean_rate[held_out])[None, :]
        return log_rate.astype(np.float32)
