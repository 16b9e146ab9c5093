"""Fine-tuning configs (every fine-tuning experiment of the AnySat paper our datasets cover) and the pieces of the
fine-tuning service that need no Ray: task resolution, label crops, heads built per task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_jobs_helpers import REPO

CONFIGS = sorted((REPO / "configs/finetune").glob("*.yaml"))

# experiment -> (mode, kind, head, loss, monitor, patch size, output modality, sensors)
PAPER = {
    "treesatai-ts-cls-ft": ("ft", "multilabel", "tile", "bce", "f1_weighted", 10, None, ["aerial", "s2", "s1-asc"]),
    "pastis-hd-cls-ft": ("ft", "multilabel", "tile", "bce", "f1_macro", 40, None, ["spot", "s2", "s1"]),
    "pastis-hd-semseg-ft": ("ft", "segmentation", "dense", "ce_weighted", "miou", 40, "s2", ["spot", "s2", "s1"]),
    "pastis-hd-semseg-lp": ("lp", "segmentation", "dense", "ce_weighted", "miou", 40, "s2", ["s2"]),
    "flair-semseg-ft": ("ft", "segmentation", "dense", "ce_weighted", "miou", 10, "aerial-flair",
                        ["aerial-flair", "s2"]),
    "planted-cls-ft": ("ft", "multiclass", "tile", "ce", "f1_macro", 30, None, None),
}


def _load(path, overrides=()):
    from ray_jobs.config import load_config
    from ray_jobs.finetune_config import FinetuneConfig

    return load_config(path, list(overrides), cls=FinetuneConfig)


def test_every_paper_experiment_has_a_config():
    names = {p.stem for p in CONFIGS}
    assert set(PAPER) <= names
    assert {"planted-cls-ft-tiny", "treesatai-ts-cls-lp-tiny"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_configs_validate_and_resolve(path):
    from ray_jobs.finetune_config import resolve_task

    cfg = _load(path)
    task = resolve_task(cfg)
    assert cfg.name == path.stem
    assert path.stem.removesuffix("-tiny").rsplit("-", 1)[1] == cfg.mode in ("ft", "lp", "lpplus")
    if path.stem in PAPER:
        mode, kind, head, loss, monitor, patch, out_mod, sensors = PAPER[path.stem]
        assert (cfg.mode, task.kind, task.head, task.loss, task.monitor, task.patch_size_m, task.output_modality) == \
            (mode, kind, head, loss, monitor, patch, out_mod)
        assert cfg.optim.lr == 5e-5 and cfg.encoder.source == "checkpoint" and cfg.encoder.weights == "teacher"
        if sensors:
            assert cfg.dataset.sensors == sensors
    if task.kind == "segmentation":
        # each segmentation benchmark is scored with the IoU convention of the code its paper number comes from:
        # PASTIS and FLAIR share AnySat's; BraDD-S1TS its foreground IoU; SICKLE its Jaccard; PANGAEA's for the rest
        expected = {"pastis-hd": "pastis", "flair": "pastis", "bradd-s1ts": "bradd", "sickle": "sickle",
                    "sen1floods11": "pangaea", "hls-burn-scars": "pangaea"}[task.dataset]
        assert expected in task.conventions
    if path.stem == "flair-semseg-ft":
        assert task.proj_size == 10 and cfg.optim.weight_decay == 0.01 and task.ignore_index == 12


def test_overrides_and_errors():
    from ray_jobs.config import ConfigError
    from ray_jobs.finetune_config import resolve_task

    path = REPO / "configs/finetune/planted-cls-ft-tiny.yaml"
    cfg = _load(path, ["data.root=/x", "train.max_steps=7", "mode=lp", "encoder.source=official",
                       "encoder.uri=/w/AnySat.pth", "task.monitor=oa"])
    assert (cfg.data.root, cfg.train.max_steps, cfg.mode, cfg.encoder.source, resolve_task(cfg).monitor) == \
        ("/x", 7, "lp", "official", "oa")
    with pytest.raises(ConfigError, match="encoder.uri"):
        _load(path, ["encoder.source=mlflow"])
    with pytest.raises(ConfigError, match="mode"):
        _load(path, ["mode=probe"])
    with pytest.raises(ConfigError, match="exactly one dataset"):
        _load(path, ["data.datasets=[{name: planted}, {name: flair}]"])
    with pytest.raises(ConfigError, match="did you mean"):
        _load(path, ["task.monitr=oa"])
    with pytest.raises(ConfigError, match="labels"):
        resolve_task(_load(path, ["task.label=semantic"]))
    with pytest.raises(ConfigError, match="head"):
        resolve_task(_load(path, ["task.head=dense"]))
    with pytest.raises(ConfigError, match="loss"):
        resolve_task(_load(path, ["task.loss=bce"]))


def _crop_plan(crop):
    from ray_jobs.plan import DataPlan

    return DataPlan(name="flair", url="", storage_options={}, sensors={}, split="train", val_split=None,
                    split_aliases={"train": ("train",)}, split_counts={}, batch_size=2, weight=1.0,
                    patch_sizes_m=(10,), tile_m=100.0, crop=crop, temporal_dropout=None, date_origin=None,
                    n_tiles=0, tiles_per_shard=1, provenance={})


def test_label_crop_follows_image_crop():
    """Dense labels are cropped at the offsets the parent reader used for the image (train: random)."""
    from ray_jobs.data import ReadRange

    rr = ReadRange(_crop_plan({"aerial-flair": 5}), "train", True, 0, label="semantic")
    img = np.arange(2 * 1 * 1 * 8 * 8).reshape(2, 1, 1, 8, 8)
    offsets = rr._crop_offsets({"aerial-flair": (8, 8)}, np.array([3, 9]), 0)
    cropped, _ = rr._crop(img, None, 5, *offsets["aerial-flair"], "aerial-flair")
    # the label holds the same numbers as the image's only band: its crop must equal the image crop
    lab = rr._crop_label(img[:, 0, 0])
    np.testing.assert_array_equal(lab, cropped[:, 0, 0])
    # a label twice as fine as the image is cropped at twice the offsets
    fine = np.repeat(np.repeat(img[:, 0, 0], 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(rr._crop_label(fine)[:, ::2, ::2], cropped[:, 0, 0])
    with pytest.raises(ValueError, match="matches none"):
        rr._crop_label(np.zeros((2, 7, 7)))


def test_multi_sensor_crops_cover_the_same_ground():
    """Two cropped sensors get one draw per tile: equal grids share offsets, a grid twice as fine gets
    twice the offsets; crops that cannot cover the same ground are refused."""
    from ray_jobs.data import ReadRange

    tiles = np.arange(50)
    rr = ReadRange(_crop_plan({"s2": 8, "s1": 8, "spot": 16}), "train", True, 0)
    off = rr._crop_offsets({"s2": (12, 12), "s1": (12, 12), "spot": (24, 24)}, tiles, 3)
    np.testing.assert_array_equal(off["s2"][0], off["s1"][0])
    np.testing.assert_array_equal(off["s2"][1], off["s1"][1])
    np.testing.assert_array_equal(off["spot"][0], 2 * off["s2"][0])
    np.testing.assert_array_equal(off["spot"][1], 2 * off["s2"][1])
    assert len(set(off["s2"][0].tolist())) > 1 and off["s2"][0].max() <= 4  # random, inside the image
    ev = ReadRange(_crop_plan({"s2": 8, "spot": 16}), "val", False, 0)._crop_offsets(
        {"s2": (12, 12), "spot": (24, 24)}, tiles[:2], 0)
    assert ev["s2"][0].tolist() == [2, 2] and ev["spot"][0].tolist() == [4, 4]  # the centre, on both grids
    with pytest.raises(ValueError, match="cover different ground"):
        ReadRange(_crop_plan({"s2": 8, "spot": 12}), "train", True, 0)._crop_offsets(
            {"s2": (12, 12), "spot": (24, 24)}, tiles, 0)


def test_heads_per_task_and_lp_freezes():
    from anysat import AnySat
    from ray_jobs.finetune_config import ResolvedTask
    from ray_jobs.task import build_task_model

    torch.manual_seed(0)
    enc = AnySat.from_size("tiny", sensors=["s2"])
    seg = ResolvedTask(dataset="pastis-hd", label="semantic", kind="segmentation", classes=list("abcd"), head="dense",
                       output_modality="s2", proj_size=2, patch_size_m=40, loss="ce_weighted", monitor="miou",
                       conventions=["pastis"], ignore_index=3)
    m = build_task_model(enc, seg, freeze=True)
    x = {"s2": torch.randn(2, 3, 10, 8, 8), "s2_dates": torch.tensor([[10, 50, 90]] * 2)}
    before = {k: v.clone() for k, v in m.encoder.state_dict().items()}
    m.train()
    assert not m.encoder.training
    assert {id(p) for p in m.trainable_parameters()} == {id(p) for p in m.net.head.parameters()}
    logits = m(x)
    assert logits.shape == (2, 4, 16, 16)  # 8 px of s2, 2x2 sub-pixels per 10 m cell
    loss = m.criterion(logits, torch.randint(0, 4, (2, 16, 16)))
    loss.backward()
    opt = torch.optim.AdamW(m.trainable_parameters(), 1e-2)
    opt.step()
    assert all(torch.equal(v, m.encoder.state_dict()[k]) for k, v in before.items())
