"""A COCO instance-segmentation json read compactly: each annotation shrunk as it is parsed.

LIVECell's train json holds about a million polygon annotations. ``json.load`` makes each one
a dict of Python floats: ~4 KB per annotation (~4 GB for LIVECell's train split) before any of
it is used. :func:`load_compact` parses the same text with an ``object_hook`` that replaces an
annotation as soon as it is decoded by ``{"id", "image_id", "category_id", "segmentation"}``
(``bbox``, ``area``, ``iscrowd`` and other keys dropped), its segmentation the counts of its
compressed COCO RLE (~100 bytes for a cell) when its image is already known, its polygons packed
in ``array('d')`` otherwise (exact: the same float64 values). COCO files, and LIVECell's, list
``images`` before ``annotations``, so the RLE is the usual case. Only :func:`segmentation_rle`
reads a stored segmentation.

:func:`segmentation_rle` gives the compressed COCO RLE of any stored segmentation with the
semantics of ``pycocotools.coco.COCO.annToRLE``: polygons (one or several parts, merged),
uncompressed RLE (``counts`` a list, column-major), or compressed RLE (kept as it is). A
segmentation that pycocotools rejects is kept as parsed, so the caller reports it with its
annotation and image (:func:`kit.data.read_coco`).
"""
from __future__ import annotations

import json
from array import array
from pathlib import Path

__all__ = ["load_compact", "segmentation_rle"]

ANNOTATION_KEYS = ("id", "image_id", "category_id")


class _Polygons(tuple):
    """Polygon parts not yet rasterised (their image's size came later in the file): a tuple of
    ``array('d')``, x, y pairs in pixels as in the json."""


class _Counts(bytes):
    """A compressed COCO RLE's counts, made at the size of the annotation's image (the size is
    not stored: ~330 bytes less per annotation than the RLE dict)."""


def segmentation_rle(segmentation, height: int, width: int) -> dict:
    """The compressed COCO RLE (``{"size": [h, w], "counts": bytes or str}``) of an annotation's
    segmentation in an image of (height, width), as ``COCO.annToRLE`` makes it. Raises whatever
    pycocotools raises on a malformed segmentation (TypeError, ValueError, KeyError, ...)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, _Counts):
        return {"size": [height, width], "counts": bytes(segmentation)}
    if isinstance(segmentation, _Polygons):
        segmentation = [part.tolist() for part in segmentation]
    if isinstance(segmentation, list):  # polygon parts, merged into one mask
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed, column-major
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


class _CompactHook:
    """The ``object_hook``: remembers each image's size, shrinks each annotation."""

    def __init__(self):
        self.sizes: dict = {}

    def __call__(self, obj: dict):
        if "segmentation" in obj and "image_id" in obj:
            return self._annotation(obj)
        if "id" in obj and "height" in obj and "width" in obj:
            h, w = obj["height"], obj["width"]
            key = _key(obj["id"])
            ok = type(h) is int and type(w) is int and h > 0 and w > 0  # noqa: E721 (not bool)
            # an id given twice: its annotations wait for the caller, who sees both images
            self.sizes[key] = (h, w) if ok and key not in self.sizes else None
        return obj

    def _annotation(self, obj: dict) -> dict:
        out = {k: obj[k] for k in ANNOTATION_KEYS if k in obj}
        seg = obj["segmentation"]
        size = self.sizes.get(_key(obj["image_id"]))
        if size is not None:
            try:
                rle = segmentation_rle(seg, *size)
                counts = rle["counts"]
                if isinstance(counts, str) and counts.isascii():
                    counts = counts.encode("ascii")
                if list(rle["size"]) == list(size) and isinstance(counts, bytes) and counts:
                    seg = _Counts(counts)
                elif rle is not seg:
                    seg = rle
            except Exception:  # reported by the caller, with the annotation's ids
                pass
        elif isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg):
            try:
                seg = _Polygons(array("d", p) for p in seg)
            except TypeError:  # a non-number in a polygon: reported by the caller
                pass
        out["segmentation"] = seg
        return out


def _key(image_id):
    """A hashable image id (ids are ints or strings in practice; anything else is kept apart)."""
    try:
        hash(image_id)
    except TypeError:
        return repr(image_id)
    return image_id


def load_compact(json_path) -> dict:
    """The json object of a COCO file with every annotation compacted (module docstring).

    Raises FileNotFoundError, json.JSONDecodeError or UnicodeDecodeError like ``json.load``.
    The file's bytes are decoded to text and released before parsing, so the peak is one copy
    of the text (not the bytes and the text) plus the compact result.
    """
    raw = Path(json_path).read_bytes()
    text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    del raw
    return json.loads(text, object_hook=_CompactHook())
