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

# Sensors of the six external evaluation datasets (raw-formats §6-§11), registered here rather than in
# model code: the model builds a projector for any registered key.
# HLS Burn Scars: 6 HLS bands at 30 m; AnySat trains a new LTAE projector for it (T0 366, spec §4.5).
register_sensor(Sensor("hls", 30, ("B02", "B03", "B04", "B8A", "B11", "B12"), True, "ltae", subpatch_m=30,
                       reduce_scale=3, t0=366))
# Landsat-8 Collection-2 L2 as SICKLE ships it (surface reflectance + surface temperature). SICKLE's
# loaders nearest-resize every band to the 32 x 32 10 m label grid, so the stored grid is 10 m.
register_sensor(Sensor("l8-sr", 10, ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7", "ST_B10"),
                       True, "ltae", subpatch_m=10, t0=366, dropout=0.0))
# Store-only: the S2 bands the model's 10-band ``s2`` leaves out (60 m aerosol / water vapour / cirrus),
# kept so L1C/L2A archives that ship them (Sen1Floods11: 13 bands, SICKLE: B1, B9) stay lossless.
register_sensor(Sensor("s2-aux", 10, ("B1", "B9", "B10"), True, "ltae", subpatch_m=10))
# Store-only: TimeSen2Crop's per-date quality flag (0 clear, 1 cloud, 2 shadow, 3 snow).
register_sensor(Sensor("s2-flag", 10, ("Flag",), True, "ltae", subpatch_m=10))
# Store-only: So2Sat LCZ42 ``sen1`` as in the file (complex SLC parts, Lee-filtered intensities and
# covariance); the model's ``s1`` gets channels [2, 0] (real parts of VV and VH), as AnySat does.
register_sensor(Sensor("s1-so2sat", 10, ("VH_re", "VH_im", "VV_re", "VV_im", "VH_lee", "VV_lee", "C12_re",
                                         "C12_im"), True, "ltae", subpatch_m=10))

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


# -- external evaluation datasets (issue 7; raw-formats §6-§11, patch sizes from anysat-model §4.5) -----
LCZ_CLASSES = ("compact high-rise", "compact mid-rise", "compact low-rise", "open high-rise", "open mid-rise",
               "open low-rise", "lightweight low-rise", "large low-rise", "sparsely built", "heavy industry",
               "dense trees", "scattered trees", "bush, scrub", "low plants", "bare rock or paved",
               "bare soil or sand", "water")
# Best-effort names (raw-formats §8, low confidence); the stored label is the class folder number.
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
    source="pipelines.sources.bradd:BraDDS1TS"))
register_dataset(DatasetSpec(
    "sickle", sensors=("s2", "s1", "l8-sr", "s2-aux"), model_sensors=("l8-sr", "s2", "s1"), tile_m=320,
    patch_sizes_m=(10,), batch_size=12, tiles_per_shard=64, group="external",
    labels=(LabelSpec("paddy", "segmentation", ("paddy", "non-paddy"), ignore_index=-1),
            LabelSpec("masks_10m", "none", SICKLE_MASK_BANDS)),
    source="pipelines.sources.sickle:Sickle",
    # Not lossless: every band is nearest-resized to the 32 x 32 10 m grid, as all SICKLE loaders do.
    # SICKLE's test labels are withheld, so AnySat evaluates on "val"; AnySat feeds L8 to the l8 projector
    # in 11 slots [pad, SR_B1..SR_B7, pad, ST_B10, pad] (pads masked).
    extra={"grid_px": 32, "resample": "nearest (cv2 INTER_NEAREST convention: src = floor(dst * in / out))",
           "anysat_splits": {"train": "train", "val": "val", "test": "val"},
           "anysat_l8_slots": ("pad", "SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7", "pad",
                               "ST_B10", "pad")}))
register_dataset(DatasetSpec(
    "timesen2crop", sensors=("s2", "s2-flag"), model_sensors=("s2",), tile_m=10, patch_sizes_m=(10,),
    batch_size=2048, tiles_per_shard=4096, group="external",
    labels=(LabelSpec("crop", "multiclass", TIMESEN2CROP_CLASSES),),
    source="pipelines.sources.timesen2crop:TimeSen2Crop",
    # splits: AnySat's tile protocol (val 33TWN, test 33UVP, train the other 2017-18 tiles); the 2019
    # agronomic-year folders are the authors' temporal-transfer test set, stored as "test-2019".
    extra={"anysat_tiles": {"val": ("33TWN",), "test": ("33UVP",)},
           "official_splits": {"train": ("train", "val", "test"), "test": ("test-2019",)}}))
register_dataset(DatasetSpec(
    "sen1floods11", sensors=("s2", "s1", "s2-aux"), model_sensors=("s2", "s1"), tile_m=5120,
    patch_sizes_m=(80,), batch_size=4, tiles_per_shard=8, group="external",
    labels=(LabelSpec("water", "segmentation", ("not water", "water"), ignore_index=-1),),
    source="pipelines.sources.sen1floods11:Sen1Floods11",
    extra={"held_out": ("bolivia",)}))
register_dataset(DatasetSpec(
    "so2sat", sensors=("s2", "s1", "s1-so2sat"), model_sensors=("s2", "s1"), tile_m=320, patch_sizes_m=(80,),
    batch_size=128, tiles_per_shard=1024, group="external",
    labels=(LabelSpec("lcz", "multiclass", LCZ_CLASSES),),
    source="pipelines.sources.so2sat:So2Sat",
    # AnySat's So2Sat ratio uses eps 1e-4 (the registry's s1 ratio uses 1e-10)
    extra={"s1_from_sen1_channels": (2, 0), "anysat_ratio_eps": 1e-4}))
register_dataset(DatasetSpec(
    "hls-burn-scars", sensors=("hls",), model_sensors=("hls",), tile_m=15360, patch_sizes_m=(240,),
    batch_size=4, tiles_per_shard=8, group="external",
    labels=(LabelSpec("burn", "segmentation", ("not burned", "burn scar"), ignore_index=-1),),
    source="pipelines.sources.hls_burn_scars:HLSBurnScars",
    # stored splits follow AnySat/PANGAEA (val = 10 % of training/, sklearn seed 23; test = validation/);
    # the official two-way split is their union as below
    extra={"official_splits": {"training": ("train", "val"), "validation": ("test",)},
           "anysat_val": "train_test_split(np.arange(n_sorted_training), test_size=0.1, random_state=23)"}))
