"""Exploratory data analysis of ground truth and its annotation artifacts: ``python -m kit.eda``.

``python -m kit.eda [DATA_DIR] [--coco JSON ...] --out OUT [--clean] [--min-area 30]``

* ``DATA_DIR``: a competition directory holding ``train.csv``, or a train.csv-format file. Only
  the CSV is read (no images). ``--coco`` adds COCO GT jsons (:func:`kit.data.read_coco`; the
  cell type comes from the categories, ``unknown`` when they name none). One of the two is needed.
* ``OUT`` receives ``report.md`` (markdown tables, linking the PNGs), ``eda.json`` (the numbers),
  ``cell_area_hist.png`` (mask area per cell type, log x), ``cells_per_image_hist.png``,
  ``cell_types.png`` (bar chart) and the artifact lists ``holes.csv``, ``fragments.csv``,
  ``overlaps.csv`` (one row per mask / mask pair; ``mask`` = 0-based position among the image's
  annotations in file order). Every file is written to a temp file and renamed.
* ``--clean`` (CSV input only) also writes ``OUT/train_clean.csv``: the input rows in the same
  order with every other column unchanged, and the ``annotation`` of each mask with holes replaced
  by its filled version.

Definitions (per mask; ``area`` = its pixel count, masks may overlap)
    hole       ``scipy.ndimage.binary_fill_holes(mask)`` (default structure: background is
               4-connected) has more pixels than the mask; hole area = filled - area. Hollow astro
               masks (a ring drawn instead of the cell) are the known case, but real astro GT
               has small holes in most masks too, so holes of >= ``LARGE_HOLE`` (100) px are
               counted apart and image ids are listed largest hole first.
    fragment   area < ``min_area`` (default 30: the smallest mask of the competition's train.csv
               is 30 px, a shsy5y cell), or more than one 8-connected component.
    overlap    two masks of one image sharing pixels; *heavy* when intersection / area of the
               smaller mask > 0.5. Computed from the masks' pixel lists (sorted once per image),
               not from N^2 full-image operations.
Statistics: ``std`` is the sample standard deviation (ddof=1, as pandas ``describe``); it is
None (JSON null, "–" in the report) for fewer than 2 values, and mean/min/max for none.
Exit status: 0 done, 2 bad input (missing DATA_DIR / train.csv, malformed CSV or json).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from kit import CELL_TYPES
from kit.atomic import write_atomic
from kit.mask_pixels import mask_crops, mask_pixels

__all__ = [
    "DEFAULT_MIN_AREA", "HEAVY_OVERLAP", "LARGE_HOLE", "ImageEDA", "mask_pixels", "mask_crops",
    "crop_to_rle", "overlap_pairs", "analyze_image", "analyze", "summarize", "artifact_rows",
    "format_report", "clean_rows", "write_clean_csv", "write_outputs", "main",
]

DEFAULT_MIN_AREA = 30  # smallest mask of the competition's train.csv: 30 px (shsy5y)
HEAVY_OVERLAP = 0.5  # intersection / smaller area strictly above this is a heavy overlap
# Real astro GT has small holes in most masks (median hole 19 px); the known hollow-astro images
# (e.g. 3bcc8ba1dc17, 174793807517, 13325f865bb0, 182c3da676bd) have holes of 400-700 px. Holes of at least this many px count as "large".
LARGE_HOLE = 100
UNKNOWN = "unknown"  # cell-type key of records with cell_type None
_EIGHT = np.ones((3, 3), bool)  # 8-connectivity for the components of a mask


# --------------------------------------------------------------------------------------------
# Masks as pixel lists: kit.mask_pixels (mask_pixels, mask_crops)


def crop_to_rle(crop: np.ndarray, y0: int, x0: int, width: int) -> str:
    """Kaggle RLE (:mod:`kit.rle`) of a (h, w) bool crop whose top-left is (y0, x0) in an image
    of width ``width``; ``""`` for an empty crop."""
    idx = np.flatnonzero(crop)
    if idx.size == 0:
        return ""
    p = (idx // crop.shape[1] + y0) * width + idx % crop.shape[1] + x0  # ascending
    first = np.flatnonzero(np.r_[True, np.diff(p) != 1])
    pairs = np.empty(2 * first.size, np.int64)
    pairs[0::2] = p[first] + 1
    pairs[1::2] = np.diff(np.r_[first, p.size])
    return " ".join(map(str, pairs.tolist()))


def overlap_pairs(ann: np.ndarray, pix: np.ndarray, n_masks: int) -> tuple[np.ndarray, int]:
    """Every pair of masks sharing pixels, from :func:`mask_pixels` output.

    Returns ``(pairs, overlap_pixels)``: ``pairs`` is (P, 3) int64 rows ``(a, b,
    intersection)`` with ``a < b`` (0-based mask positions), sorted; ``overlap_pixels`` counts
    the pixels covered by two or more masks. One sort of the foreground pixels.
    """
    order = np.argsort(pix, kind="stable")
    p, m = pix[order], ann[order]
    a_parts, b_parts = [], []
    d = 1
    while d < p.size:  # pixels covered by k masks are k equal neighbours after the sort
        eq = p[d:] == p[:-d]
        if not eq.any():
            break
        a_parts.append(m[:-d][eq])
        b_parts.append(m[d:][eq])
        d += 1
    if not a_parts:
        return np.zeros((0, 3), np.int64), 0
    n_overlap_px = int(np.count_nonzero(np.diff(p[np.r_[False, p[1:] == p[:-1]]])) + 1)
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keys, counts = np.unique(lo * max(n_masks, 1) + hi, return_counts=True)
    pairs = np.stack([keys // max(n_masks, 1), keys % max(n_masks, 1), counts], axis=1)
    return pairs.astype(np.int64), n_overlap_px


# --------------------------------------------------------------------------------------------
# Per image


@dataclass(frozen=True)
class ImageEDA:
    """Numbers of one image. Arrays are (N,) int64 over its masks in annotation order."""

    id: str
    cell_type: str | None
    shape: tuple[int, int]
    areas: np.ndarray  # pixels per mask
    filled_areas: np.ndarray  # pixels of binary_fill_holes(mask)
    n_components: np.ndarray  # 8-connected pieces (0 for an empty mask)
    pairs: np.ndarray  # (P, 3) int64 (a, b, intersection), a < b, intersection > 0
    overlap_pixels: int  # pixels covered by two or more masks
    filled_rles: dict = field(default_factory=dict, repr=False)  # mask -> RLE, holes only

    @property
    def n_masks(self) -> int:
        return int(self.areas.size)

    @property
    def type_key(self) -> str:
        return self.cell_type or UNKNOWN

    @property
    def hole_areas(self) -> np.ndarray:
        return self.filled_areas - self.areas

    def duplicate_pairs(self) -> np.ndarray:
        """Rows of :attr:`pairs` of two identical masks (intersection = both areas)."""
        if not self.pairs.size:
            return self.pairs
        a, b, inter = self.pairs.T
        return self.pairs[(inter == self.areas[a]) & (inter == self.areas[b])]

    def heavy_pairs(self, threshold: float = HEAVY_OVERLAP) -> np.ndarray:
        """Rows of :attr:`pairs` whose intersection / smaller area > ``threshold``."""
        if not self.pairs.size:
            return self.pairs
        smaller = np.minimum(self.areas[self.pairs[:, 0]], self.areas[self.pairs[:, 1]])
        return self.pairs[self.pairs[:, 2] > threshold * smaller]


def analyze_image(record) -> ImageEDA:
    """Areas, holes, components and overlaps of one :class:`kit.data.ImageRecord`."""
    from scipy import ndimage

    h, w = record.shape
    n = len(record.rles)
    ann, pix = mask_pixels(record.rles, record.shape)
    areas = np.bincount(ann, minlength=n).astype(np.int64)
    filled = areas.copy()
    n_comp = np.zeros(n, np.int64)
    filled_rles = {}
    for k, y0, x0, crop in mask_crops(ann, pix, n, w):
        n_comp[k] = ndimage.label(crop, structure=_EIGHT)[1]
        full = ndimage.binary_fill_holes(crop)
        n_full = int(np.count_nonzero(full))
        if n_full > areas[k]:
            filled[k] = n_full
            filled_rles[k] = crop_to_rle(full, y0, x0, w)
    pairs, n_overlap_px = overlap_pairs(ann, pix, n)
    return ImageEDA(record.id, record.cell_type, (h, w), areas, filled, n_comp, pairs,
                    n_overlap_px, filled_rles)


def analyze(records: Iterable, progress: bool = True) -> list[ImageEDA]:
    """:func:`analyze_image` of every record, in order, with a tqdm bar on stderr."""
    from tqdm import tqdm

    records = list(records)
    return [analyze_image(r) for r in tqdm(records, desc="eda", unit="img", file=sys.stderr,
                                           disable=not progress)]


# --------------------------------------------------------------------------------------------
# Summaries


def _describe(values, count: bool = True) -> dict:
    v = np.asarray(values, np.float64)
    out = {"count": int(v.size)} if count else {}
    out.update(mean=float(v.mean()) if v.size else None,
               std=float(v.std(ddof=1)) if v.size > 1 else None,
               min=float(v.min()) if v.size else None, max=float(v.max()) if v.size else None)
    for k in ("min", "max"):
        if out[k] is not None and out[k].is_integer():
            out[k] = int(out[k])
    return out


def _type_keys(images: Sequence[ImageEDA]) -> list[str]:
    present = {im.type_key for im in images}
    return [t for t in (*CELL_TYPES, UNKNOWN) if t in present]


def _group_summary(images: Sequence[ImageEDA], min_area: int, heavy: float) -> dict:
    areas = np.concatenate([im.areas for im in images]) if images else np.zeros(0)
    holes = [(im, im.hole_areas) for im in images]
    hole_areas = np.concatenate([h[h > 0] for _, h in holes]) if images else np.zeros(0)
    small = [im.areas < min_area for im in images]
    multi = [im.n_components > 1 for im in images]
    frag = [s | m for s, m in zip(small, multi)]
    heavy_rows = [im.heavy_pairs(heavy) for im in images]
    return {
        "n_images": len(images),
        "n_masks": int(areas.size),
        "area": _describe(areas),
        "cells_per_image": _describe([im.n_masks for im in images], count=False),
        "holes": {"n_masks": int(hole_areas.size),
                  "n_images": sum(bool((h > 0).any()) for _, h in holes),
                  "hole_area": _describe(hole_areas),
                  "n_large": int((hole_areas >= LARGE_HOLE).sum()),
                  "n_images_large": sum(bool((h >= LARGE_HOLE).any()) for _, h in holes)},
        "fragments": {"n_masks": int(sum(f.sum() for f in frag)),
                      "n_images": sum(bool(f.any()) for f in frag),
                      "small": int(sum(s.sum() for s in small)),
                      "multi_component": int(sum(m.sum() for m in multi))},
        "overlaps": {"n_pairs": int(sum(len(im.pairs) for im in images)),
                     "overlap_pixels": int(sum(im.overlap_pixels for im in images)),
                     "n_heavy": int(sum(len(r) for r in heavy_rows)),
                     "n_duplicates": int(sum(im.duplicate_pairs().shape[0] for im in images)),
                     "n_images_heavy": sum(bool(len(r)) for r in heavy_rows)},
    }


def summarize(images: Sequence[ImageEDA], min_area: int = DEFAULT_MIN_AREA,
              heavy: float = HEAVY_OVERLAP) -> dict:
    """The numbers of ``eda.json``: overall (``all``) and per cell type (``cell_types``), plus
    the ids of images with each artifact. Keys are documented in README.md."""
    keys = _type_keys(images)
    by_type = {t: _group_summary([im for im in images if im.type_key == t], min_area, heavy)
               for t in keys}
    n_img, n_masks = len(images), sum(im.n_masks for im in images)
    for s in by_type.values():
        s["share_images"] = s["n_images"] / n_img if n_img else None
        s["share_masks"] = s["n_masks"] / n_masks if n_masks else None
    rows = artifact_rows(images, min_area, heavy)
    return {
        "params": {"min_area": min_area, "heavy_overlap": heavy, "std_ddof": 1},
        "n_images": n_img,
        "n_masks": n_masks,
        "all": _group_summary(list(images), min_area, heavy),
        "cell_types": by_type,
        "artifact_ids": {name: _worst_first(rs, key) for (name, rs), key in
                         zip(rows.items(), ("hole_area", "area", "over_smaller"))},
    }


def _worst_first(rows: list[dict], key: str) -> list[str]:
    """Image ids of artifact rows, most severe first: largest hole, smallest fragment area,
    heaviest overlap (ties by id)."""
    sign = 1 if key == "area" else -1
    best: dict[str, float] = {}
    for r in rows:
        v = sign * r[key]
        best[r["id"]] = min(best.get(r["id"], v), v)
    return sorted(best, key=lambda i: (best[i], i))


def artifact_rows(images: Sequence[ImageEDA], min_area: int = DEFAULT_MIN_AREA,
                  heavy: float = HEAVY_OVERLAP) -> dict[str, list[dict]]:
    """Rows of ``holes.csv``, ``fragments.csv`` and ``overlaps.csv`` (keys ``holes``,
    ``fragments``, ``overlaps``), in image then mask order."""
    holes, frags, overlaps = [], [], []
    for im in images:
        ct = im.type_key
        for k in np.flatnonzero(im.hole_areas > 0).tolist():
            holes.append({"id": im.id, "cell_type": ct, "mask": k, "area": int(im.areas[k]),
                          "filled_area": int(im.filled_areas[k]),
                          "hole_area": int(im.hole_areas[k]),
                          "hole_fraction": round(int(im.hole_areas[k]) / int(im.filled_areas[k]),
                                                 4)})
        for k in range(im.n_masks):
            reasons = []
            if im.areas[k] < min_area:
                reasons.append(f"area<{min_area}")
            if im.n_components[k] > 1:
                reasons.append("components>1")
            if reasons:
                frags.append({"id": im.id, "cell_type": ct, "mask": k, "area": int(im.areas[k]),
                              "n_components": int(im.n_components[k]),
                              "reason": ";".join(reasons)})
        for a, b, inter in im.heavy_pairs(heavy).tolist():
            area_a, area_b = int(im.areas[a]), int(im.areas[b])
            overlaps.append({"id": im.id, "cell_type": ct, "mask_a": a, "mask_b": b,
                             "area_a": area_a, "area_b": area_b, "intersection": inter,
                             "over_smaller": round(inter / min(area_a, area_b), 4),
                             "iou": round(inter / (area_a + area_b - inter), 4)})
    return {"holes": holes, "fragments": frags, "overlaps": overlaps}


# --------------------------------------------------------------------------------------------
# Report


def _fmt(x, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return lines


def format_report(summary: dict, inputs: Sequence[str], pngs: dict[str, str],
                  csvs: dict[str, str], clean: dict | None = None, max_ids: int = 20) -> str:
    """``report.md``: markdown tables of :func:`summarize` output, linking the PNGs and CSVs."""
    types = summary["cell_types"]
    groups = [(t, types[t]) for t in types] + [("all", summary["all"])]
    out = ["# EDA report", "", "Inputs: " + ", ".join(f"`{i}`" for i in inputs), "",
           f"{summary['n_images']} images, {summary['n_masks']} masks. Std is the sample std "
           "(ddof=1); – = undefined.", "", "## Cell types", ""]
    out += _table(["cell type", "images", "% images", "masks", "% masks"],
                  [(t, s["n_images"], _fmt(100 * (s["share_images"] or 0)), s["n_masks"],
                    _fmt(100 * (s["share_masks"] or 0))) for t, s in types.items()])
    out += ["", f"![cell types]({pngs['cell_types']})", "", "## Cell size (mask area, px)", ""]
    out += _table(["cell type", "count", "mean", "std", "min", "max"],
                  [(t, s["area"]["count"], _fmt(s["area"]["mean"]), _fmt(s["area"]["std"]),
                    _fmt(s["area"]["min"]), _fmt(s["area"]["max"])) for t, s in groups])
    out += ["", f"![cell area]({pngs['area']})", "", "## Cells per image", ""]
    out += _table(["cell type", "images", "mean", "std", "min", "max"],
                  [(t, s["n_images"], _fmt(s["cells_per_image"]["mean"]),
                    _fmt(s["cells_per_image"]["std"]), _fmt(s["cells_per_image"]["min"]),
                    _fmt(s["cells_per_image"]["max"])) for t, s in groups])
    p = summary["params"]
    out += ["", f"![cells per image]({pngs['cells_per_image']})", "", "## Annotation artifacts", "",
            f"Holes: `binary_fill_holes(mask)` is larger than the mask. Fragments: area < "
            f"{p['min_area']} px or more than one 8-connected component. Heavy overlaps: two "
            f"masks of one image with intersection / smaller area > {p['heavy_overlap']}.", ""]
    out += _table(["cell type", "masks with holes (images)", "mean hole px",
                   f"holes >= {LARGE_HOLE} px (images)", "fragments: small / "
                   "multi-part (images)", "overlapping pairs", "overlap px",
                   "heavy overlaps (images)", "identical pairs"],
                  [(t, f"{s['holes']['n_masks']} ({s['holes']['n_images']})",
                    _fmt(s["holes"]["hole_area"]["mean"]),
                    f"{s['holes']['n_large']} ({s['holes']['n_images_large']})",
                    f"{s['fragments']['small']} / {s['fragments']['multi_component']} "
                    f"({s['fragments']['n_images']})", s["overlaps"]["n_pairs"],
                    s["overlaps"]["overlap_pixels"],
                    f"{s['overlaps']['n_heavy']} ({s['overlaps']['n_images_heavy']})",
                    s["overlaps"]["n_duplicates"]) for t, s in groups])
    out.append("")
    out.append("Image ids below come most severe first (largest hole, smallest fragment, "
               "heaviest overlap).")
    out.append("")
    for name, title in (("holes", "Images with holes"), ("fragments", "Images with fragments"),
                        ("overlaps", "Images with heavy overlaps")):
        ids = summary["artifact_ids"][name]
        more = f", … ({len(ids)} in all)" if len(ids) > max_ids else ""
        shown = ", ".join(ids[:max_ids]) + more
        out.append(f"- {title} ({len(ids)}, [{csvs[name]}]({csvs[name]})): {shown or 'none'}")
    if clean is not None:
        out += ["", "## Cleaned train.csv", "",
                f"`{clean['path']}`: {clean['n_filled']} mask(s) with holes filled; every other "
                "row and column unchanged."]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Atomic writes and figures


def _csv_bytes(rows: list[dict], columns: Sequence[str], lineterminator: str = "\n") -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=lineterminator)
    w.writerow(columns)
    for r in rows:
        w.writerow([r[c] for c in columns])
    return buf.getvalue().encode("utf-8")


def _save_fig(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return write_atomic(path, buf.getvalue())


def _plots(images: Sequence[ImageEDA], summary: dict, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(summary["cell_types"])
    colors = {"shsy5y": "tab:blue", "astro": "tab:orange", "cort": "tab:green", UNKNOWN: "tab:gray"}
    files = {"area": "cell_area_hist.png", "cells_per_image": "cells_per_image_hist.png",
             "cell_types": "cell_types.png"}
    n = max(len(keys), 1)
    all_areas = np.concatenate([im.areas for im in images]) if images else np.zeros(0, np.int64)
    pos = all_areas[all_areas > 0]
    lo, hi = (max(int(pos.min()), 1), int(pos.max())) if pos.size else (1, 10)
    bins = np.logspace(np.log10(lo), np.log10(max(hi, lo + 1)), 50)
    fig, axes = plt.subplots(n, 1, figsize=(7, 1.9 * n + 0.6), sharex=True, squeeze=False)
    for ax, t in zip(axes[:, 0], keys):
        a = np.concatenate([im.areas for im in images if im.type_key == t])
        ax.hist(a[a > 0], bins=bins, color=colors[t])
        s = summary["cell_types"][t]["area"]
        ax.set_title(f"{t}: {s['count']} masks, mean {_fmt(s['mean'])} px", fontsize=9)
        ax.set_ylabel("masks")
    axes[-1, 0].set_xscale("log")
    axes[-1, 0].set_xlabel("mask area (px, log scale)")
    fig.tight_layout()
    _save_fig(fig, out / files["area"])

    fig, axes = plt.subplots(n, 1, figsize=(7, 1.9 * n + 0.6), squeeze=False)
    for ax, t in zip(axes[:, 0], keys):
        c = [im.n_masks for im in images if im.type_key == t]
        ax.hist(c, bins=min(40, max(c) - min(c) + 1) if c else 1, color=colors[t])
        s = summary["cell_types"][t]["cells_per_image"]
        ax.set_title(f"{t}: {len(c)} images, {_fmt(s['mean'])} ± {_fmt(s['std'])} cells",
                     fontsize=9)
        ax.set_ylabel("images")
    axes[-1, 0].set_xlabel("cells per image")
    fig.tight_layout()
    _save_fig(fig, out / files["cells_per_image"])

    fig, ax = plt.subplots(figsize=(5, 3.2))
    counts = [summary["cell_types"][t]["n_images"] for t in keys]
    bars = ax.bar(keys, counts, color=[colors[t] for t in keys])
    ax.bar_label(bars, labels=[f"{c} img / {summary['cell_types'][t]['n_masks']} masks"
                               for c, t in zip(counts, keys)], fontsize=8)
    ax.set_ylabel("images")
    ax.set_title("cell-type distribution", fontsize=10)
    ax.margins(y=0.15)
    fig.tight_layout()
    _save_fig(fig, out / files["cell_types"])
    return files


# --------------------------------------------------------------------------------------------
# Cleaned train.csv


def clean_rows(csv_path: Path, images: Sequence[ImageEDA]) -> tuple[bytes, int]:
    """The bytes of ``csv_path`` with the annotation of every mask with holes replaced by its
    filled RLE. Returns ``(data, n_replaced)``. Rows keep their order, other fields their text;
    the file's line ending (``\\n`` or ``\\r\\n``) is kept. Masks are matched the way
    :func:`kit.data.read_train_csv` numbers them: k-th non-empty annotation of an id."""
    from kit.data import DataError

    fills = {(im.id, k): r for im in images for k, r in im.filled_rles.items()}
    raw = csv_path.read_bytes()
    first_nl = raw.find(b"\n")
    eol = "\r\n" if first_nl > 0 and raw[first_nl - 1:first_nl] == b"\r" else "\n"
    reader = csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline=""))
    header = next(reader, None)
    if header is None or "id" not in header or "annotation" not in header:
        raise DataError(f"{csv_path} line 1 (header): needs columns 'id' and 'annotation', "
                        f"found {header}")
    c_id, c_ann = header.index("id"), header.index("annotation")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=eol)
    writer.writerow(header)
    seen: dict[str, int] = {}
    n_done = 0
    for row in reader:
        if row and row[c_ann].strip():
            k = seen.get(row[c_id], 0)
            seen[row[c_id]] = k + 1
            new = fills.get((row[c_id], k))
            if new is not None:
                row[c_ann] = new
                n_done += 1
        writer.writerow(row)
    prefix = b"\xef\xbb\xbf" if raw.startswith(b"\xef\xbb\xbf") else b""
    return prefix + buf.getvalue().encode("utf-8"), n_done


def write_clean_csv(csv_path, out_path, images: Sequence[ImageEDA]) -> int:
    """Write :func:`clean_rows` of ``csv_path`` to ``out_path`` atomically; return how many
    annotations were filled."""
    data, n = clean_rows(Path(csv_path), images)
    write_atomic(Path(out_path), data)
    return n


# --------------------------------------------------------------------------------------------
# Driver

_CSV_COLUMNS = {
    "holes": ("id", "cell_type", "mask", "area", "filled_area", "hole_area", "hole_fraction"),
    "fragments": ("id", "cell_type", "mask", "area", "n_components", "reason"),
    "overlaps": ("id", "cell_type", "mask_a", "mask_b", "area_a", "area_b", "intersection",
                 "over_smaller", "iou"),
}


def write_outputs(images: Sequence[ImageEDA], out, inputs: Sequence[str],
                  min_area: int = DEFAULT_MIN_AREA, heavy: float = HEAVY_OVERLAP,
                  clean_from: Path | None = None) -> dict:
    """Write every output file of the CLI into ``out``; return the ``eda.json`` document."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(images, min_area, heavy)
    rows = artifact_rows(images, min_area, heavy)
    csvs = {name: f"{name}.csv" for name in rows}
    for name, rs in rows.items():
        write_atomic(out / csvs[name], _csv_bytes(rs, _CSV_COLUMNS[name]))
    pngs = _plots(images, summary, out)
    clean = None
    if clean_from is not None:
        n = write_clean_csv(clean_from, out / "train_clean.csv", images)
        clean = {"path": "train_clean.csv", "source": str(clean_from), "n_filled": n}
    doc = {"inputs": list(inputs), **summary, "files": {**pngs, **csvs}, "clean": clean}
    write_atomic(out / "report.md", format_report(summary, inputs, pngs, csvs, clean).encode())
    write_atomic(out / "eda.json", (json.dumps(doc, indent=1) + "\n").encode())
    return doc


