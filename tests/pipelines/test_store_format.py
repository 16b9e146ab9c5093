"""Store internals: whole-shard writer vs zarr's writer, exact mergeable statistics."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from pipelines import store as st
from pipelines.shardio import decode_shard, shard_spec
from pipelines.stats import finalize_stats, merge_stats, partial_stats
from pipelines.store_layout import LabelLayout, SensorLayout, StoreLayout
from pipelines.store_meta import StoreMeta


def _layout(n=10, tps=4):
    s = SensorLayout("s2", 3, 2, 4, 4, "<f4", ["B2", "B3"], 10.0, True, 1)
    lab = LabelLayout("seg", "segmentation", ["a", "b"], [4, 4], "|u1", None)
    return StoreLayout("x", n, tps, {"s2": s}, {"seg": lab})


def _block(layout, start, n, rng):
    b = st.empty_block(layout, n)
    b["tiles/id"][:] = [f"t{start + i}" for i in range(n)]
    b["tiles/split"][:] = "train"
    b["s2/data"][:] = rng.normal(1000, 50, b["s2/data"].shape).astype(np.float32)
    b["s2/data"][0, 0, 0, 0, 0] = np.nan
    b["s2/dates"][:, :2] = rng.integers(17000, 19000, (n, 2))
    b["s2/mask"][:] = rng.random(b["s2/mask"].shape) > 0.3
    b["labels/seg"][:] = rng.integers(0, 2, b["labels/seg"].shape)
    return b


@pytest.mark.parametrize("fast", [True, False])
def test_whole_shard_writer_matches_zarr(tmp_path, monkeypatch, fast):
    layout = _layout()
    rng = np.random.default_rng(0)
    blocks = [(s, _block(layout, s, min(4, 10 - s), rng)) for s in (0, 4, 8)]
    monkeypatch.setattr(st, "FAST_SHARD_IO", fast)
    root = st.create_store(str(tmp_path / "a.zarr"), layout, StoreMeta.for_layout(layout))
    for s, b in blocks:
        st.write_block(root, s, b)
    # zarr itself (generic reader) sees exactly the values, whoever encoded the shards
    z = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    for key in ("s2/data", "s2/dates", "s2/mask", "labels/seg"):
        want = np.concatenate([b[key] for _, b in blocks])
        np.testing.assert_array_equal(z[key][:], want)
        np.testing.assert_array_equal(z[key][5:7], want[5:7])
    assert list(z["tiles/id"][:]) == [f"t{i}" for i in range(10)]
    if fast:
        spec = shard_spec(z["s2/data"])
        assert spec is not None and spec.tiles == 4
        out = np.empty((2, *spec.shape[1:]), np.float32)
        raw = (tmp_path / "a.zarr" / "s2" / "data" / "c" / "2" / "0" / "0" / "0" / "0").read_bytes()
        decode_shard(spec, raw, range(2), out)
        np.testing.assert_array_equal(out, blocks[2][1]["s2/data"])
        bad = bytearray(raw)
        bad[-10] ^= 0xFF
        with pytest.raises(ValueError, match="checksum"):
            decode_shard(spec, bytes(bad), range(2), out)


def test_stats_merge_is_exact_and_split_independent():
    rng = np.random.default_rng(1)
    x = rng.normal(3000, 400, (37, 4, 5, 5)).astype(np.float32)
    x[3, 1, 2, 2] = np.nan
    whole = finalize_stats(merge_stats([partial_stats(x)]), list("abcd"))
    parts = finalize_stats(merge_stats([partial_stats(x[:5]), None, partial_stats(x[5:20]),
                                        partial_stats(x[20:])]), list("abcd"))
    flat = np.moveaxis(x, 1, 0).reshape(4, -1).astype(np.float64)
    for s in (whole, parts):
        np.testing.assert_array_equal(s["count"], np.isfinite(flat).sum(1))
        np.testing.assert_allclose(s["mean"], np.nanmean(flat, 1), rtol=1e-12)
        np.testing.assert_allclose(s["std"], np.nanstd(flat, 1), rtol=1e-7)
        np.testing.assert_array_equal(s["min"], np.nanmin(flat, 1))
        np.testing.assert_array_equal(s["max"], np.nanmax(flat, 1))
    assert parts["nan_count"] == [0, 1, 0, 0]
    empty = finalize_stats(None, ["a"])
    assert empty["count"] == [0] and empty["mean"] == [None]
