"""Fixtures shared by the pipelines tests: sample archives ingested once per session."""

from __future__ import annotations

import pytest

from ingest_helpers import ingest_sample
from pipelines import samples


@pytest.fixture(scope="session")
def pastis_r(tmp_path_factory):
    """A PASTIS-R archive (PASTIS-HD without ``DATA_SPOT``) and its store."""
    raw = tmp_path_factory.mktemp("pastis-r")
    samples.write_sample("pastis-hd", str(raw), variant="pastis-r")
    return raw, ingest_sample("pastis-hd", raw, tmp_path_factory.mktemp("pastis-r-store"))
