"""Evaluate a fine-tuned model on a split (default: test) and log everything to MLflow.

    python -m ray_jobs.evaluate --config configs/finetune/<experiment>.yaml [--set key=value ...] \\
        [--checkpoint <run folder | checkpoint folder | state.pt>] [--split test] [--weights best|last]

The model is rebuilt from the fine-tuning checkpoint alone (architecture read off its tensors); by
default the latest checkpoint of ``<storage_path>/<name>`` and its best-validation weights. Metrics
(``<split>/<metric>``, anysat.metrics), a confusion-matrix plot (row-normalised; multi-label tasks:
per-class bars) and its raw counts (CSV), a grid of input / truth / prediction maps (segmentation)
and the per-class table (CSV + Markdown) go to the fine-tuning run's MLflow run (the run id stored in
the checkpoint), under ``evaluation/<split>/``. The same logging runs at the end of every fine-tuning job.

Runs in this process, no Ray cluster needed: tiles are read with the training service's read
function (``ray_jobs.data.ReadRange``, evaluation crops) exactly as the fine-tuning job's evaluation.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ray_jobs.config import entrypoint_parser, setup_logging

__all__ = ["main", "log_evaluation", "confusion_figure", "per_class_figure", "prediction_grid", "per_class_table"]

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless workers
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------------------- tables
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


# ------------------------------------------------------------------------------------------ plots
def confusion_figure(conf: torch.Tensor, classes: list[str], title: str = ""):
    """Row-normalised confusion matrix (rows = truth); counts in the title."""
    plt = _plt()
    c = conf.double().cpu().numpy()
    norm = c / np.maximum(c.sum(1, keepdims=True), 1)
    k = len(classes)
    size = max(4.0, 0.22 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
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


def per_class_figure(per_class: dict[str, torch.Tensor], classes: list[str], title: str = ""):
    plt = _plt()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * k + 2), 3.5))
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
    img = img[0] if img.ndim == 4 else img  # first date of a time series
    img = img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, axis=0)
    img = np.moveaxis(img, 0, -1)
    lo, hi = np.percentile(img, [2, 98])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def prediction_grid(samples: list, classes: list[str], ignore_index: int | None = None, title: str = ""):
    """Rows = samples: input (first sensor, first date, first 3 bands), truth, prediction; one
    discrete colour per class, pixels with label outside [0, K) or = ignore_index shown white."""
    plt = _plt()
    from matplotlib.colors import ListedColormap

    k = len(classes)
    base = plt.get_cmap("tab20" if k <= 20 else "gist_ncar", k)
    cmap = ListedColormap([base(i) for i in range(k)])
    cmap.set_bad("white")
    n = len(samples)
    fig, axes = plt.subplots(n, 3, figsize=(7, 2.3 * n), squeeze=False)
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
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in present]
    fig.legend(handles, [classes[i] for i in present], loc="lower center", ncol=4, fontsize=6, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return fig


def log_evaluation(tracker, task, split: str, stats: torch.Tensor, per_class: dict, samples: list,
                   scalars: dict[str, float]) -> dict[str, str]:
    """Plots + per-class table of one evaluation to ``evaluation/<split>/``; returns the tables.
    A plot that fails is logged as a warning, never fatal (the metrics are already logged)."""
    plt = _plt()
    csv, md = per_class_table(per_class, task.classes)
    head = "\n".join(f"- `{k}`: {v:.4f}" for k, v in sorted(scalars.items()))
    tracker.log_text(csv, f"evaluation/{split}/per_class.csv")
    if task.kind != "multilabel":  # the raw counts: any other metric can be derived from them later
        cm = stats.long().cpu().numpy()
        tracker.log_text("\n".join(",".join(str(int(v)) for v in row) for row in cm) + "\n",
                         f"evaluation/{split}/confusion_matrix.csv")
    tracker.log_text(f"# {task.dataset} / {task.label} — {split}\n\n{head}\n\n{md}", f"evaluation/{split}/report.md")
    title = f"{task.dataset}/{task.label} {split}"
    figs = []
    try:
        if task.kind == "multilabel":
            figs.append((per_class_figure(per_class, task.classes, title), "per_class.png"))
        else:
            figs.append((confusion_figure(stats, task.classes, title), "confusion_matrix.png"))
        if task.kind == "segmentation" and samples:
            figs.append((prediction_grid(samples, task.classes, task.ignore_index, title), "predictions.png"))
        for fig, name in figs:
            tracker.log_figure(fig, f"evaluation/{split}/{name}")
    except Exception as e:  # noqa: BLE001 - plots are a convenience
        log.warning("evaluation plots failed: %s", e)
    finally:
        for fig, _ in figs:
            plt.close(fig)
    return {"csv": csv, "markdown": md}


# ------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    p = entrypoint_parser("python -m ray_jobs.evaluate", __doc__, "the fine-tuning config (configs/finetune/*.yaml)")
    p.add_argument("--checkpoint", default=None,
                   help="run folder, checkpoint folder or state.pt (default: <storage_path>/<name>)")
    p.add_argument("--split", default=None, help="split to evaluate (default: eval.test_split)")
    p.add_argument("--weights", choices=("best", "last"), default="best",
                   help="best validation weights (if recorded) or the checkpoint's last weights")
    p.add_argument("--no-mlflow", action="store_true", help="print only, log nothing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    from ray_jobs.config import ConfigError
    from ray_jobs.data import has_split
    from ray_jobs.finetune import load_finetuned, model_from_state, prepare, run_evaluation

    try:
        cfg, plan, task, splits = prepare(args.config, args.overrides)
        split = args.split or cfg.eval.test_split
        if split is None or not has_split(plan, split):
            raise ValueError(f"split {split!r} not in the store (splits: {splits})")
        ck = load_finetuned(args.checkpoint or f"{cfg.storage_path.rstrip('/')}/{cfg.name}", cfg.storage_options,
                            task, args.weights)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    task, step, state_file = ck["task"], ck["step"], ck["file"]
    split_arg, split = split, split if isinstance(split, str) else "test"  # metric prefix of a list: test
    model = model_from_state(ck["state"], task)
    attention = cfg.encoder.attention or cfg.model.kwargs.get("attention")
    if attention:
        model.encoder.set_attention(attention)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.use_gpu else "cpu")
    model.to(device)

    scalars, metrics, samples = run_evaluation(model, plan, task, split_arg, rank=0, world=1, device=device,
                                               seed=cfg.seed, keep_samples=8, prefix=split)
    stats, per_class = metrics.statistics(), metrics.per_class()
    csv, md = per_class_table(per_class, task.classes)
    print(f"{task.dataset}/{task.label} {split} ({args.weights} weights, step {step}, {state_file}):")
    for k, v in sorted(scalars.items()):
        print(f"  {k}: {v:.4f}")
    print(md)
    run_id = ck["run_id"]
    if not args.no_mlflow and cfg.mlflow.enabled and run_id:
        from ray_jobs.tracking import Tracker

        from mlflow import MlflowClient

        status = MlflowClient(cfg.mlflow.tracking_uri).get_run(run_id).info.status
        tracker = Tracker(cfg.mlflow.tracking_uri, run_id)  # marks the run RUNNING while it logs
        tracker.log_metrics(scalars, step)
        log_evaluation(tracker, task, split, stats, per_class, samples, scalars)
        tracker.set_tags({f"anysat.evaluated.{split}": args.weights})
        tracker.client.set_terminated(run_id, status=status)  # back to its status before
        print(f"logged to MLflow run {run_id} at {cfg.mlflow.tracking_uri}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(main())
