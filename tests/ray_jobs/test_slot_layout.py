"""SICKLE's Landsat-8 reaches the model in the official 11-slot ``l8`` layout: the store keeps the archive's
8 bands (``l8-sr``: SR_B1..SR_B7, ST_B10), the loader places them as ``[pad, SR_B1..SR_B7, pad, ST_B10,
pad]`` (``SlotSource`` of ``l8`` in ``anysat/sensors.py``), the pads zero and masked invalid."""

from __future__ import annotations

import numpy as np
import torch

from anysat import AnySat
from anysat.sensors import get_sensor
from ray_jobs.data import collate
from ray_jobs.finetune_config import FinetuneConfig
from ray_jobs.plan import bands_float, resolve_plans
from ray_jobs.task import eval_batches

SLOTS = {"B8": None, "B1": "SR_B1", "B2": "SR_B2", "B3": "SR_B3", "B4": "SR_B4", "B5": "SR_B5", "B6": "SR_B6",
         "B7": "SR_B7", "B9": None, "B10": "ST_B10", "B11": None}


def test_sickle_landsat_in_the_official_11_slots(tmp_path):
    from pipelines.ingest import run_ingest
    from pipelines.samplegen import get_generator

    get_generator("sickle")(str(tmp_path / "raw"), tiles=6, seed=0)
    run_ingest("sickle", str(tmp_path / "raw"), str(tmp_path), executor="local", progress=False)
    cfg = FinetuneConfig.model_validate({
        "name": "slots", "num_workers": 1, "use_gpu": False, "storage_path": str(tmp_path / "runs"),
        "data": {"root": str(tmp_path), "datasets": [{"name": "sickle", "allow_filled_bands": ["l8/B8", "l8/B9",
                                                                                                 "l8/B11"]}]}})
    plan = resolve_plans(cfg)["sickle"]
    assert list(plan.sensors) == ["l8", "s2", "s1"]  # the registry's model sensors: l8 from the stored l8-sr
    sp = plan.sensors["l8"]
    assert sp.store_key == "l8-sr" and tuple(b.name for b in sp.bands) == get_sensor("l8").bands == tuple(SLOTS)
    stored = ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7", "ST_B10")
    for b in sp.bands:
        assert b.filled == (SLOTS[b.name] is None)
        if SLOTS[b.name]:
            assert stored[b.index] == SLOTS[b.name]

    raw = next(iter(eval_batches(plan, "train", "paddy", 0, 1, 0, 4)))
    x, pad = collate(raw, plan)
    l8, mask = x["l8"], x["l8_mask"]
    assert l8.shape[2] == mask.shape[2] == 11
    for slot in (0, 8, 10):  # B8 pan, B9 cirrus, B11: zero and never valid
        assert not mask[:, :, slot].any() and not l8[:, :, slot].any()
    t = l8.shape[1]
    ref = (bands_float(raw["l8/data"][:, :t], sp) - np.asarray(sp.mean, np.float32)[:, None, None]) \
        / np.asarray(sp.std, np.float32)[:, None, None]
    valid = ~pad["l8"].numpy()
    for slot, src in ((1, 0), (7, 6), (9, 7)):  # SR_B1 -> B1, SR_B7 -> B7, ST_B10 -> B10
        np.testing.assert_allclose(l8[:, :, slot].numpy()[valid], np.nan_to_num(ref[:, :, slot])[valid], rtol=1e-5,
                                   atol=1e-5)
        assert torch.equal(mask[:, :, slot], torch.from_numpy(raw["l8/mask"][:, :t, src]))
    # the generator drops ST_B10 from one acquisition per tile: that slot is masked there, the others are not
    assert (~mask[:, :, 9] & mask[:, :, 1]).any()
    # the derived S1 ratio is valid where both of its inputs are (per-band stored masks)
    assert x["s1_mask"].shape[2] == 3
    assert torch.equal(x["s1_mask"][:, :, 2], x["s1_mask"][:, :, 0] & x["s1_mask"][:, :, 1])
    enc = AnySat.from_size("tiny", sensors=list(plan.sensors)).eval()
    with torch.no_grad():
        assert enc(x, patch_size=10, output="dense", output_modality="s2", pad_mask=pad).shape[1:3] == (32, 32)
