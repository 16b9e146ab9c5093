"""Every registered dataset with a sample generator: ingest its miniature archive, compare the store
with ``source.read_tile`` for every tile (values, dates, masks, labels, padding)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.datasets import DATASETS, get_dataset
from pipelines.ingest import run_ingest
from pipelines.ingest_plan import ordered_listing
from pipelines.samplegen import generator_available, get_generator
from pipelines.store import StoreReader


def _params():
    for name in DATASETS:
        marks = []
        if not generator_available(name):
            marks.append(pytest.mark.skip(reason=f"{get_dataset(name).generator_module} not written yet"))
        else:
            try:
                get_dataset(name).source_class()
            except (ImportError, AttributeError) as e:
                marks.append(pytest.mark.skip(reason=f"source of {name} not importable yet ({e})"))
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("dataset", list(_params()))
def test_store_equals_source(dataset, tmp_path, ray_session):
    raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
    get_generator(dataset)(raw, tiles=None, seed=1)
    spec = get_dataset(dataset)
    tps = max(2, min(spec.tiles_per_shard, 4))  # several shards even for a miniature archive
    res = run_ingest(dataset, raw, out, tiles_per_shard=tps, progress=False)
    assert res.quarantine == [], res.quarantine  # generators write valid archives only
    source = spec.source_class()(raw)
    refs = ordered_listing(source)
    r = StoreReader(res.url)
    assert len(r) == len(refs)
    b = r.read(0, len(r))
    for i, ref in enumerate(refs):
        tile = source.read_tile(ref)
        assert b["tiles/id"][i] == tile.id and b["tiles/split"][i] == tile.split
        for key, arr in tile.sensors.items():
            if key not in spec.sensors:
                continue
            t = arr.data.shape[0]
            got = b[f"{key}/data"][i]
            np.testing.assert_array_equal(got[:t], arr.data, err_msg=f"{ref.id} {key}")
            assert got.dtype == np.result_type(arr.data.dtype, got.dtype)
            assert (got[t:] == 0).all()
            np.testing.assert_array_equal(b[f"{key}/dates"][i, :t], arr.dates)
            assert (b[f"{key}/dates"][i, t:] == -1).all()
            if arr.mask is not None:
                m = np.broadcast_to(arr.mask, (t, b[f"{key}/mask"].shape[2], *arr.mask.shape[2:]))
                np.testing.assert_array_equal(b[f"{key}/mask"][i, :t], m)
        for name, v in tile.labels.items():
            np.testing.assert_array_equal(b[f"labels/{name}"][i], v, err_msg=f"{ref.id} {name}")
    for key in r.sensors:
        st = r.stats(key)
        assert len(st["mean"]) == r.meta.sensors[key].channels
