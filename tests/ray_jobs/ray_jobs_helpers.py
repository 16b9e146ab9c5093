"""Constants and helpers shared by the ray_jobs tests (imported as a plain module)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/pretrain/geoplex-tiny.yaml"

# Two datasets with different sensor sets: Planted (s2, s1, l7, alos, modis; 30 m patches) and
# TreeSatAI-TS (aerial 0.2 m + s2 + s1-asc; 10/20 m patches).
SAMPLE_TILES = {"planted": 48, "treesatai-ts": 16}
BATCH = {"planted": 4, "treesatai-ts": 2}
PASTIS_TILES = 7  # folds 1,2,3,4,5,1,2 (pipelines/samplegen/pastis.py)


def tiny_overrides(**extra) -> list[str]:
    """--set items that shrink the tiny config to a few-step test run."""
    items = {
        "train.max_steps": 4, "train.log_every": 2, "checkpoint.every": 2, "train.eval_every": 4,
        "data.val_batches": 1, "data.datasets.planted.batch_size": BATCH["planted"],
        "data.datasets.treesatai-ts.batch_size": BATCH["treesatai-ts"],
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def both_datasets_seed(n_steps: int) -> int:
    """A seed whose schedule uses both datasets within the first ``n_steps`` steps."""
    from ray_jobs.schedule import Schedule

    for seed in range(100):
        s = Schedule(seed, {"planted": (2.0, (30,)), "treesatai-ts": (1.0, (10, 20))})
        if {s.at(k).dataset for k in range(n_steps)} == {"planted", "treesatai-ts"}:
            return seed
    raise AssertionError("no seed")


