"""neurobridge.comparison: per-unit test sums on disk and the paired comparison of two runs."""

import math

import numpy as np
import pytest

from neurobridge.comparison import compare_unit_scores, read_unit_scores, write_unit_scores


def _sums(rng, n_units, model_ll_shift=0.0):
    spikes = rng.poisson(50, n_units).astype(float)
    cells = np.full(n_units, 100.0)
    model_ll = spikes * np.log(spikes / cells) - spikes + rng.normal(0, 2, n_units) + model_ll_shift
    return {"model_ll": model_ll, "spikes": spikes, "cells": cells}


def test_compare_pairs_units_by_id_and_refuses_other_cells(tmp_path):
    rng = np.random.default_rng(0)
    ids = ["NA", *(f"s0/u{i}" for i in range(30))]
    a = _sums(rng, 31, model_ll_shift=3.0)
    a["cells"][0] = a["spikes"][0] = a["model_ll"][0] = 0.0  # the padding word: never scored
    write_unit_scores(tmp_path / "a.npz", ids, {"all": a})
    # B: the same cells in another unit order, 3 nats less per unit (= 3 / ln 2 bits)
    order = rng.permutation(31)
    b = {k: v[order] for k, v in a.items()}
    b["model_ll"] = b["model_ll"] - 3.0 * (b["cells"] > 0)
    write_unit_scores(tmp_path / "b.npz", [ids[i] for i in order], {"all": b})
    assert len(read_unit_scores(tmp_path / "a.npz")["all"]["ids"]) == 30
    out = compare_unit_scores(tmp_path / "a.npz", tmp_path / "b.npz", n_boot=500)["all"]
    expected = 30 * 3.0 / math.log(2) / a["spikes"].sum()
    assert out["delta"] == pytest.approx(expected) and out["a"] - out["b"] == pytest.approx(expected)
    assert out["ci_low"] <= out["delta"] <= out["ci_high"]
    # other cells (one unit scored on fewer bins) are refused, naming what differs
    c = {k: v.copy() for k, v in a.items()}
    c["cells"][5] -= 1
    write_unit_scores(tmp_path / "c.npz", ids, {"all": c})
    with pytest.raises(ValueError, match=r"different cells in 'all' \(cells differ\)"):
        compare_unit_scores(tmp_path / "a.npz", tmp_path / "c.npz")
    write_unit_scores(tmp_path / "d.npz", ids[:-1], {"all": {k: v[:-1] for k, v in a.items()}})
    with pytest.raises(ValueError, match=r"different units in 'all' \(30 and 29; e.g. \['s0/u29'\]"):
        compare_unit_scores(tmp_path / "a.npz", tmp_path / "d.npz")
    with pytest.raises(FileNotFoundError, match=r"re-score the checkpoint with task=evaluate"):
        compare_unit_scores(tmp_path, tmp_path / "a.npz")
