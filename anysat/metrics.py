"""Downstream metrics, standard definitions plus the paper-comparable variants.

Everything is computed from *sufficient statistics* accumulated with torchmetrics — a confusion
matrix (multi-class tiles, segmentation pixels) or per-label stat scores (multi-label tiles) — so the
numbers are exact over a whole split, and under DDP ``compute()`` sums the statistics of all ranks
(torchmetrics syncs its states when ``torch.distributed`` is initialised) before deriving anything.

Metric names (the ``val/<name>`` / ``test/<name>`` keys the fine-tuning service logs):

=========================  =========================================================================
classification (tile)
``f1_macro``               torchmetrics macro F1. Multi-class: mean over classes present in the truth
                           or the predictions; multi-label: mean over all labels.
``f1_macro_paper``         multi-class only: mean of the per-class F1 over **all** K classes (absent
                           classes count as 0), what the official ``MetricsMonoModal`` logs as
                           ``F1_Score_macro`` (mean of ``average='none'``). Equal to ``f1_macro`` for
                           multi-label, so not repeated there.
``f1_micro``               micro F1 (multi-class: equals ``oa``).
``f1_weighted``            per-class F1 weighted by the class support.
``oa``                     multi-class: accuracy; multi-label: element-wise (Hamming) accuracy.
segmentation (pixels)
``miou``                   mean IoU over the classes present in truth or prediction, pixels whose
                           label is the dataset's ignore value (or -1) left out; predicting the
                           ignored class on a valid pixel is an error (torchmetrics
                           ``MulticlassJaccardIndex(ignore_index=...)``).
``oa``, ``f1_macro``       pixel accuracy and macro F1 on the same pixels.
``miou_paper``/``oa_paper``  PASTIS/FLAIR convention of the official ``IoU`` metric: confusion
                           matrix over all pixels, then the **last class's row and column** are zeroed
                           (``ignore_index=-1`` used as a numpy index), so pixels labelled *or
                           predicted* as the last class are dropped; nan-mean of the IoUs.
``miou_pangaea``, ``mf1_pangaea``, ``macc_pangaea``  Pangaea ``SegPangaea`` (Sen1Floods11, BurnScars,
                           SpaceNet7): IoU_c = TP/(TP+FP+FN+1e-6), F1_c = 2PR/(P+R+1e-6), means over
                           **all** classes; ``macc`` is overall pixel accuracy despite its name.
``iou_fg``                 BraDD: IoU of class 1 (foreground) only.
``jaccard``                SICKLE: torchmetrics ``JaccardIndex(task='multiclass', ignore_index=-1)``
                           macro average (= ``miou`` with only -1 ignored).
=========================  =========================================================================

All values are fractions in [0, 1] (the paper prints percentages). Per-class arrays (``iou``, ``f1``,
``precision``, ``recall``, ``support``) come from :meth:`TaskMetrics.per_class`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix, MultilabelStatScores

__all__ = [
    "TaskMetrics", "multiclass_scores", "multilabel_scores", "segmentation_scores", "per_class_from_confusion",
    "per_class_from_stats", "PAPER_CONVENTIONS",
]

PAPER_CONVENTIONS = ("pastis", "pangaea", "bradd", "sickle")
"""Which paper-comparable segmentation metrics to add: ``pastis`` (also FLAIR) -> ``miou_paper``,
``oa_paper``; ``pangaea`` -> ``*_pangaea``; ``bradd`` -> ``iou_fg``; ``sickle`` -> ``jaccard``."""


def _div(a: Tensor, b: Tensor) -> Tensor:
    """a / b with 0 where b == 0 (torchmetrics' ``zero_division=0``)."""
    a, b = a.double(), b.double()
    return torch.where(b > 0, a / b.clamp_min(1e-300), torch.zeros_like(a))


# ----------------------------------------------------------------------------- from statistics
def per_class_from_confusion(conf: Tensor) -> dict[str, Tensor]:
    """Per-class tp/fp/fn, precision, recall, F1, IoU and support of a confusion matrix
    (rows = truth, columns = prediction); 0 where undefined."""
    conf = conf.double()
    tp = conf.diagonal()
    fp = conf.sum(0) - tp
    fn = conf.sum(1) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "support": tp + fn,
            "precision": _div(tp, tp + fp), "recall": _div(tp, tp + fn),
            "f1": _div(2 * tp, 2 * tp + fp + fn), "iou": _div(tp, tp + fp + fn)}


