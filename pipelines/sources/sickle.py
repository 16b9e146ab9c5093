"""SICKLE reader (one band-keyed ``.npz`` per acquisition + 6-band label GeoTIFF + tabular CSV).

::

    sickle_dataset_tabular.csv                   UNIQUE_ID, PLOT_ID, SPLIT (train/val/test), YEAR, ...
    images/S2/npy/{uid}/{gee_id}.npz             B1..B12 (no B10), 2-D arrays at their native grid
    images/S1/npy/{uid}/{gee_id}.npz             VV, VH (dB)
    images/L8/npy/{uid}/{gee_id}.npz             SR_B1..SR_B7, ST_B10 (some files lack ST_B10)
    masks/10m/{uid}.tif                          plot id, crop type, sowing, transplanting, harvesting day, yield

Dates come from the file names, three schemes: S2 ``YYYYMMDDThhmmss_..`` (token 0) or, for 2018,
``T44xxx_YYYYMMDD..`` (token 1); S1 ``S1A_IW_GRDH_1SDV_YYYYMMDDThhmmss_..`` (token 4); L8
``LC08_PPPRRR_YYYYMMDD`` (token 2). Acquisitions are sorted by date (then name); all of a uid's files are
kept (AnySat does the same; the author code keeps season days 0-183 only).

**Not lossless:** band arrays come at different sizes (10/20/60 m S2, 30 m L8), and every SICKLE loader
nearest-resizes them to the 32 x 32 10 m grid; we do the same (OpenCV ``INTER_NEAREST`` indexing), so the
store holds what the model sees, not the native arrays. A band missing from an npz (L8 ``ST_B10``) is
stored as 0 with its mask False; masks are per band (present and finite).

Stored: ``s2`` (registry order B2..B7, B8, B8A, B11, B12: AnySat's B8A-before-B8 order is a loader
choice we do not bake in), ``s2-aux`` (B1, B9; B10 is never shipped and always masked), ``s1`` (VV, VH),
``l8-sr`` (SR_B1..SR_B7, ST_B10). Labels: ``paddy`` int8 (32, 32) = 0 paddy / 1 other crop from mask
band 2 (1 = paddy, > 1 other), -1 for background (plot id 0) and for plots not in this split's PLOT_ID
set (both AnySat's and the authors' rule); ``masks_10m`` = the 6 mask bands as stored. A uid without a
mask file (withheld test labels) has no labels. Split = the ``SPLIT`` column; as SICKLE withholds the
test labels, AnySat evaluates on ``val`` (its test split is our ``val``).

AnySat feeds Landsat-8 to the official ``l8`` projector (bands B8 pan, B1..B7, B9, B10, B11) in 11 slots
``[pad, SR_B1..SR_B7, pad, ST_B10, pad]``: slots 1-7 (B1..B7) <- SR_B1..SR_B7, slot 9 (B10) <- ST_B10,
slots 0 (B8), 8 (B9) and 10 (B11) zero and masked invalid. That arrangement is a loader choice, so the
store keeps ``l8-sr`` as the archive has it and the loader assembles ``l8`` from it (the rule is the
``SlotSource`` of ``l8`` in ``anysat/sensors.py``, applied by ``ray_jobs/plan.py``); SICKLE's model
sensors are ``l8, s2, s1``.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd

from anysat.sensors import get_sensor
from pipelines.georef import GridRef
from pipelines.sources.base import SensorArray, Source, Tile, TileError, TileRef, days_since_epoch
from pipelines.sources.pixels import nearest_resize

log = logging.getLogger(__name__)

GRID = 32
CSV = "sickle_dataset_tabular.csv"
# store sensor -> (image folder, "_"-separated name tokens that may hold the date); npz keys = registry bands
SENSORS = {"s2": ("S2", (0, 1)), "s2-aux": ("S2", (0, 1)), "s1": ("S1", (4,)), "l8-sr": ("L8", (2,))}
SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def name_date(stem: str, tokens: tuple[int, ...]) -> int | None:
    parts = stem.split("_")
    for k in tokens:
        if k < len(parts) and len(parts[k]) >= 8 and parts[k][:8].isdigit():
            try:
                return days_since_epoch(dt.datetime.strptime(parts[k][:8], "%Y%m%d").date())
            except ValueError:
                continue
    return None


class Sickle(Source):
    name = "sickle"
    georef_note = ("the 10 m mask GeoTIFF's grid (UTM 44N), resampled to the 32 x 32 grid every sensor is stored "
                   "on; the .npz acquisitions carry none; uids without a mask file have no georeference")

    def __init__(self, root: str, storage_options: dict | None = None):
        super().__init__(root, storage_options)
        self._fingerprinted = False

    def list_tiles(self) -> list[TileRef]:
        with self.open(CSV) as f:
            df = pd.read_csv(f)
        for col in ("UNIQUE_ID", "PLOT_ID", "SPLIT"):
            if col not in df.columns:
                raise ValueError(f"{self.path(CSV)}: no column {col!r}")
        df["SPLIT"] = df["SPLIT"].astype(str).str.strip().str.lower()
        plots = {s: sorted({int(p) for p in g["PLOT_ID"]}) for s, g in df.groupby("SPLIT")}
        refs = []
        for _, row in df.iterrows():
            split = SPLITS.get(row["SPLIT"], row["SPLIT"])
            refs.append(TileRef(str(row["UNIQUE_ID"]), split,
                                {"plot": int(row["PLOT_ID"]), "split_plots": plots[row["SPLIT"]]}))
        refs.sort(key=lambda r: (len(r.id), r.id) if r.id.isdigit() else (1 << 30, r.id))
        return refs

    def _files(self, folder: str, uid: str) -> list[str]:
        d = f"images/{folder}/npy/{uid}"
        if not self.exists(d):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(d), detail=False)
                      if p.endswith(".npz"))

    def _npz(self, rel: str) -> dict[str, np.ndarray]:
        where = self.path(rel)
        try:
            src = self.local_or_buffer(rel)
            with np.load(src, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except TileError:
            raise
        except Exception as e:  # BadZipFile, ValueError, OSError, EOFError
            raise TileError(where, f"unreadable npz ({type(e).__name__}: {e})") from None

    def _series(self, key: str, uid: str) -> SensorArray | None:
        folder, tokens = SENSORS[key]
        bands = get_sensor(key).raw_bands
        files = self._files(folder, uid)
        if not files:
            return None
        dated = []
        for fname in files:
            day = name_date(fname[:-4], tokens)
            if day is None:
                raise TileError(self.path(f"images/{folder}/npy/{uid}/{fname}"), "no YYYYMMDD date in the file name")
            dated.append((day, fname))
        dated.sort()
        layers, masks = [], []
        for day, fname in dated:
            rel = f"images/{folder}/npy/{uid}/{fname}"
            z = self._npz(rel)
            if not self._fingerprinted:
                self._fingerprinted = True
                log.info("sickle format fingerprint: %s %s", rel, {k: (v.shape, str(v.dtype)) for k, v in z.items()})
            known = [b for b in bands if b in z]
            if key != "s2-aux" and not known:
                raise TileError(self.path(rel), f"none of the bands {bands} (keys {sorted(z)})")
            planes, ok = [], []
            for b in bands:
                if b in z:
                    a = np.asarray(z[b])
                    if a.ndim != 2 or min(a.shape) < 1:
                        raise TileError(self.path(rel), f"band {b} has shape {a.shape}, expected 2-D")
                    if a.dtype.kind not in "iuf":
                        raise TileError(self.path(rel), f"band {b} dtype {a.dtype}")
                    a = nearest_resize(a, GRID, GRID)
                    planes.append(a)
                    ok.append(np.isfinite(a) if a.dtype.kind == "f" else np.ones(a.shape, bool))
                else:
                    planes.append(None)
                    ok.append(np.zeros((GRID, GRID), bool))
            layers.append(planes)
            masks.append(np.stack(ok))
        present = [p for planes in layers for p in planes if p is not None]
        if not present:
            return None  # s2-aux of an archive that never ships B1/B9/B10
        dtype = np.result_type(*[p.dtype for p in present])
        data = np.zeros((len(layers), len(bands), GRID, GRID), dtype)
        for t, planes in enumerate(layers):
            for c, p in enumerate(planes):
                if p is not None:
                    data[t, c] = p
        return SensorArray(data, np.array([d for d, _ in dated], np.int32), np.stack(masks))

    def _labels(self, ref: TileRef) -> tuple[dict[str, np.ndarray], GridRef | None]:
        """The labels and the 32 x 32 grid they (and every sensor) are stored on."""
        rel = f"masks/10m/{ref.id}.tif"
        if not self.exists(rel):
            return {}, None  # SICKLE withholds the test labels
        r = self.read_raster(rel)
        if r.shape[0] != 6:
            raise TileError(self.path(rel), f"{r.shape[0]} bands, expected 6 (plot, crop, sowing, transplanting, "
                                            "harvesting, yield)")
        m = nearest_resize(r.data, GRID, GRID)
        plot, crop = m[0], m[1]
        split_plots = np.asarray(ref.info["split_plots"])
        keep = (plot > 0) & np.isin(plot, split_plots) & (crop >= 1)
        paddy = np.full((GRID, GRID), -1, np.int8)
        paddy[keep] = (crop[keep] > 1).astype(np.int8)
        grid = None if r.geo is None else r.geo.resampled(r.shape[1], r.shape[2], GRID, GRID)
        return {"paddy": paddy, "masks_10m": np.ascontiguousarray(m)}, grid

    def read_tile(self, ref: TileRef) -> Tile:
        sensors = {}
        for key in SENSORS:
            arr = self._series(key, ref.id)
            if arr is not None:
                sensors[key] = arr
        if not sensors:
            raise TileError(self.path(f"images/*/npy/{ref.id}"), "no acquisition for this uid")
        labels, grid = self._labels(ref)
        for arr in sensors.values():  # every sensor is resized onto the label grid
            arr.geo = grid
        return Tile(ref.id, ref.split, sensors, labels)
