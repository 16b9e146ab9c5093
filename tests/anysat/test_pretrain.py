"""JEPA pretraining parts: masks, losses, EMA, predictor, and one full JEPA step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anysat.pretrain.ema import EMATeacher, ema_momentum
from anysat.pretrain.losses import mil_nce_loss, normalize_targets, prediction_loss
from anysat.pretrain.masking import BlockMaskCollator, modality_mask, temporal_mask
from anysat.pretrain.predictor import Predictor


# ---------------------------------------------------------------------------------------------------
# Block mask collator
# ---------------------------------------------------------------------------------------------------


def _is_rectangle(idx: torch.Tensor, n: int, h: int, w: int) -> bool:
    rows, cols = (idx // n).tolist(), (idx % n).tolist()
    r0, c0 = min(rows), min(cols)
    expected = sorted((r0 + i) * n + (c0 + j) for i in range(h) for j in range(w))
    return idx.tolist() == expected


def _expected_size(r: float, n: int, scale, aspect):
    k = int(n * n * (scale[0] + r * (scale[1] - scale[0])))
    a = aspect[0] + r * (aspect[1] - aspect[0])
    h, w = int(round(math.sqrt(k * a))), int(round(math.sqrt(k / a)))
    while h >= n:
        h -= 1
    while w >= n:
        w -= 1
    return h, w


@pytest.mark.parametrize("n,seed", [(6, 0), (6, 3), (10, 1), (16, 7)])
def test_collator_block_sizes_follow_the_shared_draw(n, seed):
    coll = BlockMaskCollator()
    masks = coll(5, n, torch.Generator().manual_seed(seed))
    # The first two uniforms of the generator stream (drawn in chunks of 1024) fix the target and
    # the context block sizes.
    r_pred, r_enc = torch.rand(1024, generator=torch.Generator().manual_seed(seed))[:2].double().tolist()
    h, w = _expected_size(r_pred, n, (0.2, 0.8), (0.75, 1.5))
    eh, ew = _expected_size(r_enc, n, (0.85, 1.0), (1.0, 1.0))
    assert len(masks.pred) == 4
    for p in masks.pred:
        assert p.shape == (5, h * w)
        for row in p:
            assert _is_rectangle(row, n, h, w)
    assert masks.enc.shape[0] == 5 and 1 <= masks.enc.shape[1] <= eh * ew


def test_collator_known_case_squares():
    # 4x4 grid, targets exactly 25 % with aspect 1 -> 2x2 squares; the context (scale 1 -> 4x4 ->
    # shrunk to 3x3) avoids all of them.
    coll = BlockMaskCollator(enc_scale=(1.0, 1.0), pred_scale=(0.25, 0.25), pred_aspect=(1.0, 1.0), n_pred=2)
    for seed in range(20):
        m = coll(3, 4, torch.Generator().manual_seed(seed))
        for p in m.pred:
            assert p.shape == (3, 4)
            for row in p:
                assert _is_rectangle(row, 4, 2, 2)
        for b in range(3):
            ctx = set(m.enc[b].tolist())
            assert ctx and all(0 <= i < 16 for i in ctx)
            assert ctx.isdisjoint(m.pred[0][b].tolist()) and ctx.isdisjoint(m.pred[1][b].tolist())


@pytest.mark.parametrize("n", [6, 10, 14])
def test_context_never_overlaps_targets_with_ijepa_scales(n):
    coll = BlockMaskCollator(pred_scale=(0.15, 0.2))
    for seed in range(10):
        m = coll(8, n, torch.Generator().manual_seed(seed))
        for b in range(8):
            ctx = m.enc[b].tolist()
            assert len(set(ctx)) == len(ctx) and ctx == sorted(ctx)
            for p in m.pred:
                assert set(ctx).isdisjoint(p[b].tolist())


def test_context_truncated_to_batch_minimum_and_nonempty_with_official_scales():
    coll = BlockMaskCollator()
    sizes = []
    for seed in range(30):
        m = coll(16, 6, torch.Generator().manual_seed(seed))
        assert m.enc.shape[1] >= 1
        assert all(row.tolist() == sorted(set(row.tolist())) for row in m.enc)
        sizes.append(m.enc.shape[1])
    # With the official scales (4 targets of 20-80 % of the grid to avoid) the context of a 6x6 grid
    # collapses to a few patches.
    assert sum(sizes) / len(sizes) < 6


def test_collator_is_deterministic_given_the_seed():
    coll = BlockMaskCollator()
    a = coll(4, 8, torch.Generator().manual_seed(123))
    b = coll(4, 8, torch.Generator().manual_seed(123))
    c = coll(4, 8, torch.Generator().manual_seed(124))
    assert torch.equal(a.enc, b.enc) and all(torch.equal(x, y) for x, y in zip(a.pred, b.pred))
    assert not (torch.equal(a.enc, c.enc) and all(torch.equal(x, y) for x, y in zip(a.pred, c.pred)))


def test_collator_rejects_tiny_grid():
    with pytest.raises(ValueError):
        BlockMaskCollator()(2, 1)


# ---------------------------------------------------------------------------------------------------
# Temporal and modality masking
# ---------------------------------------------------------------------------------------------------


def _series(b: int, t: int):
    # value of date t in every pixel/channel is t, its date is 100 + t, its mask is t % 2
    x = torch.arange(t, dtype=torch.float32).view(1, t, 1, 1, 1).expand(b, t, 2, 3, 3).clone()
    dates = (100 + torch.arange(t)).expand(b, t).clone()
    mask = (torch.arange(t) % 2).view(1, t, 1, 1, 1).expand(b, t, 1, 3, 3).clone()
    return x, dates, mask


@pytest.mark.parametrize("t", [1, 2, 7, 10])
def test_temporal_mask_keeps_half_the_dates_consistently(t):
    x, dates, mask = _series(5, t)
    aerial = torch.randn(5, 4, 10, 10)
    inputs = {"aerial": aerial, "s2": x, "s2_dates": dates, "s2_mask": mask}
    out, pad = temporal_mask(inputs, 0.5, torch.Generator().manual_seed(0))
    keep = max(1, t // 2)
    assert pad is None
    assert out["aerial"] is aerial  # single-date modality untouched
    assert out["s2"].shape == (5, keep, 2, 3, 3) and out["s2_dates"].shape == (5, keep)
    assert out["s2_mask"].shape == (5, keep, 1, 3, 3)
    for b in range(5):
        kept = out["s2_dates"][b] - 100
        assert len(set(kept.tolist())) == keep and kept.tolist() == sorted(kept.tolist())
        assert torch.all(out["s2"][b] == kept.view(keep, 1, 1, 1).float())
        assert torch.all(out["s2_mask"][b] == (kept % 2).view(keep, 1, 1, 1))
    assert inputs["s2"] is x and x.shape[1] == t  # input dict not modified


def test_temporal_mask_samples_differ_and_are_reproducible():
    x, dates, _ = _series(8, 12)
    inputs = {"s2": x, "s2_dates": dates}
    a, _ = temporal_mask(inputs, 0.5, torch.Generator().manual_seed(5))
    b, _ = temporal_mask(inputs, 0.5, torch.Generator().manual_seed(5))
    assert torch.equal(a["s2_dates"], b["s2_dates"])
    assert len({tuple(r.tolist()) for r in a["s2_dates"]}) > 1


def test_temporal_mask_never_picks_padding_when_avoidable():
    x, dates, _ = _series(3, 8)
    valid = torch.tensor([8, 5, 3])
    pad = torch.arange(8).unsqueeze(0) >= valid.unsqueeze(1)  # right padding
    for seed in range(10):
        out, out_pad = temporal_mask({"s1": x, "s1_dates": dates}, 0.5, torch.Generator().manual_seed(seed),
                                     pad_mask={"s1": pad})
        kept = out["s1_dates"] - 100
        assert kept.shape == (3, 4)
        for b in range(3):
            n_valid_kept = min(4, int(valid[b]))
            assert int((kept[b] < valid[b]).sum()) == n_valid_kept
            assert torch.equal(out_pad["s1"][b], kept[b] >= valid[b])
        assert out_pad["s1"][0].sum() == 0 and out_pad["s1"][2].sum() == 1


def test_modality_mask_counts_and_replacement():
    b, m, k, d = 6, 3, 5, 4
    tokens = torch.randn(b, m * k, d)
    mask_token = torch.full((1, 1, d), 7.0)
    out, keep = modality_mask(tokens, m, mask_token, 0.5, torch.Generator().manual_seed(0))
    assert keep.shape == (b, m * k)
    # one forced modality per patch + floor((M-1)*K*0.5) = 5 others
    assert torch.all(keep.sum(1) == k + (m - 1) * k // 2)
    per_patch = keep.view(b, m, k).sum(1)
    assert torch.all(per_patch >= 1)
    assert torch.equal(out[keep], tokens[keep])
    assert torch.all(out[~keep] == 7.0)


def test_modality_mask_single_modality_keeps_everything():
    tokens = torch.randn(2, 4, 3)
    out, keep = modality_mask(tokens, 1, torch.zeros(3), 0.5, torch.Generator().manual_seed(0))
    assert keep.all() and torch.equal(out, tokens)


def test_modality_mask_gradient_reaches_mask_token():
    tokens = torch.randn(2, 8, 3)
    mt = torch.zeros(1, 1, 3, requires_grad=True)
    out, keep = modality_mask(tokens, 2, mt, 0.5, torch.Generator().manual_seed(1))
    out.sum().backward()
    assert torch.equal(mt.grad.flatten(), torch.full((3,), float((~keep).sum())))


# ---------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------


def test_smooth_l1_known_values():
    pred = torch.tensor([[0.0, 0.5, 3.0], [-2.0, 1.0, 0.0]])
    target = torch.zeros(2, 3)
    # Huber(beta=1): 0, 0.125, 2.5, 1.5, 0.5, 0
    assert prediction_loss(pred, target).item() == pytest.approx((0.125 + 2.5 + 1.5 + 0.5) / 6)


def test_normalize_targets_has_no_affine():
    h = torch.randn(3, 5, 16) * 4 + 2
    y = normalize_targets(h)
    torch.testing.assert_close(y.mean(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(3, 5), atol=1e-3, rtol=0)
    ref = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(y, ref)


def _mil_nce_loops(tokens, valid=None, tau=0.1):
    """MIL-NCE written out entry by entry: for row r = (modality k, sample b, patch p),
    logsumexp over every allowed column minus logsumexp over the same (b, p) in the other modalities;
    same-modality same-sample entries (and invalid patches) are excluded."""
    m = len(tokens)
    b, n, _ = tokens[0].shape
    ok = lambda k, s, p: True if valid is None else bool(valid[k][s, p])  # noqa: E731
    cos = lambda u, v: float((u @ v) / max(float(u.norm() * v.norm()), 1e-8))  # noqa: E731
    total = 0.0
    for k in range(m):
        for s in range(b):
            for p in range(n):
                if not ok(k, s, p):
                    continue
                u = tokens[k][s, p]
                allv = [cos(u, tokens[k2][s2, p2]) / tau for k2 in range(m) for s2 in range(b) for p2 in range(n)
                        if not (k2 == k and s2 == s) and ok(k2, s2, p2)]
                posv = [cos(u, tokens[k2][s, p]) / tau for k2 in range(m) if k2 != k and ok(k2, s, p)]
                if allv:
                    total += math.log(sum(math.exp(v) for v in allv))
                if posv:
                    total -= math.log(sum(math.exp(v) for v in posv))
    return total / (m * b * n)


def test_mil_nce_trivial_cases():
    a, c = torch.randn(1, 1, 4), torch.randn(1, 1, 4)
    # one sample, one patch, two modalities: the only candidate is the positive -> 0
    assert mil_nce_loss([a, c]).item() == pytest.approx(0.0, abs=1e-6)
    # orthonormal patches: each row sees its positive at cos 1 and one negative at cos 0
    e = torch.eye(2, dtype=torch.float64).unsqueeze(0)  # (1, N=2, D=2)
    assert mil_nce_loss([e, e.clone()]).item() == pytest.approx(math.log1p(math.exp(-10.0)), rel=1e-5)
    # a single modality has no positives
    assert mil_nce_loss([torch.randn(2, 3, 4)]).item() == 0.0


@pytest.mark.parametrize("m,b,n", [(2, 2, 2), (3, 2, 3), (4, 3, 2)])
def test_mil_nce_matches_explicit_loops(m, b, n):
    g = torch.Generator().manual_seed(m * 100 + b * 10 + n)
    tokens = [torch.randn(b, n, 5, generator=g, dtype=torch.float64) for _ in range(m)]
    got = mil_nce_loss(tokens).item()
    assert got == pytest.approx(_mil_nce_loops(tokens), rel=1e-9)
    tau = 0.5
    assert mil_nce_loss(tokens, tau=tau).item() == pytest.approx(_mil_nce_loops(tokens, tau=tau), rel=1e-9)


def test_mil_nce_with_validity_masks_matches_loops():
    g = torch.Generator().manual_seed(0)
    m, b, n = 3, 2, 4
    tokens = [torch.randn(b, n, 6, generator=g, dtype=torch.float64) for _ in range(m)]
    valid = [torch.rand(b, n, generator=g) > 0.35 for _ in range(m)]
    valid[0][1, 2] = True
    valid[1][1, 2] = False
    valid[2][1, 2] = False  # a valid row whose positives are all invalid
    got = mil_nce_loss(tokens, valid)
    assert got.item() == pytest.approx(_mil_nce_loops(tokens, valid), rel=1e-9)
    # all-valid masks equal no masks; None entries mean all valid
    full = [torch.ones(b, n, dtype=torch.bool)] * m
    assert mil_nce_loss(tokens, full).item() == pytest.approx(mil_nce_loss(tokens).item(), rel=1e-12)
    assert mil_nce_loss(tokens, [None, None, None]).item() == pytest.approx(mil_nce_loss(tokens).item(), rel=1e-12)


def test_mil_nce_gradients_are_finite_with_masks():
    tokens = [torch.randn(2, 3, 4, requires_grad=True) for _ in range(2)]
    valid = [torch.tensor([[1, 0, 1], [0, 0, 0]]), torch.tensor([[1, 1, 0], [0, 1, 1]])]
    loss = mil_nce_loss(tokens, valid)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(t.grad).all() for t in tokens)


# ---------------------------------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------------------------------


def test_ema_momentum_schedule():
    assert ema_momentum(0, 1000) == pytest.approx(0.996)
    assert ema_momentum(500, 1000) == pytest.approx(0.998)
    assert ema_momentum(1000, 1000) == pytest.approx(1.0)
    assert ema_momentum(5000, 1000) == pytest.approx(1.0)
    assert ema_momentum(250, 1000, start=0.99, end=0.999) == pytest.approx(0.99 + 0.25 * 0.009)


def test_ema_teacher_moves_toward_student_and_stays_frozen():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.module.training and not teacher.module[1].training
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    t_before = [p.clone() for p in teacher.module.parameters()]
    teacher.update(student, 0.9)
    for tb, ta, s in zip(t_before, teacher.module.parameters(), student.parameters()):
        torch.testing.assert_close(ta, 0.9 * tb + 0.1 * s)
        assert (ta - s).abs().sum() < (tb - s).abs().sum()
    # momentum 1 freezes the teacher
    t_now = [p.clone() for p in teacher.module.parameters()]
    teacher.update(student, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(t_now, teacher.module.parameters()))
    # deterministic outputs (eval mode) and no graph
    x = torch.randn(3, 4)
    y1, y2 = teacher(x), teacher(x)
    assert torch.equal(y1, y2) and not y1.requires_grad


# ---------------------------------------------------------------------------------------------------
# Predictor
# ---------------------------------------------------------------------------------------------------


def test_predictor_parameter_count_matches_official():
    d = 256  # hub tiny
    p = Predictor(d)
    expected = 2 * (d * d + d) + 2 * d + 4 * (12 * d * d + 13 * d) + 2 * d
    assert sum(t.numel() for t in p.parameters()) == expected == 3_291_648
    assert torch.count_nonzero(p.cls_token) == 0
    assert all(torch.count_nonzero(blk.attn.qkv.bias) == 0 for blk in p.predictor_blocks)
    assert p.predictor_norm.eps == 1e-5
    names = {k for k, _ in p.named_parameters()}
    assert {"mask_token", "cls_token", "predictor_embed.weight", "predictor_blocks.3.mlp.fc2.weight",
            "predictor_norm.weight", "predictor_proj.bias"} <= names


def test_predictor_positional_tables():
    pe = torch.arange(12, dtype=torch.float32).view(6, 2) + 1
    fixed = Predictor(8, depth=1, num_heads=2)
    shifted = Predictor(8, depth=1, num_heads=2, official_pe_shift=True)
    assert torch.equal(fixed.positional_table(pe), pe)
    table = shifted.positional_table(pe)
    assert torch.equal(table[0], torch.zeros(2)) and torch.equal(table[1:], pe[:-1])


def test_predictor_shapes_block_major_and_pe_gather():
    torch.manual_seed(0)
    d, n = 16, 16
    pred = Predictor(d, depth=2, num_heads=4).eval()
    pe = torch.randn(n, d)
    ctx = torch.tensor([[0, 5], [3, 9]])
    targets = [torch.tensor([[1, 2, 6], [4, 8, 12]]), torch.tensor([[10, 11, 15], [0, 1, 2]])]
    x = torch.randn(2, 2, d)
    out = pred(x, pe, ctx, targets)
    assert out.shape == (4, 3, d)
    # Row j*B + b is target block j of sample b: changing sample 1's block-1 targets changes only row 3.
    targets2 = [targets[0], torch.tensor([[10, 11, 15], [0, 1, 3]])]
    out2 = pred(x, pe, ctx, targets2)
    assert torch.equal(out[:3], out2[:3]) and not torch.equal(out[3], out2[3])
    # The PE at the true index: moving the PE row of patch 9 changes sample 1 only.
    pe3 = pe.clone()
    pe3[9] += torch.randn(d)  # not a constant shift, which the LayerNorms would remove
    out3 = pred(x, pe3, ctx, targets)
    assert torch.equal(out3[0], out[0]) and torch.equal(out3[2], out[2]) and not torch.equal(out3[1], out[1])
    # With the official shift, patch 9 reads row 8 of the grid PE instead.
    shifted = Predictor(d, depth=2, num_heads=4, official_pe_shift=True).eval()
    shifted.load_state_dict(pred.state_dict())
    ref = pred(x, torch.cat([torch.zeros(1, d), pe[:-1]]), ctx, targets)
    torch.testing.assert_close(shifted(x, pe, ctx, targets), ref)


def test_predictor_flash_heads_mode_never_mixes_tokens():
    torch.manual_seed(0)
    d = 16
    pe = torch.randn(9, d)
    ctx = torch.tensor([[0, 4]])
    tgt = [torch.tensor([[1, 2]])]
    x1, x2 = torch.randn(1, 2, d), torch.randn(1, 2, d)
    tokens = Predictor(d, depth=2, num_heads=4).eval()
    heads = Predictor(d, depth=2, num_heads=4, attention="flash-heads").eval()
    heads.load_state_dict(tokens.state_dict())
    # official flash layout: target predictions cannot see the context at all
    assert torch.equal(heads(x1, pe, ctx, tgt), heads(x2, pe, ctx, tgt))
    assert not torch.allclose(tokens(x1, pe, ctx, tgt), tokens(x2, pe, ctx, tgt))


# ---------------------------------------------------------------------------------------------------
# JEPA on a tiny encoder
# ---------------------------------------------------------------------------------------------------

from anysat.pretrain.jepa import JEPA, gather_patches, patch_validity  # noqa: E402

TREESAT_LIKE = ["aerial", "s2", "s1-asc"]
PLANTED_LIKE = ["s2", "s1", "l7", "alos", "modis"]


def _treesat_batch(b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {  # 30 m tile: aerial 150 px @ 0.2 m, S2/S1 3x3 px @ 10 m
        "aerial": torch.randn(b, 4, 150, 150, generator=g),
        "s2": torch.randn(b, 4, 10, 3, 3, generator=g), "s2_dates": torch.randint(1, 366, (b, 4), generator=g),
        "s1-asc": torch.randn(b, 5, 2, 3, 3, generator=g), "s1-asc_dates": torch.randint(1, 366, (b, 5), generator=g),
    }


def _planted_batch(b: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for key, c, px in [("s2", 10, 9), ("s1", 3, 9), ("l7", 6, 3), ("alos", 3, 3), ("modis", 7, 1)]:
        batch[key] = torch.randn(b, 4, c, px, px, generator=g)
        batch[f"{key}_dates"] = torch.randint(1, 366, (b, 4), generator=g)
        if key != "modis":
            batch[f"{key}_mask"] = (torch.rand(b, 4, 1, px, px, generator=g) > 0.3).float()
    batch["s1_mask"][0, :, :, :3, :3] = 0  # patch 0 of sample 0 fully invalid in S1
    return batch


def _check_step(jepa: JEPA, batch, patch_size: int):
    out = jepa(batch, patch_size=patch_size, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and out["loss_pred"] > 0 and out["loss_con"] > 0
    torch.testing.assert_close(out["loss"].detach(), out["loss_pred"] + out["loss_con"])
    assert out["context_size"] >= 1 and out["num_targets"] == 4
    out["loss"].backward()
    student = dict(jepa.named_parameters())
    checked = 0
    for name, p in student.items():
        if name.startswith("teacher."):
            assert not p.requires_grad and p.grad is None, name
            continue
        if not p.requires_grad:  # the LTAE pad scalars: the official pretraining never trains them
            assert name.endswith("pad_parameter"), name
            continue
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.count_nonzero(p.grad) > 0, f"zero gradient for {name}"
        checked += 1
    groups = {n.split(".")[1] for n in student if n.startswith("encoder.")}
    assert {"spatial_encoder", "blocks", "cls_token"} <= groups
    assert student["masked_token"].grad is not None and student["predictor.mask_token"].grad is not None
    return out, checked


def test_jepa_step_treesat_like_reaches_every_parameter():
    torch.manual_seed(0)
    jepa = JEPA.from_size("tiny", sensors=TREESAT_LIKE, total_steps=10)
    out, checked = _check_step(jepa, _treesat_batch(), patch_size=10)
    assert out["n"] == 3 and out["num_modalities"] == 3
    assert checked == len(jepa.student_parameters())


def test_jepa_step_planted_like_with_context_token_and_validity():
    torch.manual_seed(0)
    jepa = JEPA.from_size("tiny", sensors=PLANTED_LIKE, total_steps=10)
    out, _ = _check_step(jepa, _planted_batch(), patch_size=30)
    assert out["n"] == 3 and out["num_modalities"] == 4  # MODIS is the context token, not a modality


def test_jepa_teacher_ema_after_optimizer_step():
    torch.manual_seed(0)
    jepa = JEPA.from_size("tiny", sensors=TREESAT_LIKE, total_steps=100)
    jepa.train()
    assert not jepa.teacher.module.training and jepa.encoder.training
    name = "spatial_encoder.predictor_blocks.0.attn.qkv.weight"
    t0 = dict(jepa.teacher.module.named_parameters())[name].clone()
    opt = torch.optim.AdamW(jepa.student_parameters(), lr=1e-3, weight_decay=0.05)
    jepa(_treesat_batch(), patch_size=10, generator=torch.Generator().manual_seed(1))["loss"].backward()
    opt.step()
    # the optimiser never touches the teacher
    assert torch.equal(dict(jepa.teacher.module.named_parameters())[name], t0)
    s = dict(jepa.encoder.named_parameters())[name].detach()
    assert not torch.equal(s, t0)
    assert jepa.update_teacher(0) == pytest.approx(0.996)
    t1 = dict(jepa.teacher.module.named_parameters())[name]
    torch.testing.assert_close(t1, 0.996 * t0 + 0.004 * s)
    assert (t1 - s).abs().sum() < (t0 - s).abs().sum()
    assert jepa.update_teacher(50) == pytest.approx(0.998)
    assert jepa.update_teacher(100) == pytest.approx(1.0)


def test_jepa_targets_come_from_the_full_input():
    torch.manual_seed(0)
    jepa = JEPA.from_size("tiny", sensors=TREESAT_LIKE)
    batch = _treesat_batch()
    h = jepa.targets(batch, 10)
    with torch.no_grad():
        ref = jepa.teacher.module(batch, patch_size=10, output="all")[:, 1:]
    torch.testing.assert_close(h, F.layer_norm(ref, (ref.shape[-1],), eps=1e-5))
    assert h.shape == (2, 9, jepa.encoder.embed_dim) and not h.requires_grad


def test_jepa_uses_given_masks_and_pad_mask():
    torch.manual_seed(0)
    jepa = JEPA.from_size("tiny", sensors=TREESAT_LIKE)
    batch = _treesat_batch()
    batch["s2_dates"][1, 3] = 0
    pad = {"s2": torch.tensor([[False] * 4, [False, False, False, True]])}
    enc = torch.tensor([[0, 4], [2, 6]])
    pred = [torch.tensor([[1, 2], [3, 5]])] * 4
    out = jepa(batch, patch_size=10, pad_mask=pad, masks=(enc, pred), generator=torch.Generator().manual_seed(0))
    assert out["context_size"] == 2 and out["target_size"] == 2 and torch.equal(out["masks"].enc, enc)
    assert torch.isfinite(out["loss"])


class _StubEncoder(torch.nn.Module):
    embed_dim = 4

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def test_context_gather_true_index_and_official_shift():
    jepa = JEPA(_StubEncoder(), predictor_heads=2, predictor_depth=1)
    b, n_tok, d = 2, 9, 4
    # token value encodes (modality i, patch p); zero PE so the values pass through
    tokens = [torch.full((b, n_tok, d), 0.0) + (100 * i + torch.arange(n_tok).view(1, n_tok, 1)) for i in range(3)]
    pe = torch.zeros(n_tok, d)
    ctx = torch.tensor([[0, 4, 8], [1, 2, 3]])
    got = jepa._context_tokens(tokens, pe, ctx, has_context=False)[..., 0]
    expected = torch.cat([100 * i + ctx for i in range(3)], dim=1).float()
    assert torch.equal(got, expected)
    jepa.official_context_shift = True
    got = jepa._context_tokens(tokens, pe, ctx, has_context=False)[..., 0]
    # official indexing: modality i reads flat index idx + 1 + i*(N-1) of the concatenated sequence
    flat = torch.cat([t[..., 0] for t in tokens], dim=1)
    expected = torch.cat([torch.gather(flat, 1, ctx + 1 + i * (n_tok - 1)) for i in range(3)], dim=1)
    assert torch.equal(got, expected)
    # patch 4 is read as patch 5, 4 and 3 by the three modalities; patch 0 of the third modality
    # wraps into the last patch of the second
    assert got[0, 1] == 5 and got[0, 4] == 104 and got[0, 7] == 203 and got[0, 6] == 108
    # with a context token the official gather was already right
    got = jepa._context_tokens(tokens, pe, ctx, has_context=True)[..., 0]
    assert torch.equal(got, torch.cat([100 * i + ctx for i in range(3)], dim=1).float())


def test_gather_patches():
    x = torch.arange(2 * 4 * 1).view(2, 4, 1).float()
    assert gather_patches(x, torch.tensor([[3, 0], [1, 1]]))[..., 0].tolist() == [[3, 0], [5, 5]]


def test_patch_validity_groups_pixels_per_patch_and_ignores_padding():
    # 6x6 px at n = 2 -> 3x3 px per patch (official Planted grouping); 2x2 px at n = 2 -> 1 px.
    m = torch.zeros(1, 2, 1, 6, 6)
    m[0, 1, 0, 0, 4] = 1  # patch (0, 1), date 1
    m[0, 0, 0, 5, 0] = 1  # patch (1, 0), date 0
    assert patch_validity(m, 2).tolist() == [[False, True, True, False]]
    pad = torch.tensor([[False, True]])  # date 1 is padding: its valid pixel does not count
    assert patch_validity(m, 2, pad).tolist() == [[False, False, True, False]]
    small = torch.tensor([[[[[1.0, 0.0], [0.0, 1.0]]]]])
    assert patch_validity(small, 2).tolist() == [[True, False, False, True]]
    with pytest.raises(ValueError):
        patch_validity(torch.ones(1, 1, 1, 5, 5), 2)
