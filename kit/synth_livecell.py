"""Synthetic LIVECell: many small phase-contrast-looking images in LIVECell's COCO layout.

``python -m kit.synth_livecell OUT_DIR --n-images N [--shape H W] [--seed S]`` writes::

    OUT_DIR/livecell_coco_train.json    COCO instance segmentation, as LIVECell ships it
    OUT_DIR/images/<LINE>_Phase_<well>_<k>.png   (H, W) uint8 grayscale

It stands in for LIVECell's 5,239 training images where LIVECell is not at hand: a run of the
LIVECell stage (``kit.train MODEL --livecell OUT_DIR/livecell_coco_train.json --livecell-images
OUT_DIR/images``) at thousands of images, e.g. to see that training memory stays flat
(``python -m benchmarks.memory --livecell``). The images are :func:`kit.synth.make_image`
renders (:func:`livecell_image`) with LIVECell's cells per pixel; what follows LIVECell is that
density and the file layout, not the cells' looks:

* ``annotations`` is a dict ``"<annotation id>" -> annotation`` (LIVECell's form, not COCO's
  list); each segmentation is a list of polygons ``[x0, y0, x1, y1, ...]`` that rasterise
  (pycocotools) back to the rendered cell's mask exactly, with
  ``bbox`` ``[x, y, w, h]``, ``area`` (the mask's pixel count) and ``iscrowd`` 0;
* one category, ``{"id": 1, "name": "cell"}``; the cell line is the file name's prefix (one of
  :data:`CELL_LINES`, round robin), which ``kit.models.maskrcnn.train.livecell_classes`` reads.

Everything is a function of ``seed``: same arguments, byte-identical files.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from kit import CELL_TYPES
from kit.atomic import atomic_folder

__all__ = ["CELL_LINES", "SHAPE", "JSON_NAME", "livecell_image", "make_livecell", "main"]

CELL_LINES = ("A172", "BT474", "BV2", "Huh7", "MCF7", "SHSY5Y", "SKOV3", "SkBr3")  # LIVECell's 8
SHAPE = (128, 160)  # (H, W): small, so that thousands of images are minutes of work
JSON_NAME = "livecell_coco_train.json"


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """The outer contours of a (H, W) bool mask as COCO polygons (x, y pairs, >= 3 points).

    Traced at twice the resolution, each vertex ``v / 2 + 0.25``: the polygon then runs a
    quarter pixel inside the mask's pixel corners and pycocotools rasterises it back to exactly
    the mask (holes aside: outer contours only, as LIVECell's polygons)."""
    up = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[float(v) / 2 + 0.25 for v in c.reshape(-1)] for c in contours if len(c) >= 3]


def _image_annotations(labels: np.ndarray, image_id: int, next_id: int) -> list[dict]:
    """One COCO annotation per label of ``labels`` ((H, W) int32, 0 = background) that has a
    polygon; ids from ``next_id`` up."""
    anns = []
    for lab in np.unique(labels[labels > 0]):
        mask = labels == lab
        polys = _polygons(mask)
        if not polys:
            continue
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        anns.append({"id": next_id + len(anns), "image_id": image_id, "category_id": 1,
                     "segmentation": polys, "area": float(mask.sum()), "iscrowd": 0,
                     "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]})
    return anns


def livecell_image(k: int, seed: int, n_images: int, shape=SHAPE):
    """``(file name, kit.synth.SynthImage)`` of image ``k`` (0-based) of ``n_images`` made with
    ``seed``: the cells of ``kit.CELL_TYPES[k % 3]``, as many per pixel as in LIVECell (~300 per
    704 x 520 image, +-50 %), its own random stream."""
    from kit.synth import make_image

    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(n_images)[k])
    per_px = 300 / (704 * 520)
    n_cells = max(1, round(per_px * shape[0] * shape[1] * rng.uniform(0.5, 1.5)))
    name = (f"{CELL_LINES[k % len(CELL_LINES)]}_Phase_{'ABCDEFGH'[k // 8 % 8]}{k // 64 % 12 + 1}"
            f"_{k + 1}.png")
    return name, make_image(CELL_TYPES[k % len(CELL_TYPES)], rng, shape, n_cells=n_cells)


def _build(tmp: Path, n_images: int, seed: int, shape, progress: bool) -> None:
    from tqdm import tqdm

    (tmp / "images").mkdir()
    images, annotations = [], {}
    for k in tqdm(range(n_images), desc="synthetic LIVECell", unit="img", disable=not progress):
        name, im = livecell_image(k, seed, n_images, shape)
        if not cv2.imwrite(str(tmp / "images" / name), im.image):
            raise OSError(f"cv2.imwrite failed for {tmp / 'images' / name}")
        images.append({"id": k + 1, "file_name": name, "height": shape[0], "width": shape[1]})
        for ann in _image_annotations(im.labels, k + 1, len(annotations) + 1):
            annotations[str(ann["id"])] = ann
    doc = {"info": {"description": f"synthetic LIVECell (kit.synth_livecell, seed {seed})"},
           "images": images, "annotations": annotations,
           "categories": [{"id": 1, "name": "cell", "supercategory": "cell"}]}
    with open(tmp / JSON_NAME, "w") as f:
        json.dump(doc, f, separators=(",", ":"))


def make_livecell(out_dir, n_images: int, seed: int = 0, shape=SHAPE, *, overwrite: bool = False,
                  progress: bool = False) -> Path:
    """Write ``n_images`` synthetic LIVECell images and their json into ``out_dir`` (built in a
    temporary folder beside it, then renamed into place); return ``out_dir``. Raises
    ``FileExistsError`` if ``out_dir`` is a non-empty folder and not ``overwrite``,
    ``ValueError`` for a bad count or shape."""
    out = Path(out_dir)
    if int(n_images) != n_images or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    h, w = (int(s) for s in shape)
    if h < 32 or w < 32:
        raise ValueError(f"shape must be at least 32 x 32, got {tuple(shape)}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: folder is not empty (pass --overwrite to replace it)")
    with atomic_folder(out) as tmp:
        _build(tmp, int(n_images), int(seed), (h, w), progress)
    return out


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.synth_livecell",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to create")
    parser.add_argument("--n-images", type=int, default=1000, help="number of images")
    parser.add_argument("--shape", type=int, nargs=2, default=list(SHAPE), metavar=("H", "W"),
                        help="image height and width")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        out = make_livecell(args.out_dir, args.n_images, args.seed, tuple(args.shape),
                            overwrite=args.overwrite, progress=not args.no_progress)
    except (FileExistsError, ValueError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(out / JSON_NAME)
    return 0


def main(argv=None) -> int:
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
