"""``python -m ray_jobs.embed``: Ray Data batch inference over a sample store, written back as a
store of the same format, aligned tile-for-tile, with the values of a direct forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from ray_jobs.runtime import split_state

from ray_jobs_helpers import REPO

pytestmark = pytest.mark.slow

LP_TINY = REPO / "configs/finetune/treesatai-ts-cls-lp-tiny.yaml"


def _direct(plan, split, seed, fn):
    """fn(collated inputs) for every tile of ``split``, keyed by tile index (the reference)."""
    from ray_jobs.data import ReadRange, collate, stream_items

    rr = ReadRange(plan, split, False, seed)
    out = {}
    for item in stream_items(plan, split, False, 0, 1, seed, 0):
        blk = rr.read_item(item)
        if len(blk["tile"]):
            x, pad = collate(blk, plan)
            with torch.no_grad():
                y = fn(x, pad)
            out.update({int(t): v for t, v in zip(blk["tile"], y.numpy())})
    return out


def test_embed_patch_embeddings_and_segmentation_maps(ray_session, sample_stores, tmp_path, no_mlflow_env):
    from anysat.heads import TaskModel
    from pipelines.store import StoreReader
    from ray_jobs import embed
    from ray_jobs.finetune_config import ResolvedTask
    from ray_jobs.task import FT_STATE_FILE, build_task_model, load_encoder, prepare_task

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # never the repository's own mlflow.db
    sets = ["--set", f"data.root={sample_stores}", "--set", f"storage_path={tmp_path / 'runs'}",
            "--set", f"mlflow.tracking_uri={uri}"]
    cfg, plan, task = prepare_task(str(LP_TINY), [s for s in sets if s != "--set"])
    splits = sorted(plan.split_aliases)

    # 1) patch embeddings of the config's (scratch, seeded) encoder, two splits only
    out = tmp_path / "emb"
    rc = embed.main(["--config", str(LP_TINY), *sets, "--out", str(out), "--encoder-only", "--output", "patch",
                     "--splits", "train,test", "--batch-size", "3"])
    assert rc == 0
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("anysat-inference").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the embedding run is logged, with its speed
    assert runs[0].data.params["output"] == "patch" and runs[0].data.metrics, runs[0].data
    src, emb = StoreReader(plan.url), StoreReader(str(out / "treesatai-ts.zarr"))
    assert len(emb) == len(src) and emb.tiles_per_shard == src.tiles_per_shard
    assert (emb.ids() == src.ids()).all() and (emb.splits() == src.splits()).all()
    assert emb.sensors == ["anysat-patch"] and emb.meta.embedding.output == "patch"
    info = emb.meta.sensors["anysat-patch"]
    assert (info.channels, info.height, info.resolution_m) == (256, 3, 20.0)  # 60 m tile / 20 m
    block = emb.read(0, len(emb), ["anysat-patch"], labels=False)
    data = block["anysat-patch/data"][:, 0]  # (N, D, n, n)

    torch.manual_seed(cfg.seed)
    enc = load_encoder(cfg, list(plan.sensors)).eval()
    for split in ("train", "test"):
        ref = _direct(plan, split, cfg.seed, lambda x, pad: enc(x, patch_size=20, output="patch", pad_mask=pad))
        assert ref
        for t, v in ref.items():
            np.testing.assert_allclose(data[t], np.moveaxis(v, -1, 0), atol=2e-4, rtol=1e-4)
    val = src.split_indices("val")
    assert len(val) and not data[val].any()  # split not selected: fill value

    # 2) segmentation maps from a fine-tuned checkpoint: a dense head on the s2 sub-patch grid
    seg_task = ResolvedTask(dataset="treesatai-ts", label="genus", kind="segmentation", classes=["a", "b", "c"],
                            head="dense", output_modality="s2", proj_size=1, patch_size_m=20, loss="ce_ignore",
                            monitor="miou", conventions=[], ignore_index=None)
    torch.manual_seed(3)
    model = build_task_model(load_encoder(cfg, list(plan.sensors)), seg_task, freeze=False).eval()
    with torch.no_grad():
        model.net.head.linear.bias.copy_(torch.tensor([0.0, 0.3, -0.3]))
    ck = tmp_path / "ft-run" / "checkpoint_000000"
    ck.mkdir(parents=True)
    torch.save({"model": split_state(model), "step": 4, "mlflow_run_id": ""}, ck / "state.pt")
    torch.save({"best": {"value": 0.5, "step": 4, "bad": 0, "stopped": False}, "best_weights": {},
                "task": seg_task.model_dump()}, ck / FT_STATE_FILE)
    rc = embed.main(["--config", str(LP_TINY), *sets, "--out", str(tmp_path / "seg"), "--output", "segmentation",
                     "--checkpoint", str(tmp_path / "ft-run")])
    assert rc == 0
    seg = StoreReader(str(tmp_path / "seg" / "treesatai-ts.zarr"))
    assert seg.label_names == ["genus_pred"]
    maps = seg.read(0, len(seg), [], labels=True)["labels/genus_pred"]
    assert maps.shape == (len(src), 6, 6) and maps.dtype == np.int16  # 3 patches x 2 sub-patches of 10 m
    assert isinstance(model.net, TaskModel)
    for split in splits:
        ref = _direct(plan, split, cfg.seed, lambda x, pad: model(x, pad_mask=pad).argmax(1))
        for t, v in ref.items():
            assert (maps[t] == v).mean() > 0.99, (split, t)  # argmax ties aside, identical maps
    assert set(np.unique(maps)) <= {0, 1, 2}

    # errors are reported, not raised: segmentation needs a fine-tuned model
    assert embed.main(["--config", str(LP_TINY), *sets, "--out", str(tmp_path / "x"), "--encoder-only",
                       "--output", "segmentation"]) == 2
