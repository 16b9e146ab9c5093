"""Test-time windows (``anysat.multicrop``): the official FLAIR five-window evaluation on toy models whose
logits depend on the absolute position of each pixel, so a window placed at the wrong offset, a missing
or wrong coverage division, or a scaling error between input and logit pixels changes the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anysat.multicrop import FLAIR_OFFSETS, multicrop_logits, window, windows_per_sample


def _coords(b: int, h: int, w: int) -> dict[str, torch.Tensor]:
    """Channel 0 = row, channel 1 = column of each pixel (float64: exact)."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    img = torch.stack([yy, xx])[None].repeat(b, 1, 1, 1) + torch.arange(b, dtype=torch.float64)[:, None, None, None]
    return {"aerial-flair": img, "s2": torch.randn(b, 3, 2, 4, 4, dtype=torch.float64)}


def _reference(h: int, w: int, size: int, offsets, window_logits) -> np.ndarray:
    """Independent numpy assembly: per pixel, the mean of the logits of the windows covering it."""
    acc = np.zeros((2, h, w))
    cnt = np.zeros((h, w))
    for n, (t, l) in enumerate(offsets):
        acc[:, t:t + size, l:l + size] += window_logits(n, t, l)
        cnt[t:t + size, l:l + size] += 1
    assert cnt.min() >= 1
    return acc / cnt


def test_flair_five_windows_reassemble_position_dependent_logits():
    x = _coords(2, 512, 512)
    calls = []

    def model(xi):  # logits = absolute (row, col) + a per-window bias: averaging must be exact
        calls.append(xi["aerial-flair"].shape)
        assert torch.equal(xi["s2"], x["s2"])  # the other sensors pass whole
        return xi["aerial-flair"] * 1.0 + 1000.0 * len(calls)

    out = multicrop_logits(model, x, "aerial-flair", 500, FLAIR_OFFSETS)
    assert out.shape == (2, 2, 512, 512) and calls == [(2, 2, 500, 500)] * 5
    ref = _reference(512, 512, 500, FLAIR_OFFSETS,
                     lambda n, t, l: x["aerial-flair"][0, :, t:t + 500, l:l + 500].numpy() + 1000.0 * (n + 1))
    np.testing.assert_allclose(out[0].numpy(), ref, rtol=0, atol=1e-9)
    # without the per-window bias the canvas is exactly the coordinate image: offsets and division are right
    out = multicrop_logits(lambda xi: xi["aerial-flair"], x, "aerial-flair", 500)
    assert torch.equal(out, x["aerial-flair"])
    # the five windows cover every pixel of the 512 px canvas: 1 window at the corners, 5 in the centre
    cnt = np.zeros((512, 512))
    for t, l in FLAIR_OFFSETS:
        cnt[t:t + 500, l:l + 500] += 1
    assert cnt.min() == 1 and cnt[0, 0] == cnt[511, 511] == 1 and cnt[256, 256] == 5


def test_logits_finer_than_the_input_and_tile_logits():
    x = _coords(1, 64, 64)
    offsets = ((0, 0), (0, 4), (4, 0), (4, 4), (2, 2))

    def model(xi):  # each input pixel predicts a 2 x 2 block of logit pixels
        return torch.repeat_interleave(torch.repeat_interleave(xi["aerial-flair"], 2, -1), 2, -2)

    out = multicrop_logits(model, x, "aerial-flair", 60, offsets)
    assert out.shape == (1, 2, 128, 128)
    assert torch.equal(out, model(x))
    tile = multicrop_logits(lambda xi: xi["aerial-flair"].mean((-2, -1)), x, "aerial-flair", 60, offsets)
    ref = np.mean([x["aerial-flair"][:, :, t:t + 60, l:l + 60].mean((-2, -1)).numpy() for t, l in offsets], 0)
    np.testing.assert_allclose(tile.numpy(), ref, atol=1e-12)


def test_windows_and_errors():
    x = _coords(2, 32, 32)
    x["aerial-flair_mask"] = torch.ones(2, 1, 32, 32, dtype=torch.bool)
    w = window(x, "aerial-flair", 30, 2, 1)
    assert w["aerial-flair"].shape == (2, 2, 30, 30) and w["aerial-flair_mask"].shape == (2, 1, 30, 30)
    assert w["aerial-flair"][0, 0, 0, 0] == 2 and w["aerial-flair"][0, 1, 0, 0] == 1
    per = windows_per_sample(x, "aerial-flair", 30, [(0, 2), (2, 0)])
    assert per["aerial-flair"][0, 1, 0, 0] == 2 and per["aerial-flair"][1, 0, 0, 0] == 2 + 1  # sample 1: +1
    with pytest.raises(ValueError, match="does not fit"):
        window(x, "aerial-flair", 30, 3, 0)
    with pytest.raises(ValueError, match="uncovered"):
        multicrop_logits(lambda xi: xi["aerial-flair"], x, "aerial-flair", 30, [(0, 0)])
    with pytest.raises(ValueError, match="offsets for a batch"):
        windows_per_sample(x, "aerial-flair", 30, [(0, 0)])
