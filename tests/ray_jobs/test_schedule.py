"""The dataset/patch-size schedule: deterministic in (seed, step), rank-independent, weighted."""

from __future__ import annotations

import multiprocessing as mp

from ray_jobs.schedule import Schedule

SETS = {"planted": (2.0, (30,)), "treesatai-ts": (1.0, (10, 20)), "s2naip-urban": (4.0, (40, 80, 160))}


def _draws(seed, n):
    s = Schedule(seed, SETS)
    return [(e.dataset, e.patch_size_m) for e in map(s.at, range(n))]


def test_same_seed_same_schedule_in_another_process():
    # another process stands in for another rank: nothing may depend on process state / hash seeds
    with mp.get_context("spawn").Pool(1) as pool:
        other = pool.apply(_draws, (7, 300))
    assert other == _draws(7, 300)
    assert _draws(8, 300) != _draws(7, 300)


def test_resume_continues_exactly():
    full = Schedule(3, SETS)
    resumed = Schedule(**{"seed": 3, "datasets": SETS})
    assert [full.at(k) for k in range(120, 160)] == [resumed.at(k) for k in range(120, 160)]
    assert resumed.check_state(full.state_dict()) == []
    changed = Schedule(3, {**SETS, "planted": (1.0, (30,))})
    assert any("weights" in d for d in changed.check_state(full.state_dict()))


def test_proportions_follow_weights_and_patch_sizes_valid():
    s = Schedule(0, SETS)
    n = 20000
    counts = s.counts(0, n)
    for name, (w, _) in SETS.items():
        assert abs(counts[name] / n - w / 7.0) < 0.015, (name, counts)
    sizes = {}
    for k in range(n):
        e = s.at(k)
        assert e.patch_size_m in SETS[e.dataset][1]
        sizes.setdefault(e.dataset, set()).add(e.patch_size_m)
    assert sizes["s2naip-urban"] == {40, 80, 160} and sizes["treesatai-ts"] == {10, 20}
