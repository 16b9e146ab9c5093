"""AnySat JEPA pretraining module: student encoder + predictor + EMA teacher.

One training step (:meth:`JEPA.forward`) on a batch of one dataset at one patch size:

Teacher (EMA copy, eval mode, no grad): full input (all dates, all patches, all modalities) →
``(B, 1+N, D)`` → drop the tile token → LayerNorm without affine → targets gathered at each target
block (block-major, ``(J·B, K_pred, D)``).

Student:
1. temporal masking — every time series keeps ``⌊T·keep⌋`` random dates (padding avoided when a pad
   mask is given);
2. :meth:`AnySat.project` → per-modality patch tokens ``(B, N, D)`` before the patch PE;
3. MIL-NCE across modalities on those tokens (with per-patch validity from ``<key>_mask``);
4. patch PE added, the context patches gathered **at their true index for every modality**;
5. modality masking with the learned ``masked_token``;
6. context token (MODIS) put in front, :meth:`AnySat.combine` with the context patches as queries;
7. predictor on the ``K_enc`` context outputs → predictions for every target block;
8. ``loss = w_pred · smooth-L1(pred, targets) + w_con · MIL-NCE``.

Deviations from the official code (each fixes a bug of the official training code; see the module
docs of ``masking``, ``predictor``, ``ema`` and ``losses`` for the rest, and ``docs/model.md``):

* context gather: the official student drops the first combiner token even without MODIS and then
  gathers with a per-modality stride of N−1, so modality i reads patch ``idx + 1 − i`` (its PE was
  already added, so the token's content and PE disagree with the query position). Here every
  modality is gathered at ``idx``; ``official_context_shift=True`` reproduces the official indexing.
* MODIS query PE: with a context token the official masked cross-attention gathers the query PEs one
  patch off; :meth:`AnySat.combine` gathers them at the true index.
* teacher in eval mode (``ema``), predictor PE at the true index (``predictor``), at least one date
  kept per series, validity masks aligned with the features in MIL-NCE.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

from ..model import AnySat
from .ema import EMATeacher, ema_momentum
from .losses import mil_nce_loss, normalize_targets, prediction_loss
from .masking import BlockMaskCollator, BlockMasks, modality_mask, temporal_mask
from .predictor import Predictor

__all__ = ["JEPA", "patch_validity", "gather_patches"]


def gather_patches(x: Tensor, idx: Tensor) -> Tensor:
    """``x (B, N, D)`` at per-sample patch indices ``idx (B, K)`` → ``(B, K, D)``."""
    return torch.gather(x, 1, idx.long().unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def patch_validity(mask: Tensor, n: int, pad: Tensor | None = None) -> Tensor:
    """Per-patch validity ``(B, N)`` of a ``<key>_mask`` (1 = valid), shape broadcastable to B×T×C×H×W.

    A patch is valid when any (date, channel, pixel) inside it is valid; padded dates (``pad``
    ``(B, T)``, True = padding) never count. The official code hard-codes 3×3-pixel patches (Planted at
    30 m); here the pixels per patch side come from the mask's grid, ``H // n``.
    """
    m = mask.bool()
    if pad is not None:
        m = m & ~pad.bool()[:, :, None, None, None]
    m = m.any(dim=2).any(dim=1)  # (B, H, W)
    b, h, w = m.shape
    if h == 1 and w == 1:
        return m.reshape(b, 1).expand(b, n * n)
    if h % n or w % n:
        raise ValueError(f"a {h}x{w} validity mask cannot be cut into {n}x{n} patches")
    kh, kw = h // n, w // n
    return m.reshape(b, n, kh, n, kw).any(dim=4).any(dim=2).reshape(b, n * n)


class JEPA(nn.Module):
    """Student (``encoder``), ``predictor``, modality ``masked_token`` and EMA ``teacher``.

    Parameter names mirror the official checkpoint: ``encoder.*`` (official ``model.encoder.*``),
    ``predictor.*`` (``model.predictor.*``), ``masked_token`` (``model.masked_token``) and
    ``teacher.module.*`` (``target_encoder.*``). The teacher's parameters never require grad; use
    :meth:`student_parameters` for the optimiser.

    The predictor's attention mode defaults to the encoder's (``"tokens"`` or the official
    ``"flash-heads"`` layout; with the latter the predictor cannot see the context at all).
    Call :meth:`update_teacher` once per step, after ``optimizer.step()``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        predictor: Predictor | None = None,
        *,
        collator: BlockMaskCollator | None = None,
        predictor_depth: int = 4,
        predictor_heads: int = 16,
        predictor_attention: str | None = None,
        official_pe_shift: bool = False,
        official_context_shift: bool = False,
        temporal_keep_ratio: float = 0.5,
        modality_keep_ratio: float = 0.5,
        tau: float = 0.1,
        pred_weight: float = 1.0,
        con_weight: float = 1.0,
        ema: tuple[float, float] = (0.996, 1.0),
        total_steps: int | None = None,
    ) -> None:
        super().__init__()
        d = int(encoder.embed_dim)
        self.encoder = encoder
        if predictor is None:
            attention = predictor_attention or getattr(encoder, "attention", "tokens")
            predictor = Predictor(d, depth=predictor_depth, num_heads=predictor_heads, attention=attention,
                                  official_pe_shift=official_pe_shift)
        self.predictor = predictor
        self.masked_token = nn.Parameter(torch.zeros(1, 1, d))
        self.teacher = EMATeacher(encoder)
        self.collator = collator or BlockMaskCollator()
        self.official_context_shift = bool(official_context_shift)
        self.temporal_keep_ratio = float(temporal_keep_ratio)
        self.modality_keep_ratio = float(modality_keep_ratio)
        self.tau = float(tau)
        self.pred_weight = float(pred_weight)
        self.con_weight = float(con_weight)
        self.ema = (float(ema[0]), float(ema[1]))
        self.total_steps = total_steps

    @classmethod
    def from_size(cls, size: str = "base", sensors: Iterable[str] | None = None, attention: str = "tokens",
                  **kwargs: Any) -> "JEPA":
        """A randomly initialised hub-size encoder (see :meth:`AnySat.from_size`) wrapped for pretraining."""
        return cls(AnySat.from_size(size, sensors=sensors, attention=attention), **kwargs)

    # ------------------------------------------------------------------ parameters / teacher
    def student_parameters(self) -> list[nn.Parameter]:
        """Everything the optimiser should see (encoder, predictor, masked token), teacher excluded."""
        return [p for name, p in self.named_parameters() if not name.startswith("teacher.") and p.requires_grad]

    def momentum(self, step: int, total_steps: int | None = None) -> float:
        total = total_steps if total_steps is not None else self.total_steps
        if total is None:
            raise ValueError("total_steps is unknown: pass it to JEPA(...) or to update_teacher()")
        return ema_momentum(step, total, *self.ema)

    @torch.no_grad()
    def update_teacher(self, step: int, total_steps: int | None = None) -> float:
        """EMA update with the momentum of ``step`` (0-based); returns the momentum used."""
        m = self.momentum(step, total_steps)
        self.teacher.update(self.encoder, m)
        return m

    # ------------------------------------------------------------------ pieces of the step
    @torch.no_grad()
    def targets(self, inputs: Mapping[str, Tensor], patch_size: int,
                pad_mask: Mapping[str, Tensor] | None = None) -> Tensor:
        """Teacher features ``(B, N, D)``: full input, tile token dropped, LayerNorm without affine."""
        h = self.teacher(inputs, patch_size=patch_size, output="all", pad_mask=pad_mask)
        return normalize_targets(h[:, 1:].float()).to(h.dtype)

    def _context_tokens(self, tokens: list[Tensor], pe: Tensor, ctx: Tensor, has_context: bool) -> Tensor:
        with_pe = [t + pe for t in tokens]
        # With a context token the official code removes exactly that token, so its gather is right.
        if not self.official_context_shift or has_context:
            return torch.cat([gather_patches(t, ctx) for t in with_pe], dim=1)
        # Official indexing: drop the first token of the concatenated sequence and gather
        # idx + i·(N−1) from what remains, i.e. flat index idx + 1 + i·(N−1).
        flat = torch.cat(with_pe, dim=1)
        n_tok = tokens[0].shape[1]
        parts = [gather_patches(flat, (ctx + 1 + i * (n_tok - 1)).clamp(max=flat.shape[1] - 1))
                 for i in range(len(tokens))]
        return torch.cat(parts, dim=1)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        batch: Mapping[str, Tensor],
        patch_size: int,
        pad_mask: Mapping[str, Tensor] | None = None,
        masks: BlockMasks | tuple[Tensor, list[Tensor]] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """One JEPA step on ``batch`` = ``{sensor: tensor, sensor_dates: ..., sensor_mask: ...}``.

        ``pad_mask``: ``{sensor: (B, T) bool}``, True = padded date. ``masks``: precomputed
        ``(enc (B, K_enc), [pred (B, K_pred)] * J)`` patch indices, else drawn with the collator
        (needs the grid size, known after projection). ``generator`` drives every random draw
        (temporal, spatial and modality masking).

        Returns ``loss``, ``loss_pred``, ``loss_con``, ``context_size`` (K_enc), ``target_size``
        (K_pred), ``num_targets`` (J), ``n`` (patches per side), ``num_modalities`` and ``masks``.
        """
        # Teacher first: it must see the untouched input.
        targets_full = self.targets(batch, patch_size, pad_mask)

        student_in, student_pad = temporal_mask(batch, self.temporal_keep_ratio, generator, pad_mask)
        proj = self.encoder.project(student_in, patch_size, pad_mask=student_pad)
        keys = list(proj.tokens)
        tokens = [proj.tokens[k] for k in keys]
        b, n_tok, d = tokens[0].shape
        n, m = proj.n, len(keys)
        device = tokens[0].device

        valid = []
        for k in keys:
            mk = student_in.get(f"{k}_mask")
            pad = None if student_pad is None else student_pad.get(k)
            valid.append(None if mk is None else patch_validity(mk, n, pad).to(device))
        loss_con = mil_nce_loss(tokens, valid if any(v is not None for v in valid) else None, tau=self.tau)

        if masks is None:
            masks = self.collator(b, n, generator, device=device)
        ctx, preds = masks[0].to(device).long(), [p.to(device).long() for p in masks[1]]

        pe = self.encoder.patch_pe(n, proj.scale, device, tokens[0].dtype)
        context = self._context_tokens(tokens, pe, ctx, proj.context is not None)
        context, _ = modality_mask(context, m, self.masked_token, self.modality_keep_ratio, generator)
        if proj.context is not None:
            context = torch.cat([proj.context, context], dim=1)
        z = self.encoder.combine(context, n, proj.scale, m, proj.context is not None, query_idx=ctx)

        pred = self.predictor(z[:, 1:], pe, ctx, preds)
        target = torch.cat([gather_patches(targets_full, p) for p in preds], dim=0)
        loss_pred = prediction_loss(pred, target.to(pred.dtype))
        loss = self.pred_weight * loss_pred + self.con_weight * loss_con
        return {
            "loss": loss,
            "loss_pred": loss_pred.detach(),
            "loss_con": loss_con.detach(),
            "context_size": ctx.shape[1],
            "target_size": preds[0].shape[1],
            "num_targets": len(preds),
            "n": n,
            "num_modalities": m,
            "masks": BlockMasks(ctx, preds),
        }
