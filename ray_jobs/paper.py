"""The AnySat paper's downstream experiments as a typed table, and the paper-shaped results table.

:data:`EXPERIMENTS` lists the 16 downstream experiments of the paper that the eleven datasets of this
project cover, one per config ``configs/finetune/<name>.yaml``: the official experiment it reproduces,
the dataset and task, FT / LP / LP+, and the metric the paper reports, under the name this project
logs it (``test/<metric>``; the paper-comparable variants of ``anysat.metrics``):

==========================  ===============================================================
metric                      what it is
==========================  ===============================================================
``f1_weighted``             TreeSatAI-TS: per-class F1 weighted by support (multi-label)
``f1_macro``                PASTIS-HD classification: mean per-class F1 over the 18 labels
``f1_macro_paper``          PLANTED: mean F1 over all 40 classes (absent classes count as 0)
``miou_paper``              PASTIS-HD / FLAIR segmentation: the official IoU (last class dropped)
``iou_fg``                  BraDD-S1TS: IoU of the deforestation class only
``jaccard``                 SICKLE: torchmetrics Jaccard, macro over paddy / non-paddy
``miou_pangaea``            Sen1Floods11, HLS Burn Scars: PANGAEA's mIoU over both classes
``oa``                      So2Sat, TimeSen2Crop: overall accuracy
==========================  ===============================================================

``paper`` holds the paper's number where this project has it, in percent, else ``None`` (rendered as
``n/a``); ``python -m ray_jobs.sweep --paper-numbers FILE`` supplies or overrides them from a YAML/JSON
mapping ``{experiment: value}`` without a code change. PASTIS-HD experiments use the 5-fold protocol
(``folds=True``).

:func:`render_table` turns per-run results into the paper-shaped markdown table: one row per dataset
and task, our mean ± std over seeds and folds for FT beside LP (or LP+), each beside the paper's number.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping

__all__ = ["PaperEntry", "EXPERIMENTS", "RunResult", "Summary", "summarize", "render_table", "entry_for"]


@dataclass(frozen=True)
class PaperEntry:
    experiment: str
    """Config name in ``configs/finetune/`` (``<dataset>-<task>-<ft|lp|lpplus>``)."""
    official: str
    """The official experiment config it reproduces (``configs/exp/<official>.yaml`` of AnySat)."""
    dataset: str
    row: str
    """Table row: dataset and task (FT and LP of one task share it)."""
    mode: str
    """``ft``, ``lp`` or ``lpplus``."""
    metric: str
    """Logged metric name without ``test/``."""
    metric_label: str
    paper: float | None = None
    """The paper's number (percent), ``None`` where not recorded."""
    folds: bool = False
    """PASTIS-HD: the 5-fold protocol (train 3 folds, validate on one, test on one, rotating)."""


def _e(experiment: str, official: str, row: str, metric: str, label: str, folds: bool = False) -> PaperEntry:
    dataset, mode = experiment.split("-")[0], experiment.rsplit("-", 1)[1]
    dataset = {"treesatai": "treesatai-ts", "pastis": "pastis-hd", "bradd": "bradd-s1ts",
               "hls": "hls-burn-scars"}.get(dataset, dataset)
    return PaperEntry(experiment, official, dataset, row, mode, metric, label, None, folds)


