"""FLAIR #2 reader (aerial + mask GeoTIFFs, per-zone Sentinel-2 super-areas).

The author archive, unzipped side by side::

    flair_aerial_train/{DOMAIN}/{ZONE}/img/IMG_{nnnnnn}.tif      5 x 512 x 512 uint8 R, G, B, NIR, elevation
    flair_labels_train/{DOMAIN}/{ZONE}/msk/MSK_{nnnnnn}.tif      512 x 512 uint8, classes 1..19
    flair_sen_train/{DOMAIN}/{ZONE}/sen/SEN2_sp_{DOMAIN}-{ZONE}_{data.npy,masks.npy,products.txt}
    flair_2_{aerial,labels,sen}_test/...                        same structure (test domains)
    flair-2_centroids_sp_to_patch.json                           {"IMG_nnnnnn.tif": [row, col]} in the super-area
    flair_aerial_metadata.json                                   {"IMG_nnnnnn": {"date": "YYYY-MM-DD", ...}}
    splits.json (optional, AnySat's)                             {"train"|"val"|"test": [DOMAIN, ...]}

The super-area files are found by pattern in the zone's ``sen/`` folder (``*data.npy``, ``*masks.npy``,
``*products.txt``, one each), as the authors' loader and AnySat's do, so a re-packaged copy with other
file names reads the same. ``flair_aerial_metadata.json`` only supplies the aerial date: without it the
aerial dates are -1 (one warning at listing), as the authors' loader treats it as optional.

One super-area ``(T, 10, H, W)`` is shared by every patch of a zone; each tile stores the
``s2_crop`` x ``s2_crop`` window centred on its centroid (AnySat's 10 x 10 = the 100 m tile). Windows that
reach past the super-area edge are zero-padded and masked invalid instead of shifted, so every pixel stays
where it is on the ground. The S2 mask is "inside the super-area and snow and cloud probability below
``cloud_threshold``" (FLAIR-2's 60 %).

Split: the domain list of ``splits.json`` when the archive has one (AnySat's split), otherwise the
official one: ``train`` for the ``*_train`` trees, ``test`` for the ``flair_2_*_test`` trees.
Labels: ``semantic`` = AnySat's 13 classes (values > 13 -> 13, minus 1), ``nomenclature`` = the raw 1..19.
Georeference: the aerial and mask GeoTIFFs' grid (Lambert-93, 0.2 m); the super-area ``.npy`` has none,
so the S2 window is stored without a grid.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict

import numpy as np

from pipelines.sources.base import (SensorArray, SensorProbe, Source, Tile, TileError, TileProbe, TileRef,
                                   days_since_epoch)

log = logging.getLogger(__name__)

TREES = {"train": ("flair_aerial_train", "flair_labels_train", "flair_sen_train"),
         "test": ("flair_2_aerial_test", "flair_2_labels_test", "flair_2_sen_test")}
CENTROIDS = "flair-2_centroids_sp_to_patch.json"
METADATA = "flair_aerial_metadata.json"
_IMG = re.compile(r"IMG_(\d+)\.tif$")
_SENSING = re.compile(r"(?<!\d)(\d{8})T\d{6}")
# what the super-area file names end with (the authors' loader globs these in the zone's sen/ folder)
SUPER_AREA_FILES = {"data": "data.npy", "masks": "masks.npy", "products": "products.txt"}


class Flair(Source):
    name = "flair"
    georef_note = ("aerial and mask GeoTIFF grids (Lambert-93); the Sentinel-2 super-area .npy has no grid, so "
                   "the s2 window has none")

    #: side (pixels) of the S2 window stored per tile; 10 = AnySat's crop = the 100 m tile
    s2_crop = 10
    #: snow or cloud probability (0-100) from which an S2 pixel is invalid (FLAIR-2 baseline: 60)
    cloud_threshold = 60
    #: super-areas held in memory per process when the archive is remote (local ones are memory-mapped)
    zone_cache = 2

    def __init__(self, root: str, storage_options: dict | None = None):
        super().__init__(root, storage_options)
        self._json: dict[str, dict] = {}
        self._zones: OrderedDict = OrderedDict()
        self._sen_files: dict[str, dict[str, str]] = {}
        self._has_metadata: bool | None = None
        self._fingerprinted = False

    # -- listing ---------------------------------------------------------------------------------
    def _domain_splits(self) -> dict[str, str]:
        if not self.exists("splits.json"):
            return {}
        with self.open("splits.json", mode="r") as f:
            lists = json.load(f)
        return {d: split for split, domains in lists.items() for d in domains}

    def list_tiles(self) -> list[TileRef]:
        override = self._domain_splits()
        refs = []
        for tree, (aerial, labels, sen) in TREES.items():
            if not self.exists(aerial):
                continue
            for p in self.fs.glob(self.path(aerial, "*", "*", "img", "IMG_*.tif")):
                parts = p.split("/")
                m = _IMG.search(parts[-1])
                if not m:
                    continue
                domain, zone = parts[-4], parts[-3]
                refs.append(TileRef(f"IMG_{m.group(1)}", override.get(domain, tree),
                                    {"domain": domain, "zone": zone, "tree": tree, "num": m.group(1)}))
        if not refs:
            raise FileNotFoundError(f"{self.root}: no flair_aerial_train/ or flair_2_aerial_test/ patches")
        refs.sort(key=lambda r: (int(r.info["num"]), r.id))
        if not self._aerial_metadata_present():
            log.warning("flair: %s is missing: aerial dates are stored as -1 (unknown)", self.path(METADATA))
        log.info("flair: %d patches (%s), splits from %s", len(refs),
                 ", ".join(f"{s}={sum(r.split == s for r in refs)}" for s in sorted({r.split for r in refs})),
                 "splits.json" if override else "the train/test trees")
        return refs

    # -- helpers ---------------------------------------------------------------------------------
    def _table(self, rel: str) -> dict:
        if rel not in self._json:
            if not self.exists(rel):
                raise TileError(self.path(rel), "file missing")
            with self.open(rel, mode="r") as f:
                self._json[rel] = json.load(f)
        return self._json[rel]


    def _rels(self, ref: TileRef) -> tuple[str, str, str]:
        aerial, labels, sen = TREES[ref.info["tree"]]
        d, z, n = ref.info["domain"], ref.info["zone"], ref.info["num"]
        return (f"{aerial}/{d}/{z}/img/IMG_{n}.tif", f"{labels}/{d}/{z}/msk/MSK_{n}.tif", f"{sen}/{d}/{z}/sen")

    def _aerial_metadata_present(self) -> bool:
        if self._has_metadata is None:
            self._has_metadata = self.exists(METADATA)
        return self._has_metadata

    def super_area_files(self, folder: str) -> dict[str, str]:
        """``data`` / ``masks`` / ``products`` -> the file of the zone's ``sen/`` folder ending like that."""
        if folder not in self._sen_files:
            names = sorted(p.rsplit("/", 1)[-1] for p in self.fs.glob(self.path(folder, "*")))
            found = {}
            for key, suffix in SUPER_AREA_FILES.items():
                match = [n for n in names if n.endswith(suffix)]
                if len(match) != 1:
                    raise TileError(self.path(folder), f"{len(match)} files ending with {suffix!r} (expected one "
                                                       f"super-area file); folder holds {names[:6]}")
                found[key] = f"{folder}/{match[0]}"
            self._sen_files[folder] = found
        return self._sen_files[folder]

    def _aerial(self, rel: str, read: bool):
        r = self.read_raster(rel, read)
        if r.shape[0] != 5 or r.dtype != np.uint8:
            raise TileError(self.path(rel), f"aerial must be 5-band uint8 (R, G, B, NIR, elevation), "
                                            f"got {r.shape[0]} bands {r.dtype}")
        return r.data, r.shape, r.dtype, r.geo

    def _aerial_date(self, ref: TileRef) -> int:
        if not self._aerial_metadata_present():
            return -1
        meta = self._table(METADATA).get(ref.id)
        if not meta or not meta.get("date"):
            return -1
        try:
            return days_since_epoch(str(meta["date"]))
        except ValueError:
            raise TileError(self.path(METADATA), f"{ref.id}: bad date {meta['date']!r}") from None

    def _npy_header(self, rel: str) -> tuple[tuple[int, ...], np.dtype]:
        with self.open(rel) as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        return tuple(int(s) for s in shape), np.dtype(dtype)

    def _zone(self, folder: str, header_only: bool = False) -> dict:
        """Super-area arrays (memory-mapped or cached), or just their shapes, plus the product dates."""
        key = (folder, header_only)
        if key in self._zones:
            self._zones.move_to_end(key)
            return self._zones[key]
        files = self.super_area_files(folder)
        rel_data, rel_mask, rel_prod = files["data"], files["masks"], files["products"]
        try:
            with self.open(rel_prod, mode="r") as f:
                products = [ln.strip() for ln in f if ln.strip()]
            if header_only:
                z = {"data": self._npy_header(rel_data), "masks": self._npy_header(rel_mask)}
            elif self.is_local:
                z = {"data": np.load(self.path(rel_data), mmap_mode="r", allow_pickle=False),
                     "masks": np.load(self.path(rel_mask), mmap_mode="r", allow_pickle=False)}
            else:
                z = {}
                for k, rel in (("data", rel_data), ("masks", rel_mask)):
                    with self.open(rel) as f:
                        z[k] = np.load(f, allow_pickle=False)
        except FileNotFoundError as e:
            raise TileError(self.path(folder), f"super-area file missing: {e}") from None
        except (OSError, ValueError, EOFError) as e:
            raise TileError(self.path(rel_data), f"unreadable super-area ({type(e).__name__}: {e})") from None
        dshape, ddtype = z["data"] if header_only else (z["data"].shape, z["data"].dtype)
        mshape = z["masks"][0] if header_only else z["masks"].shape
        if len(dshape) != 4 or dshape[1] != 10:
            raise TileError(self.path(rel_data), f"shape {dshape}, expected (T, 10, H, W)")
        if ddtype.kind not in "iu":
            raise TileError(self.path(rel_data), f"dtype {ddtype}, expected integer reflectance")
        if len(mshape) != 4 or mshape[0] != dshape[0] or mshape[1] < 2 or mshape[2:] != dshape[2:]:
            raise TileError(self.path(rel_mask), f"shape {mshape} does not match data {dshape}")
        days = []
        for p in products:
            m = _SENSING.search(p)
            if m is None:
                raise TileError(self.path(rel_prod), f"no sensing date in product name {p!r}")
            days.append(days_since_epoch(m.group(1)))
        if len(days) != dshape[0]:
            raise TileError(self.path(rel_prod), f"{len(days)} products for T={dshape[0]} in {rel_data}")
        z["days"] = np.array(days, np.int32)
        z["shape"], z["dtype"] = dshape, ddtype
        if not self._fingerprinted and not header_only:
            self._fingerprinted = True
            log.info("flair format fingerprint: %s data %s %s, masks %s, %d products", rel_data, dshape, ddtype,
                     mshape, len(days))
        self._zones[key] = z
        while len(self._zones) > self.zone_cache:
            self._zones.popitem(last=False)
        return z

    def _centroid(self, ref: TileRef) -> tuple[int, int]:
        c = self._table(CENTROIDS).get(f"{ref.id}.tif")
        if c is None or len(c) != 2:
            raise TileError(self.path(CENTROIDS), f"no centroid for {ref.id}.tif")
        return int(c[0]), int(c[1])

    def _s2(self, ref: TileRef, sen_dir: str) -> SensorArray:
        z = self._zone(sen_dir)
        r, c = self._centroid(ref)
        t, _, h, w = z["shape"]
        k = self.s2_crop
        r0, c0 = r - k // 2, c - k // 2
        if r0 >= h or c0 >= w or r0 + k <= 0 or c0 + k <= 0:
            raise TileError(self.path(CENTROIDS), f"{ref.id}: centroid ({r}, {c}) outside the {h}x{w} super-area")
        rs, re_, cs, ce = max(r0, 0), min(r0 + k, h), max(c0, 0), min(c0 + k, w)
        data = np.zeros((t, 10, k, k), z["dtype"])
        data[:, :, rs - r0:re_ - r0, cs - c0:ce - c0] = z["data"][:, :, rs:re_, cs:ce]
        valid = np.zeros((t, 1, k, k), bool)
        probs = np.asarray(z["masks"][:, :2, rs:re_, cs:ce])
        valid[:, 0, rs - r0:re_ - r0, cs - c0:ce - c0] = (probs < self.cloud_threshold).all(axis=1)
        return SensorArray(data, z["days"].copy(), valid)

    # -- reading ---------------------------------------------------------------------------------
    def read_tile(self, ref: TileRef) -> Tile:
        rel_img, rel_msk, sen_dir = self._rels(ref)
        aerial, (_, h, w), _, geo = self._aerial(rel_img, read=True)
        sensors = {"aerial-flair": SensorArray(aerial[None], np.array([self._aerial_date(ref)], np.int32), geo=geo)}
        sensors["s2"] = self._s2(ref, sen_dir)
        msk = self.read_raster(rel_msk)
        if msk.shape != (1, h, w) or msk.dtype.kind != "u":
            raise TileError(self.path(rel_msk), f"mask {msk.shape} {msk.dtype}, expected (1, {h}, {w}) unsigned")
        raw = msk.data[0]
        lo, hi = int(raw.min()), int(raw.max())
        if lo < 1 or hi > 19:
            raise TileError(self.path(rel_msk), f"mask values {lo}..{hi} outside the 1..19 nomenclature")
        raw = raw.astype(np.uint8, copy=False)
        semantic = (np.minimum(raw, 13) - 1).astype(np.uint8)
        return Tile(ref.id, ref.split, sensors, {"semantic": semantic, "nomenclature": raw})

    def probe(self, ref: TileRef) -> TileProbe:
        rel_img, _, sen_dir = self._rels(ref)
        _, (c, h, w), dt, geo = self._aerial(rel_img, read=False)
        self._aerial_date(ref)
        self._centroid(ref)
        z = self._zone(sen_dir, header_only=True)
        k = self.s2_crop
        sensors = {"aerial-flair": SensorProbe((1, c, h, w), dt.str, None, 1, geo is not None),
                   "s2": SensorProbe((z["shape"][0], 10, k, k), z["dtype"].str, 1, len(z["days"]))}
        return TileProbe(sensors, {"semantic": ((h, w), "|u1"), "nomenclature": ((h, w), "|u1")})
