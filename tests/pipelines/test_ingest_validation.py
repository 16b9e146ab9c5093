"""Implausible tiles are quarantined with the sensor and the bad value, never stored as garbage.

Dates in the wrong unit (nanoseconds or seconds where the archive promises milliseconds), out of the
plausible range (year 2200), negative (they would collide with the -1 padding code), a series far longer
than the dataset's bound (it would widen T_max for every tile), and sensors whose values are all NaN or
all infinite.
"""

from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import pytest

from pipelines.datasets import DatasetSpec, get_dataset
from pipelines.ingest import main
from pipelines.samplegen import corrupt
from pipelines.samplegen.planted import write_sample
from pipelines.sources.base import TileError, timestamps_to_days
from pipelines.store import StoreReader
from pipelines.tilechecks import TileChecks, check_dates, check_values

DAY_MS = 86_400_000


def _ms(y, m, d) -> int:
    return (dt.date(y, m, d) - dt.date(1970, 1, 1)).days * DAY_MS


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("dates") / "planted")
    write_sample(raw, tiles=12, seed=7)
    ids = sorted(json.load(open(os.path.join(raw, "train", "labels2.json"))), key=int)
    f = {tid: (lambda tid: lambda mod, suffix="": os.path.join(raw, "train", tid, f"{tid}_{mod}{suffix}.npz"))(tid)
         for tid in ids}
    t = ids
    damage = {
        t[0]: corrupt.npz_scale(f[t[0]]("s2", "_timestamp"), 1_000_000),          # nanoseconds
        t[1]: corrupt.npz_scale(f[t[1]]("l7", "_timestamp"), 1e-3),               # seconds
        t[2]: corrupt.npz_set(f[t[2]]("s1", "_timestamp"), 0, _ms(2200, 1, 1)),   # year 2200
        t[3]: corrupt.npz_set(f[t[3]]("alos", "_timestamp"), 0, -5 * DAY_MS),     # day -5
        t[4]: corrupt.npz_fill(f[t[4]]("s1"), np.nan),                            # all NaN
        t[5]: corrupt.npz_fill(f[t[5]]("s1"), np.inf),                            # all +inf
    }
    for suffix in ("", "_mask", "_timestamp"):                                    # 200 MODIS dates
        corrupt.npz_repeat_time(f[t[6]]("modis", suffix), 200)
    damage[t[6]] = f[t[6]]("modis")
    return raw, damage, ids


def test_implausible_tiles_are_quarantined_with_sensor_and_value(damaged, tmp_path, capsys):
    raw, damage, ids = damaged
    out = str(tmp_path / "out")
    code = main(["--dataset", "planted", "--raw", raw, "--out", out, "--tiles-per-shard", "4", "--executor", "local",
                 "--no-progress"])
    assert code == 3
    printed = capsys.readouterr().out
    assert f"{len(damage)} quarantined" in printed
    r = StoreReader(os.path.join(out, "planted.zarr"))
    q = {rec["tile"]: rec for rec in r.quarantine}
    assert set(q) == set(damage), q
    t = ids
    assert "timestamps look like nanoseconds" in q[t[0]]["reason"] and q[t[0]]["file"].endswith("_s2_timestamp.npz")
    assert "timestamps look like seconds" in q[t[1]]["reason"] and q[t[1]]["file"].endswith("_l7_timestamp.npz")
    assert "sensor s1: date 2200-01-01 (day 84006) outside the plausible range 1970-01-01..2100-12-31" \
        in q[t[2]]["reason"]
    assert "sensor alos: negative day -5" in q[t[3]]["reason"]
    assert "sensor s1: all" in q[t[4]]["reason"] and q[t[4]]["reason"].endswith("values are NaN")
    assert q[t[5]]["reason"].endswith("values are infinite")
    assert "sensor modis: T=200 dates, above the planted bound of 128" in q[t[6]]["reason"]
    assert q[t[6]]["stage"] == "probe" and all(q[x]["stage"] == "write" for x in t[:6])
    # one absurd series does not widen the store: T_max is the longest healthy series (55..60 in the sample)
    assert r.meta.sensors["modis"].t_max <= 60
    assert r.meta.validation == {"date_range": ["1970-01-01", "2100-12-31"], "max_dates": 128}
    # every stored date is -1 or plausible
    for key in r.sensors:
        d = r.read(0, len(r), sensors=[key], labels=False, tiles=False)[f"{key}/dates"]
        assert ((d == -1) | ((d >= 0) & (d <= 47846))).all(), key
    lines = printed.splitlines()[1:]
    # the ingest reports how many tiles have each sensor (optional sensors may be absent)
    n = r.meta.n_written
    assert lines[0] == "  sensors: " + ", ".join(f"{k} {n}/{n} tiles" for k in r.sensors)
    assert all(r.meta.sensors[k].n_tiles == n for k in r.sensors)
    for line in lines[1:]:
        assert line.startswith("  quarantined ") and ": " in line  # file + reason, today's style


