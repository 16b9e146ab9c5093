"""Miniature raw archives, one generator module per dataset.

A dataset's generator is found by naming convention: the module named like its reader's, in a
``samplegen`` package beside the reader's package (:attr:`pipelines.datasets.DatasetSpec.generator_module`;
``pipelines.sources.planted`` -> ``pipelines.samplegen.planted``, and the same for a dataset of another
package). It exposes ``write_sample(root: str, tiles: int | None = None, seed: int = 0) -> None`` and
writes the archive in the dataset's real on-disk layout under ``root``. A generator that can write
archive variants users hold (PASTIS-R beside PASTIS-HD, a re-packaged FLAIR) lists them in a module-level
``VARIANTS`` dict (name -> description) and takes ``variant=<name>``. Modules are imported lazily
because the writers pull in rasterio, h5py and friends.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable

from pipelines.datasets import dataset_names, get_dataset

SampleWriter = Callable[..., None]


def _find(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package itself does not exist
        return False


def generator_available(dataset: str) -> bool:
    """Whether ``dataset`` is registered and its generator module exists."""
    try:
        return _find(get_dataset(dataset).generator_module)
    except ValueError:
        return False


def get_generator(dataset: str) -> SampleWriter:
    """The ``write_sample`` function of a dataset; ValueError with a clear reason otherwise."""
    names = dataset_names()
    if dataset not in names:
        known = ", ".join(d for d in names if generator_available(d))
        raise ValueError(f"no sample generator for dataset {dataset!r} (not a registered dataset); known: {known}")
    module = get_dataset(dataset).generator_module
    if not _find(module):
        raise ValueError(f"no sample generator for dataset {dataset!r}: module {module} does not exist")
    writer = getattr(importlib.import_module(module), "write_sample", None)
    if not callable(writer):
        raise ValueError(f"sample generator {module} of dataset {dataset!r} has no write_sample function")
    return writer


def generator_variants(dataset: str) -> dict[str, str]:
    """The archive variants a dataset's generator writes (name -> description); empty if it has none."""
    module = importlib.import_module(get_dataset(dataset).generator_module)
    return dict(getattr(module, "VARIANTS", {}))
