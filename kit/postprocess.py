"""Detections -> non-overlapping label image, per cell type, in O(H*W + sum of box areas) memory.

Shared by every detector (Mask R-CNN today). Input is a :class:`Detections`: boxes, scores,
classes and low-resolution mask probabilities (``M x M``, 28 for Mask R-CNN) of one image.
It never builds an ``N x H x W`` full-resolution tensor: detections are filtered first, then
only the survivors' masks are pasted, one box-sized window at a time, straight into the label
image.

Recipe (the seed's: the reference Mask R-CNN notebook of the competition), :func:`postprocess`:

1. **Cell type**: the caller's, or (``cell_type=None``) the majority vote of the instance
   classes (:func:`vote_cell_type`: ``np.bincount``; ties go to the class listed first;
   detections with ``score < vote_min_score`` do not vote).
2. With that type's :class:`TypeParams` ``p``: keep detections with ``score >= p.score`` (of any
   class: the class only votes), sorted by score, highest first (ties keep input order).
3. Class-agnostic NMS, ``IoU > p.nms`` suppresses the lower-scored detection (``p.nms = 1``
   switches it off). ``nms_mode="box"``: on the boxes (``torchvision.ops.nms``), before any
   pasting. ``nms_mode="mask"``: on the pasted, hole-filled binary masks (each only over its own
   window; pairs whose windows do not meet are never compared), during step 4.
4. In score order, each survivor's mask is pasted into its box: pixel ``(r, c)`` (centre
   ``(c + .5, r + .5)``) samples the ``M x M`` grid bilinearly at
   ``u = (c + .5 - x0) / (x1 - x0) * M - .5`` (and likewise ``v``), zero outside the grid --
   detectron2's ``paste_masks_in_image`` (grid_sample, ``align_corners=False``), done by
   ``cv2.warpAffine`` over the window ``[floor(x0) - 1, ceil(x1) + 1)`` clipped to the image.
   Binary mask = ``prob >= p.pixel``; holes filled (``fill_holes``); pixels already painted by
   a higher-scored instance are removed (overlap removal); the rest is painted with the next
   label if ``p.min_area <= area <= p.max_area`` (area counted after overlap removal),
   otherwise nothing is painted.

Output: ``(H, W)`` int32, 0 = background, labels ``1..n`` in painting (score) order.

Box convention: ``(x0, y0, x1, y1)`` in continuous pixel coordinates of the ORIGINAL image,
pixel ``(r, c)`` covering ``[c, c + 1) x [r, r + 1)`` (torchvision / detectron2 boxes).

Defaults (:data:`DEFAULT_CONFIG`) are the seed's tuned values: shsy5y score .15 /
NMS .25 / pixel .5 / area 80-600; astro .40 / .40 / .45 / 150-10000; cort .55 / .70 / .45 /
77-470.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from kit import CELL_TYPES, check_cell_type

__all__ = ["TypeParams", "TYPE_PARAM_GRIDS", "PostprocessConfig", "DEFAULT_CONFIG", "Detections", "vote_cell_type",
           "select", "paint", "postprocess", "paste_window"]


@dataclass(frozen=True)
class TypeParams:
    """Post-processing thresholds of one cell type (areas in px of the original image)."""

    score: float = 0.5      # keep detections with score >= this
    nms: float = 0.5        # class-agnostic NMS: IoU > nms suppresses; 1.0 = no NMS
    pixel: float = 0.5      # mask probability threshold: prob >= pixel is foreground
    min_area: int = 0       # painted area (after overlap removal) must be >= min_area ...
    max_area: int = 1_000_000  # ... and <= max_area

    def __post_init__(self):
        for name in ("score", "nms", "pixel"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if not 0 <= self.min_area <= self.max_area:
            raise ValueError(f"need 0 <= min_area <= max_area, got min_area={self.min_area!r}, "
                             f"max_area={self.max_area!r}")


# Candidate values of the tunable TypeParams (``kit.tune``; the seed's values lie inside).
TYPE_PARAM_GRIDS = {
    "score": (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.55, 0.6, 0.7),
    "nms": (0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0),
    "pixel": (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65),
    "min_area": (0, 15, 30, 50, 77, 80, 100, 150),
}


@dataclass(frozen=True)
class PostprocessConfig:
    """Per-cell-type :class:`TypeParams` plus the shared switches."""

    nms_mode: Literal["box", "mask"] = "box"
    fill_holes: bool = True
    vote_min_score: float = 0.0  # detections below this score do not vote for the cell type
    # The seed's tuned values (its per-class score / NMS IoU / pixel / min-max area table).
    shsy5y: TypeParams = TypeParams(score=0.15, nms=0.25, pixel=0.5, min_area=80, max_area=600)
    astro: TypeParams = TypeParams(score=0.40, nms=0.40, pixel=0.45, min_area=150, max_area=10000)
    cort: TypeParams = TypeParams(score=0.55, nms=0.70, pixel=0.45, min_area=77, max_area=470)

    def __post_init__(self):
        if not 0.0 <= self.vote_min_score <= 1.0:
            raise ValueError(f"vote_min_score must be in [0, 1], got {self.vote_min_score!r}")

    def params(self, cell_type: str) -> TypeParams:
        check_cell_type(cell_type)
        return getattr(self, cell_type)

    def with_params(self, cell_type: str, **changes) -> "PostprocessConfig":
        """A copy with some of ``cell_type``'s thresholds changed (for tuning)."""
        return replace(self, **{cell_type: replace(self.params(cell_type), **changes)})


