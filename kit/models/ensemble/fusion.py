"""Weighted box fusion of detections (several detectors or TTA views of one image) by the
``ensemble-boxes`` package, with each fused box's mask averaged from its members' masks."""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from kit.postprocess import Detections


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
