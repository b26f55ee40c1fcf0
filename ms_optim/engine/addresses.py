"""Where NumPy arrays live in memory, remembered while they live.

The compiled passes take arrays as int64 addresses in a table. ``a.ctypes.data``
costs about a microsecond (it builds a ctypes object); a gradient or a state
array is usually the same array step after step, so an :class:`AddressCache`
keeps each array's address keyed by its ``id`` and reads it back in a
dictionary lookup. It is safe because an ndarray's buffer never moves while
the array lives (NumPy refuses an in-place ``resize`` of an array that has a
weakref; the size is checked as well), and a weakref callback drops the entry
when the array dies, before its id can be reused.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["AddressCache"]


class AddressCache:
    """``address(a)`` is ``a.ctypes.data``, remembered per live array."""

    def __init__(self):
        self._entries: dict[int, tuple[int, int, Any]] = {}

    def __call__(self, a) -> int:
        key = id(a)
        entries = self._entries
        entry = entries.get(key)
        if entry is not None and entry[1] == a.size:
            return entry[0]
        ref = weakref.ref(a, lambda _, key=key: entries.pop(key, None))
        entry = entries[key] = (a.ctypes.data, a.size, ref)
        return entry[0]

    def __len__(self) -> int:
        return len(self._entries)
