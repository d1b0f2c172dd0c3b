"""Ensembles and test-time augmentation (TTA) of model folders, fused per image.

Two fusions, one per kind of raw output:

* **Detections** (Mask R-CNN, :class:`kit.postprocess.Detections`): weighted box fusion by the
  ``ensemble-boxes`` package (:func:`fuse_detections`). Boxes are normalised to [0, 1] and
  clustered per class by ensemble-boxes' own ``find_matching_box_fast`` / ``get_weighted_box``
  (the clustering loop of its ``weighted_boxes_fusion``, replayed so that the members of each
  fused box are known; the fused boxes and scores equal the package's, tested). The fused
  box's ``M x M`` mask is the weighted mean of its members' masks, each resampled from its own
  box into the fused box (one bilinear resampling of ``M x M`` grids, weights = score x
  member weight, as for the box coordinates): only fused detections get a mask, never an
  ``N x H x W`` stack. Then :func:`kit.postprocess.postprocess` paints the fused detections.
* **Label images** (Cellpose, the baseline, a postprocessed detector, ...): an instance-level
  vote (:func:`vote_labels`). Instances of the voters are matched by IoU > ``match_iou`` to a
  cluster's anchor (the first voter's instance that opened it); a cluster is kept when the
  weight of its voters is >= ``min_support`` x the total voter weight (with unit weights and M
  voters: found by at least ``ceil(min_support * M)`` of them); its mask is the pixel vote:
  pixels covered by >= ``pixel_vote`` x the cluster's weight. Clusters are painted by
  decreasing support (ties: anchor order), pixels already painted are not repainted.

:func:`combine` does both for one image: all detection sources are fused and painted into
one label image that votes with the weight of the detection members; label sources vote
with their own weights. With one voter the vote returns that voter's label image.

TTA (:data:`TRANSFORMS`): the eight flips / rotations by 90 degrees (the dihedral group),
each "transpose, then flip rows, then flip columns". :func:`tta_apply` transforms an image;
:func:`tta_invert_labels` and :func:`tta_invert_detections` map a prediction of the
transformed image back exactly (boxes in continuous pixel coordinates, masks by flipping /
transposing the ``M x M`` grid, label images by the inverse array view).

The ``ensemble`` model folder (:class:`EnsembleModel`, registered in :mod:`kit.models`):
``model.json`` = ``{"type": "ensemble", "config": {...}}`` with :class:`EnsembleConfig`
(members by path, relative to the ensemble folder or absolute, with weights; TTA views;
the post-processing of fused detections; per-cell-type fusion parameters, which
``python -m kit.tune`` tunes). Each member view's weight is the member's weight divided by
the number of views. Make one with
``python -m kit.ensemble --out DIR --member MODEL_DIR[:WEIGHT] ... [--tta id,hflip]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from kit import CELL_TYPES, check_cell_type
from kit.atomic import atomic_open
from kit.postprocess import Detections, PostprocessConfig

__all__ = ["TRANSFORMS", "tta_apply", "tta_invert_labels", "tta_invert_detections",
           "fuse_detections", "vote_labels", "combine", "Member", "EnsembleTypeParams",
           "EnsembleConfig", "EnsembleModel", "DETECTION_TYPES"]

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

# Model folder types whose members are fused as detections (the rest vote with label images).
DETECTION_TYPES = ("maskrcnn",)


# ---------------------------------------------------------------------------------------------
# TTA


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


# ---------------------------------------------------------------------------------------------
# Weighted box fusion of detections


def _wbf_clusters(boxes_list, scores_list, labels_list, weights, iou_thr: float,
                  skip_box_thr: float, conf_type: str):
    """ensemble-boxes' ``weighted_boxes_fusion`` (boxes in [0, 1]) plus the members of each box.

    Returns ``(boxes (K, 4), scores (K,), labels (K,), members)``; ``members[k]`` lists
    ``(source t, index j)`` of the input boxes fused into box k. The rows, their order and the
    clustering are the package's (``prefilter_boxes`` with the input index kept alongside,
    ``find_matching_box_fast``, ``get_weighted_box``, the final rescaling for ``avg`` / ``max``),
    so the fused boxes and scores are the package's own.
    """
    from ensemble_boxes.ensemble_boxes_wbf import find_matching_box_fast, get_weighted_box

    weights = np.asarray(weights, np.float64)
    rows: dict[int, list] = {}
    srcs: dict[int, list] = {}
    for t in range(len(boxes_list)):
        bx = np.asarray(boxes_list[t], np.float64).reshape(-1, 4)
        sc = np.asarray(scores_list[t], np.float64).reshape(-1)
        lb = np.asarray(labels_list[t]).reshape(-1)
        for j in range(len(bx)):
            if sc[j] < skip_box_thr:
                continue
            x1, y1, x2, y2 = (float(v) for v in bx[j])
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
            x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2))
            if (x2 - x1) * (y2 - y1) == 0.0:
                continue
            label = int(lb[j])
            rows.setdefault(label, []).append(
                [label, float(sc[j]) * weights[t], weights[t], t, x1, y1, x2, y2])
            srcs.setdefault(label, []).append((t, j))
    if not rows:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0), []
    out_rows, out_members = [], []
    for label in rows:
        arr = np.array(rows[label])
        order = arr[:, 1].argsort()[::-1]   # the package's sort, on the same array
        arr, src = arr[order], [srcs[label][i] for i in order]
        clusters: list[list] = []
        members: list[list] = []
        fused = np.empty((len(arr), 8))
        n = 0
        for k in range(len(arr)):
            idx, _ = find_matching_box_fast(fused[:n], arr[k], iou_thr)
            if idx != -1:
                clusters[idx].append(arr[k])
                members[idx].append(src[k])
                fused[idx] = get_weighted_box(clusters[idx], conf_type)
            else:
                clusters.append([arr[k].copy()])
                members.append([src[k]])
                fused[n] = arr[k]
                n += 1
        fused = fused[:n]
        for i in range(n):
            if conf_type == "max":
                fused[i, 1] = fused[i, 1] / weights.max()
            else:  # "avg", allows_overflow=False
                fused[i, 1] = fused[i, 1] * min(len(weights), len(clusters[i])) / weights.sum()
        out_rows.append(fused)
        out_members += members
    allrows = np.concatenate(out_rows, axis=0)
    order = allrows[:, 1].argsort()[::-1]
    allrows = allrows[order]
    return allrows[:, 4:], allrows[:, 1], allrows[:, 0], [out_members[i] for i in order]


def _resample_mask(mask: np.ndarray, src_box, dst_box, size: int) -> np.ndarray:
    """``mask`` (M x M over ``src_box``) sampled at the ``size x size`` grid of ``dst_box``.

    Grid cell (i, j) of a box (x0, y0, x1, y1) has its centre at
    ``(x0 + (j + .5) (x1 - x0) / size, y0 + (i + .5) (y1 - y0) / size)``; bilinear, zero outside
    the source grid (as :func:`kit.postprocess.paste_window`). Same box and size: ``mask`` itself.
    """
    import cv2

    m = mask.shape[0]
    if m == size and np.array_equal(np.asarray(src_box), np.asarray(dst_box)):
        return mask
    sx0, sy0, sx1, sy1 = (float(v) for v in src_box)
    dx0, dy0, dx1, dy1 = (float(v) for v in dst_box)
    sw, sh = max(sx1 - sx0, 1e-6), max(sy1 - sy0, 1e-6)
    ax = (dx1 - dx0) / size * m / sw
    ay = (dy1 - dy0) / size * m / sh
    bx = (dx0 + 0.5 * (dx1 - dx0) / size - sx0) * m / sw - 0.5
    by = (dy0 + 0.5 * (dy1 - dy0) / size - sy0) * m / sh - 0.5
    inv = np.array([[ax, 0.0, bx], [0.0, ay, by]], np.float64)
    return cv2.warpAffine(np.ascontiguousarray(mask, np.float32), inv, (size, size),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def fuse_detections(dets: Sequence[Detections], weights: Sequence[float] | None = None,
                    iou_thr: float = 0.55, skip_box_thr: float = 0.0,
                    conf_type: Literal["avg", "max"] = "avg") -> Detections:
    """Weighted box fusion (ensemble-boxes) of several detectors' / views' Detections of one image.

    Class-aware, like the package: only boxes of the same class fuse (a Mask R-CNN's own
    per-class NMS at ``box_nms_thresh`` <= ``iou_thr`` leaves no two boxes of one class to fuse,
    so one source fuses to itself). ``iou_thr`` / ``skip_box_thr`` / ``conf_type`` are the
    package's arguments (its defaults 0.55 / 0.0 / avg). Masks: see the module docstring.
    A cluster whose members all have the same box keeps that box exactly (the package's float
    round trip through [0, 1] would move it by ~1e-5 px). Sources with weight 0 are dropped.
    """
    dets = list(dets)
    if not dets:
        raise ValueError("fuse_detections needs at least one Detections")
    weights = [1.0] * len(dets) if weights is None else [float(w) for w in weights]
    if len(weights) != len(dets):
        raise ValueError(f"weights has {len(weights)} values for {len(dets)} Detections")
    if min(weights) < 0:
        raise ValueError(f"weights must be >= 0, got {weights}")
    if conf_type not in ("avg", "max"):
        raise ValueError(f"conf_type must be 'avg' or 'max', got {conf_type!r}")
    shape, names = dets[0].image_shape, dets[0].class_names
    for d in dets[1:]:
        if d.image_shape != shape or d.class_names != names:
            raise ValueError(f"all Detections must share image_shape and class_names: got "
                             f"{d.image_shape} {d.class_names} and {shape} {names}")
    keep = [i for i, w in enumerate(weights) if w > 0]
    if not keep:
        raise ValueError(f"all weights are 0: {weights}")
    dets, weights = [dets[i] for i in keep], [weights[i] for i in keep]
    sizes = {d.masks.shape[1] for d in dets if d.masks is not None and len(d)}
    if any(d.masks is None and len(d) for d in dets):
        raise ValueError("fuse_detections needs mask probabilities in every Detections (masks is None)")
    size = max(sizes) if sizes else 28
    h, w = shape
    scale = np.array([w, h, w, h], np.float64)
    boxes, scores, labels, members = _wbf_clusters(
        [d.boxes.astype(np.float64) / scale for d in dets], [d.scores for d in dets],
        [d.classes for d in dets], weights, iou_thr, skip_box_thr, conf_type)
    k = len(members)
    out_boxes = (boxes * scale).astype(np.float32).reshape(k, 4)
    out_masks = np.zeros((k, size, size), np.float32)
    for i, mem in enumerate(members):
        first = dets[mem[0][0]].boxes[mem[0][1]]
        if all(np.array_equal(dets[t].boxes[j], first) for t, j in mem):
            out_boxes[i] = first
        acc = np.zeros((size, size), np.float64)
        total = 0.0
        for t, j in mem:
            wgt = float(dets[t].scores[j]) * weights[t]
            acc += wgt * _resample_mask(dets[t].masks[j], dets[t].boxes[j], out_boxes[i], size)
            total += wgt
        if total > 0:
            out_masks[i] = acc / total
        else:  # all members scored 0: plain mean
            out_masks[i] = np.mean([_resample_mask(dets[t].masks[j], dets[t].boxes[j],
                                                   out_boxes[i], size) for t, j in mem], axis=0)
    return Detections(out_boxes, scores.astype(np.float32), labels.astype(np.int64), out_masks,
                      shape, names)


# ---------------------------------------------------------------------------------------------
# Instance vote of label images


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels renumbered 1..n in ascending order of the original values, n)."""
    from kit.rle import check_label_image, compact_labels

    lab = check_label_image(np.asarray(labels), "labels")
    if lab.size and lab.min() >= 0 and lab.max() <= 4 * lab.size:
        present = np.bincount(lab.reshape(-1)) > 0   # a lookup table: O(pixels), no sort
        present[0] = False
        lut = np.cumsum(present).astype(np.int32) * present
        return lut[lab], int(present.sum())
    comp, values = compact_labels(lab)
    return comp.astype(np.int32), len(values) - 1


