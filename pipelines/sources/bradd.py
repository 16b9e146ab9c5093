"""BraDD-S1TS reader (``meta.csv`` + one ``torch.save``'d dict per sample).

::

    meta.csv                     unnamed index, alert_idx, center_idx, date, sampling_type, state, file, close_set
    Samples/{idx7}_{date}.pt     {"image": float32 (T, 2, 48, 48) VV, VH dB, "image_dates": [date] * T,
                                  "label": int64 (2, 48, 48) old/new deforestation, "label_dates": [date] * 2}

The dicts hold ``datetime`` objects, so they are loaded with ``weights_only=True`` plus an allow-list of
exactly ``datetime.date`` and ``datetime.datetime`` (never ``weights_only=False``: unpickling arbitrary
objects from a downloaded archive executes code).

Stored: ``s1`` = the two raw bands (the ratio is derived by the loader; AnySat uses eps 1e-6 on dB
values), mask = finite values. Labels: ``deforest_new`` = ``label[1]`` (what AnySat and the paper
train on), ``deforest_old`` = ``label[0]``, both uint8 (48, 48); ``label_dates`` (2,) int32 epoch days.
Split = the ``close_set`` column (``validation`` -> ``val``). Tile id = the sample file stem.
"""

from __future__ import annotations

import datetime as dt
import io
import logging

import numpy as np
import pandas as pd

from pipelines.sources.base import SensorArray, Source, Tile, TileError, TileRef, days_since_epoch

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
KEYS = ("image", "image_dates", "label", "label_dates")


def load_sample(buf: bytes, where: str) -> dict:
    import torch

    try:
        with torch.serialization.safe_globals([dt.date, dt.datetime]):
            obj = torch.load(io.BytesIO(buf), map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors come as RuntimeError, UnpicklingError, EOFError...
        raise TileError(where, f"unreadable .pt sample ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict) or any(k not in obj for k in KEYS):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise TileError(where, f"sample is not a dict with keys {KEYS} (got {got})")
    return obj


def _days(dates, where: str, what: str) -> np.ndarray:
    try:
        return np.array([days_since_epoch(d) for d in dates], np.int32)
    except (TypeError, ValueError, AttributeError) as e:
        raise TileError(where, f"{what}: not a list of dates ({e})") from None


class BraDDS1TS(Source):
    name = "bradd-s1ts"
    georef_note = "none: the .pt samples carry no coordinates"
    split_column = "close_set"

    def __init__(self, root: str, storage_options: dict | None = None):
        super().__init__(root, storage_options)
        self._fingerprinted = False

    def list_tiles(self) -> list[TileRef]:
        with self.open("meta.csv") as f:
            meta = pd.read_csv(f, index_col=0)
        for col in ("file", self.split_column):
            if col not in meta.columns:
                raise ValueError(f"{self.path('meta.csv')}: no column {col!r} (columns {list(meta.columns)})")
        refs = []
        for _, row in meta.iterrows():
            fname = str(row["file"]).rsplit("/", 1)[-1]
            stem = fname[:-3] if fname.endswith(".pt") else fname
            raw_split = str(row[self.split_column]).strip()
            refs.append(TileRef(stem, SPLIT_NAMES.get(raw_split, raw_split), {"file": f"Samples/{stem}.pt"}))
        refs.sort(key=lambda r: r.id)
        log.info("bradd: %d samples in %s", len(refs), self.path("meta.csv"))
        return refs

    def read_tile(self, ref: TileRef) -> Tile:
        rel = ref.info["file"]
        where = self.path(rel)
        obj = load_sample(self.read_bytes(rel), where)
        image = obj["image"]
        image = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
        label = obj["label"]
        label = label.numpy() if hasattr(label, "numpy") else np.asarray(label)
        if not self._fingerprinted:
            self._fingerprinted = True
            log.info("bradd format fingerprint: %s image %s %s label %s %s", rel, image.shape, image.dtype,
                     label.shape, label.dtype)
        if image.ndim != 4 or image.shape[1] != 2 or image.shape[0] < 1:
            raise TileError(where, f"image shape {image.shape}, expected (T, 2, H, W)")
        if image.dtype.kind != "f":
            raise TileError(where, f"image dtype {image.dtype}, expected float dB")
        days = _days(obj["image_dates"], where, "image_dates")
        if len(days) != image.shape[0]:
            raise TileError(where, f"{len(days)} image_dates for T={image.shape[0]}")
        if label.shape != (2, *image.shape[2:]):
            raise TileError(where, f"label shape {label.shape}, expected (2, {image.shape[2]}, {image.shape[3]})")
        if label.dtype.kind not in "iub" or label.min() < 0 or label.max() > 1:
            raise TileError(where, f"label values {label.min()}..{label.max()} ({label.dtype}) are not 0/1")
        ldays = _days(obj["label_dates"], where, "label_dates")
        if len(ldays) != 2:
            raise TileError(where, f"{len(ldays)} label_dates, expected 2")
        image = np.ascontiguousarray(image)
        return Tile(ref.id, ref.split, {"s1": SensorArray(image, days, np.isfinite(image))},
                    {"deforest_new": label[1].astype(np.uint8), "deforest_old": label[0].astype(np.uint8),
                     "label_dates": ldays})
