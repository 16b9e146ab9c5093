"""Raw archive on S3 -> Ray Data ingest -> store on S3 (a real moto S3 server on 127.0.0.1)."""

from __future__ import annotations

import numpy as np
import s3fs

from ingest_helpers import assert_stores_equal
from pipelines.ingest import run_ingest
from pipelines.samplegen.planted import write_sample
from pipelines.store import StoreReader


def test_s3_round_trip(tmp_path, s3_server, ray_session):
    so = s3_server["storage_options"]
    bucket = s3_server["bucket"]
    raw = str(tmp_path / "planted")
    write_sample(raw, tiles=10, seed=2)
    fs = s3fs.S3FileSystem(**so)
    fs.put(raw, f"{bucket}/raw/planted", recursive=True)
    assert fs.exists(f"{bucket}/raw/planted/train/labels2.json")

    res = run_ingest("planted", f"s3://{bucket}/raw/planted", f"s3://{bucket}/stores", storage_options=so,
                     tiles_per_shard=4, progress=False)
    assert res.exit_code == 0 and res.written == 10
    assert res.url == f"s3://{bucket}/stores/planted.zarr"
    fs.invalidate_cache()
    assert len(fs.ls(f"{bucket}/stores/planted.zarr/s2/data/c")) == 3  # one object per shard

    local = run_ingest("planted", raw, str(tmp_path / "local"), tiles_per_shard=4, progress=False)
    r = StoreReader(res.url, so)
    loc = StoreReader(local.url)
    a, b = r.read(0, len(r)), loc.read(0, len(loc))
    for k in b:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_array_equal(r.stats("s2")["mean"], loc.stats("s2")["mean"])
    assert_stores_equal(local.url, res.url, None, so)
    # a rerun against S3 finds every shard complete
    again = run_ingest("planted", f"s3://{bucket}/raw/planted", f"s3://{bucket}/stores", storage_options=so,
                       progress=False)
    assert again.shards_written == 0 and again.written == 10
