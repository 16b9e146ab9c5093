"""Masking for AnySat JEPA pretraining.

Three independent maskings act on a student step:

* :class:`BlockMaskCollator` — spatial JEPA masks on the n×n patch grid: one context block and
  ``n_pred`` target blocks that the context must avoid.
* :func:`temporal_mask` — each time series keeps a random subset of its dates (student only).
* :func:`modality_mask` — inside the context, some (patch, modality) tokens are replaced by a learned
  mask token, always keeping at least one modality per patch.

Everything random is drawn from an optional ``torch.Generator`` so a run is reproducible from a seed
(the official code mixes a counter-seeded generator for block sizes with the global RNG for block
positions; here one generator drives both).
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BlockMasks",
    "BlockMaskCollator",
    "temporal_mask",
    "modality_mask",
    "time_series_keys",
]


def _rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device | None = None) -> Tensor:
    # Draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move.
    if generator is None:
        return torch.rand(*shape, device=device)
    return torch.rand(*shape, generator=generator, device=generator.device).to(device)


def _randint(high: int, shape: Sequence[int], generator: torch.Generator | None,
             device: torch.device | None = None) -> Tensor:
    if generator is None:
        return torch.randint(high, tuple(shape), device=device)
    return torch.randint(high, tuple(shape), generator=generator, device=generator.device).to(device)


# ---------------------------------------------------------------------------------------------------
# Spatial block masks
# ---------------------------------------------------------------------------------------------------


class BlockMasks(NamedTuple):
    """Patch indices (raster order on the n×n grid) of one batch.

    ``enc``: ``(B, K_enc)`` context indices, ascending per row. ``pred``: ``n_pred`` tensors ``(B, K_pred)``.
    """

    enc: Tensor
    pred: list[Tensor]


class BlockMaskCollator:
    """I-JEPA-style multi-block masks as used by AnySat.

    Per call (one batch):

    1. Block sizes are shared by the whole batch. A target draw uses one uniform ``r`` for both the
       scale and the aspect ratio (``scale = lo + r·(hi−lo)``, ``aspect = a_lo + r·(a_hi−a_lo)``;
       this coupling is inherited from I-JEPA and kept); ``K = ⌊n²·scale⌋``,
       ``h = round(√(K·aspect))``, ``w = round(√(K/aspect))``, each shrunk until it is < n. The
       context block uses a fresh draw with aspect 1.
    2. Per sample, ``n_pred`` target blocks are placed uniformly (top-left in ``[0, n−h]``); the
       context block is placed uniformly and intersected with the complements of every target
       block (unless ``allow_overlap``). When the result holds ``≤ min_keep`` patches the position is
       redrawn; after ``max_tries`` failed draws the last complement constraint is dropped (then the
       last two, ...), so the loop always ends.
    3. All context lists are truncated to the batch minimum (lowest raster indices kept), and so
       are the target lists (they all have ``h·w`` entries anyway).

    Defaults are the official AnySat pretraining values: context scale (0.85, 1.0), 4 targets with
    scale (0.2, 0.8) and aspect (0.75, 1.5). With those, the context usually shrinks to one or two
    patches on small grids (four targets of 20-80 % of the grid leave little room to avoid them);
    I-JEPA's own target scale (0.15, 0.2) keeps a larger context and can be chosen through
    ``pred_scale``.

    Randomness: one stream of uniforms from ``generator`` (fetched with ``torch.rand`` in chunks of
    1024); its first value sets the target size, the second the context size, the rest place blocks.

    Block sizes are clamped to at least 1×1 (the official code can yield an empty block, which
    makes its sampling loop spin forever); a grid needs ``n ≥ 2``.
    """

    def __init__(
        self,
        enc_scale: tuple[float, float] = (0.85, 1.0),
        pred_scale: tuple[float, float] = (0.2, 0.8),
        pred_aspect: tuple[float, float] = (0.75, 1.5),
        n_pred: int = 4,
        min_keep: int = 0,
        allow_overlap: bool = False,
        max_tries: int = 20,
    ) -> None:
        for name, (lo, hi) in (("enc_scale", enc_scale), ("pred_scale", pred_scale)):
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name} must satisfy 0 < lo <= hi <= 1, got {(lo, hi)}")
        if not 0.0 < pred_aspect[0] <= pred_aspect[1]:
            raise ValueError(f"pred_aspect must satisfy 0 < lo <= hi, got {pred_aspect}")
        if n_pred < 1:
            raise ValueError("n_pred must be >= 1")
        if max_tries < 1:
            raise ValueError("max_tries must be >= 1")
        self.enc_scale = tuple(enc_scale)
        self.pred_scale = tuple(pred_scale)
        self.pred_aspect = tuple(pred_aspect)
        self.n_pred = int(n_pred)
        self.min_keep = int(min_keep)
        self.allow_overlap = bool(allow_overlap)
        self.max_tries = int(max_tries)

    # -- sizes ------------------------------------------------------------------------------------
    def block_size(self, grid: tuple[int, int], scale: tuple[float, float], aspect: tuple[float, float],
                   draw: "_Uniforms") -> tuple[int, int]:
        height, width = grid
        r = draw.uniform()
        s = scale[0] + r * (scale[1] - scale[0])
        keep = int(height * width * s)
        a = aspect[0] + r * (aspect[1] - aspect[0])
        h = int(round(math.sqrt(keep * a)))
        w = int(round(math.sqrt(keep / a)))
        h = max(1, min(h, height - 1))
        w = max(1, min(w, width - 1))
        return h, w

    # -- one block --------------------------------------------------------------------------------
    # Blocks are Python-int bitmasks over the raster grid: placement retries are frequent with the
    # official scales (the context often has to dodge four large targets), and big-int logic is
    # orders of magnitude cheaper than small tensor ops.
    def _place(self, grid: tuple[int, int], size: tuple[int, int], draw: "_Uniforms",
               acceptable: list[int] | None = None) -> tuple[int, int]:
        height, width = grid
        h, w = size
        if h * w <= self.min_keep:
            raise ValueError(f"a {h}x{w} block can never keep more than min_keep={self.min_keep} patches")
        full = (1 << (height * width)) - 1
        row = (1 << w) - 1
        n_constraints = len(acceptable) if acceptable is not None else 0
        dropped, failures = 0, 0
        while True:
            top = draw.integer(height - h + 1)
            left = draw.integer(width - w + 1)
            block = 0
            for r in range(top, top + h):
                block |= row << (r * width + left)
            region = block
            for allowed in (acceptable or [])[: max(n_constraints - dropped, 0)]:
                region &= allowed
            if region.bit_count() > self.min_keep:
                return region, full ^ block
            failures += 1
            if failures == self.max_tries:
                # Relax one more non-overlap constraint (the last one first); once all are dropped
                # any placement succeeds, so the loop always ends.
                dropped, failures = dropped + 1, 0

    # -- batch ------------------------------------------------------------------------------------
    def __call__(self, batch_size: int, n: int | tuple[int, int],
                 generator: torch.Generator | None = None, device: torch.device | str | None = None) -> BlockMasks:
        grid = (int(n), int(n)) if isinstance(n, int) else (int(n[0]), int(n[1]))
        if min(grid) < 2:
            raise ValueError(f"JEPA block masking needs a grid of at least 2×2 patches, got {grid}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        draw = _Uniforms(generator)
        p_size = self.block_size(grid, self.pred_scale, self.pred_aspect, draw)
        e_size = self.block_size(grid, self.enc_scale, (1.0, 1.0), draw)

        enc: list[Tensor] = []
        pred: list[list[Tensor]] = []
        cells = grid[0] * grid[1]
        for _ in range(batch_size):
            targets, complements = [], []
            for _ in range(self.n_pred):
                bits, comp = self._place(grid, p_size, draw)
                targets.append(_bits_to_index(bits, cells))
                complements.append(comp)
            pred.append(targets)
            ctx, _ = self._place(grid, e_size, draw, None if self.allow_overlap else complements)
            enc.append(_bits_to_index(ctx, cells))

        k_enc = min(e.numel() for e in enc)
        k_pred = min(t.numel() for ts in pred for t in ts)
        enc_t = torch.stack([e[:k_enc] for e in enc]).to(device)
        pred_t = [torch.stack([ts[j][:k_pred] for ts in pred]).to(device) for j in range(self.n_pred)]
        return BlockMasks(enc_t, pred_t)


class _Uniforms:
    """Uniform draws from a torch generator, fetched in chunks (one tensor call per 1024 numbers)."""

    def __init__(self, generator: torch.Generator | None, chunk: int = 1024) -> None:
        self.generator, self.chunk = generator, chunk
        self.buf: list[float] = []
        self.pos = 0

    def uniform(self) -> float:
        if self.pos == len(self.buf):
            self.buf = _rand((self.chunk,), self.generator, torch.device("cpu")).double().tolist()
            self.pos = 0
        self.pos += 1
        return self.buf[self.pos - 1]

    def integer(self, high: int) -> int:
        """Uniform integer in ``[0, high)``."""
        return min(int(self.uniform() * high), high - 1)


def _bits_to_index(bits: int, cells: int) -> Tensor:
    """Raster indices (ascending) of the set bits of ``bits``."""
    raw = np.frombuffer(bits.to_bytes((cells + 7) // 8, "little"), dtype=np.uint8)
    flags = np.unpackbits(raw, bitorder="little")[:cells]
    return torch.from_numpy(np.flatnonzero(flags).astype(np.int64))


# ---------------------------------------------------------------------------------------------------
# Temporal masking
# ---------------------------------------------------------------------------------------------------


def time_series_keys(inputs: Mapping[str, Tensor]) -> list[str]:
    """Keys of ``inputs`` that are time series (they come with ``<key>_dates``), in input order."""
    return [k for k in inputs if not k.endswith(("_dates", "_mask")) and f"{k}_dates" in inputs]


def temporal_mask(
    inputs: Mapping[str, Tensor],
    keep_ratio: float = 0.5,
    generator: torch.Generator | None = None,
    pad_mask: Mapping[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """Keep ``max(1, ⌊T·keep_ratio⌋)`` random dates of every time series, per sample.

    The same date indices are applied to ``<key>``, ``<key>_dates`` and ``<key>_mask`` (and the pad
    mask). Kept dates are returned in ascending time order (the temporal attention is order-free, so
    this only makes the output easier to read).

    ``pad_mask[key]`` is a ``(B, T)`` bool tensor, True where the date is padding. When given, valid
    dates are always chosen before padded ones, so a padded date is kept only for samples with fewer
    valid dates than the number kept; the returned pad mask marks those.

    Deviation from the official code: it keeps ``⌊T·keep_ratio⌋`` dates, i.e. none at all for a
    single-date series; at least one is kept here. Single-date (non time series) keys are untouched.

    Returns ``(masked_inputs, masked_pad_mask)``; the input dict is not modified.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    out = dict(inputs)
    out_pad = dict(pad_mask) if pad_mask is not None else None
    for key in time_series_keys(inputs):
        x = inputs[key]
        dates = inputs[f"{key}_dates"]
        b, t = dates.shape[:2]
        keep = max(1, int(t * keep_ratio))
        noise = _rand((b, t), generator, device=dates.device)
        pad = pad_mask.get(key) if pad_mask is not None else None
        if pad is not None:
            # Padded dates sort after every valid one.
            noise = noise + pad.to(device=noise.device, dtype=noise.dtype)
        idx = torch.argsort(noise, dim=1)[:, :keep]
        idx, _ = torch.sort(idx, dim=1)
        rows = torch.arange(b, device=dates.device).unsqueeze(1)
        out[key] = x[rows, idx]
        out[f"{key}_dates"] = dates[rows, idx]
        mkey = f"{key}_mask"
        if mkey in inputs:
            m = inputs[mkey]
            if tuple(m.shape[:2]) != (b, t):  # a mask broadcast over batch or time
                m = m.expand(b, t, *m.shape[2:])
            out[mkey] = m[rows, idx]
        if pad is not None:
            out_pad[key] = pad[rows, idx]
    return out, out_pad


