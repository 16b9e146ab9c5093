"""Task heads and the encoder+head wrapper."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anysat.heads import DenseSegmenter, TaskModel, TileClassifier


class _ToyEncoder(nn.Module):
    """Stands in for AnySat with the same call signature; has dropout so train/eval matters."""

    def __init__(self, d: int = 8, g: int = 2) -> None:
        super().__init__()
        self.lin = nn.Linear(3, d)
        self.drop = nn.Dropout(0.5)
        self.d, self.g = d, g
        self.calls: list[dict] = []

    def forward(self, inputs, patch_size, output="tile", output_modality=None, pad_mask=None):
        self.calls.append({"patch_size": patch_size, "output": output, "output_modality": output_modality,
                           "pad_mask": pad_mask})
        x = self.drop(self.lin(inputs["s2"].mean(dim=1)))  # (B, D)
        if output == "tile":
            return x
        b = x.shape[0]
        return torch.cat([x, x], dim=-1)[:, None, None, :].expand(b, self.g, self.g, 2 * self.d)


def test_tile_classifier_is_layernorm_then_linear():
    torch.manual_seed(0)
    head = TileClassifier(16, 5)
    x = torch.randn(4, 16)
    y = head(x)
    assert y.shape == (4, 5)
    ref = nn.functional.linear(nn.functional.layer_norm(x, (16,), head.norm.weight, head.norm.bias, 1e-5),
                               head.linear.weight, head.linear.bias)
    torch.testing.assert_close(y, ref)


@pytest.mark.parametrize("proj_size,hw", [(1, (6, 6)), (10, (5, 5)), (3, (2, 4))])
def test_dense_segmenter_shapes(proj_size, hw):
    head = DenseSegmenter(8, 13, proj_size=proj_size)
    y = head(torch.randn(2, hw[0], hw[1], 16))
    assert y.shape == (2, 13, hw[0] * proj_size, hw[1] * proj_size)


def test_dense_segmenter_flair_geometry():
    # FLAIR: aerial-flair at P = 10 m -> 2 m sub-patches, 50x50 dense cells for a 100 m tile; pi = 10
    # turns them into 500x500 logits at 0.2 m, 13 classes, Linear(2D, 1300).
    head = DenseSegmenter(4, 13, proj_size=10)
    assert head.linear.out_features == 1300 and head.linear.in_features == 8
    assert head(torch.randn(1, 50, 50, 8)).shape == (1, 13, 500, 500)


def test_dense_segmenter_placement_order():
    """Output pixel (y*pi + a, x*pi + b), class c == linear entry (a*pi + b)*K + c at cell (y, x)."""
    p, k, h, w = 3, 2, 2, 4
    head = DenseSegmenter(1, k, proj_size=p).double()
    head.norm = nn.Identity()  # isolate the reassembly from the normalisation
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.weight[:, 0] = 1e4  # feature 0 carries y
        head.linear.weight[:, 1] = 1e3  # feature 1 carries x
        for a in range(p):
            for b in range(p):
                for c in range(k):
                    head.linear.bias[(a * p + b) * k + c] = 100 * a + 10 * b + c
    feats = torch.zeros(1, h, w, 2, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            feats[0, y, x, 0] = y
            feats[0, y, x, 1] = x
    out = head(feats)
    assert out.shape == (1, k, h * p, w * p)
    for y in range(h):
        for x in range(w):
            for a in range(p):
                for b in range(p):
                    for c in range(k):
                        expected = 1e4 * y + 1e3 * x + 100 * a + 10 * b + c
                        assert out[0, c, y * p + a, x * p + b].item() == expected


def _toy_batch(b=4):
    torch.manual_seed(1)
    return {"s2": torch.randn(b, 5, 3), "s2_dates": torch.arange(5).repeat(b, 1)}


def test_linear_probe_keeps_encoder_bit_identical():
    torch.manual_seed(0)
    enc = _ToyEncoder()
    model = TaskModel(enc, TileClassifier(8, 3), freeze_encoder=True, patch_size=10)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    model.train()
    assert not enc.training and model.head.training
    assert all(not p.requires_grad for p in enc.parameters())
    # Even an optimiser given every parameter (with weight decay) must not touch the encoder.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    head_before = model.head.linear.weight.clone()
    batch = _toy_batch()
    loss = model(batch).square().mean()
    loss.backward()
    opt.step()
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in enc.parameters())
    assert not torch.equal(model.head.linear.weight, head_before)
    # Eval-mode encoder: features are deterministic in training mode.
    torch.testing.assert_close(model.features(batch), model.features(batch), rtol=0, atol=0)


def test_finetune_updates_encoder_and_passes_arguments():
    torch.manual_seed(0)
    enc = _ToyEncoder()
    model = TaskModel(enc, DenseSegmenter(8, 4, proj_size=2), freeze_encoder=False, output_modality="s2")
    w0 = enc.lin.weight.clone()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    pad = {"s2": torch.zeros(4, 5, dtype=torch.bool)}
    logits = model(_toy_batch(), patch_size=20, pad_mask=pad)
    assert logits.shape == (4, 4, 4, 4)
    logits.square().mean().backward()
    opt.step()
    assert not torch.equal(enc.lin.weight, w0)
    call = enc.calls[-1]
    assert call["patch_size"] == 20 and call["output"] == "dense" and call["output_modality"] == "s2"
    assert call["pad_mask"] is pad
    model.train()
    assert enc.training


def test_task_model_needs_patch_size():
    model = TaskModel(_ToyEncoder(), TileClassifier(8, 3))
    with pytest.raises(ValueError, match="patch_size"):
        model(_toy_batch())


def _flair_like(b=2):
    g = torch.Generator().manual_seed(0)
    # 20 m tile: aerial-flair 100 px @ 0.2 m, S2 2x2 px @ 10 m
    return {"aerial-flair": torch.randn(b, 5, 100, 100, generator=g),
            "s2": torch.randn(b, 3, 10, 2, 2, generator=g), "s2_dates": torch.randint(1, 366, (b, 3), generator=g)}


def test_real_encoder_linear_probe_and_flair_segmentation_shapes():
    from anysat import AnySat

    torch.manual_seed(0)
    enc = AnySat.from_size("tiny", sensors=["aerial-flair", "s2"])
    d = enc.embed_dim
    # FLAIR head: 2 m sub-patch tokens (5x5 per 10 m patch), pi = 10 -> 0.2 m logits = input pixels
    seg = TaskModel(enc, DenseSegmenter(d, 13, proj_size=10), freeze_encoder=True, patch_size=10,
                    output_modality="aerial-flair")
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    opt = torch.optim.AdamW(seg.parameters(), lr=1e-2, weight_decay=0.05)
    seg.train()
    logits = seg(_flair_like())
    assert logits.shape == (2, 13, 100, 100)
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 13, (2, 100, 100))).backward()
    opt.step()
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())
    assert seg.head.linear.weight.grad is not None

    cls = TaskModel(enc, TileClassifier(d, 15), freeze_encoder=True, patch_size=10)
    assert cls(_flair_like()).shape == (2, 15)