DEFAULT_CONFIG = PostprocessConfig()


@dataclass
class Detections:
    """Raw detector output for one image, in original-image coordinates.

    ``boxes`` (N, 4) float32 ``x0, y0, x1, y1``; ``scores`` (N,) float32; ``classes`` (N,) int64,
    0-based indices into ``class_names``; ``masks`` (N, M, M) float32 probabilities in [0, 1]
    (or None when not computed); ``image_shape`` (H, W).
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray | None
    image_shape: tuple[int, int]
    class_names: tuple[str, ...] = CELL_TYPES

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        self.classes = np.asarray(self.classes, np.int64).reshape(-1)
        n = len(self.boxes)
        if len(self.scores) != n or len(self.classes) != n:
            raise ValueError(f"boxes ({n}), scores ({len(self.scores)}) and classes "
                             f"({len(self.classes)}) must have the same length")
        if self.masks is not None:
            self.masks = np.asarray(self.masks, np.float32)
            if self.masks.ndim != 3 or len(self.masks) != n or self.masks.shape[1] != self.masks.shape[2]:
                raise ValueError(f"masks must be (N={n}, M, M), got shape {self.masks.shape}")
        h, w = (int(s) for s in self.image_shape)
        self.image_shape = (h, w)
        self.class_names = tuple(self.class_names)
        if n and (self.classes.min() < 0 or self.classes.max() >= len(self.class_names)):
            raise ValueError(f"classes must be in [0, {len(self.class_names)}), got "
                             f"{self.classes.min()}..{self.classes.max()}")

    def __len__(self) -> int:
        return len(self.boxes)

    def take(self, idx) -> "Detections":
        """The detections at ``idx`` (an index array or boolean mask), in that order."""
        return Detections(self.boxes[idx], self.scores[idx], self.classes[idx],
                          None if self.masks is None else self.masks[idx],
                          self.image_shape, self.class_names)

    def save(self, path) -> Path:
        """Write a compressed ``.npz`` (for caching raw outputs while tuning)."""
        from kit.atomic import atomic_open

        path = Path(path)
        masks = np.zeros((len(self), 0, 0), np.float16) if self.masks is None else self.masks.astype(np.float16)
        with atomic_open(path, "wb") as f:
            np.savez_compressed(f, boxes=self.boxes, scores=self.scores, classes=self.classes,
                                masks=masks, has_masks=self.masks is not None,
                                image_shape=np.asarray(self.image_shape),
                                class_names=np.asarray(self.class_names))
        return path

    @classmethod
    def load(cls, path) -> "Detections":
        with np.load(Path(path)) as z:
            masks = z["masks"].astype(np.float32) if bool(z["has_masks"]) else None
            return cls(z["boxes"], z["scores"], z["classes"], masks, tuple(z["image_shape"]),
                       tuple(str(s) for s in z["class_names"]))


def vote_cell_type(classes: np.ndarray, class_names: Sequence[str], scores=None,
                   min_score: float = 0.0) -> str | None:
    """Majority class of the detections (``scores >= min_score`` when scores are given).

    Ties go to the class listed first in ``class_names``; None when nobody votes.
    """
    classes = np.asarray(classes, np.int64).reshape(-1)
    if scores is not None:
        classes = classes[np.asarray(scores).reshape(-1) >= min_score]
    if classes.size == 0:
        return None
    return str(class_names[int(np.argmax(np.bincount(classes, minlength=len(class_names))))])


def _resolve_type(dets: Detections, cell_type: str | None, config: PostprocessConfig) -> str | None:
    if cell_type is None:
        cell_type = vote_cell_type(dets.classes, dets.class_names, dets.scores, config.vote_min_score)
        if cell_type is None:
            return None
    config.params(cell_type)  # validates the name
    return cell_type


def select(dets: Detections, cell_type: str | None = None,
           config: PostprocessConfig = DEFAULT_CONFIG) -> tuple[str | None, np.ndarray]:
    """Steps 1-3 without masks: ``(cell type, indices of the survivors in score order)``.

    In ``nms_mode="mask"`` the NMS is left to :func:`paint`. Needs no masks, so a detector
    can run its mask head on the survivors only. ``cell type`` is None (and the index array
    empty) when nothing was detected and no type was given.
    """
    cell_type = _resolve_type(dets, cell_type, config)
    if cell_type is None:
        return None, np.zeros(0, np.int64)
    p = config.params(cell_type)
    idx = np.flatnonzero(dets.scores >= p.score)
    idx = idx[np.argsort(-dets.scores[idx], kind="stable")]
    if config.nms_mode == "box" and p.nms < 1.0 and len(idx) > 1:
        idx = idx[box_nms(dets.boxes[idx], p.nms)]
    return cell_type, idx


def box_nms(boxes_sorted: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy NMS of boxes already sorted best-first (IoU > iou suppresses)."""
    import torch
    from torchvision.ops import nms

    n = len(boxes_sorted)
    # Scores = rank, so torchvision's internal sort reproduces our (stable) order exactly.
    keep = nms(torch.from_numpy(np.ascontiguousarray(boxes_sorted, np.float32)),
               torch.arange(n, 0, -1, dtype=torch.float32), float(iou))
    return np.sort(keep.numpy())


