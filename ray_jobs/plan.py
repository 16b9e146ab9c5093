"""Data plans: what a job reads from each store, resolved once in the driver.

:func:`resolve_plans` opens every configured store, merges the config entry with the dataset
registry (batch size, weight, patch sizes, sensors) and with what the store says about itself
(:attr:`pipelines.store.StoreReader.meta`: tile size, stored bands, band statistics), and checks the
combination, naming the dataset on any mismatch. The result is one :class:`DataPlan` per dataset:
frozen, picklable plain data that travels to the Ray Train workers and Ray Data read tasks inside
their configs, so no worker ever reopens a store to find out what to read.

Splits: a config names a store split (``tiles/split`` values), an alias from the registry
(``DatasetSpec.split_folds``: PASTIS-HD ``train`` = fold1-3, ``val`` = fold4, ``test`` = fold5) or an
explicit list of store splits. How many tiles of each stored split every shard holds is counted
here, once, from ``tiles/split``; streams and ranks derive their epoch sizes from those counts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from anysat.sensors import get_sensor
from pipelines import store as st
from pipelines.datasets import get_dataset
from pipelines.store_meta import FORMAT_VERSION
from ray_jobs import normalization as nz
from ray_jobs.config import DatasetEntry, TrainConfig, store_url
from ray_jobs.timesteps import real_steps

__all__ = ["Band", "SensorPlan", "DataPlan", "Split", "resolve_plans", "split_aliases", "store_versions",
           "bands_float", "bands_mask", "store_group"]

Split = Union[str, tuple[str, ...]]
"""A split as configured: a name (store split or alias) or a tuple of store splits."""


@dataclass(frozen=True)
class Band:
    """One model band: stored band ``index``, or derived ``clip(num / (den + eps), -clip, clip)``
    from stored bands ``num`` and ``den`` (the S1/ALOS cross-polarisation ratio), or a ``filled`` slot
    the store has no band for (zero after normalisation and masked invalid: SICKLE's Landsat-8 in the
    official 11-slot ``l8`` layout, ``anysat.sensors.SlotSource``)."""

    name: str
    index: int | None = None
    num: int | None = None
    den: int | None = None
    eps: float = 0.0
    clip: float = 0.0
    filled: bool = False

    @property
    def derived(self) -> bool:
        return self.index is None and not self.filled


@dataclass(frozen=True)
class SensorPlan:
    """How one sensor's stored arrays become the model's input tensor."""

    key: str
    bands: tuple[Band, ...]
    """In the model's band order (``anysat.sensors``)."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    """Per model band, for normalisation; std is never 0."""
    time_series: bool
    context: bool
    """A context sensor (MODIS) contributes one token per sample, not one per patch."""
    t_max: int
    height: int
    width: int
    has_mask: bool
    """The store has a validity mask for this sensor's stored group."""
    store_key: str | None = None
    """The store group read when it is not ``key`` (a sensor assembled slot by slot from another)."""
    sources: tuple[str, ...] = ()
    """Per model band, where it comes from (``stored|derived|filled|missing ...``: the band plan,
    ``ray_jobs.normalization``)."""
    norm: str = ""
    """Which statistics mean/std are (``anysat``, ``pooled``, a fallback, a file)."""

    @property
    def stored(self) -> str:
        """The store group this sensor's arrays are read from."""
        return self.store_key or self.key

    @property
    def filled(self) -> bool:
        """Some model band is a filled slot: the loader builds a validity mask even without a stored one."""
        return any(b.filled for b in self.bands)


