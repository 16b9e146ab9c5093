"""Images without an acquisition date (store date -1) reach the model; padding still does not.

So2Sat has no dates at all (every tile one image, date -1): built here with the real pipeline
(sample archive generator + ingest), then read by the training loader and collated.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.ingest import run_ingest
from pipelines.samplegen import get_generator
from pipelines.store import StoreReader
from ray_jobs.config import load_config, resolve_paths
from ray_jobs.data import ReadRange, collate, stream_items
from ray_jobs.finetune_config import FinetuneConfig
from ray_jobs.plan import resolve_plans
from ray_jobs.timesteps import real_steps
from ray_jobs_helpers import REPO

FT_TINY = REPO / "configs/finetune/planted-cls-ft-tiny.yaml"


@pytest.fixture(scope="module")
def so2sat_store(tmp_path_factory):
    raw = tmp_path_factory.mktemp("so2sat-raw")
    out = tmp_path_factory.mktemp("so2sat-store")
    get_generator("so2sat")(str(raw), seed=0)
    run_ingest("so2sat", str(raw), str(out), executor="local", progress=False)
    return out


def test_real_steps_padding_vs_unknown_dates():
    data = np.zeros((4, 3, 1, 2, 2), np.int16)
    dates = np.full((4, 3), -1, np.int32)
    data[0, 0] = 5                     # one undated image, then padding
    dates[1, :2] = [100, 200]          # two dated images (zero pixels), then padding
    data[2, 1] = 7                     # a dated image, an undated one, padding
    dates[2, 0] = 50
    # tile 3: sensor absent (all zero, undated): all padding
    assert real_steps(data, dates).tolist() == [[True, False, False], [True, True, False],
                                                [True, True, False], [False, False, False]]
    mask = np.zeros((4, 3, 1, 2, 2), bool)
    mask[3, 0] = True                  # a valid (if zero) pixel is content too
    assert real_steps(data, dates, mask)[3].tolist() == [True, False, False]
    assert real_steps(data[:0], dates[:0], mask[:0]).shape == (0, 3)  # a read range without tiles of the split


@pytest.mark.parametrize("train", [False, True])
def test_undated_so2sat_images_reach_the_model(so2sat_store, train):
    reader = StoreReader(str(so2sat_store / "so2sat.zarr"))
    assert (reader.read(0, len(reader), ["s2"], labels=False)["s2/dates"] == -1).all()  # no dates at all
    sets = [f"data.root={so2sat_store}", "data.datasets=[{name: so2sat, batch_size: 4}]", "task.label=lcz",
            "task.patch_size_m=80"]
    cfg = resolve_paths(load_config(FT_TINY, sets, cls=FinetuneConfig))
    plan = resolve_plans(cfg)["so2sat"]
    assert all(plan.sensors[s].time_series for s in ("s2", "s1"))
    # statistics estimated by the loader (the derived S1 ratio) come from the undated images too
    ratio = [i for i, b in enumerate(plan.sensors["s1"].bands) if b.derived]
    assert ratio and all(plan.sensors["s1"].std[i] != 1.0 or plan.sensors["s1"].mean[i] != 0.0 for i in ratio)
    rr = ReadRange(plan, "train", train, cfg.seed)
    blk = rr.read_item(stream_items(plan, "train", train, 0, 1, cfg.seed, 0)[0])
    assert len(blk["tile"])
    x, pad = collate(blk, plan)
    for s in ("s2", "s1"):
        assert x[s].shape[1] == 1 and not pad[s].any()  # the single image is real, not padding
        assert (x[f"{s}_dates"] == 0).all()  # unknown date -> day 0
        assert x[s].abs().flatten(1).amax(1).gt(0).all()  # every tile's input is non-zero
        raw = blk[f"{s}/data"][:, 0].astype(np.float32)
        assert np.abs(raw).reshape(len(raw), -1).max(1).min() > 0
    assert torch.isfinite(x["s1"]).all()
