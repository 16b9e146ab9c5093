"""TreeSatAI-TS reader (aerial GeoTIFF + per-patch Sentinel HDF5 + genus-fraction labels).

Two user-held layouts are detected automatically:

* **HF release** (``IGNF/TreeSatAI-Time-Series`` unzipped): ``aerial/{name}.tif``,
  ``sentinel-ts/{stem}_{year}.h5``, ``labels/TreeSatBA_v9_60m_multi_labels.json``,
  ``{train,val,test}_filenames.lst`` at the root or under ``split/``.
* **AnySat copy**: the same, but the series are ``sentinel/{stem}.h5`` (no year suffix, sometimes a
  10-channel ``sen-2-masks``) and S1 is also exported as derived ``s1-asc|s1-des/{stem}.pth`` tensors
  ``[VV, VH, VV/VH]``. The HDF5 normally holds the same S1 arrays, so the ``.pth`` is read only when the
  HDF5 lacks them.

Stored sensors: ``aerial`` (NIR, G, B, R: the archive order already), ``s2`` (B2..B12 float32 as in the
file), ``s1-asc`` and ``s1-des`` (VV, VH float32, NaN kept, masked). Labels: ``genus_fraction`` (15,)
float32 and ``genus`` (15,) uint8 multi-hot of fractions > 0.07 (AnySat's rule).
"""

from __future__ import annotations

import io
import json
import logging
import re

import h5py
import numpy as np

from pipelines.datasets import TREESAT_CLASSES
from pipelines.sources.base import (SensorArray, SensorProbe, Source, Tile, TileError, TileProbe, TileRef,
                                   days_since_epoch)

log = logging.getLogger(__name__)

LABELS_FILE = "labels/TreeSatBA_v9_60m_multi_labels.json"
SPLITS = ("train", "val", "test")
# The first "YYYYMMDDThhmmss" token of a Sentinel product name is the sensing start, for S1 and S2 alike.
_SENSING = re.compile(r"(?<!\d)(\d{8})T\d{6}")
_YEAR_SUFFIX = re.compile(r"^(?P<stem>.+)_(?P<year>\d{4})\.h5$")


def stem_of(name: str) -> str:
    """Patch stem of a ``.tif`` name; names like ``Alnus_spec._5_13114_WEFL_NLF.tif`` contain dots."""
    name = name.strip().rsplit("/", 1)[-1]
    return name[:-4] if name.lower().endswith(".tif") else name


def product_days(products, path: str) -> np.ndarray:
    out = np.empty(len(products), np.int32)
    for i, p in enumerate(products):
        s = p.decode("utf-8") if isinstance(p, bytes) else str(p)
        m = _SENSING.search(s)
        if m is None:
            raise TileError(path, f"no sensing date in product name {s!r}")
        out[i] = days_since_epoch(m.group(1))
    return out


