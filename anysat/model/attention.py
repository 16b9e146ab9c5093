"""Attention layers of AnySat: plain / "flash-heads" self-attention, iRPE self-attention (spatial
encoder) and the iRPE cross-attention that turns the combiner sequence into one token per patch.

Official behaviours reproduced on purpose (the released weights depend on them; ``docs/model.md``):

* iRPE (Euclidean, contextual, on keys, shared table of 8 buckets): the logit of query i and key j
  gets ``q_i . W[:, bucket(i, j)]`` where **q is head 0's query for every head** (the official gather
  index has a head dimension of 1, so head 0's term is broadcast to all heads).
* spatial encoder: that q is pre-scaled by 1/sqrt(d_h); cross-attention: it is not.
* "flash-heads": with ``flash_attn=True`` the official code hands (B, heads, tokens, d) tensors to
  ``flash_attn_func``, which reads them as (B, seq, heads, d): every token attends over its own
  heads, tokens never mix. We emulate that exactly by running SDPA on the transposed tensors.

Vectorisation: the relative-position term is ``lut = q0 @ W`` (B, L, 8) followed by one gather with
a precomputed (L, L) bucket matrix, added as a float bias to ``F.scaled_dot_product_attention``
(exact: SDPA adds the mask after scaling q.k). No loops over patches or heads.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Mlp", "SelfAttention", "RPESelfAttention", "CrossRPEAttention", "RPE", "irpe_buckets",
           "ATTENTION_MODES", "NUM_BUCKETS"]

ATTENTION_MODES = ("tokens", "flash-heads")

# iRPE configuration of the official code: ratio 1.9 -> alpha 1.9, beta 3.8, gamma 15.2; Euclidean
# distances give buckets -3..3 (+3 offset -> 0..6, only 3..6 reachable) plus one bucket for "skip"
# tokens (cls, MODIS) = 8 buckets.
_ALPHA, _BETA, _GAMMA = 1.9, 3.8, 15.2
NUM_BUCKETS = 2 * int(_BETA) + 2
SKIP_BUCKET = NUM_BUCKETS - 1


def _piecewise_bucket(dist: Tensor) -> Tensor:
    """Official piecewise index: exact below alpha, log-spaced above, clipped at beta (+beta offset)."""
    out = dist.round()
    far = dist.abs() > _ALPHA
    log_part = _ALPHA + torch.log(dist.abs().clamp_min(1e-6) / _ALPHA) / math.log(_GAMMA / _ALPHA) * (_BETA - _ALPHA)
    log_part = (torch.sign(dist) * log_part.round().clip(max=_BETA))
    out = torch.where(far, log_part, out)
    return out.long() + int(_BETA)


@functools.lru_cache(maxsize=64)
def _irpe_buckets_cpu(n: int, skip: int) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():  # cached tensor must be usable with autograd
        idx = torch.arange(n * n)
        rows, cols = idx // n, idx % n
        dist = ((rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2).float().sqrt().round()
        inner = _piecewise_bucket(dist)
        out = torch.full((skip + n * n, skip + n * n), SKIP_BUCKET, dtype=torch.long)
        out[skip:, skip:] = inner
        return out


def irpe_buckets(n: int, skip: int = 1, device=None) -> Tensor:
    """(skip + n*n, skip + n*n) bucket index of an n x n raster grid preceded by ``skip`` tokens.

    Any pair touching a skip token (cls, MODIS) uses the extra bucket 7.
    """
    return _irpe_buckets_cpu(int(n), int(skip)).to(device)


class RPE(nn.Module):
    """Contextual iRPE table on keys, shared by all heads: ``lookup_table_weight`` (1, d_h, 8)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.lookup_table_weight = nn.Parameter(torch.zeros(1, head_dim, NUM_BUCKETS))
        nn.init.trunc_normal_(self.lookup_table_weight, std=0.02)

    def forward(self, q0: Tensor, buckets: Tensor) -> Tensor:
        """q0: (B, Lq, d_h) query of head 0; buckets: (Lq, Lk) or (B, Lq, Lk) -> bias (B, 1, Lq, Lk)."""
        lut = q0 @ self.lookup_table_weight[0]  # (B, Lq, 8): one dot product per bucket
        B, Lq = lut.shape[:2]
        if buckets.dim() == 2:
            buckets = buckets.expand(B, -1, -1)
        return torch.gather(lut, 2, buckets).unsqueeze(1)


