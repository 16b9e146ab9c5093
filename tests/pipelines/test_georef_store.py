"""Georeferenced stores (format version 2): a tile opened with xarray + rioxarray sits where its source
GeoTIFF is, footprints export to GeoParquet, archives without coordinates say so, a version-1 store still
reads and plans for training, and a config that needs SPOT fails clearly on a PASTIS-R store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import zarr

from ingest_helpers import ingest_sample
from pipelines import footprints, samples
from pipelines.store import StoreReader
from pipelines.store_meta import check_format

REPO = Path(__file__).resolve().parents[2]
SEMSEG = REPO / "configs/finetune/pastis-hd-semseg-ft.yaml"


@pytest.fixture(scope="module")
def s2naip(tmp_path_factory):
    raw = tmp_path_factory.mktemp("s2naip")
    samples.write_sample("s2naip-urban", str(raw))
    return raw, ingest_sample("s2naip-urban", raw, tmp_path_factory.mktemp("s2naip-store"))


def test_tile_opens_with_rioxarray_at_the_source_geotiff_place(s2naip):
    raw, r = s2naip
    assert r.meta.format_version == 2 and r.meta.georef.footprint == "grid"
    ids = r.ids().tolist()
    for i, tid in enumerate(ids):
        for sensor, rel, per_image in (("s2", f"sentinel2/{tid}_8.tif", 4), ("s1", f"sentinel1/{tid}.tif", 2)):
            with rasterio.open(raw / rel) as ds:
                crs, transform, bounds, pix = ds.crs, ds.transform, ds.bounds, ds.read()
            da = r.open_tile(i, sensor)
            assert da.rio.crs == crs and da.rio.transform() == transform, (tid, sensor)
            assert da.rio.bounds() == pytest.approx(tuple(bounds))
            assert da.dims == ("time", "band", "y", "x") and da.coords["spatial_ref"].attrs["crs_wkt"]
            assert "GeoTransform" in da.coords["spatial_ref"].attrs
            # pixel values at the place: the archive's first image, VV or B02 band, unchanged
            np.testing.assert_array_equal(da.values[0, 0], pix[0])
            t = pix.shape[0] // per_image
            assert int((da.coords["time"].notnull()).sum()) == t
    # the NAIP PNG has no georeference of its own; its grid follows AI2's tile naming and covers the same ground
    naip = r.open_tile(0, "naip")
    assert naip.rio.resolution() == (1.25, -1.25)
    assert naip.rio.bounds() == pytest.approx(r.open_tile(0, "s2").rio.bounds())
    # per-tile CRS: the sample spans two UTM zones
    assert set(r.meta.georef.crs) == {"EPSG:32610", "EPSG:32612"} and r.meta.georef.n_tiles == len(ids)


def test_footprints_export_to_geoparquet(s2naip, tmp_path):
    raw, r = s2naip
    out = tmp_path / "tiles.parquet"
    assert footprints.main([r.url, "-o", str(out)]) == 0
    gdf = gpd.read_parquet(out)
    assert gdf.crs.to_epsg() == 4326 and len(gdf) == len(r)  # two UTM zones -> one common CRS
    same = footprints.footprint_frame(r.url, crs="EPSG:32610")
    for row in same.itertuples():
        if row.crs != "EPSG:32610":
            continue
        with rasterio.open(raw / f"sentinel2/{row.tile}_8.tif") as ds:
            assert row.geometry.equals(shapely.box(*ds.bounds)), row.tile
    back = gdf.to_crs("EPSG:32610").set_index("tile").loc[same.set_index("tile").index]
    assert np.allclose(back.geometry.area, same.set_index("tile").geometry.area, rtol=1e-3)


def test_pastis_footprints_come_from_the_geojson_and_spot_from_its_tif(tmp_path):
    raw = tmp_path / "raw"
    samples.write_sample("pastis-hd", str(raw), tiles=3)
    r = ingest_sample("pastis-hd", raw, tmp_path / "out")
    g = r.meta.georef
    assert g.footprint == "archive" and g.sensors == ("spot",) and g.crs == ("EPSG:2154",)
    feats = {str(f["properties"]["ID_PATCH"]): f["geometry"]
             for f in json.loads((raw / "metadata.geojson").read_text())["features"]}
    fp = r.footprints()
    for i, tid in enumerate(fp["id"]):
        assert shapely.from_geojson(fp["footprint"][i]).equals(shapely.geometry.shape(feats[tid]))
        with rasterio.open(raw / f"DATA_SPOT/PASTIS_SPOT6_RVB_1M00_2019/SPOT6_RVB_1M00_2019_{tid}.tif") as ds:
            spot = r.open_tile(i, "spot")
            assert spot.rio.crs == ds.crs and spot.rio.transform() == ds.transform
        s2 = r.open_tile(i, "s2")  # the .npy series have no grid: located by the footprint only
        assert s2.rio.crs == "EPSG:2154" and "no grid for s2" in s2.attrs["georeference"]


def test_archive_without_coordinates_says_so(tmp_path):
    raw = tmp_path / "raw"
    samples.write_sample("planted", str(raw), tiles=12)
    r = ingest_sample("planted", raw, tmp_path / "out")
    assert r.meta.georef.footprint is None and "no coordinates" in r.meta.georef.note
    assert "geo" not in r.root and "transform" not in r.root["s2"]
    assert "no coordinates" in r.open_tile(0, "s2").attrs["georeference"]
    with pytest.raises(ValueError, match="no footprints"):
        r.footprints()


def _downgrade_to_v1(url: str) -> None:
    """What the previous version wrote: no geo arrays, no per-sensor tile counts, format_version 1."""
    root = zarr.open_group(url, mode="r+")
    attrs = dict(root.attrs)
    for key, s in attrs["sensors"].items():
        s.pop("n_tiles", None)
        if "transform" in root[key]:
            del root[key]["transform"]
    if "geo" in root:
        del root["geo"]
    attrs.pop("georef", None)
    attrs["format_version"] = 1
    root.attrs.put(attrs)


def test_version_1_store_still_reads_and_plans(pastis_r, tmp_path):
    _, r2 = pastis_r
    url = str(tmp_path / "pastis-hd.zarr")
    shutil.copytree(r2.url, url)
    _downgrade_to_v1(url)
    assert check_format(url)
    r1 = StoreReader(url)
    assert r1.meta.format_version == 1 and r1.meta.georef is None
    b1, b2 = r1.read(0, len(r1)), r2.read(0, len(r2))
    assert sorted(b1) == sorted(b2)
    for k in b1:
        np.testing.assert_array_equal(b1[k], b2[k], err_msg=k)
    da = r1.open_tile(0, "s2")
    assert "format_version 1" in da.attrs["georeference"] and da.rio.crs is None
    with pytest.raises(ValueError, match="format_version 1"):
        r1.footprints()
    # the trainer plans on it exactly as on a new store
    from ray_jobs.finetune import main

    assert main(["--config", str(SEMSEG), "--dry-run", "--set", f"data.root={tmp_path}", "--set", "num_workers=1",
                 "--set", "data.datasets.pastis-hd.sensors=[s2, s1]"]) == 0


def test_config_needing_spot_fails_clearly_on_pastis_r(pastis_r, capsys):
    _, r = pastis_r
    from ray_jobs.finetune import main

    root = str(Path(r.url).parent)
    assert main(["--config", str(SEMSEG), "--dry-run", "--set", f"data.root={root}", "--set", "num_workers=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs sensor(s) ['spot']" in err and "has none" in err and len(err.splitlines()) == 1, err
    assert main(["--config", str(SEMSEG), "--dry-run", "--set", f"data.root={root}", "--set", "num_workers=1",
                 "--set", "data.datasets.pastis-hd.sensors=[s2, s1]"]) == 0
