"""Root attributes through :class:`pipelines.store_meta.StoreMeta`: format version 1 keys, both store kinds."""

from __future__ import annotations

import copy
import pickle

import pytest

from pipelines import store as st
from pipelines.store_layout import SensorLayout, StoreLayout
from pipelines.store_meta import EmbeddingMeta, StoreFormatError, StoreMeta, read_meta, update_meta

# Root attributes exactly as the ingest wrote them before StoreMeta existed (format_version 1).
V1_DATASET_ATTRS = {
    "format": "anysat-ray-store", "format_version": 1, "dataset": "planted", "task": "multiclass",
    "classes": ["a", "b"],
    "labels": {"species": {"task": "multiclass", "classes": ["a", "b"], "ignore_index": None, "shape": [],
                           "dtype": "<i8"}},
    "tile_m": 120, "patch_sizes_m": [30], "model_sensors": ["s2", "s1"],
    "sensors": {"s2": {"bands": ["B2", "B3"], "resolution_m": 10, "time_series": True, "t_max": 8, "channels": 2,
                       "height": 12, "width": 12, "dtype": "<f4", "mask_channels": 1},
                "s1": {"bands": ["VV", "VH"], "resolution_m": 10, "time_series": True, "t_max": 5, "channels": 2,
                       "height": 12, "width": 12, "dtype": "<f4", "mask_channels": None}},
    "n_tiles": 5, "tiles_per_shard": 2, "n_shards": 3,
    "compressor": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}, "status": "complete",
    "provenance": {"source": "/raw", "planned": "2025-01-01T00:00:00Z", "versions": {"python": "3.11.9"},
                   "host": "h", "finished": "2025-01-01T00:01:00Z"},
    "stats": {k: {"bands": ["x", "y"], "count": [4, 0], "sum": [2.0, 0.0], "sumsq": [2.0, 0.0], "min": [0.0, None],
                  "max": [1.0, None], "nan_count": [0, 3], "mean": [0.5, None], "std": [0.5, None],
                  "splits": ["train"]} for k in ("s2", "s1")},
    "stats_splits": ["train"],
    "shards": [{"shard": i, "start": 2 * i, "stop": min(5, 2 * i + 2), "tiles": 2 - (i == 2), "written": 2 - (i == 2),
                "bytes": 100} for i in range(3)],
    "quarantine": [{"tile": "9", "split": "val", "file": "/raw/val/9", "reason": "bad", "stage": "probe", "index": 7}],
    "n_listed": 6, "n_written": 5,
}


def _embedding_store(url: str) -> StoreMeta:
    layout = StoreLayout("planted", 3, 2, {"anysat-tile": SensorLayout(
        "anysat-tile", 1, 4, 1, 1, "float32", [f"e{i}" for i in range(4)], 120.0, False)})
    meta = StoreMeta.for_layout(layout, task="multiclass", tile_m=120.0, embedding=EmbeddingMeta(
        source_store="/stores/planted.zarr", model="encoder scratch tiny", output="tile", patch_size_m=30.0,
        splits=("test",), sensors=("s2",)))
    st.create_store(url, layout, meta)
    return meta


def test_v1_dataset_attrs_round_trip_unchanged():
    meta = StoreMeta.from_attrs(copy.deepcopy(V1_DATASET_ATTRS))
    assert meta.to_attrs() == V1_DATASET_ATTRS and list(meta.to_attrs()) == list(V1_DATASET_ATTRS)
    assert meta.sensors["s2"].bands == ("B2", "B3") and meta.sensors["s1"].mask_channels is None
    assert meta.labels["species"].shape == () and meta.n_shards == 3 and meta.complete
    assert meta.stats["s2"].mean == (0.5, None) and meta.stats_splits == ("train",)
    arrays = meta.stats["s1"].arrays()
    assert arrays["count"].dtype.kind == "i" and arrays["std"][1] != arrays["std"][1]  # None -> NaN


def test_embeddings_store_keeps_its_own_keys(tmp_path):
    url = str(tmp_path / "emb.zarr")
    meta = _embedding_store(url)
    attrs = read_meta(url).to_attrs()
    assert set(attrs) == {"format", "format_version", "dataset", "task", "labels", "tile_m", "sensors", "n_tiles",
                          "tiles_per_shard", "n_shards", "status", "embedding"}
    assert attrs["sensors"]["anysat-tile"] == {"bands": ["e0", "e1", "e2", "e3"], "resolution_m": 120.0,
                                               "time_series": False, "t_max": 1, "channels": 4, "height": 1,
                                               "width": 1, "dtype": "float32", "mask_channels": None}
    with pytest.raises(ValueError, match="not finished"):
        st.StoreReader(url)
    assert st.StoreReader(url, require_complete=False).meta == meta
    update_meta(url, status="complete")
    r = pickle.loads(pickle.dumps(st.StoreReader(url)))
    assert r.meta.embedding.output == "tile" and r.meta.embedding.splits == ("test",)
    assert r.meta.stats is None and r.sensors == ["anysat-tile"] and len(r) == 3 and r.tiles_per_shard == 2


def test_meta_must_match_the_layout_and_the_format(tmp_path):
    layout = StoreLayout("x", 4, 2, {})
    with pytest.raises(ValueError, match="do not match the layout"):
        st.create_store(str(tmp_path / "a.zarr"), layout, StoreMeta("x", 5, 2, {}))
    with pytest.raises(StoreFormatError, match="format_version 3"):
        StoreMeta.from_attrs({**V1_DATASET_ATTRS, "format_version": 3})
    # version 1 (no georeference) stays readable and keeps its version when its attributes are rewritten
    v1 = StoreMeta.from_attrs(copy.deepcopy(V1_DATASET_ATTRS))
    assert v1.format_version == 1 and v1.georef is None
    assert v1.replace(status="complete").to_attrs()["format_version"] == 1