def test_date_range_and_max_dates_options(damaged, tmp_path, capsys):
    raw, damage, ids = damaged
    out = str(tmp_path / "out")
    # a tighter range quarantines more (the sample's dates span 2017-2022), no bound lets the long series in
    code = main(["--dataset", "planted", "--raw", raw, "--out", out, "--executor", "local", "--no-progress",
                 "--date-range", "1970-01-01:2021-06-30", "--max-dates", "0"])
    assert code == 3
    r = StoreReader(os.path.join(out, "planted.zarr"))
    q = {rec["tile"]: rec for rec in r.quarantine}
    assert r.meta.sensors["modis"].t_max == 200 and not any("bound" in rec["reason"] for rec in q.values())
    in_range = [rec for rec in q.values() if "outside the plausible range 1970-01-01..2021-06-30" in rec["reason"]]
    assert len(in_range) > 1 and not any("looks like a timestamp" in rec["reason"] for rec in in_range)
    assert r.meta.validation == {"date_range": ["1970-01-01", "2021-06-30"], "max_dates": None}
    capsys.readouterr()
    # resuming with other checks than the plan's is refused, one line
    assert main(["--dataset", "planted", "--raw", raw, "--out", out, "--executor", "local", "--no-progress",
                 "--date-range", "1970-01-01:2100-12-31"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "planned with --date-range 1970-01-01:2021-06-30" in err


def test_check_dates_compares_in_64_bits():
    checks = TileChecks()
    ns = np.array([1_546_300_800_000_000_000 // DAY_MS], np.int64)  # ns read as ms: wraps through int32
    assert np.int64(ns[0]).astype(np.int32) != ns[0]
    reason = check_dates("s2", ns, checks)
    assert reason.startswith("sensor s2: date ") and str(int(ns[0])) in reason
    secs = np.array([1_546_300_800], np.int64)  # seconds passed through as days
    assert "looks like a timestamp in seconds" in check_dates("s1", secs, checks)
    assert check_dates("s1", np.array([-1, 17000, -1], np.int32), checks) is None  # -1: unknown date
    assert "negative day -2" in check_dates("s1", np.array([17000, -2]), checks)
    assert "outside" in check_dates("s1", np.array([2**63 + 5], np.uint64), checks) or \
        "not a day number" in check_dates("s1", np.array([2**63 + 5], np.uint64), checks)
    assert check_values("s1", np.array([np.nan, 1.0])) is None
    assert check_values("s1", np.array([np.nan, np.inf])).endswith("NaN or infinite")
    assert check_values("s2", np.zeros(3, np.uint16)) is None


def test_timestamps_to_days_detects_units():
    ms = np.array([_ms(2019, 1, 1), _ms(2019, 6, 1)], np.int64)
    np.testing.assert_array_equal(timestamps_to_days(ms, "ms", "f"), [17897, 18048])
    assert timestamps_to_days(ms, "ms", "f").dtype == np.int32
    for factor, unit in ((1_000_000, "nanoseconds"), (1000, "microseconds")):
        with pytest.raises(TileError, match=f"look like {unit}"):
            timestamps_to_days(ms * factor, "ms", "f")
    with pytest.raises(TileError, match="look like seconds"):
        timestamps_to_days(ms // 1000, "ms", "f")
    far = np.array([2**62], np.int64)  # no unit fits and the day does not fit int32: rejected, not wrapped
    with pytest.raises(TileError, match="beyond any date"):
        timestamps_to_days(far, "ms", "f")
    # a date far out in the right unit is left to the ingest's range check
    assert timestamps_to_days(np.array([_ms(2200, 1, 1)]), "ms", "f")[0] == 84006


def test_max_dates_is_a_typed_dataset_field():
    assert get_dataset("planted").max_dates == 128 and get_dataset("so2sat").max_dates == 1
    with pytest.raises(ValueError, match="max_dates must be a positive integer"):
        DatasetSpec("x", ("s2",), ("s2",), 10, (10,), (), "m:C", max_dates=0)
