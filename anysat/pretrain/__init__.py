"""AnySat JEPA pretraining in pure torch: masks, predictor, losses, EMA teacher, JEPA module.

What differs from the official training code, and why, is listed in each module's docstring and in
``docs/model.md``.
"""

from .ema import EMATeacher, ema_momentum
from .jepa import JEPA, gather_patches, patch_validity
from .losses import mil_nce_loss, normalize_targets, prediction_loss
from .masking import BlockMaskCollator, BlockMasks, modality_mask, temporal_mask, time_series_keys
from .predictor import Predictor

__all__ = [
    "JEPA", "Predictor", "EMATeacher", "ema_momentum", "BlockMaskCollator", "BlockMasks", "temporal_mask",
    "modality_mask", "time_series_keys", "mil_nce_loss", "prediction_loss", "normalize_targets",
    "gather_patches", "patch_validity",
]
