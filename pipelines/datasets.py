"""The one registry of datasets: what each archive holds and how the model uses it.

The ingest job, the trainer and the fine-tuning configs read everything dataset-specific from here
(sensors, tile size, acceptable patch sizes, task, classes, the raw reader). Sensor keys refer to
``anysat.sensors``; store-only sensors an archive carries (e.g. TreeSatAI's descending S1 orbit) are
registered there too, so there is still one place that knows a sensor's bands.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Literal

from anysat.sensors import Sensor, register_sensor

# Store-only sensors that GeoPlex archives carry but the released model has no projector for.
register_sensor(Sensor("s1-des", 10, ("VV", "VH"), True, "ltae", subpatch_m=10))

Task = Literal["multilabel", "multiclass", "segmentation", "none"]


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
    """Sensors fed to AnySat (the official GeoPlex modality order)."""
    tile_m: float
    patch_sizes_m: tuple[int, ...]
    labels: tuple[LabelSpec, ...]
    source: str
    """``module:Class`` of the raw reader, imported lazily (readers pull in h5py, rasterio...)."""
    tiles_per_shard: int = 256
    batch_size: int = 8
    weight: float = 1.0
    group: Literal["geoplex", "external"] = "geoplex"
    extra: dict = field(default_factory=dict)

    @property
    def task(self) -> Task:
        return self.labels[0].task if self.labels else "none"

    def source_class(self):
        module, cls = self.source.split(":")
        return getattr(importlib.import_module(module), cls)


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
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
    tile_m=60, patch_sizes_m=(10, 20), batch_size=128, weight=1.0,
    labels=(LabelSpec("genus", "multilabel", TREESAT_CLASSES),
            # area fraction per genus (the raw label); "genus" is its AnySat multi-hot (> 0.07)
            LabelSpec("genus_fraction", "multilabel", TREESAT_CLASSES)),
    source="pipelines.sources.treesatai:TreeSatAITS"))
register_dataset(DatasetSpec(
    "pastis-hd", sensors=("spot", "s2", "s1", "s1-des"), model_sensors=("spot", "s2", "s1"),
    tile_m=1280, patch_sizes_m=(40, 80, 160), batch_size=1, weight=1.0, tiles_per_shard=16,
    labels=(LabelSpec("semantic", "segmentation", PASTIS_CLASSES, ignore_index=19),
            LabelSpec("classes", "multilabel", PASTIS_CLASSES[1:19])),
    source="pipelines.sources.pastis:PastisHD",
    # tiles/split holds the official fold ("fold1".."fold5"); the standard protocol maps folds to splits
    extra={"split_folds": {"train": ("fold1", "fold2", "fold3"), "val": ("fold4",), "test": ("fold5",)},
           "stats_splits": ("fold1", "fold2", "fold3")}))
register_dataset(DatasetSpec(
    "flair", sensors=("aerial-flair", "s2"), model_sensors=("aerial-flair", "s2"),
    tile_m=100, patch_sizes_m=(10, 20), batch_size=32, weight=1.0, tiles_per_shard=64,
    labels=(LabelSpec("semantic", "segmentation", FLAIR_CLASSES, ignore_index=12),
            # the raw 1..19 nomenclature (value 0 does not occur), kept so other mappings stay possible
            LabelSpec("nomenclature", "segmentation", FLAIR_NOMENCLATURE, ignore_index=0)),
    source="pipelines.sources.flair:Flair",
    extra={"s2_crop_px": 10}))
register_dataset(DatasetSpec(
    "planted", sensors=("s2", "s1", "l7", "alos", "modis"), model_sensors=("s2", "s1", "l7", "alos", "modis"),
    tile_m=120, patch_sizes_m=(30,), batch_size=256, weight=2.0, tiles_per_shard=1024,
    labels=(LabelSpec("species", "multiclass", PLANTED_CLASSES),),
    source="pipelines.sources.planted:Planted"))
register_dataset(DatasetSpec(
    "s2naip-urban", sensors=("naip", "l8", "s2", "s1"), model_sensors=("naip", "l8", "s2", "s1"),
    tile_m=640, patch_sizes_m=(40, 80, 160), batch_size=2, weight=4.0, tiles_per_shard=16,
    labels=(), source="pipelines.sources.s2naip:S2NaipUrban",
    # 20 m S2 bands and 30 m-class Landsat bands arrive on a 32 x 32 grid; the reader replicates each pixel
    # 2 x 2 to the 64 x 64 grid (x[..., ::2, ::2] recovers the archive; AnySat resizes them bilinearly)
    extra={"upsampled": {"s2": {"bands": ("B5", "B6", "B7", "B8A", "B11", "B12"), "factor": 2, "method": "nearest"},
                         "l8": {"bands": ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11"),
                                "factor": 2, "method": "nearest"}}}))
