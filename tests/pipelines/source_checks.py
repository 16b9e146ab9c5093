"""Checks every raw-source test shares: the registry contract of a tile, probe == read, damage helpers."""

from __future__ import annotations

import os

import numpy as np

from anysat.sensors import get_sensor
from pipelines.datasets import get_dataset


def truncate(path: str, keep: float = 0.4) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def assert_probe_matches(source, ref, tile) -> None:
    probe = source.probe(ref)
    assert set(probe.sensors) == set(tile.sensors)
    for key, arr in tile.sensors.items():
        p = probe.sensors[key]
        assert p.shape == arr.data.shape and np.dtype(p.dtype) == arr.data.dtype, key
        assert p.dates == arr.dates.shape[0], key
        assert p.mask_channels == (None if arr.mask is None else arr.mask.shape[1]), key
        assert p.georeferenced == (arr.geo is not None), key  # the store sizes geo arrays from the probe
    assert probe.footprint == (tile.footprint is not None)
    assert set(probe.labels) == set(tile.labels)
    for name, v in tile.labels.items():
        v = np.asarray(v)
        assert tuple(probe.labels[name][0]) == v.shape and np.dtype(probe.labels[name][1]) == v.dtype, name


def check_contract(dataset: str, tile) -> None:
    """Registry bands, (T, C, H, W), int32 dates of length T, bool masks, every declared label present."""
    spec = get_dataset(dataset)
    assert set(tile.sensors) <= set(spec.sensors)
    for key, arr in tile.sensors.items():
        s = get_sensor(key)
        widths = {len(s.bands), len(s.raw_bands), len(spec.archive_bands.get(key, ()))}
        assert arr.data.ndim == 4 and arr.data.shape[1] in widths, key
        assert arr.dates.dtype == np.int32 and arr.dates.shape == (arr.data.shape[0],)
        if arr.mask is not None:
            assert arr.mask.dtype == bool and arr.mask.shape[1] in (1, arr.data.shape[1])
            assert arr.mask.shape[0] == arr.data.shape[0] and arr.mask.shape[2:] == arr.data.shape[2:]
    for lab in spec.labels:
        assert lab.name in tile.labels, lab.name
