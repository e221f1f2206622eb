"""A small least-recently-used cache shared by the priors (text conditioning) and rewards (tokens, embeddings)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable


class LRUCache:
    """A small least-recently-used cache (prompt -> tokens or text embedding)."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self._data: OrderedDict[Hashable, object] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], object]) -> object:
        if key in self._data:
            self._data.move_to_end(key)
            return self._data[key]
        value = make()
        self._data[key] = value
        if len(self._data) > self.capacity:
            self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
