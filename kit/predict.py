"""Predict images with any model folder and write a validated ``submission.csv``.

``python -m kit.predict --model DIR --images DIR --out submission.csv``

The model folder's ``model.json`` names its type (:mod:`kit.models`); every model answers
``predict(image, cell_type) -> label image``. The cell type of each image comes from
``--cell-types`` (any CSV with ``id`` and ``cell_type`` columns, e.g. a train.csv, for
cross-validation), else from the model folder's ``celltype.joblib`` classifier.
Image ids: ``--ids`` (any CSV with an ``id`` column, e.g. a sample_submission.csv) or every ``*.png`` in ``--images``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np


def _id_rows(path, columns: tuple[str, ...]):
    """``(line, id, {column: stripped value})`` of every row of a CSV holding ``columns``
    (``id`` among them); an empty id is an error naming the file and line."""
    from kit.csvfile import at, read_csv

    cols, rows = read_csv(path, columns)
    for line, row in rows:
        values = {c: row[cols[c]].strip() for c in columns}
        if not values["id"]:
            raise ValueError(f"{at(path, line, 'id')}: empty id")
        yield line, values["id"], values


def read_cell_types(path) -> dict[str, str]:
    """``id -> cell_type`` from a CSV with ``id`` and ``cell_type`` columns (e.g. a train.csv,
    whose id repeats on every row of an image: repeats must agree)."""
    from kit import CELL_TYPES
    from kit.csvfile import at

    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for line, id_, values in _id_rows(path, ("id", "cell_type")):
        cell_type = values["cell_type"]
        if cell_type not in CELL_TYPES:
            raise ValueError(f"{at(path, line, 'cell_type')}: unknown cell type {cell_type!r}; "
                             f"valid: {list(CELL_TYPES)}")
        if out.setdefault(id_, cell_type) != cell_type:
            raise ValueError(f"{at(path, line, 'cell_type')}: {cell_type!r} for id {id_!r} "
                             f"disagrees with {out[id_]!r} on line {first[id_]}")
        first.setdefault(id_, line)
    return out


def image_ids(images: Path, ids_csv: Path | None) -> list[str]:
    """Ids to predict: the ``id`` column of ``ids_csv`` (any CSV with one, e.g. a
    sample_submission.csv or a train.csv; order kept, deduplicated) or every ``*.png``."""
    if ids_csv is not None:
        ids = list(dict.fromkeys(id_ for _, id_, _ in _id_rows(ids_csv, ("id",))))
    else:
        ids = sorted(p.stem for p in images.glob("*.png"))
    if not ids:
        raise ValueError(f"no images to predict in {images}")
    return ids


def cell_type_resolver(model_dir: Path, given: Mapping[str, str] | None) -> Callable:
    """``f(id, image) -> cell type``: from ``given`` first, else the folder's classifier."""
    classifier = None

    def resolve(image_id: str, image: np.ndarray) -> str:
        nonlocal classifier
        if given is not None and image_id in given:
            return given[image_id]
        if classifier is None:
            from kit.celltype import CellTypeClassifier

            try:
                classifier = CellTypeClassifier.load(model_dir)
            except FileNotFoundError:
                raise ValueError(f"no cell type for image {image_id!r}: pass --cell-types, or put a "
                                 f"celltype.joblib classifier in {model_dir}") from None
        return classifier.predict(image)

    return resolve


def predict_images(model, model_dir: Path, images: Path, ids: Iterable[str],
                   cell_types: Mapping[str, str] | None = None, progress: bool = True):
    """Yield ``(id, cell_type, label image)`` for every id (image ``images/<id>.png``)."""
    from tqdm import tqdm

    from kit.data import load_image
    from kit.heap import release_free_memory

    resolve = cell_type_resolver(model_dir, cell_types)
    for image_id in tqdm(list(ids), desc="predict", unit="img", disable=not progress, file=sys.stderr):
        image = load_image(images / f"{image_id}.png")
        cell_type = resolve(image_id, image)
        labels = model.predict(image, cell_type)
        release_free_memory()  # the image's holes in the C heap go back (kit.heap)
        yield image_id, cell_type, labels


def run(model_dir: Path, images: Path, out: Path, ids_csv: Path | None = None,
        cell_types_csv: Path | None = None, progress: bool = True, tuned: Path | None = None) -> dict:
    """Predict, write ``out`` atomically, validate it. Returns a small report dict.

    ``tuned``: a ``python -m kit.tune`` YAML applied on top of the folder's settings.
    """
    from kit.atomic import check_writable
    from kit.models import load_model, model_type
    from kit.submission import submission_writer, validate_submission

    check_writable(out, "submission")  # before any work
    model = load_model(model_dir)
    if tuned is not None:
        from kit.models.tuned import apply_tuned

        apply_tuned(model, tuned, model_type(model_dir))
    ids = image_ids(images, ids_csv)
    given = read_cell_types(cell_types_csv) if cell_types_csv else None
    shapes, types = {}, {}
    with submission_writer(out, ids) as add:  # each image's rows written as it is predicted
        for image_id, cell_type, labels in predict_images(model, model_dir, images, ids, given,
                                                          progress):
            add(image_id, labels)
            shapes[image_id] = labels.shape
            types[image_id] = cell_type
    checked = validate_submission(out, ids, shapes)
    return {"images": len(ids), "masks": sum(len(v) for v in checked.values()), "cell_types": types}


def _main(argv=None) -> int:
    from kit.errors import one_line

    parser = argparse.ArgumentParser(prog="python -m kit.predict", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model folder (holds model.json)")
    parser.add_argument("--images", type=Path, required=True, help="folder of <id>.png images")
    parser.add_argument("--out", type=Path, required=True, help="submission.csv to write")
    parser.add_argument("--ids", type=Path, default=None,
                        help="CSV with an id column (sample_submission.csv); default: every PNG")
    parser.add_argument("--cell-types", type=Path, default=None,
                        help="CSV with id and cell_type columns; default: the model's classifier")
    parser.add_argument("--tuned", type=Path, default=None,
                        help="tuned YAML from python -m kit.tune (default: the folder's tuned.yaml, if any)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        report = run(args.model, args.images, args.out, args.ids, args.cell_types, not args.quiet,
                     args.tuned)
    except (ValueError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {report['images']} images, {report['masks']} masks (validated)")
    return 0


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 2 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=2)


if __name__ == "__main__":
    sys.exit(main())
