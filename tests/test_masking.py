import numpy as np
import pytest

from neurobridge.masking import MASKING_MODES, MaskingController

REGIONS = np.array(["V1"] * 10 + ["V4"] * 6 + ["IT"] * 4)
N_BINS = 50


def controller(**kw):
    return MaskingController(mode_probs={m: 1.0 for m in MASKING_MODES}, **kw)


@pytest.mark.parametrize("seed", range(20))
def test_temporal_mask_hides_whole_bins_in_ratio(seed):
    gm = controller().sample(n_bins=N_BINS, unit_regions=REGIONS, rng=np.random.default_rng(seed),
                             mode="temporal")
    rows = gm.mask.any(axis=1)
    assert np.array_equal(gm.mask, np.repeat(rows[:, None], len(REGIONS), axis=1))
    assert 0.5 * N_BINS - 0.5 <= rows.sum() <= 0.75 * N_BINS + 0.5


@pytest.mark.parametrize("seed", range(20))
def test_neuron_mask_hides_whole_units_in_ratio(seed):
    gm = controller().sample(n_bins=N_BINS, unit_regions=REGIONS, rng=np.random.default_rng(seed),
                             mode="neuron")
    cols = gm.mask.any(axis=0)
    assert np.array_equal(gm.mask, np.repeat(cols[None], N_BINS, axis=0))
    assert 0.3 * 20 - 0.5 <= cols.sum() <= 0.5 * 20 + 0.5


@pytest.mark.parametrize("seed", range(20))
def test_intra_region_mask_stays_in_one_region(seed):
    gm = controller().sample(n_bins=N_BINS, unit_regions=REGIONS, rng=np.random.default_rng(seed),
                             mode="intra_region")
    cols = gm.mask.all(axis=0)
    assert np.array_equal(gm.mask.any(axis=0), cols)
    assert set(REGIONS[cols]) == {gm.region}
    n_region = (REGIONS == gm.region).sum()
    assert 1 <= cols.sum() <= max(1, round(0.75 * n_region))


@pytest.mark.parametrize("seed", range(10))
def test_inter_region_mask_is_exactly_one_region(seed):
    gm = controller().sample(n_bins=N_BINS, unit_regions=REGIONS, rng=np.random.default_rng(seed),
                             mode="inter_region")
    assert not gm.fell_back
    assert np.array_equal(gm.mask.all(axis=0), REGIONS == gm.region)
    assert np.array_equal(gm.mask.any(axis=0), REGIONS == gm.region)


def test_inter_region_falls_back_to_neuron_with_one_region():
    gm = controller().sample(n_bins=N_BINS, unit_regions=np.array(["V1"] * 8),
                             rng=np.random.default_rng(0), mode="inter_region")
    assert gm.fell_back and gm.mode == "neuron" and gm.requested_mode == "inter_region"
    assert 0 < gm.mask.all(axis=0).sum() < 8


def test_mode_probabilities_are_respected():
    ctl = MaskingController(mode_probs={"temporal": 0.7, "neuron": 0.3})
    rng = np.random.default_rng(0)
    modes = [ctl.sample(n_bins=10, unit_regions=REGIONS, rng=rng).mode for _ in range(2000)]
    frac = modes.count("temporal") / len(modes)
    assert 0.66 < frac < 0.74
    assert set(modes) == {"temporal", "neuron"}


def test_same_seed_same_mask_and_every_mask_leaves_something_visible():
    ctl = controller()
    for seed in range(200):
        a = ctl.sample(n_bins=N_BINS, unit_regions=REGIONS, rng=np.random.default_rng(seed))
        b = ctl.sample(n_bins=N_BINS, unit_regions=REGIONS, rng=np.random.default_rng(seed))
        assert a.mode == b.mode and np.array_equal(a.mask, b.mask)
        assert a.mask.any() and not a.mask.all()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"temporal_ratio": [0.5, 1.2]}, "temporal_ratio"),
        ({"neuron_ratio": [0.6, 0.3]}, "neuron_ratio"),
        ({"intra_region_ratio": [-0.1, 0.5]}, "intra_region_ratio"),
        ({"mode_probs": {"tempral": 1.0}}, "mode_probs"),
        ({"mode_probs": {"temporal": -1.0, "neuron": 2.0}}, "mode_probs"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    args = {"mode_probs": {"temporal": 1.0}} | kwargs
    with pytest.raises(ValueError, match=field):
        MaskingController(**args)


@pytest.mark.parametrize("overrides, probs", [
    ([], [0.25, 0.25, 0.25, 0.25]),
    (["masking.mode_probs={neuron: 0.5, inter_region: 0.5}"], [0.0, 0.5, 0.0, 0.5]),
    (["masking.mode_probs={temporal: 3}"], [1.0, 0.0, 0.0, 0.0]),
])
def test_config_mode_probs_are_the_mapping_given(overrides, probs):
    """The default is every mode alike; a mapping on the command line is the whole mapping."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from neurobridge.tasks.common import build_masking

    configs = str(Path(__file__).resolve().parent.parent / "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    assert build_masking(cfg).mode_probs.tolist() == probs


def test_mode_probs_that_are_not_a_mapping_are_refused():
    with pytest.raises(ValueError, match="must be a mapping of modes"):
        MaskingController(mode_probs=[0.5, 0.5])
