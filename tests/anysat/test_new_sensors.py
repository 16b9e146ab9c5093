"""New sensors on pretrained weights (``AnySat.from_official(..., sensors=)``) and LP+ (``TaskModel``
with ``train_modules``, the official ``freeze_new``)."""

from __future__ import annotations

import pytest
import torch

from anysat import AnySat
from anysat.heads import DenseSegmenter, TaskModel
from anysat.model.projectors import LTAE_DK
from anysat.sensors import get_sensor


@pytest.fixture(scope="module")
def pretrained():
    torch.manual_seed(3)
    return AnySat(64, 1, 2, sensors=["s2", "s1"]).state_dict()


def test_from_official_with_sensors_loads_known_and_builds_new(pretrained):
    torch.manual_seed(0)
    enc = AnySat.from_official(pretrained, sensors=["hls", "s2"])
    assert enc.sensors == ["hls", "s2"] and enc.new_sensors == ("hls",)
    sd = enc.state_dict()
    assert not any(k.startswith("projector_s1.") for k in sd)  # other sensors' projectors dropped
    for k, v in pretrained.items():
        if not k.startswith("projector_s1."):
            assert torch.equal(sd[k], v), k
    assert sd["cls_token"].data_ptr() != pretrained["cls_token"].data_ptr()  # copies, not aliases
    # the new projector is initialised as the official code does: LTAE master queries and key weights
    # N(0, sqrt(2 / d_k)) = N(0, 0.5), the pad scalar 0 and frozen
    hls = enc.projector("hls").patch_embed
    assert hls.attention_heads.Q.std().item() == pytest.approx((2 / LTAE_DK) ** 0.5, rel=0.35)
    assert enc.projector("hls").pad_parameter.item() == 0 and not enc.projector("hls").pad_parameter.requires_grad
    assert hls.t0 == get_sensor("hls").t0 == 366
    x = {"hls": torch.randn(2, 1, 6, 8, 8), "hls_dates": torch.zeros(2, 1, dtype=torch.long)}
    assert enc(x, patch_size=240, output="tile").shape == (2, 64)
    # without ``sensors`` the file's projectors, nothing new
    assert AnySat.from_official(pretrained).new_sensors == ()


def test_from_official_stays_strict_for_everything_but_new_projectors(pretrained):
    bad = dict(pretrained)
    bad["blocks.0.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="unexpected"):
        AnySat.from_official(bad, sensors=["s2"])
    bad = {k: v for k, v in pretrained.items() if k != "blocks.0.norm1.weight"}
    with pytest.raises(RuntimeError, match="missing"):
        AnySat.from_official(bad, sensors=["s2", "hls"])


def test_lpplus_trains_only_the_new_projector_and_the_head(pretrained):
    enc = AnySat.from_official(pretrained, sensors=["hls", "s2"])
    model = TaskModel(enc, DenseSegmenter(64, 2), freeze_encoder=True, patch_size=240, output_modality="hls",
                      train_modules=[f"projector_{s}" for s in enc.new_sensors])
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == {k for k, p in model.named_parameters()
                         if k.startswith(("head.", "encoder.projector_hls.")) and not k.endswith("pad_parameter")}
    model.train()
    assert enc.projector("hls").training and not enc.projector("s2").training and not enc.blocks.training
    assert not enc.spatial_encoder.training and model.head.training
    x = {"hls": torch.randn(2, 1, 6, 8, 8), "hls_dates": torch.zeros(2, 1, dtype=torch.long)}
    model(x).sum().backward()
    grads = {k for k, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(k.startswith("encoder.projector_hls.") for k in grads) and grads <= trainable
    model.eval()
    assert not enc.projector("hls").training
    with pytest.raises(ValueError, match="freeze_encoder"):
        TaskModel(enc, DenseSegmenter(64, 2), freeze_encoder=False, train_modules=["projector_hls"])
