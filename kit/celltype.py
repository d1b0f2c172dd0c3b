"""Image -> cell type (cort / shsy5y / astro), shared by every model's per-type settings.

Per-type post-processing needs the image's cell type. In cross-validation it comes from the
data; at submission time from this classifier: texture statistics of the whole image
(:func:`image_features`, 28 floats) fed to a standardised multinomial logistic regression
(scikit-learn). Cheap to train on a fold, and its out-of-fold accuracy is measured by
:func:`oof_accuracy` (grouped by sample, like the folds).

Saved as ``celltype.joblib`` inside a model folder (a model is one folder).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from kit import CELL_TYPES
from kit.atomic import atomic_open

FILE_NAME = "celltype.joblib"


def image_features(image: np.ndarray) -> np.ndarray:
    """(28,) float64 texture features of one (H, W) uint8 phase-contrast image.

    Local contrast (|image - blurred|) at three scales, its percentiles, the fraction of
    "busy" pixels, gradient energy, intensity spread and the count and size of contrast
    blobs: they separate the dense small
    shsy5y, the sparse round cort and the large branched astro cells.
    """
    import cv2

    img = np.asarray(image, np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {img.shape}")
    img = (img - img.mean()) / (img.std() + 1e-6)
    feats = []
    for sigma in (1.5, 4.0, 12.0):
        contrast = np.abs(img - cv2.GaussianBlur(img, (0, 0), sigma))
        smooth = cv2.GaussianBlur(contrast, (0, 0), 2 * sigma)
        feats += list(np.percentile(smooth, [10, 50, 75, 90, 99]))
        feats.append(float((smooth > np.median(smooth) * 2).mean()))
    gy, gx = np.gradient(cv2.GaussianBlur(img, (0, 0), 1.0))
    grad = np.hypot(gx, gy)
    feats += [float(grad.mean()), float(grad.std()), float(np.percentile(grad, 95))]
    feats += list(np.percentile(img, [1, 50, 99]))
    # Blobs of the contrast foreground: how many per megapixel, how large, how much of the image.
    contrast = cv2.GaussianBlur(np.abs(img - cv2.GaussianBlur(img, (0, 0), 4.0)), (0, 0), 2.0)
    scaled = cv2.normalize(contrast, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    _, fg = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    areas = areas[areas >= 10] if (areas >= 10).any() else np.ones(1)
    feats += [np.log1p(len(areas) * 1e6 / img.size), float(np.log(np.median(areas))),
              float(np.log(np.percentile(areas, 90))), float(fg.mean())]
    return np.asarray(feats, np.float64)


def check_trainable(types: Sequence[str]) -> None:
    """A ValueError unless the training images' cell types ``types`` (one per image) hold at
    least 2 distinct types, the fewest a classifier can learn to tell apart."""
    kinds = sorted(set(types))
    if len(kinds) < 2:
        held = "one cell type" if len(kinds) == 1 else "no cell type"
        raise ValueError(f"the training images hold {held} ({', '.join(kinds)}); the image -> "
                         "cell-type classifier needs at least 2")


class CellTypeClassifier:
    """Nearest-class texture classifier. ``fit(images, types)`` then ``predict(image)``."""

    def __init__(self, model=None):
        self.model = model

    @staticmethod
    def _new_model():
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))

    def fit_features(self, features: np.ndarray, types: Sequence[str]) -> "CellTypeClassifier":
        """features: (N, 28) from :func:`image_features`; types: N cell-type names."""
        unknown = sorted(set(types) - set(CELL_TYPES))
        if unknown:
            raise ValueError(f"unknown cell types {unknown}; valid: {list(CELL_TYPES)}")
        check_trainable(types)
        self.model = self._new_model().fit(features, list(types))
        return self

    def fit(self, images: Sequence[np.ndarray], types: Sequence[str]) -> "CellTypeClassifier":
        return self.fit_features(np.stack([image_features(i) for i in images]), types)

    def predict_features(self, features: np.ndarray) -> list[str]:
        if self.model is None:
            raise ValueError("CellTypeClassifier is not trained: call fit() or load() first")
        return [str(t) for t in self.model.predict(np.atleast_2d(features))]

    def predict(self, image: np.ndarray) -> str:
        return self.predict_features(image_features(image))[0]

    def save(self, folder) -> Path:
        import joblib

        path = Path(folder) / FILE_NAME
        with atomic_open(path, "wb") as f:
            joblib.dump(self.model, f)
        return path

    @classmethod
    def load(cls, folder) -> "CellTypeClassifier":
        import joblib

        from kit.models import model_file

        path = Path(folder) / FILE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no cell-type classifier at {path}")
        with model_file(path, "cell-type classifier"):
            return cls(joblib.load(path))


def oof_accuracy(features: np.ndarray, types: Sequence[str], groups: Sequence[str],
                 n_splits: int = 5) -> tuple[float, list[str]]:
    """Out-of-fold accuracy with GroupKFold by sample; returns (accuracy, OOF predictions)."""
    from sklearn.model_selection import GroupKFold

    features, types = np.asarray(features, np.float64), np.asarray(types)
    n_splits = min(n_splits, len(set(groups)))
    if n_splits < 2:
        raise ValueError("need at least 2 sample groups for out-of-fold accuracy")
    pred = np.empty(len(types), dtype=object)
    for tr, va in GroupKFold(n_splits=n_splits).split(features, types, groups):
        if len(set(types[tr])) < 2:
            pred[va] = types[tr][0]
            continue
        pred[va] = CellTypeClassifier().fit_features(features[tr], types[tr]).predict_features(features[va])
    return float(np.mean(pred == types)), [str(p) for p in pred]
