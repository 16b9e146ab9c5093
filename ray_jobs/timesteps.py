"""Which time steps of a stored series are real images, and which are padding.

The store right-pads every series to the sensor's ``T_max`` with data 0, date -1 and mask False, and
also writes date -1 for an image whose acquisition date the archive does not give (So2Sat has no
dates at all; Sen1Floods11 chips of an event without metadata). A date of -1 alone therefore does
not mean padding. :func:`real_steps` decides per tile:

* a tile's series length is one past its last step that has a known date (>= 0), any non-zero data
  value (NaN counts) or any valid mask pixel; the steps before it are real, the ones after it are
  padding. An image with an unknown date inside or at the end of a series is kept;
* a sensor absent from a tile (all steps zero, undated, masked out: how the ingest writes a missing
  sensor and a quarantined tile) has length 0: all padding;
* consequently an undated image whose pixels are all exactly zero cannot be told from padding and
  counts as padding; a store never needs one (it carries no information).

The loader (:mod:`ray_jobs.data`) keeps the real steps, feeds an unknown date to the model as day 0
(a fixed temporal encoding, as the official loaders use a fixed fallback date for undated images) and
pads only beyond each tile's length.
"""

from __future__ import annotations

import numpy as np

__all__ = ["real_steps"]


def real_steps(data: np.ndarray, dates: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``(N, T)`` bool, True for the real time steps of ``data`` ``(N, T, C, H, W)`` with ``dates``
    ``(N, T)`` (days, -1 = padding or unknown) and the optional validity ``mask`` ``(N, T, c, H, W)``."""
    n, t = dates.shape
    content = dates >= 0
    # a dated step is real whatever its pixels: only the undated ones (padding, mostly) are scanned
    ni, ti = np.nonzero(~content)
    if ni.size:
        found = (data.reshape(n, t, -1)[ni, ti] != 0).any(axis=1)
        if mask is not None:
            found |= mask.reshape(n, t, -1)[ni, ti].any(axis=1)
        content[ni, ti] = found
    # length = one past the last step with content (0 when there is none)
    last = np.where(content.any(axis=1), t - np.argmax(content[:, ::-1], axis=1), 0)
    return np.arange(t)[None, :] < last[:, None]
