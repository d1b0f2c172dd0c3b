"""The classical baseline family ("model zero"): contrast threshold + distance-transform
watershed per cell type (:mod:`kit.models.baseline.model`), trained by nothing, tuned by
``kit.tune`` like any family (:mod:`kit.models.baseline.family`)."""
from __future__ import annotations

from kit.models.baseline.model import (DEFAULT_PARAMS, THRESHOLD_METHODS, BaselineModel,
                                       BaselineParams, foreground, predict_labels)

__all__ = ["BaselineParams", "DEFAULT_PARAMS", "THRESHOLD_METHODS", "predict_labels", "foreground",
           "BaselineModel"]
