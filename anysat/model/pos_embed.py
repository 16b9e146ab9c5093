"""Fixed positional encodings (nothing here is learned or stored in the state dict).

Two families, both exactly as the official AnySat code computes them:

* 2-D sin-cos grids (MAE style) for the spatial-encoder sub-patches and the combiner patches. The
  first half of the channels encodes the column (x), the second half the row (y); each half is
  ``[sin(p*w_0..w_{k-1}), cos(p*w_0..w_{k-1})]`` (blocked, not interleaved).
* the LTAE temporal encoding: raw date values divided by ``t0 ** (2*(k//2)/d)``, sin on even and
  cos on odd channels (interleaved), tiled once per LTAE head.

Positions are computed in float32 (as the official code does) and cast at the end, so bf16/fp16
models get the same table rounded once.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sincos_1d", "sincos_2d", "temporal_encoding"]


def sincos_1d(pos: Tensor, dim: int) -> Tensor:
    """``(M,)`` float positions -> ``(M, dim)`` = [sin(p*omega), cos(p*omega)], omega_k = 10000^(-k/(dim/2))."""
    if dim % 2:
        raise ValueError(f"sin-cos encoding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float32, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1, 1).float() * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(n: int, unit: float, dim: int, *, device=None, dtype=torch.float32) -> Tensor:
    """``(n*n, dim)`` encoding of an n x n grid in raster order; cell (i, j) sits at (i*unit, j*unit).

    ``unit`` is the grid step: metres for sub-patches (2 m aerial, 10 m S2, ...), the scale
    s = P/10 for combiner patches. Half the channels encode the column, then half the row.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos encoding needs a width divisible by 4, got {dim}")
    idx = torch.arange(n, dtype=torch.float32, device=device) * float(unit)
    col = idx.repeat(n)  # raster order: column varies fastest
    row = idx.repeat_interleave(n)
    return torch.cat([sincos_1d(col, dim // 2), sincos_1d(row, dim // 2)], dim=1).to(dtype)


def temporal_encoding(dates: Tensor, dim: int, t0: float, repeat: int) -> Tensor:
    """LTAE date encoding: ``(B, T)`` raw day values -> ``(B, T, dim * repeat)``.

    Channel k of one head is sin(t / t0^(2*(k//2)/dim)) for even k and cos(...) for odd k; the
    same ``dim`` vector is repeated for every head (the official PositionalEncoder with ``repeat``).
    """
    k = torch.arange(dim, dtype=torch.float32, device=dates.device)
    denom = torch.pow(float(t0), 2 * (k // 2) / dim)
    table = dates.float()[..., None] / denom
    even = torch.arange(dim, device=dates.device) % 2 == 0
    table = torch.where(even, table.sin(), table.cos())
    return table.repeat(*([1] * (table.dim() - 1)), repeat)
