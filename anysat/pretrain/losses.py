"""AnySat pretraining losses (the official "AnySat_JEPA" loss: prediction + contrastive, weights 1:1).

* :func:`prediction_loss` — smooth-L1 (β = 1) between predicted and target patch features; the
  official config calls it "mse" but implements Huber.
* :func:`normalize_targets` — LayerNorm without affine (eps 1e-5) over the feature dimension.
* :func:`mil_nce_loss` — MIL-NCE across modalities on the student's patch tokens before positional
  encoding, temperature τ = 0.1, with optional per-patch validity masks (Planted).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["prediction_loss", "normalize_targets", "mil_nce_loss", "cosine_similarity_matrix"]


def normalize_targets(h: Tensor, eps: float = 1e-5) -> Tensor:
    return F.layer_norm(h, (h.shape[-1],), eps=eps)


def prediction_loss(pred: Tensor, target: Tensor, beta: float = 1.0) -> Tensor:
    """Mean Huber loss over every element of ``pred``/``target``."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return F.smooth_l1_loss(pred, target, beta=beta)


def cosine_similarity_matrix(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """``a_i·b_j / max(‖a_i‖‖b_j‖, eps)`` — the norm *product* is clamped, as in the official loss."""
    na = a.norm(dim=1, keepdim=True)
    nb = b.norm(dim=1, keepdim=True)
    return (a @ b.t()) / (na * nb.t()).clamp(min=eps)


def mil_nce_loss(
    tokens: Sequence[Tensor],
    valid: Sequence[Tensor | None] | None = None,
    tau: float = 0.1,
) -> Tensor:
    """MIL-NCE between the M modalities of the same patches.

    ``tokens``: M tensors ``(B, N, D)`` (one per non-context modality, same B and N).
    ``valid``: optional M tensors ``(B, N)`` (bool or 0/1), True where the patch holds valid data;
    ``None`` entries mean all valid.

    Rows of the similarity matrix are ordered (modality, sample, patch); with R = M·B·N rows, for
    row r = (k, b, p), logits ``Σ_rc/τ`` with the (k, b) block (same modality, same sample,
    diagonal included) set to −∞, and

        ℓ_r = logsumexp_c(Σ_rc/τ) − logsumexp_{k'≠k}(Σ_{r,(k',b,p)}/τ),   L = Σ_r ℓ_r / R.

    With validity masks, every entry whose row or column patch is invalid is −∞; the first sum runs
    over rows that still have a finite entry (the official code sums over valid rows, identical except
    for degenerate all-masked rows, which would give −∞ there), the second over rows with at least one
    valid positive, and the normaliser stays R. The official code orders its validity vector
    (sample, modality, patch) while the features are (modality, sample, patch) — they only agree for
    B = 1 or M = 1; here both use (modality, sample, patch).

    For M = 1 there are no positives and the loss is 0 (kept in the graph).
    """
    m = len(tokens)
    if m == 0:
        raise ValueError("mil_nce_loss needs at least one modality")
    b, n, d = tokens[0].shape
    for t in tokens:
        if t.shape != (b, n, d):
            raise ValueError("all modalities must have the same (B, N, D) token shape")
    if m == 1:
        return tokens[0].sum() * 0.0
    feats = torch.cat([t.reshape(b * n, d) for t in tokens], dim=0)  # (R, D), R = M·B·N
    r = feats.shape[0]
    device = feats.device
    logits = cosine_similarity_matrix(feats, feats) / tau

    group = torch.arange(r, device=device) // n  # (modality, sample) block id
    blocked = group.unsqueeze(1) == group.unsqueeze(0)
    if valid is not None:
        if len(valid) != m:
            raise ValueError(f"expected {m} validity masks, got {len(valid)}")
        v = torch.cat([
            (torch.ones(b, n, dtype=torch.bool, device=device) if vm is None else vm.to(device).bool()).reshape(-1)
            for vm in valid
        ])
        blocked = blocked | ~(v.unsqueeze(1) & v.unsqueeze(0))
    logits = logits.masked_fill(blocked, float("-inf"))

    # Positives of row (k, b, p) sit at column (k', b, p) for every other modality k'.
    bn = b * n
    rows = torch.arange(r, device=device)
    offsets = torch.arange(1, m, device=device) * bn
    pos_idx = (rows.unsqueeze(1) + offsets.unsqueeze(0)) % r  # (R, M-1), cycles through the other modalities
    pos = logits.gather(1, pos_idx)

    # Rows whose entries are all −∞ would give −∞/NaN; they carry no signal, so they are skipped.
    has_any = torch.isfinite(logits).any(dim=1)
    has_pos = torch.isfinite(pos).any(dim=1)
    denom = torch.logsumexp(logits[has_any], dim=1).sum()
    numer = torch.logsumexp(pos[has_pos], dim=1).sum()
    return (denom - numer) / r
