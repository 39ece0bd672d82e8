"""A small, thread-safe memo of what a compressor derives from a batch's structure alone.

What LVTC builds before its compressed layers (the group index, the compressed 2-D mask, the cell mask) depends only
on the batch's visual layout, its sequence length, where its padding is, the mask's dtype and the device: never on
the values of the hidden states. Serving and evaluation repeat structures (one image size, one prompt template), so
the next batch with the same structure costs a dictionary lookup instead of host work and a host-to-device copy.

Entries are immutable and keyed by the whole structure: a new structure is a miss, never a stale hit. The memo is not
state of any call: a thread that misses builds its own entry, and two threads building the same key build equal
values.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["StructureCache"]


class StructureCache:
    """Least-recently-used memo with a fixed number of entries.

    Args:
        maxsize: entries kept; the least recently used one is dropped beyond it.
    """

    def __init__(self, maxsize: int = 32):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._reset()

    def _reset(self) -> None:
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The entry for `key`, built by `build()` (outside the lock) the first time."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
        value = build()
        with self._lock:
            self.misses += 1
            self._entries[key] = value
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry (the counters too)."""
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    # Copies and pickles start empty: entries hold device tensors, and a lock cannot be copied.
    def __getstate__(self) -> dict[str, Any]:
        return {"maxsize": self.maxsize}

    def __setstate__(self, values: dict[str, Any]) -> None:
        self.maxsize = values["maxsize"]
        self._reset()
