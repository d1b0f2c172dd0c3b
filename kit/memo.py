"""A bounded memo: the few recent results a search asks for again (one object per use)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable

__all__ = ["BoundedMemo"]


class BoundedMemo:
    """``get(key, make)``: ``make()``'s result, computed once per key while the key is among the
    ``size`` most recently used ones (least recently used dropped first)."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"memo size must be >= 1, got {size}")
        self.size = size
        self._items: OrderedDict = OrderedDict()

    def get(self, key: Hashable, make: Callable):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