EXPERIMENTS: dict[str, PaperEntry] = {e.experiment: e for e in (
    _e("treesatai-ts-cls-ft", "TSAITS_AnySat_FT", "TreeSatAI-TS, tree genus (multi-label)", "f1_weighted",
       "weighted F1"),
    _e("pastis-hd-cls-ft", "Pastis_AnySat_FT", "PASTIS-HD, crop types (multi-label)", "f1_macro", "macro F1",
       folds=True),
    _e("pastis-hd-semseg-ft", "Pastis_AnySat_FT_SemSeg", "PASTIS-HD, semantic segmentation", "miou_paper", "mIoU",
       folds=True),
    _e("pastis-hd-semseg-lp", "Pastis_AnySat_LP_SemSeg", "PASTIS-HD, semantic segmentation", "miou_paper", "mIoU",
       folds=True),
    _e("flair-semseg-ft", "FLAIR_AnySat_FT_SemSeg", "FLAIR, land cover segmentation", "miou_paper", "mIoU"),
    _e("planted-cls-ft", "Planted_AnySat_FT", "PLANTED, tree species", "f1_macro_paper", "macro F1"),
    _e("bradd-s1ts-semseg-ft", "BraDD_AnySat_FT", "BraDD-S1TS, deforestation", "iou_fg", "IoU (deforested)"),
    _e("bradd-s1ts-semseg-lp", "BraDD_AnySat_LP", "BraDD-S1TS, deforestation", "iou_fg", "IoU (deforested)"),
    _e("sickle-semseg-ft", "Sickle_AnySat_FT", "SICKLE, paddy", "jaccard", "IoU (Jaccard)"),
    _e("sickle-semseg-lp", "Sickle_AnySat_LP", "SICKLE, paddy", "jaccard", "IoU (Jaccard)"),
    _e("sen1floods11-semseg-lp", "Sen1Floods_AnySat_LP", "Sen1Floods11, flood", "miou_pangaea", "mIoU"),
    _e("so2sat-cls-lp", "So2Sat_AnySat_LP", "So2Sat LCZ42, climate zones", "oa", "OA"),
    _e("timesen2crop-cls-ft", "TS2C_AnySat_FT", "TimeSen2Crop, crop types", "oa", "OA"),
    _e("timesen2crop-cls-lp", "TS2C_AnySat_LP", "TimeSen2Crop, crop types", "oa", "OA"),
    _e("hls-burn-scars-semseg-ft", "BurnScars_AnySat_FT", "HLS Burn Scars, burn scars", "miou_pangaea", "mIoU"),
    _e("hls-burn-scars-semseg-lpplus", "BurnScars_AnySat_LP+", "HLS Burn Scars, burn scars", "miou_pangaea",
       "mIoU"),
)}


def entry_for(experiment: str, dataset: str, mode: str, metric: str) -> PaperEntry:
    """The catalogue entry of ``experiment``, or one for a config outside the paper's list (a
    ``-tiny`` test config): its own row, its monitored metric, no paper number."""
    if experiment in EXPERIMENTS:
        return EXPERIMENTS[experiment]
    row = experiment.removesuffix("-tiny").rsplit("-", 1)[0]
    return PaperEntry(experiment, "-", dataset, row, mode, metric, metric)


@dataclass(frozen=True)
class RunResult:
    """One child run of a sweep."""

    experiment: str
    seed: int
    fold: int | None
    run_id: str | None
    value: float | None
    """``test/<metric>`` (a fraction); ``None`` when the run failed or logged no test metric."""
    status: str


@dataclass(frozen=True)
class Summary:
    mean: float | None
    std: float | None
    n: int
    failed: int

    def cell(self) -> str:
        if self.mean is None:
            return f"failed ({self.failed})" if self.failed else "–"
        s = f"{100 * self.mean:.1f}"
        if self.std is not None:
            s += f" ± {100 * self.std:.1f}"
        s += f" (n={self.n}" + (f", {self.failed} failed)" if self.failed else ")")
        return s


def summarize(results: Iterable[RunResult]) -> dict[str, Summary]:
    """Experiment -> mean ± sample std (ddof 1; none for a single run) over its seeds and folds."""
    by: dict[str, list[RunResult]] = {}
    for r in results:
        by.setdefault(r.experiment, []).append(r)
    out = {}
    for name, rs in by.items():
        vals = [r.value for r in rs if r.value is not None and math.isfinite(r.value)]
        out[name] = Summary(statistics.fmean(vals) if vals else None,
                            statistics.stdev(vals) if len(vals) > 1 else None, len(vals), len(rs) - len(vals))
    return out


def _paper_cell(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def render_table(entries: Mapping[str, PaperEntry], summaries: Mapping[str, Summary],
                 paper: Mapping[str, float] | None = None) -> str:
    """The paper-shaped markdown table (values in percent): one row per dataset/task, FT beside LP or
    LP+, ours beside the paper's. ``paper`` overrides :attr:`PaperEntry.paper` per experiment."""
    paper = dict(paper or {})
    rows: dict[str, dict[str, PaperEntry]] = {}
    for name in summaries:
        e = entries[name]
        rows.setdefault(e.row, {})["ft" if e.mode == "ft" else "lp"] = e
    lines = ["| dataset, task | metric | FT (ours) | FT (paper) | LP / LP+ (ours) | LP / LP+ (paper) |",
             "|---|---|---|---|---|---|"]
    for row, modes in rows.items():
        cells = []
        for m in ("ft", "lp"):
            e = modes.get(m)
            if e is None:
                cells += ["", ""]
                continue
            tag = "LP+ " if e.mode == "lpplus" else ""
            cells += [tag + summaries[e.experiment].cell(), _paper_cell(paper.get(e.experiment, e.paper))]
        metric = next(iter(modes.values())).metric_label
        folds = " (5-fold)" if any(e.folds for e in modes.values()) else ""
        lines.append(f"| {row}{folds} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
