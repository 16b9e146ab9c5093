"""The one registry of datasets: what each archive holds and how the model uses it.

The ingest job, the trainer and the fine-tuning configs read everything dataset-specific from here
(sensors, tile size, acceptable patch sizes, task, classes, split conventions, the raw reader). Sensor
keys refer to ``anysat.sensors``, which registers every sensor an archive carries (store-only ones
included), so there is still one place that knows a sensor's bands. How each archive is laid out and
what its reader converts (dates, band order, resampling, official vs. AnySat splits) is written in the
reader's docstring, ``pipelines/sources/<dataset>.py``.

Adding a dataset takes three files and no edit here:

* a reader, a :class:`pipelines.sources.base.Source` subclass in ``<package>/sources/<module>.py``;
* a sample generator ``<package>/samplegen/<module>.py`` exposing
  ``write_sample(root, tiles=None, seed=0)`` that writes a miniature archive in the real layout
  (found by that naming convention: the module named like the reader's, in a ``samplegen`` package
  beside the reader's package; see :func:`pipelines.samplegen.get_generator`);
* a :func:`register_dataset` call. Inside this repository it goes below; from another package it is
  announced through the :data:`ENTRY_POINT_GROUP` entry point group::

      # pyproject.toml of the other package
      [project.entry-points."anysat_ray.datasets"]
      toy = "toy_pkg.datasets:register"      # a function that calls register_dataset (or returns the
                                             # DatasetSpec), or a module that calls it on import

  Entry points are loaded lazily, the first time a name is not found or the datasets are listed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

from anysat.sensors import get_sensor

Task = Literal["multilabel", "multiclass", "segmentation", "none"]

#: Entry point group through which other packages register datasets.
ENTRY_POINT_GROUP = "anysat_ray.datasets"


@dataclass(frozen=True)
class LabelSpec:
    name: str
    task: Task
    classes: tuple[str, ...]
    ignore_index: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    sensors: tuple[str, ...]
    """Sensor keys stored, in the model's modality order (store-only extras last)."""
    model_sensors: tuple[str, ...]
    """Sensors fed to AnySat (the official GeoPlex modality order): stored sensors, or sensors the loader
    assembles from a stored one slot by slot (``anysat.sensors.SlotSource``: SICKLE's ``l8`` from ``l8-sr``)."""
    tile_m: float
    patch_sizes_m: tuple[int, ...]
    labels: tuple[LabelSpec, ...]
    source: str
    """``module:Class`` of the raw reader, imported lazily (readers pull in h5py, rasterio...)."""
    tiles_per_shard: int = 256
    batch_size: int = 8
    weight: float = 1.0
    group: Literal["geoplex", "external"] = "geoplex"
    split_folds: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Logical split name -> the stored splits (``tiles/split`` values) it stands for, for archives that
    store folds rather than train/val/test (PASTIS-HD: train = fold1-3, val = fold4, test = fold5)."""
    stats_splits: tuple[str, ...] = ("train",)
    """Stored splits the store's normalisation statistics are computed over (the training tiles)."""
    max_dates: int | None = None
    """Longest plausible series (T) of any sensor of one tile; a tile with more dates is quarantined at
    the ingest's probe instead of widening ``T_max`` (and every tile's storage) for the whole store.
    ``None``: no bound. The built-in datasets set it a safe margin above the longest series their
    published archives hold (``docs/store-format.md``, Quarantine); ``python -m pipelines.ingest --max-dates``
    overrides it."""
    optional_sensors: tuple[str, ...] = ()
    """Stored sensors some tiles, or a whole archive variant, may lack (PASTIS-R: no SPOT): such a tile is
    stored with the sensor absent (dates -1, mask False). The store counts the tiles that have each sensor
    (``SensorMeta.n_tiles``) and the ingest warns when a sensor not listed here is missing from some tiles."""
    archive_bands: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Sensor -> every channel this archive holds, in file order, where that is more than the sensor
    registry's bands (PASTIS' descending S1 also ships VV-VH in dB): the store keeps them all and the loader
    picks the model's bands by name."""

    def __post_init__(self):
        module, sep, cls = self.source.partition(":")
        if not (module and sep and cls):
            raise ValueError(f"dataset {self.name!r}: source must be 'module:Class', got {self.source!r}")
        if not self.stats_splits:
            raise ValueError(f"dataset {self.name!r}: stats_splits is empty")
        if self.max_dates is not None and (isinstance(self.max_dates, bool) or not isinstance(self.max_dates, int)
                                           or self.max_dates < 1):
            raise ValueError(f"dataset {self.name!r}: max_dates must be a positive integer or None, "
                             f"got {self.max_dates!r}")
        missing = [s for s in self.model_sensors if s not in self.sensors
                   and not any(src.sensor in self.sensors for src in get_sensor(s).sources)]
        if missing:
            raise ValueError(f"dataset {self.name!r}: model sensors {missing} are not stored sensors "
                             "(nor assembled from one)")
        unknown = sorted((set(self.optional_sensors) | set(self.archive_bands)) - set(self.sensors))
        if unknown:
            raise ValueError(f"dataset {self.name!r}: optional_sensors / archive_bands name sensors {unknown} that "
                             "are not stored sensors")
        object.__setattr__(self, "optional_sensors", tuple(self.optional_sensors))
        object.__setattr__(self, "archive_bands", {k: tuple(v) for k, v in self.archive_bands.items()})
        # tuples, so a spec compares and pickles the same however it was written
        object.__setattr__(self, "split_folds", {k: tuple(v) for k, v in self.split_folds.items()})
        object.__setattr__(self, "stats_splits", tuple(self.stats_splits))

    @property
    def task(self) -> Task:
        return self.labels[0].task if self.labels else "none"

    @property
    def source_module(self) -> str:
        return self.source.partition(":")[0]

    @property
    def generator_module(self) -> str:
        """Module of the sample generator: the reader's module name in a ``samplegen`` package beside the
        reader's package (``pipelines.sources.planted`` -> ``pipelines.samplegen.planted``)."""
        package, _, module = self.source_module.rpartition(".")
        parent = package.rpartition(".")[0]
        return f"{parent}.samplegen.{module}" if parent else f"samplegen.{module}"

    def source_class(self):
        module, _, cls = self.source.partition(":")
        return getattr(importlib.import_module(module), cls)


