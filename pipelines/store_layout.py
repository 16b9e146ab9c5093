"""The store's layout: everything needed to create its arrays (shapes, dtypes, masks, labels, shards),
decided by the ingest's probe pass and saved in its plan.

Separate from the root attributes (``pipelines.store_meta``) because the layout is what the writers
size arrays from, while the attributes are what a store says about itself to its readers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

#: Compressor of every sensor array. Chosen by benchmarks/bench_ingest.py: blosc-lz4 with byte
#: shuffle encodes noisy float32 reflectances at several GB/s on one core and still shrinks them;
#: zstd (zarr's default) at level 0-3 took 3-6x the CPU time for a few percent more compression.
COMPRESSOR = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}


@dataclass
class SensorLayout:
    key: str
    t_max: int
    channels: int
    height: int
    width: int
    dtype: str
    bands: list[str]
    resolution_m: float
    time_series: bool
    mask_channels: int | None = None
    """1 or C where the archive has validity masks, else ``None`` (no mask array)."""

    @property
    def tile_shape(self) -> tuple[int, int, int, int]:
        return (self.t_max, self.channels, self.height, self.width)


@dataclass
class LabelLayout:
    name: str
    task: str
    classes: list[str]
    shape: list[int]
    """Per-tile shape: ``[]`` class index, ``[K]`` multi-hot, ``[H, W]`` per pixel."""
    dtype: str
    ignore_index: int | None = None

    @property
    def fill_value(self):
        kind = np.dtype(self.dtype).kind
        if self.ignore_index is not None:
            return self.ignore_index
        return -1 if kind == "i" else 0


@dataclass
class StoreLayout:
    dataset: str
    n_tiles: int
    tiles_per_shard: int
    sensors: dict[str, SensorLayout]
    labels: dict[str, LabelLayout] = field(default_factory=dict)
    compressor: dict = field(default_factory=lambda: dict(COMPRESSOR))
    georef: list[str] | None = None
    """Sensors whose grids the archive georeferences (a ``<sensor>/transform`` array each); not ``None``
    means the store has the ``geo/*`` arrays (format version 2, ``pipelines.geostore``)."""

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_tiles / self.tiles_per_shard) if self.n_tiles else 0

    def shard_range(self, i: int) -> tuple[int, int]:
        start = i * self.tiles_per_shard
        return start, min(start + self.tiles_per_shard, self.n_tiles)

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "n_tiles": self.n_tiles, "tiles_per_shard": self.tiles_per_shard,
                "sensors": {k: asdict(v) for k, v in self.sensors.items()},
                "labels": {k: asdict(v) for k, v in self.labels.items()}, "compressor": self.compressor,
                "georef": self.georef}

    @classmethod
    def from_json(cls, d: dict) -> StoreLayout:
        return cls(d["dataset"], int(d["n_tiles"]), int(d["tiles_per_shard"]),
                   {k: SensorLayout(**v) for k, v in d["sensors"].items()},
                   {k: LabelLayout(**v) for k, v in d["labels"].items()}, d.get("compressor", dict(COMPRESSOR)),
                   d.get("georef"))

    def tile_nbytes(self) -> int:
        """Uncompressed bytes of one tile slot (for throughput figures)."""
        n = 0
        for s in self.sensors.values():
            n += int(np.prod(s.tile_shape)) * np.dtype(s.dtype).itemsize + s.t_max * 4
            if s.mask_channels:
                n += s.t_max * s.mask_channels * s.height * s.width
        for lab in self.labels.values():
            n += int(np.prod(lab.shape or [1])) * np.dtype(lab.dtype).itemsize
        return n
