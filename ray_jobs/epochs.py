"""Training length in epochs, as the paper states it: steps derived from dataset sizes, batch sizes
and the world size.

A config may give ``train.epochs`` instead of ``train.max_steps`` (and ``train.eval_every_epochs``,
``train.warmup_epochs`` instead of ``train.eval_every``, ``optim.warmup_steps``). The driver derives the
steps once the data plans are known (:func:`apply_epochs`), logs the derived numbers as MLflow params
(``schedule.*``) and one log line, and ships the config with the derived values to the workers.

**One epoch** on ``W`` workers (:func:`epoch_steps`)::

    reference steps  S_R = floor(n / (b · d · R))     the official loaders drop the last partial batch
    epoch steps      S_W = ceil(S_R · R / W)          the same samples spread over W workers

* ``n``: training tiles of ``train.epoch_dataset`` (its split in the store, after aliases; default: the
  only dataset of a fine-tuning run, or the dataset with the most training tiles);
* ``b``: that dataset's per-worker batch size;
* ``d``: ``train.epoch_divisor``, for a schedule whose epoch is a fraction of a pass over that dataset;
* ``R``: ``train.reference_world_size``, the number of devices the official schedule was defined on
  (default ``W``, which makes ``S_W = floor(n / (b·d·W))``, the usual drop-last epoch).

Why a reference world size: the official GeoPlex pretraining ends an epoch after
``floor(359,046 / (10 · 2 · devices))`` steps (359,046 S2NAIP-urban training tiles, batch 2 per device,
one tenth of a pass), 17,952 steps on one device, **2,244 steps on the 8 GPUs it was trained on**, 200
epochs = **448,800 steps**. ``configs/pretrain/geoplex-base.yaml`` states ``epochs: 200``,
``epoch_dataset: s2naip-urban``, ``epoch_divisor: 10``, ``reference_world_size: 8``: on 8 workers that is
exactly 448,800 steps; on 4 workers 897,600 steps of half the global batch, i.e. the same samples
(rounding follows the 8-device definition, not a 4-device one). Fine-tuning configs keep the default
``R = W`` and set the per-worker batch so that batch x workers is the official (one-device) batch.

An explicitly given ``train.max_steps`` / ``train.eval_every`` / ``optim.warmup_steps`` (in the file or
with ``--set``) wins over the value derived from epochs, so ``--set train.max_steps=4`` shortens a
run stated in epochs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EpochFields", "EpochSchedule", "epoch_steps", "derive_schedule", "apply_epochs"]

log = logging.getLogger(__name__)


class EpochFields(BaseModel):
    """The ``train`` keys of a schedule stated in epochs (``ray_jobs.config.TrainLoopConfig`` has them)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    epochs: float | None = Field(default=None, gt=0)
    """Training length in epochs; derives ``max_steps`` (see ``ray_jobs/epochs.py``)."""
    eval_every_epochs: float | None = Field(default=None, gt=0)
    """Evaluate every so many epochs; derives ``eval_every``."""
    warmup_epochs: float | None = Field(default=None, ge=0)
    """lr warm-up in epochs; derives ``optim.warmup_steps``."""
    epoch_dataset: str | None = None
    """Dataset whose training tiles define an epoch (default: the only one / the largest)."""
    epoch_divisor: int = Field(default=1, ge=1)
    """An epoch is 1/divisor of a pass over ``epoch_dataset`` (official GeoPlex: 10)."""
    reference_world_size: int | None = Field(default=None, ge=1)
    """Devices the official schedule is defined on (GeoPlex: 8); default ``num_workers``."""


