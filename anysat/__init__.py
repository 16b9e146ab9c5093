"""anysat-ray: AnySat in pure torch plus the Ray / Zarr / MLflow tooling around it.

``from anysat import AnySat`` imports torch lazily, so ``import anysat`` stays cheap for tools that
only need the sensor registry or the pipelines.
"""

__all__ = ["AnySat"]


def __getattr__(name: str):
    if name == "AnySat":
        from .model import AnySat

        return AnySat
    raise AttributeError(f"module 'anysat' has no attribute {name!r}")
