"""Pixel helpers shared by readers: validity masks from nodata tags, nearest-neighbour resizing."""

from __future__ import annotations

import numpy as np


def valid_mask(data: np.ndarray, nodata: float | None, extra: tuple[float, ...] = ()) -> np.ndarray:
    """Per-value validity: finite, not the nodata tag, not any of ``extra`` (same shape as ``data``)."""
    ok = np.isfinite(data) if data.dtype.kind == "f" else np.ones(data.shape, bool)
    for v in ((nodata,) if nodata is not None else ()) + tuple(extra):
        if not np.isfinite(v):
            continue  # a NaN tag is covered by isfinite
        if data.dtype.kind in "iu":
            info = np.iinfo(data.dtype)
            if not (float(v).is_integer() and info.min <= v <= info.max):
                continue  # e.g. -9999 on uint8: no pixel can hold it
        ok &= data != v
    return ok


def nearest_resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes, OpenCV ``INTER_NEAREST`` indexing
    (``src = floor(dst * in / out)``), which is what the SICKLE loaders use through albumentations."""
    ih, iw = a.shape[-2:]
    if (ih, iw) == (h, w):
        return a
    rows = np.minimum((np.arange(h) * ih) // h, ih - 1)
    cols = np.minimum((np.arange(w) * iw) // w, iw - 1)
    return a[..., rows[:, None], cols[None, :]]
