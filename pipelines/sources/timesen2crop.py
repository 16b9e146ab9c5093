"""TimeSen2Crop reader (one CSV per pixel, one ``dates.csv`` per S2 tile folder).

::

    {TILE}/dates.csv              column acquisition_date, YYYYMMDD, oldest first
    {TILE}/{class 0..15}/{n}.csv  one pixel: one row per date, columns B2 B3 B4 B5 B6 B7 B8A B11 B12 Flag
    2019_{TILE}/...               the extra agronomic year

Each pixel is one 1 x 1 tile (the store contract covers it; nothing is special-cased downstream).

Band decision: the archive has **no B8** (nine bands, B8A present). ``s2`` is stored in the registry's
10-band order with the B8 slot filled with 0 and masked invalid on every date; the other nine bands are
the CSV integers unchanged (int32: lossless for any integer reflectance). We do *not* copy AnySat's
quirk of putting B8A into the B8 slot and Flag into the B8A slot; a loader that wants it can rebuild it
from the stored bands. The mask is also False on dates whose Flag is not 0 (cloud, shadow, snow), and
the Flag itself is kept losslessly in the store-only sensor ``s2-flag`` (uint8).

Columns are matched by header name when the header is a permutation of the expected names, by position
otherwise (the exact header strings are unverified); a pixel CSV must have 10 columns and one row per
date. Splits: AnySat's tile protocol (val ``33TWN``, test ``33UVP``, train every other 2017-18 tile);
``2019_*`` folders, which AnySat leaves out, are the authors' temporal test set ``test-2019``. The
authors' own protocol trains on all 2017-18 tiles (our train + val + test) and tests on ``test-2019``.
Tile id = ``{TILE}/{class}/{stem}``; label ``crop`` = the class folder number (uint8).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipelines.sources.base import SensorArray, Source, Tile, TileError, TileRef, days_since_epoch

log = logging.getLogger(__name__)

CSV_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8A", "B11", "B12", "Flag")
# registry s2 order B2 B3 B4 B5 B6 B7 B8 B8A B11 B12 <- CSV column (None: absent from the archive)
S2_FROM_CSV = (0, 1, 2, 3, 4, 5, None, 6, 7, 8)
N_CLASSES = 16
VAL_TILES, TEST_TILES = ("33TWN",), ("33UVP",)


def split_of(tile: str) -> str:
    if tile.startswith("2019_"):
        return "test-2019"
    if tile in VAL_TILES:
        return "val"
    if tile in TEST_TILES:
        return "test"
    return "train"


def _stem_key(name: str):
    stem = name[:-4]
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


class TimeSen2Crop(Source):
    name = "timesen2crop"
    georef_note = "none: pixel CSVs carry no coordinates (only the S2 tile name)"

    def __init__(self, root: str, storage_options: dict | None = None):
        super().__init__(root, storage_options)
        self._dates: dict[str, np.ndarray] = {}
        self._warned_header = False

    def _ls(self, *parts: str) -> list[tuple[str, str]]:
        """(name, type) of the entries of a folder under the root."""
        out = []
        for e in self.fs.ls(self.path(*parts), detail=True):
            out.append((e["name"].rstrip("/").rsplit("/", 1)[-1], e["type"]))
        return sorted(out)

    def list_tiles(self) -> list[TileRef]:
        refs = []
        tiles = [n for n, t in self._ls() if t == "directory" and self.exists(n, "dates.csv")]
        if not tiles:
            raise FileNotFoundError(f"{self.root}: no {{TILE}}/dates.csv folders")
        for tile in tiles:
            classes = sorted((int(n), n) for n, t in self._ls(tile) if t == "directory" and n.isdigit())
            for cls, cname in classes:
                files = sorted((n for n, t in self._ls(tile, cname) if t == "file" and n.endswith(".csv")),
                               key=_stem_key)
                refs += [TileRef(f"{tile}/{cname}/{f[:-4]}", split_of(tile), {"class": cls}) for f in files]
        log.info("timesen2crop: %d pixels in %d tile folders", len(refs), len(tiles))
        return refs

    def tile_dates(self, tile: str) -> np.ndarray:
        if tile not in self._dates:
            where = self.path(tile, "dates.csv")
            try:
                with self.open(tile, "dates.csv") as f:
                    df = pd.read_csv(f, dtype=str)
                col = "acquisition_date" if "acquisition_date" in df.columns else df.columns[0]
                days = np.array([days_since_epoch(str(v)) for v in df[col]], np.int32)
            except FileNotFoundError:
                raise TileError(where, "file missing") from None
            except (ValueError, KeyError, IndexError) as e:
                raise TileError(where, f"unreadable dates.csv ({e})") from None
            if len(days) > 1 and np.any(np.diff(days) < 0):
                raise TileError(where, "dates are not oldest-to-newest")
            self._dates[tile] = days
        return self._dates[tile]

    def read_tile(self, ref: TileRef) -> Tile:
        tile, cname, stem = ref.id.split("/")
        rel = f"{tile}/{cname}/{stem}.csv"
        where = self.path(rel)
        days = self.tile_dates(tile)
        try:
            with self.open(rel) as f:
                df = pd.read_csv(f)
        except FileNotFoundError:
            raise TileError(where, "file missing") from None
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
            raise TileError(where, f"unreadable CSV ({e})") from None
        if df.shape[1] != len(CSV_BANDS):
            raise TileError(where, f"{df.shape[1]} columns, expected {len(CSV_BANDS)} ({', '.join(CSV_BANDS)})")
        names = [str(c).strip() for c in df.columns]
        if names != list(CSV_BANDS):
            if sorted(n.upper() for n in names) == sorted(b.upper() for b in CSV_BANDS):
                upper = [n.upper() for n in names]
                df = df.iloc[:, [upper.index(b.upper()) for b in CSV_BANDS]]
            elif not self._warned_header:
                self._warned_header = True
                log.warning("timesen2crop: header %s is not %s; reading columns by position", names, CSV_BANDS)
        if len(df) != len(days):
            raise TileError(where, f"{len(df)} rows for {len(days)} dates in {tile}/dates.csv")
        vals = df.to_numpy()
        if vals.dtype.kind not in "iu":
            if vals.dtype.kind != "f" or not np.all(np.isfinite(vals) & (vals == np.round(vals))):
                raise TileError(where, f"non-integer values (dtype {vals.dtype})")
        vals = vals.astype(np.int64)
        if np.abs(vals[:, :9]).max(initial=0) > np.iinfo(np.int32).max:
            raise TileError(where, "reflectance out of int32 range")
        flag = vals[:, 9]
        if flag.min(initial=0) < 0 or flag.max(initial=0) > 255:
            raise TileError(where, f"Flag values {flag.min()}..{flag.max()} outside 0..255")
        t = len(days)
        s2 = np.zeros((t, 10, 1, 1), np.int32)
        mask = np.zeros((t, 10, 1, 1), bool)
        clear = flag == 0
        for slot, col in enumerate(S2_FROM_CSV):
            if col is not None:
                s2[:, slot, 0, 0] = vals[:, col]
                mask[:, slot, 0, 0] = clear
        cls = ref.info["class"]
        if not 0 <= cls < N_CLASSES:
            raise TileError(self.path(tile, cname), f"class folder {cls} outside 0..{N_CLASSES - 1}")
        sensors = {"s2": SensorArray(s2, days.copy(), mask),
                   "s2-flag": SensorArray(flag.astype(np.uint8).reshape(t, 1, 1, 1), days.copy())}
        return Tile(ref.id, ref.split, sensors, {"crop": np.uint8(cls)})
