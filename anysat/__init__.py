"""anysat-ray: AnySat in pure torch plus the Ray / Zarr / MLflow tooling around it.

``from anysat import AnySat`` loads the model (and torch) on first use, not on ``import anysat``:
the ingest imports ``anysat.sensors``, which runs this file, in every Ray Data worker, and those
workers never need torch (0.8 s and about 180 MB each).
"""

__all__ = ["AnySat"]


def __getattr__(name: str):
    if name == "AnySat":
        from .model import AnySat

        return AnySat
    raise AttributeError(f"module 'anysat' has no attribute {name!r}")
