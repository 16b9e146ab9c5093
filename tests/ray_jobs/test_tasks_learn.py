"""Evidence that every task kind learns: on the planted-signal sample stores (``pipelines/samplegen``), a
hub-tiny AnySat fine-tuned for a few dozen steps scores far above what chance allows on a held-out split.

One fit per case, in this process: the task library of the fine-tuning service (``load_encoder``,
``build_task_model`` with the config's mode, ``collate``, the loss, ``run_evaluation`` and its metrics),
fed by the service's own read function (``ReadRange``: crops, temporal sub-sampling, labels) without Ray
Train or Ray Data, whose start-up would cost more than the fits; ``tests/ray_jobs/test_finetune.py`` runs
the same library under Ray Train. Stores are built with the real pipeline (sample generator + ingest).

Thresholds, on the held-out split, and why none can be reached by chance. "Label-blind" means a predictor
whose output does not depend on the test tile's label (it ignores the input, or reads it without having
learned the planted relation). Segmentation bounds are exact and computed from the test labels in the test
(``best_fixed_map_*``, checked against brute force in ``test_chance_bounds_are_exact``): no predictor that
ignores its input, even one tuned on the test labels themselves, can exceed them.

* **TreeSatAI-TS FT, multi-label (15 genera), 24 test tiles:** micro F1 >= 0.5 and >= the best constant
  label set's micro F1 + 0.25. An input-independent predictor outputs one label set for every tile; the
  best of all 2^15 sets for these test labels is the bound (about 0.3 here).
* **PLANTED FT, multi-class (40 species), 50 test tiles:** Pearson r(true, predicted class index) >= 0.6.
  The 40 classes differ by small steps of one spectral ratio, so exact-class accuracy is low even for an
  ideal classifier on sample data, but the predicted class must track the true one. Labels are i.i.d.
  uniform and independent of the training tiles; for a label-blind predictor r·sqrt(n-2)/sqrt(1-r²)
  follows Student's t with 48 degrees of freedom, and r >= 0.6 means t >= 5.2: p < 2e-6.
* **So2Sat LCZ42 FT, multi-class (17 LCZ), 26 test tiles, at most 2 per class:** OA >= 0.5 (13 hits). A
  label-blind predictor expects at most 2 hits (the largest class count: the pairing of predictions and
  labels is then a random permutation); the number of hits of a random matching is close to Poisson, and
  P(Poisson(2) >= 13) < 2e-7.
* **TimeSen2Crop FT, multi-class (16; 4 in the sample), 64 test pixels, 16 per class:** OA >= 0.6 (39
  hits). A label-blind predictor expects at most 16 hits, with a standard deviation below 3.5: 39 hits is
  more than 6.5 standard deviations above, p < 1e-9.
* **PASTIS-HD FT, segmentation (20 classes), 4 test tiles (64 x 64 px centre windows):** pixel OA >= the
  best fixed map's OA + 0.15. The best fixed map puts the majority test label at every position: the exact
  maximum OA of any predictor that ignores its input.
* **BraDD-S1TS FT, segmentation (2), 5 test tiles (48 x 48 px):** IoU of "deforested" >= 0.5 and >= the
  best fixed map's IoU + 0.3 (the exact maximum over every fixed binary map: a threshold on the per-pixel
  positive rate, ``best_fixed_map_iou``).
* **Sen1Floods11 LP, segmentation (2), linear probing, 2 test chips (128 x 128 px windows):** IoU of
  "water" >= 0.6 and >= the best fixed map's IoU + 0.2; the encoder stays bit-identical.
* **HLS Burn Scars LP+, segmentation (2), 6 test scenes (128 x 128 px windows):** IoU of "burn scar"
  >= 0.6 and >= the best fixed map's IoU + 0.2; the encoder weights (without an ``hls`` projector) load
  through ``encoder.source: official``, and only the new ``hls`` projector and the head change.

Every case also scores the untrained model on the same split and requires the trained one to beat it. The
sample generators plant signals that a few dozen steps can pick up (per-class spectral signatures on top
of the archives' own conventions; see each generator's docstring); the whole module runs in about
2.5 minutes on two cores.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
import torch

from anysat import AnySat
from ray_jobs.data import ReadRange, collate, stream_items
from ray_jobs.finetune_config import FinetuneConfig, resolve_task
from ray_jobs.plan import resolve_plans
from ray_jobs.task import build_task_model, eval_batches, load_encoder, run_evaluation, targets_from_batch

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
WARMUP = 10
"""Linear learning-rate warm-up steps (a transformer from scratch diverges at full rate on step 1)."""


@dataclass
class Case:
    dataset: str
    tiles: int
    entry: dict[str, Any]
    task: dict[str, Any]
    steps: int
    lr: float
    check: Callable[[dict], None]
    """Asserts on the fit's result (see ``_fit``)."""
    mode: str = "ft"
    test: str = "test"
    eval_crop: dict[str, int] | None = None
    """Test-time centre window per sensor (None: the training crop)."""
    official_tiny: bool = False
    """Encoder from a tiny official-layout state dict without the task's sensors (LP+)."""
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- bounds
def best_fixed_map_oa(labels: np.ndarray, ignore: int | None) -> float:
    """Pixel accuracy of the best input-independent segmentation: the majority label at each position
    over the test tiles (pixels labelled ``ignore`` or -1 left out)."""
    valid = labels >= 0 if ignore is None else (labels >= 0) & (labels != ignore)
    k = int(labels.max()) + 1
    counts = np.stack([((labels == c) & valid).sum(0) for c in range(k)])
    return float(counts.max(0).sum() / max(1, valid.sum()))


