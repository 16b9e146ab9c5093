"""Miniature So2Sat LCZ42 v2 archive: three HDF5 files with ``sen1``, ``sen2``
and ``label`` in the real shapes and dtypes (channel-last float64, one-hot float64 labels).

``training.h5`` is written gzip-compressed with (1, 32, 32, C) chunks and the others contiguous, so a
reader cannot depend on the storage layout. Planted signal: the LCZ class shifts S2 NIR (B8, B8A) and the
Lee-filtered VV intensity, and adds its own spectral signature to S2 (+0.04 reflectance on a fixed subset
of the 10 bands per class, ``CLASS_CODES``), so the 17 classes are far apart, not 17 steps of one ramp.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

SIZE = 32
# per LCZ class, the S2 bands its signature raises (a separate generator: the archive's random stream is
# the same as without it)
CLASS_CODES = np.random.default_rng(17).random((17, 10)) < 0.4


def _counts(n: int) -> tuple[int, int, int]:
    if n >= 14:
        v = max(1, round(n * 3 / 14))
        return n - 2 * v, v, v
    return {1: (1, 0, 0), 2: (1, 1, 0)}.get(n, (max(1, n - 2 * max(1, n // 5)), max(1, n // 5), max(1, n // 5)))


def write_sample(root: str, tiles: int | None = None, seed: int = 0) -> None:
    n = 14 if tiles is None else int(tiles)
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    k = 0
    for (stem, m), compressed in zip(zip(("training", "validation", "testing"), _counts(n)), (True, False, False)):
        if m == 0:
            continue
        cls = (np.arange(m) * 5 + k) % 17
        k += m
        base = np.array([0.09, 0.08, 0.07, 0.11, 0.17, 0.19, 0.21, 0.22, 0.16, 0.11])
        sen2 = base[None, None, None] * (1 + 0.1 * rng.standard_normal((m, SIZE, SIZE, 10)))
        sen2[..., 6:8] += 0.02 * cls[:, None, None, None]   # NIR rises with the class index
        sen2 += 0.04 * CLASS_CODES[cls][:, None, None, :]    # and each class has its own signature
        sen2 = np.clip(sen2, 0, 0.6)
        sen1 = rng.normal(0, 0.05, (m, SIZE, SIZE, 8))
        sen1[..., 4:6] = rng.uniform(0.0, 0.1, (m, SIZE, SIZE, 2))
        sen1[..., 5] += 0.012 * cls[:, None, None]           # Lee VV intensity rises with the class index
        label = np.eye(17)[cls]
        kw = {"compression": "gzip", "compression_opts": 4} if compressed else {}
        with h5py.File(os.path.join(root, f"{stem}.h5"), "w") as h5:
            for name, arr in (("sen1", sen1), ("sen2", sen2)):
                chunks = (1, SIZE, SIZE, arr.shape[-1]) if compressed else None
                h5.create_dataset(name, data=arr.astype(np.float64), chunks=chunks, **kw)
            h5.create_dataset("label", data=label.astype(np.float64), **kw)
