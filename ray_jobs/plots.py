"""Figures and tables the jobs log to MLflow: input previews, confusion matrices, per-class scores,
prediction grids, and the evaluation report that bundles them.

Figures are built on :class:`matplotlib.figure.Figure` directly, not through ``pyplot``: no GUI
backend is needed on a headless worker, no global figure registry has to be cleaned up, and
importing this module changes no process-wide matplotlib setting. Matplotlib itself is imported when
the first figure is drawn: every training worker imports this module, and only rank 0 ever plots.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ray_jobs.finetune_config import ResolvedTask
from ray_jobs.plan import DataPlan
from ray_jobs.tracking import Tracker

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["per_class_table", "confusion_figure", "per_class_figure", "prediction_grid", "preview_figure",
           "log_evaluation", "log_preview"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ tables
def per_class_table(per_class: dict[str, torch.Tensor], classes: list[str]) -> tuple[str, str]:
    """(CSV, Markdown) with one row per class: support, precision, recall, F1, IoU."""
    cols = ["support", "precision", "recall", "f1", "iou"]
    vals = {c: per_class[c].double().cpu().numpy() for c in cols}
    csv = io.StringIO()
    csv.write("class," + ",".join(cols) + "\n")
    md = ["| class | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for i, name in enumerate(classes):
        row = [f"{int(vals['support'][i])}"] + [f"{vals[c][i]:.4f}" for c in cols[1:]]
        csv.write('"' + name.replace('"', "'") + '",' + ",".join(row) + "\n")
        md.append(f"| {name} | " + " | ".join(row) + " |")
    return csv.getvalue(), "\n".join(md) + "\n"


# ----------------------------------------------------------------------------------------- figures
def _figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def confusion_figure(conf: torch.Tensor, classes: list[str], title: str = "") -> Figure:
    """Row-normalised confusion matrix (rows = truth); counts in the title."""
    c = conf.double().cpu().numpy()
    norm = c / np.maximum(c.sum(1, keepdims=True), 1)
    k = len(classes)
    size = max(4.0, 0.22 * k + 2)
    fig = _figure((size + 1, size))
    ax = fig.subplots()
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues", interpolation="nearest")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    fs = 7 if k <= 20 else 5
    ax.set_xticklabels(classes, rotation=90, fontsize=fs)
    ax.set_yticklabels(classes, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if c[i, j]:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=5,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(f"{title} ({int(c.sum())} samples/pixels, row-normalised)", fontsize=8)
    fig.tight_layout()
    return fig


def per_class_figure(per_class: dict[str, torch.Tensor], classes: list[str], title: str = "") -> Figure:
    """Precision, recall and F1 bars per class (multi-label tasks have no confusion matrix)."""
    k = len(classes)
    fig = _figure((max(5, 0.3 * k + 2), 3.5))
    ax = fig.subplots()
    w = 0.27
    for i, name in enumerate(("precision", "recall", "f1")):
        ax.bar(np.arange(k) + (i - 1) * w, per_class[name].double().cpu().numpy(), w, label=name)
    ax.set_xticks(range(k))
    ax.set_xticklabels(classes, rotation=90, fontsize=6)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def _rgb(img: np.ndarray) -> np.ndarray:
    """(C, H, W) or (T, C, H, W) -> displayable (H, W, 3): first date, first three bands (or the
    first band as grey), 2-98 % stretch."""
    img = img[0] if img.ndim == 4 else img
    img = img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, axis=0)
    img = np.moveaxis(img, 0, -1)
    lo, hi = np.percentile(img, [2, 98]) if img.size > 1 else (img.min(), img.max() + 1)
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def prediction_grid(samples: list, classes: list[str], ignore_index: int | None = None, title: str = "") -> Figure:
    """Rows = samples: input (first sensor, first date, first 3 bands), truth, prediction; one
    discrete colour per class, pixels with label outside [0, K) or = ignore_index shown white."""
    import matplotlib
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    k = len(classes)
    base = matplotlib.colormaps["tab20" if k <= 20 else "gist_ncar"].resampled(k)
    cmap = ListedColormap([base(i) for i in range(k)])
    cmap.set_bad("white")
    n = len(samples)
    fig = _figure((7, 2.3 * n))
    axes = fig.subplots(n, 3, squeeze=False)
    for r, (pred, true, x) in enumerate(samples):
        key = next(iter(x))
        axes[r, 0].imshow(_rgb(x[key].numpy()), interpolation="nearest")
        axes[r, 0].set_ylabel(key, fontsize=7)
        bad = (true < 0) | (true >= k) | ((true == ignore_index) if ignore_index is not None else False)
        axes[r, 1].imshow(np.ma.masked_array(true, bad), cmap=cmap, vmin=-0.5, vmax=k - 0.5, interpolation="nearest")
        axes[r, 2].imshow(np.ma.masked_array(pred, np.zeros_like(bad)), cmap=cmap, vmin=-0.5, vmax=k - 0.5,
                          interpolation="nearest")
        acc = float((pred[~bad] == true[~bad]).mean()) if (~bad).any() else float("nan")
        axes[r, 2].set_title(f"pixel acc {acc:.2f}", fontsize=7)
        for a in axes[r]:
            a.set_xticks([])
            a.set_yticks([])
    axes[0, 0].set_title("input", fontsize=8)
    axes[0, 1].set_title("truth", fontsize=8)
    present = sorted({int(v) for _, t, _ in samples for v in np.unique(t) if 0 <= v < k})
    handles = [Rectangle((0, 0), 1, 1, color=cmap(i)) for i in present]
    fig.legend(handles, [classes[i] for i in present], loc="lower center", ncol=4, fontsize=6, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return fig


def preview_figure(x: dict[str, torch.Tensor], plan: DataPlan, n: int = 4) -> Figure:
    """One row per sensor, ``n`` samples of a collated batch: first valid date, first three bands."""
    keys = list(plan.sensors)
    b = int(next(iter(x.values())).shape[0])
    n = min(n, b)
    fig = _figure((2.2 * n, 2.2 * len(keys)))
    axes = fig.subplots(len(keys), n, squeeze=False)
    for r, key in enumerate(keys):
        v = x[key].float().cpu().numpy()
        for c in range(n):
            axes[r, c].imshow(_rgb(v[c]), interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if c == 0:
                axes[r, c].set_ylabel(f"{key}\n{tuple(v.shape[1:])}", fontsize=7)
    fig.suptitle(f"{plan.name}: batch {b}, normalised inputs", fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------- logging
def log_preview(tracker: Tracker, x: dict[str, torch.Tensor], plan: DataPlan) -> None:
    """``previews/<dataset>.png``; a plot must never stop training, so a failure is a warning."""
    try:
        tracker.log_figure(preview_figure(x, plan), f"previews/{plan.name}.png")
    except Exception as e:  # noqa: BLE001
        log.warning("preview plot for %s failed: %s", plan.name, e)


def log_evaluation(tracker: Tracker, task: ResolvedTask, split: str, stats: torch.Tensor,
                   per_class: dict[str, torch.Tensor], samples: list, scalars: dict[str, float]) -> dict[str, Any]:
    """Tables + plots of one evaluation to ``evaluation/<split>/``: per-class CSV, raw confusion counts,
    a Markdown report, the confusion matrix (multi-label: per-class bars) and, for segmentation, a
    prediction grid. Returns the tables. A plot that fails is a warning, never fatal (the metrics are
    already logged)."""
    csv, md = per_class_table(per_class, task.classes)
    head = "\n".join(f"- `{k}`: {v:.4f}" for k, v in sorted(scalars.items()))
    tracker.log_text(csv, f"evaluation/{split}/per_class.csv")
    if task.kind != "multilabel":  # the raw counts: any other metric can be derived from them later
        cm = stats.long().cpu().numpy()
        tracker.log_text("\n".join(",".join(str(int(v)) for v in row) for row in cm) + "\n",
                         f"evaluation/{split}/confusion_matrix.csv")
    tracker.log_text(f"# {task.dataset} / {task.label} — {split}\n\n{head}\n\n{md}", f"evaluation/{split}/report.md")
    title = f"{task.dataset}/{task.label} {split}"
    try:
        if task.kind == "multilabel":
            tracker.log_figure(per_class_figure(per_class, task.classes, title), f"evaluation/{split}/per_class.png")
        else:
            tracker.log_figure(confusion_figure(stats, task.classes, title),
                               f"evaluation/{split}/confusion_matrix.png")
        if task.kind == "segmentation" and samples:
            tracker.log_figure(prediction_grid(samples, task.classes, task.ignore_index, title),
                               f"evaluation/{split}/predictions.png")
    except Exception as e:  # noqa: BLE001
        log.warning("evaluation plots failed: %s", e)
    return {"csv": csv, "markdown": md}
