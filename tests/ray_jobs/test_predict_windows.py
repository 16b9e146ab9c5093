"""Scene inference without Ray: window geometry, blending, the scene spec, edge padding of the
warped reader, the map format (rioxarray convention) and resume markers."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine

from pipelines.maps import MapError, MapLayout, MapVariable, create_map, done_shards, write_map_shard
from pipelines.scene import Grid, SceneError, load_scene, read_region
from pipelines.scenegen import ORIGIN, field_classes, write_scene
from ray_jobs.windows import Accumulator, WindowPlan


@pytest.mark.parametrize("h,w,win,ov,cell,shard", [(50, 37, 12, 6, 1, 7), (15, 15, 12, 0, 1, 4),
                                                   (96, 96, 12, 3, 3, 2), (5, 9, 12, 4, 1, 3)])
def test_every_cell_is_covered_by_the_windows_its_shard_reads(h, w, win, ov, cell, shard):
    plan = WindowPlan(h, w, win, ov, cell, shard)
    ny, nx = plan.shards_yx
    seen = np.zeros(plan.cells, int)
    for i in range(ny * nx):
        (r0, r1, c0, c1), wins = plan.shard_windows(i)
        seen[r0:r1, c0:c1] += 1
        cover = np.zeros(plan.cells, bool)
        for r, c in wins:
            cover[r // cell:(r + win) // cell, c // cell:(c + win) // cell] = True
        assert cover[r0:r1, c0:c1].all(), i
        # no window that misses the shard is read: each one overlaps it
        for r, c in wins:
            assert r // cell < r1 and (r + win) // cell > r0 and c // cell < c1 and (c + win) // cell > c0
        row, col, rh, rw = plan.region(wins)
        assert rh <= (r1 - r0) * cell + 2 * win and rw <= (c1 - c0) * cell + 2 * win  # shard + margin only
    assert (seen == 1).all()


def test_blending_one_window_is_exact_and_overlaps_ramp():
    plan = WindowPlan(12, 12, 12, 6, 1, 12)
    acc = Accumulator(plan, (0, 12, 0, 12), 2)
    out = np.random.default_rng(0).normal(size=(2, 12, 12)).astype(np.float32)
    acc.add((0, 0), out)
    np.testing.assert_allclose(acc.result(), out, rtol=1e-6)

    # two windows of constant 0 and 1 side by side: the average ramps from 0 to 1 across the overlap
    plan = WindowPlan(12, 18, 12, 6, 1, 18)
    acc = Accumulator(plan, (0, 12, 0, 18), 1)
    acc.add((0, 0), np.zeros((1, 12, 12)))
    acc.add((0, 6), np.ones((1, 12, 12)))
    row = acc.result()[0, 6]
    assert (row[:6] == 0).all() and (row[12:] == 1).all()
    assert (np.diff(row[5:13]) > 0).all() and row[8] < 0.5 < row[9]

    centre = WindowPlan(12, 18, 12, 6, 1, 18, blend="centre")
    acc = Accumulator(centre, (0, 12, 0, 18), 1)
    acc.add((0, 0), np.zeros((1, 12, 12)))
    acc.add((0, 6), np.ones((1, 12, 12)))
    row = acc.result()[0, 6]
    np.testing.assert_allclose(row, [0] * 9 + [1] * 9, atol=2e-3)  # switch at the centre block border


def test_bad_plans_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        WindowPlan(10, 10, 12, 12, 1, 4)
    with pytest.raises(ValueError, match="multiples"):
        WindowPlan(10, 10, 12, 4, 3, 4)


def _raster(path, data, transform, crs="EPSG:32631"):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[-1], height=data.shape[-2], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform) as dst:
        dst.write(data)


def test_scene_spec_dates_grid_and_edge_padding(tmp_path):
    spec = write_scene(tmp_path / "scene", size=20, dates=3, sensors=("s2",))
    scene = load_scene(str(spec))
    g = scene.grid
    assert (g.width, g.height, g.resolution, (g.x0, g.y0)) == (20, 20, 10.0, ORIGIN)
    s2 = scene.sensors["s2"]
    assert len(s2.files) == 3 and list(s2.days) == sorted(s2.days) and s2.bands == tuple(range(1, 11))
    with rasterio.open(s2.files[0]) as src:
        full = src.read().astype(np.float32)
    # a region reaching 6 px past the bottom-right corner: inside it is the raster, outside the edge repeated
    region = read_region(s2, g, 14, 14, 12, 12)[0]
    np.testing.assert_array_equal(region[:, :6, :6], full[:, 14:, 14:])
    np.testing.assert_array_equal(region[:, 6:, :6], np.repeat(full[:, 19:20, 14:], 6, axis=1))
    np.testing.assert_array_equal(region[:, :, 11], region[:, :, 5])

    # the grid is what the spec says, and rasters in another CRS are warped onto it
    arr = np.arange(400, dtype=np.float32).reshape(1, 20, 20)
    _raster(tmp_path / "s1_20200101.tif", np.concatenate([arr, arr + 1]), Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1]))
    doc = {"grid": {"crs": "EPSG:32631", "resolution": 10, "bounds": [ORIGIN[0] + 50, ORIGIN[1] - 150,
                                                                       ORIGIN[0] + 150, ORIGIN[1] - 50]},
           "sensors": {"s1": {"files": ["s1_*.tif"], "mean": [0, 0, 0], "std": [1, 1, 1]}}}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(doc))
    sub = load_scene(str(tmp_path / "g.yaml"))
    assert (sub.grid.width, sub.grid.height, sub.grid.x0, sub.grid.y0) == (10, 10, ORIGIN[0] + 50, ORIGIN[1] - 50)
    got = read_region(sub.sensors["s1"], sub.grid, 0, 0, 10, 10)[0, 0]
    np.testing.assert_array_equal(got, arr[0, 5:15, 5:15])


def test_scene_spec_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    for doc, match in [({"sensors": {"s9": {"files": "x.tif"}}}, "sensors.s9: unknown sensor"),
                       ({"sensors": {"s2": {"files": "none/*.tif"}}}, "sensors.s2.files: no raster"),
                       ({"sensors": {"s2": {"file": "x"}}}, "sensors.s2.file"),
                       ({"sensors": {}}, "name at least one sensor")]:
        bad.write_text(yaml.safe_dump(doc))
        with pytest.raises(SceneError, match=match) as e:
            load_scene(str(bad))
        assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_map_layout_markers_and_refusal(tmp_path):
    grid = Grid(rasterio.crs.CRS.from_epsg(32631).to_wkt(), *ORIGIN, 10.0, 7, 5)
    layout = MapLayout(grid, 4, (MapVariable("class", "int16"),), {"model": "m"})
    url = str(tmp_path / "m.zarr")
    assert create_map(url, layout) is False and done_shards(url) == set()
    r0, r1, c0, c1 = layout.box(3)
    write_map_shard(url, layout, 3, {"class": np.full((r1 - r0, c1 - c0), 2, np.int16)})
    assert done_shards(url) == {3}
    assert create_map(url, layout) is True  # same layout: resume
    other = MapLayout(grid, 2, layout.variables, layout.info)
    with pytest.raises(MapError, match="--overwrite"):
        create_map(url, other)
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(url, consolidated=False)
    assert ds["class"].shape == (5, 7) and int(ds["class"].values[4, 6]) == 2 and int(ds["class"].values[0, 0]) == -1
    assert ds["class"].attrs["grid_mapping"] == "spatial_ref"
    assert Affine.from_gdal(*map(float, ds["spatial_ref"].attrs["GeoTransform"].split())) == grid.transform


def test_scenegen_fields_are_the_truth_raster(tmp_path):
    write_scene(tmp_path, size=40, dates=1, sensors=("s2",), seed=3)
    with rasterio.open(tmp_path / "fields.tif") as src:
        np.testing.assert_array_equal(src.read(1), field_classes(np.arange(40), np.arange(40), seed=3))
        assert src.crs.to_epsg() == 32631