@dataclass(frozen=True)
class EpochSchedule:
    """The numbers derived from epochs (logged as ``schedule.*`` params)."""

    epoch_dataset: str
    n_tiles: int
    batch_size: int
    divisor: int
    world_size: int
    reference_world_size: int
    reference_epoch_steps: int
    epoch_steps: int
    epochs: float | None
    max_steps: int
    eval_every: int
    warmup_steps: int

    def params(self) -> dict[str, Any]:
        return {f"schedule.{k}": v for k, v in asdict(self).items()}

    def describe(self) -> str:
        return (f"schedule: epoch = ceil(floor({self.n_tiles} {self.epoch_dataset} tiles / ({self.batch_size} x "
                f"{self.divisor} x {self.reference_world_size} ref. workers)) x {self.reference_world_size} / "
                f"{self.world_size} workers) = {self.epoch_steps} steps; max_steps {self.max_steps} "
                f"({self.epochs} epochs), eval every {self.eval_every}, warm-up {self.warmup_steps} steps")


def epoch_steps(n_tiles: int, batch_size: int, world_size: int, reference_world_size: int | None = None,
                divisor: int = 1) -> tuple[int, int]:
    """(reference-world-size steps, steps on ``world_size`` workers) of one epoch; at least 1 each."""
    if min(batch_size, world_size, divisor) < 1 or n_tiles < 0:
        raise ValueError("epoch_steps needs n_tiles >= 0 and batch size, world size and divisor >= 1")
    ref = reference_world_size or world_size
    ref_steps = max(1, n_tiles // (batch_size * divisor * ref))
    return ref_steps, max(1, math.ceil(ref_steps * ref / world_size))


def derive_schedule(train: EpochFields, sizes: Mapping[str, tuple[int, int]], world_size: int, *,
                    max_steps: int, eval_every: int, warmup_steps: int, explicit: set[str]) -> EpochSchedule | None:
    """The schedule of ``train`` (``None`` when it states no epochs). ``sizes``: dataset -> (training
    tiles, per-worker batch size); ``max_steps``/``eval_every``/``warmup_steps``: the config's values,
    kept when named in ``explicit``."""
    if train.epochs is None and train.eval_every_epochs is None and train.warmup_epochs is None:
        return None
    name = train.epoch_dataset or max(sizes, key=lambda k: sizes[k][0])
    if name not in sizes:
        raise ValueError(f"train.epoch_dataset {name!r} is not a dataset of this run ({sorted(sizes)})")
    n, b = sizes[name]
    ref_steps, steps = epoch_steps(n, b, world_size, train.reference_world_size, train.epoch_divisor)

    def derived(key: str, epochs: float | None, current: int) -> int:
        if epochs is None or key in explicit:
            return current
        return max(1, round(epochs * steps)) if key != "warmup_steps" else round(epochs * steps)

    return EpochSchedule(name, n, b, train.epoch_divisor, world_size, train.reference_world_size or world_size,
                         ref_steps, steps, train.epochs, derived("max_steps", train.epochs, max_steps),
                         derived("eval_every", train.eval_every_epochs, eval_every),
                         derived("warmup_steps", train.warmup_epochs, warmup_steps))


def apply_epochs(cfg: Any, plans: Mapping[str, Any]) -> tuple[Any, EpochSchedule | None]:
    """A ``TrainConfig`` with ``max_steps``, ``eval_every`` and ``optim.warmup_steps`` derived from its
    epochs for ``plans`` (dataset -> ``DataPlan``: ``n_split``, ``batch_size``), and the schedule."""
    explicit = {k for k in ("max_steps", "eval_every") if k in cfg.train.model_fields_set}
    explicit |= {"warmup_steps"} & cfg.optim.model_fields_set
    sizes = {name: (int(p.n_split), int(p.batch_size)) for name, p in plans.items()}
    sched = derive_schedule(cfg.train, sizes, int(cfg.num_workers), max_steps=cfg.train.max_steps,
                            eval_every=cfg.train.eval_every, warmup_steps=cfg.optim.warmup_steps, explicit=explicit)
    if sched is None:
        return cfg, None
    cfg = cfg.model_copy(deep=True)
    cfg.train.max_steps, cfg.train.eval_every = sched.max_steps, sched.eval_every
    cfg.optim.warmup_steps = sched.warmup_steps
    log.info(sched.describe())
    return cfg, sched