def best_fixed_map_iou(labels: np.ndarray, cls: int = 1) -> float:
    """IoU of class ``cls`` of the best input-independent binary segmentation, exactly: a fixed map M
    (the same for every test tile) scores TP / (TP + FP + FN) = sum_M a / (A + sum_M (n - a)), with a_p
    the tiles labelled ``cls`` at pixel p, n_p the tiles with a valid label there and A = sum a. The ratio
    is maximised by a threshold on a_p / n_p (Dinkelbach), so scanning the sorted ratios finds the optimum;
    a randomised fixed map scores a mean of fixed maps' IoUs, so no more."""
    valid = labels >= 0
    a = ((labels == cls) & valid).sum(0).ravel().astype(np.float64)
    n = valid.sum(0).ravel().astype(np.float64)
    keep = n > 0
    a, n = a[keep], n[keep]
    order = np.argsort(-(a / n), kind="stable")
    tp, extra = np.cumsum(a[order]), np.cumsum((n - a)[order])
    return float(np.max(tp / (a.sum() + extra))) if a.sum() else 0.0


def best_constant_set_f1(labels: np.ndarray) -> float:
    """Micro F1 of the best single label set predicted for every tile (all 2^K sets tried)."""
    n, k = labels.shape
    pos = labels.sum(0)
    best = 0.0
    for r in range(1, k + 1):
        for s in itertools.combinations(range(k), r):
            tp = pos[list(s)].sum()
            best = max(best, 2 * tp / (r * n + labels.sum()))
    return float(best)


# ----------------------------------------------------------------------------------------------- fit
def _train_batches(plan, label: str, seed: int):
    """Endless training batches of ``plan.split``, read as the training streams read them."""
    reader = ReadRange(plan, plan.split, True, seed, label=label)
    buf, n, epoch = [], 0, 0
    while True:
        for item in stream_items(plan, plan.split, True, 0, 1, seed, epoch):
            blk = reader.read_item(item)
            if len(blk["tile"]):
                buf.append(blk)
                n += len(blk["tile"])
            while n >= plan.batch_size:
                cat = {k: np.concatenate([b[k] for b in buf]) for k in buf[0]}
                yield {k: v[:plan.batch_size] for k, v in cat.items()}
                buf, n = [{k: v[plan.batch_size:] for k, v in cat.items()}], n - plan.batch_size
        epoch += 1


def _labels_of(plan, split: str, label: str) -> np.ndarray:
    return np.concatenate([b["label"] for b in eval_batches(plan, split, label, 0, 1, 0, 64)])


