"""Training data for detectron2: :class:`kit.data.ImageRecord` -> detectron2 dataset dicts,
registered in its ``DatasetCatalog``, and the train-time mapper (detectron2's own
``DatasetMapper`` with the config's augmentations, plus vertical flips)."""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

from kit.data import DataError

_names = itertools.count()


def dataset_dicts(records: Sequence, classes: Sequence[str],
                  category_of: Callable | None = None) -> list[dict]:
    """detectron2's standard dataset dicts of ``records`` (``file_name``, ``height``, ``width``,
    ``image_id``, ``annotations``: one per instance with ``bbox`` (x0, y0, x1, y1) in pixels,
    ``bbox_mode`` XYXY_ABS, ``segmentation`` a compressed COCO RLE (:func:`kit.rle.mask_to_coco`:
    column-major, counts as str), ``category_id`` = ``classes.index(cell type)``, or
    ``category_of(record)`` (0-based) when given: LIVECell's classes). Empty masks are left
    out. No mask is decoded at full size (:func:`kit.rle.kaggle_to_coco`: the work is in the
    foreground pixels)."""
    from detectron2.structures import BoxMode

    from kit.rle import kaggle_to_coco

    out = []
    for rec in records:
        if rec.image_path is None:
            raise DataError(f"record {rec.id!r} has no image file: detectron2 reads images from disk")
        if category_of is not None:
            category = category_of(rec)
        elif rec.cell_type not in classes:
            raise DataError(f"record {rec.id!r}: cell type {rec.cell_type!r} is not one of the "
                            f"model's classes {list(classes)}")
        else:
            category = list(classes).index(rec.cell_type)
        h, w = rec.shape
        annotations = [{"bbox": [float(v) for v in box], "bbox_mode": BoxMode.XYXY_ABS,
                        "segmentation": coco, "category_id": category, "iscrowd": 0}
                       for coco, box in filter(None, kaggle_to_coco(rec.rles, (h, w)))]
        out.append({"file_name": str(rec.image_path), "height": h, "width": w, "image_id": rec.id,
                    "annotations": annotations})
    return out


def register(records: Sequence, classes: Sequence[str], prefix: str = "kit",
             category_of: Callable | None = None) -> str:
    """Register ``records`` in detectron2's ``DatasetCatalog`` (and the class names in its
    ``MetadataCatalog``) under a new name; returns the name. ``category_of``: as in
    :func:`dataset_dicts`."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    dicts = dataset_dicts(records, classes, category_of)
    name = f"{prefix}_{next(_names)}_{len(dicts)}"
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=list(classes))
    return name


def train_mapper(cfg, vflip: bool):
    """detectron2's ``DatasetMapper`` for training with the augmentations ``cfg`` asks for
    (``ResizeShortestEdge`` over ``INPUT.MIN_SIZE_TRAIN``, horizontal ``RandomFlip``, optional
    ``INPUT.CROP``), plus a vertical flip when ``vflip``."""
    from detectron2.data import DatasetMapper
    from detectron2.data import transforms as T

    kwargs = DatasetMapper.from_config(cfg, is_train=True)
    if vflip:
        kwargs["augmentations"] = [*kwargs["augmentations"],
                                   T.RandomFlip(horizontal=False, vertical=True)]
    return DatasetMapper(**kwargs)
