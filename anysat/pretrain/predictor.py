"""JEPA predictor (official "VisionTransformerPredictorMulti").

Width D (= encoder width), ``depth`` = 4 pre-norm blocks with 16 heads, MLP ratio 4, qkv bias,
LayerNorm eps 1e-5; own class token (zeros), ``mask_token`` (trunc-normal 0.02), ``Linear(D, D)`` in
and out. Init: trunc-normal(0.02) for Linear weights, zero biases, LayerNorm (1, 0), then block ℓ
(1-based) has ``attn.proj.weight`` and ``mlp.fc2.weight`` divided by √(2ℓ).

Forward for one batch with context indices ``ctx_idx (B, K_enc)`` and J target index tensors
``(B, K_pred)``:

1. ``x = Linear_in(z) + PE[ctx_idx]`` with ``z`` the student's context patch tokens ``(B, K_enc, D)``;
2. per target block j: ``mask_token + PE[target_idx_j]``; sequences ``[cls ; x ; targets_j]`` are
   stacked block-major into a batch of J·B;
3. blocks → LayerNorm → last K_pred tokens → ``Linear_out`` → ``(J·B, K_pred, D)``.

Positional encodings: the official predictor gathers from a table ``[0 ; PE(n×n)]`` with raw
patch indices, so patch k gets the PE of patch k−1 and patch 0 gets zeros — a one-patch shift that
wraps across rows. By default the PE is gathered at the true patch
index; ``official_pe_shift=True`` reproduces the official shift.

Attention: ``attention="tokens"`` is ordinary token attention; ``"flash-heads"`` reproduces the
official flash-attention layout bug (each token attends over its own heads, tokens never mix), which
the official training configs had switched on.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from anysat.model.attention import Mlp, SelfAttention

__all__ = ["Predictor", "PredictorBlock"]

class PredictorBlock(nn.Module):
    """Pre-norm transformer block with LayerNorm eps 1e-5 (the combiner's blocks use 1e-6);
    parameter names match the official ``predictor_blocks.<ℓ>``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-5,
                 attention: str = "tokens") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads, attention)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _gather_rows(table: Tensor, idx: Tensor) -> Tensor:
    """``table (N, D)`` gathered at ``idx (B, K)`` → ``(B, K, D)``."""
    return table[idx]


class Predictor(nn.Module):
    """JEPA predictor; parameter names follow the official state dict (``model.predictor.*``)."""

    def __init__(
        self,
        embed_dim: int,
        depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        attention: str = "tokens",
        official_pe_shift: bool = False,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.official_pe_shift = bool(official_pe_shift)
        self.predictor_embed = nn.Linear(embed_dim, embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.predictor_blocks = nn.ModuleList(
            PredictorBlock(embed_dim, num_heads, mlp_ratio, eps=1e-5, attention=attention) for _ in range(depth)
        )
        self.predictor_norm = nn.LayerNorm(embed_dim, eps=1e-5)
        self.predictor_proj = nn.Linear(embed_dim, embed_dim, bias=True)
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        nn.init.trunc_normal_(self.mask_token, std=std)
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.trunc_normal_(mod.weight, std=std)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.LayerNorm):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)
        with torch.no_grad():
            for layer, blk in enumerate(self.predictor_blocks, start=1):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * layer))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))

    def positional_table(self, pe: Tensor) -> Tensor:
        """The table gathered by patch index: ``pe`` itself, or ``[0 ; pe[:-1]]`` for the official shift."""
        if self.official_pe_shift:
            return torch.cat([pe.new_zeros(1, pe.shape[1]), pe[:-1]], dim=0)
        return pe

    def forward(self, x: Tensor, pe: Tensor, ctx_idx: Tensor, target_idx: Sequence[Tensor] | Tensor) -> Tensor:
        """``x (B, K_enc, D)`` context tokens, ``pe (N, D)`` patch PE of the grid, ``ctx_idx (B, K_enc)``,
        ``target_idx``: J tensors ``(B, K_pred)`` → ``(J·B, K_pred, D)`` (block-major)."""
        if isinstance(target_idx, Tensor) and target_idx.dim() == 2:
            target_idx = [target_idx]
        targets = list(target_idx)
        b, k_enc, d = x.shape
        table = self.positional_table(pe.to(dtype=x.dtype, device=x.device))
        x = self.predictor_embed(x) + _gather_rows(table, ctx_idx)
        j = len(targets)
        t_idx = torch.cat(targets, dim=0)  # (J·B, K_pred), block-major
        queries = self.mask_token + _gather_rows(table, t_idx)
        seq = torch.cat([self.cls_token.expand(j * b, -1, -1), x.repeat(j, 1, 1), queries], dim=1)
        for blk in self.predictor_blocks:
            seq = blk(seq)
        seq = self.predictor_norm(seq)
        return self.predictor_proj(seq[:, 1 + k_enc:])