def paste_window(mask: np.ndarray, box, image_shape) -> tuple[int, int, np.ndarray]:
    """``(row0, col0, probs)``: one ``M x M`` mask pasted into its box (see module doc, step 4).

    ``probs`` is float32 covering rows ``row0 : row0 + probs.shape[0]`` and columns
    ``col0 : col0 + probs.shape[1]`` of the image (empty when the box misses the image).
    """
    import cv2

    h, w = image_shape
    x0, y0, x1, y1 = (float(v) for v in box)
    m = mask.shape[0]
    c0, c1 = max(math.floor(x0) - 1, 0), min(math.ceil(x1) + 1, w)
    r0, r1 = max(math.floor(y0) - 1, 0), min(math.ceil(y1) + 1, h)
    if c1 <= c0 or r1 <= r0 or not (x1 > x0 and y1 > y0):
        return r0, c0, np.zeros((0, 0), np.float32)
    sx, sy = m / (x1 - x0), m / (y1 - y0)
    inv = np.array([[sx, 0.0, (c0 + 0.5 - x0) * sx - 0.5],
                    [0.0, sy, (r0 + 0.5 - y0) * sy - 0.5]], np.float64)
    probs = cv2.warpAffine(np.ascontiguousarray(mask, np.float32), inv, (c1 - c0, r1 - r0),
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return r0, c0, probs


def _fill_holes(binary: np.ndarray) -> np.ndarray:
    """``binary`` (uint8 0/1) with every background region not touching the border set to 1."""
    import cv2

    h, w = binary.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = binary
    flood = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(padded, flood, (0, 0), 2, flags=4)  # outside background -> 2
    return (padded[1:-1, 1:-1] != 2).astype(np.uint8)


def paint(boxes: np.ndarray, masks: np.ndarray, image_shape, params: TypeParams,
          nms_mode: str = "box", fill_holes: bool = True) -> np.ndarray:
    """Step 4 (and mask NMS): paint detections, given best-first, into an int32 label image.

    ``boxes`` (N, 4), ``masks`` (N, M, M) probabilities, both already filtered and sorted by
    score (:func:`select`). In ``nms_mode="mask"`` a detection whose binary mask has IoU >
    ``params.nms`` with an earlier NMS survivor is dropped (IoU of the full, hole-filled masks,
    before overlap removal; survivors dropped later by the area rule still suppress).
    """
    h, w = (int(s) for s in image_shape)
    labels = np.zeros((h, w), np.int32)
    n = len(boxes)
    if n == 0:
        return labels
    if masks is None or len(masks) != n:
        raise ValueError(f"need one mask per box, got {n} boxes and "
                         f"{None if masks is None else len(masks)} masks")
    mask_nms = nms_mode == "mask" and params.nms < 1.0
    if nms_mode not in ("box", "mask"):
        raise ValueError(f"nms_mode must be 'box' or 'mask', got {nms_mode!r}")
    kept_win = np.zeros((n, 4), np.int64)   # r0, c0, r1, c1 of the mask-NMS survivors
    kept_bin: list[np.ndarray] = []
    kept_area = np.zeros(n, np.int64)
    n_kept = 0
    next_label = 1
    for i in range(n):
        r0, c0, probs = paste_window(masks[i], boxes[i], (h, w))
        if probs.size == 0:
            continue
        binary = (probs >= params.pixel).astype(np.uint8)
        if fill_holes:
            binary = _fill_holes(binary)
        r1, c1 = r0 + binary.shape[0], c0 + binary.shape[1]
        if mask_nms:
            area_i = int(np.count_nonzero(binary))
            suppressed = False
            if n_kept and area_i:
                kw = kept_win[:n_kept]
                meet = np.flatnonzero((kw[:, 0] < r1) & (kw[:, 2] > r0) & (kw[:, 1] < c1) & (kw[:, 3] > c0))
                for j in meet:
                    jr0, jc0, jr1, jc1 = kw[j]
                    ir0, ir1, ic0, ic1 = max(r0, jr0), min(r1, jr1), max(c0, jc0), min(c1, jc1)
                    inter = int(np.count_nonzero(
                        binary[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0]
                        & kept_bin[j][ir0 - jr0:ir1 - jr0, ic0 - jc0:ic1 - jc0]))
                    if inter and inter > params.nms * (area_i + kept_area[j] - inter):
                        suppressed = True
                        break
            if suppressed:
                continue
            kept_win[n_kept] = (r0, c0, r1, c1)
            kept_area[n_kept] = area_i
            kept_bin.append(binary)
            n_kept += 1
        window = labels[r0:r1, c0:c1]
        new = (binary != 0) & (window == 0)
        area = int(np.count_nonzero(new))
        if area and params.min_area <= area <= params.max_area:
            window[new] = next_label
            next_label += 1
    return labels


def postprocess(dets: Detections, cell_type: str | None = None,
                config: PostprocessConfig = DEFAULT_CONFIG) -> np.ndarray:
    """(H, W) int32 label image of one image's detections (module doc: the recipe).

    ``cell_type`` None = majority vote of the detections' classes. Needs ``dets.masks``.
    """
    h, w = dets.image_shape
    cell_type, idx = select(dets, cell_type, config)
    if cell_type is None or len(idx) == 0:
        return np.zeros((h, w), np.int32)
    if dets.masks is None:
        raise ValueError("postprocess needs mask probabilities (Detections.masks is None)")
    return paint(dets.boxes[idx], dets.masks[idx], (h, w), config.params(cell_type),
                 config.nms_mode, config.fill_holes)
