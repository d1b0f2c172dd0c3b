"""Cellpose training data: ground-truth label images, the network's input normalisation, the
in-memory image set of a training run and the per-cell-type median diameters."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from kit import CELL_TYPES
from kit.models.cellpose.config import CHANNELS


def training_labels(rles: Sequence[str], shape) -> np.ndarray:
    """(H, W) int32 label image of possibly overlapping Kaggle RLE masks, for training.

    Masks are painted in order of decreasing area, so where masks overlap the **smaller** mask
    wins; equal areas keep list order (the later mask wins, like ``kit.rle.decode_labels``).
    Label ``k + 1`` is ``rles[order[k]]``; a mask covered completely by smaller masks vanishes.
    """
    from kit import rle

    rles = list(rles)
    if not rles:
        return np.zeros(tuple(shape), np.int32)
    ptr, _, lengths = rle.parse_runs(rles, shape)
    owner = np.repeat(np.arange(len(rles)), np.diff(ptr))
    area = np.bincount(owner, weights=lengths, minlength=len(rles))
    order = np.argsort(-area, kind="stable")
    return rle.decode_labels([rles[i] for i in order], shape)


def _normalize_params() -> dict:
    from cellpose import models

    # a copy: cellpose's eval writes into models.normalize_default
    return {**models.normalize_default, "normalize": True, "invert": False}


def net_input(image: np.ndarray) -> np.ndarray:
    """(2, H, W) float32 network input of an (H, W) image, as ``CellposeModel.eval`` makes it
    with ``channels=[0, 0]``: channel 0 = the image scaled so its 1st/99th percentiles are 0/1,
    channel 1 = zeros (the absent nuclear channel)."""
    from cellpose import transforms

    x = transforms.convert_image(np.asarray(image), CHANNELS, nchan=2)
    x = transforms.normalize_img(x, **_normalize_params())
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


@dataclass
class _ImageSet:
    """Training images in memory: per image ~4.3 MB at 520x704 (float16 input and flows)."""

    ids: list = field(default_factory=list)
    cell_types: list = field(default_factory=list)
    x: list = field(default_factory=list)       # (H, W) float16: channel 0 of net_input
    flows: list = field(default_factory=list)   # (3, H, W) float16: cell prob., Y flow, X flow
    labels: list = field(default_factory=list)  # (H, W) int32 (size model, diameters)
    diam: list = field(default_factory=list)    # cellpose diameter of the image's masks, >= 5
    skipped: list = field(default_factory=list)  # ids with too few masks

    def __len__(self):
        return len(self.ids)

    def batch(self, inds):
        """Network inputs (2, H, W) and targets (3, H, W), float32, of images ``inds``."""
        xs = []
        for i in inds:
            x0 = self.x[i].astype(np.float32)
            xs.append(np.stack([x0, np.zeros_like(x0)]))
        return xs, [self.flows[i].astype(np.float32) for i in inds]


def _prepare(records, min_masks: int, device, desc: str, progress: bool) -> _ImageSet:
    from cellpose import dynamics, utils
    from tqdm import tqdm

    out = _ImageSet()
    for rec in tqdm(list(records), desc=desc, unit="img", disable=not progress):
        labels = training_labels(rec.rles, rec.shape)
        n = int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
        if n < max(min_masks, 1):
            out.skipped.append(rec.id)
            continue
        flows = dynamics.labels_to_flows([labels.copy()], device=device)[0]  # (4, H, W)
        labels = flows[0].astype(np.int32)  # renumbered 1..n by cellpose
        out.ids.append(rec.id)
        out.cell_types.append(rec.cell_type)
        out.x.append(net_input(rec.load_image())[0].astype(np.float16))
        out.flows.append(flows[1:].astype(np.float16))
        out.labels.append(labels)
        out.diam.append(max(5.0, float(utils.diameters(labels)[0])))
    return out


def _median_diameters(data: _ImageSet, diam_mean: float) -> dict:
    """Per cell type: median of the images' diameters (all images' median when a type has none)."""
    overall = float(np.median(data.diam)) if len(data) else float(diam_mean)
    out = {}
    for ct in CELL_TYPES:
        d = [v for v, t in zip(data.diam, data.cell_types) if t == ct]
        out[ct] = ({"diameter": float(np.median(d)), "n_images": len(d), "source": "training fold"}
                   if d else {"diameter": overall, "n_images": 0,
                              "source": "no image of this type: median of all training images"})
    return out
