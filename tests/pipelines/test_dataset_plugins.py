"""A dataset from another package: reader, sample generator and registration live outside this
repository and are found through the ``anysat_ray.datasets`` entry point group.

The toy package is written into ``tmp_path`` with a ``.dist-info`` folder beside it (what ``pip install``
would leave in site-packages), put on ``sys.path``, and then used exactly as a built-in dataset:
sample archive, Ray Data ingest job (local executor), store reader. Nothing in the repository changes.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipelines import datasets
from pipelines.datasets import ENTRY_POINT_GROUP, DatasetSpec, LabelSpec, dataset_names, get_dataset
from pipelines.ingest import run_ingest
from pipelines.ingest_plan import ordered_listing
from pipelines.samplegen import generator_available, get_generator
from pipelines.store import StoreReader

TOY_FILES = {
    "toy_pkg/__init__.py": "",
    "toy_pkg/sources/__init__.py": "",
    "toy_pkg/sources/toy.py": '''
        """Toy archive: ``tiles.json`` = [{"id", "split", "days": [...], "kind"}], ``<id>.npy`` = (T, 10, 4, 4)."""
        import json

        import numpy as np

        from pipelines.sources.base import SensorArray, Source, Tile, TileError, TileRef


        class ToyReader(Source):
            name = "toy"

            def list_tiles(self):
                with self.open("tiles.json", mode="r") as f:
                    rows = json.load(f)
                return [TileRef(r["id"], r["split"], {"days": r["days"], "kind": r["kind"]}) for r in rows]

            def read_tile(self, ref):
                data = np.load(self.local_or_buffer(f"{ref.id}.npy"), allow_pickle=False)
                days = np.asarray(ref.info["days"], np.int32)
                if data.shape[0] != days.shape[0]:
                    raise TileError(self.path(f"{ref.id}.npy"), f"{data.shape[0]} images, {days.shape[0]} dates")
                return Tile(ref.id, ref.split, {"s2": SensorArray(data, days)},
                            {"kind": np.uint8(ref.info["kind"])})
    ''',
    "toy_pkg/samplegen/__init__.py": "",
    "toy_pkg/samplegen/toy.py": '''
        import json
        import os

        import numpy as np


        def write_sample(root, tiles=None, seed=0):
            rng = np.random.default_rng(seed)
            os.makedirs(root, exist_ok=True)
            rows = []
            for i in range(tiles or 6):
                t = int(rng.integers(1, 4))
                np.save(os.path.join(root, f"t{i}.npy"), rng.normal(1000, 100, (t, 10, 4, 4)).astype(np.float32))
                rows.append({"id": f"t{i}", "split": ("train", "val", "test")[i % 3],
                             "days": sorted(int(d) for d in rng.integers(17500, 18000, t)), "kind": i % 2})
            with open(os.path.join(root, "tiles.json"), "w") as f:
                json.dump(rows, f)
    ''',
    "toy_pkg/datasets.py": '''
        from pipelines.datasets import DatasetSpec, LabelSpec


        def register():
            return DatasetSpec("toy-plugin", sensors=("s2",), model_sensors=("s2",), tile_m=40, patch_sizes_m=(20,),
                               labels=(LabelSpec("kind", "multiclass", ("even", "odd")),),
                               source="toy_pkg.sources.toy:ToyReader", tiles_per_shard=4, group="external")
    ''',
    "toy_pkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: toy-pkg\nVersion: 0.1\n",
    "toy_pkg-0.1.dist-info/entry_points.txt": f"[{ENTRY_POINT_GROUP}]\ntoy-plugin = toy_pkg.datasets:register\n",
}


def _install(site: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


@pytest.fixture
def registry(monkeypatch):
    """The dataset registry and import state as they were, whatever the test registers or imports."""
    monkeypatch.setattr(datasets, "DATASETS", dict(datasets.DATASETS))
    monkeypatch.setattr(datasets, "_loaded_entry_points", set(datasets._loaded_entry_points))
    before = set(sys.modules)
    yield monkeypatch
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("toy_pkg", "broken_pkg"):
            del sys.modules[name]


@pytest.fixture
def toy_site(tmp_path, registry):
    site = tmp_path / "site"
    _install(site, TOY_FILES)
    registry.syspath_prepend(str(site))  # also invalidates the import caches
    return site


def test_entry_point_dataset_ingests_like_a_builtin(toy_site, tmp_path):
    assert "toy-plugin" not in datasets.DATASETS  # loaded lazily, on the first lookup that needs it
    assert "toy-plugin" in dataset_names() and "planted" in dataset_names()
    spec = get_dataset("toy-plugin")
    assert spec.generator_module == "toy_pkg.samplegen.toy" and generator_available("toy-plugin")
    # reader and generator come from the toy package, not from this repository
    assert Path(inspect.getfile(spec.source_class())).is_relative_to(toy_site)

    raw, out = tmp_path / "raw", tmp_path / "out"
    get_generator("toy-plugin")(str(raw), tiles=6, seed=0)
    res = run_ingest("toy-plugin", str(raw), str(out), executor="local", progress=False)
    assert res.exit_code == 0 and res.n_tiles == 6 and res.shards_total == 2

    r = StoreReader(res.url)
    assert Path(res.url).is_relative_to(tmp_path)
    assert r.meta.dataset == "toy-plugin" and r.meta.task == "multiclass" and r.meta.classes == ("even", "odd")
    assert r.sensors == ["s2"] and r.meta.stats_splits == ("train",)
    source = spec.source_class()(str(raw))
    b = r.read(0, len(r))
    for i, ref in enumerate(ordered_listing(source)):
        tile = source.read_tile(ref)
        t = tile.sensors["s2"].data.shape[0]
        assert b["tiles/id"][i] == ref.id and b["tiles/split"][i] == ref.split
        np.testing.assert_array_equal(b["s2/data"][i, :t], tile.sensors["s2"].data)
        np.testing.assert_array_equal(b["s2/dates"][i, :t], tile.sensors["s2"].dates)
        assert b["labels/kind"][i] == tile.labels["kind"]
    train = b["s2/data"][r.split_indices("train")]
    days = b["s2/dates"][r.split_indices("train")]
    np.testing.assert_allclose(r.stats("s2")["mean"], train[days >= 0].mean(axis=(0, 2, 3)), rtol=1e-6)


def test_entry_points_load_once_and_names_stay_unique(toy_site):
    spec = get_dataset("toy-plugin")
    dataset_names()  # a second scan does not register the plugin again
    assert get_dataset("toy-plugin") is spec
    with pytest.raises(ValueError, match="'toy-plugin' is already registered"):
        datasets.register_dataset(DatasetSpec("toy-plugin", ("s2",), ("s2",), 40, (20,), (), "x.sources.y:Z"))
    with pytest.raises(ValueError, match="'planted' is already registered"):
        datasets.register_dataset(DatasetSpec("planted", ("s2",), ("s2",), 40, (20,), (), "x.sources.y:Z"))
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        get_dataset("nope")


def test_broken_entry_point_is_named(tmp_path, registry):
    site = tmp_path / "site"
    _install(site, {"broken_pkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: broken-pkg\nVersion: 0.1\n",
                    "broken_pkg-0.1.dist-info/entry_points.txt":
                        f"[{ENTRY_POINT_GROUP}]\nbroken = broken_pkg.nowhere:register\n"})
    registry.syspath_prepend(str(site))
    with pytest.raises(RuntimeError, match="entry point broken = broken_pkg.nowhere:register"):
        get_dataset("nope")


def test_spec_fields_replace_free_form_extras():
    pastis = get_dataset("pastis-hd")
    assert pastis.split_folds == {"train": ("fold1", "fold2", "fold3"), "val": ("fold4",), "test": ("fold5",)}
    assert pastis.stats_splits == ("fold1", "fold2", "fold3")
    assert get_dataset("planted").split_folds == {} and get_dataset("planted").stats_splits == ("train",)
    with pytest.raises(ValueError, match="module:Class"):
        DatasetSpec("x", ("s2",), ("s2",), 40, (20,), (), "no_colon")
    with pytest.raises(ValueError, match="not stored sensors"):
        DatasetSpec("x", ("s2",), ("s1",), 40, (20,), (), "a.b:C")
    # every built-in dataset finds its generator by the naming convention
    assert all(generator_available(n) for n in dataset_names())
