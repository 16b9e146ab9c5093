"""Training length stated in epochs (ray_jobs/epochs.py): the step derivation as a pure function, the
official GeoPlex schedule from configs/pretrain/geoplex-base.yaml whatever the world size, and every
paper fine-tuning config deriving its steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ray_jobs.config import PretrainConfig, load_config
from ray_jobs.epochs import EpochFields, apply_epochs, derive_schedule, epoch_steps
from ray_jobs.finetune_config import FinetuneConfig
from ray_jobs.paper import EXPERIMENTS
from ray_jobs_helpers import REPO

GEOPLEX = REPO / "configs/pretrain/geoplex-base.yaml"
# Training tiles of the full GeoPlex archives (the official configs' lengths; PASTIS-HD folds 1-3).
GEOPLEX_TILES = {"treesatai-ts": 38_520, "pastis-hd": 1_455, "flair": 49_230, "planted": 1_075_701,
                 "s2naip-urban": 359_046}


def _plans(cfg, tiles: dict[str, int]) -> dict:
    """Stand-ins for DataPlans: only n_split and batch_size matter to the derivation."""
    return {e.name: SimpleNamespace(n_split=tiles[e.name], batch_size=e.batch_size) for e in cfg.data.datasets}


def test_epoch_steps_official_geoplex():
    # official: one epoch = floor(359,046 / (10 * 2 * devices)) steps
    assert epoch_steps(359_046, 2, 1, divisor=10) == (17_952, 17_952)  # one device
    assert epoch_steps(359_046, 2, 8, divisor=10) == (2_244, 2_244)  # the 8 GPUs of the paper
    # reference world size 8: the 8-device epoch spread over W workers (same samples, its rounding)
    assert epoch_steps(359_046, 2, 4, reference_world_size=8, divisor=10) == (2_244, 4_488)
    assert epoch_steps(359_046, 2, 3, reference_world_size=8, divisor=10) == (2_244, 5_984)
    assert epoch_steps(359_046, 2, 16, reference_world_size=8, divisor=10) == (2_244, 1_122)
    # a plain drop-last epoch; never below one step
    assert epoch_steps(100, 16, 2) == (3, 3)
    assert epoch_steps(5, 16, 2) == (1, 1)
    with pytest.raises(ValueError):
        epoch_steps(100, 0, 2)


def test_derive_schedule_explicit_values_win():
    train = EpochFields(epochs=200, eval_every_epochs=1, warmup_epochs=20)
    kw = dict(max_steps=300, eval_every=0, warmup_steps=0)
    s = derive_schedule(train, {"planted": (1000, 16)}, 4, explicit=set(), **kw)
    assert (s.epoch_steps, s.max_steps, s.eval_every, s.warmup_steps) == (15, 3000, 15, 300)
    s = derive_schedule(train, {"planted": (1000, 16)}, 4, explicit={"max_steps", "warmup_steps"}, **kw)
    assert (s.max_steps, s.eval_every, s.warmup_steps) == (300, 15, 0)
    assert s.params()["schedule.epoch_steps"] == 15 and "15 steps" in s.describe()
    # several datasets: the largest defines the epoch unless epoch_dataset says otherwise
    s = derive_schedule(EpochFields(epochs=1), {"a": (100, 2), "b": (1000, 2)}, 1, explicit=set(), **kw)
    assert (s.epoch_dataset, s.max_steps) == ("b", 500)
    with pytest.raises(ValueError, match="epoch_dataset"):
        derive_schedule(EpochFields(epochs=1, epoch_dataset="c"), {"a": (100, 2)}, 1, explicit=set(), **kw)
    assert derive_schedule(EpochFields(), {"a": (100, 2)}, 1, explicit=set(), **kw) is None


@pytest.mark.parametrize("workers,steps", [(8, 448_800), (4, 897_600), (1, 3_590_400)])
def test_geoplex_base_reproduces_the_official_8_gpu_schedule(workers, steps):
    cfg = load_config(GEOPLEX, [f"num_workers={workers}"], cls=PretrainConfig)
    derived, sched = apply_epochs(cfg, _plans(cfg, GEOPLEX_TILES))
    assert sched.reference_epoch_steps == 2_244 and sched.epoch_dataset == "s2naip-urban"
    assert derived.train.max_steps == steps == 200 * 2_244 * 8 // workers
    assert derived.train.eval_every == sched.epoch_steps  # validation once per epoch
    # samples seen = the official 448,800 steps x 8 devices x the per-device batch, whatever the world size
    assert derived.train.max_steps * workers == 448_800 * 8
    assert cfg.train.max_steps != derived.train.max_steps  # the input config is left alone


def test_geoplex_base_explicit_max_steps_wins():
    cfg = load_config(GEOPLEX, ["train.max_steps=7"], cls=PretrainConfig)
    derived, sched = apply_epochs(cfg, _plans(cfg, GEOPLEX_TILES))
    assert derived.train.max_steps == 7 and sched.epoch_steps == 2_244


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_paper_configs_state_epochs(name):
    cfg = load_config(REPO / f"configs/finetune/{name}.yaml", cls=FinetuneConfig)
    assert cfg.train.epochs and "max_steps" not in cfg.train.model_fields_set, name
    derived, sched = apply_epochs(cfg, _plans(cfg, {cfg.dataset.name: 10_000}))
    assert sched.epoch_steps == max(1, 10_000 // (cfg.dataset.batch_size * cfg.num_workers))
    assert derived.train.max_steps == round(cfg.train.epochs * sched.epoch_steps)
    assert derived.train.eval_every == sched.epoch_steps
    if cfg.train.warmup_epochs:
        assert derived.optim.warmup_steps == round(cfg.train.warmup_epochs * sched.epoch_steps)