@dataclass(frozen=True)
class DataPlan:
    """Everything a job needs to read one dataset's store (see the module docstring)."""

    name: str
    url: str
    storage_options: dict[str, Any]
    sensors: dict[str, SensorPlan]
    """Sensors fed to the model, in the model's modality order."""
    split: Split
    val_split: Split | None
    """``None`` when the store lacks the configured validation split."""
    split_aliases: dict[str, tuple[str, ...]]
    """Every usable split name -> the stored splits it reads (see :func:`split_aliases`)."""
    split_counts: dict[str, tuple[int, ...]]
    """Stored split -> number of its tiles in each shard, in shard order."""
    batch_size: int
    weight: float
    patch_sizes_m: tuple[int, ...]
    tile_m: float
    crop: dict[str, int]
    temporal_dropout: float | int | None
    date_origin: str | None
    n_tiles: int
    tiles_per_shard: int
    provenance: dict[str, Any]
    format_version: int = FORMAT_VERSION
    """The store's own format version (a version-1 store still trains)."""

    @property
    def stored_splits(self) -> list[str]:
        return sorted(self.split_counts)

    def resolve_split(self, split: Split) -> tuple[str, ...]:
        """A split name (alias or not) or a list of stored splits -> the stored splits it reads."""
        if not isinstance(split, str):
            return tuple(split)
        return self.split_aliases.get(split, (split,))

    def has_split(self, split: Split | None) -> bool:
        """Whether ``split`` resolves to splits this store has."""
        return split is not None and _has(self.split_aliases, self.split_counts, split)

    def shard_counts(self, split: Split) -> np.ndarray:
        """Tiles of ``split`` in each shard (int64, one entry per shard)."""
        counts = np.zeros(-(-self.n_tiles // self.tiles_per_shard), np.int64)
        for s in self.resolve_split(split):
            if s in self.split_counts:
                counts += np.asarray(self.split_counts[s], np.int64)
        return counts

    @property
    def n_split(self) -> int:
        """Tiles of the training split."""
        return int(self.shard_counts(self.split).sum())

    def tokens_per_sample(self, patch_size_m: int) -> int:
        """Combiner tokens per sample: one per patch and sensor, plus one per context sensor."""
        n = int(self.tile_m // patch_size_m) ** 2
        ctx = sum(1 for s in self.sensors.values() if s.context)
        return n * (len(self.sensors) - ctx) + ctx

    def replace(self, **changes: Any) -> DataPlan:
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------- resolve
def resolve_plans(cfg: TrainConfig) -> dict[str, DataPlan]:
    """Dataset name -> plan. Raises ValueError with the dataset named on any mismatch."""
    plans = {}
    for e in cfg.data.datasets:
        plans[e.name] = p = _resolve(cfg, e)
        if p.n_split < cfg.num_workers:
            raise ValueError(f"{p.name}: split {p.split!r} has {p.n_split} tiles, fewer than "
                             f"the {cfg.num_workers} workers")
    return plans


def _resolve(cfg: TrainConfig, e: DatasetEntry) -> DataPlan:
    spec = get_dataset(e.name)
    url = store_url(cfg, e)
    so = dict(cfg.data.storage_options) if "://" in url else {}
    reader = st.StoreReader(url, so)
    meta = reader.meta
    stored = list(meta.sensors)
    sensors = list(e.sensors) if e.sensors else [s for s in spec.model_sensors if store_group(s, stored)]
    missing = [s for s in sensors if not store_group(s, stored)]
    if missing and set(missing) <= set(spec.optional_sensors):
        # an archive variant without an optional sensor (PASTIS-R has no SPOT) ingests fine; say so plainly
        raise ValueError(f"{e.name}: the config needs sensor(s) {missing} but store {url} has none (its archive "
                         f"lacks them, an optional sensor of {spec.name}; stored: {stored}); drop them from this "
                         "dataset entry's sensors or ingest the archive that has them")
    if missing or not sensors:
        raise ValueError(f"{e.name}: sensors {missing or sensors} not in store {url} (stored: {stored})")

    split_values = reader.splits()
    split_names = reader.split_names()
    aliases = split_aliases(e.name, split_names)
    split, val_split = _split(e.split), _split(e.val_split)
    _check_split(aliases, split_names, split, e.name, url)
    train_splits = aliases[split] if isinstance(split, str) else split
    tps = meta.tiles_per_shard
    starts = np.arange(0, meta.n_tiles, tps)
    counts = {name: tuple(int(c) for c in np.add.reduceat((split_values == name).astype(np.int64), starts))
              for name in split_names}

    tile_m = float(meta.tile_m if meta.tile_m is not None else spec.tile_m)
    patch_sizes = tuple(int(p) for p in (e.patch_sizes_m or meta.patch_sizes_m or spec.patch_sizes_m))
    bad = [p for p in patch_sizes if tile_m % p]
    if bad:
        raise ValueError(f"{e.name}: patch sizes {bad} do not divide the {tile_m:g} m tile")
    for s, size in e.crop.items():
        info = meta.sensors[store_group(s, stored)] if s in sensors else None
        if info is not None and size and size > min(info.height, info.width):
            raise ValueError(f"{e.name}: crop {size} px larger than the {s} image")
    sensor_plans = {s: _sensor_plan(reader, s, e.name, train_splits, cfg.data.normalization, e.allow_filled_bands)
                    for s in sensors}
    nz.check_allow(e.name, e.allow_filled_bands, sensor_plans)
    unknown_crop = sorted(set(e.crop) - set(sensors))
    if unknown_crop:
        raise ValueError(f"{e.name}: crop given for sensors not used: {unknown_crop}")
    has_val = val_split is not None and _has(aliases, split_names, val_split)
    return DataPlan(
        name=e.name, url=url, storage_options=so, sensors=sensor_plans, split=split,
        val_split=val_split if has_val else None, split_aliases=aliases, split_counts=counts,
        batch_size=int(e.batch_size or spec.batch_size), weight=float(e.weight or spec.weight),
        patch_sizes_m=patch_sizes, tile_m=tile_m, crop={k: int(v) for k, v in e.crop.items()},
        temporal_dropout=e.temporal_dropout, date_origin=e.date_origin, n_tiles=meta.n_tiles,
        tiles_per_shard=tps, provenance=_short_provenance(meta.provenance),
        format_version=meta.format_version)


def _split(split: str | list[str] | None) -> Split | None:
    return split if split is None or isinstance(split, str) else tuple(split)


# -------------------------------------------------------------------------------------------- splits
def split_aliases(dataset: str, stored: list[str]) -> dict[str, tuple[str, ...]]:
    """Split name -> the store's ``tiles/split`` values it stands for.

    Every stored split stands for itself; the registry's ``split_folds`` add logical names (PASTIS-HD:
    ``train`` = fold1-3, ``val`` = fold4, ``test`` = fold5) whose folds are all stored. A stored split
    of the same name wins over an alias."""
    out = {s: (s,) for s in stored}
    for name, parts in get_dataset(dataset).split_folds.items():
        if name not in out and parts and all(p in stored for p in parts):
            out[name] = tuple(parts)
    return out


def _has(aliases: dict, stored, split: Split) -> bool:
    if isinstance(split, str):
        return split in aliases
    return bool(split) and all(s in stored for s in split)


def _check_split(aliases: dict, stored: list[str], split: Split, dataset: str, url: str) -> None:
    if not _has(aliases, stored, split):
        extra = sorted(set(aliases) - set(stored))
        raise ValueError(f"{dataset}: split {split!r} not in store {url} (splits: {stored}"
                         + (f"; aliases: {extra}" if extra else "") + ")")


def _short_provenance(p: Any) -> dict:
    if not isinstance(p, dict):
        return {}
    return {k: v for k, v in p.items() if isinstance(v, (str, int, float)) and len(str(v)) < 200}


# ----------------------------------------------------------------------------------------- sensors
def store_group(key: str, stored) -> str | None:
    """The store group model sensor ``key`` is read from: ``key`` itself when stored, else the first
    stored sensor it can be assembled from slot by slot (``anysat.sensors.SlotSource``); None if neither."""
    if key in stored:
        return key
    return next((src.sensor for src in get_sensor(key).sources if src.sensor in stored), None)


def _sensor_plan(reader: st.StoreReader, key: str, dataset: str, split: tuple[str, ...], normalization: str = "anysat",
                 allow: tuple[str, ...] | list[str] = ()) -> SensorPlan:
    """Model bands of ``key``, where each comes from (stored index, derived or filled slot), and its mean/std
    (``normalization``: ``ray_jobs.normalization``); a filled or missing band not in ``allow`` is an error."""
    sensor = get_sensor(key)
    group = store_group(key, reader.meta.sensors) or key
    slots = next((src for src in sensor.sources if src.sensor == group), None) if group != key else None
    stored_bands = list(reader.meta.sensors[group].bands)
    stats = nz.stored_statistics(reader.meta, group, split, normalization, dataset)
    derived = {d.name: d for d in sensor.derived}
    sources: list[str] = []
    bands: list[Band] = []
    mean: list[float] = []
    std: list[float] = []
    for b in sensor.bands:
        src = b if slots is None else slots.stored_band(b)
        if slots is not None and src is None:  # a slot the archive has no band for: 0, masked invalid
            bands.append(Band(b, filled=True))
            sources.append(f"filled: {group} has no band for this slot (zero, masked invalid)")
            m, s = 0.0, 1.0
        elif src in stored_bands:
            i = stored_bands.index(src)
            bands.append(Band(b, index=i))
            sources.append(f"filled: {group}/{src} has no valid value in the statistics splits" if stats.count[i] == 0
                           else f"stored {group}/{src}")
            m, s = stats.mean[i], stats.std[i]
        elif b in derived:
            d = derived[b]
            if d.numerator not in stored_bands or d.denominator not in stored_bands:
                raise ValueError(f"{dataset}: cannot derive {key} band {b!r} from stored bands {stored_bands}")
            bands.append(Band(b, num=stored_bands.index(d.numerator), den=stored_bands.index(d.denominator),
                              eps=d.eps, clip=d.clip))
            sources.append(f"derived {d.numerator}/({d.denominator}+{d.eps:g}) of {group}")
            m = s = None
        else:  # zero-filled and masked if allowed (nz.check_bands below), else an error naming the band
            bands.append(Band(b, filled=True))
            sources.append(f"missing: not in {group} (stored: {', '.join(stored_bands)}), zero-filled and masked")
            m, s = 0.0, 1.0
        mean.append(np.nan if m is None else float(m))
        std.append(np.nan if s is None else float(s))
    info = reader.meta.sensors[group]
    plan = SensorPlan(key=key, bands=tuple(bands), mean=tuple(mean), std=tuple(std),
                      time_series=bool(sensor.time_series), context=bool(sensor.context), t_max=int(info.t_max),
                      height=int(info.height), width=int(info.width), has_mask=bool(info.mask_channels),
                      store_key=None if group == key else group, sources=tuple(sources), norm=stats.method)
    nz.check_bands(dataset, key, sensor.bands, sources, allow)
    if stats.method.startswith("file"):
        mean, std = nz.file_statistics(normalization, dataset, key, sensor.bands, reader.storage_options)
    if not all(np.isfinite(mean + std)):
        # Derived bands (and stores written without stats) get statistics from the first train shard:
        # deterministic, identical on every rank, and one shard read per dataset at start-up.
        mean, std = _estimate_stats(reader, plan, split, mean, std)
    return dataclasses.replace(plan, mean=tuple(mean), std=tuple(s if s > 0 else 1.0 for s in std))


def _estimate_stats(reader: st.StoreReader, plan: SensorPlan, split: tuple[str, ...], mean: list[float],
                    std: list[float]) -> tuple[list[float], list[float]]:
    key = plan.stored
    lo, hi = reader.shard_ranges()[0]
    block = reader.read(lo, hi, [key], labels=False, tiles=True)
    keep = np.isin(block["tiles/split"], split)
    x = bands_float(block[f"{key}/data"][keep], plan)
    mask = block.get(f"{key}/mask")
    valid = (real_steps(block[f"{key}/data"][keep], block[f"{key}/dates"][keep], None if mask is None else mask[keep])
             if plan.time_series else np.ones(x.shape[:2], bool))  # undated images count, padding does not
    vals = np.moveaxis(x[valid], 1, 0).reshape(len(plan.bands), -1) if valid.any() else None
    anysat = nz.sample_average(x, valid) if plan.norm == "anysat" and valid.any() else None
    mean, std = list(mean), list(std)
    for i in range(len(plan.bands)):
        if np.isfinite(mean[i]) and np.isfinite(std[i]):
            continue
        if vals is None or not vals.shape[1]:
            mean[i], std[i] = 0.0, 1.0
        elif anysat is not None and np.isfinite(anysat[0][i]):  # the per-sample method for derived bands too
            mean[i], std[i] = float(anysat[0][i]), float(anysat[1][i]) if np.isfinite(anysat[1][i]) else 1.0
        else:
            v = vals[i][np.isfinite(vals[i])]
            mean[i], std[i] = (float(v.mean()), float(v.std())) if v.size else (0.0, 1.0)
    return mean, std


def bands_float(x: np.ndarray, sp: SensorPlan) -> np.ndarray:
    """Raw stored bands (..., C_stored, H, W) -> float32 model bands incl. derived ratios (filled slots 0)."""
    out = np.empty(x.shape[:-3] + (len(sp.bands),) + x.shape[-2:], np.float32)
    for i, b in enumerate(sp.bands):  # each band written once, straight into its slot
        o = out[..., i, :, :]
        if b.filled:
            o[...] = 0.0
        elif not b.derived:
            o[...] = x[..., b.index, :, :]
        else:
            np.add(x[..., b.den, :, :], b.eps, out=o, dtype=np.float32)
            np.divide(x[..., b.num, :, :], o, out=o, dtype=np.float32)
            np.clip(o, -b.clip, b.clip, out=o)
    return out


def bands_mask(mask: np.ndarray | None, sp: SensorPlan, shape: tuple[int, ...]) -> np.ndarray:
    """Validity mask of a sensor with filled slots: the stored mask (..., 1|C_stored, H, W) or None
    (all valid) for stored data of ``shape`` (..., C_stored, H, W) -> (..., C_model, H, W) bool: a stored
    band keeps its channel, a derived one is valid where both inputs are, a filled slot never is."""
    lead, hw = tuple(shape[:-3]), tuple(shape[-2:])

    def ch(i: int) -> np.ndarray:
        if mask is None:
            return np.ones(lead + hw, bool)
        return mask[..., 0 if mask.shape[-3] == 1 else i, :, :].astype(bool)

    cols = [np.zeros(lead + hw, bool) if b.filled else ch(b.index) if not b.derived else ch(b.num) & ch(b.den)
            for b in sp.bands]
    return np.stack(cols, axis=-3)


# --------------------------------------------------------------------------------------- MLflow params
def store_versions(plans: dict[str, DataPlan]) -> dict[str, Any]:
    """Params describing the data (logged to MLflow): format version, size, provenance per store."""
    out: dict[str, Any] = {}
    for name, p in plans.items():
        pre = f"store.{name}."
        out[pre + "url"] = p.url
        out[pre + "format_version"] = p.format_version
        out[pre + "n_tiles"] = p.n_tiles
        out[pre + "n_train"] = p.n_split
        out[pre + "sensors"] = ",".join(p.sensors)
        for k, v in p.provenance.items():
            out[pre + "provenance." + k] = v
    return out
