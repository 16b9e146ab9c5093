"""Modality combiner: self-attention over all patches of all modalities, then one cross-attention
block with input-independent queries that yields one token per patch + a tile token.

Sequence layout (bookkeeping only; there is no modality embedding):
``[cls ; context (MODIS, no PE) ; m1 patches + PE ; m2 patches + PE ; ...]``.
The cross block has no residual around the attention (query and key lengths differ) and there is
no final LayerNorm; all LayerNorms here use eps 1e-6.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import CrossRPEAttention, Mlp, SelfAttention, irpe_buckets

__all__ = ["Block", "CrossBlock", "assemble_tokens", "cross_buckets"]

LN_EPS = 1e-6


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, mode: str = "tokens"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = SelfAttention(dim, num_heads, mode)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = CrossRPEAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, query_pe: Tensor, buckets: Tensor, drop_row: int | None = None,
                key_mask: Tensor | None = None) -> Tensor:
        y = self.attn(self.norm1(x), query_pe, buckets, key_mask)  # no residual (official)
        if drop_row is not None:  # the MODIS query row is computed, then discarded
            y = torch.cat([y[:, :drop_row], y[:, drop_row + 1:]], dim=1)
        return y + self.mlp(self.norm2(y))


def assemble_tokens(tokens: list[Tensor], context: Tensor | None, patch_pe: Tensor) -> Tensor:
    """[context ; t_1 + PE ; t_2 + PE ; ...] -> (B, mu + M*K, D). ``patch_pe``: (K, D) or (B, K, D)."""
    parts = [] if context is None else [context]
    parts += [t + patch_pe for t in tokens]
    return torch.cat(parts, dim=1)


def cross_buckets(n: int, num_modalities: int, has_context: bool, query_idx: Tensor | None = None,
                  device=None) -> Tensor:
    """iRPE buckets of the cross block: rows = queries [cls ; (ctx) ; patches], columns = keys
    [cls ; (ctx) ; m1 patches ; ... ; mM patches].

    Computed on the full n x n grid (skip tokens first); with ``query_idx`` (B, K) the patch rows and
    columns are restricted to those patches (per sample). Patch columns are tiled once per modality,
    so a query at patch p sees bucket(p, p') for patch p' of every modality.
    Returns (Lq, Lk) or (B, Lq, Lk).
    """
    skip = 1 + int(has_context)
    full = irpe_buckets(n, skip=skip, device=device)
    if query_idx is None:
        sub = full
    else:
        sel = torch.cat([torch.arange(skip, device=device).expand(query_idx.shape[0], -1),
                         query_idx.to(device=device, dtype=torch.long) + skip], dim=1)  # (B, skip + K)
        sub = full[sel[:, :, None], sel[:, None, :]]  # (B, skip + K, skip + K)
    return torch.cat([sub[..., :skip]] + [sub[..., skip:]] * num_modalities, dim=-1)
