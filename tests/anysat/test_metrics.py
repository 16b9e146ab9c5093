"""Downstream metrics and losses against values worked out by hand on tiny cases,
and against torchmetrics' own classes where a standard definition exists."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anysat.losses import build_loss
from anysat.metrics import TaskMetrics, segmentation_scores


def _onehot_logits(pred: list[int], k: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(pred), k).float() * 5.0


def test_multiclass_hand_computed():
    # truth 0 0 1 1 2, prediction 0 1 1 1 0, K = 4 (class 3 never occurs)
    # class 0: tp 1 fp 1 fn 1 -> F1 1/2; class 1: tp 2 fp 1 -> 4/5; class 2: fn 1 -> 0
    m = TaskMetrics("multiclass", 4)
    m.update(_onehot_logits([0, 1, 1, 1, 0], 4), torch.tensor([0, 0, 1, 1, 2]))
    s = m.compute()
    assert s["f1_macro"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)     # classes 0..2 present
    assert s["f1_macro_paper"] == pytest.approx((0.5 + 0.8) / 4)     # official: mean over all K
    assert s["f1_micro"] == pytest.approx(0.6)
    assert s["oa"] == pytest.approx(0.6)
    assert s["f1_weighted"] == pytest.approx((0.5 * 2 + 0.8 * 2) / 5)
    pc = m.per_class()
    assert pc["support"].tolist() == [2, 2, 1, 0]
    assert pc["f1"].tolist() == pytest.approx([0.5, 0.8, 0.0, 0.0])
    assert m.confusion_matrix().tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_multiclass_onehot_targets_and_accumulation():
    # the official Planted loader gives one-hot targets; two updates = one big update
    m = TaskMetrics("multiclass", 4)
    m.update(_onehot_logits([0, 1], 4), F.one_hot(torch.tensor([0, 0]), 4).float())
    m.update(_onehot_logits([1, 1, 0], 4), torch.tensor([1, 1, 2]))
    assert m.compute()["oa"] == pytest.approx(0.6)


def test_multilabel_hand_computed():
    # targets / predictions (sigmoid > 0.5; logit 0 -> 0.5 is NOT positive)
    t = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 0, 0]])
    logits = torch.tensor([[3.0, -2.0, 0.0], [-1.0, 2.0, 1.0], [4.0, 0.1, -3.0]])
    # label 0: tp 2 -> F1 1; label 1: tp 1 fp 1 -> 2/3; label 2: tp 1 fn 1 -> 2/3
    m = TaskMetrics("multilabel", 3)
    m.update(logits, t)
    s = m.compute()
    assert s["f1_macro"] == pytest.approx(7 / 9)
    assert s["f1_micro"] == pytest.approx(8 / 10)                    # tp 4, fp 1, fn 1
    assert s["f1_weighted"] == pytest.approx((2 * 1 + 1 * 2 / 3 + 2 * 2 / 3) / 5)
    assert s["oa"] == pytest.approx(7 / 9)                           # (tp + tn) / (3 x 3)
    assert "f1_macro_paper" not in s                                 # identical to f1_macro here
    assert m.confusion_matrix() is None


def test_segmentation_conventions_hand_computed():
    # K = 3, the dataset ignores label 2 (the last class, as PASTIS void / FLAIR other)
    truth = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    pred = torch.tensor([[[0, 1, 1], [2, 2, 0]]])
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    m = TaskMetrics("segmentation", 3, ignore_index=2, conventions=("pastis", "pangaea", "sickle"))
    m.update(logits, truth)
    # confusion (rows truth): [[1,1,0],[0,1,1],[1,0,1]]
    assert m.confusion_matrix().tolist() == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    s = m.compute()
    # standard: drop truth row 2 -> class 0 IoU 1/2 (tp1 fn1), class 1 IoU 1/3 (tp1 fp1 fn1)
    assert s["miou"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert s["oa"] == pytest.approx(2 / 4)
    # paper: zero last row AND column -> [[1,1,0],[0,1,0],[0,0,0]] -> IoU 1/2, 1/2, NaN
    assert s["miou_paper"] == pytest.approx(0.5)
    assert s["oa_paper"] == pytest.approx(2 / 3)
    # Pangaea: every class tp1 fp1 fn1 -> IoU 1/3 (minus eps), P = R = F1 = 1/2, mAcc = OA = 3/6
    assert s["miou_pangaea"] == pytest.approx(1 / 3, abs=1e-5)
    assert s["mf1_pangaea"] == pytest.approx(0.5, abs=1e-5)
    assert s["macc_pangaea"] == pytest.approx(0.5)
    assert s["jaccard"] == pytest.approx(1 / 3)                       # nothing is -1 here

    from torchmetrics.classification import MulticlassJaccardIndex

    ref = MulticlassJaccardIndex(3, average="macro", ignore_index=2)(pred, truth)
    assert s["miou"] == pytest.approx(float(ref))


def test_segmentation_paper_and_standard_differ_on_predicted_void():
    # predicting the void class on a valid pixel: an error for `miou`, invisible to `miou_paper`
    truth = torch.tensor([[[0, 1]]])
    pred = torch.tensor([[[0, 2]]])
    s = segmentation_scores(torch.tensor([[1, 0, 0], [0, 0, 1], [0, 0, 0]]), 2, ("pastis",))
    assert s["miou"] == pytest.approx(0.5)          # class 0: 1, class 1: 0
    assert s["miou_paper"] == pytest.approx(1.0)    # the void column is zeroed; class 1 drops out (0/0)
    m = TaskMetrics("segmentation", 3, ignore_index=2, conventions=("pastis",))
    m.update(F.one_hot(pred, 3).permute(0, 3, 1, 2).float(), truth)
    assert m.compute() == s


def test_bradd_and_sickle():
    # BraDD: IoU of class 1 only. truth 0 1 1 0, pred 1 1 0 0 -> class 1: tp1 fp1 fn1 -> 1/3
    m = TaskMetrics("segmentation", 2, conventions=("bradd",))
    m.update(F.one_hot(torch.tensor([[[1, 1, 0, 0]]]), 2).permute(0, 3, 1, 2).float(),
             torch.tensor([[[0, 1, 1, 0]]]))
    assert m.compute()["iou_fg"] == pytest.approx(1 / 3)
    # SICKLE: -1 pixels are ignored; class 0: tp1 fn1 -> 1/2, class 1: fp1 -> 0; macro 1/4
    truth, pred = torch.tensor([[[0, -1, 0]]]), torch.tensor([[[0, 0, 1]]])
    m = TaskMetrics("segmentation", 2, conventions=("sickle",))
    m.update(F.one_hot(pred, 2).permute(0, 3, 1, 2).float(), truth)
    s = m.compute()
    from torchmetrics.classification import MulticlassJaccardIndex

    assert s["jaccard"] == pytest.approx(0.25)
    assert s["jaccard"] == pytest.approx(float(MulticlassJaccardIndex(2, ignore_index=-1)(pred, truth)))


def test_unknown_convention():
    with pytest.raises(ValueError, match="convention"):
        segmentation_scores(torch.eye(2), None, ("nope",))


def test_agrees_with_torchmetrics_on_random_data():
    from torchmetrics.classification import MulticlassF1Score, MultilabelF1Score

    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(200, 7, generator=g), torch.randint(0, 6, (200,), generator=g)  # class 6 absent
    m = TaskMetrics("multiclass", 7)
    for a, b in zip(logits.split(64), target.split(64)):
        m.update(a, b)
    s = m.compute()
    for avg in ("macro", "micro", "weighted"):
        assert s[f"f1_{avg}"] == pytest.approx(float(MulticlassF1Score(7, average=avg)(logits, target)), abs=1e-6)
    none = MulticlassF1Score(7, average="none")(logits, target)
    assert s["f1_macro_paper"] == pytest.approx(float(none.mean()), abs=1e-6)

    logits, target = torch.randn(100, 5, generator=g), torch.randint(0, 2, (100, 5), generator=g)
    m = TaskMetrics("multilabel", 5)
    m.update(logits, target)
    s = m.compute()
    for avg in ("macro", "micro", "weighted"):
        assert s[f"f1_{avg}"] == pytest.approx(float(MultilabelF1Score(5, average=avg)(logits, target)), abs=1e-6)


# ------------------------------------------------------------------------------------- losses
def test_losses():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 3, 3, generator=g)
    target = torch.randint(0, 4, (2, 3, 3), generator=g)
    target[0, 0, 0] = 3
    # ce_weighted = mean CE over the pixels that are not of the last class
    keep = target != 3
    per_px = F.cross_entropy(logits, target, reduction="none")
    assert float(build_loss("ce_weighted", 4)(logits, target)) == pytest.approx(float(per_px[keep].mean()), rel=1e-6)
    # ce_ignore drops label -1
    t2 = target.clone()
    t2[1] = -1
    ref = F.cross_entropy(logits[0:1], target[0:1])
    assert float(build_loss("ce_ignore", 4)(logits, t2)) == pytest.approx(float(ref), rel=1e-6)
    # all-void batch: 0, not NaN, and still differentiable
    void = torch.full((2, 3, 3), 3)
    lw = logits.clone().requires_grad_()
    loss = build_loss("ce_weighted", 4)(lw, void)
    loss.backward()
    assert float(loss.detach()) == 0.0 and lw.grad is not None
    # ce: one-hot targets (official Planted) == class indices
    x, y = torch.randn(5, 6, generator=g), torch.randint(0, 6, (5,), generator=g)
    ce = build_loss("ce", 6)
    assert float(ce(x, F.one_hot(y, 6).float())) == pytest.approx(float(ce(x, y)))
    # bce: mean over all entries
    t = torch.randint(0, 2, (5, 6), generator=g)
    assert float(build_loss("bce", 6)(x, t)) == pytest.approx(
        float(torch.mean(-(t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x)))), rel=1e-6)
    with pytest.raises(ValueError):
        build_loss("focal", 3)
    assert not math.isnan(float(build_loss("ce_ignore", 4)(logits, torch.full((2, 3, 3), -1))))
