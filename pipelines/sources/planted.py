"""PLANTED in the AnySat per-example ``.npz`` layout, which is what users hold.

::

    {root}/{split}/labels2.json                    {"<id>": <class 0..39>}
    {root}/{split}/{id}/{id}_{mod}.npz             arr_0: (T, H, W, C) channel-last
    {root}/{split}/{id}/{id}_{mod}_mask.npz        arr_0: (T, H, W, Cm) validity (0 = invalid)
    {root}/{split}/{id}/{id}_{mod}_timestamp.npz   arr_0: (T,) int ms since 1970-01-01T00:00Z

Data is returned as ``(T, C, H, W)`` in the file's dtype. S1 and ALOS keep their two raw bands (the
ratio band is derived by the loader, see ``Sensor.derived``); AnySat reads only channels 0-1 of those
files, so extra channels are dropped the same way. Timestamps become UTC days (AnySat's local-time
``fromtimestamp`` is a known quirk we do not copy). A timestamp file in another unit (seconds,
microseconds, nanoseconds: detected from the magnitude) is rejected with a reason naming the unit, never
wrapped through int32.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
import zlib

import numpy as np

from anysat.sensors import get_sensor
from pipelines.datasets import PLANTED_CLASSES
from pipelines.sources.base import (SensorArray, SensorProbe, Source, Tile, TileError, TileProbe, TileRef,
                                   timestamps_to_days)

MODALITIES = ("s2", "s1", "l7", "alos", "modis")
SPLITS = ("train", "val", "test")
_HEAD = 1024  # bytes read by the probe: zip local header + .npy header of arr_0
_SHAPE_RE = re.compile(r"'shape':\s*(\([^)]*\))")
_DESCR_RE = re.compile(r"'descr':\s*'([^']+)'")
_FORTRAN_RE = re.compile(r"'fortran_order':\s*(True|False)")


def _npz_member(buf: bytes | memoryview) -> tuple[int, int, int, int, tuple[int, ...], np.dtype, bool] | None:
    """Parse the single stored ``arr_0.npy`` member that ``np.savez`` writes, straight from the bytes.

    Returns ``(member_start, data_offset, member_end, crc32, shape, dtype, fortran)`` or ``None`` when the file is laid out
    any other way (compressed, several members, pickled objects...), in which case callers use
    ``np.load``. Opening the zip and ``literal_eval``-ing the header costs ~250 us per file; PLANTED has
    15 files per 60 KB tile, so this is most of the ingest's read time.
    """
    if len(buf) < 30 or bytes(buf[:4]) != b"PK\x03\x04":
        return None
    _, _, flag, comp, _, _, crc, csize, usize, nl, el = struct.unpack_from("<4sHHHHHIIIHH", buf)
    if comp != 0 or flag & 0x8 or bytes(buf[30:30 + nl]) != b"arr_0.npy" or len(buf) < 30 + nl + el:
        return None
    if csize == 0xFFFFFFFF or usize == 0xFFFFFFFF:  # zip64: sizes in the extra field
        extra, i = bytes(buf[30 + nl:30 + nl + el]), 0
        while i + 4 <= len(extra):
            tag, size = struct.unpack_from("<HH", extra, i)
            if tag == 1:
                vals = struct.unpack_from(f"<{size // 8}Q", extra, i + 4)
                k = 0
                if usize == 0xFFFFFFFF:
                    usize, k = vals[0], 1
                if csize == 0xFFFFFFFF and len(vals) > k:
                    csize = vals[k]
                break
            i += 4 + size
        if csize == 0xFFFFFFFF:
            return None
    start = 30 + nl + el
    if len(buf) < start + 12 or bytes(buf[start:start + 6]) != b"\x93NUMPY":
        return None
    major = buf[start + 6]
    if major == 1:
        hlen, hoff = struct.unpack_from("<H", buf, start + 8)[0], 10
    else:
        hlen, hoff = struct.unpack_from("<I", buf, start + 8)[0], 12
    if len(buf) < start + hoff + hlen:
        return None
    header = bytes(buf[start + hoff:start + hoff + hlen]).decode("latin1")
    m_shape, m_descr, m_fortran = _SHAPE_RE.search(header), _DESCR_RE.search(header), _FORTRAN_RE.search(header)
    if not (m_shape and m_descr and m_fortran):
        return None
    try:
        dtype = np.dtype(m_descr.group(1))
        shape = tuple(int(x) for x in m_shape.group(1).strip("()").split(",") if x.strip())
    except (TypeError, ValueError):
        return None
    if dtype.hasobject:
        return None
    data = start + hoff + hlen
    if data + int(np.prod(shape)) * dtype.itemsize != start + csize:
        return None
    return start, data, start + csize, crc, shape, dtype, m_fortran.group(1) == "True"


class Planted(Source):
    name = "planted"
    georef_note = "none: the per-example .npz files carry no coordinates"

    def __init__(self, root: str, storage_options: dict | None = None, allow_pickle: bool = False):
        super().__init__(root, storage_options)
        # AnySat loads with allow_pickle=True; unpickling archive files executes code, so it is opt-in.
        self.allow_pickle = allow_pickle

    # -- listing ---------------------------------------------------------------------------------
    def list_tiles(self) -> list[TileRef]:
        refs: list[TileRef] = []
        found = False
        for split in SPLITS:
            if not self.exists(split, "labels2.json"):
                continue
            found = True
            with self.open(split, "labels2.json") as f:
                try:
                    labels = json.load(f)
                except ValueError as e:
                    raise TileError(self.path(split, "labels2.json"), f"not valid JSON ({e})") from None
            if not isinstance(labels, dict):
                raise TileError(self.path(split, "labels2.json"), "expected a JSON object {id: class}")
            # Numeric ids sort numerically so the order does not depend on id string widths.
            for tid in sorted(labels, key=lambda s: (len(s), s) if s.isdigit() else (1 << 30, s)):
                refs.append(TileRef(str(tid), split, {"label": labels[tid]}))
        if not found:
            raise FileNotFoundError(f"{self.root}: no {{train,val,test}}/labels2.json found; "
                                    "is this a PLANTED archive in the AnySat npz layout?")
        return refs

    # -- helpers -----------------------------------------------------------------------------------
    def _file(self, ref: TileRef, mod: str, suffix: str = "") -> str:
        return self.path(ref.split, ref.id, f"{ref.id}_{mod}{suffix}.npz")

    def _load(self, path: str) -> np.ndarray:
        try:
            with self.fs.open(path, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            raise TileError(path, "file missing") from None
        except OSError as e:
            raise TileError(path, f"unreadable ({e})") from None
        m = _npz_member(buf)
        if m is not None and len(buf) >= m[2] + 22:  # member + at least the end-of-zip record
            start, off, end, crc, shape, dtype, fortran = m
            if zlib.crc32(memoryview(buf)[start:end]) != crc:
                raise TileError(path, "CRC mismatch in arr_0.npy (damaged file)")
            return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape)), offset=off).reshape(
                shape, order="F" if fortran else "C")
        return self._load_slow(path)

    def _load_slow(self, path: str) -> np.ndarray:
        try:
            with self.fs.open(path, "rb") as f:
                with np.load(f, allow_pickle=self.allow_pickle) as z:
                    if "arr_0" not in z.files:
                        raise TileError(path, f"no 'arr_0' in the npz (keys: {z.files})")
                    return z["arr_0"]
        except TileError:
            raise
        except FileNotFoundError:
            raise TileError(path, "file missing") from None
        except ValueError as e:
            if "allow_pickle" in str(e):
                raise TileError(path, "holds a pickled object array; pass allow_pickle=True to Planted "
                                      "only for archives you trust") from None
            raise TileError(path, f"unreadable npz ({e})") from None
        except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise TileError(path, f"unreadable npz ({type(e).__name__}: {e})") from None

    def _header(self, path: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of ``arr_0`` from its ``.npy`` header, without reading the array.

        Also checks that the file is long enough to hold the array and the zip directory, which is
        what a truncated copy or download fails; bit rot inside the data is left to the full read.
        """
        try:
            with self.fs.open(path, "rb") as f:
                head = f.read(_HEAD)
                size = f.seek(0, 2)
        except FileNotFoundError:
            raise TileError(path, "file missing") from None
        except OSError as e:
            raise TileError(path, f"unreadable ({e})") from None
        m = _npz_member(head)
        if m is not None:
            if size < m[2] + 22:
                raise TileError(path, f"unreadable npz (truncated: {size} bytes, arr_0 alone needs {m[2]})")
            return m[4], m[5]
        return self._header_slow(path)

    def _header_slow(self, path: str) -> tuple[tuple[int, ...], np.dtype]:
        try:
            with self.fs.open(path, "rb") as f, zipfile.ZipFile(f) as zf:
                name = "arr_0.npy"
                if name not in zf.namelist():
                    raise TileError(path, f"no 'arr_0' in the npz (members: {zf.namelist()})")
                info = zf.getinfo(name)
                with zf.open(info) as m:
                    version = np.lib.format.read_magic(m)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(m)
                return tuple(int(s) for s in shape), np.dtype(dtype)
        except TileError:
            raise
        except FileNotFoundError:
            raise TileError(path, "file missing") from None
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as e:
            raise TileError(path, f"unreadable npz ({type(e).__name__}: {e})") from None

    def _label(self, ref: TileRef) -> np.ndarray:
        v = ref.info.get("label")
        where = self.path(ref.split, "labels2.json")
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TileError(where, f"tile {ref.id}: label {v!r} is not an integer class index")
        if not 0 <= int(v) < len(PLANTED_CLASSES):
            raise TileError(where, f"tile {ref.id}: label {v} outside 0..{len(PLANTED_CLASSES) - 1}")
        return np.asarray(int(v), dtype=np.int64)

    @staticmethod
    def _channels(mod: str, c: int, path: str) -> int:
        sensor = get_sensor(mod)
        want = len(sensor.raw_bands)
        if c == want or (sensor.derived and c > want):
            return want
        raise TileError(path, f"{c} channels, expected {want} ({', '.join(sensor.raw_bands)})")

    # -- reading -------------------------------------------------------------------------------------
    def read_tile(self, ref: TileRef) -> Tile:
        label = self._label(ref)
        sensors: dict[str, SensorArray] = {}
        for mod in MODALITIES:
            p_data, p_mask, p_ts = (self._file(ref, mod, s) for s in ("", "_mask", "_timestamp"))
            data = self._load(p_data)
            if data.ndim != 4:
                raise TileError(p_data, f"shape {data.shape}, expected (T, H, W, C)")
            c = self._channels(mod, data.shape[3], p_data)
            data = np.ascontiguousarray(data[..., :c].transpose(0, 3, 1, 2))
            t = data.shape[0]
            ts = self._load(p_ts)
            if ts.ndim != 1 or ts.shape[0] != t:
                raise TileError(p_ts, f"{ts.shape[0] if ts.ndim == 1 else ts.shape} timestamps for T={t} "
                                      f"time steps in {p_data.rsplit('/', 1)[-1]}")
            if not np.issubdtype(ts.dtype, np.integer):
                raise TileError(p_ts, f"timestamps have dtype {ts.dtype}, expected integer milliseconds")
            dates = timestamps_to_days(ts, "ms", p_ts)
            mask = self._load(p_mask)
            if mask.ndim != 4 or mask.shape[:3] != (t, *data.shape[2:4]) or not (mask.shape[3] == 1 or
                                                                                  mask.shape[3] >= c):
                raise TileError(p_mask, f"mask shape {mask.shape} does not fit data (T, H, W, C)="
                                        f"{(t, data.shape[2], data.shape[3], data.shape[1])}")
            if mask.shape[3] > c:
                mask = mask[..., :c]
            mask = np.ascontiguousarray(mask.transpose(0, 3, 1, 2) != 0)
            sensors[mod] = SensorArray(data, dates, mask)
        return Tile(ref.id, ref.split, sensors, {"species": label})

    def probe(self, ref: TileRef) -> TileProbe:
        """Headers only (plus the small timestamp files): about a tenth of a full read."""
        label = self._label(ref)
        sensors: dict[str, SensorProbe] = {}
        for mod in MODALITIES:
            p_data, p_mask, p_ts = (self._file(ref, mod, s) for s in ("", "_mask", "_timestamp"))
            shape, dtype = self._header(p_data)
            if len(shape) != 4:
                raise TileError(p_data, f"shape {shape}, expected (T, H, W, C)")
            t, h, w, c_raw = shape
            c = self._channels(mod, c_raw, p_data)
            ts_shape, ts_dtype = self._header(p_ts)
            if len(ts_shape) != 1 or ts_shape[0] != t:
                raise TileError(p_ts, f"{ts_shape[0] if len(ts_shape) == 1 else ts_shape} timestamps for T={t} "
                                      f"time steps in {p_data.rsplit('/', 1)[-1]}")
            if not np.issubdtype(ts_dtype, np.integer):
                raise TileError(p_ts, f"timestamps have dtype {ts_dtype}, expected integer milliseconds")
            m_shape, _ = self._header(p_mask)
            if len(m_shape) != 4 or m_shape[:3] != (t, h, w) or not (m_shape[3] == 1 or m_shape[3] >= c):
                raise TileError(p_mask, f"mask shape {m_shape} does not fit data (T, H, W, C)={(t, h, w, c)}")
            sensors[mod] = SensorProbe((t, c, h, w), dtype.str, 1 if m_shape[3] == 1 else c, t)
        return TileProbe(sensors, {"species": ((), label.dtype.str)})
