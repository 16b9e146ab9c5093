"""Fixtures of the training-service tests: small GeoPlex stores built with the real pipeline
(sample archive generator + ingest), once per session, locally and on the moto S3 server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ray_jobs_helpers import PASTIS_TILES, SAMPLE_TILES


def _write_raw(dataset: str, root: Path) -> None:
    from pipelines.samplegen import get_generator

    get_generator(dataset)(str(root), tiles=SAMPLE_TILES[dataset], seed=0)


@pytest.fixture(scope="session")
def raw_archives(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("raw")
    out = {}
    for name in SAMPLE_TILES:
        _write_raw(name, base / name)
        out[name] = base / name
    return out


@pytest.fixture(scope="session")
def sample_stores(raw_archives, tmp_path_factory) -> Path:
    """Folder holding planted.zarr and treesatai-ts.zarr."""
    from pipelines.ingest import run_ingest

    out = tmp_path_factory.mktemp("stores")
    for name, raw in raw_archives.items():
        run_ingest(name, str(raw), str(out), executor="local", progress=False)
    return out


@pytest.fixture(scope="session")
def s3_stores(raw_archives, s3_server) -> str:
    """The same stores written to the moto S3 server; returns the s3:// root."""
    from pipelines.ingest import run_ingest

    # own prefix: the moto server is shared by the whole session (tests/pipelines writes .../stores)
    root = f"s3://{s3_server['bucket']}/ray_jobs/stores"
    for name, raw in raw_archives.items():
        run_ingest(name, str(raw), root, storage_options=s3_server["storage_options"],
                   raw_storage_options={}, executor="local", progress=False)
    return root


@pytest.fixture(scope="session")
def pastis_store(tmp_path_factory) -> Path:
    """Folder holding a 7-tile PASTIS-HD store (folds 1,2,3,4,5,1,2: train = fold1-3 has 5 tiles, enough
    for the paper configs' 4 workers). PASTIS tiles are large (SPOT 1280 px); 7 keep it ~40 MB."""
    from pipelines.ingest import run_ingest
    from pipelines.samplegen import get_generator

    raw = tmp_path_factory.mktemp("pastis-raw")
    out = tmp_path_factory.mktemp("pastis-store")
    get_generator("pastis-hd")(str(raw), tiles=PASTIS_TILES, seed=0)
    run_ingest("pastis-hd", str(raw), str(out), executor="local", progress=False)
    return out


@pytest.fixture
def no_mlflow_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
