"""Task heads for fine-tuning and linear probing, as the official fine-tuning networks build them.

* :class:`TileClassifier` — ``LayerNorm(D) → Linear(D, K)`` on the tile token (classification,
  multi-label or multi-class; the loss decides).
* :class:`DenseSegmenter` — ``LayerNorm(2D) → Linear(2D, K·π²)`` on every sub-patch of the encoder's
  ``output="dense"`` features, reassembled into a ``B × K × (H'·π) × (W'·π)`` logit map. ``π``
  (``proj_size``) > 1 lets one sub-patch token predict a π×π block of finer pixels (FLAIR: 2 m
  tokens → 10×10 blocks of 0.2 m pixels). Inside a sub-patch the output vector is ordered
  (row, col, class), as in the official head.
* :class:`TaskModel` — encoder + head; ``freeze_encoder=True`` is linear probing, and with
  ``train_modules`` (the new projectors) the official LP+ (``freeze_new``).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

__all__ = ["TileClassifier", "DenseSegmenter", "TaskModel"]


class TileClassifier(nn.Module):
    """``LayerNorm(D) → Linear(D, K)`` on the tile token ``(B, D)`` → logits ``(B, K)``."""

    encoder_output = "tile"

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.linear = nn.Linear(embed_dim, num_classes)
        self.num_classes = num_classes

    def forward(self, tile: Tensor) -> Tensor:
        return self.linear(self.norm(tile))


class DenseSegmenter(nn.Module):
    """Per-sub-patch linear head on dense features.

    Input: channels-last dense features ``(B, H', W', 2D)`` (the encoder's ``output="dense"``,
    channels = [patch token ‖ sub-patch feature]). Output: logits ``(B, K, H'·π, W'·π)``, where
    output pixel ``(y·π + a, x·π + b)`` of class ``c`` comes from entry ``(a·π + b)·K + c`` of the linear
    output at feature cell ``(y, x)``.
    """

    encoder_output = "dense"

    def __init__(self, embed_dim: int, num_classes: int, proj_size: int = 1) -> None:
        super().__init__()
        if proj_size < 1:
            raise ValueError("proj_size must be >= 1")
        self.num_classes = num_classes
        self.proj_size = proj_size
        self.norm = nn.LayerNorm(2 * embed_dim)
        self.linear = nn.Linear(2 * embed_dim, num_classes * proj_size * proj_size)

    def forward(self, dense: Tensor) -> Tensor:
        b, h, w, _ = dense.shape
        p, k = self.proj_size, self.num_classes
        out = self.linear(self.norm(dense)).reshape(b, h, w, p, p, k)
        return out.permute(0, 5, 1, 3, 2, 4).reshape(b, k, h * p, w * p)


class TaskModel(nn.Module):
    """An AnySat encoder followed by a head.

    ``freeze_encoder=True`` (linear probing): encoder parameters get ``requires_grad=False``, the
    encoder is kept in eval mode whatever ``.train()`` says, and it runs under ``torch.no_grad()``, so
    only the head learns and the encoder weights stay bit-identical. (Deviation: the official LP
    leaves the frozen encoder in train mode, so its LTAE dropout stays active; here features are
    deterministic.) With ``freeze_encoder=False`` the whole model is fine-tuned.

    ``train_modules`` (names of encoder sub-modules, e.g. ``["projector_hls"]``) are left trainable
    and follow ``.train()`` while the rest of the encoder is frozen and in eval mode: the official LP+
    (``freeze_new``), which trains the projectors of sensors the pretrained encoder did not have, and
    the head. The frozen encoder then runs with autograd, so gradients reach those projectors.

    The encoder output mode comes from the head's ``encoder_output`` (``"tile"`` or ``"dense"``).
    ``output_modality`` selects the dense modality (official default: first input modality).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, freeze_encoder: bool = False,
                 patch_size: int | None = None, output_modality: str | None = None,
                 train_modules: Iterable[str] = ()) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.freeze_encoder = bool(freeze_encoder)
        self.patch_size = patch_size
        self.output_modality = output_modality
        self.encoder_output = getattr(head, "encoder_output", "tile")
        self.train_modules = tuple(train_modules)
        if self.train_modules and not self.freeze_encoder:
            raise ValueError("train_modules only make sense with freeze_encoder=True")
        if self.freeze_encoder:
            trainable = {f"{name}.{k}" for name in self.train_modules
                         for k, p in self.encoder.get_submodule(name).named_parameters() if p.requires_grad}
            for k, p in self.encoder.named_parameters():
                p.requires_grad_(k in trainable)
            self.train(self.training)

    def train(self, mode: bool = True) -> "TaskModel":
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
            for name in self.train_modules:
                self.encoder.get_submodule(name).train(mode)
        return self

    def features(self, inputs: Mapping[str, Any], patch_size: int | None = None,
                 pad_mask: Mapping[str, Tensor] | None = None) -> Tensor:
        ps = patch_size if patch_size is not None else self.patch_size
        if ps is None:
            raise ValueError("patch_size must be given (to the constructor or to forward)")
        kwargs: dict[str, Any] = {"patch_size": ps, "output": self.encoder_output}
        if self.encoder_output == "dense":
            kwargs["output_modality"] = self.output_modality
        if pad_mask is not None:
            kwargs["pad_mask"] = pad_mask
        if self.freeze_encoder and not self.train_modules:
            with torch.no_grad():
                return self.encoder(inputs, **kwargs)
        return self.encoder(inputs, **kwargs)

    def forward(self, inputs: Mapping[str, Any], patch_size: int | None = None,
                pad_mask: Mapping[str, Tensor] | None = None) -> Tensor:
        return self.head(self.features(inputs, patch_size, pad_mask))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
