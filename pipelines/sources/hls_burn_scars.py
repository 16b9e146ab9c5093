"""HLS Burn Scars reader (``ibm-nasa-geospatial/hls_burn_scars``).

::

    training/subsetted_512x512_HLS.S30.T10SGD.2018257.v1.4_merged.tif   float32 (6, 512, 512): B02 B03 B04 B8A B11 B12
    training/subsetted_512x512_HLS.S30.T10SGD.2018257.v1.4.mask.tif     1 band: 1 burn scar, 0 not burned, -1 no data
    validation/...                                                       same
    (or both folders packed in ``hls_burn_scars.tar.gz``: read in place, member by member)

Anything not matching the two name patterns (the "index files" of the card) is ignored. The date is
the ``YYYYDDD`` token of the name (AnySat stores 0; we store the real day). Validity mask per band:
finite, not the nodata tag, not +-9999 (AnySat zeroes 9999; TerraTorch fills NaN): the convention is not
documented, so all three are treated as invalid and the raw values are kept.

Splits (AnySat / PANGAEA protocol, so the trainer can use them directly): ``test`` = ``validation/``;
``val`` = ``sklearn.model_selection.train_test_split(np.arange(n), test_size=0.1, random_state=23)`` over the
*sorted* ``training/`` image names; ``train`` = the rest. The official two-way split is their union:
``training/`` = train + val, ``validation/`` = test. Tile id = the scene name without the
``subsetted_512x512_`` prefix and the suffix, e.g. ``HLS.S30.T10SGD.2018257.v1.4``.

A ``.tar.gz`` has no index: every member read decompresses the stream up to it, so for the real 2.65 GB
archive extracting once is much faster than reading in place.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import tarfile

import numpy as np

from pipelines.sources.base import (EPOCH, Raster, SensorArray, SensorProbe, Source, Tile, TileError, TileProbe,
                                   TileRef, decode_raster)
from pipelines.sources.pixels import valid_mask

log = logging.getLogger(__name__)

FOLDERS = (("training", "train"), ("validation", "test"))
_NAME = re.compile(r"^(?P<prefix>subsetted_\d+x\d+_)?(?P<scene>HLS\.[SL]30\.T\w{5}\.(?P<date>\d{7})\.v\d+\.\d+)"
                   r"(?P<kind>_merged\.tif|\.mask\.tif)$")
N_BANDS = 6
INVALID_VALUES = (9999.0, -9999.0)


def yyyyddd_days(s: str) -> int:
    return (dt.date(int(s[:4]), 1, 1) + dt.timedelta(days=int(s[4:]) - 1) - EPOCH).days


def anysat_val_indices(n: int) -> set[int]:
    """Positions (in sorted order) of the training scenes AnySat/PANGAEA hold out for validation."""
    if n < 2:
        return set()
    from sklearn.model_selection import train_test_split

    _, val = train_test_split(np.arange(n), test_size=0.1, random_state=23)
    return {int(i) for i in val}


class HLSBurnScars(Source):
    name = "hls-burn-scars"
    georef_note = "scene GeoTIFF grids (UTM, 30 m)"

    def __init__(self, root: str, storage_options: dict | None = None):
        super().__init__(root, storage_options)
        self._tar: tarfile.TarFile | None = None
        self._fingerprinted = False

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_tar"] = None
        return d

    # -- listing ---------------------------------------------------------------------------------
    def _tarball(self) -> str | None:
        if self.root.endswith((".tar.gz", ".tgz")):
            return ""
        for p in sorted(self.fs.ls(self._root_path, detail=False)):
            if p.endswith((".tar.gz", ".tgz")):
                return p.rstrip("/").rsplit("/", 1)[-1]
        return None

    def _entries(self) -> tuple[str, list[tuple[str, str]]]:
        """(layout, [(folder, path)]) of every file under training/ and validation/."""
        if any(self.exists(folder) for folder, _ in FOLDERS):
            out = []
            for folder, _ in FOLDERS:
                if self.exists(folder):
                    out += [(folder, p.rstrip("/").rsplit("/", 1)[-1])
                            for p in self.fs.ls(self.path(folder), detail=False)]
            return "tree", out
        tb = self._tarball()
        if tb is None:
            raise FileNotFoundError(f"{self.root}: neither training/ / validation/ nor a .tar.gz")
        out = []
        for m in self._tarfile(tb).getmembers():
            parts = m.name.split("/")
            if m.isfile() and len(parts) >= 2 and parts[-2] in dict(FOLDERS):
                out.append((parts[-2], m.name))
        return f"tar:{tb}", out

    def _tarfile(self, tb: str) -> tarfile.TarFile:
        if self._tar is None:
            f = self.fs.open(self._root_path if tb == "" else self.path(tb), "rb")
            self._tar = tarfile.open(fileobj=f, mode="r:gz")
        return self._tar

    def list_tiles(self) -> list[TileRef]:
        layout, entries = self._entries()
        scenes: dict[str, dict[str, dict]] = {folder: {} for folder, _ in FOLDERS}
        for folder, path in entries:
            m = _NAME.match(path.rsplit("/", 1)[-1])
            if m is None:
                continue  # index files and other extras
            key = "image" if m["kind"] == "_merged.tif" else "mask"
            rel = path if layout != "tree" else f"{folder}/{path}"
            scenes[folder].setdefault(m["scene"], {"date": m["date"]})[key] = rel
        refs = []
        for folder, split in FOLDERS:
            names = sorted(scenes[folder])
            held = anysat_val_indices(len(names)) if folder == "training" else set()
            for i, scene in enumerate(names):
                info = {"layout": layout, "folder": folder, **scenes[folder][scene]}
                refs.append(TileRef(scene, "val" if i in held else split, info))
        log.info("hls-burn-scars: %d scenes (%s)", len(refs), layout)
        return refs

    # -- reading ---------------------------------------------------------------------------------
    def _scene_raster(self, ref: TileRef, key: str, read: bool) -> Raster:
        """The scene's ``image`` or ``mask`` GeoTIFF, from the folder tree or from inside the tarball."""
        rel = ref.info.get(key)
        if rel is None:
            other = ref.info.get("image") or ref.info.get("mask")
            raise TileError(self.path(other), f"no {'_merged.tif image' if key == 'image' else '.mask.tif label'} "
                                              f"for scene {ref.id}")
        if ref.info["layout"] == "tree":
            return self.read_raster(rel, read)
        tb = ref.info["layout"][4:]
        where = f"{self.root}!{rel}"
        try:
            f = self._tarfile(tb).extractfile(rel)
            buf = f.read() if f is not None else None
        except (tarfile.TarError, OSError, EOFError, KeyError) as e:
            raise TileError(where, f"unreadable tar member: {e}") from None
        if buf is None:
            raise TileError(where, "tar member is not a file")
        return decode_raster(buf, where, read)

    def _check(self, ref: TileRef, img: Raster, msk: Raster) -> None:
        where = self.path(ref.info["image"])
        if img.shape[0] != N_BANDS:
            raise TileError(where, f"{img.shape[0]} bands, expected {N_BANDS} (B02 B03 B04 B8A B11 B12)")
        if img.dtype.kind not in "fiu":
            raise TileError(where, f"image dtype {img.dtype}")
        if msk.shape[0] != 1 or msk.shape[1:] != img.shape[1:]:
            raise TileError(self.path(ref.info["mask"]), f"mask shape {msk.shape}, expected (1, {img.shape[1]}, "
                                                         f"{img.shape[2]})")

    def read_tile(self, ref: TileRef) -> Tile:
        img = self._scene_raster(ref, "image", True)
        msk = self._scene_raster(ref, "mask", True)
        self._check(ref, img, msk)
        if not self._fingerprinted:
            self._fingerprinted = True
            log.info("hls format fingerprint: %s %s %s nodata=%s; mask %s nodata=%s", ref.info["image"], img.shape,
                     img.dtype, img.nodata, msk.dtype, msk.nodata)
        lab = msk.data[0]
        where = self.path(ref.info["mask"])
        if lab.dtype.kind == "f":
            if not np.all(np.isfinite(lab) & (lab == np.round(lab))):
                raise TileError(where, "non-integer mask values")
        bad = ~np.isin(lab, (-1, 0, 1))
        if bad.any():
            raise TileError(where, f"mask values {np.unique(lab[bad])[:5].tolist()} outside -1, 0, 1")
        data = img.data[None]
        mask = valid_mask(data, img.nodata, INVALID_VALUES)
        days = np.array([yyyyddd_days(ref.info["date"])], np.int32)
        return Tile(ref.id, ref.split, {"hls": SensorArray(data, days, mask, img.geo)}, {"burn": lab.astype(np.int8)})

    def probe(self, ref: TileRef) -> TileProbe:
        img = self._scene_raster(ref, "image", False)
        msk = self._scene_raster(ref, "mask", False)
        self._check(ref, img, msk)
        c, h, w = img.shape
        return TileProbe({"hls": SensorProbe((1, c, h, w), img.dtype.str, c, 1, img.geo is not None)},
                         {"burn": ((h, w), "|i1")})
