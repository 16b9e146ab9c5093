"""Shared spatial transformer (official "TransformerMulti").

Every patch of every modality is a short sequence ``[cls ; sub-patch tokens]``; the same weights
encode all modalities, which differ only by the positional grid (g x g sub-patches, g*delta metres
per patch side). The patch token is the cls output after the final LayerNorm.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .attention import Mlp, RPESelfAttention, irpe_buckets
from .pos_embed import sincos_2d

__all__ = ["SpatialEncoder", "RPEBlock"]

LN_EPS = 1e-5  # official nn.LayerNorm default in the spatial encoder (combiner uses 1e-6)


class RPEBlock(nn.Module):
    """Pre-norm transformer block whose attention carries the iRPE term."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = RPESelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, buckets: Tensor, first_only: bool = False) -> Tensor:
        if first_only:  # only row 0 (cls) is needed downstream
            x = x[:, :1] + self.attn.forward_first(self.norm1(x), buckets)
        else:
            x = x + self.attn(self.norm1(x), buckets)
        return x + self.mlp(self.norm2(x))


class SpatialEncoder(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.predictor_blocks = nn.ModuleList(RPEBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.predictor_norm = nn.LayerNorm(dim, eps=LN_EPS)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Official init: trunc-normal Linear weights, zero biases, LN (1, 0), block l's output
        projections divided by sqrt(2 l); cls token zero; iRPE tables trunc-normal(0.02)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for layer_id, blk in enumerate(self.predictor_blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))
        nn.init.zeros_(self.cls_token)

    def forward(self, z: Tensor, grid: int, unit_m: float, keep_subpatch: bool = False):
        """z: (B*N, S, D) sub-patch tokens of one modality, S = grid**2 (raster positions by index).

        Returns the patch tokens (B*N, D) and, if ``keep_subpatch``, the sub-patch features
        (B*N, S, D) after the final LayerNorm (else None).
        """
        BN, S, D = z.shape
        if S != grid * grid:
            raise ValueError(f"spatial encoder: {S} sub-patch tokens do not fill a {grid}x{grid} grid")
        pe = sincos_2d(grid, unit_m, D, device=z.device, dtype=z.dtype)
        x = torch.cat([self.cls_token.expand(BN, -1, -1).to(z.dtype), z + pe], dim=1)  # cls PE is zero
        # the official iRPE grid side is floor(sqrt(1 + S)), which equals g for square grids
        buckets = irpe_buckets(math.isqrt(1 + S), skip=1, device=z.device)
        last = len(self.predictor_blocks) - 1
        for i, blk in enumerate(self.predictor_blocks):
            x = blk(x, buckets, first_only=(i == last and not keep_subpatch))
        x = self.predictor_norm(x)
        return x[:, 0], (x[:, 1:] if keep_subpatch else None)