# ---------------------------------------------------------------------------------------------------
# Modality masking
# ---------------------------------------------------------------------------------------------------


def modality_mask(
    tokens: Tensor,
    num_modalities: int,
    mask_token: Tensor,
    keep_ratio: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Replace some (patch, modality) context tokens by ``mask_token`` (the student's modality masking).

    ``tokens``: ``(B, M·K, D)`` laid out modality-major ``[m1 patches; m2 patches; ...]``.
    Per sample and patch, one modality drawn uniformly is always kept; of the remaining ``(M−1)·K``
    tokens, ``⌊(M−1)·K·keep_ratio⌋`` drawn uniformly are kept as well. Every other token is replaced
    wholesale by ``mask_token`` (content and positional encoding both lost; sequence length unchanged).

    Returns ``(masked_tokens, keep)`` with ``keep`` a ``(B, M·K)`` bool tensor.
    """
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in [0, 1], got {keep_ratio}")
    b, length, d = tokens.shape
    m = int(num_modalities)
    if m < 1 or length % m:
        raise ValueError(f"token count {length} is not a multiple of num_modalities={m}")
    k = length // m
    device = tokens.device
    forced = _randint(m, (b, k), generator, device) * k + torch.arange(k, device=device)
    n_extra = int(k * (m - 1) * keep_ratio)
    noise = _rand((b, length), generator, device)
    # Forced tokens sort last so the extra draw only picks among the others.
    noise.scatter_(1, forced, 2.0)
    extra = torch.argsort(noise, dim=1)[:, :n_extra]
    keep = torch.zeros(b, length, dtype=torch.bool, device=device)
    keep.scatter_(1, forced, True)
    keep.scatter_(1, extra, True)
    masked = torch.where(keep.unsqueeze(-1), tokens, mask_token.reshape(1, 1, d).to(tokens.dtype))
    return masked, keep
