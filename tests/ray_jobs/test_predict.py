"""``python -m ray_jobs.predict`` on a small synthetic multi-date scene (GeoTIFFs written with
rasterio): the map keeps the input grid, a window at the scene edge is padded and cropped, the
stitched map equals the model run directly, and a rerun after a lost shard redoes that shard only."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
import yaml
import zarr

from anysat import AnySat
from pipelines.scenegen import write_scene
from ray_jobs import predict
from ray_jobs.finetune_config import ResolvedTask
from ray_jobs.runtime import split_state
from ray_jobs.task import FT_STATE_FILE, build_task_model, model_from_state

pytestmark = pytest.mark.slow

S2_MEAN, S2_STD = [1000.0] * 10, [800.0] * 10
TASK = ResolvedTask(dataset="planted", label="species", kind="multiclass", classes=["a", "b", "c", "d"], head="tile",
                    output_modality=None, proj_size=1, patch_size_m=30, loss="ce", monitor="f1_macro",
                    conventions=[], ignore_index=None)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A fine-tuning checkpoint of a tiny s2 + s1 tile classifier (random weights, distinct biases)."""
    ck = tmp_path_factory.mktemp("ft") / "checkpoint_000000"
    ck.mkdir()
    torch.manual_seed(0)
    model = build_task_model(AnySat.from_size("tiny", sensors=["s2", "s1"]), TASK, freeze=False).eval()
    torch.save({"model": split_state(model), "step": 1, "mlflow_run_id": ""}, ck / "state.pt")
    torch.save({"task": TASK.model_dump()}, ck / FT_STATE_FILE)
    return ck


def _scene(root: Path, size: int, sensors=("s2",), dates: int = 3) -> Path:
    spec = write_scene(root, size=size, dates=dates, sensors=sensors)
    doc = yaml.safe_load(spec.read_text())
    doc["sensors"]["s2"].update(mean=S2_MEAN, std=S2_STD)
    if "s1" in doc["sensors"]:
        doc["sensors"]["s1"].update(mean=[0.1, 0.03, 5.0], std=[0.05, 0.02, 3.0])
    spec.write_text(yaml.safe_dump(doc))
    return spec


def _run(ck, spec, out, *extra) -> int:
    return predict.main(["--model", str(ck), "--inputs", str(spec), "--out", str(out), "--no-progress",
                         "--window-m", "120", *extra])


def _direct(ck, spec_root: Path, window: np.ndarray) -> np.ndarray:
    """Class probabilities of one ``(T, 10, 12, 12)`` raw S2 window, straight through the model."""
    model = model_from_state(torch.load(ck / "state.pt", weights_only=True)["model"], TASK).eval()
    days = sorted(dt.datetime.strptime(p.stem[3:], "%Y%m%d").timetuple().tm_yday for p in (spec_root / "s2").iterdir())
    x = (window - np.array(S2_MEAN, np.float32)[:, None, None]) / np.array(S2_STD, np.float32)[:, None, None]
    with torch.no_grad():
        logits = model({"s2": torch.from_numpy(x[None].astype(np.float32)), "s2_dates": torch.tensor([days])})
    return torch.softmax(logits, 1)[0].numpy()


def _stack(spec_root: Path) -> np.ndarray:
    files = sorted((spec_root / "s2").iterdir())
    return np.stack([rasterio.open(f).read().astype(np.float32) for f in files])


