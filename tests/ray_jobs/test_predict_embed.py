"""``ray_jobs.embed`` with the scene job's writers: dense features written shard by shard by
parallel actors (not the driver), equal to a direct forward pass, and the run logged to MLflow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.ingest import run_ingest
from pipelines.samplegen import get_generator
from pipelines.store import StoreReader
from ray_jobs import embed
from ray_jobs.data import ReadRange, collate, stream_items
from ray_jobs.task import load_encoder, prepare_task
from ray_jobs_helpers import REPO

pytestmark = pytest.mark.slow

LP_TINY = REPO / "configs/finetune/planted-cls-ft-tiny.yaml"


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    """A 12-tile PLANTED store in 3 shards of 4 tiles, so that two actors write shards side by side."""
    raw, out = tmp_path_factory.mktemp("planted-raw"), tmp_path_factory.mktemp("planted-store")
    get_generator("planted")(str(raw), tiles=12, seed=0)
    run_ingest("planted", str(raw), str(out), tiles_per_shard=4, executor="local", progress=False)
    return out


def test_embed_dense_features_parallel_writers_and_mlflow(ray_session, planted_store, tmp_path, no_mlflow_env):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [f"data.root={planted_store}", f"storage_path={tmp_path / 'runs'}", f"mlflow.tracking_uri={uri}",
            "data.datasets.planted.batch_size=5"]
    out = tmp_path / "emb"
    argv = ["--config", str(LP_TINY), *[a for s in sets for a in ("--set", s)], "--out", str(out), "--encoder-only",
            "--output", "dense", "--splits", "train,val", "--concurrency", "2", "--num-cpus", "0.5", "--no-progress"]
    assert embed.main(argv) == 0

    cfg, plan, _ = prepare_task(str(LP_TINY), sets)
    src, emb = StoreReader(plan.url), StoreReader(str(out / "planted.zarr"))
    assert emb.sensors == ["anysat-dense"] and emb.meta.embedding.output == "dense"
    info = emb.meta.sensors["anysat-dense"]
    assert (info.channels, info.height, info.resolution_m) == (512, 12, 10.0)  # [patch | sub-patch], 10 m s2 grid
    assert (emb.ids() == src.ids()).all() and (emb.splits() == src.splits()).all()
    assert emb.tiles_per_shard == 4 and len(emb) == 12
    data = emb.read(0, len(emb), ["anysat-dense"], labels=False)["anysat-dense/data"][:, 0]

    torch.manual_seed(cfg.seed)
    enc = load_encoder(cfg, list(plan.sensors)).eval()
    plan = plan.replace(batch_size=5)
    rr = ReadRange(plan, "train", False, cfg.seed)
    checked = 0
    for item in stream_items(plan, "train", False, 0, 1, cfg.seed, 0):
        blk = rr.read_item(item)
        if not len(blk["tile"]):
            continue
        x, pad = collate(blk, plan)
        with torch.no_grad():
            ref = enc(x, patch_size=30, output="dense", pad_mask=pad, output_modality="s2").permute(0, 3, 1, 2)
        for t, v in zip(blk["tile"], ref.numpy()):
            np.testing.assert_allclose(data[int(t)], v, atol=2e-4, rtol=1e-4)
            checked += 1
    assert checked == len(src.split_indices("train"))
    test = src.split_indices("test")
    assert len(test) and not data[test].any()  # split not selected: fill value

    runs = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("anysat-inference").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["output"] == "dense"
    assert runs[0].data.metrics["tiles"] == len(src.split_indices("train")) + len(src.split_indices("val"))
    assert runs[0].info.status == "FINISHED"
