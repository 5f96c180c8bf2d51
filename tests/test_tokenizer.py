import logging

import numpy as np
import pytest
from temporaldata import ArrayDict, Data, Interval, IrregularTimeSeries, RegularTimeSeries

from neurobridge.data import MaskedTokenizer, WindowIndex, bin_regular, bin_spikes
from neurobridge.masking import MASKING_MODES, MaskingController

BIN = 0.05
N_BINS = 20
UNITS = np.array([f"s0/u{i}" for i in range(9)])
REGIONS = np.array(["V1"] * 4 + ["V4"] * 3 + ["IT"] * 2)


def _window(seed=0, regions=True, mua=False):
    rng = np.random.default_rng(seed)
    n = 400
    ts = np.sort(rng.uniform(0, 1.0, n))
    units = ArrayDict(id=UNITS, brain_region=REGIONS) if regions else ArrayDict(id=UNITS)
    kw = dict(
        session=Data(id="s0"),
        units=units,
        domain=Interval(0.0, 1.0),
    )
    if mua:
        kw["mua"] = RegularTimeSeries(values=rng.normal(size=(100, 9)).astype(np.float32),
                                      sampling_rate=100.0)
    else:
        kw["spikes"] = IrregularTimeSeries(timestamps=ts, unit_index=rng.integers(0, 9, n),
                                           domain=Interval(0.0, 1.0))
    return Data(**kw)


def _tokenizer(modality="spikes"):
    return MaskedTokenizer(
        modality=modality,
        unit_vocab={u: i + 1 for i, u in enumerate(UNITS)},
        session_vocab={"s0": 1},
        masking=MaskingController(mode_probs={m: 1.0 for m in MASKING_MODES}),
        sequence_length=1.0,
        bin_size=BIN,
        latent_step=0.25,
        num_latents_per_step=2,
    )


def _unpad(x):
    return np.asarray(x.obj)


@pytest.mark.parametrize("mode", MASKING_MODES)
@pytest.mark.parametrize("seed", range(5))
def test_no_masked_spike_reaches_the_encoder_and_queries_are_the_masked_cells(mode, seed):
    data = _window(seed)
    out = _tokenizer()(data, WindowIndex("s0", 0.0, 1.0, mask_seed=seed, mode=mode))
    mask = _unpad(out["grid_mask"]).T  # [bins, units]
    grid = bin_spikes(data.spikes.timestamps, data.spikes.unit_index, num_units=9, start=0.0,
                      end=1.0, bin_size=BIN)
    assert mask.any() and not mask.all()
    enc = out["encoder_inputs"]
    ttype = _unpad(enc["input_token_type"])
    uidx = _unpad(enc["input_unit_index"]) - 1  # vocab index -> local unit
    times = _unpad(enc["input_timestamps"])
    spikes = ttype == 0
    bins = np.floor(times[spikes] / BIN).astype(int)
    assert not mask[bins, uidx[spikes]].any()  # no token inside a masked cell
    assert spikes.sum() == grid[~mask].sum()  # and every visible spike is there
    # start/end tokens only for units that keep a visible cell
    assert set(uidx[~spikes]) == set(np.flatnonzero(~mask.all(axis=0)))
    # queries: exactly the masked cells, with their counts and bin-centre times
    qb, qu = _unpad(out["query_bin"]), _unpad(out["query_unit"])
    assert set(zip(qb, qu)) == set(zip(*np.nonzero(mask)))
    np.testing.assert_array_equal(_unpad(out["target"]), grid[qb, qu])
    np.testing.assert_allclose(_unpad(out["query_timestamps"]), (qb + 0.5) * BIN, rtol=1e-6)
    np.testing.assert_array_equal(_unpad(out["query_unit_index"]), qu + 1)
    assert MASKING_MODES[out["mode"]] == mode


