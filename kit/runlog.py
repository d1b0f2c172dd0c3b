"""``train.log``: a run's events, one JSON object per line with a wall-clock stamp and the
process's memory at that moment."""
from __future__ import annotations

import json
import time
from pathlib import Path

__all__ = ["RunLog", "memory_mb"]


def memory_mb() -> dict:
    """``{"rss_mb": resident set now, "peak_rss_mb": its high-water mark}`` of this process in
    MB (1 MB = 2**20 bytes), rounded to 0.1; a key is missing where the OS does not say.

    Linux: ``VmRSS`` / ``VmHWM`` of ``/proc/self/status``, the process's own memory since its
    ``exec``. Not ``getrusage``'s ``ru_maxrss``: for a process started by a large one (pytest,
    a notebook), it holds the parent's peak (vfork shares the parent's memory until exec).
    Elsewhere the peak is ``ru_maxrss``."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        out["rss_mb"] = round(int(fields["VmRSS"].split()[0]) / 1024, 1)
        out["peak_rss_mb"] = round(int(fields["VmHWM"].split()[0]) / 1024, 1)
        return out
    except (OSError, KeyError, ValueError, IndexError):
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
