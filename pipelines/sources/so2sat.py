"""So2Sat LCZ42 reader (v2 release: one HDF5 per split).

::

    training.h5 / validation.h5 / testing.h5
        sen1   (N, 32, 32, 8)  float64, channel-last: VH re, VH im, VV re, VV im, Lee VH, Lee VV, C12 re, C12 im
        sen2   (N, 32, 32, 10) float64, channel-last: B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12 (reflectance)
        label  (N, 17)         float64 one-hot LCZ

Reads one patch per tile by h5py slicing on axis 0 (never the whole file; training.h5 is ~50 GB) and
moves channels first with a plain ``transpose(2, 0, 1)``: AnySat's ``permute(0, 3, 2, 1)`` also swaps
rows and columns, which we do not copy. Values stay float64 (lossless).

Stored: ``s2`` (10 bands, registry order already), ``s1`` = sen1 channels [2, 0] (real parts of VV and
VH: what AnySat feeds its S1 projector; the VV/VH ratio is derived by the loader, with eps 1e-10 as for
every ``s1``, where AnySat's So2Sat loader uses 1e-4), ``s1-so2sat`` = all eight
``sen1`` channels as in the file. No acquisition dates exist: dates are -1. Label ``lcz`` = argmax of the
one-hot (a row that is not one-hot is a TileError). Tile id = ``{file stem}/{row}``.
"""

from __future__ import annotations

import logging

import h5py
import numpy as np

from pipelines.sources.base import SensorArray, SensorProbe, Source, Tile, TileError, TileProbe, TileRef

log = logging.getLogger(__name__)

FILES = (("training", "train"), ("validation", "val"), ("testing", "test"))
S1_CHANNELS, S2_CHANNELS, N_CLASSES = 8, 10, 17
S1_MODEL = [2, 0]  # VV real, VH real


class So2Sat(Source):
    name = "so2sat"
    georef_note = "none: the v2 HDF5 files carry no coordinates (v4 adds geolocation)"

    def __init__(self, root: str, storage_options: dict | None = None):
        super().__init__(root, storage_options)
        self._handles: dict[str, tuple] = {}

    def __getstate__(self):  # open HDF5 handles do not pickle; workers reopen lazily
        d = dict(self.__dict__)
        d["_handles"] = {}
        return d

    def _h5(self, stem: str):
        if stem not in self._handles:
            rel = f"{stem}.h5"
            try:
                fobj = self.path(rel) if self.is_local else self.open(rel)
                h5 = h5py.File(fobj, "r")
            except FileNotFoundError:
                raise TileError(self.path(rel), "file missing") from None
            except OSError as e:
                raise TileError(self.path(rel), f"unreadable HDF5: {e}") from None
            for k in ("sen1", "sen2", "label"):
                if k not in h5:
                    raise TileError(self.path(rel), f"missing HDF5 dataset {k!r}")
            self._handles[stem] = (h5, fobj)
            log.info("so2sat format fingerprint: %s %s", rel,
                     {k: (h5[k].shape, str(h5[k].dtype), h5[k].chunks, h5[k].compression) for k in h5})
        return self._handles[stem][0]

    def list_tiles(self) -> list[TileRef]:
        refs = []
        for stem, split in FILES:
            if not self.exists(f"{stem}.h5"):
                continue
            h5 = self._h5(stem)
            n = h5["label"].shape[0]
            if h5["sen1"].shape[0] != n or h5["sen2"].shape[0] != n:
                raise ValueError(f"{self.path(stem + '.h5')}: sen1/sen2/label lengths "
                                 f"{h5['sen1'].shape[0]}/{h5['sen2'].shape[0]}/{n} differ")
            refs += [TileRef(f"{stem}/{i}", split, {"file": stem, "row": i}) for i in range(n)]
        if not refs:
            raise FileNotFoundError(f"{self.root}: none of training.h5, validation.h5, testing.h5")
        return refs

    def _check(self, ref: TileRef, h5) -> str:
        where = self.path(f"{ref.info['file']}.h5")
        for k, c in (("sen1", S1_CHANNELS), ("sen2", S2_CHANNELS)):
            shape = h5[k].shape
            if len(shape) != 4 or shape[3] != c:
                raise TileError(where, f"{k} shape {shape}, expected (N, H, W, {c}) channel-last")
            if h5[k].dtype.kind != "f":
                raise TileError(where, f"{k} dtype {h5[k].dtype}, expected float")
        if h5["label"].shape[1:] != (N_CLASSES,):
            raise TileError(where, f"label shape {h5['label'].shape}, expected (N, {N_CLASSES})")
        if not 0 <= ref.info["row"] < h5["label"].shape[0]:
            raise TileError(where, f"row {ref.info['row']} outside the file")
        return where

    def read_tile(self, ref: TileRef) -> Tile:
        h5 = self._h5(ref.info["file"])
        where = self._check(ref, h5)
        i = ref.info["row"]
        try:
            sen1 = np.ascontiguousarray(h5["sen1"][i].transpose(2, 0, 1))[None]
            sen2 = np.ascontiguousarray(h5["sen2"][i].transpose(2, 0, 1))[None]
            onehot = h5["label"][i]
        except (OSError, ValueError) as e:
            raise TileError(where, f"unreadable row {i}: {e}") from None
        if not (np.isin(onehot, (0, 1)).all() and onehot.sum() == 1):
            raise TileError(where, f"row {i}: label is not one-hot ({onehot.tolist()})")
        nodate = np.full(1, -1, np.int32)
        sensors = {"s2": SensorArray(sen2, nodate.copy()),
                   "s1": SensorArray(np.ascontiguousarray(sen1[:, S1_MODEL]), nodate.copy()),
                   "s1-so2sat": SensorArray(sen1, nodate.copy())}
        return Tile(ref.id, ref.split, sensors, {"lcz": np.uint8(np.argmax(onehot))})

    def probe(self, ref: TileRef) -> TileProbe:
        """Dataset shapes only (the label is validated at read time)."""
        h5 = self._h5(ref.info["file"])
        self._check(ref, h5)
        _, h, w, _ = h5["sen1"].shape
        _, h2, w2, _ = h5["sen2"].shape
        dt1, dt2 = h5["sen1"].dtype.str, h5["sen2"].dtype.str
        return TileProbe({"s2": SensorProbe((1, S2_CHANNELS, h2, w2), dt2, None, 1),
                          "s1": SensorProbe((1, 2, h, w), dt1, None, 1),
                          "s1-so2sat": SensorProbe((1, S1_CHANNELS, h, w), dt1, None, 1)},
                         {"lcz": ((), "|u1")})
