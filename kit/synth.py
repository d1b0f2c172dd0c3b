"""Synthetic Sartorius-like data: phase-contrast-looking images with instance ground truth.

``python -m kit.synth OUT_DIR --n-train N --n-test M --seed S`` writes a dataset laid out like
the competition's::

    OUT_DIR/train.csv             id,annotation,width,height,cell_type,plate_time,sample_date,
                                  sample_id,elapsed_timedelta  (one row per instance, Kaggle RLE)
    OUT_DIR/train/<id>.png        (H, W) uint8 grayscale
    OUT_DIR/test/<id>.png
    OUT_DIR/sample_submission.csv id,predicted (empty predictions)
    OUT_DIR/test_labels.csv       the test set's ground truth, same columns as train.csv
    OUT_DIR/synth_params.json     seed, counts, per-type parameters, hollow-mask ids

Images are ``shape = (H, W)`` (default ``kit.IMAGE_SHAPE``, 520 x 704); ``width``/``height`` in
the csv are that W and H. For a smaller shape the cell counts scale with the image area, cell
sizes do not. Ids are 12-char lowercase hex. Images come in samples of 3-4 images of one cell
type sharing a ``sample_id`` (and density and look), so grouped folds mean something.

Like the real ``train.csv``, the ground truth is not a clean partition: a few masks reach 1-2 px
into a touching neighbour (overlapping annotations) and in some astro images a few masks are
only a closed ring (hollow annotation artifact). The image itself is rendered from the clean,
non-overlapping label image. ``synth_params.json["hollow_masks"]`` maps image id -> 0-based
indices, among that image's csv rows, of the hollow masks. Astro cells are a body with 0-4
processes, as near-convex or as branched as the real astro annotations
(``ASTRO_SOLIDITY_REAL``).

Everything is a function of ``seed`` (numpy ``Generator``): same arguments, byte-identical files.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from kit import CELL_TYPES, IMAGE_SHAPE
from kit import rle
from kit.atomic import atomic_folder

__all__ = ["CellTypeSpec", "SPECS", "SynthImage", "make_image", "make_dataset", "main"]

# --- Statistics of the real data: EDA of the competition's train.csv (606 images, 73,585 masks).
# 606 train images: cort 320, shsy5y 155, astro 131.
TYPE_COUNTS_EDA = {"cort": 320, "shsy5y": 155, "astro": 131}
# Cells per 520x704 image: (mean, sd, min, max).
CELLS_PER_IMAGE_EDA = {"cort": (33.7, 16.5, 4, 108), "shsy5y": (337.0, 150.0, 49, 790),
                       "astro": (80.0, 64.0, 5, 594)}
# Mask area in px: (mean, min, max).
AREA_EDA = {"cort": (240.0, 33, 2054), "shsy5y": (225.0, 30, 2254), "astro": (906.0, 37, 13327)}
# Astro mask solidity (area / convex-hull area, OpenCV contours; small masks exceed 1), quantiles
# 10/25/50/75/90 % over the 8,845 astro masks of ../shared/data/sartorius/train.csv: half the real
# astro annotations are near-convex blobs, a quarter clearly branched (tests/test_synth.py).
ASTRO_SOLIDITY_REAL = (0.487, 0.658, 0.826, 0.955, 1.042)
# Astro shape: 0-4 processes (uniform); with processes, the body holds a uniform share of the area
# in this range. Chosen so that the solidity quantiles above are matched within ~0.04
# (0.52 / 0.63 / 0.81 / 0.98 / 1.03 over 25 full-size images); the earlier 2-5 processes on a
# 35-60 % body gave 0.45 / 0.53 / 0.61 / 0.72 / 0.82, far more branched than the real annotations.
ASTRO_PROCESSES = (0, 4)
ASTRO_BODY_SHARE = (0.35, 0.9)

COLUMNS = ("id", "annotation", "width", "height", "cell_type", "plate_time", "sample_date",
           "sample_id", "elapsed_timedelta")
# Share of an astro image set that has hollow masks, and share of cells hollow in such an image
# (chosen: the real artifact is rare, a handful of astro images, e.g. 3bcc8ba1dc17).
HOLLOW_IMAGE_FRACTION = 0.25
HOLLOW_CELL_FRACTION = 0.05
# Coefficient of variation of the cell count among the images of one sample (chosen).
WITHIN_SAMPLE_CV = 0.3
_HOLLOW_MIN_AREA = 300  # only cells larger than this get a hollow mask
_SAMPLE_CONDITIONS = {"shsy5y": ("shsy5y", ("diff",)),
                      "astro": ("astros", ("hyperosmotic", "diff")),
                      "cort": ("cort", ("density", "oka-high", "pre-treat", "debris"))}


@dataclass(frozen=True)
class CellTypeSpec:
    """How one cell type is drawn. Counts and areas from the EDA; shape/look chosen by eye.

    ``area_scale`` compensates the area lost to neighbours and image borders so that the measured
    mean mask area lands on ``area_mean`` (calibrated on full-size images).
    """
    count_mean: float
    count_sd: float
    count_min: int
    count_max: int
    area_mean: float
    area_min: int
    area_max: int
    area_sigma: float       # sd of log(area)
    area_scale: float       # multiplier on the drawn area, see above
    elongation: tuple[float, float]   # major/minor axis ratio range
    roughness: float        # amplitude of the radial harmonics (0 = ellipse)
    cluster_prob: float     # chance a cell is placed against an existing one
    max_clip: float         # largest share of a new cell that may be cut off by neighbours
    gt_overlap_prob: float  # chance a touching cell's GT reaches into its neighbour
    body_offset: float      # mean intensity of the cell body relative to the background
    texture: float          # amplitude of the granular texture inside cells
    halo: float             # bright halo just outside cell borders
    rim: float              # dark rim just inside cell borders
    neurites: int           # unannotated thin lines in the background (per full-size image)


def _spec(ct: str, **kw) -> CellTypeSpec:
    m, s, lo, hi = CELLS_PER_IMAGE_EDA[ct]
    a, amin, amax = AREA_EDA[ct]
    return CellTypeSpec(count_mean=m, count_sd=s, count_min=lo, count_max=hi,
                        area_mean=a, area_min=amin, area_max=amax, **kw)


# Counts and areas from the EDA above; shape and look chosen by eye against the real images in
# ../shared/data (when present); area_scale calibrated so the measured mean area over 60 full-size images matches.
SPECS: dict[str, CellTypeSpec] = {
    "cort": _spec("cort", area_sigma=0.45, area_scale=0.93, elongation=(1.0, 1.7), roughness=0.06,
                  cluster_prob=0.25, max_clip=0.3, gt_overlap_prob=0.15, body_offset=-6.0,
                  texture=5.0, halo=22.0, rim=10.0, neurites=40),
    "shsy5y": _spec("shsy5y", area_sigma=0.55, area_scale=0.94, elongation=(1.6, 4.0),
                    roughness=0.16, cluster_prob=0.7, max_clip=0.35, gt_overlap_prob=0.08,
                    body_offset=-4.0, texture=9.0, halo=12.0, rim=8.0, neurites=80),
    "astro": _spec("astro", area_sigma=0.85, area_scale=1.38, elongation=(1.0, 2.2),
                   roughness=0.12, cluster_prob=0.5, max_clip=0.35, gt_overlap_prob=0.15,
                   body_offset=2.0, texture=4.0, halo=9.0, rim=5.0, neurites=25),
}


@dataclass(frozen=True)
class SynthImage:
    """One synthetic image and its ground truth.

    ``image`` (H, W) uint8; ``labels`` (H, W) int32 clean instance labels 1..N (what is drawn);
    ``annotations`` N Kaggle RLEs in label order (the GT as written to the csv, with overlaps
    and hollow masks); ``hollow`` indices into ``annotations`` of the hollow masks;
    ``n_overlapping`` how many masks were grown into a neighbour.
    """
    image: np.ndarray
    labels: np.ndarray
    annotations: list[str]
    hollow: tuple[int, ...]
    n_overlapping: int


def _check_shape(shape) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width), got {shape!r}") from None
    if h < 32 or w < 32:
        raise ValueError(f"shape must be at least 32 x 32, got {shape!r}")
    return h, w


def _check_type(cell_type: str) -> CellTypeSpec:
    if cell_type not in SPECS:
        raise ValueError(f"unknown cell_type {cell_type!r}; valid types are {list(CELL_TYPES)}")
    return SPECS[cell_type]


def _gamma(rng: np.random.Generator, mean: float, sd: float) -> float:
    k = (mean / sd) ** 2
    return float(rng.gamma(k, sd * sd / mean))


def _count_range(spec: CellTypeSpec, shape) -> tuple[float, float, int, int]:
    """(mean, sd, min, max) of the cell count, scaled to the image area."""
    r = shape[0] * shape[1] / (IMAGE_SHAPE[0] * IMAGE_SHAPE[1])
    return (spec.count_mean * r, spec.count_sd * r, max(1, round(spec.count_min * r)),
            max(1, round(spec.count_max * r)))


# ---------------------------------------------------------------------------- shapes
def _blob_polygon(rng, area: float, elong: float, rough: float) -> np.ndarray:
    """(K, 2) float (x, y) polygon around 0 with the given area: a rough, rotated ellipse."""
    t = np.linspace(0.0, 2 * np.pi, 40, endpoint=False)
    r = np.ones_like(t)
    for k in (2, 3, 4, 5):
        r += rough * rng.normal() / k * 2 * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = np.clip(r, 0.35, None)
    x, y = r * np.cos(t) * math.sqrt(elong), r * np.sin(t) / math.sqrt(elong)
    a0 = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    s = math.sqrt(area / a0)
    phi = rng.uniform(0, np.pi)
    c, si = math.cos(phi), math.sin(phi)
    return np.stack([s * (c * x - si * y), s * (si * x + c * y)], axis=1)


def _draw(polys, lines, pad: int) -> tuple[np.ndarray, int, int]:
    """Rasterise polygons and thick polylines; returns (bool patch, cy, cx) of the origin."""
    pts = [p for p in polys] + [ln[0] for ln in lines]
    allp = np.concatenate(pts, axis=0)
    x0, y0 = np.floor(allp.min(axis=0)).astype(int) - pad
    x1, y1 = np.ceil(allp.max(axis=0)).astype(int) + pad
    patch = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    sh = 4  # sub-pixel bits
    off = np.array([x0, y0], float)
    for p in polys:
        cv2.fillPoly(patch, [np.round((p - off) * (1 << sh)).astype(np.int32)], 1, cv2.LINE_8, sh)
    for p, thick in lines:
        q = np.round(p - off).astype(int)
        for i in range(len(q) - 1):
            cv2.line(patch, (int(q[i, 0]), int(q[i, 1])), (int(q[i + 1, 0]), int(q[i + 1, 1])),
                     1, max(1, int(round(thick[i]))))
    return patch.astype(bool), -y0, -x0


def _cell_shape(rng, cell_type: str, spec: CellTypeSpec, area: float):
    elong = rng.uniform(*spec.elongation)
    if cell_type != "astro":
        poly = _blob_polygon(rng, area, elong, spec.roughness)
        if cell_type == "shsy5y" and rng.random() < 0.5:  # a short thin tail on spindle cells
            d = poly[np.argmax((poly ** 2).sum(1))]
            tail = np.stack([d * 0.8, d * rng.uniform(1.2, 1.6)])
            return _draw([poly], [(tail, [rng.uniform(2.0, 3.5)])], 3)
        return _draw([poly], [], 2)
    # astro: a body plus up to a few thick, tapering, slightly bent processes
    n = int(rng.integers(ASTRO_PROCESSES[0], ASTRO_PROCESSES[1] + 1))
    f_body = 1.0 if n == 0 else rng.uniform(*ASTRO_BODY_SHARE)
    body = _blob_polygon(rng, f_body * area, elong, spec.roughness)
    if n == 0:
        return _draw([body], [], 2)
    share = rng.dirichlet(np.full(n, 2.0)) * (1 - f_body) * area
    thick = float(np.clip(math.sqrt(area) / 7.0, 2.0, 9.0))
    base = rng.uniform(0, 2 * np.pi) + np.arange(n) * 2 * np.pi / n + rng.normal(0, 0.3, n)
    lines = []
    for a_i, ang in zip(share, base):
        length = a_i / thick
        seg = 4
        angs = ang + np.cumsum(rng.normal(0, 0.25, seg))
        steps = np.stack([np.cos(angs), np.sin(angs)], 1) * (length / seg)
        pts = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, 0)])
        lines.append((pts, thick * np.linspace(1.4, 0.6, seg)))
    return _draw([body], lines, int(thick) + 2)


# ---------------------------------------------------------------------------- layout
def _place_cells(rng, cell_type: str, spec: CellTypeSpec, shape, n_cells: int) -> np.ndarray:
    """(H, W) int32 non-overlapping labels 1..N with up to ``n_cells`` cells; touching allowed."""
    h, w = shape
    labels = np.zeros((h, w), np.int32)
    mu = math.log(spec.area_mean * spec.area_scale) - spec.area_sigma ** 2 / 2
    centers: list[tuple[float, float, float]] = []
    nxt = 1
    for _ in range(n_cells):
        area = float(np.clip(rng.lognormal(mu, spec.area_sigma), spec.area_min, spec.area_max))
        patch, py, px = _cell_shape(rng, cell_type, spec, area)
        radius = math.sqrt(area / math.pi)
        for _try in range(12):
            if centers and rng.random() < spec.cluster_prob:
                cy, cx, cr = centers[int(rng.integers(len(centers)))]
                ang = rng.uniform(0, 2 * np.pi)
                d = (cr + radius) * rng.uniform(0.75, 1.05)
                cy, cx = int(round(cy + d * math.sin(ang))), int(round(cx + d * math.cos(ang)))
            else:
                cy, cx = int(rng.integers(h)), int(rng.integers(w))
            y0, x0 = cy - py, cx - px
            ys, xs = max(y0, 0), max(x0, 0)
            ye, xe = min(y0 + patch.shape[0], h), min(x0 + patch.shape[1], w)
            if ye - ys < 2 or xe - xs < 2:
                continue
            pm = patch[ys - y0:ye - y0, xs - x0:xe - x0]
            region = labels[ys:ye, xs:xe]
            free = pm & (region == 0)
            n_in, n_free = int(pm.sum()), int(free.sum())
            if n_free < spec.area_min or n_free < (1 - spec.max_clip) * n_in:
                continue
            if n_free < n_in:  # clipped by neighbours: keep the largest piece
                k, comp, stats, _ = cv2.connectedComponentsWithStats(free.view(np.uint8), 4)
                if k > 2:
                    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
                    free = comp == best
                    if free.sum() < max(spec.area_min, (1 - spec.max_clip) * n_in):
                        continue
            region[free] = nxt
            centers.append((cy, cx, radius))
            nxt += 1
            break
    return labels


def _encode_crop(mask: np.ndarray, y0: int, x0: int, width: int) -> str:
    """Kaggle RLE, in a ``width``-wide image, of a bool crop whose top-left pixel is (y0, x0)."""
    ch, cw = mask.shape
    padded = np.zeros((ch, cw + 1), bool)  # a zero column so no run wraps to the next row
    padded[:, :cw] = mask
    _, starts, lengths = rle.parse_runs([rle.encode(padded)], padded.shape)
    row, col = np.divmod(starts, cw + 1)
    g = (row + y0) * width + col + x0 + 1
    return " ".join(f"{s} {n}" for s, n in zip(g.tolist(), lengths.tolist()))


def _annotations(rng, labels: np.ndarray, spec: CellTypeSpec, hollow_frac: float):
    """GT RLEs in label order, with a few masks grown into neighbours and a few made hollow.

    With ``hollow_frac > 0``, that share (at least one) of the cells larger than
    ``_HOLLOW_MIN_AREA`` px and clear of the image border get a closed ring-only mask; every other
    cell grows 1-2 px into its touching neighbours with chance ``spec.gt_overlap_prob``.
    """
    h, w = labels.shape
    ann = rle.encode_labels(labels)
    n = len(ann)
    on_border = np.zeros(n + 1, bool)
    on_border[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    big = np.flatnonzero((np.bincount(labels.ravel(), minlength=n + 1)[1:] > _HOLLOW_MIN_AREA)
                         & ~on_border[1:])
    n_hollow = max(1, round(hollow_frac * len(big))) if hollow_frac > 0 and len(big) else 0
    hollow = set(rng.choice(big, size=n_hollow, replace=False).tolist()) if n_hollow else set()
    grow = set(np.flatnonzero(rng.random(n) < spec.gt_overlap_prob).tolist()) - hollow
    reach = {i: (rng.random() < 0.7) for i in sorted(grow)}  # 1 px (else 2 px) into neighbours
    k3 = np.ones((3, 3), np.uint8)
    k5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    objects = ndimage.find_objects(labels)
    n_ov = 0
    for i in sorted(hollow | grow):
        sl = objects[i]
        y0, x0 = max(sl[0].start - 2, 0), max(sl[1].start - 2, 0)
        y1, x1 = min(sl[0].stop + 2, h), min(sl[1].stop + 2, w)
        crop = labels[y0:y1, x0:x1]
        m = crop == i + 1
        if i in hollow:
            m &= ~cv2.erode(m.view(np.uint8), k5, borderType=cv2.BORDER_REPLICATE).astype(bool)
        else:
            extra = cv2.dilate(m.view(np.uint8), k3 if reach[i] else k5).astype(bool)
            extra &= (crop != 0) & ~m
            if not extra.any():
                continue
            m |= extra
            n_ov += 1
        ann[i] = _encode_crop(m, y0, x0, w)
    return ann, tuple(sorted(hollow)), n_ov


# ---------------------------------------------------------------------------- rendering
_GRID_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _grid(h: int, w: int):
    if (h, w) not in _GRID_CACHE:
        yy, xx = np.mgrid[-1:1:h * 1j, -1:1:w * 1j].astype(np.float32)
        _GRID_CACHE[(h, w)] = (yy, xx)
    return _GRID_CACHE[(h, w)]


def _smooth_field(rng, h: int, w: int, cell: int) -> np.ndarray:
    """(h, w) float32 smooth random field, unit-ish amplitude, feature size ~``cell`` px."""
    small = rng.standard_normal((max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _render(rng, labels: np.ndarray, spec: CellTypeSpec, look: dict) -> np.ndarray:
    """(H, W) uint8 phase-contrast-like image of a label image."""
    h, w = labels.shape
    f32 = np.float32
    yy, xx = _grid(h, w)
    fg = labels > 0
    # background: 128, a gradient, vignetting, slow blotches
    img = (look["gx"] * xx + look["gy"] * yy - look["vignette"] * (xx * xx + yy * yy)
           + 2.0 * _smooth_field(rng, h, w, 64)).astype(f32)
    # unannotated neurites and debris
    clutter = np.zeros((h, w), f32)
    n_lines = int(round(spec.neurites * h * w / (IMAGE_SHAPE[0] * IMAGE_SHAPE[1])))
    for _ in range(n_lines):
        p = rng.uniform(0, 1, 2) * (w, h)
        ang, length = rng.uniform(0, 2 * np.pi), rng.uniform(20, 140)
        q = p + length * np.array([math.cos(ang), math.sin(ang)])
        cv2.line(clutter, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])),
                 float(rng.choice([-1.0, 1.0]) * rng.uniform(8, 20)), int(rng.integers(1, 3)),
                 cv2.LINE_AA)
    for _ in range(n_lines // 2):
        c = (int(rng.integers(w)), int(rng.integers(h)))
        cv2.circle(clutter, c, int(rng.integers(1, 4)), float(rng.uniform(-30, -10)), -1)
    img += clutter
    # cells: body offset per cell, granular texture with dark granules, dark rim inside and
    # bright halo outside every border (also between touching cells)
    n = int(labels.max())
    offs = np.zeros(n + 1, f32)
    offs[1:] = spec.body_offset * look["contrast"] + rng.normal(0, 2.5, n)
    grain = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(f32), (0, 0), 1.0) * 2.5
    granules = np.minimum(grain + 1.6, 0) * 12.0
    img += np.where(fg, offs[labels] + spec.texture * (grain + granules), f32(0))
    edge = np.zeros((h, w), bool)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    dist = cv2.distanceTransform((~edge).view(np.uint8), cv2.DIST_L2, 3)
    halo = spec.halo * look["contrast"] * np.exp(-dist / 1.5)
    rim = spec.rim * look["contrast"] * np.exp(-dist / 1.2)
    img += np.where(fg, -rim + 0.8 * halo * (edge & fg), halo)
    # relief: phase contrast shading along one direction
    soft = cv2.GaussianBlur(fg.astype(f32), (0, 0), 1.2)
    relief = (math.cos(look["relief_dir"]) * cv2.Sobel(soft, cv2.CV_32F, 1, 0, ksize=3)
              + math.sin(look["relief_dir"]) * cv2.Sobel(soft, cv2.CV_32F, 0, 1, ksize=3))
    img += look["relief"] * relief
    img = cv2.GaussianBlur(img, (0, 0), look["blur"])
    img += rng.standard_normal((h, w)).astype(f32) * look["noise"]
    img += 128.0 - float(img.mean())
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _look(rng) -> dict:
    """Per-sample imaging parameters (shared by all images of a sample)."""
    return {"gx": float(rng.normal(0, 3)), "gy": float(rng.normal(0, 3)),
            "vignette": float(rng.uniform(2, 6)), "contrast": float(rng.uniform(0.8, 1.2)),
            "relief": float(rng.uniform(10, 20)), "relief_dir": float(rng.uniform(0, 2 * np.pi)),
            "blur": float(rng.uniform(0.5, 0.8)), "noise": float(rng.uniform(4.5, 7.0))}


def make_image(cell_type: str, rng: np.random.Generator, shape=IMAGE_SHAPE, *,
               n_cells: int | None = None, look: dict | None = None,
               hollow_frac: float = 0.0) -> SynthImage:
    """One synthetic image of ``cell_type`` (one of ``kit.CELL_TYPES``), shape ``(H, W)``.

    ``n_cells`` defaults to a draw from the type's count distribution scaled to the area (the
    result may have fewer cells when the image is too crowded to place them all). ``look`` is the
    per-sample imaging parameters (default: drawn). ``hollow_frac``: share of the cells larger
    than 300 px whose GT mask is made hollow (at least one when > 0).
    """
    spec = _check_type(cell_type)
    h, w = _check_shape(shape)
    if look is None:
        look = _look(rng)
    if n_cells is None:
        m, s, lo, hi = _count_range(spec, (h, w))
        n_cells = int(np.clip(round(_gamma(rng, m, s)), lo, hi))
    if n_cells < 0:
        raise ValueError(f"n_cells must be >= 0, got {n_cells}")
    labels = _place_cells(rng, cell_type, spec, (h, w), n_cells)
    ann, hollow, n_ov = _annotations(rng, labels, spec, hollow_frac)
    image = _render(rng, labels, spec, look)
    return SynthImage(image, labels, ann, hollow, n_ov)


# ---------------------------------------------------------------------------- dataset
def _allocate_types(rng, n: int) -> list[str]:
    """Cell types of ``n`` images in the EDA proportions (largest remainder), shuffled."""
    total = sum(TYPE_COUNTS_EDA.values())
    quota = {ct: n * c / total for ct, c in TYPE_COUNTS_EDA.items()}
    alloc = {ct: int(q) for ct, q in quota.items()}
    for ct in sorted(quota, key=lambda c: (-(quota[c] - alloc[c]), c))[:n - sum(alloc.values())]:
        alloc[ct] += 1
    types = [ct for ct in ("cort", "shsy5y", "astro") for _ in range(alloc[ct])]
    return [types[i] for i in rng.permutation(n)]


def _plan(rng, n: int, shape, used_ids: set) -> list[dict]:
    """Per-image metadata for ``n`` images: id, type, sample fields, count mean/sd, look."""
    types = _allocate_types(rng, n)
    plan: list[dict] = [{} for _ in range(n)]
    for ct in ("cort", "shsy5y", "astro"):
        idx = [i for i, t in enumerate(types) if t == ct]
        m, s, _, _ = _count_range(SPECS[ct], shape)
        j = 0
        while j < len(idx):
            size = int(rng.integers(3, 5))
            prefix, conds = _SAMPLE_CONDITIONS[ct]
            well = f"{'ABCDEFGH'[rng.integers(8)]}{rng.integers(1, 13)}-{rng.integers(1, 5)}"
            sample_id = (f"{prefix}[{conds[rng.integers(len(conds))]}]_{well}"
                         f"_Vessel-{rng.integers(100, 800)}_Ph_{rng.integers(1, 4)}")
            day = np.datetime64("2019-01-01") + int(rng.integers(0, 600))
            hh, mm = int(rng.integers(0, 24)), int(rng.choice([0, 30]))
            # Sample-level density: images of a sample scatter around the sample's mean count
            # with a coefficient of variation cv; the sample means carry the rest of the
            # EDA variance, so the pooled count keeps the EDA mean and sd.
            cv = min(WITHIN_SAMPLE_CV, 0.9 * s / m)
            sample_mean = _gamma(rng, m, math.sqrt(max((s * s + m * m) / (1 + cv * cv) - m * m,
                                                       1e-6)))
            look = _look(rng)
            for i in idx[j:j + size]:
                plan[i] = {"cell_type": ct, "sample_id": sample_id, "sample_date": str(day),
                           "plate_time": f"{hh:02d}h{mm:02d}m00s",
                           "elapsed_timedelta": f"0 days {hh:02d}:{mm:02d}:00",
                           "count_mean": sample_mean, "count_cv": cv, "look": look}
            j += size
    for p in plan:
        while True:
            iid = f"{int(rng.integers(0, 1 << 48)):012x}"
            if iid not in used_ids:
                used_ids.add(iid)
                p["id"] = iid
                break
    astro = [i for i, p in enumerate(plan) if p["cell_type"] == "astro"]
    hollow_imgs: set = set()
    if astro:  # at least one astro image with hollow masks
        n_hollow = max(1, round(HOLLOW_IMAGE_FRACTION * len(astro)))
        hollow_imgs = set(rng.choice(astro, size=n_hollow, replace=False).tolist())
    for i, p in enumerate(plan):
        p["hollow_frac"] = HOLLOW_CELL_FRACTION if i in hollow_imgs else 0.0
    return plan


def _write_csv(path: Path, rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(COLUMNS)
        wr.writerows(rows)


def _build(tmp: Path, n_train: int, n_test: int, seed: int, shape, progress: bool) -> None:
    from tqdm import tqdm

    h, w = shape
    root = np.random.SeedSequence(seed)
    meta_ss, *img_ss = root.spawn(1 + n_train + n_test)
    meta = np.random.default_rng(meta_ss)
    used: set = set()
    splits = {"train": _plan(meta, n_train, shape, used), "test": _plan(meta, n_test, shape, used)}
    hollow_masks: dict[str, list[int]] = {}
    stats = {s: {"images": {}, "masks": 0, "overlapping_masks": 0} for s in splits}
    bar = tqdm(total=n_train + n_test, desc="synth", unit="img", disable=not progress)
    k = 0
    for split, plan in splits.items():
        (tmp / split).mkdir()
        rows = []
        for p in plan:
            rng = np.random.default_rng(img_ss[k])
            k += 1
            spec = SPECS[p["cell_type"]]
            _, _, lo, hi = _count_range(spec, shape)
            n = p["count_mean"] * _gamma(rng, 1.0, p["count_cv"])
            n_cells = int(np.clip(round(n), lo, hi))
            im = make_image(p["cell_type"], rng, shape, n_cells=n_cells, look=p["look"],
                            hollow_frac=p["hollow_frac"])
            if not cv2.imwrite(str(tmp / split / f"{p['id']}.png"), im.image):
                raise OSError(f"cv2.imwrite failed for {tmp / split / (p['id'] + '.png')}")
            rows += [[p["id"], a, w, h, p["cell_type"], p["plate_time"], p["sample_date"],
                      p["sample_id"], p["elapsed_timedelta"]] for a in im.annotations]
            if im.hollow:
                hollow_masks[p["id"]] = list(im.hollow)
            st = stats[split]
            st["images"][p["cell_type"]] = st["images"].get(p["cell_type"], 0) + 1
            st["masks"] += len(im.annotations)
            st["overlapping_masks"] += im.n_overlapping
            bar.update(1)
        _write_csv(tmp / ("train.csv" if split == "train" else "test_labels.csv"), rows)
    bar.close()
    with open(tmp / "sample_submission.csv", "w", newline="") as f:
        f.write("id,predicted\n" + "".join(f"{p['id']},\n" for p in splits["test"]))
    params = {"seed": seed, "n_train": n_train, "n_test": n_test, "shape": [h, w],
              "type_fractions_eda": {ct: c / sum(TYPE_COUNTS_EDA.values())
                                     for ct, c in TYPE_COUNTS_EDA.items()},
              "hollow_image_fraction": HOLLOW_IMAGE_FRACTION,
              "hollow_cell_fraction": HOLLOW_CELL_FRACTION, "within_sample_cv": WITHIN_SAMPLE_CV,
              "cell_types": {ct: asdict(s) for ct, s in SPECS.items()},
              "stats": stats, "hollow_masks": hollow_masks}
    (tmp / "synth_params.json").write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")


def make_dataset(out_dir, n_train: int, n_test: int, seed: int, shape=IMAGE_SHAPE, *,
                 overwrite: bool = False, progress: bool = False) -> Path:
    """Write a synthetic dataset to ``out_dir`` (see the module docstring); return its path.

    The dataset is built in a temporary directory next to ``out_dir`` and renamed into place.
    Raises ``FileExistsError`` if ``out_dir`` is a non-empty directory and not ``overwrite``.
    """
    out = Path(out_dir)
    h, w = _check_shape(shape)
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if int(v) != v or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output directory {str(out)!r} is not empty "
                              "(pass overwrite=True / --overwrite to replace it)")
    with atomic_folder(out) as tmp:
        _build(tmp, int(n_train), int(n_test), int(seed), (h, w), progress)
    return out


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kit.synth", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out_dir", metavar="OUT_DIR", help="dataset folder to create")
    g = parser.add_argument_group("dataset")
    g.add_argument("--n-train", type=int, default=20, help="number of train images")
    g.add_argument("--n-test", type=int, default=3, help="number of test images")
    g.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    g.add_argument("--shape", type=int, nargs=2, default=list(IMAGE_SHAPE), metavar=("H", "W"),
                   help="image height and width; cell counts scale with the area")
    o = parser.add_argument_group("output")
    o.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    o.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        out = make_dataset(args.out_dir, args.n_train, args.n_test, args.seed, tuple(args.shape),
                           overwrite=args.overwrite, progress=not args.no_progress)
    except (FileExistsError, ValueError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
