"""Reading datasets into per-image records: the competition directory, LIVECell / COCO json, folds.

Conventions
    Shapes are ``(H, W)`` = (height, width); a competition image is ``kit.IMAGE_SHAPE`` = (520, 704),
    but nothing here assumes it. Images load as ``(H, W)`` ``uint8``.
    An RLE is a Kaggle RLE string as defined in :mod:`kit.rle` (1-based start/length pairs over
    the ROW-MAJOR flattened image; ``""`` = empty mask).
    :meth:`ImageRecord.labels` gives an ``(H, W)`` int32 label image, instance ``k`` (0-based,
    file order) = label ``k + 1``. Where masks overlap (train.csv masks do, a little) the mask that
    comes LATER in the file wins (:func:`kit.rle.decode_labels`). :meth:`ImageRecord.stack` gives
    ``(N, H, W)`` bool and keeps every overlapping pixel.

The competition directory (``read_competition_dir``)
    ``train.csv`` (one row per instance; required columns ``id, annotation, width, height,
    cell_type`` in any order, ``sample_id`` read when present and filled, other columns ignored;
    empty metadata cells are fine), ``train/<id>.png``,
    ``test/<id>.png``, ``sample_submission.csv`` (``id, ...``), and optionally ``test_labels.csv``
    (train.csv's format: ground truth for the test images, written by :mod:`kit.synth`).
    Only ``train.csv`` and ``train/`` are required: a training-only directory has no test images.
    Records come in order of each id's first row; an id's RLEs keep file order, and its rows need
    not be adjacent. A row whose ``annotation`` is empty marks an image with no instance and adds
    no RLE.

Errors
    Every problem with input files raises :class:`DataError` (a ``ValueError``) whose message
    names the file, the 1-based line number as a text editor shows it (the header is line 1),
    the field, and the bad value, e.g.
    ``.../train.csv line 17, field 'annotation': RLE token 3: length 0 < 1 (...)``.

Images
    Read with OpenCV (``IMREAD_UNCHANGED``). A 3-channel image whose channels are all equal (a
    grayscale PNG saved as RGB) is accepted and its first channel is used; other colour images,
    and anything not 8-bit, are errors.

Folds
    :func:`make_folds` = scikit-learn ``StratifiedGroupKFold`` with ``y = cell_type`` and
    ``groups = sample_id`` (images of one sample never straddle two folds). Folds are plain
    ``{id: fold}`` dicts; ``read_folds_csv`` / ``write_folds_csv`` store them as ``id,fold``.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from kit import CELL_TYPES
from kit import rle as _rle
from kit.csvfile import at, read_csv
from kit.errors import KitError

__all__ = [
    "DataError", "ImageRecord", "Competition", "TRAIN_COLUMNS",
    "load_image", "read_train_csv", "read_competition_dir", "read_coco",
    "make_folds", "read_folds_csv", "write_folds_csv", "split_by_fold",
]

# Columns read_train_csv needs. ``sample_id`` is read when the column exists and is filled
# (an empty cell or no column: None, "unknown"); plate_time, sample_date and elapsed_timedelta
# are ignored, so files whose metadata columns are empty read as they come.
TRAIN_COLUMNS = ("id", "annotation", "width", "height", "cell_type")
OPTIONAL_TRAIN_COLUMNS = ("sample_id",)
FOLDS_COLUMNS = ("id", "fold")


class DataError(KitError):
    """Bad input data. The message names the file, line (1-based, header = 1), field and value."""


def _show(value: str, limit: int = 60) -> str:
    """repr of a (possibly very long) field value, shortened for error messages."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} chars)"


