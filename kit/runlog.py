"""``train.log``: a run's events, one JSON object per line with a wall-clock stamp."""
from __future__ import annotations

import json
import time
from pathlib import Path

__all__ = ["RunLog"]


class RunLog:
    """Append-only ``train.log``: ``log(event, **fields)`` appends
    ``{"time": unix seconds, "event": event, **fields}`` (fields JSON-serialisable, no NaN)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __call__(self, event: str, **fields) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), "event": event, **fields},
                               allow_nan=False) + "\n")
