"""Atomic file writing: outputs appear whole or not at all.

:func:`atomic_open` writes to a hidden temp file in the target's folder (same file system,
named ``.<name>.<pid>.<random>.tmp``), then ``os.replace``s it over the target; on any error,
Ctrl-C included, the temp file is removed (with SIGINT held back while it is) and an
existing target is left untouched. A process killed outright (``kill -9``) cannot clean up:
the next write to the same target removes temp files whose process is gone.

:func:`check_writable` / :func:`check_writable_dir` let a tool fail before its work starts
when an output cannot be written. Problems are :class:`kit.errors.OutputError` naming the path.
:func:`up_to_date` tells a rerun whether an output is newer than what it was made from.
"""
from __future__ import annotations

import os
import re
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from kit.errors import OutputError


def _existing_ancestor(path: Path) -> Path:
    anc = path
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    return anc


def _probe(folder: Path, target: Path, what: str) -> None:
    """Create and remove a file in ``folder``: the only check that also holds for root and
    read-only mounts."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".kit-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{target}: cannot write the {what} ({folder}: "
                          f"{e.strerror or e})") from None


def _check_folder(folder: Path, target: Path, what: str) -> None:
    """``folder`` exists as a folder or can be made, and files can be written in it."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{target}: cannot write the {what}: {folder} is a file")
    anc = _existing_ancestor(folder)
    if not anc.is_dir():
        raise OutputError(f"{target}: cannot write the {what}: {anc} is a file")
    _probe(anc, target, what)


def check_writable_dir(path, what: str = "output folder") -> Path:
    """``path`` is a folder that exists or can be made, and files can be written in it."""
    path = Path(path)
    _check_folder(path, path, what)
    return path


def check_writable(path, what: str = "output file") -> Path:
    """``path`` can be written as a file: not a folder, its folder exists or can be made, and
    files can be written in it."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file path for the {what}")
    _check_folder(path.parent, path, what)
    return path


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path) -> list[Path]:
    """Remove temp files of ``path`` left by writers that no longer run; returns them."""
    path = Path(path)
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        if m and m["name"] == path.name and not _alive(int(m["pid"])):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def _remove_uninterrupted(tmp: str) -> None:
    """Unlink ``tmp`` with SIGINT held back (a second Ctrl-C must not leave it behind)."""
    main = threading.current_thread() is threading.main_thread()
    if main:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        if os.path.exists(tmp):
            os.unlink(tmp)
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def atomic_torch_save(obj, path) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_open` (a checkpoint is whole or
    absent, never half-written)."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


@contextmanager
def atomic_open(path, mode: str = "w", **kwargs):
    """``with atomic_open(path, "w", newline="") as f: ...`` — see the module docstring."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; cannot write a file there")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{path}: cannot make its folder {path.parent} (a file is in the "
                          "way)") from None
    except OSError as e:
        raise OutputError(f"{path}: cannot make its folder {path.parent} ({e.strerror or e})") from None
    remove_stale_temps(path)
    tmp = None
    try:
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                       dir=path.parent)
        except OSError as e:
            raise OutputError(f"{path}: cannot write there ({e.strerror or e})") from None
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            _remove_uninterrupted(tmp)
        raise


def write_atomic(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        f.write(data)
    return path


@contextmanager
def atomic_folder(path):
    """``with atomic_folder(out) as tmp: <fill tmp>`` builds a folder in a hidden temp folder
    beside ``out`` (``.<name>.tmp-<random>``) and, when the block ends without an error, puts
    it in place of ``out`` (mode 0755; an existing ``out`` is moved aside first and removed
    after, so ``out`` is never half-written); on any error the temp folder is removed and
    ``out`` is left as it was."""
    import shutil

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if out.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "d")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def up_to_date(output, source) -> bool:
    """Whether ``output`` was written after (or with) ``source``: both files exist and
    ``output``'s modification time is not older. What a rerun checks before it reuses an
    output made from ``source`` (a cache from a model, a score from a prediction)."""
    output, source = Path(output), Path(source)
    return output.is_file() and source.is_file() and output.stat().st_mtime >= source.stat().st_mtime
