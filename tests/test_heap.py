"""kit.heap: freed heap memory goes back to the OS at a phase boundary."""
from __future__ import annotations

import sys

import pytest

from kit.heap import release_free_memory
from kit.runlog import memory_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_returns_the_holes_a_freed_batch_leaves():
    # 100 KB blocks come from the heap (below glibc's 128 KB mmap threshold); the last one
    # stays alive at the top, so the heap cannot simply shrink: the freed blocks stay resident
    blocks = [bytearray(100_000) for _ in range(2000)]
    keep = blocks[-1]
    del blocks
    before = memory_mb()["rss_mb"]
    assert release_free_memory() is True
    after = memory_mb()["rss_mb"]
    assert before - after > 100, (before, after)   # ~190 MB were freed
    assert len(keep) == 100_000