_at = at


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class ImageRecord:
    """One image and its instances.

    ``rles`` are Kaggle RLE strings (:mod:`kit.rle`) in file order, already validated for
    ``shape`` by the readers of this module. ``cell_type`` is one of ``kit.CELL_TYPES`` or None
    (unknown / unlabelled); ``sample_id`` groups images of one sample (None when unknown).
    ``source`` says where the record came from: ``"train"``, ``"test"``, ``"coco"``, ...
    """

    id: str
    image_path: Path | None
    shape: tuple[int, int]
    cell_type: str | None
    sample_id: str | None
    rles: tuple[str, ...] = field(default=(), repr=False)
    source: str = ""

    def __post_init__(self):
        try:
            h, w = (int(s) for s in self.shape)
        except (TypeError, ValueError):
            raise ValueError(f"ImageRecord {self.id!r}: shape must be (height, width), "
                             f"got {self.shape!r}") from None
        if h < 1 or w < 1:
            raise ValueError(f"ImageRecord {self.id!r}: shape must be positive, got {self.shape!r}")
        if self.cell_type is not None and self.cell_type not in CELL_TYPES:
            raise ValueError(f"ImageRecord {self.id!r}: unknown cell_type {self.cell_type!r}; "
                             f"expected one of {CELL_TYPES} or None")
        object.__setattr__(self, "shape", (h, w))
        object.__setattr__(self, "rles", tuple(self.rles))
        if self.image_path is not None:
            object.__setattr__(self, "image_path", Path(self.image_path))

    @property
    def n_instances(self) -> int:
        return len(self.rles)

    def labels(self) -> np.ndarray:
        """(H, W) int32 label image; ``rles[k]`` is label ``k + 1``; on overlap the later RLE wins."""
        return _rle.decode_labels(self.rles, self.shape)

    def stack(self) -> np.ndarray:
        """(N, H, W) bool, one mask per RLE; overlapping pixels stay in every mask."""
        return _rle.decode_stack(self.rles, self.shape)

    def load_image(self) -> np.ndarray:
        """The (H, W) uint8 image; DataError if missing, unreadable or not of ``shape``."""
        if self.image_path is None:
            raise DataError(f"record {self.id!r} ({self.source or 'no source'}) has no image_path")
        img = load_image(self.image_path)
        if img.shape != self.shape:
            raise DataError(f"{self.image_path}: image has (height, width) = {img.shape}, "
                            f"record {self.id!r} says {self.shape}")
        return img


@dataclass(frozen=True)
class Competition:
    """A competition directory read by :func:`read_competition_dir`."""

    train: list[ImageRecord]
    test: list[ImageRecord]
    root: Path


# --------------------------------------------------------------------------------------------
# Images


def load_image(path) -> np.ndarray:
    """(H, W) uint8 image read by OpenCV (``IMREAD_UNCHANGED``).

    A 3-channel image with equal channels gives its first channel (1-channel 3-D arrays are
    squeezed). Raises DataError for a missing or undecodable file, a colour image or a dtype
    other than uint8.
    """
    import cv2

    path = Path(path)
    try:
        data = np.fromfile(path, np.uint8)  # np.fromfile + imdecode: works for any path text
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read image file ({e.strerror or e})") from None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise DataError(f"{path}: OpenCV cannot decode this image file ({data.size} bytes; "
                        f"starts with {data[:8].tobytes()!r})")
    if img.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit image, got dtype {img.dtype}")
    if img.ndim == 3:
        if img.shape[2] == 1 or (img.shape[2] == 3 and (img[..., 0] == img[..., 1]).all()
                                 and (img[..., 0] == img[..., 2]).all()):
            img = img[..., 0]
        else:
            raise DataError(f"{path}: expected a grayscale image, got {img.shape[2]} channels "
                            "that differ")
    if img.ndim != 2:
        raise DataError(f"{path}: expected a 2-D (H, W) image, got shape {img.shape}")
    return np.ascontiguousarray(img)


