"""Miniature raw archives, one generator module per dataset (raw-formats §14).

Each module exposes ``write_sample(root: str, tiles: int | None = None, seed: int = 0) -> None`` and
writes the archive in the dataset's real on-disk layout under ``root``. Modules are imported lazily
because the writers pull in rasterio, h5py and friends.
"""

from __future__ import annotations

import importlib
import importlib.util

#: dataset name (``pipelines.datasets``) -> module under ``pipelines.samplegen``
GENERATORS: dict[str, str] = {
    "treesatai-ts": "treesatai",
    "pastis-hd": "pastis",
    "flair": "flair",
    "planted": "planted",
    "s2naip-urban": "s2naip",
    "bradd-s1ts": "bradd",
    "sickle": "sickle",
    "timesen2crop": "timesen2crop",
    "sen1floods11": "sen1floods11",
    "so2sat": "so2sat",
    "hls-burn-scars": "hls_burn_scars",
}


def generator_available(dataset: str) -> bool:
    mod = GENERATORS.get(dataset)
    return mod is not None and importlib.util.find_spec(f"{__name__}.{mod}") is not None


def get_generator(dataset: str):
    """The ``write_sample`` function of a dataset; ValueError with a clear reason otherwise."""
    mod = GENERATORS.get(dataset)
    if mod is None:
        raise ValueError(f"no sample generator for dataset {dataset!r}; known: {', '.join(sorted(GENERATORS))}")
    if not generator_available(dataset):
        raise ValueError(f"sample generator pipelines/samplegen/{mod}.py for {dataset!r} is not written yet")
    return importlib.import_module(f"{__name__}.{mod}").write_sample
