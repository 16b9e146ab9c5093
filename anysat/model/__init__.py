"""AnySat encoder in pure torch (no Ray / MLflow / Zarr imports)."""

from .encoder import OUTPUTS, SIZES, AnySat, Projected

__all__ = ["AnySat", "Projected", "SIZES", "OUTPUTS"]
