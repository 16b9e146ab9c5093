"""The AnySat encoder (class :class:`AnySat`), numerically identical to the official release.

Data flow::

    per sensor m:  projector_m -> (B*N, S_m, D) -> shared spatial encoder -> cls -> (B, N, D)
    combiner:      [cls ; (context) ; m1 + PE ; m2 + PE ; ...] -> self-attn blocks -> cross block
    output:        (B, 1+N, D): row 0 = tile token, rows 1..N = patches in raster order

``forward`` is built from three public steps that pretraining code reuses:
:meth:`AnySat.project` (projectors + spatial encoder), :meth:`AnySat.patch_pe` and
:meth:`AnySat.combine` (combiner, optionally restricted to a subset of query patches).

Parameter and module names equal the official ``AnyModule`` state dict, so released weights load
with ``strict=True`` and ``state_dict()`` round-trips.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..sensors import OFFICIAL_SENSORS, Sensor, get_sensor
from .attention import ATTENTION_MODES
from .combiner import Block, CrossBlock, assemble_tokens, cross_buckets
from .pos_embed import sincos_2d
from .projectors import build_projector
from .spatial import SpatialEncoder

__all__ = ["AnySat", "Projected", "SIZES", "OUTPUTS"]

# hub sizes (hubconf.get_default_config): embed_dim, depth, heads; head dim 64 for all
SIZES: dict[str, tuple[int, int, int]] = {"tiny": (256, 2, 4), "small": (512, 4, 8), "base": (768, 6, 12)}
OUTPUTS = ("tile", "patch", "all", "dense")


@dataclass
class Projected:
    """Output of :meth:`AnySat.project` (everything before the combiner)."""

    tokens: dict[str, Tensor]
    """(B, N, D) spatial-encoder patch tokens per non-context sensor, input order, before patch PE."""
    context: Tensor | None
    """(B, 1, D) context token (MODIS) or None."""
    subpatch: dict[str, Tensor] = field(default_factory=dict)
    """(B, N, S_m, D) sub-patch features after the spatial encoder's final LN (requested sensors only)."""
    n: int = 0
    """patches per tile side (N = n*n)."""
    scale: int = 1
    """s = patch_size / 10 (unit of the combiner patch PE)."""

    @property
    def num_modalities(self) -> int:
        return len(self.tokens)

    @property
    def has_context(self) -> bool:
        return self.context is not None


@dataclass(frozen=True)
class _Plan:
    keys: tuple[str, ...]
    batch: int
    n: int
    scale: int
    patch_m: int


