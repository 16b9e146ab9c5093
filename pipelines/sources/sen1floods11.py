"""Sen1Floods11 reader (hand-labelled v1.1 chips).

::

    [v1.1/]data/flood_events/HandLabeled/S1Hand/{Event}_{chip}_S1Hand.tif       float32 (2: VV, VH) dB, nodata NaN
    [v1.1/]data/flood_events/HandLabeled/S2Hand/{Event}_{chip}_S2Hand.tif       int16 (13: B1..B12, B8A 9th), nodata 0
    [v1.1/]data/flood_events/HandLabeled/LabelHand/{Event}_{chip}_LabelHand.tif int16: -1 no data, 0 dry, 1 water
    [v1.1/]splits/flood_handlabeled/flood_{train,valid,test,bolivia}_data.csv   no header: S1 name, label name
    [v1.1/]Sen1Floods11_Metadata.geojson                                         one feature per event: s1_date, s2_date

The root may be the bucket root (holding ``v1.1/``) or ``v1.1/`` itself. Tiles are listed from the
split CSVs (every hand-labelled chip is in exactly one); ``valid`` becomes ``val`` and the held-out
``bolivia`` event keeps its own split. Dates: per *event* from the GeoJSON (``location`` = the first
token of the chip name); an event without a metadata row (``Mekong``) gets -1 (unknown), not AnySat's
1998-01-01 fallback.

Stored (T = 1): ``s2`` = the 10 registry bands of the 13-band product, ``s2-aux`` = B1, B9, B10 (so the
product is kept whole), ``s1`` = VV, VH; per-band validity masks from the nodata tags (S2 0, S1 NaN).
Bands are picked by the GeoTIFF band descriptions when present, by position otherwise. Label ``water``
int8 (512, 512) with -1 = ignore. Tile id = ``{Event}_{chip}``.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from anysat.sensors import get_sensor
from pipelines.sources.base import (Raster, SensorArray, SensorProbe, Source, Tile, TileError, TileProbe, TileRef,
                                   days_since_epoch)
from pipelines.sources.pixels import valid_mask

log = logging.getLogger(__name__)

HAND = "data/flood_events/HandLabeled"
SPLIT_FILES = (("train", "train"), ("valid", "val"), ("test", "test"), ("bolivia", "bolivia"))
S2_PRODUCT = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
S1_PRODUCT = ("VV", "VH")


def band_index(r: Raster, expected: tuple[str, ...], where: str) -> dict[str, int]:
    if r.shape[0] != len(expected):
        raise TileError(where, f"{r.shape[0]} bands, expected {len(expected)} ({', '.join(expected)})")
    desc = [(d or "").strip() for d in r.descriptions]
    if sorted(desc) == sorted(expected):
        return {d: i for i, d in enumerate(desc)}
    if any(desc):
        log.warning("sen1floods11: %s band descriptions %s are not %s; using file order", where, desc, expected)
    return {b: i for i, b in enumerate(expected)}


class Sen1Floods11(Source):
    name = "sen1floods11"
    georef_note = "S1Hand / S2Hand GeoTIFF grids (EPSG:4326 chips)"

    def __init__(self, root: str, storage_options: dict | None = None):
        super().__init__(root, storage_options)
        self.prefix = "v1.1/" if self.exists("v1.1") else ""
        self._fingerprinted = False

    def _event_dates(self) -> dict[str, dict[str, int]]:
        rel = f"{self.prefix}Sen1Floods11_Metadata.geojson"
        if not self.exists(rel):
            log.warning("sen1floods11: no %s; every date is unknown (-1)", rel)
            return {}
        with self.open(rel, mode="r") as f:
            meta = json.load(f)
        out = {}
        for feat in meta.get("features", []):
            p = feat.get("properties", {})
            loc = str(p.get("location", "")).strip()
            try:
                out[loc.lower()] = {"s1": days_since_epoch(str(p["s1_date"])),
                                    "s2": days_since_epoch(str(p["s2_date"]))}
            except (KeyError, ValueError) as e:
                log.warning("sen1floods11: event %r has no usable dates (%s)", loc, e)
        return out

    def list_tiles(self) -> list[TileRef]:
        events = self._event_dates()
        refs: dict[str, TileRef] = {}
        for stem, split in SPLIT_FILES:
            rel = f"{self.prefix}splits/flood_handlabeled/flood_{stem}_data.csv"
            if not self.exists(rel):
                continue
            with self.open(rel) as f:
                try:
                    rows = pd.read_csv(f, header=None, dtype=str)
                except pd.errors.EmptyDataError:
                    continue  # an empty split file (e.g. a subset without the Bolivia event)
            for s1name in rows[0]:
                s1name = s1name.strip()
                if not s1name.endswith("_S1Hand.tif"):
                    raise ValueError(f"{self.path(rel)}: {s1name!r} is not an *_S1Hand.tif name")
                chip = s1name[:-len("_S1Hand.tif")]
                if chip in refs:
                    log.warning("sen1floods11: %s listed in %s and %s; keeping %s", chip, refs[chip].split, split,
                                refs[chip].split)
                    continue
                dates = events.get(chip.split("_", 1)[0].lower(), {"s1": -1, "s2": -1})
                refs[chip] = TileRef(chip, split, {"dates": dates})
        if not refs:
            raise FileNotFoundError(f"{self.root}: no {self.prefix}splits/flood_handlabeled/flood_*_data.csv")
        missing = sorted({r.id.split("_", 1)[0] for r in refs.values() if r.info["dates"]["s1"] < 0})
        if missing:
            log.info("sen1floods11: no event metadata for %s (dates stored as -1)", ", ".join(missing))
        return [refs[k] for k in sorted(refs)]

    def _rasters(self, ref: TileRef, read: bool) -> tuple[Raster, Raster, Raster]:
        out = tuple(self.read_raster(f"{self.prefix}{HAND}/{layer}/{ref.id}_{layer}.tif", read)
                    for layer in ("S1Hand", "S2Hand", "LabelHand"))
        s1, s2, lab = out
        hw = s1.shape[1:]
        for layer, r in zip(("S2Hand", "LabelHand"), (s2, lab)):
            if r.shape[1:] != hw:
                raise TileError(self.path(f"{self.prefix}{HAND}/{layer}/{ref.id}_{layer}.tif"),
                                f"grid {r.shape[1:]} differs from S1Hand {hw}")
        if lab.shape[0] != 1:
            raise TileError(self.path(f"{self.prefix}{HAND}/LabelHand/{ref.id}_LabelHand.tif"),
                            f"{lab.shape[0]} bands, expected 1")
        if s1.dtype.kind != "f":
            raise TileError(self.path(f"{self.prefix}{HAND}/S1Hand/{ref.id}_S1Hand.tif"), f"S1 dtype {s1.dtype}")
        return out

    def read_tile(self, ref: TileRef) -> Tile:
        s1, s2, lab = self._rasters(ref, True)
        p1 = self.path(f"{self.prefix}{HAND}/S1Hand/{ref.id}_S1Hand.tif")
        p2 = self.path(f"{self.prefix}{HAND}/S2Hand/{ref.id}_S2Hand.tif")
        pl = self.path(f"{self.prefix}{HAND}/LabelHand/{ref.id}_LabelHand.tif")
        if not self._fingerprinted:
            self._fingerprinted = True
            log.info("sen1floods11 format fingerprint: S1 %s %s nodata=%s, S2 %s %s nodata=%s, label %s", s1.shape,
                     s1.dtype, s1.nodata, s2.shape, s2.dtype, s2.nodata, lab.dtype)
        i1, i2 = band_index(s1, S1_PRODUCT, p1), band_index(s2, S2_PRODUCT, p2)
        d = ref.info["dates"]
        sensors = {}
        for key, r, idx, day in (("s2", s2, i2, d["s2"]), ("s2-aux", s2, i2, d["s2"]), ("s1", s1, i1, d["s1"])):
            bands = get_sensor(key).raw_bands
            data = np.ascontiguousarray(r.data[[idx[b] for b in bands]])[None]
            sensors[key] = SensorArray(data, np.array([day], np.int32), valid_mask(data, r.nodata), r.geo)
        y = lab.data[0]
        if y.dtype.kind == "f" and not np.all(np.isfinite(y) & (y == np.round(y))):
            raise TileError(pl, "non-integer label values")
        bad = ~np.isin(y, (-1, 0, 1))
        if bad.any():
            raise TileError(pl, f"label values {np.unique(y[bad])[:5].tolist()} outside -1, 0, 1")
        return Tile(ref.id, ref.split, sensors, {"water": y.astype(np.int8)})

    def probe(self, ref: TileRef) -> TileProbe:
        s1, s2, lab = self._rasters(ref, False)
        _, h, w = s1.shape
        band_index(s2, S2_PRODUCT, self.path(f"{self.prefix}{HAND}/S2Hand/{ref.id}_S2Hand.tif"))
        band_index(s1, S1_PRODUCT, self.path(f"{self.prefix}{HAND}/S1Hand/{ref.id}_S1Hand.tif"))
        return TileProbe({"s2": SensorProbe((1, 10, h, w), s2.dtype.str, 10, 1, s2.geo is not None),
                          "s2-aux": SensorProbe((1, 3, h, w), s2.dtype.str, 3, 1, s2.geo is not None),
                          "s1": SensorProbe((1, 2, h, w), s1.dtype.str, 2, 1, s1.geo is not None)},
                         {"water": ((h, w), "|i1")})
