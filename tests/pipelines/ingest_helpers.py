"""Helpers shared by the pipelines tests (comparison of whole stores, raw PLANTED reads)."""

from __future__ import annotations

import json
import os

import numpy as np
import zarr

from pipelines.ingest import run_ingest
from pipelines.storage import zarr_store
from pipelines.store import StoreReader

PLANTED_MODS = ("s2", "s1", "l7", "alos", "modis")


def ingest_sample(dataset: str, raw, out, **kw) -> StoreReader:
    """Ingest ``raw`` into ``out`` in-process; the ingest must succeed without quarantine."""
    res = run_ingest(dataset, str(raw), str(out), executor="local", progress=False, **kw)
    assert res.exit_code == 0, res.quarantine
    return StoreReader(res.url)


def raw_planted(root: str) -> list[dict]:
    """The PLANTED archive read with plain numpy/json, independent of the Planted source class."""
    tiles = []
    for split in ("train", "val", "test"):
        with open(os.path.join(root, split, "labels2.json")) as f:
            labels = json.load(f)
        for tid in sorted(labels, key=int):
            d = os.path.join(root, split, tid)
            t = {"id": tid, "split": split, "label": labels[tid], "mods": {}}
            for mod in PLANTED_MODS:
                data = np.load(os.path.join(d, f"{tid}_{mod}.npz"))["arr_0"]
                mask = np.load(os.path.join(d, f"{tid}_{mod}_mask.npz"))["arr_0"]
                ts = np.load(os.path.join(d, f"{tid}_{mod}_timestamp.npz"))["arr_0"]
                t["mods"][mod] = (data, mask, ts)
            tiles.append(t)
    return tiles


def store_arrays(url: str, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """Every array of a store (via plain zarr), keyed by path."""
    root = zarr.open_group(zarr_store(url, storage_options, read_only=True), mode="r")
    out = {}
    for path, arr in root.members(max_depth=None):
        if isinstance(arr, zarr.Array):
            out[path] = np.asarray(arr[...])
    return out


def assert_stores_equal(a: str, b: str, so_a: dict | None = None, so_b: dict | None = None) -> None:
    """Same arrays (values, dtypes, shapes, chunking) and same attrs except provenance."""
    ra = zarr.open_group(zarr_store(a, so_a, read_only=True), mode="r")
    rb = zarr.open_group(zarr_store(b, so_b, read_only=True), mode="r")
    aa, ab = dict(ra.attrs), dict(rb.attrs)
    for d in (aa, ab):
        d.pop("provenance", None)
    assert aa == ab
    xa, xb = store_arrays(a, so_a), store_arrays(b, so_b)
    assert sorted(xa) == sorted(xb)
    for k in xa:
        assert xa[k].dtype == xb[k].dtype, k
        assert xa[k].shape == xb[k].shape, k
        np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)
        assert ra[k].metadata.to_dict() == rb[k].metadata.to_dict(), k
