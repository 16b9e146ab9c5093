"""Per-sensor projectors: raw pixels -> sub-patch tokens ``(B*N, S, D)``.

Built from the sensor registry (:mod:`anysat.sensors`), never from hard-coded sensor names:

* ``VHRProjector`` (official "PatchMLPMulti") for single-date very-high-resolution images: a k x k
  stride-k convolution (one cell = one sub-patch of ``subpatch_m`` metres) and a per-token MLP
  ``Linear -> LN -> ReLU -> Linear -> LN -> ReLU``.
* ``LTAEProjector`` (official "PatchLTAEMulti") for time series: a per-pixel lightweight temporal
  attention encoder (L-TAE) pooling the dates into one D vector per pixel, then grouping pixels
  into patches.

Token order inside a patch follows the official code: VHR cells are grouped **block-major** (10 m
block, then cell inside the block; see ``docs/model.md``) -- identical to raster order when a block
has one cell (spot, naip) or a patch has one block (P = 10 m).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..sensors import Sensor
from .pos_embed import temporal_encoding

__all__ = ["VHRProjector", "LTAEProjector", "LTAE", "build_projector", "LTAE_HEADS", "LTAE_DK"]

LTAE_HEADS = 16  # fixed for every model size in the official code
LTAE_DK = 8
LN_EPS = 1e-5
GN_EPS = 1e-5


class VHRProjector(nn.Module):
    def __init__(self, sensor: Sensor, dim: int):
        super().__init__()
        self.sensor = sensor
        self.patch_embed = nn.Conv2d(sensor.channels, dim, sensor.kernel, sensor.kernel, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim, eps=LN_EPS), nn.ReLU(),
            nn.Linear(2 * dim, dim), nn.LayerNorm(dim, eps=LN_EPS), nn.ReLU(),
        )
        # cells per 10 m block side (5 for 2 m aerial cells, 1 for 10 m spot/naip cells); 0 when a
        # cell does not tile 10 m, in which case the patch is read in plain raster order.
        q = 10.0 / sensor.subpatch_m
        self.cells_per_block = int(round(q)) if abs(q - round(q)) < 1e-9 and q >= 1 else 0

    def forward(self, x: Tensor, patch_m: int) -> Tensor:
        y = self.patch_embed(x.to(self.patch_embed.weight.dtype))  # (B, D, Hc, Wc), one cell per sub-patch
        B, D, Hc, Wc = y.shape
        q = self.cells_per_block
        if q:
            s = patch_m // 10  # 10 m blocks per patch side
            n = Hc // (s * q)
            # rows = (patch i, block a, cell r), cols = (patch j, block b, cell c)
            y = y.view(B, D, n, s, q, n, s, q).permute(0, 2, 5, 3, 6, 4, 7, 1)  # B,i,j,a,b,r,c,D
            y = y.reshape(B * n * n, s * s * q * q, D)
        else:
            g = int(round(patch_m / self.sensor.subpatch_m))
            n = Hc // g
            y = y.view(B, D, n, g, n, g).permute(0, 2, 4, 3, 5, 1).reshape(B * n * n, g * g, D)
        return self.mlp(y)


class TemporalAttention(nn.Module):
    """L-TAE attention: one learned master query per head, keys from a linear map, values = the raw
    channel slice of each head (no value projection)."""

    def __init__(self, n_head: int, d_k: int, dim: int):
        super().__init__()
        self.n_head, self.d_k = n_head, d_k
        self.Q = nn.Parameter(torch.zeros(n_head, d_k))
        self.fc1_k = nn.Linear(dim, n_head * d_k)
        nn.init.normal_(self.Q, std=math.sqrt(2.0 / d_k))
        nn.init.normal_(self.fc1_k.weight, std=math.sqrt(2.0 / d_k))

    def forward(self, u: Tensor, pad: Tensor | None, attn_drop: float) -> Tensor:
        """u: (P, T, D) pixel sequences; pad: (P, T) bool, True = padded date -> (P, D)."""
        P, T, D = u.shape
        k = self.fc1_k(u).view(P, T, self.n_head, self.d_k)
        logits = torch.einsum("pthk,hk->pht", k, self.Q.to(k.dtype)) / math.sqrt(self.d_k)
        if pad is not None:
            logits = logits.masked_fill(pad[:, None, :], torch.finfo(logits.dtype).min)
        attn = F.dropout(logits.softmax(dim=-1), attn_drop, self.training)
        v = u.view(P, T, self.n_head, D // self.n_head)
        return torch.einsum("pht,pthc->phc", attn.to(v.dtype), v).reshape(P, D)


class LTAE(nn.Module):
    """Per-pixel L-TAE (official "LTAE2d"), key names as in the released checkpoint."""

    def __init__(self, sensor: Sensor, dim: int, n_head: int = LTAE_HEADS, d_k: int = LTAE_DK):
        super().__init__()
        if dim % n_head or dim % 8:
            raise ValueError(f"LTAE width {dim} must be divisible by 8 and by {n_head} heads")
        self.n_head, self.t0, self.p = n_head, sensor.t0, sensor.dropout
        widths = [sensor.channels, dim // 8, dim // 2, dim, 2 * dim, dim]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.GroupNorm(4, w_out, eps=GN_EPS), nn.ReLU(), nn.Dropout(self.p)]
        self.inconv = nn.Sequential(*layers)
        self.attention_heads = TemporalAttention(n_head, d_k, dim)
        # in_norm: GroupNorm over (channels x dates) of each pixel sequence (official: s2 only)
        self.in_norm = nn.GroupNorm(n_head, dim, eps=GN_EPS) if sensor.in_norm else None
        self.out_norm = nn.GroupNorm(n_head, dim, eps=GN_EPS)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GroupNorm(4, dim, eps=GN_EPS), nn.ReLU())

    def _in_norm(self, u: Tensor, valid: Tensor | None) -> Tensor:
        if valid is None:  # official: statistics over all dates, padded ones included
            return F.group_norm(u.transpose(1, 2), self.n_head, self.in_norm.weight, self.in_norm.bias,
                                self.in_norm.eps).transpose(1, 2)
        # statistics over valid dates only, so a padded sample normalises like the unpadded one
        P, T, D = u.shape
        g = u.view(P, T, self.n_head, D // self.n_head)
        w = valid.to(u.dtype)[:, :, None, None]
        cnt = w.sum(1, keepdim=True).clamp_min(1) * (D // self.n_head)
        mean = (g * w).sum((1, 3), keepdim=True) / cnt
        var = ((g - mean).square() * w).sum((1, 3), keepdim=True) / cnt
        out = ((g - mean) * torch.rsqrt(var + self.in_norm.eps)).view(P, T, D)
        return out * self.in_norm.weight + self.in_norm.bias

    def forward(self, x: Tensor, dates: Tensor, pad: Tensor | None = None) -> Tensor:
        """x: (B, T, C, H, W); dates: (B, T); pad: (B, T) bool (True = padded) -> (B, H, W, D)."""
        B, T, C, H, W = x.shape
        u = x.permute(0, 3, 4, 1, 2).reshape(B * H * W, T, C)
        u = self.inconv(u.reshape(-1, C)).view(B * H * W, T, -1)  # GroupNorm per (pixel, date) vector
        D = u.shape[-1]
        pad_px = None if pad is None else pad.bool()[:, None, :].expand(B, H * W, T).reshape(B * H * W, T)
        if self.in_norm is not None:
            u = self._in_norm(u, None if pad_px is None else ~pad_px)
        pe = temporal_encoding(dates, D // self.n_head, self.t0, self.n_head).to(u.dtype)  # (B, T, D)
        u = (u.view(B, H * W, T, D) + pe[:, None]).view(B * H * W, T, D)
        out = self.attention_heads(u, pad_px, 0.1)  # official attention dropout 0.1 (training only)
        out = F.dropout(self.mlp(out), self.p, self.training)
        return self.out_norm(out).view(B, H, W, D)


class LTAEProjector(nn.Module):
    def __init__(self, sensor: Sensor, dim: int):
        super().__init__()
        self.sensor = sensor
        # replaces masked-out input values; official multi-scale projector never trains it
        self.pad_parameter = nn.Parameter(torch.tensor(0.0), requires_grad=False)
        self.patch_embed = LTAE(sensor, dim)

    def forward(self, x: Tensor, dates: Tensor, patch_m: int, mask: Tensor | None = None,
                pad: Tensor | None = None) -> Tensor:
        """-> (B*N, e*e, D) with e = max(1, s // reduce_scale) pixels per patch side."""
        x = x.to(self.pad_parameter.dtype)
        if mask is not None:
            x = x.masked_fill(~mask.bool(), self.pad_parameter.to(x.dtype))
        y = self.patch_embed(x, dates, pad)  # (B, H, W, D)
        B, H, W, D = y.shape
        # official grouping: s // reduce_scale pixels per patch side; a context sensor (MODIS, 1 x 1 px)
        # always gives one token per tile (the official code would fail for P >= 12 * 10 m)
        e = 1 if self.sensor.context else max(1, (patch_m // 10) // self.sensor.reduce_scale)
        n = H // e
        return y.view(B, n, e, n, e, D).permute(0, 1, 3, 2, 4, 5).reshape(B * n * n, e * e, D)


def build_projector(sensor: Sensor, dim: int) -> nn.Module:
    if sensor.projector == "vhr":
        return VHRProjector(sensor, dim)
    if sensor.projector == "ltae":
        return LTAEProjector(sensor, dim)
    raise ValueError(f"sensor {sensor.key!r}: unknown projector kind {sensor.projector!r}")