def _fit(case: Case, root, tmp_path) -> dict:
    encoder: dict[str, Any] = {"source": "scratch"}
    if case.official_tiny:  # weights of an encoder that never saw the task's sensors
        torch.manual_seed(1)
        path = tmp_path / "AnySat.pth"
        torch.save({"state_dict": AnySat.from_size("tiny", sensors=["s2"]).state_dict()}, path)
        encoder = {"source": "official", "uri": str(path)}
    cfg = FinetuneConfig.model_validate({
        "name": case.dataset, "num_workers": 1, "use_gpu": False, "storage_path": str(tmp_path), "mode": case.mode,
        "model": {"size": "tiny"}, "encoder": encoder, "seed": 0,
        "data": {"root": str(root), "datasets": [{"name": case.dataset, **case.entry}]}, "task": case.task,
        "optim": {"lr": case.lr, "weight_decay": 0.0}})
    plan = resolve_plans(cfg)[case.dataset]
    task = resolve_task(cfg, plan)
    torch.manual_seed(0)
    module = build_task_model(load_encoder(cfg, list(plan.sensors)), task, cfg.mode != "ft",
                              train_new=cfg.mode == "lpplus")
    start = {k: v.detach().clone() for k, v in module.state_dict().items()}
    test_plan = plan if case.eval_crop is None else plan.replace(crop=case.eval_crop)
    kw = dict(rank=0, world=1, device=CPU, seed=0, prefix="test")
    before, _, _ = run_evaluation(module, test_plan, task, case.test, **kw)

    opt = torch.optim.AdamW(module.trainable_parameters(), lr=case.lr, weight_decay=0.0, fused=True)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / WARMUP))
    batches = _train_batches(plan, task.label, 0)
    for _ in range(case.steps):
        raw = next(batches)
        x, pad = collate(raw, plan)
        module.train()
        loss = module.criterion(module(x, pad_mask=pad), targets_from_batch(raw, task))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        warmup.step()

    after, metrics, _ = run_evaluation(module, test_plan, task, case.test, **kw)
    return {"after": after, "before": before, "metrics": metrics, "task": task, "module": module, "start": start,
            "labels": _labels_of(test_plan, case.test, task.label)}


# -------------------------------------------------------------------------------------------- checks
def _seg_check(margin: float) -> Callable[[dict], None]:
    """Multi-class segmentation: pixel OA >= the best fixed map's OA + ``margin``."""
    def check(r: dict) -> None:
        after, before, task = r["after"], r["before"], r["task"]
        bound = best_fixed_map_oa(r["labels"], task.ignore_index)
        assert after["test/oa"] >= bound + margin, (after, bound)
        assert after["test/oa"] > before["test/oa"], (after, before)
    return check


def _fg_check(threshold: float, margin: float) -> Callable[[dict], None]:
    """Binary segmentation: IoU of class 1 >= ``threshold`` and >= the best fixed map's IoU + ``margin``."""
    def check(r: dict) -> None:
        iou = float(r["metrics"].per_class()["iou"][1])
        bound = best_fixed_map_iou(r["labels"])
        assert (r["labels"] == 1).any() and (r["labels"] == 0).any()
        assert iou >= threshold and iou >= bound + margin, (iou, bound, r["after"])
        assert r["after"]["test/miou"] > r["before"]["test/miou"], (r["after"], r["before"])
    return check


def _oa_check(threshold: float):
    def check(r: dict) -> None:
        assert r["after"]["test/oa"] >= threshold, r["after"]
        assert r["after"]["test/oa"] > r["before"]["test/oa"], (r["after"], r["before"])
    return check


def _multilabel_check(r: dict) -> None:
    bound = best_constant_set_f1(r["labels"].astype(np.int64))
    f1 = r["after"]["test/f1_micro"]
    assert f1 >= 0.5 and f1 >= bound + 0.25, (f1, bound, r["after"])
    assert f1 > r["before"]["test/f1_micro"]


def _planted_check(r: dict) -> None:
    cm = r["metrics"].confusion_matrix().cpu().numpy()
    t, p = np.nonzero(cm)
    w = cm[t, p]
    corr = np.cov(t, p, aweights=w)[0, 1] / np.sqrt(np.cov(t, aweights=w) * np.cov(p, aweights=w))
    assert cm.sum() >= 50 and corr >= 0.6, (corr, r["after"])


def _lp_check(inner):
    def check(r: dict) -> None:
        inner(r)
        sd = r["module"].state_dict()
        assert all(torch.equal(sd[k], v) for k, v in r["start"].items() if k.startswith("net.encoder."))
    return check


def _lpplus_check(inner):
    def check(r: dict) -> None:
        inner(r)
        sd, start = r["module"].state_dict(), r["start"]
        changed = {k for k, v in start.items() if not torch.equal(sd[k], v)}
        assert changed and all(k.startswith(("net.head.", "net.encoder.projector_hls.")) for k in changed), changed
        assert any(k.startswith("net.encoder.projector_hls.") for k in changed)
    return check