def vote_labels(labels_list: Sequence[np.ndarray], weights: Sequence[float] | None = None,
                min_support: float = 0.5, pixel_vote: float = 0.5,
                match_iou: float = 0.5) -> np.ndarray:
    """Instance-level vote of several label images of one image (module docstring).

    ``labels_list``: (H, W) integer label images (0 = background); ``weights`` one per image
    (default 1). Returns an (H, W) int32 label image, labels 1..K, non-overlapping.
    Memory: the voters plus one window per cluster (never a stack of all instances).
    """
    from scipy import ndimage

    from kit.metric import iou_pairs

    labels_list = list(labels_list)
    if not labels_list:
        raise ValueError("vote_labels needs at least one label image")
    weights = [1.0] * len(labels_list) if weights is None else [float(w) for w in weights]
    if len(weights) != len(labels_list):
        raise ValueError(f"weights has {len(weights)} values for {len(labels_list)} label images")
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {weights}")
    for name, v in (("min_support", min_support), ("pixel_vote", pixel_vote), ("match_iou", match_iou)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    shape = np.shape(labels_list[0])
    for lab in labels_list[1:]:
        if np.shape(lab) != shape:
            raise ValueError(f"label images have different shapes: {np.shape(lab)} and {shape}")
    keep = [i for i, w in enumerate(weights) if w > 0]
    voters = [_compact(labels_list[i]) for i in keep]
    weights = [weights[i] for i in keep]
    total = float(sum(weights))
    objs = [ndimage.find_objects(lab, max_label=n) if n else [] for lab, n in voters]

    # clusters: anchor (voter, label) and {voter: label}
    anchors: list[tuple[int, int]] = []
    members: list[dict[int, int]] = []
    anchor_of: dict[tuple[int, int], int] = {}
    for m, (lab, n) in enumerate(voters):
        assigned = np.zeros(n + 1, bool)
        cand = []
        for a in range(m):
            if not voters[a][1] or not n:
                continue
            ga, pm, iou = iou_pairs(voters[a][0], lab)
            sel = iou > match_iou
            for la, lm, v in zip(ga[sel], pm[sel], iou[sel]):
                c = anchor_of.get((a, int(la)))
                if c is not None:
                    cand.append((-float(v), c, int(lm)))
        for _, c, lm in sorted(cand):   # best IoU first; one instance per voter per cluster
            if not assigned[lm] and m not in members[c]:
                members[c][m] = lm
                assigned[lm] = True
        for lm in range(1, n + 1):
            if not assigned[lm] and objs[m][lm - 1] is not None:
                anchor_of[(m, lm)] = len(anchors)
                anchors.append((m, lm))
                members.append({m: lm})

    support = np.array([sum(weights[m] for m in mem) for mem in members])
    eps = 1e-9 * max(total, 1.0)
    order = [c for c in sorted(range(len(members)), key=lambda c: (-support[c], anchors[c]))
             if support[c] >= min_support * total - eps]
    out = np.zeros(shape, np.int32)
    next_label = 1
    for c in order:
        sl = [objs[m][lm - 1] for m, lm in members[c].items()]
        r0, r1 = min(s[0].start for s in sl), max(s[0].stop for s in sl)
        c0, c1 = min(s[1].start for s in sl), max(s[1].stop for s in sl)
        acc = np.zeros((r1 - r0, c1 - c0), np.float64)
        for m, lm in members[c].items():
            acc += weights[m] * (voters[m][0][r0:r1, c0:c1] == lm)
        window = out[r0:r1, c0:c1]
        new = (acc >= pixel_vote * support[c] - eps) & (acc > 0) & (window == 0)
        if new.any():
            window[new] = next_label
            next_label += 1
    return out


# ---------------------------------------------------------------------------------------------
# Config and combination


@dataclass(frozen=True)
class Member:
    """One member model folder (path relative to the ensemble folder, or absolute)."""

    path: str
    weight: float = 1.0

    def __post_init__(self):
        if not self.weight >= 0:
            raise ValueError(f"weight must be >= 0, got {self.weight!r}")


@dataclass(frozen=True)
class EnsembleTypeParams:
    """Fusion parameters of one cell type (tuned by ``python -m kit.tune``)."""

    weights: tuple[float, ...] = ()  # one per member, replacing the members' weights; () = theirs
    wbf_iou: float = 0.55       # ensemble-boxes' default iou_thr
    wbf_skip: float = 0.0       # ensemble-boxes' default skip_box_thr
    min_support: float = 0.5    # cluster kept when its voters weigh >= this x total weight
    pixel_vote: float = 0.5     # pixel kept when covered by >= this x the cluster's weight
    match_iou: float = 0.5      # instances of two voters match when IoU > this

    def __post_init__(self):
        for name in ("wbf_iou", "wbf_skip", "min_support", "pixel_vote", "match_iou"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if any(w < 0 for w in self.weights) or (self.weights and sum(self.weights) <= 0):
            raise ValueError(f"weights must be >= 0 with a positive sum, got {list(self.weights)}")


@dataclass(frozen=True)
class EnsembleConfig:
    """``model.json["config"]`` of an ensemble folder."""

    members: tuple[Member, ...] = ()
    tta: tuple[str, ...] = ("id",)
    conf_type: Literal["avg", "max"] = "avg"
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)  # fused detections
    shsy5y: EnsembleTypeParams = field(default_factory=EnsembleTypeParams)
    astro: EnsembleTypeParams = field(default_factory=EnsembleTypeParams)
    cort: EnsembleTypeParams = field(default_factory=EnsembleTypeParams)

    def __post_init__(self):
        if not self.members:
            raise ValueError("members: an ensemble needs at least one member")
        if not self.tta or len(set(self.tta)) != len(self.tta):
            raise ValueError(f"tta must be a non-empty list of distinct transforms, got {list(self.tta)}")
        for name in self.tta:
            _check_transform(name)
        for ct in CELL_TYPES:
            w = getattr(self, ct).weights
            if w and len(w) != len(self.members):
                raise ValueError(f"{ct}.weights has {len(w)} values for {len(self.members)} members")

    def params(self, cell_type: str) -> EnsembleTypeParams:
        check_cell_type(cell_type)
        return getattr(self, cell_type)

    def member_weights(self, cell_type: str) -> tuple[float, ...]:
        w = self.params(cell_type).weights
        return tuple(w) if w else tuple(m.weight for m in self.members)


def combine(det_sources: Sequence[tuple[Detections, float]],
            label_sources: Sequence[tuple[np.ndarray, float]], cell_type: str | None,
            params: EnsembleTypeParams, postprocess_config: PostprocessConfig,
            conf_type: str = "avg", fused: Detections | None = None) -> np.ndarray:
    """One image's label image from weighted detection sources and weighted label sources.

    Detection sources are fused (:func:`fuse_detections`, ``params.wbf_iou`` /
    ``params.wbf_skip``) and painted (:func:`kit.postprocess.postprocess` with ``cell_type``;
    None = the class vote); that label image votes with the sum of their weights, each label
    source with its own (:func:`vote_labels`). Sources of weight 0 are ignored. ``fused``:
    the fusion of ``det_sources``, when the caller already has it (kit.tune reuses it).
    """
    from kit.postprocess import postprocess

    det_sources = [(d, float(w)) for d, w in det_sources if w > 0]
    voters = [(lab, float(w)) for lab, w in label_sources if w > 0]
    if det_sources:
        if fused is None:
            fused = fuse_detections([d for d, _ in det_sources], [w for _, w in det_sources],
                                    params.wbf_iou, params.wbf_skip, conf_type)
        painted = postprocess(fused, cell_type, postprocess_config)
        voters.insert(0, (painted, sum(w for _, w in det_sources)))
    if not voters:
        raise ValueError("combine: no source with a positive weight")
    if len(voters) == 1:
        return _compact(voters[0][0])[0]
    return vote_labels([v for v, _ in voters], [w for _, w in voters], params.min_support,
                       params.pixel_vote, params.match_iou)


# ---------------------------------------------------------------------------------------------
# The model folder


def raw_detections(model, image: np.ndarray, score_thresh: float | None = None) -> Detections:
    """Adapter: a detection member's raw output (``MaskRCNNModel.predict_raw``)."""
    return model.predict_raw(image, score_thresh=score_thresh)


class EnsembleModel:
    """An ensemble model folder: members are model folders, fused per image (module doc)."""

    TYPE = "ensemble"

    def __init__(self, config: EnsembleConfig, members: Sequence, kinds: Sequence[str],
                 folder: Path | None = None):
        if len(members) != len(config.members) or len(kinds) != len(members):
            raise ValueError(f"{len(config.members)} member configs, {len(members)} models, "
                             f"{len(kinds)} kinds")
        self.config = config
        self.members = list(members)
        self.kinds = list(kinds)   # "detections" or "labels"
        self.folder = folder

    @staticmethod
    def member_path(folder, member: Member) -> Path:
        return Path(folder) / member.path

    @classmethod
    def load(cls, folder) -> "EnsembleModel":
        from kit import config as kconfig
        from kit.models import load_model, model_type, read_model_json

        folder = Path(folder)
        path, doc = read_model_json(folder, cls.TYPE)
        cfg = kconfig.from_dict(EnsembleConfig, doc.get("config", {}), f"{path}: config")
        models, kinds = [], []
        for i, m in enumerate(cfg.members):
            mdir = cls.member_path(folder, m)
            if not (mdir / "model.json").is_file():
                raise FileNotFoundError(f"{path}: config.members[{i}].path: no model folder at {mdir}")
            kinds.append("detections" if model_type(mdir) in DETECTION_TYPES else "labels")
            models.append(load_model(mdir))
        return cls(cfg, models, kinds, folder)

    def save(self, folder) -> Path:
        from kit import config as kconfig

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        doc = {"type": self.TYPE, "config": kconfig.to_dict(self.config)}
        with atomic_open(folder / "model.json") as f:
            f.write(json.dumps(doc, indent=1) + "\n")
        return folder

    def sources(self, image: np.ndarray, cell_type: str | None, weights=None,
                skip: float | None = None):
        """``(detection sources, label sources)`` of one image: every member on every TTA view,
        mapped back to the image's frame, each as ``(output, weight)``; a member's weight is
        split evenly over the views. ``skip``: detections below it are not computed."""
        if weights is None:
            weights = (self.config.member_weights(cell_type) if cell_type is not None
                       else tuple(m.weight for m in self.config.members))
        views = self.config.tta
        dets, labels = [], []
        for name in views:
            view = tta_apply(name, image)
            for model, kind, w in zip(self.members, self.kinds, weights):
                if w <= 0:
                    continue
                if kind == "detections":
                    raw = raw_detections(model, view, skip if skip else None)
                    dets.append((tta_invert_detections(name, raw), w / len(views)))
                else:
                    if cell_type is None:
                        raise ValueError("an ensemble with label-image members needs the cell type")
                    labels.append((tta_invert_labels(name, model.predict(view, cell_type)),
                                   w / len(views)))
        return dets, labels

    def predict(self, image: np.ndarray, cell_type: str | None = None) -> np.ndarray:
        """(H, W) int32 label image: the fusion of every member on every TTA view."""
        if cell_type is not None:
            check_cell_type(cell_type)
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"image must be 2-D (H, W), got shape {image.shape}")
        p = self.config.params(cell_type) if cell_type else EnsembleTypeParams()
        dets, labels = self.sources(image, cell_type, skip=p.wbf_skip)
        if not dets and not labels:
            return np.zeros(image.shape, np.int32)
        return combine(dets, labels, cell_type, p, self.config.postprocess, self.config.conf_type)


