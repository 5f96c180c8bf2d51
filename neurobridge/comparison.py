"""Paired comparison of two runs scored on the same test cells.

The test of a masked model (``task=pretrain``, ``task=adapt_session``, ``task=evaluate``, of a
NeuroBridge or an NDT-style model alike) writes ``RUN/test_unit_scores.npz``: for each unit and
each group of cells (``all`` and every masking mode), the sums :class:`~neurobridge.metrics.CoBPS`
keeps (the model's log-likelihood, the spikes and the evaluated cells). The test windows and
their masks are fixed (``data.eval_seed``), so two runs on the same recordings score the same
cells; :func:`compare_unit_scores` checks that they did, unit by unit, and reports each group's
co-bps of both runs and their difference with a bootstrap interval over units
(:func:`~neurobridge.metrics.paired_log_likelihood_difference`).
``python scripts/compare_runs.py RUN_A RUN_B`` prints it as a table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neurobridge.io import atomic_path
from neurobridge.metrics import co_bps_from_sums, paired_log_likelihood_difference

__all__ = ["UNIT_SCORES_FILE", "compare_unit_scores", "read_unit_scores", "write_unit_scores"]

#: the file of a run folder that holds its test's per-unit sums
UNIT_SCORES_FILE = "test_unit_scores.npz"
_SUMS = ("model_ll", "spikes", "cells")


def write_unit_scores(path: str | Path, unit_ids: list[str],
                      sums: dict[str, dict[str, np.ndarray]]) -> None:
    """Write ``sums[group][name]`` (``[len(unit_ids)]`` each, ``name`` in ``model_ll``,
    ``spikes``, ``cells``) with the unit ids, atomically."""
    arrays = {"unit_ids": np.asarray(unit_ids, dtype=str)}
    for group, by_name in sums.items():
        for name in _SUMS:
            values = np.asarray(by_name[name], dtype=np.float64)
            if values.shape != (len(unit_ids),):
                raise ValueError(f"write_unit_scores: {group}/{name} has shape {values.shape}, "
                                 f"expected ({len(unit_ids)},).")
            arrays[f"{group}/{name}"] = values
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def read_unit_scores(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``{group: {name: [units]}}`` of a file of :func:`write_unit_scores` (a run folder works
    too), each group restricted to the units it evaluated and keyed by unit id as ``ids``."""
    path = Path(path)
    if path.is_dir():
        path = path / UNIT_SCORES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: it is written by the test of task=pretrain, adapt_session "
            "or evaluate (runs older than this file have none; re-score the checkpoint with "
            "task=evaluate task.checkpoints=[<run>/checkpoints/last.ckpt]).")
    with np.load(path, allow_pickle=False) as f:
        ids = f["unit_ids"]
        groups = sorted({k.split("/")[0] for k in f.files if "/" in k})
        out = {}
        for group in groups:
            sums = {name: f[f"{group}/{name}"] for name in _SUMS}
            used = sums["cells"] > 0
            out[group] = {"ids": ids[used], **{name: v[used] for name, v in sums.items()}}
    return out


def _aligned(a: dict, b: dict, group: str, names: tuple[str, str]) -> np.ndarray:
    """Indices into ``b`` of ``a``'s units; refuses runs that did not score the same cells."""
    where = {u: i for i, u in enumerate(b["ids"])}
    missing = [str(u) for u in a["ids"] if u not in where]
    if missing or len(a["ids"]) != len(b["ids"]):
        raise ValueError(
            f"{names[0]} and {names[1]} scored different units in '{group}' "
            f"({len(a['ids'])} and {len(b['ids'])}; e.g. {missing[:3]} only in {names[0]}): "
            "compare runs tested on the same recordings.")
    order = np.array([where[u] for u in a["ids"]], dtype=np.int64)
    for name in ("spikes", "cells"):
        if not np.array_equal(a[name], b[name][order]):
            raise ValueError(
                f"{names[0]} and {names[1]} scored different cells in '{group}' ({name} differ): "
                "compare runs tested with the same data options, data.eval_seed and masking.")
    return order


def compare_unit_scores(run_a: str | Path, run_b: str | Path,
                        **kwargs) -> dict[str, dict[str, float]]:
    """Co-bps of two runs on the same cells and A minus B with its bootstrap interval.

    Args:
        run_a: run folder (or its ``test_unit_scores.npz``) of A.
        run_b: the same for B.
        **kwargs: ``n_boot``, ``level``, ``seed`` of the bootstrap.

    Returns:
        ``{group: {"a", "b", "delta", "ci_low", "ci_high"}}`` for every group both scored
        (``all`` and the masking modes), in bits per spike.
    """
    a, b = read_unit_scores(run_a), read_unit_scores(run_b)
    out = {}
    for group in (g for g in a if g in b):
        order = _aligned(a[group], b[group], group, (str(run_a), str(run_b)))
        ga, gb = a[group], {k: v[order] for k, v in b[group].items()}
        delta, low, high = paired_log_likelihood_difference(
            ga["model_ll"], gb["model_ll"], ga["spikes"], **kwargs)
        out[group] = {
            "a": float(co_bps_from_sums(*(torch.as_tensor(ga[n]) for n in _SUMS))),
            "b": float(co_bps_from_sums(*(torch.as_tensor(gb[n]) for n in _SUMS))),
            "delta": delta, "ci_low": low, "ci_high": high,
        }
    return out
