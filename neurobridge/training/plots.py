"""Figures saved to the run folder after masked pretraining and after alignment."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.fabric.utilities.apply_func import move_data_to_device  # noqa: E402

from neurobridge.alignment.neural_embeddings import mean_test_embeddings  # noqa: E402
from neurobridge.data import open_image_source  # noqa: E402
from neurobridge.data.collate import collate  # noqa: E402
from neurobridge.masking import MASKING_MODES  # noqa: E402

__all__ = ["save_pretraining_plots", "plot_loss_curves", "plot_masked_rates", "plot_retrieval"]


def save_pretraining_plots(module, dm, run_dir: Path) -> list[Path]:
    """Write ``loss_curves.png`` and ``masked_rates.png`` into ``run_dir``; return the paths."""
    paths = []
    metrics_csv = Path(run_dir) / "logs" / "metrics.csv"
    if metrics_csv.exists():
        paths.append(plot_loss_curves(metrics_csv, Path(run_dir) / "loss_curves.png"))
    paths.append(plot_masked_rates(module, dm, Path(run_dir) / "masked_rates.png"))
    return paths


def plot_loss_curves(metrics_csv: Path, out: Path, smooth: int = 10) -> Path:
    """Left: training loss per masking mode (moving average over ``smooth`` logged points) and
    the validation loss; right: the learning curve, validation co-bps (R² for values) per mode
    and pooled against the step."""
    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    fig, (ax, curve) = plt.subplots(1, 2, figsize=(12, 4))
    for mode in MASKING_MODES:
        key = f"train/loss/{mode}"
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        if not pts:
            continue
        steps, vals = map(np.asarray, zip(*pts))
        k = min(smooth, len(vals))
        ax.plot(steps[k - 1:], np.convolve(vals, np.ones(k) / k, mode="valid"), label=mode)
    val = [(int(r["step"]), float(r["val/loss"])) for r in rows if r.get("val/loss")]
    if val:
        ax.plot(*zip(*val), "k--o", label="validation (all modes)", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("masked loss")
    ax.set_title("Masked reconstruction loss per mode")
    ax.legend()
    name = "co_bps" if any(r.get("val/co_bps") for r in rows) else "r2"
    for mode, style in [*((m, "-o") for m in MASKING_MODES), (None, "k--o")]:
        key = f"val/{name}/{mode}" if mode else f"val/{name}"
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        if pts:
            curve.plot(*zip(*pts), style, label=mode or "pooled", markersize=3)
    curve.axhline(0.0, color="grey", linewidth=0.8)
    curve.set_xlabel("step")
    curve.set_ylabel("validation co-bps" if name == "co_bps" else "validation R²")
    curve.set_title("Learning curve (validation split)")
    if curve.lines[1:]:
        curve.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


@torch.no_grad()
def plot_masked_rates(module, dm, out: Path) -> Path:
    """Predicted vs true vs observed activity of the masked units of one neuron-mode test window."""
    index = next(i for i in dm.eval_sampler("test") if i.mode == "neuron")
    batch = collate([dm.dataset[index]])
    module.eval()
    batch = move_data_to_device(batch, module.device)
    pred = module(batch)[0]
    q = batch["query_mask"][0]
    qb, qu = batch["query_bin"][0][q].cpu(), batch["query_unit"][0][q].cpu()
    units = torch.unique(qu)
    n_bins = int(batch["grid"].shape[-1])
    col = {int(u): i for i, u in enumerate(units)}
    grids = {k: np.full((len(units), n_bins), np.nan) for k in ("pred", "true", "obs")}
    spiking = module.is_spiking
    pred_v = pred[q].float().cpu()
    grids["pred"][[col[int(u)] for u in qu], qb] = (pred_v.exp() if spiking else pred_v).numpy()
    grids["true"][[col[int(u)] for u in qu], qb] = batch["true_target"][0][q].cpu().numpy()
    grids["obs"][[col[int(u)] for u in qu], qb] = batch["target"][0][q].cpu().numpy()
    unit = "expected count / bin" if spiking else "value"
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    shown = np.concatenate([grids["true"].ravel(), grids["pred"].ravel()])
    vmax = np.nanpercentile(shown, 99)
    # values (MUA, z-scored spike values) can be negative: their colour scale starts lower
    vmin = 0.0 if spiking else np.nanpercentile(shown, 1)
    titles = {"pred": "predicted (masked units)", "true": "ground truth", "obs": "observed"}
    for ax, key in zip(axes, ("pred", "true", "obs")):
        im = ax.imshow(grids[key], aspect="auto", cmap="magma",
                       vmin=None if key == "obs" and not spiking else vmin,
                       vmax=None if key == "obs" else vmax, interpolation="nearest")
        ax.set_title(titles[key])
        ax.set_xlabel(f"time bin ({dm.bin_size * 1000:.0f} ms)")
        fig.colorbar(im, ax=ax, label=unit if key != "obs" else ("count" if spiking else "value"))
    axes[0].set_ylabel("masked unit")
    fig.suptitle(f"{index.recording_id}, window at {index.start:.1f} s, neuron masking")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out



@torch.no_grad()
def plot_retrieval(module, dm, out: Path, *, n_queries: int = 8, k: int = 5) -> Path:
    """For ``n_queries`` test images: the image shown, then the ``k`` test images whose CLIP
    embeddings are closest to the neural embedding (repeats averaged); hits framed in green."""
    module.eval()
    ids, neural = mean_test_embeddings(module.model, dm, module.device)
    first, n = module.split_rows["test"]
    candidates = torch.nn.functional.normalize(module.image_embeddings[first : first + n], dim=-1)
    candidate_ids = dm.image_ids[first : first + n]
    ranking = (neural @ candidates.T).argsort(dim=1, descending=True)[:, :k].cpu()
    source = open_image_source(dm.images)
    rows = np.unique(np.linspace(0, len(ids) - 1, min(n_queries, len(ids))).round().astype(int))
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.4 * (k + 1), 1.5 * len(rows)),
                             squeeze=False)
    for ax_row, r in zip(axes, rows):
        shown = [ids[r]] + [candidate_ids[int(j)] for j in ranking[r]]
        for col, (ax, image_id) in enumerate(zip(ax_row, shown)):
            ax.imshow(source.load(image_id))
            ax.set_xticks([])
            ax.set_yticks([])
            hit = col > 0 and image_id == ids[r]
            for side in ax.spines.values():
                side.set_color("limegreen" if hit else "black")
                side.set_linewidth(3 if hit else 0.5)
    axes[0, 0].set_title("shown", fontsize=9)
    for col in range(1, k + 1):
        axes[0, col].set_title(f"top {col}", fontsize=9)
    fig.suptitle(f"Retrieval among {n} test images from neural activity", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
