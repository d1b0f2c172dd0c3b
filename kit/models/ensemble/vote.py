"""Instance vote of label images: instances matched across voters by IoU, kept by weighted
support, their masks a pixel vote."""
from __future__ import annotations

from typing import Sequence

import numpy as np


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