def _train_csv(data: Path) -> Path:
    from kit.data import DataError

    path = data / "train.csv" if data.is_dir() else data
    if data.is_dir() and not path.is_file():
        raise DataError(f"DATA_DIR {data}: the directory holds no train.csv")
    if not path.is_file():
        raise DataError(f"DATA_DIR {data}: no such file or directory (expected a competition "
                        "directory holding train.csv, or a train.csv-format file)")
    return path


def _load(data: Path | None, coco: Sequence[Path]) -> tuple[list, list[str], Path | None]:
    from kit.data import DataError, read_coco, read_train_csv

    records, inputs, csv_path, origin = [], [], None, {}
    if data is not None:
        csv_path = _train_csv(data)
        records += read_train_csv(csv_path, check_images=False)
        inputs.append(str(csv_path))
        origin.update({r.id: str(csv_path) for r in records})
    for js in coco:
        recs = read_coco(js)
        for r in recs:
            if r.id in origin:
                raise DataError(f"{js}: image id {r.id!r} is also in {origin[r.id]}")
            origin[r.id] = str(js)
        records += recs
        inputs.append(str(js))
    return records, inputs, csv_path


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.eda", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io_ = parser.add_argument_group("inputs and outputs")
    io_.add_argument("data", type=Path, nargs="?", default=None, metavar="DATA_DIR",
                     help="competition dir holding train.csv, or a train.csv-format file")
    io_.add_argument("--coco", type=Path, nargs="+", default=[], metavar="JSON",
                     help="COCO GT json file(s) to analyse too (kit.data.read_coco)")
    io_.add_argument("--out", type=Path, required=True, help="output directory")
    io_.add_argument("--clean", action="store_true",
                     help="also write OUT/train_clean.csv with the holes of masks filled")
    opts = parser.add_argument_group("options")
    opts.add_argument("--min-area", type=int, default=DEFAULT_MIN_AREA,
                      help="masks smaller than this (px) are fragments")
    opts.add_argument("--heavy-overlap", type=float, default=HEAVY_OVERLAP,
                      help="intersection / smaller area above this is a heavy overlap")
    opts.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    try:
        if args.data is None and not args.coco:
            raise ValueError("give DATA_DIR (a directory with train.csv, or a train.csv file) "
                             "and/or --coco JSON ...")
        if args.clean and args.data is None:
            raise ValueError("--clean needs DATA_DIR: it rewrites that train.csv")
        if args.min_area < 0 or not 0 <= args.heavy_overlap < 1:
            raise ValueError(f"--min-area must be >= 0 and --heavy-overlap in [0, 1), got "
                             f"{args.min_area} and {args.heavy_overlap}")
        from kit.atomic import check_writable_dir

        check_writable_dir(args.out, "EDA folder")  # before the work
        records, inputs, csv_path = _load(args.data, args.coco)
        images = analyze(records, progress=not args.quiet)
        doc = write_outputs(images, args.out, inputs, args.min_area, args.heavy_overlap,
                            clean_from=csv_path if args.clean else None)
    except ValueError as e:  # DataError, RLEError
        print(f"error: {e}", file=sys.stderr)
        return 2
    a = doc["all"]
    print(f"{doc['n_images']} images, {doc['n_masks']} masks; holes {a['holes']['n_masks']}, "
          f"fragments {a['fragments']['n_masks']}, heavy overlaps {a['overlaps']['n_heavy']}")
    for t, s in doc["cell_types"].items():
        c, ar = s["cells_per_image"], s["area"]
        print(f"  {t:>7}: {s['n_images']} images, cells/image {_fmt(c['mean'])} ± "
              f"{_fmt(c['std'])} ({_fmt(c['min'])}-{_fmt(c['max'])}), area mean "
              f"{_fmt(ar['mean'])} ({_fmt(ar['min'])}-{_fmt(ar['max'])}) px")
    if doc["clean"]:
        print(f"wrote {args.out / 'train_clean.csv'} ({doc['clean']['n_filled']} mask(s) filled)")
    print(f"wrote {args.out / 'report.md'} and {args.out / 'eda.json'}")
    return 0


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
