"""``train.log``: a run's events, one JSON object per line with a wall-clock stamp and the
process's memory at that moment."""
from __future__ import annotations

import json
import time
from pathlib import Path

__all__ = ["RunLog", "memory_mb"]


def memory_mb() -> dict:
    """``{"rss_mb": resident set now, "peak_rss_mb": its high-water mark}`` of this process in
    MB (1 MB = 2**20 bytes), rounded to 0.1; a key is missing where the OS does not say (the
    current RSS is read from ``/proc/self/statm``, the peak from ``getrusage``)."""
    out = {}
    try:
        import os

        with open("/proc/self/statm") as f:
            out["rss_mb"] = round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
        out["peak_rss_mb"] = round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
    except (ImportError, OSError):
        pass
    return out


class RunLog:
    """Append-only ``train.log``: ``log(event, **fields)`` appends
    ``{"time": unix seconds, "event": event, **fields, "rss_mb", "peak_rss_mb"}`` (fields
    JSON-serialisable, no NaN; the memory keys of :func:`memory_mb`, so a run's log shows which
    phase raised its peak)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __call__(self, event: str, **fields) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), "event": event, **fields,
                                **memory_mb()}, allow_nan=False) + "\n")
