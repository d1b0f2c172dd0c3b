"""Test-time augmentation: the eight flips / rotations by 90 degrees (the dihedral group), each
"transpose, then flip rows, then flip columns", and the exact inverse of a prediction made on a
transformed image (boxes in continuous pixel coordinates, ``M x M`` masks flipped / transposed
with them, label images by the inverse array view)."""
from __future__ import annotations

import numpy as np

from kit.postprocess import Detections

# name -> (transpose, flip rows, flip columns), applied in that order to the image.
TRANSFORMS = {
    "id": (False, False, False),
    "hflip": (False, False, True),
    "vflip": (False, True, False),
    "rot180": (False, True, True),
    "transpose": (True, False, False),
    "rot90": (True, True, False),       # = np.rot90(image, 1) (counter-clockwise)
    "rot270": (True, False, True),      # = np.rot90(image, 3)
    "transverse": (True, True, True),   # the anti-transpose: image.T[::-1, ::-1]
}


def _check_transform(name: str) -> tuple[bool, bool, bool]:
    if name not in TRANSFORMS:
        raise ValueError(f"unknown TTA transform {name!r}; valid: {list(TRANSFORMS)}")
    return TRANSFORMS[name]


def tta_apply(name: str, image: np.ndarray) -> np.ndarray:
    """The image seen through transform ``name`` (a C-contiguous copy; (W, H) when transposed)."""
    t, fr, fc = _check_transform(name)
    x = np.asarray(image)
    if t:
        x = x.T
    if fr:
        x = x[::-1]
    if fc:
        x = x[:, ::-1]
    return np.ascontiguousarray(x)


def tta_invert_labels(name: str, labels: np.ndarray) -> np.ndarray:
    """A label image predicted on ``tta_apply(name, image)`` in the frame of ``image``."""
    t, fr, fc = _check_transform(name)
    x = np.asarray(labels)
    if fc:
        x = x[:, ::-1]
    if fr:
        x = x[::-1]
    if t:
        x = x.T
    return np.ascontiguousarray(x)


def tta_invert_detections(name: str, dets: Detections) -> Detections:
    """Detections of ``tta_apply(name, image)`` in the frame of ``image`` (exact: boxes are
    mirrored / swapped in continuous pixel coordinates, the ``M x M`` masks flipped /
    transposed with them)."""
    t, fr, fc = _check_transform(name)
    ht, wt = dets.image_shape
    b = dets.boxes.astype(np.float64)
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    m = dets.masks
    if fc:
        x0, x1 = wt - x1, wt - x0
        m = None if m is None else m[:, :, ::-1]
    if fr:
        y0, y1 = ht - y1, ht - y0
        m = None if m is None else m[:, ::-1, :]
    shape = (ht, wt)
    if t:
        x0, y0, x1, y1 = y0, x0, y1, x1
        m = None if m is None else m.transpose(0, 2, 1)
        shape = (wt, ht)
    boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)
    return Detections(boxes, dets.scores.copy(), dets.classes.copy(),
                      None if m is None else np.ascontiguousarray(m), shape, dets.class_names)
