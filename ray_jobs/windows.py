"""Where the model's windows fall on a scene, which ones each output shard needs, and how their
outputs are blended back into one map (pure numpy: no Ray, no I/O).

Geometry, in grid pixels: windows of ``win`` px start every ``stride = win - overlap`` px from the
scene's top-left corner, as many as it takes to cover the scene (the last ones reach past its edge
and are padded by the reader). The map has cells of ``cell`` px (1 for class maps; a patch for patch
embeddings). Shards are square blocks of ``shard`` cells; a shard needs every window that overlaps
it, so the windows along a shard border are computed by both neighbours — the price of shards that
never wait on each other (about ``win / shard`` more windows per axis).

Blending (``blend``):

* ``average`` (default): each cell is the weighted mean of the outputs (logits or embeddings) of all
  windows that cover it, the weight falling linearly from 1 in the window's middle to ~0 at its edge
  over ``overlap / 2``. A pixel near a window border has seen the least context, so its prediction
  is the least trusted; the ramp lets the neighbouring window take over smoothly and leaves no seams,
  and every prediction made still counts. With one window, or no overlap, this is exactly the
  window's own output.
* ``centre``: each cell takes the window whose central ``stride`` x ``stride`` block holds it
  (the classic centre crop): sharper borders, but every window's margin is computed and thrown away.

Cells that no window centre reaches (the first ``overlap / 2`` of the scene) fall back to the
border outputs, through a small floor weight rather than a special case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BLENDS", "WindowPlan", "Accumulator"]

BLENDS = ("average", "centre")
_FLOOR = 1e-3


@dataclass(frozen=True)
class WindowPlan:
    height: int
    width: int
    """Scene grid, pixels."""
    win: int
    overlap: int
    cell: int
    shard: int
    """Cells per shard side."""
    blend: str = "average"

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {self.blend!r}")
        if not 0 <= self.overlap < self.win:
            raise ValueError(f"overlap {self.overlap} px must be >= 0 and smaller than the {self.win} px window")
        if self.win % self.cell or self.stride % self.cell:
            raise ValueError(f"window {self.win} px and stride {self.stride} px must be multiples of the "
                             f"{self.cell} px output cell")

    @property
    def stride(self) -> int:
        return self.win - self.overlap

    def windows_per_axis(self, size: int) -> int:
        return 1 + -(-max(0, size - self.win) // self.stride)

    @property
    def n_windows(self) -> int:
        return self.windows_per_axis(self.height) * self.windows_per_axis(self.width)

    @property
    def cells(self) -> tuple[int, int]:
        return -(-self.height // self.cell), -(-self.width // self.cell)

    @property
    def shards_yx(self) -> tuple[int, int]:
        h, w = self.cells
        return -(-h // self.shard), -(-w // self.shard)

    def _axis(self, lo_cell: int, hi_cell: int, size: int) -> tuple[int, int]:
        """First and last window index along one axis that overlaps cells [lo, hi)."""
        lo, hi = lo_cell * self.cell, min(hi_cell * self.cell, size)
        first = max(0, (lo - self.win) // self.stride + 1)
        last = min(self.windows_per_axis(size) - 1, -(-hi // self.stride) - 1)
        return first, last

    def shard_windows(self, i: int) -> tuple[tuple[int, int, int, int], list[tuple[int, int]]]:
        """Shard ``i`` -> (its cells (r0, r1, c0, c1), the pixel origins (row, col) of its windows)."""
        ny, nx = self.shards_yx
        if not 0 <= i < ny * nx:
            raise IndexError(f"shard {i} of {ny * nx}")
        r, c = divmod(i, nx)
        h, w = self.cells
        box = (r * self.shard, min(h, (r + 1) * self.shard), c * self.shard, min(w, (c + 1) * self.shard))
        ry, rx = self._axis(box[0], box[1], self.height), self._axis(box[2], box[3], self.width)
        wins = [(ky * self.stride, kx * self.stride)
                for ky in range(ry[0], ry[1] + 1) for kx in range(rx[0], rx[1] + 1)]
        return box, wins

    def region(self, wins: list[tuple[int, int]]) -> tuple[int, int, int, int]:
        """Pixel region (row, col, height, width) that holds ``wins``: what a shard's task reads."""
        rows, cols = [r for r, _ in wins], [c for _, c in wins]
        return min(rows), min(cols), max(rows) - min(rows) + self.win, max(cols) - min(cols) + self.win

    def weights(self) -> np.ndarray:
        """``(win/cell, win/cell)`` blending weight of one window's output cells."""
        n, ov = self.win // self.cell, self.overlap / self.cell
        d = np.minimum(np.arange(n), n - 1 - np.arange(n)).astype(np.float64)
        if self.blend == "average":
            w = np.minimum(1.0, (d + 0.5) / max(ov / 2, 0.5))
        else:
            lo = int(ov // 2)
            w = np.where((np.arange(n) >= lo) & (np.arange(n) < lo + self.stride // self.cell), 1.0, 0.0)
        w = np.maximum(w, _FLOOR)
        return np.outer(w, w).astype(np.float32)


class Accumulator:
    """Weighted sum of window outputs over one shard's cells."""

    def __init__(self, plan: WindowPlan, box: tuple[int, int, int, int], channels: int):
        self.plan, self.box = plan, box
        r0, r1, c0, c1 = box
        self.sum = np.zeros((channels, r1 - r0, c1 - c0), np.float64)
        self.weight = np.zeros((r1 - r0, c1 - c0), np.float64)
        self._w = plan.weights()

    def add(self, origin: tuple[int, int], out: np.ndarray) -> None:
        """``out``: ``(C, win/cell, win/cell)`` output of the window at pixel ``origin``."""
        cell, (r0, r1, c0, c1) = self.plan.cell, self.box
        wr, wc = origin[0] // cell, origin[1] // cell
        n = out.shape[-1]
        y0, y1, x0, x1 = max(r0, wr), min(r1, wr + n), max(c0, wc), min(c1, wc + n)
        if y1 <= y0 or x1 <= x0:
            return
        w = self._w[y0 - wr:y1 - wr, x0 - wc:x1 - wc]
        self.sum[:, y0 - r0:y1 - r0, x0 - c0:x1 - c0] += out[:, y0 - wr:y1 - wr, x0 - wc:x1 - wc] * w
        self.weight[y0 - r0:y1 - r0, x0 - c0:x1 - c0] += w

    def result(self) -> np.ndarray:
        """``(C, h, w)`` float32 blended outputs; NaN where no window reached (never, for a full plan)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.sum / self.weight).astype(np.float32)
