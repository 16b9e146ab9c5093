"""Miniature BraDD-S1TS archive: ``meta.csv`` + ``Samples/*.pt`` written with
``torch.save`` (zip format, the default) holding ``datetime.date`` objects, as the author release does.

Planted signal: pixels deforested by the second label date (``label[1] == 1``) lose about 3 dB of VH
after a per-sample change date; pixels already deforested at the first label date lose it from the start.
"""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pandas as pd

SIZE = 48
TS = (5, 8, 12)
STATES = ("PA", "MT", "AM", "RO")
SAMPLING = ("positive", "oldDeforest", "forest", "boundary", "herbaceous", "agriculture", "shrubs")


def _splits(n: int) -> list[str]:
    base = ["train", "train", "train", "validation", "validation", "test"]
    return [base[i] if i < len(base) else ("train", "validation", "test")[i % 3] for i in range(n)]


def write_sample(root: str, tiles: int | None = None, seed: int = 0) -> None:
    import torch

    n = 6 if tiles is None else int(tiles)
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "Samples"), exist_ok=True)
    rows = []
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i, split in enumerate(_splits(n)):
        t = TS[i % len(TS)]
        start = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 300)))
        dates = sorted(start + dt.timedelta(days=int(d)) for d in rng.choice(400, size=t, replace=False))
        change = dates[t // 2]
        label_dates = [dates[0] - dt.timedelta(days=3), dates[-1] + dt.timedelta(days=5)]
        # a cleared blob (new) and a smaller old clearing inside it, so both masks and their difference occur
        cy, cx, r = rng.integers(10, 38), rng.integers(10, 38), rng.integers(5, 14)
        new = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.int64)
        if i % 4 == 2:
            new[:] = 0  # a "forest" sample: nothing changes (every fourth, so every split mixes both kinds)
        old = (new.astype(bool) & (yy < cy - r // 2)).astype(np.int64)
        vv = -7.0 + rng.normal(0, 0.8, (t, SIZE, SIZE))
        vh = -13.0 + rng.normal(0, 0.8, (t, SIZE, SIZE))
        after = np.array([d >= change for d in dates])[:, None, None]
        vh -= 3.0 * ((new[None] == 1) & after) + 3.0 * (old[None] == 1)
        vv -= 1.0 * ((new[None] == 1) & after)
        image = torch.from_numpy(np.stack([vv, vh], axis=1).astype(np.float32))
        label = torch.from_numpy(np.stack([old, new]))
        date = change.isoformat()
        fname = f"{i:07d}_{date}.pt"
        torch.save({"image": image, "image_dates": dates, "label": label, "label_dates": label_dates},
                   os.path.join(root, "Samples", fname))
        rows.append({"alert_idx": int(rng.integers(0, 5000)), "center_idx": int(rng.integers(0, 20000)),
                     "date": date, "sampling_type": SAMPLING[i % len(SAMPLING)], "state": STATES[i % len(STATES)],
                     "file": fname, "close_set": split})
    pd.DataFrame(rows).to_csv(os.path.join(root, "meta.csv"))  # unnamed index column, as in the release
