"""Every archive the way users hold it: PASTIS-R (no SPOT), a PASTIS-HD patch without its SPOT file, the
descending S1 with all three channels, a re-packaged FLAIR without aerial metadata, and an S2NAIP scene
table whose columns are not AI2's. Expectations come from the raw files, read with numpy / json."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil

import numpy as np
import pytest

from ingest_helpers import ingest_sample
from pipelines import samples
from pipelines.ingest import run_ingest
from pipelines.ingest_outcome import IngestError
from pipelines.sources.base import TileError
from pipelines.sources.s2naip import S2NaipUrban

SPOT_DIR = "DATA_SPOT/PASTIS_SPOT6_RVB_1M00_2019"


def _days(yyyymmdd: int) -> int:
    s = str(yyyymmdd)
    return int((np.datetime64(f"{s[:4]}-{s[4:6]}-{s[6:]}") - np.datetime64("1970-01-01")).astype(int))


def test_pastis_r_is_ingested_without_spot_and_keeps_every_s1_channel(pastis_r):
    raw, r = pastis_r
    assert not (raw / "DATA_SPOT").exists() and (raw / "DATA_S2").is_dir()
    meta = r.meta
    assert "spot" not in meta.sensors and set(meta.sensors) == {"s2", "s1", "s1-des"}
    assert {k: s.n_tiles for k, s in meta.sensors.items()} == {"s2": 5, "s1": 5, "s1-des": 5}
    feats = {str(f["properties"]["ID_PATCH"]): f["properties"]
             for f in json.loads((raw / "metadata.geojson").read_text())["features"]}
    assert meta.sensors["s1-des"].bands == ("VV", "VH", "VV/VH") and meta.sensors["s1-des"].channels == 3
    batch = r.read(0, len(r))
    for i, tid in enumerate(batch["tiles/id"]):
        for key, folder, prefix, dkey in (("s1-des", "DATA_S1D", "S1D", "dates-S1D"),
                                          ("s2", "DATA_S2", "S2", "dates-S2")):
            raw_arr = np.load(raw / folder / f"{prefix}_{tid}.npy")
            t = raw_arr.shape[0]
            np.testing.assert_array_equal(batch[f"{key}/data"][i, :t], raw_arr, err_msg=f"{tid} {key}")
            want = [_days(feats[tid][dkey][str(k)]) for k in range(t)]
            assert batch[f"{key}/dates"][i, :t].tolist() == want
            assert (batch[f"{key}/dates"][i, t:] == -1).all()
        # the third descending channel is the archive's VV - VH in dB, kept bit for bit
        s1d = batch["s1-des/data"][i]
        assert np.abs(s1d[:, 2].astype(np.float32) - (s1d[:, 0].astype(np.float32) - s1d[:, 1])).max() < 0.1


def test_pastis_hd_patch_without_spot_file_stores_spot_absent(tmp_path):
    raw = tmp_path / "raw"
    samples.write_sample("pastis-hd", str(raw), tiles=2)
    os.remove(raw / SPOT_DIR / "SPOT6_RVB_1M00_2019_10001.tif")
    r = ingest_sample("pastis-hd", raw, tmp_path / "out")
    assert r.meta.sensors["spot"].n_tiles == 1 and r.meta.sensors["s2"].n_tiles == 2 and not r.quarantine
    b = r.read(0, 2, sensors=["spot"])
    ids = b["tiles/id"].tolist()
    absent, present = ids.index("10001"), ids.index("10000")
    assert b["spot/dates"][absent].tolist() == [-1] and not b["spot/data"][absent].any()
    assert b["spot/data"][present].any()


def test_flair_repackaged_without_aerial_metadata(tmp_path, caplog):
    std, rep = tmp_path / "flair", tmp_path / "repack"
    samples.write_sample("flair", str(std))
    samples.write_sample("flair", str(rep), variant="flair-repackaged")
    sen = sorted(p.name for p in (rep / "flair_sen_train/D004_2021/Z10_AU/sen").iterdir())
    assert sen == ["S2_Z10_AU_data.npy", "S2_Z10_AU_masks.npy", "S2_Z10_AU_products.txt"]
    assert not (rep / "flair_aerial_metadata.json").exists()
    a = ingest_sample("flair", std, tmp_path / "a")
    with caplog.at_level(logging.WARNING, logger="pipelines.sources.flair"):
        b = ingest_sample("flair", rep, tmp_path / "b")
    warnings = [m for m in caplog.messages if "flair_aerial_metadata.json" in m]
    assert len(warnings) == 1 and "-1" in warnings[0]
    assert not b.quarantine and len(b) == len(a) == 6
    meta = json.loads((std / "flair_aerial_metadata.json").read_text())
    ba, bb = a.read(0, 6), b.read(0, 6)
    # the re-packaged copy holds the same pixels: every tile found, S2 windows identical
    assert ba["tiles/id"].tolist() == bb["tiles/id"].tolist()
    np.testing.assert_array_equal(ba["s2/data"], bb["s2/data"])
    np.testing.assert_array_equal(ba["s2/dates"], bb["s2/dates"])
    np.testing.assert_array_equal(ba["aerial-flair/data"], bb["aerial-flair/data"])
    assert (bb["aerial-flair/dates"] == -1).all()
    want = [_days(meta[t]["date"].replace("-", "")) for t in ba["tiles/id"]]
    assert ba["aerial-flair/dates"][:, 0].tolist() == want


def test_flair_zone_with_two_data_files_is_named(tmp_path):
    raw = tmp_path / "raw"
    samples.write_sample("flair", str(raw), variant="flair-repackaged")
    sen = raw / "flair_sen_train/D004_2021/Z10_AU/sen"
    shutil.copy(sen / "S2_Z10_AU_data.npy", sen / "old_data.npy")
    res = run_ingest("flair", str(raw), str(tmp_path / "out"), executor="local", progress=False)
    assert res.exit_code == 3 and {q["tile"] for q in res.quarantine} == {"IMG_000826", "IMG_000827"}
    assert all("2 files ending with 'data.npy'" in q["reason"] and q["file"].endswith("Z10_AU/sen")
               for q in res.quarantine)


def _rewrite_table(path, header):
    with open(path) as f:
        rows = list(csv.reader(f))[1:]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_s2naip_scene_table_is_read_by_its_schema(tmp_path):
    raw = tmp_path / "raw"
    samples.write_sample("s2naip-urban", str(raw), variant="ai2")
    r = ingest_sample("s2naip-urban", raw, tmp_path / "ok")
    with open(raw / "sentinel2.csv") as f:
        rows = list(csv.DictReader(f))
    b = r.read(0, len(r), sensors=["s2"])
    for i, tid in enumerate(b["tiles/id"]):
        mine = sorted((int(x["index"]), x["scene_id"]) for x in rows if x["tile"] == tid)
        want = [_days(int(s.split("_")[2][:8])) for _, s in mine]
        assert b["s2/dates"][i, :len(want)].tolist() == want and (b["s2/dates"][i] >= 0).sum() == len(want)


def test_s2naip_scene_table_with_unknown_columns_is_an_error(tmp_path):
    raw = tmp_path / "raw"
    samples.write_sample("s2naip-urban", str(raw), variant="ai2")
    _rewrite_table(raw / "sentinel2.csv", ["tile_id", "image", "product"])
    with pytest.raises(TileError, match=r"sentinel2\.csv.*\['tile_id', 'image', 'product'\]"):
        S2NaipUrban(str(raw)).list_tiles()
    with pytest.raises(IngestError) as e:
        run_ingest("s2naip-urban", str(raw), str(tmp_path / "out"), executor="local", progress=False)
    msg = str(e.value)
    assert "sentinel2.csv" in msg and "tile_id" in msg and "\n" not in msg
    assert not (tmp_path / "out" / "s2naip-urban.zarr").exists()


def test_sample_cli_variants(tmp_path, capsys):
    assert samples.main(["--dataset", "pastis-hd", "--out", str(tmp_path), "--list-variants"]) == 0
    assert "pastis-r:" in capsys.readouterr().out
    assert samples.main(["--dataset", "planted", "--out", str(tmp_path / "p"), "--variant", "pastis-r"]) == 2
    assert "planted generator writes no variants" in capsys.readouterr().err
    assert samples.main(["--dataset", "flair", "--out", str(tmp_path / "f"), "--variant", "nope"]) == 2
    assert "flair-repackaged" in capsys.readouterr().err
