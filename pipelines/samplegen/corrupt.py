"""Damage a *copy* of a miniature archive, for the quarantine tests.

The generators write only valid archives; every helper here takes the path of one file in a copied
archive and breaks it in one documented way, returning the path it damaged.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np


def copy_archive(src: str, dst: str) -> str:
    shutil.copytree(src, dst, dirs_exist_ok=False)
    return dst


def truncate(path: str, keep: float = 0.5) -> str:
    """Cut a file to a fraction of its size (a half-finished download or copy)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(max(1, int(size * keep)))
    return path


def garble(path: str) -> str:
    """Overwrite a file with bytes that are no known format."""
    with open(path, "wb") as f:
        f.write(b"this is not the file you are looking for\n" * 8)
    return path


def npz_drop_time_steps(path: str, n: int = 1) -> str:
    """Rewrite an ``.npz`` (``arr_0``) with its first axis ``n`` shorter, e.g. timestamps shorter than T."""
    with np.load(path) as z:
        a = z["arr_0"]
    np.savez(path, a[:-n] if a.shape[0] > n else a[:0])
    return path


def npz_replace(path: str, array: np.ndarray) -> str:
    """Replace ``arr_0`` of an ``.npz`` (wrong shape, channels, dtype...)."""
    np.savez(path, array)
    return path


def npz_array(path: str) -> np.ndarray:
    """``arr_0`` of an ``.npz`` (to derive a damaged version of it)."""
    with np.load(path) as z:
        return z["arr_0"]


def npz_scale(path: str, factor: int | float) -> str:
    """Multiply ``arr_0`` (e.g. millisecond timestamps -> nanoseconds with 1e6, -> seconds with 1e-3),
    keeping integer arrays integer."""
    a = npz_array(path)
    scaled = a * factor if a.dtype.kind == "f" or float(factor).is_integer() else np.floor_divide(a, round(1 / factor))
    np.savez(path, scaled.astype(a.dtype))
    return path


def npz_fill(path: str, value) -> str:
    """Set every value of ``arr_0`` to ``value``, same shape and dtype (all-NaN / all-inf sensor data, or
    one timestamp repeated)."""
    a = npz_array(path)
    np.savez(path, np.full_like(a, value))
    return path


def npz_set(path: str, index, value) -> str:
    """Set ``arr_0[index] = value`` (one implausible timestamp in a series)."""
    a = npz_array(path).copy()
    a[index] = value
    np.savez(path, a)
    return path


def npz_repeat_time(path: str, t: int) -> str:
    """Stretch the first axis of ``arr_0`` to length ``t`` by repeating it (an absurdly long series); apply
    it to a sensor's data, mask and timestamp files alike."""
    a = npz_array(path)
    reps = -(-t // max(1, a.shape[0]))
    np.savez(path, np.concatenate([a] * reps, axis=0)[:t])
    return path


def json_set(path: str, key: str, value) -> str:
    """Set one key of a JSON object file (e.g. a label out of range in PLANTED ``labels2.json``)."""
    with open(path) as f:
        obj = json.load(f)
    obj[key] = value
    with open(path, "w") as f:
        json.dump(obj, f)
    return path


def remove(path: str) -> str:
    os.remove(path)
    return path


def flip_bytes(path: str, at: float = 0.6, n: int = 16) -> str:
    """Invert ``n`` bytes inside a file, keeping its size and headers (silent bit rot; zip CRCs catch it)."""
    size = os.path.getsize(path)
    pos = min(max(0, int(size * at)), max(0, size - n))
    with open(path, "r+b") as f:
        f.seek(pos)
        chunk = f.read(n)
        f.seek(pos)
        f.write(bytes(b ^ 0xFF for b in chunk))
    return path
