"""S2NAIP-Urban reader (AI2-S2-NAIP, extracted).

::

    naip/{tile}.png                 512 x 512 RGBA uint8 = R, G, B, NIR (1.25 m)
    sentinel2/{tile}_8.tif          64 x 64, T*4 bands (per image B02, B03, B04, B08)
    sentinel2/{tile}_16.tif         32 x 32, T*6 bands (per image B05, B06, B07, B8A, B11, B12)
    sentinel2/{tile}_32.tif         16 x 16, T*3 bands (B01, B09, B10): not stored, no sensor uses them
    sentinel1/{tile}.tif            64 x 64, T*2 bands (per image VV, VH)
    landsat/{tile}_8.tif            64 x 64, T bands (B8 pan)
    landsat/{tile}_16.tif           32 x 32, T*10 bands (B1..B7, B9, B10, B11)
    {tile} = {epsg}_{col}_{row}

Two user-held layouts, detected automatically:

* **AnySat**: the folders above plus ``{train,val,test}_dict.json`` = ``{"name": [tile], "s2_dates":
  [[YYYYMMDD]], "s1_dates": ..., "l8_dates": ...}`` (parallel lists). Tiles, splits and dates come from it.
* **AI2**: no dict files. Tiles = ``naip/*.png``, split ``train`` (pre-training data, no official split),
  dates from the scene tables ``sentinel2.csv`` / ``sentinel1.csv`` / ``landsat.csv``, read by their schema
  (:data:`SCENE_TABLE`: one row per image, ``tile``, ``index`` = the image's band group in the tile's
  stack, ``scene_id`` = the product name holding the date). A table with other columns is an error naming
  the file and the columns it has (never silent -1 dates); a sensor without a table has dates -1.

Each store sensor has one grid, so the 20 m (32 x 32) S2 bands and the Landsat multispectral bands are
upsampled to 64 x 64 by exact 2 x 2 pixel replication (nearest): lossless (``x[..., ::2, ::2]`` recovers
the archive), so a loader can reproduce AnySat's bilinear resize from the native pixels. Upsampled bands:
``s2`` B5, B6, B7, B8A, B11, B12; ``l8`` B1..B7, B9, B10, B11 (every band but the pan B8). Bands are then
put in registry order (s2 B2..B12; l8 B8, B1..B7, B9..B11).

Georeference: the GeoTIFFs' grids (UTM ``EPSG:{epsg}``); the NAIP PNG has none, but AI2's tile naming
fixes it: tile ``{epsg}_{col}_{row}`` spans x ``col*640 .. +640`` and y ``-row*640 - 640 .. -row*640`` m,
which at 512 px is the 1.25 m grid ``Affine(1.25, 0, col*640, 0, -1.25, -row*640)``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipelines.georef import GridRef
from pipelines.sources.base import (SensorArray, SensorProbe, Source, Tile, TileError, TileProbe, TileRef,
                                   days_since_epoch)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_TILE = re.compile(r"^\d{4,5}_-?\d+_-?\d+$")
_DATE = re.compile(r"(?<!\d)((?:19|20)\d{6})(?!\d)")
# dict key / CSV file of each time-series sensor
DATE_KEYS = {"s2": "s2_dates", "s1": "s1_dates", "l8": "l8_dates"}
CSV_FILES = {"s2": "sentinel2.csv", "s1": "sentinel1.csv", "l8": "landsat.csv"}
# file that defines T of each sensor (for error messages)
T_FILES = {"s2": "sentinel2/{}_8.tif", "s1": "sentinel1/{}.tif", "l8": "landsat/{}_8.tif"}
# s2: [B02 B03 B04 B08] + [B05 B06 B07 B8A B11 B12] -> B2 B3 B4 B5 B6 B7 B8 B8A B11 B12
S2_ORDER = (0, 1, 2, 4, 5, 6, 3, 7, 8, 9)
#: Columns of AI2's scene tables: tile id, band-group index in the tile's stack, product name (with its date).
SCENE_TABLE = ("tile", "index", "scene_id")
TILE_M, NAIP_PX = 640, 512


def naip_grid(tile: str) -> GridRef:
    """The NAIP PNG's grid from the tile id ``{epsg}_{col}_{row}`` (AI2's tiling)."""
    epsg, col, row = (int(v) for v in tile.split("_"))
    res = TILE_M / NAIP_PX
    return GridRef(f"EPSG:{epsg}", (res, 0.0, col * TILE_M, 0.0, -res, -row * TILE_M))


def upsample2(x: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(x, 2, axis=-2), 2, axis=-1)


def _scene_day(s: str) -> int:
    m = _DATE.search(s.replace("-", ""))
    if m is None:
        raise ValueError(f"no YYYYMMDD in {s!r}")
    return days_since_epoch(m.group(1))


class S2NaipUrban(Source):
    name = "s2naip-urban"
    georef_note = "GeoTIFF grids (UTM); the NAIP PNG's grid from AI2's tile id {epsg}_{col}_{row}"

    def __init__(self, root: str, storage_options: dict | None = None):
        super().__init__(root, storage_options)
        self._dicts: dict[str, dict] = {}
        self._csv: dict[str, dict[str, list[int]] | None] = {}
        self._fingerprinted = False

    # -- listing ---------------------------------------------------------------------------------
    def _dict(self, split: str) -> dict:
        if split not in self._dicts:
            with self.open(f"{split}_dict.json", mode="r") as f:
                d = json.load(f)
            names = d.get("name")
            if not isinstance(names, list):
                raise ValueError(f"{self.path(f'{split}_dict.json')}: no 'name' list")
            for key in DATE_KEYS.values():
                if key in d and len(d[key]) != len(names):
                    raise ValueError(f"{self.path(f'{split}_dict.json')}: {key} has {len(d[key])} entries "
                                     f"for {len(names)} names")
            self._dicts[split] = d
        return self._dicts[split]

    def layout(self) -> str:
        return "anysat" if any(self.exists(f"{s}_dict.json") for s in SPLITS) else "ai2"

    def list_tiles(self) -> list[TileRef]:
        layout = self.layout()
        refs: dict[str, TileRef] = {}
        if layout == "anysat":
            for split in SPLITS:
                if not self.exists(f"{split}_dict.json"):
                    continue
                for i, tile in enumerate(self._dict(split)["name"]):
                    tile = str(tile)
                    if tile in refs:
                        raise ValueError(f"{self.root}: tile {tile} in {refs[tile].split} and {split} dicts")
                    refs[tile] = TileRef(tile, split, {"layout": layout, "dict": split, "index": i})
        else:
            for p in self.fs.glob(self.path("naip", "*.png")):
                tile = p.rsplit("/", 1)[-1][:-4]
                if _TILE.match(tile):
                    refs[tile] = TileRef(tile, "train", {"layout": layout})
            if not refs:
                raise FileNotFoundError(f"{self.root}: neither {{split}}_dict.json nor naip/*.png")
            for sensor, rel in CSV_FILES.items():  # a wrong table fails the listing, not every tile
                if self._csv_dates(sensor) is None:
                    log.warning("s2naip: no %s: %s dates are stored as -1 (unknown)", self.path(rel), sensor)
        log.info("s2naip: %d tiles, layout=%s", len(refs), layout)
        return [refs[k] for k in sorted(refs)]

    # -- dates -----------------------------------------------------------------------------------
    def _csv_dates(self, sensor: str) -> dict[str, list[int]] | None:
        """tile -> days in band-group order, from AI2's scene table (:data:`SCENE_TABLE`); ``None`` when the
        archive has no table for ``sensor``. Other columns raise a :class:`TileError` naming them."""
        if sensor not in self._csv:
            rel = CSV_FILES[sensor]
            table = None
            if self.exists(rel):
                with self.open(rel, mode="r") as f:
                    reader = csv.DictReader(f)
                    cols = [c.strip() for c in reader.fieldnames or ()]
                    if sorted(cols) != sorted(SCENE_TABLE):
                        raise TileError(self.path(rel), f"scene table columns {cols}, expected "
                                                        f"{list(SCENE_TABLE)} (AI2's schema); cannot date {sensor}")
                    rows: dict[str, list[tuple[int, int]]] = {}
                    for line, row in enumerate(reader, start=2):
                        row = {k.strip(): v for k, v in row.items()}
                        try:
                            rows.setdefault(row["tile"], []).append((int(row["index"]), _scene_day(row["scene_id"])))
                        except (ValueError, TypeError) as e:
                            raise TileError(self.path(rel), f"line {line}: {e}") from None
                    table = {}
                    for t, v in rows.items():
                        idx = sorted(i for i, _ in v)
                        if idx != list(range(len(idx))):
                            raise TileError(self.path(rel), f"tile {t}: band-group indices {idx} are not 0..{len(idx) - 1}")
                        table[t] = [d for _, d in sorted(v)]
            self._csv[sensor] = table
        return self._csv[sensor]

    def _dates(self, ref: TileRef, sensor: str, t: int, where: str) -> np.ndarray:
        if ref.info["layout"] == "anysat":
            d = self._dict(ref.info["dict"])
            key = DATE_KEYS[sensor]
            if key not in d:
                return np.full(t, -1, np.int32)
            src = f"{ref.info['dict']}_dict.json"
            try:
                days = np.array([_scene_day(str(v)) for v in d[key][ref.info["index"]]], np.int32)
            except ValueError as e:
                raise TileError(self.path(src), f"tile {ref.id} {key}: {e}") from None
        else:
            table = self._csv_dates(sensor)
            if table is None:
                return np.full(t, -1, np.int32)
            src = CSV_FILES[sensor]
            if ref.id not in table:
                raise TileError(self.path(src), f"no {sensor} scenes listed for tile {ref.id}")
            days = np.array(table[ref.id], np.int32)
        if len(days) != t:
            raise TileError(where, f"{len(days)} {sensor} dates in {src} for T={t} images")
        return days

    # -- files -----------------------------------------------------------------------------------

    def _naip(self, tile: str, read: bool):
        rel = f"naip/{tile}.png"
        try:
            with self.open(rel) as f, Image.open(io.BytesIO(f.read())) as im:
                if im.mode != "RGBA":
                    raise TileError(self.path(rel), f"PNG mode {im.mode}, expected RGBA (R, G, B, NIR)")
                size = (4, im.height, im.width)
                data = np.asarray(im).transpose(2, 0, 1).copy() if read else None
        except TileError:
            raise
        except FileNotFoundError:
            raise TileError(self.path(rel), "file missing") from None
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise TileError(self.path(rel), f"unreadable PNG: {e}") from None
        return data, size

    def _stack(self, rel: str, per_image: int, read: bool):
        """(T, per_image, H, W) view of a band-stacked tif (bands grouped per image)."""
        r = self.read_raster(rel, read)
        count, h, w = r.shape
        if count % per_image:
            raise TileError(self.path(rel), f"{count} bands is not a multiple of {per_image} bands per image")
        shape = (count // per_image, per_image, h, w)
        return (r.data.reshape(shape) if read else None), shape, r.dtype, r.geo

    def _series(self, tile: str, read: bool) -> dict[str, tuple]:
        """sensor -> (data or None, (T, C, H, W), dtype, mask channels, grid)."""
        out = {}
        a, sa, da, ga = self._stack(f"sentinel2/{tile}_8.tif", 4, read)
        b, sb, db, _ = self._stack(f"sentinel2/{tile}_16.tif", 6, read)
        if sa[0] != sb[0] or sb[2:] != (sa[2] // 2, sa[3] // 2) or da != db:
            raise TileError(self.path(f"sentinel2/{tile}_16.tif"),
                            f"{sb} {db} does not pair with _8.tif {sa} {da} (same T, half the grid)")
        s2 = np.concatenate([a, upsample2(b)], axis=1)[:, S2_ORDER] if read else None
        out["s2"] = (s2, (sa[0], 10, *sa[2:]), da, 1, ga)
        # Landsat and S1 are optional: a tile without them keeps the sensor absent (dates -1 in the store)
        # rather than being quarantined; a present but broken file is still an error.
        try:
            p, sp, dp, gp = self._stack(f"landsat/{tile}_8.tif", 1, read)
            m, sm, dm, _ = self._stack(f"landsat/{tile}_16.tif", 10, read)
        except TileError:
            if self.exists(f"landsat/{tile}_8.tif") or self.exists(f"landsat/{tile}_16.tif"):
                raise
        else:
            if sp[0] != sm[0] or sm[2:] != (sp[2] // 2, sp[3] // 2):
                raise TileError(self.path(f"landsat/{tile}_16.tif"),
                                f"{sm} does not pair with _8.tif {sp} (same T, half the grid)")
            dl = np.result_type(dp, dm)
            l8 = (np.concatenate([p.astype(dl, copy=False), upsample2(m).astype(dl, copy=False)], axis=1)
                  if read else None)
            out["l8"] = (l8, (sp[0], 11, *sp[2:]), dl, 1, gp)
        try:
            s1, s1s, d1, g1 = self._stack(f"sentinel1/{tile}.tif", 2, read)
        except TileError:
            if self.exists(f"sentinel1/{tile}.tif"):
                raise
        else:
            out["s1"] = (s1, s1s, d1, 2, g1)
        return out

    # -- reading ---------------------------------------------------------------------------------
    def read_tile(self, ref: TileRef) -> Tile:
        naip, _ = self._naip(ref.id, read=True)
        sensors = {"naip": SensorArray(naip[None], np.full(1, -1, np.int32), geo=naip_grid(ref.id))}
        series = self._series(ref.id, read=True)
        if not self._fingerprinted:
            self._fingerprinted = True
            log.info("s2naip format fingerprint: %s layout=%s naip %s %s; %s", ref.id, ref.info["layout"],
                     naip.shape, naip.dtype, {k: (v[1], str(v[2])) for k, v in series.items()})
        for key, (data, shape, _dt, _mc, geo) in series.items():
            days = self._dates(ref, key, shape[0], self.path(T_FILES[key].format(ref.id)))
            if key == "s1":
                mask = np.isfinite(data)
            else:
                # an all-zero pixel across bands is outside the scene footprint
                mask = (data != 0).any(axis=1, keepdims=True)
            sensors[key] = SensorArray(np.ascontiguousarray(data), days, mask, geo)
        return Tile(ref.id, ref.split, sensors, {})

    def probe(self, ref: TileRef) -> TileProbe:
        _, (c, h, w) = self._naip(ref.id, read=False)
        sensors = {"naip": SensorProbe((1, c, h, w), "|u1", None, 1, True)}
        for key, (_, shape, dtype, mc, geo) in self._series(ref.id, read=False).items():
            days = self._dates(ref, key, shape[0], self.path(T_FILES[key].format(ref.id)))
            sensors[key] = SensorProbe(tuple(shape), np.dtype(dtype).str, mc, len(days), geo is not None)
        return TileProbe(sensors, {})