def make_ensemble(out, members: Sequence[tuple[str, float]], tta: Sequence[str] = ("id",),
                  postprocess: PostprocessConfig | None = None) -> Path:
    """Write an ensemble folder. Member paths are stored relative to ``out`` when possible;
    the post-processing of fused detections defaults to the first Mask R-CNN member's (its
    ``tuned.yaml`` if it has one); the first member's ``celltype.joblib`` is copied."""
    import shutil

    from kit import config as kconfig
    from kit.models import model_type

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mems = []
    for path, weight in members:
        p = Path(path)
        model_type(p)  # a model folder of a known type
        try:
            rel = os.path.relpath(p.resolve(), out.resolve())
        except ValueError:  # another drive
            rel = str(p.resolve())
        mems.append(Member(rel, float(weight)))
        if postprocess is None and model_type(p) in DETECTION_TYPES:
            from kit.models import TUNED_FILE

            doc = json.loads((p / "model.json").read_text())
            section, where = doc.get("config", {}).get("postprocess", {}), p / "model.json"
            if (p / TUNED_FILE).is_file():
                from kit.tune import read_tuned

                section = read_tuned(p / TUNED_FILE).get("postprocess", section)
                where = p / TUNED_FILE
            postprocess = kconfig.from_dict(PostprocessConfig, section, f"{where}: postprocess")
    cfg = EnsembleConfig(members=tuple(mems), tta=tuple(tta),
                         postprocess=postprocess or PostprocessConfig())
    for path, _ in members:
        src = Path(path) / "celltype.joblib"
        if src.is_file():
            shutil.copyfile(src, out / "celltype.joblib")
            break
    doc = {"type": EnsembleModel.TYPE, "config": kconfig.to_dict(cfg)}
    with atomic_open(out / "model.json") as f:
        f.write(json.dumps(doc, indent=1) + "\n")
    return out


def _parse_member(text: str) -> tuple[str, float]:
    path, sep, weight = text.rpartition(":")
    if not sep or not path:
        return text, 1.0
    try:
        return path, float(weight)
    except ValueError:
        return text, 1.0


def _main(argv=None) -> int:
    from kit.errors import one_line

    parser = argparse.ArgumentParser(
        prog="python -m kit.ensemble", description="Write an ensemble model folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="ensemble folder to write")
    parser.add_argument("--member", action="append", required=True, metavar="DIR[:WEIGHT]",
                        help="member model folder, optionally with its weight (repeat)")
    parser.add_argument("--tta", default="id",
                        help=f"comma-separated TTA views, of {','.join(TRANSFORMS)}")
    args = parser.parse_args(argv)
    try:
        members = [_parse_member(m) for m in args.member]
        out = make_ensemble(args.out, members, [t.strip() for t in args.tta.split(",") if t.strip()])
    except (ValueError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'model.json'}: {len(members)} member(s), TTA {args.tta}")
    return 0


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
