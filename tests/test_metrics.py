import math

import numpy as np
import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from neurobridge.metrics import (
    CoBPS,
    MaskedMSE,
    MaskedR2,
    log_rate_from_rate,
    paired_co_bps_difference,
    poisson_log_likelihood,
)

# Computing a metric that was never updated (expected NaN, or states set by hand) warns.
_NO_UPDATE_WARNING = "ignore:The ``compute`` method of metric"

# --------------------------------------------------------------------- helpers


def _reference_co_bps(log_rate, counts, unit):
    """Direct implementation of the NLB definition with the full Poisson LL (lgamma included)."""
    log_rate = np.asarray(log_rate, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    unit = np.asarray(unit)
    ll_model = ll_null = 0.0
    for u in np.unique(unit):
        sel = unit == u
        y, lr = counts[sel], log_rate[sel]
        r0 = y.mean()
        for yi, lri in zip(y, lr, strict=True):
            lg = math.lgamma(yi + 1.0)
            ll_model += (yi * lri if yi > 0 else 0.0) - math.exp(lri) - lg
            ll_null += (yi * math.log(r0) if yi > 0 else 0.0) - r0 - lg
    return (ll_model - ll_null) / (counts.sum() * math.log(2.0))


def _simulate_modulated(seed=0, n_units=20, n_bins=4000):
    """Poisson counts with strongly modulated, known log-rates."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_bins)[:, None]
    phase = rng.uniform(0, 2 * np.pi, n_units)[None, :]
    period = rng.uniform(40, 120, n_units)[None, :]
    log_rate = np.log(rng.uniform(0.2, 0.8, n_units))[None, :] + 1.2 * np.sin(
        2 * np.pi * t / period + phase
    )
    counts = rng.poisson(np.exp(log_rate)).astype(np.float32)
    unit = np.broadcast_to(np.arange(n_units), counts.shape)
    return (
        torch.tensor(log_rate, dtype=torch.float32),
        torch.tensor(counts),
        torch.tensor(np.ascontiguousarray(unit)),
    )


# ---------------------------------------------------------- Poisson likelihood


def test_poisson_log_likelihood_matches_torch_definition():
    torch.manual_seed(0)
    log_rate = torch.randn(200) * 2
    counts = torch.poisson(torch.exp(log_rate))
    nll = torch.nn.functional.poisson_nll_loss(
        log_rate, counts, log_input=True, full=False, reduction="none"
    )
    expected = -nll - torch.lgamma(counts + 1)
    torch.testing.assert_close(poisson_log_likelihood(log_rate, counts), expected)


def test_poisson_log_likelihood_half_inputs_computed_in_float32():
    log_rate = torch.tensor([-1.0, 0.5, 2.0, -3.0], dtype=torch.float16)
    counts = torch.tensor([0.0, 1.0, 7.0, 2.0], dtype=torch.float16)
    out = poisson_log_likelihood(log_rate, counts)
    assert out.dtype == torch.float32
    lr, y = log_rate.float(), counts.float()
    torch.testing.assert_close(out, y * lr - torch.exp(lr) - torch.lgamma(y + 1))


def test_poisson_log_likelihood_zero_count_with_zero_rate_is_finite():
    out = poisson_log_likelihood(torch.tensor([-math.inf]), torch.tensor([0.0]))
    assert out.item() == 0.0


def test_log_rate_from_rate_tensor_and_numpy():
    rate = torch.tensor([0.0, 1.0, math.e])
    torch.testing.assert_close(log_rate_from_rate(rate), torch.tensor([math.log(1e-8), 0.0, 1.0]))
    out = log_rate_from_rate(np.array([0.0, 1.0]), eps=1e-3)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [math.log(1e-3), 0.0])


# ----------------------------------------------------------------------- CoBPS


def test_cobps_hand_computed_example():
    # unit 0: counts 2, 0, 1 (null rate 1); unit 1: counts 0, 1 (null rate 0.5); 3 + 1 = 4 spikes.
    counts = [2.0, 0.0, 1.0, 0.0, 1.0]
    rates = [1.5, 0.5, 1.0, 0.2, 0.8]
    unit = [0, 0, 0, 1, 1]
    # model - null, lgamma cancels:
    # unit 0: (2 log 1.5 - 3.0) - (0 - 3.0); unit 1: (log 0.8 - 1.0) - (log 0.5 - 1.0)
    by_hand = (2 * math.log(1.5) + math.log(0.8) - math.log(0.5)) / (4 * math.log(2))
    assert by_hand == pytest.approx(0.46200, abs=1e-5)
    assert _reference_co_bps(np.log(rates), counts, unit) == pytest.approx(by_hand, rel=1e-12)

    metric = CoBPS(num_units=2)
    metric.update(torch.log(torch.tensor(rates)), torch.tensor(counts), torch.tensor(unit))
    assert metric.compute().item() == pytest.approx(by_hand, rel=1e-6)


def test_cobps_unit_without_spikes():
    counts = [2.0, 0.0, 1.0, 0.0, 0.0]
    rates = [1.5, 0.5, 1.0, 0.1, 0.3]
    unit = [0, 0, 0, 2, 2]  # unit 2 never spikes: null rate 0, model pays sum(rates) = 0.4
    by_hand = (2 * math.log(1.5) + 3.0 - 3.0 - 0.4) / (3 * math.log(2))
    metric = CoBPS(num_units=3)
    metric.update(torch.log(torch.tensor(rates)), torch.tensor(counts), torch.tensor(unit))
    value = metric.compute().item()
    assert math.isfinite(value)
    assert value == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.filterwarnings(_NO_UPDATE_WARNING)
def test_cobps_no_spikes_is_nan_and_reset():
    metric = CoBPS(num_units=4)
    assert math.isnan(metric.compute().item())
    metric.update(torch.zeros(3), torch.zeros(3), torch.tensor([0, 1, 2]))
    assert math.isnan(metric.compute().item())
    metric.update(torch.zeros(2), torch.tensor([1.0, 0.0]), torch.tensor([3, 3]))
    assert math.isfinite(metric.compute().item())
    metric.reset()
    assert math.isnan(metric.compute().item())


def test_cobps_predicting_each_unit_mean_is_zero():
    log_rate_true, counts, unit = _simulate_modulated(seed=1)
    mean = counts.mean(dim=0, keepdim=True).expand_as(counts)
    metric = CoBPS(num_units=counts.shape[1])
    metric.update(torch.log(mean), counts, unit)
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-6)


def test_cobps_true_rates_positive_shuffled_negative():
    log_rate_true, counts, unit = _simulate_modulated(seed=2)
    n_units = counts.shape[1]
    good = CoBPS(num_units=n_units)
    good.update(log_rate_true, counts, unit)
    value = good.compute().item()
    assert value > 0.3
    assert value == pytest.approx(
        _reference_co_bps(
            log_rate_true.numpy().ravel(), counts.numpy().ravel(), unit.numpy().ravel()
        ),
        rel=1e-4,
    )
    perm = torch.randperm(counts.shape[0], generator=torch.Generator().manual_seed(0))
    bad = CoBPS(num_units=n_units)
    bad.update(log_rate_true[perm], counts, unit)
    assert bad.compute().item() < -0.1


def test_paired_co_bps_difference_is_the_difference_with_a_unit_bootstrap_interval():
    log_rate, counts, unit = _simulate_modulated(seed=3, n_units=40, n_bins=2000)
    n_units = counts.shape[1]
    true, flat = CoBPS(num_units=n_units), CoBPS(num_units=n_units)
    true.update(log_rate, counts, unit)
    flat.update(0.5 * log_rate + 0.5 * log_rate.mean(0), counts, unit)  # half the modulation
    diff, low, high = paired_co_bps_difference(true, flat)
    # the null model cancels: the paired difference is the difference of the two co-bps
    assert diff == pytest.approx(true.compute().item() - flat.compute().item(), rel=1e-5)
    assert 0 < low < diff < high
    # the interval's width is the ratio estimator's over units: 2 x 1.96 x its standard error
    d = ((true.model_ll - flat.model_ll) / math.log(2)).numpy()
    s = true.spikes.numpy()
    se = math.sqrt(n_units / (n_units - 1) * ((d - diff * s) ** 2).sum()) / s.sum()
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert paired_co_bps_difference(true, true) == (0.0, 0.0, 0.0)
    other = CoBPS(num_units=n_units)
    other.update(log_rate[:100], counts[:100], unit[:100])
    with pytest.raises(ValueError, match="same cells"):
        paired_co_bps_difference(true, other)


def test_cobps_batched_updates_and_any_shape():
    log_rate, counts, unit = _simulate_modulated(seed=3, n_bins=600)
    whole = CoBPS(num_units=counts.shape[1])
    whole.update(log_rate.reshape(-1), counts.reshape(-1), unit.reshape(-1))
    batched = CoBPS(num_units=counts.shape[1])
    for sl in (slice(0, 50), slice(50, 333), slice(333, 600)):
        batched.update(log_rate[sl], counts[sl], unit[sl])  # 2-D inputs, flattened
    assert batched.compute().item() == pytest.approx(whole.compute().item(), rel=1e-6)


def test_cobps_forward_returns_batch_value_and_accumulates():
    log_rate, counts, unit = _simulate_modulated(seed=4, n_bins=400)
    metric = CoBPS(num_units=counts.shape[1])
    first = CoBPS(num_units=counts.shape[1])
    first.update(log_rate[:200], counts[:200], unit[:200])
    batch_value = metric(log_rate[:200], counts[:200], unit[:200])
    assert batch_value.item() == pytest.approx(first.compute().item(), rel=1e-6)
    metric(log_rate[200:], counts[200:], unit[200:])
    whole = CoBPS(num_units=counts.shape[1])
    whole.update(log_rate, counts, unit)
    assert metric.compute().item() == pytest.approx(whole.compute().item(), rel=1e-6)


@pytest.mark.filterwarnings(_NO_UPDATE_WARNING)
def test_cobps_two_ranks_merge_equals_single_process():
    log_rate, counts, unit = _simulate_modulated(seed=5, n_bins=800)
    n_units = counts.shape[1]
    single = CoBPS(num_units=n_units)
    single.update(log_rate, counts, unit)
    expected = single.compute().item()

    # Each "rank" sees different bins, and rank 1 only half the units, so the per-unit null rates
    # differ between ranks: only correct summed states give the single-process answer.
    rank0, rank1 = CoBPS(num_units=n_units), CoBPS(num_units=n_units)
    rank0.update(log_rate[::2], counts[::2], unit[::2])
    half = unit[1::2] < n_units // 2
    rank1.update(log_rate[1::2][half], counts[1::2][half], unit[1::2][half])
    rank0.update(log_rate[1::2][~half], counts[1::2][~half], unit[1::2][~half])

    merged = CoBPS(num_units=n_units)
    merged.merge_state(rank0)
    merged.merge_state(rank1)
    assert merged.compute().item() == pytest.approx(expected, rel=1e-6)

    summed = CoBPS(num_units=n_units)
    for name in ("model_ll", "spikes", "cells"):
        setattr(summed, name, getattr(rank0, name) + getattr(rank1, name))
    assert summed.compute().item() == pytest.approx(expected, rel=1e-6)
    # Averaging per-rank values would be wrong here.
    assert (rank0.compute().item() + rank1.compute().item()) / 2 != pytest.approx(
        expected, rel=1e-3
    )


def test_cobps_state_reductions_are_sums():
    metric = CoBPS(num_units=3)
    assert metric.full_state_update is False
    assert metric.higher_is_better is True
    for name in ("model_ll", "spikes", "cells"):
        assert metric._reductions[name] is dim_zero_sum


def test_cobps_input_validation():
    metric = CoBPS(num_units=3)
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.zeros(3), torch.zeros(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metric.update(torch.zeros(2), torch.zeros(2), torch.tensor([0, 3]))
    with pytest.raises(TypeError):
        metric.update(torch.zeros(2), torch.zeros(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError):
        CoBPS(num_units=0)


@pytest.mark.filterwarnings(_NO_UPDATE_WARNING)
def test_cobps_in_module_dict_per_mode():
    metrics = torch.nn.ModuleDict({m: CoBPS(num_units=2) for m in ("temporal", "neuron")})
    metrics["temporal"].update(torch.zeros(2), torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))
    assert math.isfinite(metrics["temporal"].compute().item())
    assert math.isnan(metrics["neuron"].compute().item())


# ------------------------------------------------------------- MaskedR2 / MSE


def _continuous_data(seed=0):
    rng = np.random.default_rng(seed)
    # Units with very different means: a global-mean R2 would be far from per-unit-centred R2.
    target = rng.normal(size=(300, 5)) + np.arange(5)[None, :] * 10.0
    unit = np.broadcast_to(np.arange(5), target.shape)
    return torch.tensor(target), torch.tensor(np.ascontiguousarray(unit))


def test_masked_r2_perfect_and_mean_prediction():
    target, unit = _continuous_data()
    perfect = MaskedR2(num_units=5)
    perfect.update(target, target, unit)
    assert perfect.compute().item() == pytest.approx(1.0, abs=1e-7)

    mean_pred = target.mean(dim=0, keepdim=True).expand_as(target)
    mean = MaskedR2(num_units=5)
    mean.update(mean_pred, target, unit)
    assert mean.compute().item() == pytest.approx(0.0, abs=1e-6)


def test_masked_r2_value_batches_and_merge():
    target, unit = _continuous_data(seed=1)
    noise = torch.tensor(np.random.default_rng(2).normal(size=target.shape) * 0.5)
    pred = target + noise
    sse = (noise**2).sum()
    sst = ((target - target.mean(dim=0, keepdim=True)) ** 2).sum()
    expected = (1 - sse / sst).item()

    r2 = MaskedR2(num_units=5)
    r2.update(pred.float(), target.float(), unit)
    assert r2.compute().item() == pytest.approx(expected, rel=1e-5)

    a, b = MaskedR2(num_units=5), MaskedR2(num_units=5)
    a.update(pred[:100], target[:100], unit[:100])
    b.update(pred[100:], target[100:], unit[100:])
    a.merge_state(b)
    assert a.compute().item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.filterwarnings(_NO_UPDATE_WARNING)
def test_masked_r2_nan_without_variance():
    r2 = MaskedR2(num_units=2)
    assert math.isnan(r2.compute().item())
    r2.update(torch.zeros(3), torch.ones(3), torch.tensor([0, 0, 1]))
    assert math.isnan(r2.compute().item())


@pytest.mark.filterwarnings(_NO_UPDATE_WARNING)
def test_masked_mse():
    mse = MaskedMSE(num_units=3)
    assert math.isnan(mse.compute().item())
    mse.update(
        torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 1, 2])
    )
    mse.update(torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.tensor([[1]]))
    assert mse.compute().item() == pytest.approx((0 + 4 + 9 + 0.25) / 4)


def test_the_streaming_and_the_array_bits_per_spike_agree():
    """CoBPS (per-unit sums over batches) and gain_over_mean_rate (one array) are one
    definition: the same value on the same cells."""
    from neurobridge.metrics import gain_over_mean_rate

    gen = torch.Generator().manual_seed(0)
    log_rate = torch.randn(40, 7, generator=gen) - 1.0
    counts = torch.poisson(torch.exp(log_rate + 0.3 * torch.randn(40, 7, generator=gen)))
    cells = torch.rand(40, 7, generator=gen) < 0.6
    metric = CoBPS(num_units=7)
    units = torch.arange(7).expand(40, 7)
    metric.update(log_rate[cells], counts[cells], units[cells])
    gain, spikes = gain_over_mean_rate(log_rate.numpy(), counts.numpy(), cells.numpy())
    # (CoBPS keeps float32 inputs in float32 until its float64 sums: agreement to ~1e-7)
    assert float(metric.compute()) == pytest.approx(gain / spikes / math.log(2), rel=1e-6)