def per_class_from_stats(stats: Tensor) -> dict[str, Tensor]:
    """Per-label scores from torchmetrics multi-label stat scores ``(K, 5)`` = tp, fp, tn, fn, support."""
    s = stats.double()
    tp, fp, tn, fn = s[:, 0], s[:, 1], s[:, 2], s[:, 3]
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "support": tp + fn,
            "precision": _div(tp, tp + fp), "recall": _div(tp, tp + fn),
            "f1": _div(2 * tp, 2 * tp + fp + fn), "iou": _div(tp, tp + fp + fn)}


def multiclass_scores(conf: Tensor) -> dict[str, float]:
    """Tile-level multi-class metrics from a ``K×K`` confusion matrix."""
    pc = per_class_from_confusion(conf)
    tp, fp, fn, sup = pc["tp"], pc["fp"], pc["fn"], pc["support"]
    present = (tp + fp + fn) > 0  # torchmetrics macro leaves out classes absent from truth and prediction
    total = sup.sum()
    return {
        "f1_macro": float(pc["f1"][present].mean()) if present.any() else 0.0,
        "f1_macro_paper": float(pc["f1"].mean()),
        "f1_micro": float(_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
        "f1_weighted": float(_div((pc["f1"] * sup).sum(), total)),
        "oa": float(_div(tp.sum(), total)),
    }


def multilabel_scores(stats: Tensor) -> dict[str, float]:
    """Tile-level multi-label metrics from stat scores ``(K, 5)`` (sigmoid > 0.5 predictions)."""
    pc = per_class_from_stats(stats)
    tp, fp, tn, fn, sup = pc["tp"], pc["fp"], pc["tn"], pc["fn"], pc["support"]
    return {
        "f1_macro": float(pc["f1"].mean()),
        "f1_micro": float(_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
        "f1_weighted": float(_div((pc["f1"] * sup).sum(), sup.sum())),
        "oa": float(_div((tp + tn).sum(), (tp + fp + tn + fn).sum())),
    }


def segmentation_scores(conf: Tensor, ignore_index: int | None = None,
                        conventions: tuple[str, ...] | list[str] = ()) -> dict[str, float]:
    """Pixel metrics from a ``K×K`` confusion matrix over every pixel whose label is in ``[0, K)``.

    ``ignore_index``: label value left out of the standard metrics (its row is dropped; its column
    stays, so predicting it is an error). ``conventions``: paper-comparable extras (see module doc).
    """
    conf = conf.double()
    k = conf.shape[0]
    std = conf.clone()
    keep = torch.ones(k, dtype=torch.bool)
    if ignore_index is not None and 0 <= ignore_index < k:
        std[ignore_index] = 0
        keep[ignore_index] = False
    pc = per_class_from_confusion(std)
    present = ((pc["tp"] + pc["fp"] + pc["fn"]) > 0) & keep
    total = std.sum()
    out = {
        "miou": float(pc["iou"][present].mean()) if present.any() else 0.0,
        "oa": float(_div(pc["tp"].sum(), total)),
        "f1_macro": float(pc["f1"][present].mean()) if present.any() else 0.0,
    }
    for conv in conventions:
        if conv not in PAPER_CONVENTIONS:
            raise ValueError(f"unknown metric convention {conv!r}; choose from {PAPER_CONVENTIONS}")
        if conv == "pastis":
            # official IoU(ignore_index=-1): numpy index -1 zeroes the LAST class's row and column
            z = conf.clone()
            z[-1, :] = 0
            z[:, -1] = 0
            tp = z.diagonal()
            union = z.sum(0) + z.sum(1) - tp
            iou = tp / union  # 0/0 = NaN drops out of the nan-mean, as in the official code
            out["miou_paper"] = float(torch.nanmean(iou)) if torch.isfinite(iou).any() else 0.0
            out["oa_paper"] = float(_div(tp.sum(), z.sum()))
        elif conv == "pangaea":
            tp = conf.diagonal()
            fp, fn = conf.sum(0) - tp, conf.sum(1) - tp
            p, r = tp / (tp + fp + 1e-6), tp / (tp + fn + 1e-6)
            out["miou_pangaea"] = float((tp / (tp + fp + fn + 1e-6)).mean())
            out["mf1_pangaea"] = float((2 * p * r / (p + r + 1e-6)).mean())
            out["macc_pangaea"] = float(_div(tp.sum(), conf.sum()))
        elif conv == "bradd":
            out["iou_fg"] = float(per_class_from_confusion(conf)["iou"][1])
        elif conv == "sickle":
            full = per_class_from_confusion(conf)
            pres = (full["tp"] + full["fp"] + full["fn"]) > 0
            out["jaccard"] = float(full["iou"][pres].mean()) if pres.any() else 0.0
    return out


# ----------------------------------------------------------------------------- accumulator
Kind = Literal["multilabel", "multiclass", "segmentation"]


class TaskMetrics(torch.nn.Module):
    """Accumulates predictions of one task over a split and derives the metrics.

    ``update(logits, target)``:

    * ``multilabel``: logits ``(B, K)``, target multi-hot ``(B, K)``; prediction = sigmoid > 0.5.
    * ``multiclass``: logits ``(B, K)``, target class index ``(B,)`` (or one-hot ``(B, K)``: argmax,
      as the official Planted loader).
    * ``segmentation``: logits ``(B, K, H, W)``, target ``(B, H, W)``; pixels with labels outside
      ``[0, K)`` (the -1 fill) are never counted.

    The state lives in torchmetrics metrics, so under DDP ``compute()`` returns the all-rank numbers
    (every rank must call it: it is a collective).
    """

    def __init__(self, kind: Kind, num_classes: int, ignore_index: int | None = None,
                 conventions: tuple[str, ...] | list[str] = ()):
        super().__init__()
        if kind not in ("multilabel", "multiclass", "segmentation"):
            raise ValueError(f"unknown task kind {kind!r}")
        self.kind, self.num_classes = kind, int(num_classes)
        self.ignore_index, self.conventions = ignore_index, tuple(conventions)
        if kind == "multilabel":
            self.stat = MultilabelStatScores(num_labels=self.num_classes, threshold=0.5, average=None,
                                             multidim_average="global", validate_args=False)
        else:
            # ignore_index is applied in compute (standard) or not at all (paper conventions), so
            # the matrix keeps every in-range label; out-of-range labels are filtered in update.
            self.stat = MulticlassConfusionMatrix(num_classes=self.num_classes, validate_args=False)

    def reset(self) -> None:
        self.stat.reset()

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        logits = logits.detach().float()
        if self.kind == "multilabel":
            self.stat.update(torch.sigmoid(logits), target.long())
            return
        pred = logits.argmax(1)
        if self.kind == "multiclass" and target.dim() == 2:
            target = target.argmax(1)
        target = target.long()
        valid = (target >= 0) & (target < self.num_classes)
        self.stat.update(pred[valid], target[valid])

    def statistics(self) -> Tensor:
        """The synced sufficient statistics (confusion matrix ``K×K`` or stat scores ``K×5``)."""
        return self.stat.compute()

    def compute(self) -> dict[str, float]:
        s = self.statistics()
        if self.kind == "multilabel":
            return multilabel_scores(s)
        if self.kind == "multiclass":
            return multiclass_scores(s)
        return segmentation_scores(s, self.ignore_index, self.conventions)

    def per_class(self, stats: Tensor | None = None) -> dict[str, Tensor]:
        s = self.statistics() if stats is None else stats
        return per_class_from_stats(s) if self.kind == "multilabel" else per_class_from_confusion(s)

    def confusion_matrix(self) -> Tensor | None:
        """``K×K`` (rows = truth) for multi-class/segmentation; None for multi-label."""
        return None if self.kind == "multilabel" else self.statistics()
