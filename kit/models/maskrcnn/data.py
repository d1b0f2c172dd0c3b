"""Training samples for Mask R-CNN: instance crops, dihedral augmentation, scale, random crop.

Ground-truth masks are never held as an ``N x H x W`` stack: :func:`instance_crops` decodes the
Kaggle RLEs of one image straight into an ``(N, hc + 2, wc + 2)`` uint8 array (each instance's
bounding-box crop, top-left aligned, with a zero border of >= 1 px; ``hc, wc`` = the largest
box of the image) plus, per instance, the image coordinates ``(x, y)`` of its array pixel
``(0, 0)``. Flips / rot90 / cropping act on that array and its origins; scaling acts on the
image only (the masks stay at image resolution and ``mask_scale`` maps network boxes back, see
:func:`kit.models.maskrcnn.network.crop_mask_targets`).

A sample is ``(image (3, h, w) float32 in [0, 1], target)`` with target ``boxes`` (G, 4)
float32 in network pixels, ``labels`` (G,) int64 (1..K), ``masks`` (G, ha, wa) uint8,
``mask_origin`` (G, 2) float32 (unscaled window pixels), ``mask_scale`` (2,) float32 (sx, sy).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from numba import njit

from kit import rle as _rle

__all__ = ["instance_crops", "instance_crops_reference", "boxes_of", "augment",
           "InstanceDataset", "collate"]


@njit(cache=True)
def _bboxes(ptr, starts, lengths, w):
    n = len(ptr) - 1
    out = np.zeros((n, 4), np.int64)  # x0, y0, x1, y1 (exclusive)
    for k in range(n):
        x0 = y0 = np.int64(1) << 62
        x1 = y1 = np.int64(-1)
        for j in range(ptr[k], ptr[k + 1]):
            s = starts[j]
            e = s + lengths[j] - 1
            r0, r1 = s // w, e // w
            if r0 == r1:
                c0, c1 = s % w, e % w
            else:
                c0, c1 = 0, w - 1
            x0 = min(x0, c0)
            x1 = max(x1, c1 + 1)
            y0 = min(y0, r0)
            y1 = max(y1, r1 + 1)
        if x1 > 0:
            out[k, 0], out[k, 1], out[k, 2], out[k, 3] = x0, y0, x1, y1
    return out


@njit(cache=True)
def _fill(ptr, starts, lengths, w, boxes, out):
    for k in range(len(ptr) - 1):
        bx0, by0 = boxes[k, 0], boxes[k, 1]
        for j in range(ptr[k], ptr[k + 1]):
            for p in range(starts[j], starts[j] + lengths[j]):
                out[k, p // w - by0 + 1, p % w - bx0 + 1] = 1


def instance_crops(rles: Sequence[str], shape) -> tuple[np.ndarray, np.ndarray]:
    """``(crops (N, hc + 2, wc + 2) uint8, origin (N, 2) float64)`` of an image's RLEs.

    ``crops[k]`` holds instance ``k``'s box crop at offset (1, 1); ``origin[k]`` = image
    ``(x, y)`` of ``crops[k][0, 0]`` (= box corner - 1). Empty RLEs give an all-zero crop.
    Work and memory scale with the foreground pixels and N x the largest box, not N x H x W.
    """
    h, w = int(shape[0]), int(shape[1])
    ptr, starts, lengths = _rle.parse_runs(list(rles), (h, w))
    boxes = _bboxes(ptr, starts, lengths, w)
    n = len(boxes)
    hc = int((boxes[:, 3] - boxes[:, 1]).max()) if n else 0
    wc = int((boxes[:, 2] - boxes[:, 0]).max()) if n else 0
    crops = np.zeros((n, hc + 2, wc + 2), np.uint8)
    _fill(ptr, starts, lengths, w, boxes, crops)
    return crops, (boxes[:, :2] - 1).astype(np.float64)


def instance_crops_reference(rles: Sequence[str], shape) -> tuple[np.ndarray, np.ndarray]:
    """Plain-numpy reference of :func:`instance_crops` (full-image decode per mask; for tests)."""
    stack = _rle.decode_stack(list(rles), shape)
    boxes = []
    for m in stack:
        ys, xs = np.nonzero(m)
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else (0, 0, 0, 0))
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    hc = int((boxes[:, 3] - boxes[:, 1]).max()) if len(boxes) else 0
    wc = int((boxes[:, 2] - boxes[:, 0]).max()) if len(boxes) else 0
    crops = np.zeros((len(boxes), hc + 2, wc + 2), np.uint8)
    for k, (m, (x0, y0, x1, y1)) in enumerate(zip(stack, boxes)):
        crops[k, 1:1 + y1 - y0, 1:1 + x1 - x0] = m[y0:y1, x0:x1]
    return crops, (boxes[:, :2] - 1).astype(np.float64)


def boxes_of(crops: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes (N, 4) float64 x0, y0, x1, y1, nonempty (N,) bool)`` of instance crops."""
    n = len(crops)
    if n == 0:
        return np.zeros((0, 4)), np.zeros(0, bool)
    cols = crops.any(axis=1)
    rows = crops.any(axis=2)
    nonempty = cols.any(axis=1)
    wa, ha = cols.shape[1], rows.shape[1]
    c0 = cols.argmax(axis=1)
    c1 = wa - cols[:, ::-1].argmax(axis=1)
    r0 = rows.argmax(axis=1)
    r1 = ha - rows[:, ::-1].argmax(axis=1)
    boxes = np.stack([origin[:, 0] + c0, origin[:, 1] + r0, origin[:, 0] + c1, origin[:, 1] + r1], 1)
    return boxes.astype(np.float64), nonempty


