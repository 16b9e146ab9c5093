"""PASTIS-HD reader (PASTIS-R ``.npy`` series + SPOT6 GeoTIFF + ``metadata.geojson``).

::

    metadata.geojson                                    ID_PATCH, Fold, TILE, dates-S2/S1A/S1D {"0": YYYYMMDD}
    DATA_S2/S2_{ID}.npy                                 (T, 10, 128, 128) int16, fill -10000
    DATA_S1A/S1A_{ID}.npy, DATA_S1D/S1D_{ID}.npy        (T, 3, 128, 128) float (VV dB, VH dB, VV-VH dB)
    ANNOTATIONS/TARGET_{ID}.npy                         (3, 128, 128), channel 0 = class 0..19
    DATA_SPOT/PASTIS_SPOT6_RVB_1M00_2019/SPOT6_RVB_1M00_2019_{ID}.tif   (3, 1280, 1280) uint8 R, G, B

Two variants, one dataset: PASTIS-HD has ``DATA_SPOT/``; PASTIS-R (the archive most users hold) is the
same without it, and its tiles are stored with ``spot`` absent (dates -1). ``spot`` is optional per tile
too: a patch without its SPOT file is stored without it, while a SPOT file that is there but unreadable
still quarantines the tile.

Stored sensors: ``spot`` (optional); ``s2`` (bands already in registry order); ``s1`` = the ascending orbit
with its three stored channels (the archive *has* the ratio band, and AnySat feeds exactly these three to
the model, so the loader must not recompute it); ``s1-des`` = the descending orbit with its three channels
too (VV, VH, VV-VH in dB; ``DatasetSpec.archive_bands``), although no model sensor consumes it.

Georeference: the ``.npy`` series carry none; ``metadata.geojson`` gives each patch's footprint (a polygon
in its ``crs`` member, Lambert-93), stored as the tile footprint, and the SPOT GeoTIFF its own grid.

Split = ``"fold1"`` .. ``"fold5"`` (the official 5-fold protocol); ``DatasetSpec.split_folds`` maps
train/val/test onto folds 1-3/4/5 as everyone uses them, and the normalisation statistics are those of
folds 1-3 (``DatasetSpec.stats_splits``). Dates: days since 1970 like every store; AnySat's PASTIS
loader counts days since 2018-09-01, which the PASTIS configs ask the trainer's loader for
(``date_origin: "2018-09-01"``). Labels: ``semantic`` (128, 128) uint8 = TARGET
channel 0, and ``classes`` (18,) uint8 multi-hot of classes 1..18 present (AnySat's classification).
"""

from __future__ import annotations

import json
import logging

import numpy as np

from pipelines.georef import Footprint
from pipelines.sources.base import (SensorArray, SensorProbe, Source, Tile, TileError, TileProbe, TileRef,
                                   days_since_epoch)

log = logging.getLogger(__name__)

S2_FILL = -10000
N_VALUES = 20  # 0 background .. 19 void
SPOT_DIR = "DATA_SPOT/PASTIS_SPOT6_RVB_1M00_2019"
# store sensor -> (metadata key, folder, file prefix, channels kept)
SERIES = {"s2": ("dates-S2", "DATA_S2", "S2", 10), "s1": ("dates-S1A", "DATA_S1A", "S1A", 3),
          "s1-des": ("dates-S1D", "DATA_S1D", "S1D", 3)}
# RFC 7946: a GeoJSON without a "crs" member is in WGS 84 longitude / latitude
GEOJSON_DEFAULT_CRS = "OGC:CRS84"


