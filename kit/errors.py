"""The kit's error types and how its command-line tools report them.

Every error the kit raises for something a user gave it derives from :class:`KitError` (a
``ValueError``): bad data files (:class:`kit.data.DataError`), RLE strings
(:class:`kit.rle.RLEError`), submissions, configs, model folders (:class:`ModelError`) and
outputs that cannot be written (:class:`OutputError`). Each message names the file (and the
line, field or key where there is one) and the bad value.

:func:`cli` runs a tool's ``main``: a KitError, another ``ValueError`` or an ``OSError``
(a file that cannot be read or written) becomes ONE line on stderr, ``error: ...``, and the
tool's input-error exit status; Ctrl-C becomes ``interrupted`` and exit 130 (128 + SIGINT,
the shell's convention). No traceback reaches the user for any of them.
"""
from __future__ import annotations

import sys
from typing import Callable

EXIT_INTERRUPTED = 130


class KitError(ValueError):
    """Base of the kit's errors about what a user gave it (files, values, folders)."""


class ModelError(KitError):
    """A model folder or weights file that cannot be loaded; the message names the file."""


class OutputError(KitError):
    """An output that cannot be written (read-only folder, a file where a folder should be,
    a folder where a file should be); the message names the path."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (an OSError's as ``path: reason``)."""
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.filename}: {error.strerror or error}"
    else:
        text = str(error) or type(error).__name__
    return " | ".join(part.strip() for part in text.splitlines() if part.strip())


def cli(main: Callable[..., int], argv=None, *, input_error: int = 2) -> int:
    """``main(argv)`` with the errors above turned into one line and an exit status."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return input_error
