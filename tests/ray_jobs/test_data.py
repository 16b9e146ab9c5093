"""ray_jobs.plan + ray_jobs.data: plans from real stores, streaming reads, exact resume, collation."""

from __future__ import annotations

import dataclasses
import datetime as dt
import pickle

import numpy as np
import pytest
import torch

from pipelines.store import StoreReader
from ray_jobs.config import load_config, resolve_paths
from ray_jobs.data import StoreStream, collate, convert_dates, stream_items
from ray_jobs.plan import resolve_plans

from ray_jobs_helpers import TINY, tiny_overrides


def test_convert_dates():
    days = np.array([[(dt.date(2020, 1, 1) - dt.date(1970, 1, 1)).days,
                      (dt.date(2020, 12, 31) - dt.date(1970, 1, 1)).days, -1]])
    assert convert_dates(days, None).tolist() == [[1, 366, -1]]  # 1-based day of year, leap year
    since = convert_dates(days, "2018-09-01")
    assert since[0, 0] == (dt.date(2020, 1, 1) - dt.date(2018, 9, 1)).days and since[0, 2] == -1


@pytest.fixture(scope="module")
def plans(sample_stores):
    cfg = resolve_paths(load_config(TINY, tiny_overrides(**{"data.root": str(sample_stores)})))
    return resolve_plans(cfg)


def test_plans_follow_registry_and_store(plans):
    p, t = plans["planted"], plans["treesatai-ts"]
    assert list(p.sensors) == ["s2", "s1", "l7", "alos", "modis"]
    assert list(t.sensors) == ["aerial", "s2", "s1-asc"]  # s1-des is stored but not a model sensor
    assert p.patch_sizes_m == (30,) and t.patch_sizes_m == (10, 20)
    s1 = p.sensors["s1"]
    assert [b.name for b in s1.bands] == ["VV", "VH", "VV/VH"]
    assert s1.bands[2].num is not None and np.isfinite(s1.mean[2]) and s1.std[2] > 0  # derived ratio
    assert p.tokens_per_sample(30) == 4 * 4 * 4 + 1  # 4x4 patches x 4 sensors + the MODIS token
    assert t.tokens_per_sample(10) == 36 * 3
    # plans travel to workers and read tasks: frozen, picklable plain data
    assert pickle.loads(pickle.dumps(p)) == p
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.batch_size = 1
    assert p.n_split == len(StoreReader(p.url).split_indices("train"))  # counted once, from tiles/split


def test_bad_config_against_store(sample_stores):
    cfg = resolve_paths(load_config(TINY, tiny_overrides(**{
        "data.root": str(sample_stores), "data.datasets.treesatai-ts.crop": "{s2: 10}"})))
    with pytest.raises(ValueError, match="crop"):
        resolve_plans(cfg)
    cfg = resolve_paths(load_config(TINY, tiny_overrides(**{
        "data.root": str(sample_stores), "data.datasets.planted.patch_sizes_m": "[50]"})))
    with pytest.raises(ValueError, match="do not divide"):
        resolve_plans(cfg)


def test_items_split_ranks_disjointly(plans):
    p = plans["planted"]
    for world in (1, 2, 3):
        per_rank = [stream_items(p, "train", True, r, world, 0, epoch=0) for r in range(world)]
        assert all(len(it) for it in per_rank)


def test_stream_is_deterministic_resumable_and_rank_disjoint(ray_session, plans):
    p = plans["planted"].replace(batch_size=4)
    s0 = StoreStream(p, "train", train=True, rank=0, world=2, seed=5)
    per_epoch = s0.tiles_per_epoch
    n = 2 * per_epoch // 4 + 2  # more than two epochs: batches span epoch boundaries
    a = [b["tile"] for _, b in zip(range(n), s0.batches(0))]
    assert all(len(t) == 4 for t in a)
    flat = np.concatenate(a)
    # an epoch holds distinct tiles; the next one is reshuffled (and, split tile-wise, re-dealt)
    e0, e1 = flat[:per_epoch], flat[per_epoch:2 * per_epoch]
    assert len(set(e0.tolist())) == per_epoch and not np.array_equal(e0, e1)
    # a fresh stream started after k consumed batches continues exactly (mid-epoch resume)
    for k in (1, n - 2):
        b = [b["tile"] for _, b in zip(range(2), StoreStream(p, "train", train=True, rank=0, world=2,
                                                              seed=5).batches(k))]
        assert np.array_equal(a[k], b[0]) and np.array_equal(a[k + 1], b[1])
    # the two ranks read disjoint tiles
    s1 = StoreStream(p, "train", train=True, rank=1, world=2, seed=5)
    other = np.concatenate([x["tile"] for _, x in zip(range(4), s1.batches(0))])[:s1.tiles_per_epoch]
    assert not set(e0.tolist()) & set(other.tolist())
    assert len(e0) + len(other) == p.n_split  # and together cover the split


def test_collate_pads_time_and_normalises(ray_session, plans):
    t = plans["treesatai-ts"]
    raw = next(StoreStream(t, "train", train=True, rank=0, world=1, seed=0).batches(0))
    x, pad = collate(raw, t)
    assert x["aerial"].shape[-2:] == (300, 300)  # random crop 304 -> 300
    assert x["s2"].dtype == torch.float32 and x["s2"].dim() == 5
    T = x["s2"].shape[1]
    assert pad["s2"].shape == (x["s2"].shape[0], T)
    lengths = (~pad["s2"]).sum(1)
    assert lengths.max() == T  # cut to the longest series of the batch
    assert (x["s2_dates"][pad["s2"]] == 0).all() and (x["s2"][pad["s2"]] == 0).all()
    valid = x["s2_dates"][~pad["s2"]]
    assert valid.min() >= 1 and valid.max() <= 366
    p = plans["planted"]
    raw = next(StoreStream(p, "train", train=True, rank=0, world=1, seed=0).batches(0))
    x, pad = collate(raw, p)
    assert x["s1"].shape[2] == 3 and x["alos"].shape[2] == 3  # ratio bands derived in the loader
    assert x["s1"][~pad["s1"]].abs().max() < 1e4
    full = int((raw["modis/dates"] >= 0).sum(1).max())
    assert x["modis"].shape[1] <= full  # temporal dropout 0.3 keeps fewer dates
