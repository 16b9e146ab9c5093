"""The fast loader: vectorised per-tile draws, work moved into the read tasks, token budgets."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch

from ray_jobs.batching import batch_table, step_batch_size
from ray_jobs.config import load_config, resolve_paths
from ray_jobs.data import ReadRange, StoreStream, collate, stream_items
from ray_jobs.plan import resolve_plans
from ray_jobs.reads import uniform
from ray_jobs.schedule import Schedule
from ray_jobs.timesteps import real_steps

from ray_jobs_helpers import TINY, tiny_overrides


@pytest.fixture(scope="module")
def plans(sample_stores):
    cfg = resolve_paths(load_config(TINY, tiny_overrides(**{"data.root": str(sample_stores)})))
    return resolve_plans(cfg)


def test_uniform_draws_are_keyed_per_tile_not_per_range():
    tiles = np.arange(5000)
    u = uniform(7, tiles, 3)
    assert u.shape == (5000, 3) and u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - np.sqrt(1 / 12)) < 0.01
    # a tile's draws do not depend on which other tiles share its range, nor on their order
    np.testing.assert_array_equal(uniform(7, tiles[[4321, 17]], 3), u[[4321, 17]])
    assert not np.array_equal(uniform(8, tiles[:10], 3), u[:10])  # another key, other draws
    assert np.corrcoef(u[:, 0], u[:, 1])[0, 1] < 0.05  # columns independent


def _reference_real_steps(data, dates, mask=None):
    """The definition of ray_jobs.timesteps, written out over every step."""
    n, t = dates.shape
    content = (dates >= 0) | (data.reshape(n, t, -1) != 0).any(axis=2)
    if mask is not None:
        content |= mask.reshape(n, t, -1).any(axis=2)
    last = np.where(content.any(axis=1), t - np.argmax(content[:, ::-1], axis=1), 0)
    return np.arange(t)[None, :] < last[:, None]


def test_real_steps_scans_only_undated_steps_with_the_same_result():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(40, 9, 2, 3, 3)).astype(np.float32)
    dates = rng.integers(-1, 300, size=(40, 9)).astype(np.int32)
    data[rng.random((40, 9)) < 0.4] = 0.0  # zero images, dated or not
    data[3, 8, 0, 0, 0] = np.nan  # NaN counts as content
    mask = rng.random((40, 9, 1, 3, 3)) < 0.05
    for m in (None, mask):
        np.testing.assert_array_equal(real_steps(data, dates, m), _reference_real_steps(data, dates, m))


@pytest.mark.parametrize("train", [True, False])
def test_prepared_reads_give_the_batches_of_raw_reads(plans, train):
    """Normalising in the read task (floats) and cropping in collate (aerial uint8) changes where the
    work happens, not the model inputs: bit-identical to reading raw and converting in collate."""
    for name, plan in plans.items():
        item = stream_items(plan, plan.split, train, 0, 1, 3, 0)[0]
        raw = ReadRange(plan, plan.split, train, 3).read_item(item)
        ready = ReadRange(plan, plan.split, train, 3, prepare=True).read_item(item)
        if name == "treesatai-ts":
            assert ready["aerial/data"].shape[-1] == 304 and raw["aerial/data"].shape[-1] == 300
            assert "s2/x" in ready and ready["s2/x"].dtype == np.float32
        xa, pa = collate(raw, plan)
        xb, pb = collate(ready, plan)
        assert xa.keys() == xb.keys() and pa.keys() == pb.keys()
        for k in xa:
            assert xa[k].dtype == xb[k].dtype and torch.equal(xa[k], xb[k]), (name, k)
        for k in pa:
            assert torch.equal(pa[k], pb[k])


def test_temporal_dropout_keeps_a_per_tile_subset_in_time_order(plans):
    plan = plans["planted"]  # temporal_dropout 0.3
    items = stream_items(plan, plan.split, True, 0, 1, 0, 0)
    rr = ReadRange(plan, plan.split, True, 0)
    full = ReadRange(plan, plan.split, False, 0).read_item(items[0])
    out = rr.read_item(items[0])
    order = np.argsort(full["tile"])
    for key in ("s2", "modis"):
        n_real = full[f"{key}/steps"][order]
        kept = out[f"{key}/steps"][np.argsort(out["tile"])]
        np.testing.assert_array_equal(kept, np.maximum((n_real * 0.7).astype(int), 1) * (n_real > 0))
        d, ref = out[f"{key}/dates"], full[f"{key}/dates"]
        for i, s in enumerate(out[f"{key}/steps"]):
            j = int(np.flatnonzero(full["tile"] == out["tile"][i])[0])
            it = iter(ref[j, :full[f"{key}/steps"][j]].tolist())
            assert all(v in it for v in d[i, :s].tolist())  # a subsequence of the real steps, in time order
            assert (d[i, s:] == -1).all()  # then padding
    # the same tile keeps the same steps when read by another rank (tile-wise split of a small store)
    other = ReadRange(plan, plan.split, True, 0).read_item(stream_items(plan, plan.split, True, 1, 2, 0, 0)[0])
    common = np.intersect1d(out["tile"], other["tile"])[:3]
    for t in common:
        i, j = int(np.flatnonzero(out["tile"] == t)[0]), int(np.flatnonzero(other["tile"] == t)[0])
        np.testing.assert_array_equal(out["modis/dates"][i], other["modis/dates"][j])


def test_token_budget_sizes_follow_the_draw_identically_on_every_rank(plans):
    t = plans["treesatai-ts"]  # 10 m: 108 tokens per sample, 20 m: 27
    assert step_batch_size(t, 10, None) == t.batch_size  # no budget: the dataset's batch size
    assert step_batch_size(t, 10, 1000) == 9 and step_batch_size(t, 20, 1000) == 37
    assert step_batch_size(t, 10, 50) == 1  # never empty
    table = batch_table(plans, 1000)
    assert all(tok <= 1000 for sizes in table.values() for _, tok in sizes.values())
    sets = {n: (p.weight, p.patch_sizes_m) for n, p in plans.items()}

    def sizes(seed):  # what a rank computes: a function of (seed, step) and the plans only
        s = Schedule(seed, sets)
        return [step_batch_size(plans[e.dataset], e.patch_size_m, 1000) for e in map(s.at, range(50))]

    assert sizes(4) == sizes(4) and len(set(sizes(4))) > 1


def test_feed_of_varying_sizes_resumes_at_the_next_tile(ray_session, plans):
    p = plans["planted"]
    stream = StoreStream(p, "train", train=True, rank=0, world=1, seed=2)
    sizes = [3, 7, 1, 5, 4, 6]
    feed = stream.feed(0)
    got = [feed.next(k) for k in sizes]
    assert [len(b["tile"]) for b in got] == sizes
    flat = np.concatenate([b["tile"] for b in got])
    fixed = [b["tile"] for _, b in zip(range(-(-len(flat) // stream.batch_size)), stream.batches(0))]
    np.testing.assert_array_equal(flat, np.concatenate(fixed)[:len(flat)])  # the same tile sequence
    resumed = stream.feed(sum(sizes[:3]))  # a checkpoint after three steps
    np.testing.assert_array_equal(resumed.next(5)["tile"], got[3]["tile"])
    np.testing.assert_array_equal(resumed.next(4)["tile"], got[4]["tile"])
    with pytest.raises(ValueError):
        feed.next(0)


LOADER_RESOURCE = "loader"  # the custom resource tests/conftest.py gives the session's Ray node


def _where_read_tasks_run(plan, read_resources):
    """The ``loader`` resource Ray assigned to each read task of a stream (one row per tile)."""

    class Where(ReadRange):  # local class: pickled by value into the read tasks
        def __call__(self, rows):
            out = super().__call__(rows)
            got = ray.get_runtime_context().get_assigned_resources().get(LOADER_RESOURCE, 0.0)
            out["loader"] = np.full(len(out["tile"]), got)
            return out

    class Stream(StoreStream):
        def read_fn(self):
            return Where(self.plan, self.split, self.train, self.seed, prepare=True)

    stream = Stream(plan, "train", train=True, rank=0, world=1, seed=0, read_resources=read_resources,
                    read_concurrency=1)
    return next(stream.blocks())["loader"]


def test_read_resources_place_the_read_tasks(ray_session, plans):
    # data.read_resources: the read tasks hold the custom resource of the CPU-only loader nodes, so Ray runs
    # them there (the session's node has 4 units of it); without it they ask for none
    assert (_where_read_tasks_run(plans["planted"], {LOADER_RESOURCE: 1}) == 1.0).all()
    assert (_where_read_tasks_run(plans["planted"], None) == 0.0).all()