DATASETS: dict[str, DatasetSpec] = {}
_loaded_entry_points: set[tuple[str, str]] = set()


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to the registry; a name can be registered once."""
    if spec.name in DATASETS:
        where = DATASETS[spec.name].source
        raise ValueError(f"dataset {spec.name!r} is already registered (reader {where}); dataset names are "
                         "unique, choose another name")
    DATASETS[spec.name] = spec
    return spec


def load_entry_points() -> None:
    """Register the datasets other packages announce in the :data:`ENTRY_POINT_GROUP` group (once each).

    An entry point's object is loaded (which imports its module); if it is callable it is called without
    arguments, and a :class:`DatasetSpec` (or an iterable of them) it returns is registered. So both a
    module that calls :func:`register_dataset` at import and a ``register()`` function work.
    """
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key in _loaded_entry_points:
            continue
        _loaded_entry_points.add(key)  # first, so a failing plugin is reported once, not on every lookup
        try:
            obj = ep.load()
            result = obj() if callable(obj) else None
        except Exception as e:
            raise RuntimeError(f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}) failed: "
                               f"{type(e).__name__}: {e}") from e
        specs: Iterable[Any] = (result,) if isinstance(result, DatasetSpec) else (
            result if isinstance(result, (list, tuple)) else ())
        for spec in specs:
            if not isinstance(spec, DatasetSpec):
                raise TypeError(f"entry point {ep.name} = {ep.value} returned {type(spec).__name__}, "
                                "not a DatasetSpec")
            if DATASETS.get(spec.name) is not spec:
                register_dataset(spec)


def dataset_names() -> list[str]:
    """Every registered dataset, those of other packages included, sorted."""
    load_entry_points()
    return sorted(DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        load_entry_points()
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}") from None


TREESAT_CLASSES = ("Abies", "Acer", "Alnus", "Betula", "Cleared", "Fagus", "Fraxinus", "Larix", "Picea",
                   "Pinus", "Populus", "Prunus", "Pseudotsuga", "Quercus", "Tilia")
PASTIS_CLASSES = ("Background", "Meadow", "Soft winter wheat", "Corn", "Winter barley", "Winter rapeseed",
                  "Spring barley", "Sunflower", "Grapevine", "Beet", "Winter triticale", "Winter durum wheat",
                  "Fruits, vegetables, flowers", "Potatoes", "Leguminous fodder", "Soybeans", "Orchard",
                  "Mixed cereal", "Sorghum", "Void label")
FLAIR_CLASSES = ("building", "pervious surface", "impervious surface", "bare soil", "water", "coniferous",
                 "deciduous", "brushwood", "vineyard", "herbaceous vegetation", "agricultural land",
                 "plowed land", "other")
FLAIR_NOMENCLATURE = ("none", "building", "pervious surface", "impervious surface", "bare soil", "water",
                      "coniferous", "deciduous", "brushwood", "vineyard", "herbaceous vegetation",
                      "agricultural land", "plowed land", "swimming pool", "snow", "clear cut", "mixed",
                      "ligneous", "greenhouse", "other")
PLANTED_CLASSES = (
    "Elaeis guineensis", "Pinus taeda", "Pinus rigida", "Pinus koraiensis", "Pinus densiflora",
    "Abies sachalinensis", "Pinus elliottii", "Shorea robusta", "Castanea crenata", "Pseudotsuga menziesii",
    "Eucalyptus globulus", "Pinus radiata", "Robinia pseudoacacia", "Pinus thunbergii", "Pinus echinata",
    "Thea sinensis", "Betula pendula", "Hevea brasiliensis", "Picea glehnii", "Quercus acutissima",
    "Eucalyptus nitens", "Cocos nucifera", "Anacardium occidentale", "Zelkova serrata", "Acer pictum",
    "Prunus serrulata", "Prunus dulcis", "Picea jezoensis", "Quercus variabilis", "Fraxinus rhynchophylla",
    "Ginkgo biloba", "Pasania edulis", "Dendropanax morbiferus", "Machilus thunbergii", "Cryptomeria japonica",
    "Acacia melanoxylon", "Malus pumila", "Picea mariana", "Cornus controversa", "Theobroma cacao")

register_dataset(DatasetSpec(
    "treesatai-ts", sensors=("aerial", "s2", "s1-asc", "s1-des"), model_sensors=("aerial", "s2", "s1-asc"),
    optional_sensors=("s1-asc", "s1-des"), tile_m=60, patch_sizes_m=(10, 20), batch_size=128, weight=1.0,
    labels=(LabelSpec("genus", "multilabel", TREESAT_CLASSES),
            # area fraction per genus (the raw label); "genus" is its AnySat multi-hot (> 0.07)
            LabelSpec("genus_fraction", "multilabel", TREESAT_CLASSES)),
    source="pipelines.sources.treesatai:TreeSatAITS", max_dates=256))
register_dataset(DatasetSpec(
    "pastis-hd", sensors=("spot", "s2", "s1", "s1-des"), model_sensors=("spot", "s2", "s1"),
    # PASTIS-R (what most users hold) is PASTIS-HD without DATA_SPOT; the descending S1 keeps its 3 channels
    optional_sensors=("spot",), archive_bands={"s1-des": ("VV", "VH", "VV/VH")},
    tile_m=1280, patch_sizes_m=(40, 80, 160), batch_size=1, weight=1.0, tiles_per_shard=16,
    labels=(LabelSpec("semantic", "segmentation", PASTIS_CLASSES, ignore_index=19),
            LabelSpec("classes", "multilabel", PASTIS_CLASSES[1:19])),
    source="pipelines.sources.pastis:PastisHD",
    # tiles/split holds the official fold ("fold1".."fold5"); the standard protocol maps folds to splits
    split_folds={"train": ("fold1", "fold2", "fold3"), "val": ("fold4",), "test": ("fold5",)},
    stats_splits=("fold1", "fold2", "fold3"), max_dates=128))
register_dataset(DatasetSpec(
    "flair", sensors=("aerial-flair", "s2"), model_sensors=("aerial-flair", "s2"),
    tile_m=100, patch_sizes_m=(10, 20), batch_size=32, weight=1.0, tiles_per_shard=64,
    labels=(LabelSpec("semantic", "segmentation", FLAIR_CLASSES, ignore_index=12),
            # the raw 1..19 nomenclature (value 0 does not occur), kept so other mappings stay possible
            LabelSpec("nomenclature", "segmentation", FLAIR_NOMENCLATURE, ignore_index=0)),
    source="pipelines.sources.flair:Flair", max_dates=256))
register_dataset(DatasetSpec(
    "planted", sensors=("s2", "s1", "l7", "alos", "modis"), model_sensors=("s2", "s1", "l7", "alos", "modis"),
    tile_m=120, patch_sizes_m=(30,), batch_size=256, weight=2.0, tiles_per_shard=1024,
    labels=(LabelSpec("species", "multiclass", PLANTED_CLASSES),),
    source="pipelines.sources.planted:Planted", max_dates=128))
register_dataset(DatasetSpec(
    "s2naip-urban", sensors=("naip", "l8", "s2", "s1"), model_sensors=("naip", "l8", "s2", "s1"),
    optional_sensors=("l8", "s1"),
    tile_m=640, patch_sizes_m=(40, 80, 160), batch_size=2, weight=4.0, tiles_per_shard=16,
    labels=(), source="pipelines.sources.s2naip:S2NaipUrban", max_dates=128))


# -- external evaluation datasets (patch sizes: the AnySat paper's fine-tuning protocol) ------------------
LCZ_CLASSES = ("compact high-rise", "compact mid-rise", "compact low-rise", "open high-rise", "open mid-rise",
               "open low-rise", "lightweight low-rise", "large low-rise", "sparsely built", "heavy industry",
               "dense trees", "scattered trees", "bush, scrub", "low plants", "bare rock or paved",
               "bare soil or sand", "water")
# Best-effort names (the archive ships numbered class folders only); the stored label is the folder number.
TIMESEN2CROP_CLASSES = ("Legumes", "Grassland", "Maize", "Potato", "Sunflower", "Soy", "Winter barley",
                        "Winter caraway", "Rye", "Rapeseed", "Beet", "Spring cereals", "Winter wheat",
                        "Winter triticale", "Permanent plantation", "Other crops")
SICKLE_MASK_BANDS = ("plot_id", "crop_type", "sowing_day", "transplanting_day", "harvesting_day", "yield")

register_dataset(DatasetSpec(
    "bradd-s1ts", sensors=("s1",), model_sensors=("s1",), tile_m=480, patch_sizes_m=(40,), batch_size=8,
    tiles_per_shard=64, group="external",
    labels=(LabelSpec("deforest_new", "segmentation", ("not deforested", "deforested")),   # label[1]: AnySat
            LabelSpec("deforest_old", "segmentation", ("not deforested", "deforested")),   # label[0]
            # days since 1970 of the two label dates (old, new); kept so the change window is recoverable
            LabelSpec("label_dates", "none", ("old", "new"))),
    source="pipelines.sources.bradd:BraDDS1TS", max_dates=128))
register_dataset(DatasetSpec(
    # the model's l8 is assembled from the stored l8-sr in the official 11-slot layout (anysat.sensors)
    "sickle", sensors=("s2", "s1", "l8-sr", "s2-aux"), model_sensors=("l8", "s2", "s1"), tile_m=320,
    optional_sensors=("s2", "s1", "l8-sr", "s2-aux"),  # a uid has the acquisitions it has
    patch_sizes_m=(10,), batch_size=12, tiles_per_shard=64, group="external",
    labels=(LabelSpec("paddy", "segmentation", ("paddy", "non-paddy"), ignore_index=-1),
            LabelSpec("masks_10m", "none", SICKLE_MASK_BANDS)),
    source="pipelines.sources.sickle:Sickle", max_dates=128))
register_dataset(DatasetSpec(
    "timesen2crop", sensors=("s2", "s2-flag"), model_sensors=("s2",), tile_m=10, patch_sizes_m=(10,),
    batch_size=2048, tiles_per_shard=4096, group="external",
    labels=(LabelSpec("crop", "multiclass", TIMESEN2CROP_CLASSES),),
    source="pipelines.sources.timesen2crop:TimeSen2Crop", max_dates=256))
register_dataset(DatasetSpec(
    "sen1floods11", sensors=("s2", "s1", "s2-aux"), model_sensors=("s2", "s1"), tile_m=5120,
    patch_sizes_m=(80,), batch_size=4, tiles_per_shard=8, group="external",
    labels=(LabelSpec("water", "segmentation", ("not water", "water"), ignore_index=-1),),
    source="pipelines.sources.sen1floods11:Sen1Floods11", max_dates=1))
register_dataset(DatasetSpec(
    "so2sat", sensors=("s2", "s1", "s1-so2sat"), model_sensors=("s2", "s1"), tile_m=320, patch_sizes_m=(80,),
    batch_size=128, tiles_per_shard=1024, group="external",
    labels=(LabelSpec("lcz", "multiclass", LCZ_CLASSES),),
    source="pipelines.sources.so2sat:So2Sat", max_dates=1))
register_dataset(DatasetSpec(
    "hls-burn-scars", sensors=("hls",), model_sensors=("hls",), tile_m=15360, patch_sizes_m=(240,),
    batch_size=4, tiles_per_shard=8, group="external",
    labels=(LabelSpec("burn", "segmentation", ("not burned", "burn scar"), ignore_index=-1),),
    source="pipelines.sources.hls_burn_scars:HLSBurnScars", max_dates=1))