def augment(image: np.ndarray, crops: np.ndarray, origin: np.ndarray, *, hflip=False,
            vflip=False, rot90=False, window=None):
    """Apply flips, a 90° rotation (``np.rot90``, counter-clockwise) and a crop window.

    ``window`` = ``(x0, y0, x1, y1)`` integer pixels of the (flipped/rotated) image. Returns
    ``(image, crops, origin)``; crop pixels outside the window are cleared and origins are in
    window coordinates. Geometry (continuous coordinates, image ``H x W``):
    hflip ``x -> W - x``; vflip ``y -> H - y``; rot90 ``(x, y) -> (y, W - x)``.
    """
    h, w = image.shape
    ha, wa = crops.shape[1:] if crops.ndim == 3 else (0, 0)
    origin = origin.copy()
    if hflip:
        image = image[:, ::-1]
        crops = crops[:, :, ::-1]
        origin[:, 0] = w - origin[:, 0] - wa
    if vflip:
        image = image[::-1]
        crops = crops[:, ::-1]
        origin[:, 1] = h - origin[:, 1] - ha
    if rot90:
        image = np.rot90(image)
        crops = np.rot90(crops, axes=(1, 2))
        origin = np.stack([origin[:, 1], w - origin[:, 0] - wa], 1)
        h, w, ha, wa = w, h, wa, ha
    if window is not None:
        x0, y0, x1, y1 = (int(v) for v in window)
        image = image[y0:y1, x0:x1]
        cols = origin[:, :1] + np.arange(wa)[None]       # (N, wa) image x of each column
        rows = origin[:, 1:] + np.arange(ha)[None]
        inside = ((rows >= y0) & (rows < y1))[:, :, None] & ((cols >= x0) & (cols < x1))[:, None, :]
        crops = crops * inside
        origin = origin - np.array([x0, y0], np.float64)
    return np.ascontiguousarray(image), np.ascontiguousarray(crops), origin


def repeat_by_type(records: Sequence, repeat: dict) -> list:
    """``records`` with each record of cell type ``t`` listed ``repeat[t]`` times in a row
    (missing types and records without a type: once). A dataset over the result samples each
    copy with its own randomness (its own index), so a pass sees that many different crops."""
    return [r for r in records for _ in range(int(repeat.get(r.cell_type, 1)))]


class InstanceDataset:
    """Map-style dataset of :class:`kit.data.ImageRecord` for Mask R-CNN training.

    ``label_of(record) -> int`` in 1..K. ``min_sizes`` / ``max_size``: the short side is drawn
    from ``min_sizes`` (capped so the long side <= ``max_size``); ``crop`` > 0 cuts a random
    ``crop x crop`` window (network pixels). Call :meth:`set_epoch` before each epoch: the
    randomness of sample ``i`` is a function of ``(seed, epoch, i)``.
    """

    def __init__(self, records, label_of: Callable, min_sizes: Sequence[int], max_size: int, *,
                 crop: int = 0, hflip=True, vflip=True, rot90=True, seed: int = 0):
        self.records = list(records)
        self.labels = [int(label_of(r)) for r in self.records]
        self.min_sizes = list(min_sizes)
        self.max_size = int(max_size)
        self.crop = int(crop)
        self.flips = (hflip, vflip, rot90)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        import cv2
        import torch

        rec = self.records[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        image = rec.load_image()
        crops, origin = instance_crops(rec.rles, rec.shape)
        hf, vf, rt = (bool(on and rng.random() < 0.5) for on in self.flips)
        h, w = (rec.shape[1], rec.shape[0]) if rt else rec.shape  # after the rotation
        short = self.min_sizes[int(rng.integers(len(self.min_sizes)))]
        scale = min(short / min(h, w), self.max_size / max(h, w))
        window = None
        if self.crop:
            ww, wh = min(w, math.ceil(self.crop / scale)), min(h, math.ceil(self.crop / scale))
            x0, y0 = int(rng.integers(w - ww + 1)), int(rng.integers(h - wh + 1))
            window = (x0, y0, x0 + ww, y0 + wh)
        image, crops, origin = augment(image, crops, origin, hflip=hf, vflip=vf, rot90=rt,
                                       window=window)
        boxes, keep = boxes_of(crops, origin)
        ih, iw = image.shape
        nh, nw = max(1, round(ih * scale)), max(1, round(iw * scale))
        if (nh, nw) != (ih, iw):
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        sx, sy = nw / iw, nh / ih
        labels = np.full(len(crops), self.labels[i], np.int64)
        target = {
            "boxes": torch.from_numpy((boxes[keep] * [sx, sy, sx, sy]).astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(labels[keep]),
            "masks": torch.from_numpy(crops[keep]),
            "mask_origin": torch.from_numpy(origin[keep].astype(np.float32)).reshape(-1, 2),
            "mask_scale": torch.tensor([sx, sy], dtype=torch.float32),
        }
        x = torch.from_numpy(image).float().div_(255.0)[None].expand(3, -1, -1).contiguous()
        return x, target


def collate(batch):
    """``(list of images, list of targets)``."""
    return [b[0] for b in batch], [b[1] for b in batch]