def parse_dates(value, where: str) -> list[int]:
    """``{"0": 20180924, ...}`` (or that object serialised as a string, as geopandas returns it)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise TileError(where, f"dates are neither an object nor JSON text: {e}") from None
    if isinstance(value, list):
        items = list(enumerate(value))
    elif isinstance(value, dict):
        try:
            items = sorted((int(k), v) for k, v in value.items())
        except ValueError:
            raise TileError(where, f"dates keys are not time indices: {list(value)[:5]}") from None
    else:
        raise TileError(where, f"dates of type {type(value).__name__}")
    if [k for k, _ in items] != list(range(len(items))):
        raise TileError(where, "dates indices are not 0..T-1")
    return [int(v) for _, v in items]


def geojson_crs(meta: dict) -> str:
    """The CRS named by an old-style GeoJSON ``crs`` member (``urn:ogc:def:crs:EPSG::2154``), else CRS84."""
    crs = meta.get("crs") or {}
    name = (crs.get("properties") or {}).get("name") if isinstance(crs, dict) else None
    return str(name) if name else GEOJSON_DEFAULT_CRS


class PastisHD(Source):
    name = "pastis-hd"
    georef_note = ("patch footprints from metadata.geojson; SPOT grid from its GeoTIFF; the S2 / S1 .npy series "
                   "carry no grid of their own")
    footprints_in_archive = True

    def __init__(self, root: str, storage_options: dict | None = None):
        super().__init__(root, storage_options)
        self._fingerprinted = False

    def list_tiles(self) -> list[TileRef]:
        where = self.path("metadata.geojson")
        with self.open("metadata.geojson", mode="r") as f:
            meta = json.load(f)
        has_spot = self.exists(SPOT_DIR)
        crs = geojson_crs(meta)
        refs = []
        for feat in meta.get("features", []):
            p = feat.get("properties", {})
            pid = int(p["ID_PATCH"])
            fold = int(p["Fold"])
            if not 1 <= fold <= 5:
                raise ValueError(f"{where}: patch {pid} has fold {fold}")
            info = {"tile": str(p.get("TILE", "")), "fold": fold, "spot": has_spot, "crs": crs,
                    "geometry": feat.get("geometry")}
            for key, *_ in SERIES.values():
                # keep the raw value; a malformed one becomes this tile's TileError at read time
                info[key] = p.get(key)
            refs.append(TileRef(str(pid), f"fold{fold}", info))
        refs.sort(key=lambda r: int(r.id))
        log.info("pastis: %d patches in %s (crs %s), %s", len(refs), where, crs,
                 "with SPOT (PASTIS-HD)" if has_spot else f"no {SPOT_DIR.split('/')[0]}/ (PASTIS-R): spot absent")
        return refs

    # -- helpers ---------------------------------------------------------------------------------
    def _npy(self, rel: str, header_only: bool = False):
        """The array, or with ``header_only`` its (shape, dtype) from the ``.npy`` header alone."""
        where = self.path(rel)
        try:
            if header_only:
                with self.open(rel) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                return tuple(int(s) for s in shape), np.dtype(dtype)
            if self.is_local:
                return np.load(where, allow_pickle=False)
            with self.open(rel) as f:
                return np.load(f, allow_pickle=False)
        except FileNotFoundError:
            raise TileError(where, "file missing") from None
        except (OSError, ValueError, EOFError) as e:
            raise TileError(where, f"unreadable npy ({type(e).__name__}: {e})") from None

    def _spot(self, rel: str, read: bool):
        r = self.read_raster(rel, read)
        if r.shape[0] != 3 or r.dtype != np.uint8:
            raise TileError(self.path(rel), f"SPOT must be 3-band uint8, got {r.shape[0]} bands {r.dtype}")
        return r.data, r.shape, r.dtype, r.geo

    def _has_spot(self, ref: TileRef) -> bool:
        return bool(ref.info.get("spot", True)) and self.exists(f"{SPOT_DIR}/SPOT6_RVB_1M00_2019_{ref.id}.tif")

    def _footprint(self, ref: TileRef) -> Footprint | None:
        geom = ref.info.get("geometry")
        if not geom:
            return None
        try:
            return Footprint(ref.info["crs"], json.dumps(geom))
        except (ValueError, TypeError, KeyError) as e:
            raise TileError(self.path("metadata.geojson"), f"patch {ref.id}: unreadable footprint ({e})") from None

    def _series_meta(self, ref: TileRef, sensor: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        key, folder, prefix, keep = SERIES[sensor]
        where = self.path(folder, f"{prefix}_{ref.id}.npy")
        if len(shape) != 4 or shape[1] != keep:
            raise TileError(where, f"shape {shape}, expected (T, {'10' if sensor == 's2' else '3'}, H, W)")
        if sensor == "s2" and dtype.kind not in "iu":
            raise TileError(where, f"S2 dtype {dtype}, expected integer reflectance")
        if sensor != "s2" and dtype.kind != "f":
            raise TileError(where, f"S1 dtype {dtype}, expected float")
        dates = parse_dates(ref.info.get(key), f"{self.path('metadata.geojson')} [{ref.id} {key}]")
        if len(dates) != shape[0]:
            raise TileError(where, f"{len(dates)} dates in metadata.geojson {key} for T={shape[0]}")
        try:
            return np.array([days_since_epoch(str(d)) for d in dates], np.int32)
        except ValueError as e:
            raise TileError(self.path("metadata.geojson"), f"patch {ref.id} {key}: bad date ({e})") from None

    def _labels(self, ref: TileRef, h: int, w: int) -> dict[str, np.ndarray]:
        rel = f"ANNOTATIONS/TARGET_{ref.id}.npy"
        target = self._npy(rel)
        if target.ndim != 3 or target.shape[1:] != (h, w):
            raise TileError(self.path(rel), f"TARGET shape {target.shape}, expected (3, {h}, {w})")
        sem = target[0]
        if sem.dtype.kind not in "iuf" or (sem.dtype.kind == "f" and not np.array_equal(sem, np.round(sem))):
            raise TileError(self.path(rel), f"TARGET dtype {target.dtype} is not integral")
        if sem.min() < 0 or sem.max() >= N_VALUES:
            raise TileError(self.path(rel), f"class values {int(sem.min())}..{int(sem.max())} outside 0..19")
        sem = sem.astype(np.uint8)
        present = np.bincount(sem.ravel(), minlength=N_VALUES) > 0
        return {"semantic": sem, "classes": present[1:19].astype(np.uint8)}

    # -- reading ---------------------------------------------------------------------------------
    def read_tile(self, ref: TileRef) -> Tile:
        sensors: dict[str, SensorArray] = {}
        if self._has_spot(ref):
            spot, _, _, geo = self._spot(f"{SPOT_DIR}/SPOT6_RVB_1M00_2019_{ref.id}.tif", read=True)
            # SPOT 2019 acquisition date is not in the archive
            sensors["spot"] = SensorArray(spot[None], np.full(1, -1, np.int32), geo=geo)
        hw = None
        for sensor, (key, folder, prefix, keep) in SERIES.items():
            rel = f"{folder}/{prefix}_{ref.id}.npy"
            arr = self._npy(rel)
            if not self._fingerprinted and sensor == "s2":
                self._fingerprinted = True
                log.info("pastis format fingerprint: %s shape=%s dtype=%s", rel, arr.shape, arr.dtype)
            days = self._series_meta(ref, sensor, arr.shape, arr.dtype)
            if hw is None:
                hw = arr.shape[2:]
            elif arr.shape[2:] != hw:
                raise TileError(self.path(rel), f"grid {arr.shape[2:]} differs from S2 {hw}")
            if sensor == "s2":
                mask = (arr != S2_FILL).all(axis=1, keepdims=True)
            else:
                mask = np.isfinite(arr)
            sensors[sensor] = SensorArray(arr, days, mask)
        return Tile(ref.id, ref.split, sensors, self._labels(ref, *hw), self._footprint(ref))

    def probe(self, ref: TileRef) -> TileProbe:
        """npy headers + the SPOT header; labels are checked at read time."""
        sensors = {}
        if self._has_spot(ref):
            _, (c, h, w), dt, geo = self._spot(f"{SPOT_DIR}/SPOT6_RVB_1M00_2019_{ref.id}.tif", read=False)
            sensors["spot"] = SensorProbe((1, c, h, w), dt.str, None, 1, geo is not None)
        hw = None
        for sensor, (key, folder, prefix, keep) in SERIES.items():
            shape, dtype = self._npy(f"{folder}/{prefix}_{ref.id}.npy", header_only=True)
            days = self._series_meta(ref, sensor, shape, dtype)
            hw = hw or shape[2:]
            sensors[sensor] = SensorProbe((shape[0], keep, *shape[2:]), dtype.str, 1 if sensor == "s2" else keep,
                                          len(days))
        return TileProbe(sensors, {"semantic": (tuple(hw), "|u1"), "classes": ((18,), "|u1")},
                         self._footprint(ref) is not None)