CASES = {
    "treesatai-ts-ft-multilabel": Case(
        "treesatai-ts", 160, {"sensors": ["s2"], "batch_size": 32, "patch_sizes_m": [60]},
        {"label": "genus", "patch_size_m": 60}, steps=50, lr=5e-4, check=_multilabel_check),
    "planted-ft-multiclass": Case(
        "planted", 400, {"sensors": ["s2"], "batch_size": 16, "patch_sizes_m": [30]},
        {"label": "species", "patch_size_m": 30}, steps=60, lr=1e-3, check=_planted_check),
    "so2sat-ft-multiclass": Case(
        "so2sat", 120, {"sensors": ["s2"], "batch_size": 32, "crop": {"s2": 8}},
        {"label": "lcz"}, steps=30, lr=1e-3, check=_oa_check(0.5)),
    "timesen2crop-ft-multiclass": Case(
        "timesen2crop", 256, {"batch_size": 64, "allow_filled_bands": ["s2/B8"]},
        {"label": "crop"}, steps=20, lr=1e-3, check=_oa_check(0.6)),
    "pastis-hd-ft-segmentation": Case(
        "pastis-hd", 20, {"sensors": ["s2"], "batch_size": 2, "crop": {"s2": 32}, "date_origin": "2018-09-01"},
        {"label": "semantic", "patch_size_m": 40, "output_modality": "s2"}, steps=40, lr=1e-3,
        check=_seg_check(margin=0.15), eval_crop={"s2": 64}),
    "bradd-s1ts-ft-segmentation": Case(
        "bradd-s1ts", 18, {"batch_size": 4, "crop": {"s1": 24}},
        {"label": "deforest_new", "loss": "ce_ignore"}, steps=50, lr=1e-3, check=_fg_check(0.5, 0.3),
        eval_crop={}),
    "sen1floods11-lp-segmentation": Case(
        "sen1floods11", 12, {"sensors": ["s2"], "batch_size": 2, "crop": {"s2": 32}},
        {"label": "water", "loss": "ce_ignore"}, steps=50, lr=5e-3, mode="lp", check=_lp_check(_fg_check(0.6, 0.2)),
        eval_crop={"s2": 128}),
    "hls-burn-scars-lpplus-segmentation": Case(
        "hls-burn-scars", 24, {"batch_size": 2, "crop": {"hls": 48}},
        {"label": "burn", "loss": "ce_ignore"}, steps=50, lr=1e-3, mode="lpplus", official_tiny=True,
        check=_lpplus_check(_fg_check(0.6, 0.2)), eval_crop={"hls": 128}),
}


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    """Builds each case's sample store on first use (generator + real ingest)."""
    from pipelines.ingest import run_ingest
    from pipelines.samplegen import get_generator

    root = tmp_path_factory.mktemp("learn-stores")
    made: set[str] = set()

    def get(case: Case):
        if case.dataset not in made:
            raw = tmp_path_factory.mktemp(f"raw-{case.dataset}")
            get_generator(case.dataset)(str(raw), tiles=case.tiles, seed=0)
            run_ingest(case.dataset, str(raw), str(root), executor="local", progress=False)
            made.add(case.dataset)
        return root
    return get


@pytest.mark.parametrize("name", list(CASES))
def test_task_learns(name, store_root, tmp_path):
    case = CASES[name]
    result = _fit(case, store_root(case), tmp_path)
    case.check(result)


def test_chance_bounds_are_exact():
    """The fixed-map bounds equal a brute-force search over every fixed map on small label stacks."""
    rng = np.random.default_rng(0)
    for trial in range(30):
        labels = rng.integers(-1, 2, size=(3, 2, 3)) if trial % 2 else rng.integers(0, 2, size=(2, 2, 3))
        valid = labels >= 0
        best_iou, best_oa = 0.0, 0.0
        for bits in itertools.product([0, 1], repeat=6):
            pred = np.broadcast_to(np.array(bits).reshape(2, 3).astype(bool), labels.shape)
            y = labels == 1
            tp, fp, fn = (pred & y & valid).sum(), (pred & ~y & valid).sum(), (~pred & y).sum()
            best_iou = max(best_iou, tp / (tp + fp + fn) if tp + fp + fn else 0.0)
            best_oa = max(best_oa, ((pred == y) & valid).sum() / valid.sum())
        assert best_fixed_map_iou(labels) == pytest.approx(best_iou, abs=1e-12)
        assert best_fixed_map_oa(labels, None) == pytest.approx(best_oa, abs=1e-12)
    multi = rng.integers(0, 2, size=(6, 4))
    brute = max(2 * multi[:, list(s)].sum() / (len(s) * 6 + multi.sum())
                for r in range(1, 5) for s in itertools.combinations(range(4), r))
    assert best_constant_set_f1(multi) == pytest.approx(brute)
