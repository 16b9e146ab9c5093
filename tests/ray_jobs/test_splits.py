"""Split names resolve through the dataset registry: a PASTIS-HD store holds the official folds
(``tiles/split`` = fold1..fold5) and ``train``/``val``/``test`` mean folds 1-3 / 4 / 5
(``DatasetSpec.split_folds``), in pretraining plans, fine-tuning streams, evaluation and embedding."""

from __future__ import annotations

import numpy as np
import pytest

from ray_jobs_helpers import REPO

SEMSEG = REPO / "configs/finetune/pastis-hd-semseg-ft.yaml"
FOLDS = {"train": {"fold1", "fold2", "fold3"}, "val": {"fold4"}, "test": {"fold5"}}


@pytest.fixture(scope="module")
def pastis_plan(pastis_store):
    from ray_jobs.task import prepare_task

    cfg, plan, task = prepare_task(str(SEMSEG), [f"data.root={pastis_store}", "num_workers=1"])
    return cfg, plan, task, sorted(plan.split_aliases)


def test_aliases_come_from_the_registry(pastis_store, pastis_plan):
    from pipelines.store import StoreReader
    from ray_jobs.plan import split_aliases

    cfg, plan, task, splits = pastis_plan
    reader = StoreReader(plan.url)
    assert reader.split_names() == ["fold1", "fold2", "fold3", "fold4", "fold5"]
    assert split_aliases("pastis-hd", reader.split_names()) == {
        **{f"fold{i}": (f"fold{i}",) for i in range(1, 6)},
        "train": ("fold1", "fold2", "fold3"), "val": ("fold4",), "test": ("fold5",)}
    # a store without the folds gets no aliases; a stored split of the alias's name wins
    assert split_aliases("pastis-hd", ["fold1", "test"]) == {"fold1": ("fold1",), "test": ("test",)}
    assert split_aliases("planted", ["train", "val"]) == {"train": ("train",), "val": ("val",)}
    assert splits == sorted(["fold1", "fold2", "fold3", "fold4", "fold5", "train", "val", "test"])
    assert plan.split == "train" and plan.val_split == "val"
    assert plan.n_split == len(reader.split_indices(["fold1", "fold2", "fold3"])) == 5
    for name, folds in FOLDS.items():
        assert set(plan.resolve_split(name)) == folds and plan.has_split(name)
    assert plan.resolve_split(["fold1", "fold2"]) == ("fold1", "fold2")
    assert not plan.has_split("bogus") and not plan.has_split(["fold1", "fold9"])
    # per-shard split counts are counted once, at plan time, and agree with tiles/split
    tps = plan.tiles_per_shard
    for name in reader.split_names():
        assert list(plan.split_counts[name]) == [
            int((reader.splits()[lo:lo + tps] == name).sum()) for lo in range(0, len(reader), tps)]
    assert task.label == "semantic" and task.kind == "segmentation"


def test_reads_and_eval_batches_follow_the_folds(pastis_plan):
    from pipelines.store import StoreReader
    from ray_jobs.data import ReadRange, stream_items
    from ray_jobs.task import eval_batches

    cfg, plan, task, _ = pastis_plan
    stored = StoreReader(plan.url).splits()

    def tiles(split, train):
        rr = ReadRange(plan, split, train, cfg.seed)
        return sorted(int(t) for it in stream_items(plan, split, train, 0, 1, cfg.seed, 0)
                      for t in rr.read_item(it)["tile"])

    for name, folds in FOLDS.items():
        got = tiles(name, name == "train")
        assert got == sorted(np.flatnonzero(np.isin(stored, sorted(folds))).tolist()), name
        assert {stored[t] for t in got} == folds
    assert tiles(["fold1", "fold2", "fold3"], False) == tiles("train", True)  # explicit list = alias
    # evaluation batches (labels cropped like the images) read the test fold only
    (batch,) = list(eval_batches(plan, "test", task.label, 0, 1, cfg.seed, 4))
    assert [stored[t] for t in batch["tile"]] == ["fold5"] and batch["label"].shape[0] == 1


def test_paper_config_dry_run_and_explicit_fold_lists(pastis_store, capsys):
    from ray_jobs.finetune import main

    assert main(["--config", str(SEMSEG), "--dry-run", "--set", f"data.root={pastis_store}"]) == 0
    out = capsys.readouterr().out
    assert "5 train (fold1+fold2+fold3) tiles, val val (fold4), test test (fold5)" in out, out
    # explicit lists of store splits in the config work the same way
    sets = ["--set", f"data.root={pastis_store}", "--set", "data.datasets.pastis-hd.split=[fold1, fold2]",
            "--set", "data.datasets.pastis-hd.val_split=[fold3]", "--set", "eval.test_split=[fold4, fold5]",
            "--set", "num_workers=2"]
    assert main(["--config", str(SEMSEG), "--dry-run", *sets]) == 0
    assert "4 fold1+fold2 tiles, val fold3, test fold4+fold5" in capsys.readouterr().out
    # an unknown split names the store's splits and aliases
    assert main(["--config", str(SEMSEG), "--dry-run", "--set", f"data.root={pastis_store}",
                 "--set", "data.datasets.pastis-hd.split=holdout"]) == 2
    err = capsys.readouterr().err
    assert "split 'holdout' not in store" in err and "aliases: ['test', 'train', 'val']" in err, err


def test_pretraining_plan_resolves_the_alias(pastis_store):
    from ray_jobs.config import PretrainConfig, load_config, resolve_paths
    from ray_jobs.plan import resolve_plans

    cfg = resolve_paths(load_config(REPO / "configs/pretrain/geoplex-base.yaml", [
        f"data.root={pastis_store}", "num_workers=1",
        "data.datasets=[{name: pastis-hd, patch_sizes_m: [40], date_origin: '2018-09-01'}]"], cls=PretrainConfig))
    (plan,) = resolve_plans(cfg).values()
    assert plan.split == "train" and plan.val_split == "val" and plan.n_split == 5
