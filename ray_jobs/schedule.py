"""Which dataset and which patch size feed optimisation step k.

Under DDP every rank must run the same graph at the same step (same sensors, same patch grid),
otherwise the gradient all-reduce waits for buckets another rank never fills. The official code gets
this from a ``random`` module seeded identically on every rank; here the draw for step k is a pure
function of ``(seed, k)`` — a fresh counter-based generator per step — so it is identical on every
rank by construction, and a resumed run continues exactly where it stopped without replaying
anything: the only state is the step number.

Datasets are drawn i.i.d. with probability ∝ weight (the official loader also removes exhausted
datasets until the epoch ends; here loaders cycle, so the long-run proportions equal the weights).
The patch size is uniform over the dataset's set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Schedule", "ScheduleEntry"]

_STREAM = 0x5EED  # separates the schedule's random stream from other users of the same seed


@dataclass(frozen=True)
class ScheduleEntry:
    step: int
    dataset: str
    patch_size_m: int


class Schedule:
    def __init__(self, seed: int, datasets: dict[str, tuple[float, tuple[int, ...]]]):
        """``datasets``: name -> (weight, patch sizes in metres), in a fixed order."""
        if not datasets:
            raise ValueError("empty schedule")
        self.seed = int(seed)
        self.names = list(datasets)
        w = np.asarray([float(datasets[n][0]) for n in self.names])
        if (w <= 0).any():
            raise ValueError("dataset weights must be positive")
        self.weights = w / w.sum()
        self._cum = np.cumsum(self.weights)
        self.patch_sizes = {n: tuple(int(p) for p in datasets[n][1]) for n in self.names}

    def at(self, step: int) -> ScheduleEntry:
        if step < 0:
            raise ValueError("step must be >= 0")
        rng = np.random.Generator(np.random.Philox(key=[self.seed, _STREAM], counter=[step, 0, 0, 0]))
        u, v = rng.random(2)
        i = min(int(np.searchsorted(self._cum, u, side="right")), len(self.names) - 1)
        name = self.names[i]
        ps = self.patch_sizes[name]
        return ScheduleEntry(step, name, ps[min(int(v * len(ps)), len(ps) - 1)])

    def counts(self, start: int, stop: int) -> dict[str, int]:
        """How many of steps ``start..stop-1`` each dataset feeds (= batches it has supplied)."""
        out = dict.fromkeys(self.names, 0)
        for k in range(start, stop):
            out[self.at(k).dataset] += 1
        return out

    # -- checkpoint state: plain ints/strings/floats so torch.load(weights_only=True) accepts it --
    def state_dict(self) -> dict:
        return {"seed": self.seed, "names": list(self.names),
                "weights": [float(x) for x in self.weights],
                "patch_sizes": {n: list(p) for n, p in self.patch_sizes.items()}}

    def check_state(self, state: dict) -> list[str]:
        """Differences between a checkpointed schedule and this one (empty = identical)."""
        mine = self.state_dict()
        diffs = []
        for k in mine:
            if k == "weights":
                if len(state.get(k, [])) != len(mine[k]) or not np.allclose(state[k], mine[k]):
                    diffs.append(f"weights {state.get(k)} -> {mine[k]}")
            elif state.get(k) != mine[k]:
                diffs.append(f"{k} {state.get(k)} -> {mine[k]}")
        return diffs