class Mlp(nn.Module):
    """timm-style MLP (fc1 -> exact GELU -> fc2); key names match the official checkpoint."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _heads(x: Tensor, h: int) -> Tensor:
    B, L, C = x.shape
    return x.view(B, L, h, C // h).transpose(1, 2)  # (B, h, L, d)


def _merge(x: Tensor) -> Tensor:
    B, h, L, d = x.shape
    return x.transpose(1, 2).reshape(B, L, h * d)


class SelfAttention(nn.Module):
    """Combiner / predictor self-attention (official ``Attention``, qkv bias).

    ``mode="tokens"``: standard attention over tokens. ``mode="flash-heads"``: the official
    flash-attention layout bug (softmax over the heads of each token, tokens never mix).
    ``key_mask``: optional bool (B, L), True = this token may be attended to ("tokens" mode only;
    "flash-heads" never mixes tokens, so there is nothing to mask).
    """

    def __init__(self, dim: int, num_heads: int, mode: str = "tokens"):
        super().__init__()
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {mode!r}")
        self.num_heads, self.mode = num_heads, mode
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.mode == "flash-heads":
            # (B, h, L, d) read as (batch, seq=h, heads=L, d): attention over the head axis per token.
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return self.proj(out.reshape(B, L, C))
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(_merge(out))


class RPESelfAttention(nn.Module):
    """Spatial-encoder attention with iRPE on keys; RPE term = (q_head0 / sqrt(d)) . W[bucket]."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rpe_k = RPE(self.head_dim)

    def forward(self, x: Tensor, buckets: Tensor) -> Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = self.rpe_k(q[:, 0] * self.scale, buckets)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(_merge(out))

    def forward_first(self, x: Tensor, buckets: Tensor) -> Tensor:
        """Output for the first token only (the spatial cls token): (B, 1, C).

        Exact shortcut for the last spatial block when sub-patch features are not needed: keys and
        values still come from every token, but the query, projection and MLP run on one row.
        """
        B, L, C = x.shape
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, :1], w[:C], b[:C]).view(B, 1, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = F.linear(x, w[C:], b[C:]).view(B, L, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = self.rpe_k(q[:, 0] * self.scale, buckets[:1])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(_merge(out))


class CrossRPEAttention(nn.Module):
    """Combiner cross-attention: input-independent queries (q_learned + PE), keys/values from the
    sequence, iRPE term ``q_head0 . W[bucket]`` **unscaled**, no query projection."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_learned = nn.Parameter(torch.zeros(1, 1, dim))
        # registration order = official state-dict order: wk, wv, rpe_k, proj
        self.wk = nn.Linear(dim, dim)
        self.wv = nn.Linear(dim, dim)
        self.rpe_k = RPE(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, query_pe: Tensor, buckets: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """x: (B, Lk, C); query_pe: (Lq, C) or (B, Lq, C); buckets: (Lq, Lk) or (B, Lq, Lk)."""
        B, Lk, C = x.shape
        q = self.q_learned + query_pe
        if q.dim() == 2:
            q = q.unsqueeze(0)
        q = _heads(q.expand(B, -1, -1), self.num_heads)
        k, v = _heads(self.wk(x), self.num_heads), _heads(self.wv(x), self.num_heads)
        bias = self.rpe_k(q[:, 0], buckets).to(q.dtype)
        if key_mask is not None:
            bias = bias.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(_merge(out))
