"""The one reader of the kit's CSV inputs (train.csv, submissions, folds, cell types, ids).

CSVs as people write them are accepted: a UTF-8 byte-order mark, blank (or all-space) lines,
``\\r\\n`` line ends, header names with spaces around them, columns in any order, extra
columns. Everything else is an error that names the file, the line (1-based, as a text
editor shows it; the header is line 1) and, where it applies, the field: a file that is
missing, a folder, empty, not UTF-8 (with the line of the first bad byte), malformed quoting,
a row with the wrong number of fields, a missing or repeated column.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from kit.errors import KitError


class CSVError(KitError):
    """A CSV input that cannot be read as the kit needs it."""


def at(path, line: int | None = None, field: str | None = None) -> str:
    """``path line N, field 'x'``: where a problem is, for error messages."""
    out = str(path)
    if line is not None:
        out += f" line {line}"
    if field is not None:
        out += f", field {field!r}"
    return out


def _not_utf8(path: Path, error: UnicodeDecodeError, error_type) -> KitError:
    data = path.read_bytes()
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    pos = bom + error.start  # utf-8-sig positions count from after the BOM
    line = data[:pos].count(b"\n") + 1
    return error_type(f"{at(path, line)}: not UTF-8 text (byte {data[pos:pos + 1]!r} at file "
                      f"offset {pos}); save the file as UTF-8")


def read_csv(path, required: Sequence[str], optional: Sequence[str] = (), *,
             error_type: type = CSVError) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    """``(columns, rows)`` of a CSV: ``columns`` maps each (stripped) header name to its index;
    ``rows`` are ``(line, fields)`` with line the record's first line. Blank lines are skipped.

    ``required`` columns must be present (``optional`` ones are named in the message too).
    Errors are raised as ``error_type`` (a :class:`KitError` subclass of the caller's).
    """
    path = Path(path)
    rows: list[tuple[int, list[str]]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            end = reader.line_num
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    rows.append((end + 1, row))
                end = reader.line_num
    except FileNotFoundError:
        raise error_type(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error_type(f"{path}: is a directory, expected a CSV file") from None
    except PermissionError:
        raise error_type(f"{path}: permission denied (cannot read it)") from None
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e, error_type) from None
    except csv.Error as e:
        raise error_type(f"{at(path, reader.line_num)}: malformed CSV ({e})") from None
    if header is None:
        raise error_type(f"{path}: file is empty; expected a header with columns "
                         f"{', '.join(required)}")
    header = [h.strip() for h in header]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise error_type(f"{at(path, 1)} (header): duplicate column(s) {dup}")
    missing = [c for c in required if c not in header]
    if missing:
        also = f" and optionally {list(optional)}" if optional else ""
        raise error_type(f"{at(path, 1)} (header): missing column(s) {missing}; expected columns "
                         f"{list(required)}{also} in any order (others are ignored), found {header}")
    for line, row in rows:
        if len(row) != len(header):
            raise error_type(f"{at(path, line)}: {len(row)} fields, the header has {len(header)}")
    return {h: i for i, h in enumerate(header)}, rows
