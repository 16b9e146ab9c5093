"""Test-time windows of one sensor: per-sample windows and the official multi-crop evaluation.

A dataset trained on random crops of one sensor (FLAIR: 500 × 500 px windows of the 512 × 512 px
aerial image; TreeSatAI: 300 of 304 px) is evaluated on windows of the same size:

* :func:`window` / :func:`windows_per_sample` cut the sensor (and its ``_mask``) at one offset for the
  whole batch or at one offset per sample; the other sensors pass unchanged (they cover the tile, as in
  training, where only the cropped sensor is cropped).
* :func:`multicrop_logits` runs a model on several windows and assembles the logits on the whole image:
  dense logits ``(B, K, h, w)`` are summed on a canvas as large as the full image at the logits'
  resolution and divided, pixel by pixel, by the number of windows covering it; tile logits ``(B, K)``
  are averaged. With the official FLAIR offsets (0, 0), (0, 12), (12, 0), (12, 12), (6, 6) of 500 px
  windows every pixel of the 512 px canvas is covered at least once. (The official code divides only the
  overlap strips, leaving a few 6 × 6 corner squares undivided; the argmax, hence every metric, is the
  same.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["FLAIR_OFFSETS", "window", "windows_per_sample", "multicrop_logits"]

FLAIR_OFFSETS: tuple[tuple[int, int], ...] = ((0, 0), (0, 12), (12, 0), (12, 12), (6, 6))
"""(row, col) offsets of the official FLAIR evaluation's five 500 px windows of the 512 px image."""


def _check(inputs: Mapping[str, Tensor], key: str, size: int, top: int, left: int) -> None:
    if key not in inputs:
        raise ValueError(f"no input {key!r} to crop (inputs: {sorted(inputs)})")
    h, w = inputs[key].shape[-2:]
    if size < 1 or top < 0 or left < 0 or top + size > h or left + size > w:
        raise ValueError(f"window {size} px at ({top}, {left}) does not fit the {h} x {w} px {key!r} image")


def window(inputs: Mapping[str, Tensor], key: str, size: int, top: int, left: int) -> dict[str, Tensor]:
    """``inputs`` with sensor ``key`` (and ``key + "_mask"``) cut to ``size`` px at (top, left)."""
    _check(inputs, key, size, top, left)
    out = dict(inputs)
    for k in (key, f"{key}_mask"):
        if k in inputs:
            out[k] = inputs[k][..., top:top + size, left:left + size]
    return out


def windows_per_sample(inputs: Mapping[str, Tensor], key: str, size: int, offsets: Sequence[tuple[int, int]]
                       ) -> dict[str, Tensor]:
    """``inputs`` with sample ``i`` of sensor ``key`` (and its mask) cut to ``size`` px at ``offsets[i]``."""
    b = inputs[key].shape[0]
    if len(offsets) != b:
        raise ValueError(f"{len(offsets)} offsets for a batch of {b}")
    for top, left in offsets:
        _check(inputs, key, size, int(top), int(left))
    out = dict(inputs)
    for k in (key, f"{key}_mask"):
        if k in inputs:
            x = inputs[k]
            out[k] = torch.stack([x[i, ..., int(t):int(t) + size, int(l):int(l) + size]
                                  for i, (t, l) in enumerate(offsets)])
    return out


def multicrop_logits(model: Callable[[dict[str, Tensor]], Tensor], inputs: Mapping[str, Tensor], key: str,
                     size: int, offsets: Sequence[tuple[int, int]] = FLAIR_OFFSETS) -> Tensor:
    """Logits of ``model`` over the whole image from its logits on ``size`` px windows of sensor ``key``.

    Dense logits ``(B, K, h, w)`` of a window are placed at the window's offset scaled to the logits'
    resolution (``h / size`` logit pixels per input pixel, e.g. 1 for FLAIR: 500 logits for 500 px),
    summed, and divided by the per-pixel coverage count; the result is ``(B, K, H·r, W·r)`` for an
    ``H × W`` px image. Tile logits ``(B, K)`` are averaged over the windows. A canvas pixel no window
    covers is an error."""
    if not offsets:
        raise ValueError("multicrop_logits needs at least one window offset")
    H, W = inputs[key].shape[-2:] if key in inputs else (0, 0)
    total: Tensor | None = None
    cover: Tensor | None = None
    for top, left in offsets:
        y = model(window(inputs, key, size, int(top), int(left)))
        if y.dim() == 2:
            total = y if total is None else total + y
            cover = (cover if cover is not None else 0) + 1
            continue
        h, w = y.shape[-2:]
        r = h / size
        if w / size != r or any(abs(v * r - round(v * r)) > 1e-9 for v in (top, left, H, W)):
            raise ValueError(f"{h} x {w} logits of a {size} px window do not map onto a {H} x {W} px image "
                             f"at offset ({top}, {left})")
        t, lft = round(top * r), round(left * r)
        if total is None:
            total = y.new_zeros(*y.shape[:-2], round(H * r), round(W * r))
            cover = y.new_zeros(round(H * r), round(W * r))
        total[..., t:t + h, lft:lft + w] += y
        cover[t:t + h, lft:lft + w] += 1
    assert total is not None and cover is not None
    if isinstance(cover, Tensor) and bool((cover == 0).any()):
        raise ValueError(f"the windows at {list(offsets)} leave part of the {H} x {W} px image uncovered")
    return total / cover