class AnySat(nn.Module):
    def __init__(self, embed_dim: int = 768, depth: int = 6, num_heads: int = 12,
                 sensors: Iterable[str] | None = None, attention: str = "tokens", mlp_ratio: float = 4.0):
        super().__init__()
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        keys = list(OFFICIAL_SENSORS if sensors is None else sensors)
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f"sensors must be a non-empty list of distinct keys, got {keys}")
        for key in keys:
            get_sensor(key)  # ValueError for unknown sensors
        self.embed_dim, self.depth, self.num_heads, self.attention = embed_dim, depth, num_heads, attention
        self._sensors = keys
        self.new_sensors: tuple[str, ...] = tuple(keys)
        """Sensors whose projector is freshly initialised, not loaded (all of them until weights are
        loaded; :meth:`from_official` sets the ones its state dict lacks)."""

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        for key in sorted(keys):  # sorted = the official registration / state-dict order
            self.add_module(f"projector_{key}", build_projector(get_sensor(key), embed_dim))
        self.spatial_encoder = SpatialEncoder(embed_dim, depth, num_heads, mlp_ratio)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, attention) for _ in range(depth)]
                                    + [CrossBlock(embed_dim, num_heads, mlp_ratio)])
        self._init_weights()

    # ------------------------------------------------------------------ construction
    @torch.no_grad()
    def _init_weights(self) -> None:
        """Official init: spatial encoder trunc-normal(0.02) + depth rescaling, combiner cls token
        trunc-normal(0.02), everything else PyTorch default / set in the layer constructors (LTAE
        queries and keys N(0, 0.5), iRPE tables trunc-normal(0.02), q_learned and pad scalars 0)."""
        self.spatial_encoder.init_weights()
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @classmethod
    def from_size(cls, size: str = "base", sensors: Iterable[str] | None = None, attention: str = "tokens") -> "AnySat":
        """Randomly initialised hub size: tiny (256, depth 2, 4 heads), small (512, 4, 8), base (768, 6, 12).
        ``sensors=None`` builds projectors for all 11 official sensors."""
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
        dim, depth, heads = SIZES[size]
        return cls(dim, depth, heads, sensors=sensors, attention=attention)

    @classmethod
    def from_official(cls, state_dict_or_path, attention: str = "tokens", prefix: str | None = None,
                      sensors: Iterable[str] | None = None) -> "AnySat":
        """Build the model that exactly fits an official state dict and load it (strict).

        ``state_dict_or_path``: a state dict, or a path to a file holding a bare state dict or a dict
        with a ``state_dict`` entry (the released ``AnySat.pth``). Sizes are inferred from the tensors;
        the projectors are those present in the file. ``prefix`` selects a sub-model of a bigger
        checkpoint (e.g. ``"target_encoder."`` or ``"model.encoder."``); it is detected automatically
        when unambiguous. Returns the model in eval mode.

        ``attention``: "tokens" = the official ``flash_attn=False`` computation (what the hub runs on
        CPU); "flash-heads" = what the official ``flash_attn=True`` path computes on GPU (softmax over
        heads, see ``docs/model.md``), the mode the released weights were most likely trained with.

        ``sensors``: build projectors for exactly these sensors instead of the file's. Projector weights
        of other sensors are dropped; a sensor the state dict has no projector for gets a new one,
        initialised as the official code initialises a projector (LTAE master queries and key weights
        N(0, 0.5), everything else PyTorch's default), listed in :attr:`new_sensors`. Everything else
        still loads strictly (missing or unexpected non-projector keys are errors).
        """
        sd = _load_state_dict(state_dict_or_path)
        sd = _select_prefix(sd, prefix)
        dim = sd["cls_token"].shape[-1]
        blocks = {k.split(".")[2] for k in sd if k.startswith("spatial_encoder.predictor_blocks.")}
        depth = len(blocks)
        rpe_key = "spatial_encoder.predictor_blocks.0.attn.rpe_k.lookup_table_weight"
        if depth == 0 or rpe_key not in sd:
            raise ValueError("state dict has no spatial_encoder.predictor_blocks.*: not an AnySat encoder")
        head_dim = sd[rpe_key].shape[1]
        have = sorted({_projector_of(k) for k in sd if k.startswith("projector_")})
        keys = have if sensors is None else list(sensors)
        # float32 copies (never aliases of the caller's tensors), assigned to a model built on the meta
        # device: nothing is initialised only to be overwritten (seconds for the base model)
        sd = {k: v.to(torch.float32, copy=True) if v.is_floating_point() else v.clone() for k, v in sd.items()
              if not k.startswith("projector_") or _projector_of(k) in keys}
        with torch.device("meta"):
            model = cls(dim, depth, dim // head_dim, sensors=keys, attention=attention)
        new = tuple(k for k in keys if k not in have)
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
        expected = {k for k in missing if k.startswith("projector_") and _projector_of(k) in new}
        if unexpected or set(missing) != expected:
            raise RuntimeError(f"state dict does not fit the AnySat encoder: missing "
                               f"{sorted(set(missing) - expected)}, unexpected {sorted(unexpected)}")
        for k in new:  # a new projector, initialised by its constructor as the official code does
            model.add_module(f"projector_{k}", build_projector(get_sensor(k), dim))
        model.new_sensors = new
        return model.eval()

    # ------------------------------------------------------------------ small helpers
    @property
    def sensors(self) -> list[str]:
        """Sensor keys this model has projectors for."""
        return list(self._sensors)

    def projector(self, key: str) -> nn.Module:
        return self._modules[f"projector_{key}"]

    def set_attention(self, mode: str) -> "AnySat":
        """Switch the combiner self-attention between "tokens" and "flash-heads" (no weight change)."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {mode!r}")
        for blk in self.blocks[:-1]:
            blk.attn.mode = mode
        self.attention = mode
        return self

    def patch_pe(self, n: int, scale: float, device=None, dtype=torch.float32) -> Tensor:
        """(n*n, D) combiner patch encoding: patch (i, j) at (i*s, j*s) in 10 m units."""
        return sincos_2d(n, scale, self.embed_dim, device=device, dtype=dtype)

    # ------------------------------------------------------------------ input checks
    def check_inputs(self, inputs: Mapping, patch_size, pad_mask: Mapping | None = None) -> _Plan:
        """Validate a sample dict against the registry; raises ValueError naming the problem."""
        if not isinstance(inputs, Mapping):
            raise ValueError(f"inputs must be a dict {{sensor: tensor, sensor_dates: tensor}}, got {type(inputs).__name__}")
        keys = [k for k in inputs if not (k.endswith("_dates") or k.endswith("_mask"))]
        if not keys:
            raise ValueError("inputs hold no sensor tensor")
        for k in inputs:
            for suffix in ("_dates", "_mask"):
                if k.endswith(suffix) and k[: -len(suffix)] not in keys:
                    raise ValueError(f"input {k!r} has no matching sensor tensor {k[: -len(suffix)]!r}")
        if pad_mask is not None:
            if not isinstance(pad_mask, Mapping):
                raise ValueError("pad_mask must be a dict {time-series sensor: (B, T) bool, True = padded date}")
            for k in pad_mask:
                if k not in keys or not get_sensor(k).time_series:
                    raise ValueError(f"pad_mask has an entry for {k!r}, which is not a time series of the inputs")
        P = _patch_metres(patch_size)
        batch, footprints = None, {}
        for key in keys:
            sensor = get_sensor(key)
            if key not in self._sensors:
                raise ValueError(f"this model has no projector for sensor {key!r} (it has: {', '.join(self._sensors)})")
            x = inputs[key]
            if not isinstance(x, Tensor):
                raise ValueError(f"sensor {key!r}: expected a tensor, got {type(x).__name__}")
            want = 5 if sensor.time_series else 4
            if x.dim() != want:
                layout = "B x T x C x H x W" if sensor.time_series else "B x C x H x W"
                raise ValueError(f"sensor {key!r}: expected a {want}-D tensor ({layout}), got shape {tuple(x.shape)}")
            B, C, H, W = x.shape[0], x.shape[-3], x.shape[-2], x.shape[-1]
            if batch is None:
                batch = B
            elif B != batch:
                raise ValueError(f"sensor {key!r}: batch size {B} differs from {batch}")
            if C != sensor.channels:
                raise ValueError(f"sensor {key!r}: expected {sensor.channels} channels {sensor.bands}, got {C}")
            if H != W:
                raise ValueError(f"sensor {key!r}: tiles must be square, got {H} x {W} px")
            if sensor.time_series:
                _check_series(key, x, inputs, pad_mask)
            if sensor.context:
                if H != 1:
                    raise ValueError(f"sensor {key!r} is a context sensor: expected 1 x 1 px, got {H} x {W}")
                continue
            footprints[key] = W * sensor.resolution_m
        if not footprints:
            raise ValueError("inputs need at least one spatial (non-context) sensor")
        tile = next(iter(footprints.values()))
        for key, fp in footprints.items():
            if not math.isclose(fp, tile, rel_tol=1e-6):
                sides = ", ".join(f"{k}: {v:g} m" for k, v in footprints.items())
                raise ValueError(f"sensor footprints differ (width_px x resolution): {sides}")
        n_float = tile / P
        n = int(round(n_float))
        if n < 1 or not math.isclose(n_float, n, rel_tol=1e-9):
            raise ValueError(f"patch size {P} m does not divide the {tile:g} m tile")
        s = P // 10
        for key in footprints:
            sensor = get_sensor(key)
            if not _is_multiple(P, sensor.subpatch_m):
                raise ValueError(f"patch size {P} m is not a multiple of the {sensor.subpatch_m:g} m sub-patch of sensor {key!r}")
            H = inputs[key].shape[-1]
            if sensor.projector == "vhr":
                if H % sensor.kernel:
                    raise ValueError(f"sensor {key!r}: {H} px is not a multiple of the {sensor.kernel} px sub-patch kernel")
                per_patch, cells = sensor.subpatches_per_side(P), H // sensor.kernel
            else:
                per_patch, cells = max(1, s // sensor.reduce_scale), H
                if per_patch != sensor.subpatches_per_side(P):
                    raise ValueError(f"sensor {key!r}: {per_patch} px per patch side (s // reduce_scale) disagrees "
                                     f"with its {sensor.subpatch_m:g} m sub-patch size at {P} m patches")
            if cells % per_patch or cells // per_patch != n:
                raise ValueError(f"sensor {key!r}: {H} px cannot be cut into {n} x {n} patches of {P} m")
        return _Plan(tuple(keys), batch, n, s, P)

    # ------------------------------------------------------------------ the three steps
    def project(self, inputs: Mapping, patch_size, pad_mask: Mapping | None = None,
                keep_subpatch: str | Iterable[str] | bool | None = None) -> Projected:
        """Projectors + spatial encoder for every sensor of ``inputs`` (dict order = modality order).

        ``pad_mask``: optional {sensor: (B, T) bool, True = padded date}; padded dates are then left
        out of the temporal attention and of the s2 in_norm statistics (None = official behaviour:
        padded dates take part). ``keep_subpatch``: sensor key(s) (or True = all) whose sub-patch
        features to return in ``Projected.subpatch``.
        """
        plan = self.check_inputs(inputs, patch_size, pad_mask)
        if keep_subpatch is True:
            keep = set(plan.keys)
        elif isinstance(keep_subpatch, str):
            keep = {keep_subpatch}
        else:
            keep = set(keep_subpatch or ())
        B, N, D, P = plan.batch, plan.n * plan.n, self.embed_dim, plan.patch_m
        # 1) projectors; 2) spatial encoder, one call per geometry (grid, unit): sensors with the same
        # sub-patch grid (e.g. s2 and s1, or spot/s2/s1 at 10 m) share the call. Sequences are
        # independent, so batching them together is exact and saves per-call overhead.
        groups: dict[tuple, list[tuple[str, Tensor]]] = {}
        for key in plan.keys:
            sensor: Sensor = get_sensor(key)
            proj = self.projector(key)
            if sensor.projector == "vhr":
                z = proj(inputs[key], P)
            else:
                pad = None if pad_mask is None else pad_mask.get(key)
                z = proj(inputs[key], inputs[f"{key}_dates"], P, inputs.get(f"{key}_mask"), pad)
            geometry = (sensor.subpatches_per_side(P), float(sensor.subpatch_m), z.shape[1])
            groups.setdefault(geometry, []).append((key, z))
        cls_out, sub_out = {}, {}
        for (grid, unit, _), members in groups.items():
            want = any(k in keep and not get_sensor(k).context for k, _ in members)
            z = members[0][1] if len(members) == 1 else torch.cat([z for _, z in members])
            cls, sub = self.spatial_encoder(z, grid, unit, keep_subpatch=want)
            sizes = [m.shape[0] for _, m in members]
            for (key, _), c, sb in zip(members, cls.split(sizes), sub.split(sizes) if want else [None] * len(sizes)):
                cls_out[key], sub_out[key] = c, sb
        tokens, subpatch, context = {}, {}, None
        for key in plan.keys:  # input order
            if get_sensor(key).context:
                context = cls_out[key].view(B, 1, D)
                continue
            tokens[key] = cls_out[key].view(B, N, D)
            if key in keep and sub_out[key] is not None:
                subpatch[key] = sub_out[key].reshape(B, N, -1, D)
        return Projected(tokens, context, subpatch, plan.n, plan.scale)

    def assemble(self, projected: Projected) -> Tensor:
        """[context ; tokens_m + patch PE ...] -> (B, mu + M*N, D), the input of :meth:`combine`."""
        first = next(iter(projected.tokens.values()))
        pe = self.patch_pe(projected.n, projected.scale, first.device, first.dtype)
        return assemble_tokens(list(projected.tokens.values()), projected.context, pe)

    def combine(self, tokens: Tensor, n: int, scale: float, num_modalities: int, has_context: bool,
                query_idx: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
        """Combiner on an assembled sequence ``tokens`` (B, mu + M*K, D) (patch PE already added).

        Prepends the cls token, runs the self-attention blocks, then the cross block whose queries
        are cls + (context) + q_learned + PE of the patches ``query_idx`` (B, K) (None = all n*n
        patches in raster order). The RPE buckets come from the full n x n grid, restricted to those
        patches and tiled over the modality blocks. ``attn_mask``: optional bool (B, mu + M*K),
        True = the token may be attended to (cls always is). Returns (B, 1 + K, D).
        """
        B, L, D = tokens.shape
        mu = int(bool(has_context))
        K = n * n if query_idx is None else query_idx.shape[1]
        if L != mu + num_modalities * K:
            raise ValueError(f"combine: got {L} tokens, expected {mu} context + {num_modalities} x {K} patch tokens")
        x = torch.cat([self.cls_token.expand(B, -1, -1).to(tokens.dtype), tokens], dim=1)  # cls PE = 0
        key_mask = None
        if attn_mask is not None:
            key_mask = torch.cat([attn_mask.new_ones(B, 1, dtype=torch.bool), attn_mask.bool()], dim=1)
        for blk in self.blocks[:-1]:
            x = blk(x, key_mask)
        pe = self.patch_pe(n, scale, tokens.device, tokens.dtype)
        zeros = pe.new_zeros(1 + mu, D)
        if query_idx is None:
            query_pe = torch.cat([zeros, pe])
        else:
            query_pe = torch.cat([zeros.expand(B, -1, -1), pe[query_idx.long()]], dim=1)
        buckets = cross_buckets(n, num_modalities, bool(has_context), query_idx, tokens.device)
        return self.blocks[-1](x, query_pe, buckets, drop_row=1 if mu else None, key_mask=key_mask)

    # ------------------------------------------------------------------ public forward
    def forward(self, inputs: Mapping, patch_size=10, output: str = "patch", output_modality: str | None = None,
                pad_mask: Mapping | None = None) -> Tensor:
        """Encode a sample dict. Channels-last outputs (as the official code, not its README):
        tile (B, D); patch (B, n, n, D); all (B, 1+N, D); dense (B, n*g, n*g, 2D) for
        ``output_modality`` (default: first sensor of ``inputs``), channels [patch token | sub-patch].

        ``inputs``: {sensor: tensor (B x C x H x W, or B x T x C x H x W for time series),
        sensor + "_dates": (B, T) day values, optional sensor + "_mask" (1 = valid value)}; dict order
        is the modality order. ``patch_size`` in metres (multiple of 10 and of every sub-patch size).
        ``pad_mask``: optional {sensor: (B, T) bool, True = padded date}. None reproduces the official
        behaviour (zero-padded dates take part in the temporal attention and the s2 in_norm); with a
        mask, padded dates are excluded from both, so each sample of a padded batch gives the same
        result as the unpadded sample.
        """
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        dense_key = None
        if output == "dense":
            keys = [k for k in inputs if not (k.endswith("_dates") or k.endswith("_mask"))] if isinstance(inputs, Mapping) else []
            dense_key = output_modality if output_modality is not None else (keys[0] if keys else None)
            if dense_key not in keys:
                raise ValueError(f"output_modality {dense_key!r} is not among the input sensors {keys}")
            if get_sensor(dense_key).context:
                raise ValueError(f"output_modality {dense_key!r} is a context sensor (one token per tile): no dense output")
        proj = self.project(inputs, patch_size, pad_mask, keep_subpatch=dense_key)
        y = self.combine(self.assemble(proj), proj.n, proj.scale, proj.num_modalities, proj.has_context)
        if output == "tile":
            return y[:, 0]
        if output == "all":
            return y
        B, n, D = y.shape[0], proj.n, self.embed_dim
        patches = y[:, 1:]
        if output == "patch":
            return patches.reshape(B, n, n, D)
        sub = proj.subpatch[dense_key]  # (B, N, S, D), sub-patch k of patch (i, j) -> (i*g + k//g, j*g + k%g)
        S = sub.shape[2]
        g = math.isqrt(S)
        dense = torch.cat([patches[:, :, None].expand(-1, -1, S, -1), sub], dim=-1)
        return dense.view(B, n, n, g, g, 2 * D).permute(0, 1, 3, 2, 4, 5).reshape(B, n * g, n * g, 2 * D)


# ---------------------------------------------------------------------- module-level helpers
def _patch_metres(patch_size) -> int:
    try:
        P = float(patch_size)
    except (TypeError, ValueError):
        raise ValueError(f"patch_size must be a number of metres, got {patch_size!r}") from None
    if P <= 0 or P != int(P) or int(P) % 10:
        raise ValueError(f"patch_size must be a positive multiple of 10 m, got {patch_size!r}")
    return int(P)


def _is_multiple(a: float, b: float) -> bool:
    q = a / b
    return q >= 1 and math.isclose(q, round(q), rel_tol=0, abs_tol=1e-9)


def _check_series(key: str, x: Tensor, inputs: Mapping, pad_mask: Mapping | None) -> None:
    B, T = x.shape[:2]
    dates = inputs.get(f"{key}_dates")
    if dates is None:
        raise ValueError(f"time series {key!r} needs {key + '_dates'!r} (B x T day values)")
    if not isinstance(dates, Tensor) or tuple(dates.shape) != (B, T):
        raise ValueError(f"{key + '_dates'!r}: expected shape {(B, T)}, got {tuple(getattr(dates, 'shape', ()))}")
    mask = inputs.get(f"{key}_mask")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dim() != 5 or any(m not in (1, d) for m, d in zip(mask.shape, x.shape)):
            raise ValueError(f"{key + '_mask'!r}: expected a mask broadcastable to {tuple(x.shape)}, "
                             f"got {tuple(getattr(mask, 'shape', ()))}")
    if pad_mask is not None and pad_mask.get(key) is not None:
        pm = pad_mask[key]
        if not isinstance(pm, Tensor) or tuple(pm.shape) != (B, T):
            raise ValueError(f"pad_mask[{key!r}]: expected a bool tensor of shape {(B, T)}")


def _projector_of(key: str) -> str:
    """``projector_<sensor>.…`` -> ``<sensor>``."""
    return key.split(".")[0][len("projector_"):]


def _load_state_dict(obj) -> dict[str, Tensor]:
    if isinstance(obj, (str, os.PathLike)):
        obj = torch.load(obj, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state dict or a path to one, got {type(obj).__name__}")
    return dict(obj)


def _select_prefix(sd: dict[str, Tensor], prefix: str | None) -> dict[str, Tensor]:
    if prefix is None:
        if "cls_token" in sd:
            return sd
        candidates = sorted(k[: -len("cls_token")] for k in sd
                            if k.endswith("cls_token") and not k.endswith("spatial_encoder.cls_token")
                            and f"{k[: -len('cls_token')]}spatial_encoder.cls_token" in sd)
        if len(candidates) != 1:
            raise ValueError("cannot find the encoder in this checkpoint"
                             + (f"; several candidates {candidates}: pass prefix=" if candidates else ""))
        prefix = candidates[0]
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if "cls_token" not in out:
        raise ValueError(f"no '{prefix}cls_token' in the checkpoint: wrong prefix?")
    return out
