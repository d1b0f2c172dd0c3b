"""Cellpose training data: ground-truth label images, the network's input normalisation, the
image set of a training run (its targets cached on disk, read per batch) and the per-cell-type
median diameters."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
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


# Bump when what a cached target file holds changes: older files are then never read.
TARGETS_VERSION = 1


def targets_cache_dir() -> Path:
    """Where training targets are cached: ``$KIT_CACHE/cellpose_targets`` (default
    ``~/.cache/kit``). Shared by every run and fold on the machine."""
    root = os.environ.get("KIT_CACHE") or Path.home() / ".cache" / "kit"
    return Path(root) / "cellpose_targets"


def target_key(rec, device_type: str) -> str:
    """sha256 of everything a cached target depends on: the image file's bytes, the shape and
    the masks, the cellpose version, the device type of the flow computation and
    :data:`TARGETS_VERSION`."""
    import cellpose

    h = hashlib.sha256()
    for part in (f"v{TARGETS_VERSION}", getattr(cellpose, "version", "?"), device_type,
                 f"{rec.shape[0]}x{rec.shape[1]}", "\n".join(rec.rles)):
        h.update(part.encode() + b"\0")
    h.update(Path(rec.image_path).read_bytes())
    return h.hexdigest()


@dataclass
class _ImageSet:
    """Training images of a run: ids, cell types and diameters in memory, the arrays on disk.

    Per image the cache holds ``<key>.x.npy`` ((H, W) float16: channel 0 of :func:`net_input`),
    ``<key>.flows.npy`` ((3, H, W) float16: cell probability, Y flow, X flow), ``<key>.labels.npy``
    ((H, W) int32, renumbered 1..n by cellpose) and ``<key>.json`` (mask count and diameter,
    written last: a file set without it is incomplete and is made again). Arrays are read per
    batch, so memory does not grow with the number of images.
    """

    ids: list = field(default_factory=list)
    cell_types: list = field(default_factory=list)
    diam: list = field(default_factory=list)    # cellpose diameter of the image's masks, >= 5
    files: list = field(default_factory=list)   # per image: the cache path without suffix
    skipped: list = field(default_factory=list)  # ids with too few masks
    built: int = 0                               # targets computed by this run (not cached)

    def __len__(self):
        return len(self.ids)

    def x(self, i: int) -> np.ndarray:
        return np.load(f"{self.files[i]}.x.npy")

    def flows(self, i: int) -> np.ndarray:
        return np.load(f"{self.files[i]}.flows.npy")

    def labels(self, i: int) -> np.ndarray:
        return np.load(f"{self.files[i]}.labels.npy")

    def batch(self, inds):
        """Network inputs (2, H, W) and targets (3, H, W), float32, of images ``inds``."""
        xs = []
        for i in inds:
            x0 = self.x(i).astype(np.float32)
            xs.append(np.stack([x0, np.zeros_like(x0)]))
        return xs, [self.flows(i).astype(np.float32) for i in inds]

    def batches(self, index_batches):
        """Yield ``(inds, batch(inds))`` for each of ``index_batches``, the next batch read from
        disk by a background thread while the caller works on this one (``np.load`` releases
        the GIL): on a GPU, where a step takes about as long as reading its 8 images (~0.1 s),
        the reads leave the step's path; on CPU they are a few % of a step."""
        from concurrent.futures import ThreadPoolExecutor

        index_batches = list(index_batches)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellpose-read") as pool:
            ahead = pool.submit(self.batch, index_batches[0]) if index_batches else None
            for k, inds in enumerate(index_batches):
                current = ahead.result()
                if k + 1 < len(index_batches):
                    ahead = pool.submit(self.batch, index_batches[k + 1])
                yield inds, current


def _build_targets(rec, device, base: Path) -> dict:
    """Compute one image's targets into ``base.*`` (atomic writes); returns its json."""
    from cellpose import dynamics, utils

    from kit.atomic import atomic_open

    labels = training_labels(rec.rles, rec.shape)
    n = int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
    info = {"n_masks": n, "diam": None}
    if n:
        flows = dynamics.labels_to_flows([labels.copy()], device=device)[0]  # (4, H, W)
        labels = flows[0].astype(np.int32)  # renumbered 1..n by cellpose
        arrays = {"x": net_input(rec.load_image())[0].astype(np.float16),
                  "flows": flows[1:].astype(np.float16), "labels": labels}
        for name, arr in arrays.items():
            with atomic_open(f"{base}.{name}.npy", "wb") as f:
                np.save(f, arr)
        info["diam"] = max(5.0, float(utils.diameters(labels)[0]))
    with atomic_open(f"{base}.json") as f:
        f.write(json.dumps(info))
    return info


def _prepare(records, min_masks: int, device, desc: str, progress: bool,
             cache: Path | None = None) -> _ImageSet:
    """The image set of ``records``: targets read from the cache (``cache`` or
    :func:`targets_cache_dir`) or computed into it; images with fewer than ``min_masks`` masks
    are skipped (cellpose's rule)."""
    from tqdm import tqdm

    cache = Path(cache) if cache is not None else targets_cache_dir()
    device_type = getattr(device, "type", str(device))
    out = _ImageSet()
    for rec in tqdm(list(records), desc=desc, unit="img", disable=not progress):
        key = target_key(rec, device_type)
        base = cache / key[:2] / key
        done = Path(f"{base}.json")
        if done.is_file():
            info = json.loads(done.read_text())
        else:
            base.parent.mkdir(parents=True, exist_ok=True)
            info = _build_targets(rec, device, base)
            out.built += 1
        if info["n_masks"] < max(min_masks, 1):
            out.skipped.append(rec.id)
            continue
        out.ids.append(rec.id)
        out.cell_types.append(rec.cell_type)
        out.diam.append(info["diam"])
        out.files.append(str(base))
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
