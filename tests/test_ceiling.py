"""The latent posterior-mean ceiling (neurobridge.baselines.ceiling) on data with known truth."""

import math
import shutil

import h5py
import numpy as np
import pytest
import torch
from temporaldata import Interval
from test_training import FAST, _cfg

from neurobridge.baselines import LatentPosteriorCeiling, SplitTruth, fit_latent_model
from neurobridge.baselines.ceiling import (
    LatentModel,
    _block_cholesky,
    _block_inverse_diagonal,
    _block_solve,
    _blocks,
    posterior_mean_log_rates,
)
from neurobridge.data.binning import SplitCounts
from neurobridge.metrics import gain_over_mean_rate
from neurobridge.training.run import run


def test_block_tridiagonal_algebra_matches_dense():
    rng = np.random.default_rng(0)
    k, m = 5, 6
    a = rng.standard_normal((k * m, k * m))
    band = np.abs(np.subtract.outer(np.arange(k * m) // m, np.arange(k * m) // m)) <= 1
    dense = torch.as_tensor(np.where(band, a @ a.T, 0.0) + k * m * np.eye(k * m))
    diag, sub = _blocks(dense, m)
    d, e = _block_cholesky(diag[None], sub[None])
    g = torch.as_tensor(rng.standard_normal((1, k, m)))
    solved = _block_solve(d, e, g).reshape(-1)
    torch.testing.assert_close(solved, torch.linalg.solve(dense, g.reshape(-1)))
    inverse_diag, _ = _blocks(torch.linalg.inv(dense), m)
    torch.testing.assert_close(_block_inverse_diagonal(d, e)[0], inverse_diag)


def test_laplace_posterior_mean_is_close_to_the_exact_one_on_a_toy_model():
    """One latent, two bins, one observed and one hidden cell: the exact posterior mean of the
    hidden cell's rate by quadrature against the Laplace approximation (off by ~0.1 in log
    rate on this low-count toy) and its importance-sampling correction (exact in the limit)."""
    rho, offset, loading = 0.8, math.log(0.5), 1.0
    cov = np.array([[1.0, rho], [rho, 1.0]])
    model = LatentModel(offset=np.array([offset]), loading=np.array([[loading]]),
                        prior_mean=np.zeros(1), prior_precision=np.linalg.inv(cov),
                        bandwidth=1, readout_r2=1.0)
    grid = np.linspace(-6, 6, 801)
    z0, z1 = np.meshgrid(grid, grid, indexing="ij")
    prior = np.exp(-0.5 * (cov[1, 1] * z0**2 - 2 * rho * z0 * z1 + z1**2) / (1 - rho**2))
    for count in (0, 1, 3):
        rate0 = np.exp(offset + loading * z0)
        post = prior * rate0**count * np.exp(-rate0)  # bin 0 observed, bin 1 hidden
        exact = np.log((post * np.exp(offset + loading * z1)).sum() / post.sum())
        counts = np.array([[[count], [0]]], float)
        observed = np.array([[[True], [False]]])
        laplace = posterior_mean_log_rates(model, counts, observed)[0, 1, 0]
        assert laplace == pytest.approx(exact, abs=0.12), count
        sampled = posterior_mean_log_rates(model, counts, observed, samples=100_000)[0, 1, 0]
        assert sampled == pytest.approx(exact, abs=0.005), count
        # and the observed count moves the hidden cell's prediction the right way
        assert (sampled > offset + 0.5 * loading**2) == (count >= 1)  # prior mean count 0.82


@pytest.fixture(scope="module")
def small_truth(small_recordings):
    """(latent model, test counts, test expected counts) of one small synthetic recording."""
    path = sorted(small_recordings.glob("*.h5"))[0]
    with h5py.File(path, "r") as f:
        splits = {s: Interval(f[f"{s}_domain/start"][:], f[f"{s}_domain/end"][:])
                  for s in ("train", "test")}
    model = fit_latent_model(*SplitTruth.of(path, splits["train"], 0.02)(), window_bins=50)
    counts = SplitCounts.of(path, splits["test"], 0.02)()
    expected = np.concatenate(SplitTruth.of(path, splits["test"], 0.02)()[1])
    return model, counts, expected


def _bps(log_rate, counts, cells):
    gain, spikes = gain_over_mean_rate(log_rate, counts, cells)
    return gain / spikes / math.log(2)


def test_ceiling_lies_between_the_mean_rate_and_the_oracle(small_truth):
    model, counts, expected = small_truth
    assert model.readout_r2 > 0.99  # the generator's log-rates are affine in its latents
    n_windows, n_units = len(counts) // 50, counts.shape[1]
    windows = counts[: n_windows * 50].reshape(n_windows, 50, n_units)
    truth = expected[: n_windows * 50].reshape(n_windows, 50, n_units)
    rng = np.random.default_rng(0)
    hidden = np.zeros(windows.shape, bool)
    for w in range(n_windows):  # neuron masking: a third of the units hidden in each window
        hidden[w, :, rng.choice(n_units, n_units // 3, replace=False)] = True
    ceiling = posterior_mean_log_rates(model, windows, ~hidden)
    flat = (windows.reshape(-1, n_units), hidden.reshape(-1, n_units))
    ceiling_bps = _bps(ceiling.reshape(-1, n_units), *flat)
    oracle_bps = _bps(np.log(truth.reshape(-1, n_units)), *flat)
    assert 0.5 * oracle_bps < ceiling_bps < oracle_bps
    # with nothing observed it predicts each unit's prior mean rate, the same in every bin and
    # window: no better than the mean rate
    blind = posterior_mean_log_rates(model, windows, np.zeros(windows.shape, bool))
    assert np.ptp(blind, axis=(0, 1)).max() < 0.05
    assert _bps(blind.reshape(-1, n_units), *flat) < 0.01


def test_ceiling_refuses_rates_that_are_not_log_linear_in_the_latents():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2000, 2))
    counts = np.exp(np.column_stack([z[:, 0] ** 2, np.sin(3 * z[:, 1])])) * 0.1
    ceiling = LatentPosteriorCeiling(truth={"rec": lambda: ([z], [counts])}, window_bins=10)
    with pytest.raises(ValueError, match=r"not a log-linear function .* no latent ceiling"):
        ceiling.model("rec")


def test_task_ceiling_needs_a_latent_ground_truth(small_recordings, tmp_path):
    root = tmp_path / "no_truth"
    shutil.copytree(small_recordings, root)
    for path in root.glob("*.h5"):
        with h5py.File(path, "a") as f:
            del f["true_rates"]
    cfg = _cfg(["data=recordings", f"data.root={root}", *FAST, "task.ceiling=true",
                "trainer.max_steps=2"])
    with pytest.raises(ValueError, match=r"task.ceiling=true needs recordings with a latent "
                                         r"ground truth.*Set task.ceiling=false"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training

