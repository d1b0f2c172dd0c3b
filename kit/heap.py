"""The C heap between phases of a run: hand freed memory back to the operating system.

glibc's ``malloc`` keeps the memory a process frees for its next allocations, and it raises its
mmap threshold after every large free (up to 32 MB), so large tensors and arrays come from the
heap and leave holes there. After an epoch of training the resident set holds hundreds of MB
that nothing uses (a Cellpose CPU run: 2.0 GB after its first epoch, 1.1 GB once trimmed), and
the next phase (validation, the SizeModel, out-of-fold prediction) piles its own peak on top.
:func:`release_free_memory` between epochs and phases (``malloc_trim(0)``) returns those pages;
so does a call after each predicted image of a validation or out-of-fold loop, whose images
leave holes of other sizes each (Mask R-CNN: the heap grew ~15 MB per validation image).
Not after every training step: there the pages are faulted in again at once, and a CPnet step
on CPU took 20 % longer with it (a fixed 1 MB mmap threshold: 47 % longer).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["release_free_memory"]


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc.malloc_trim if libc is not None else None
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


def release_free_memory() -> bool:
    """``malloc_trim(0)`` where the C library has it (glibc); True when memory was returned."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