def test_value_tokens_are_exactly_the_visible_cells():
    data = _window(mua=True)
    out = _tokenizer("values")(data, WindowIndex("s0", 0.0, 1.0, mask_seed=3, mode="temporal"))
    mask = _unpad(out["grid_mask"]).T
    grid = bin_regular(data.mua.values, sampling_rate=100.0, bin_size=BIN, n_bins=N_BINS)
    enc = out["encoder_inputs"]
    b = np.round(_unpad(enc["input_timestamps"]) / BIN - 0.5).astype(int)
    u = _unpad(enc["input_unit_index"]) - 1
    assert set(zip(b, u)) == set(zip(*np.nonzero(~mask)))
    np.testing.assert_allclose(_unpad(enc["input_values"])[:, 0], grid[b, u], rtol=1e-6)
    qb, qu = _unpad(out["query_bin"]), _unpad(out["query_unit"])
    np.testing.assert_allclose(_unpad(out["target"]), grid[qb, qu], rtol=1e-6)


def test_max_queries_takes_a_subset_of_masked_cells():
    tok = _tokenizer()
    full = tok(_window(), WindowIndex("s0", 0.0, 1.0, mask_seed=1, mode="neuron"))
    capped = tok(_window(), WindowIndex("s0", 0.0, 1.0, mask_seed=1, mode="neuron", max_queries=7))
    cells = set(zip(_unpad(full["query_bin"]), _unpad(full["query_unit"])))
    sub = set(zip(_unpad(capped["query_bin"]), _unpad(capped["query_unit"])))
    assert len(sub) == 7 and sub < cells


@pytest.mark.parametrize("mode", MASKING_MODES)
def test_unmasked_queries_add_visible_cells_and_keep_the_masked_ones(mode):
    tok, data = _tokenizer(), _window(2)
    index = dict(mask_seed=5, mode=mode, max_queries=30)
    plain = tok(data, WindowIndex("s0", 0.0, 1.0, **index))
    both = tok(data, WindowIndex("s0", 0.0, 1.0, unmasked_queries=12, **index))
    mask = _unpad(both["grid_mask"]).T
    qb, qu = _unpad(both["query_bin"]), _unpad(both["query_unit"])
    masked, visible = _unpad(both["query_mask"]), _unpad(both["query_visible"])
    assert masked.dtype == visible.dtype == np.bool_ and not (masked & visible).any()
    assert visible.sum() == min(12, (~mask).sum()) > 0
    assert mask[qb[masked], qu[masked]].all() and not mask[qb[visible], qu[visible]].any()
    # the masked cells (and so the masked loss) are those drawn without unmasked queries
    np.testing.assert_array_equal(qb[masked], _unpad(plain["query_bin"]))
    np.testing.assert_array_equal(qu[masked], _unpad(plain["query_unit"]))
    assert not _unpad(plain["query_visible"]).any()
    grid = bin_spikes(data.spikes.timestamps, data.spikes.unit_index, num_units=9, start=0.0,
                      end=1.0, bin_size=BIN)
    np.testing.assert_array_equal(_unpad(both["target"]), grid[qb, qu])


def test_unknown_unit_names_the_fix():
    tok = _tokenizer()
    tok.unit_vocab.pop("s0/u3")
    with pytest.raises(KeyError, match="extend_vocab"):
        tok(_window(), WindowIndex("s0", 0.0, 1.0))


def test_missing_region_field_falls_back_to_one_region(caplog):
    tok = _tokenizer()
    with caplog.at_level(logging.WARNING):
        out = tok(_window(regions=False), WindowIndex("s0", 0.0, 1.0, mode="inter_region"))
    assert "brain_region" in caplog.text
    assert MASKING_MODES[out["mode"]] == "neuron"
    assert MASKING_MODES[out["requested_mode"]] == "inter_region"


def test_nan_values_name_the_field():
    data = _window(mua=True)
    data.mua.values[5, 2] = np.nan
    with pytest.raises(ValueError, match="mua.values"):
        _tokenizer("values")(data, WindowIndex("s0", 0.0, 1.0))