class TreeSatAITS(Source):
    name = "treesatai-ts"
    georef_note = "aerial GeoTIFF grid (0.2 m); the Sentinel HDF5 series carry no grid"

    #: S2 pixels whose snow or cloud probability (0-100) reaches this value are marked invalid.
    cloud_threshold = 60.0
    #: AnySat keeps a genus when its area fraction is above this.
    genus_min_fraction = 0.07

    def __init__(self, root: str, storage_options: dict | None = None):
        super().__init__(root, storage_options)
        self._labels: dict | None = None
        self._fingerprinted = False

    # -- listing ---------------------------------------------------------------------------------
    def _split_lists(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for split in SPLITS:
            for folder in ("", "split/"):
                rel = f"{folder}{split}_filenames.lst"
                if self.exists(rel):
                    with self.open(rel, mode="r") as f:
                        out[split] = [ln.strip() for ln in f if ln.strip()]
                    break
        if not out:
            raise FileNotFoundError(f"{self.root}: no {{train,val,test}}_filenames.lst (root or split/)")
        return out

    def _series_files(self) -> tuple[str, dict[str, str]]:
        """(layout, stem -> HDF5 path relative to the root)."""
        files: dict[str, str] = {}
        if self.exists("sentinel-ts"):
            for p in sorted(self.fs.ls(self.path("sentinel-ts"), detail=False)):
                fname = p.rstrip("/").rsplit("/", 1)[-1]
                m = _YEAR_SUFFIX.match(fname)
                if m:
                    # several years of one patch: keep the first in sorted order (stable), log it
                    if m["stem"] in files:
                        log.warning("treesatai: several series for %s; using %s", m["stem"], files[m["stem"]])
                        continue
                    files[m["stem"]] = f"sentinel-ts/{fname}"
            if files:
                return "hf", files
        if self.exists("sentinel"):
            for p in sorted(self.fs.ls(self.path("sentinel"), detail=False)):
                fname = p.rstrip("/").rsplit("/", 1)[-1]
                if fname.endswith(".h5"):
                    files[fname[:-3]] = f"sentinel/{fname}"
            if files:
                return "anysat", files
        raise FileNotFoundError(f"{self.root}: neither sentinel-ts/{{stem}}_{{year}}.h5 nor sentinel/{{stem}}.h5")

    def list_tiles(self) -> list[TileRef]:
        layout, series = self._series_files()
        refs: dict[str, TileRef] = {}
        for split, names in self._split_lists().items():
            for name in names:
                stem = stem_of(name)
                if stem in refs:
                    raise ValueError(f"{self.root}: {stem} is listed in two splits ({refs[stem].split}, {split})")
                refs[stem] = TileRef(stem, split, {"name": f"{stem}.tif", "layout": layout,
                                                   "h5": series.get(stem, f"sentinel-ts/{stem}_????.h5")})
        log.info("treesatai: %d tiles, layout=%s, %d series files", len(refs), layout, len(series))
        return [refs[k] for k in sorted(refs)]

    # -- reading ---------------------------------------------------------------------------------
    def _label_table(self) -> dict:
        if self._labels is None:
            with self.open(LABELS_FILE, mode="r") as f:
                self._labels = json.load(f)
        return self._labels


    def _aerial(self, rel: str, read: bool = True):
        r = self.read_raster(rel, read)
        # GDAL_NODATA="-9999" on a uint8 raster is an archive artefact: no pixel can hold it, so no mask.
        if r.shape[0] != 4:
            raise TileError(self.path(rel), f"aerial must have 4 bands (IR, G, B, R), got {r.shape[0]}")
        if r.dtype != np.uint8:
            raise TileError(self.path(rel), f"aerial dtype {r.dtype}, expected uint8")
        return r.data, r.shape, r.dtype, r.geo

    def _series(self, rel: str, stem: str, layout: str, read: bool) -> dict[str, tuple]:
        """sensor -> (data or shape, days, dtype); validated shapes and date counts."""
        where = self.path(rel)
        try:
            if self.is_local:
                fobj = where
            else:
                with self.open(rel) as f:
                    fobj = io.BytesIO(f.read())
            with h5py.File(fobj, "r") as h5:
                keys = set(h5.keys())
                if not self._fingerprinted:
                    self._fingerprinted = True
                    log.info("treesatai format fingerprint: %s layout=%s keys=%s", rel, layout,
                             {k: (h5[k].shape, str(h5[k].dtype)) for k in sorted(keys)})
                for k in ("sen-2-data", "sen-2-masks", "sen-2-products"):
                    if k not in keys:
                        raise TileError(where, f"missing HDF5 dataset {k!r}")
                get = (lambda k: h5[k][()]) if read else (lambda k: h5[k])
                out = {"s2": (get("sen-2-data"), product_days(h5["sen-2-products"][()], where)),
                       "s2-mask": (get("sen-2-masks"), None)}
                for orbit in ("asc", "des"):
                    dk, pk = f"sen-1-{orbit}-data", f"sen-1-{orbit}-products"
                    if pk not in keys:
                        raise TileError(where, f"missing HDF5 dataset {pk!r}")
                    data = get(dk) if dk in keys else self._read_pth(f"s1-{orbit}/{stem}.pth", where)
                    out[f"s1-{orbit}"] = (data, product_days(h5[pk][()], where))
                # shapes and dtypes are known here even when the data is not read
                out = {k: (v[0] if read else None, v[1], tuple(v[0].shape), np.dtype(v[0].dtype))
                       for k, v in out.items()}
        except TileError:
            raise
        except (OSError, KeyError, ValueError) as e:
            raise TileError(where, f"unreadable HDF5: {e}") from e

        _, s2_days, s2_shape, _ = out["s2"]
        if len(s2_shape) != 4 or s2_shape[1] != 10:
            raise TileError(where, f"sen-2-data shape {s2_shape}, expected (T, 10, H, W)")
        if len(s2_days) != s2_shape[0]:
            raise TileError(where, f"{len(s2_days)} S2 products for {s2_shape[0]} S2 dates")
        m_shape = out["s2-mask"][2]
        # masks: 2 channels (snow, cloud) in the HF file, 10 in AnySat's copy (channels 2.. are zero)
        if len(m_shape) != 4 or m_shape[0] != s2_shape[0] or m_shape[1] < 2 or m_shape[2:] != s2_shape[2:]:
            raise TileError(where, f"sen-2-masks shape {m_shape} does not match sen-2-data {s2_shape}")
        for orbit in ("asc", "des"):
            _, days, shape, dtype = out[f"s1-{orbit}"]
            if len(shape) != 4 or shape[1] != 2 or shape[2:] != s2_shape[2:]:
                raise TileError(where, f"S1 {orbit} shape {shape}, expected (T, 2, {s2_shape[2]}, {s2_shape[3]})")
            if len(days) != shape[0]:
                raise TileError(where, f"{len(days)} S1 {orbit} products for {shape[0]} dates")
            if dtype.kind != "f":
                raise TileError(where, f"S1 {orbit} dtype {dtype}, expected float")
        return out

    def _read_pth(self, rel: str, h5path: str) -> np.ndarray:
        """AnySat's derived S1 tensor ``(T, 3, H, W)`` = [VV, VH, VV/VH]; only VV, VH are archive data."""
        import torch

        if not self.exists(rel):
            raise TileError(h5path, f"S1 data neither in the HDF5 nor in {rel}")
        with self.open(rel) as f:
            t = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        arr = t.numpy() if hasattr(t, "numpy") else np.asarray(t)
        return np.ascontiguousarray(arr[:, :2])

    def _labels_for(self, name: str) -> dict[str, np.ndarray]:
        table = self._label_table()
        if name not in table:
            raise TileError(self.path(LABELS_FILE), f"no label for {name}")
        frac = np.zeros(len(TREESAT_CLASSES), np.float32)
        for genus, f in table[name]:
            if genus not in TREESAT_CLASSES:
                raise TileError(self.path(LABELS_FILE), f"{name}: unknown genus {genus!r}")
            if not 0.0 <= float(f) <= 1.0 + 1e-6:
                raise TileError(self.path(LABELS_FILE), f"{name}: fraction {f} out of [0, 1]")
            frac[TREESAT_CLASSES.index(genus)] += float(f)
        return {"genus": (frac > self.genus_min_fraction).astype(np.uint8), "genus_fraction": frac}

    def _check_ref(self, ref: TileRef) -> None:
        if "?" in ref.info["h5"]:
            raise TileError(self.path(ref.info["h5"]), "no time-series HDF5 for this patch")

    def read_tile(self, ref: TileRef) -> Tile:
        self._check_ref(ref)
        name = ref.info["name"]
        aerial, _, _, geo = self._aerial(f"aerial/{name}")
        sensors = {"aerial": SensorArray(aerial[None], np.full(1, -1, np.int32), geo=geo)}
        series = self._series(ref.info["h5"], ref.id, ref.info["layout"], read=True)
        s2, s2_days = series["s2"][:2]
        probs = series["s2-mask"][0][:, :2]
        valid = (probs < self.cloud_threshold).all(axis=1, keepdims=True) & np.isfinite(s2).all(axis=1, keepdims=True)
        sensors["s2"] = SensorArray(s2, s2_days, valid)
        for orbit in ("asc", "des"):
            data, days = series[f"s1-{orbit}"][:2]
            if data.shape[0]:  # an orbit with no acquisition stays absent (dates -1 in the store)
                sensors[f"s1-{orbit}"] = SensorArray(data, days, np.isfinite(data))
        return Tile(ref.id, ref.split, sensors, self._labels_for(name))

    def probe(self, ref: TileRef) -> TileProbe:
        """Headers only: the aerial GeoTIFF header and the HDF5 dataset shapes and product lists."""
        self._check_ref(ref)
        name = ref.info["name"]
        _, (c, h, w), dtype, geo = self._aerial(f"aerial/{name}", read=False)
        sensors = {"aerial": SensorProbe((1, c, h, w), dtype.str, None, 1, geo is not None)}
        series = self._series(ref.info["h5"], ref.id, ref.info["layout"], read=False)
        _, days, shape, dtype = series["s2"]
        sensors["s2"] = SensorProbe(tuple(shape), dtype.str, 1, len(days))
        for orbit in ("asc", "des"):
            _, days, shape, dtype = series[f"s1-{orbit}"]
            if shape[0]:
                sensors[f"s1-{orbit}"] = SensorProbe(tuple(shape), dtype.str, shape[1], len(days))
        labels = self._labels_for(name)
        return TileProbe(sensors, {k: (v.shape, v.dtype.str) for k, v in labels.items()})
