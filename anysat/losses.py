"""Downstream losses, by the names the fine-tuning configs use.

=================  ==================================================================================
``bce``            ``BCEWithLogits`` (mean) on multi-hot targets (TreeSatAI, PASTIS classification).
``ce``             cross-entropy on class indices (Planted; the official one-hot float targets give
                   the same value, and one-hot targets are accepted here too).
``ce_ignore``      cross-entropy ignoring label -1 (BraDD, SICKLE, Pangaea datasets); logits
                   ``(B, K, H, W)`` are handled per pixel.
``ce_weighted``    cross-entropy with class weight 0 for the **last** class, 1 for the others
                   (PASTIS void, FLAIR "other"). PyTorch's weighted mean divides by the summed weights
                   of the targets, so this equals the mean CE over the pixels of the other classes.
                   Label -1 (store fill value) is ignored as well; the official loss has no such
                   pixels, so nothing changes for it.
=================  ==================================================================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOSSES", "TaskLoss", "build_loss"]

LOSSES = ("bce", "ce", "ce_ignore", "ce_weighted")


class TaskLoss(nn.Module):
    def __init__(self, name: str, num_classes: int):
        super().__init__()
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; choose from {LOSSES}")
        self.name, self.num_classes = name, int(num_classes)
        weight = None
        if name == "ce_weighted":
            weight = torch.ones(self.num_classes)
            weight[-1] = 0.0
        # a buffer so .to(device) moves it; not persistent: it is a function of the name
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.name == "bce":
            return F.binary_cross_entropy_with_logits(logits.float(), target.float())
        if target.dim() == logits.dim() and target.is_floating_point():  # one-hot targets
            target = target.argmax(1)
        target = target.long()
        if self.name == "ce":
            return F.cross_entropy(logits.float(), target)
        counted = target >= 0
        if self.weight is not None:
            counted &= self.weight[target.clamp_min(0)] > 0
        if not bool(counted.any()):
            # a batch with nothing to learn from (all void): PyTorch would return 0/0 = NaN
            return logits.float().sum() * 0.0
        return F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=-1)


def build_loss(name: str, num_classes: int) -> TaskLoss:
    return TaskLoss(name, num_classes)