def _png_shape(path: Path) -> tuple[int, int] | None:
    """(H, W) from a PNG's IHDR chunk without decoding; None if the file is not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read image file ({e.strerror or e})") from None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


def _image_shape(path: Path, check: bool) -> tuple[int, int]:
    """Shape of an image file: decoded and validated when ``check``, else from the PNG header."""
    if not check:
        shape = _png_shape(path)
        if shape is not None:
            return shape
    return load_image(path).shape


# --------------------------------------------------------------------------------------------
# CSV


def _read_csv(path: Path, required: Sequence[str], optional: Sequence[str] = ()
              ) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    """Header column positions and ``(line, fields)`` rows (:func:`kit.csvfile.read_csv`)."""
    return read_csv(path, required, optional, error_type=DataError)


def _positive_int(text: str, path, line: int, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DataError(f"{_at(path, line, name)}: expected a positive integer, got "
                        f"{_show(text)}") from None
    if value < 1:
        raise DataError(f"{_at(path, line, name)}: expected a positive integer, got {_show(text)}")
    return value


@dataclass
class _Group:  # the rows of one image id while reading train.csv
    line: int  # first line of the id
    height: int
    width: int
    cell_type: str
    sample_id: str | None
    lines: list[int] = field(default_factory=list)
    rles: list[str] = field(default_factory=list)


def _read_train(path, images_dir, check_images: bool, source: str):
    path = Path(path)
    images_dir = path.parent / "train" if images_dir is None else Path(images_dir)
    cols, rows = _read_csv(path, TRAIN_COLUMNS, OPTIONAL_TRAIN_COLUMNS)
    c_id, c_ann, c_w, c_h, c_type = (cols[c] for c in TRAIN_COLUMNS)
    c_sample = cols.get("sample_id")
    groups: dict[str, _Group] = {}
    for line, row in rows:
        id_ = row[c_id]
        if not id_.strip():
            raise DataError(f"{_at(path, line, 'id')}: empty id")
        cell_type = row[c_type]
        if cell_type not in CELL_TYPES:
            raise DataError(f"{_at(path, line, 'cell_type')}: unknown cell type {_show(cell_type)}; "
                            f"expected one of {list(CELL_TYPES)}")
        sample_id = None if c_sample is None else row[c_sample].strip() or None
        width = _positive_int(row[c_w], path, line, "width")
        height = _positive_int(row[c_h], path, line, "height")
        g = groups.get(id_)
        if g is None:
            g = groups[id_] = _Group(line, height, width, cell_type, sample_id)
        else:
            for name, value, first in (("width", width, g.width), ("height", height, g.height),
                                       ("cell_type", cell_type, g.cell_type),
                                       ("sample_id", sample_id, g.sample_id)):
                if value != first:
                    raise DataError(f"{_at(path, line, name)}: {value!r} for id {id_!r} disagrees "
                                    f"with {first!r} on line {g.line}")
        ann = row[c_ann]
        if ann.strip():
            g.lines.append(line)
            g.rles.append(ann)

    records, first_lines = [], {}
    for id_, g in groups.items():
        try:
            _rle.parse_runs(g.rles, (g.height, g.width))
        except _rle.RLEError as e:
            line = g.lines[e.index]
            msg = f"RLE {e.detail}"
            raise DataError(f"{_at(path, line, 'annotation')}: {msg} (height {g.height}, width "
                            f"{g.width}; value {_show(g.rles[e.index])})") from None
        image_path = images_dir / f"{id_}.png"
        if check_images:
            try:
                img_shape = load_image(image_path).shape
            except DataError as e:
                raise DataError(f"{_at(path, g.line, 'id')}: image of id {id_!r}: {e}") from None
            if img_shape != (g.height, g.width):
                bad = [n for n, a, b in (("height", g.height, img_shape[0]),
                                         ("width", g.width, img_shape[1])) if a != b]
                raise DataError(f"{_at(path, g.line, bad[0])}: height={g.height}, width={g.width} "
                                f"for id {id_!r}, but {image_path} has (height, width) = {img_shape}")
        records.append(ImageRecord(id=id_, image_path=image_path, shape=(g.height, g.width),
                                   cell_type=g.cell_type, sample_id=g.sample_id,
                                   rles=tuple(g.rles), source=source))
        first_lines[id_] = g.line
    return records, first_lines


def read_train_csv(path, images_dir=None, check_images: bool = True, *,
                   source: str = "train") -> list[ImageRecord]:
    """One :class:`ImageRecord` per image id of a train.csv-format file.

    ``images_dir`` defaults to ``<csv folder>/train``; ``image_path`` is ``images_dir/<id>.png``.
    Validates: required columns (:data:`TRAIN_COLUMNS`, any order), cell_type in
    ``kit.CELL_TYPES``, width/height positive integers, width/height/cell_type/sample_id equal on
    every row of an id, every RLE valid for (height, width), and when ``check_images`` that each
    PNG exists, decodes (:func:`load_image`) and has shape (height, width). Raises DataError.
    """
    return _read_train(path, images_dir, check_images, source)[0]


def read_competition_dir(root, check_images: bool = True) -> Competition:
    """Read a competition directory (layout in the module docstring).

    Test ids come from ``sample_submission.csv`` when it exists (every id needs
    ``test/<id>.png``), else from ``test/*.png`` sorted by name. Test records have no RLEs and
    cell_type None unless ``test_labels.csv`` exists: then its rows fill ``rles``, ``cell_type``
    and ``sample_id`` of the test records it names (a test image it does not name stays
    unlabelled; an id it names without a test image is an error). With ``check_images`` every
    image is decoded and checked, otherwise test shapes come from the PNG header.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: competition directory not found")
    train_csv = root / "train.csv"
    if not train_csv.is_file():
        raise DataError(f"{train_csv}: file not found (a competition directory holds train.csv, "
                        "train/*.png, test/*.png and sample_submission.csv)")
    train = read_train_csv(train_csv, root / "train", check_images)

    test_dir = root / "test"
    sub = root / "sample_submission.csv"
    test_ids: list[str] = []
    if sub.is_file():
        cols, rows = _read_csv(sub, ("id",))
        seen = set()
        for line, row in rows:
            id_ = row[cols["id"]]
            if id_ in seen:
                continue
            if not (test_dir / f"{id_}.png").is_file():
                raise DataError(f"{_at(sub, line, 'id')}: no test image {test_dir / f'{id_}.png'} "
                                f"for id {_show(id_)}")
            seen.add(id_)
            test_ids.append(id_)
    elif test_dir.is_dir():
        test_ids = sorted(p.stem for p in test_dir.glob("*.png"))
    test = [ImageRecord(id=id_, image_path=test_dir / f"{id_}.png",
                        shape=_image_shape(test_dir / f"{id_}.png", check_images),
                        cell_type=None, sample_id=None, source="test") for id_ in test_ids]

    labels_csv = root / "test_labels.csv"
    if labels_csv.is_file():
        labelled, lines = _read_train(labels_csv, test_dir, check_images, "test")
        by_id = {r.id: r for r in labelled}
        test_set = {r.id for r in test}
        for r in labelled:
            if r.id not in test_set:
                raise DataError(f"{_at(labels_csv, lines[r.id], 'id')}: id {r.id!r} is not a test "
                                f"image ({len(test_set)} test ids)")
        for i, r in enumerate(test):
            lab = by_id.get(r.id)
            if lab is None:
                continue
            if lab.shape != r.shape:
                raise DataError(f"{_at(labels_csv, lines[r.id], 'height')}: (height, width) = "
                                f"{lab.shape} for id {r.id!r}, but {r.image_path} has {r.shape}")
            test[i] = replace(r, rles=lab.rles, cell_type=lab.cell_type, sample_id=lab.sample_id)
    return Competition(train=train, test=test, root=root)


# --------------------------------------------------------------------------------------------
# COCO / LIVECell


def read_coco(json_path, images_dir=None, cell_type: str | None = None, *,
              source: str = "coco") -> list[ImageRecord]:
    """One :class:`ImageRecord` per image of a COCO / LIVECell instance-segmentation json.

    Each annotation (polygons, or RLE with compressed or uncompressed counts) becomes one Kaggle
    RLE string, in annotation order; overlapping annotations stay separate. The record's shape is
    the json's (height, width); its id is the stem of ``file_name`` (``str(image id)`` when
    there is none); ``image_path = images_dir / file_name`` when ``images_dir`` is given, else
    None. ``cell_type`` (one of ``kit.CELL_TYPES``) applies to every image; when None, an image
    takes the cell type named by its annotations' categories (case-insensitive, e.g. the
    p890040 jsons' ``shsy5y``/``astro``/``cort``) and None when they name none (LIVECell's
    ``cell``). LIVECell's ``annotations`` dict (id -> annotation) is accepted as well as a list.
    ``sample_id`` is None. Raises DataError naming the file, image and annotation.

    Memory: the json is parsed by :func:`kit.coco_json.load_compact`, each annotation compacted
    as it is decoded (peak ~1.1 KB per LIVECell polygon, ~4 KB with ``json.load``); the records
    then hold ~0.45 KB per annotation (``benchmarks.coco_read``).
    """
    from kit.coco_json import load_compact, segmentation_rle

    json_path = Path(json_path)
    if cell_type is not None and cell_type not in CELL_TYPES:
        raise ValueError(f"cell_type must be one of {CELL_TYPES} or None, got {cell_type!r}")
    try:
        dataset = load_compact(json_path)
    except FileNotFoundError:
        raise DataError(f"{json_path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{json_path}: not valid JSON ({e})") from None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list):
        raise DataError(f"{json_path}: expected a COCO json object with an 'images' list")
    anns = dataset.get("annotations", [])
    if isinstance(anns, dict):  # LIVECell: {"<ann id>": annotation, ...}
        anns = list(anns.values())
    if not isinstance(anns, list):
        raise DataError(f"{json_path}: 'annotations' must be a list or a dict, "
                        f"got {type(anns).__name__}")
    categories = dataset.get("categories") or []

    for k, img in enumerate(dataset["images"]):
        for key in ("id", "height", "width"):
            if not isinstance(img, dict) or key not in img:
                raise DataError(f"{json_path}: images[{k}] has no {key!r}")
    for k, a in enumerate(anns):
        for key in ("id", "image_id", "category_id", "segmentation"):
            if not isinstance(a, dict) or key not in a:
                raise DataError(f"{json_path}: annotations[{k}] has no {key!r}")
        if not isinstance(a["image_id"], (int, str)):
            raise DataError(f"{json_path}: annotations[{k}] (id {a['id']!r}): image_id must be an "
                            f"integer or a string, got {a['image_id']!r:.40}")
    if not isinstance(categories, list):
        raise DataError(f"{json_path}: 'categories' must be a list, got {type(categories).__name__}")
    for k, cat in enumerate(categories):
        if not isinstance(cat, dict) or "id" not in cat:
            raise DataError(f"{json_path}: categories[{k}] has no 'id'")
    by_image: dict = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    orphans = set(by_image) - {img["id"] for img in dataset["images"]}
    if orphans:
        raise DataError(f"{json_path}: annotations refer to image ids not in 'images': "
                        f"{sorted(map(str, orphans))[:5]}")
    cat_type = {}
    for cat in categories:
        name = str(cat.get("name", "")).lower()
        cat_type[cat.get("id")] = name if name in CELL_TYPES else None

    records, seen = [], {}
    for img in dataset["images"]:
        iid = img["id"]
        file_name = img.get("file_name")
        id_ = Path(file_name).stem if file_name else str(iid)
        if id_ in seen:
            raise DataError(f"{json_path}: images {seen[id_]!r} and {iid!r} both give record id "
                            f"{id_!r}")
        seen[id_] = iid
        try:
            shape = (int(img["height"]), int(img["width"]))
            if min(shape) < 1:
                raise ValueError
        except (TypeError, ValueError):
            raise DataError(f"{json_path}: image {iid!r}: height/width must be positive integers, "
                            f"got {img['height']!r}/{img['width']!r}") from None
        img_anns = by_image.get(iid, [])
        coco_rles = []
        for a in img_anns:
            try:
                coco_rles.append(segmentation_rle(a["segmentation"], *shape))
            except Exception as e:  # pycocotools raises assorted types on bad segmentations
                raise DataError(f"{json_path}: annotation {a.get('id')!r} of image {iid!r}: bad "
                                f"segmentation {str(a['segmentation'])[:60]!r} ({e})") from None
        try:
            rles = _rle.coco_counts_to_kaggle(coco_rles, shape)
        except _rle.RLEError as e:
            a = img_anns[e.index]
            raise DataError(f"{json_path}: annotation {a.get('id')!r} of image {iid!r}: "
                            f"{e}") from None
        ct = cell_type
        if ct is None:
            types = {cat_type.get(a.get("category_id")) for a in img_anns} - {None}
            if len(types) > 1:
                raise DataError(f"{json_path}: image {iid!r} has annotations of several cell "
                                f"types {sorted(types)}")
            ct = types.pop() if types else None
        records.append(ImageRecord(
            id=id_, image_path=None if images_dir is None or not file_name
            else Path(images_dir) / file_name,
            shape=shape, cell_type=ct, sample_id=None, rles=tuple(rles), source=source))
    return records


# --------------------------------------------------------------------------------------------
# Folds


def inner_split(records: Sequence[ImageRecord], fraction: float, seed: int = 42
                ) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """``(fit, validation)``: about ``fraction`` of ``records`` set aside for validation (the
    checkpoint / early-stopping choice of a training run), grouped by sample and stratified by
    cell type like :func:`make_folds` (an image without a sample_id is a group of its own): the
    first of ``round(1 / fraction)`` folds, or of as many folds as there are groups when there
    are fewer (then the validation share is one group, more than ``fraction``). With fewer
    than 3 groups, images are split one by one (images of a sample then straddle the split:
    the validation score is optimistic, the held-out fold is untouched either way).
    ``fraction`` 0 or fewer than 4 records: no validation split (``(records, [])``). Same
    records and seed -> same split."""
    records = list(records)
    if not 0.0 <= fraction < 0.5:
        raise ValueError(f"validation fraction must be in [0, 0.5), got {fraction!r}")
    if fraction == 0 or len(records) < 4:
        return records, []
    groups = {r.sample_id if r.sample_id is not None else f"\0{r.id}" for r in records}
    keyed = records
    if len(groups) < 3:
        keyed = [replace(r, sample_id=None) for r in records]
        groups = {r.id for r in records}
    largest_type = max(Counter(r.cell_type for r in records).values())
    n = min(max(2, round(1 / fraction)), len(groups), largest_type)
    if n < 2:
        return records, []
    import warnings

    with warnings.catch_warnings():  # a cell type with fewer images than folds: fine here
        warnings.simplefilter("ignore", UserWarning)
        try:
            folds = make_folds(keyed, n, seed, unknown_sample_alone=True)
        except DataError:  # a fold came out empty: too few images to set any aside
            return records, []
    return ([r for r in records if folds[r.id] != 0], [r for r in records if folds[r.id] == 0])


def make_folds(records: Iterable[ImageRecord], n_folds: int = 5, seed: int = 42, *,
               unknown_sample_alone: bool = False) -> dict[str, int]:
    """``{id: fold}`` (folds ``0..n_folds-1``) by ``StratifiedGroupKFold(shuffle=True)``.

    Stratified on ``cell_type``, grouped by ``sample_id``: all images of a sample land in one
    fold. Every record needs a cell_type, ids must be unique, and there must be at least
    ``n_folds`` groups. A record without a sample_id is an error, or with
    ``unknown_sample_alone`` a group of its own (then images of one real sample may straddle
    folds: the caller says so). Same records and seed -> same folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    records = list(records)
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    ids, seen = [], set()
    for r in records:
        if r.id in seen:
            raise DataError(f"make_folds: duplicate record id {r.id!r}")
        if r.cell_type is None:
            raise DataError(f"make_folds: record {r.id!r} has no cell_type (folds are stratified "
                            "on it)")
        if r.sample_id is None and not unknown_sample_alone:
            raise DataError(f"make_folds: record {r.id!r} has no sample_id (folds are grouped "
                            "by it)")
        seen.add(r.id)
        ids.append(r.id)
    # An image without a sample_id is a group of its own, under a name no sample_id can take
    # (a NUL byte first, which no real sample_id has): groups that exist keep their names, so
    # the folds of fully labelled records do not change.
    groups = [r.sample_id if r.sample_id is not None else f"\0{r.id}" for r in records]
    n_groups = len(set(groups))
    if n_groups < n_folds:
        raise DataError(f"make_folds: {n_groups} sample_id group(s) in {len(records)} records, "
                        f"fewer than n_folds={n_folds}; each fold needs at least one group")
    y = [r.cell_type for r in records]
    folds = np.full(len(records), -1, np.int64)
    splitter = StratifiedGroupKFold(n_splits=int(n_folds), shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(splitter.split(np.zeros((len(records), 1)), y, groups)):
        folds[val] = k
    empty = sorted(set(range(n_folds)) - set(folds.tolist()))
    if empty:
        raise DataError(f"make_folds: fold(s) {empty} came out empty ({n_groups} groups for "
                        f"{n_folds} folds); use fewer folds")
    return dict(zip(ids, folds.tolist()))


def read_folds_csv(path) -> dict[str, int]:
    """``{id: fold}`` from an ``id,fold`` CSV (other columns ignored); folds are integers >= 0."""
    cols, rows = _read_csv(Path(path), FOLDS_COLUMNS)
    folds: dict[str, int] = {}
    first: dict[str, int] = {}
    for line, row in rows:
        id_, text = row[cols["id"]], row[cols["fold"]]
        if not id_.strip():
            raise DataError(f"{_at(path, line, 'id')}: empty id")
        if id_ in folds:
            raise DataError(f"{_at(path, line, 'id')}: duplicate id {_show(id_)} (first on line "
                            f"{first[id_]})")
        try:
            fold = int(text)
        except ValueError:
            fold = -1
        if fold < 0:
            raise DataError(f"{_at(path, line, 'fold')}: expected an integer >= 0, got {_show(text)}")
        folds[id_] = fold
        first[id_] = line
    return folds


def split_by_fold(records: Sequence[ImageRecord], folds: Mapping[str, int], fold: int,
                  source: str | Path | None = None) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """``(train, held_out)``: the records outside and inside ``fold``, in input order.

    ``folds`` maps every record's id to its fold; ``source`` (a path or a name; None: folds
    that were made, not read) says where it came from, for the errors. ValueError when a record
    has no fold, when ``fold`` is not one of the folds, or when either side would be empty.
    """
    source = "the folds" if source is None else str(source)
    missing = [r.id for r in records if r.id not in folds]
    if missing:
        raise ValueError(f"{source}: no fold for {len(missing)} train id(s), e.g. {missing[:3]}")
    present = sorted({folds[r.id] for r in records})
    if fold not in present:
        raise ValueError(f"fold {fold}: no labelled image in that fold of {source} (folds: {present})")
    train = [r for r in records if folds[r.id] != fold]
    held_out = [r for r in records if folds[r.id] == fold]
    if not train:
        raise ValueError(f"fold {fold}: every one of the {len(records)} labelled images is in it; "
                         "training needs images of other folds")
    return train, held_out


def write_folds_csv(folds: Mapping[str, int], path) -> Path:
    """Write ``{id: fold}`` as an ``id,fold`` CSV atomically (temp file + ``os.replace``)."""
    path = Path(path)
    rows = []
    for id_, fold in folds.items():
        if not isinstance(id_, str) or not id_ or any(ch in id_ for ch in ",\r\n\""):
            raise ValueError(f"fold ids must be non-empty strings without commas, quotes or "
                             f"newlines, got {id_!r}")
        if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or fold < 0:
            raise ValueError(f"fold of {id_!r} must be an integer >= 0, got {fold!r}")
        rows.append(f"{id_},{int(fold)}\n")
    from kit.atomic import atomic_open

    with atomic_open(path, "w", newline="") as f:
        f.write("id,fold\n")
        f.writelines(rows)
    return path