def test_map_is_on_the_input_grid_and_opens_with_rioxarray(ray_session, checkpoint, tmp_path, capsys):
    spec = _scene(tmp_path / "scene", 40, sensors=("s2", "s1"))
    out = tmp_path / "map.zarr"
    assert _run(checkpoint, spec, out, "--output", "probability", "--shard-windows", "3",
                "--cog", str(tmp_path / "class.tif")) == 0
    assert str(out) in capsys.readouterr().out
    with rasterio.open(sorted((tmp_path / "scene/s2").iterdir())[0]) as src:
        crs, transform, shape = src.crs, src.transform, src.shape
    pytest.importorskip("rioxarray")  # registers the .rio accessor
    ds = xr.open_zarr(out, consolidated=False, decode_coords="all")
    assert ds["class"].rio.crs == crs and ds["class"].rio.transform() == transform
    assert ds["class"].shape == shape and ds["probability"].shape == (4,) + shape
    cls, prob = ds["class"].values, ds["probability"].values
    assert (cls >= 0).all() and np.isfinite(prob).all()
    np.testing.assert_allclose(prob.sum(0), 1, atol=1e-5)
    assert (prob.argmax(0) == cls).all()
    with rasterio.open(tmp_path / "class.tif") as cog:
        assert cog.crs == crs and cog.transform == transform and (cog.read(1) == cls).all()

    # a rerun after a kill redoes only the lost shards. As if the job died while writing shards 1 and 3
    # (120 m windows every 60 m, 3 strides per shard: 18-cell shards, 3 x 3 of them): no marker, half-written
    # chunks
    first = zarr.open_group(str(out), mode="r")["probability"][:]
    root = zarr.open_group(str(out), mode="r+")
    for i in (1, 3):
        (out / "done" / str(i) / "zarr.json").unlink()
        (out / "done" / str(i)).rmdir()
    root["probability"][:, :18, 18:36] = -7.0  # shard 1 = row 0, column 1
    root["probability"][:, 18:36, :18] = -7.0  # shard 3 = row 1, column 0
    kept = out / "probability" / "c" / "0" / "0" / "0"
    stamp = kept.stat().st_mtime_ns
    assert _run(checkpoint, spec, out, "--output", "probability", "--shard-windows", "3") == 0
    assert "resuming" in capsys.readouterr().out
    assert kept.stat().st_mtime_ns == stamp  # a finished shard is not rewritten
    again = zarr.open_group(str(out), mode="r")["probability"][:]
    assert (again[:, :18, 18:36] != -7).all() and (again[:, 18:36, :18] != -7).all()
    np.testing.assert_array_equal(again, first)


def test_stitched_map_equals_the_model_on_the_window_and_edges_are_padded(ray_session, checkpoint, tmp_path):
    # the scene is one 120 m window; 2 x 2 shards each run it and keep their quarter
    spec = _scene(tmp_path / "one", 12)
    out = tmp_path / "one.zarr"
    assert _run(checkpoint, spec, out, "--output", "probability", "--shard-windows", "1") == 0
    prob = zarr.open_group(str(out), mode="r")["probability"][:]
    ref = _direct(checkpoint, tmp_path / "one", _stack(tmp_path / "one"))
    np.testing.assert_allclose(prob, np.broadcast_to(ref[:, None, None], prob.shape), atol=1e-5)

    # 15 px: the second window reaches 9 px past the edge; it is fed edge-repeated pixels and cut back
    spec = _scene(tmp_path / "edge", 15)
    out = tmp_path / "edge.zarr"
    assert _run(checkpoint, spec, out, "--output", "probability", "--overlap-m", "0", "--blend", "centre") == 0
    prob = zarr.open_group(str(out), mode="r")["probability"][:]
    assert prob.shape == (4, 15, 15)
    raw = _stack(tmp_path / "edge")
    corner = np.pad(raw[:, :, 12:, 12:], ((0, 0), (0, 0), (0, 9), (0, 9)), mode="edge")
    np.testing.assert_allclose(prob[:, 12:, 12:], np.broadcast_to(_direct(checkpoint, tmp_path / "edge", corner)
                                                                  [:, None, None], (4, 3, 3)), atol=1e-5)
    np.testing.assert_allclose(prob[:, :12, :12], np.broadcast_to(_direct(checkpoint, tmp_path / "edge",
                                                                          raw[:, :, :12, :12])[:, None, None],
                                                                  (4, 12, 12)), atol=1e-5)


def test_user_errors_are_one_line_exit_2(checkpoint, tmp_path, capsys):
    spec = _scene(tmp_path / "scene", 12)
    assert predict.main(["--model", str(tmp_path / "nothing"), "--inputs", str(spec), "--out", "x.zarr"]) == 2
    assert predict.main(["--model", "official", "--inputs", str(spec), "--out", "x.zarr"]) == 2
    assert predict.main(["--model", str(checkpoint), "--inputs", str(spec), "--out", "x.zarr",
                         "--window-m", "125"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("error: ") for e in err)
    assert "--window-m 125" in err[2]
