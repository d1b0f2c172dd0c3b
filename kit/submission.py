"""Write and validate Kaggle ``submission.csv`` files (``id,predicted``).

Format: one row per predicted instance, ``predicted`` = Kaggle RLE (see :mod:`kit.rle`:
row-major, 1-based). An image with no instance still gets exactly one row, with an empty
``predicted``. Masks of one image must not overlap. Rows of one image are contiguous here.

CLI: ``python -m kit.submission SUBMISSION.csv --sample sample_submission.csv`` (or
``--data COMPETITION_DIR``) validates a file and exits 1 with the reasons when it is bad.
"""
from __future__ import annotations

import argparse
import csv
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from kit import IMAGE_SHAPE
from kit.atomic import atomic_open
from kit.csvfile import at, read_csv
from kit.errors import KitError
from kit import _rle_numba
from kit import rle as _rle

HEADER = ("id", "predicted")


class SubmissionError(KitError):
    """A bad submission file; the message names the file, the line and the problem."""


def labels_to_rles(labels: np.ndarray) -> list[str]:
    """RLEs of a non-overlapping (H, W) label image, in ascending label order."""
    return _rle.encode_labels(labels)


def write_submission(predictions: Mapping[str, Sequence[str] | np.ndarray], path,
                     ids: Iterable[str] | None = None) -> Path:
    """Write ``submission.csv`` atomically (temp file in the same folder, then rename).

    predictions: image id -> list of RLE strings, or an (H, W) label image. ``ids`` (e.g.
    the ids of sample_submission.csv) fixes the row order and adds an empty row for ids with
    no prediction; an id in ``predictions`` but not in ``ids`` is an error. Returns the path.
    """
    order = list(ids) if ids is not None else list(predictions)
    unknown = sorted(set(predictions) - set(order))
    if unknown:
        raise ValueError(f"predictions for ids not in `ids`: {unknown[:5]} ({len(unknown)} in all)")
    with submission_writer(path, order) as add:
        for image_id in order:
            add(image_id, predictions.get(image_id, []))
    return Path(path)


@contextmanager
def submission_writer(path, ids: Iterable[str] | None = None):
    """``with submission_writer(path, ids) as add: add(image_id, prediction) ...`` writes a
    submission one image at a time, so that a run never holds every image's predictions: each
    ``add`` writes that image's rows at once (``prediction``: a list of RLE strings or an
    (H, W) label image; none: one empty row). The file is a temp file renamed to ``path`` when
    the block ends without an error (nothing is left otherwise); then every id of ``ids`` not
    added gets its empty row, after the others. An id added twice, or not in ``ids`` (when
    given), is a ValueError."""
    expected = None if ids is None else list(ids)
    allowed = None if expected is None else set(expected)
    written: set = set()
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(HEADER)

        def add(image_id: str, prediction) -> None:
            if allowed is not None and image_id not in allowed:
                raise ValueError(f"{path}: a prediction for id {image_id!r}, which is not among "
                                 "the expected ids")
            if image_id in written:
                raise ValueError(f"{path}: id {image_id!r} is given predictions twice")
            written.add(image_id)
            rles = labels_to_rles(prediction) if isinstance(prediction, np.ndarray) else list(prediction)
            for r in [r for r in rles if r] or [""]:
                writer.writerow((image_id, r))
            f.flush()  # the image's rows leave the process now

        yield add
        for image_id in expected or ():
            if image_id not in written:
                writer.writerow((image_id, ""))


def read_predictions(path) -> dict[str, list[str]]:
    """``id -> [RLE, ...]`` from an ``id,predicted`` CSV (empty predicted = no instance).

    Checks the header and row shape only; :func:`validate_submission` checks the RLEs.
    """
    return {k: [r for _, r in v] for k, v in read_prediction_rows(path).items()}


def read_prediction_rows(path) -> dict[str, list[tuple[int, str]]]:
    """``id -> [(line number, RLE), ...]``; empty RLEs dropped; header is line 1.

    The file is read by :func:`kit.csvfile.read_csv` (a BOM and blank lines are fine); its
    header must be exactly ``id,predicted``, as Kaggle wants it.
    """
    cols, rows = read_csv(path, HEADER, error_type=SubmissionError)
    if len(cols) != len(HEADER):
        raise SubmissionError(f"{at(path, 1)} (header): must be exactly 'id,predicted', got "
                              f"{list(cols)}")
    out: dict[str, list[tuple[int, str]]] = {}
    for line, row in rows:
        image_id, rle = row[cols["id"]].strip(), row[cols["predicted"]].strip()
        if not image_id:
            raise SubmissionError(f"{at(path, line, 'id')}: empty id")
        id_rows = out.setdefault(image_id, [])
        if rle:
            id_rows.append((line, rle))
    return out


def validate_submission(path, ids: Iterable[str], shapes: Mapping[str, tuple] | None = None,
                        shape: tuple = IMAGE_SHAPE) -> dict[str, list[str]]:
    """Check a submission against the expected test ``ids``; return ``id -> [RLE, ...]``.

    Checks: header; every id present; no unknown id; every RLE valid and inside the image
    (``shapes[id]`` or ``shape``, (H, W)); no two masks of one image overlap. Raises
    :class:`SubmissionError` listing every problem found (at most 20 lines of them).
    """
    path = Path(path)
    rows = read_prediction_rows(path)
    ids = list(ids)
    problems: list[str] = []
    missing = [i for i in ids if i not in rows]
    if missing:
        problems.append(f"{len(missing)} test id(s) have no row: {missing[:10]}")
    unknown = sorted(set(rows) - set(ids))
    if unknown:
        problems.append(f"{len(unknown)} id(s) are not test ids: {unknown[:10]}")
    for image_id, id_rows in rows.items():
        if image_id in unknown or not id_rows:
            continue
        h, w = (shapes or {}).get(image_id, shape)
        rles = [r for _, r in id_rows]
        try:
            ptr, starts, lengths = _rle.parse_runs(rles, (h, w))
        except _rle.RLEError as e:
            line = id_rows[e.index][0]
            problems.append(f"line {line} (id {image_id}), field 'predicted': {e.detail}")
            continue
        a, b, px = _rle_numba.first_overlap(ptr, starts, lengths, h * w)
        if a >= 0:
            problems.append(f"id {image_id}: masks on lines {id_rows[a][0]} and {id_rows[b][0]} "
                            f"overlap (e.g. at row {px // w}, col {px % w})")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise SubmissionError(f"{path} is not a valid submission:\n  " + "\n  ".join(shown))
    return {k: [r for _, r in v] for k, v in rows.items()}


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kit.submission", description="Validate a Kaggle submission.csv.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("submission", type=Path, help="the submission.csv to check")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--sample", type=Path, help="sample_submission.csv giving the test ids")
    src.add_argument("--data", type=Path, help="competition dir (test/*.png give ids and shapes)")
    args = parser.parse_args(argv)
    try:
        if args.data is not None:
            from kit.data import read_competition_dir

            test = read_competition_dir(args.data, check_images=False).test
            ids, shapes = [r.id for r in test], {r.id: r.shape for r in test}
        else:
            ids, shapes = list(read_prediction_rows(args.sample)), None
        preds = validate_submission(args.submission, ids, shapes)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(len(v) for v in preds.values())
    print(f"{args.submission}: valid ({len(preds)} images, {n} masks)")
    return 0


def main(argv=None) -> int:
    """The command line: :func:`_main`, every input error one line, exit 1 (:func:`kit.errors.cli`)."""
    from kit.errors import cli

    return cli(_main, argv, input_error=1)


if __name__ == "__main__":
    sys.exit(main())
