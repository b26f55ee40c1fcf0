"""Splitting a large bucket over threads: the cpu backend's rows, cut and shared out.

A bucket of at least ``PARALLEL_MIN_ELEMENTS`` elements is cut into rows of
at most ``CHUNK`` elements (:func:`chunked`) and the rows into ``threads``
contiguous ranges of about equal work (:func:`row_ranges`). The serial kernel
(compiled ``nogil``) runs one range on the calling thread and the others on a
small pool of Python threads (:class:`ThreadPool`). numba's
``parallel=True``/``prange`` twin of the same loop is the alternative
(``backend.parallel = 'prange'``).

Threads are the default because they depend on no numba threading layer (the
workqueue layer aborts the process when two Python threads launch parallel
kernels at once; an OpenMP layer adds a second OpenMP runtime beside torch's
or MKL's and is not fork-safe), need no second compile, and are rebuilt in a
forked child. ``benchmarks/bench_cpu.py`` measures the two against one thread
(its ``cpu``, ``cpu-prange`` and ``cpu-serial`` rows); the threshold is where
handing half of a bucket to a second thread stopped costing more than it
saved there (a bucket that fits in cache gains nothing).
"""

from __future__ import annotations

import os
import threading

import numpy as np

__all__ = ["CHUNK", "PARALLEL_MIN_ELEMENTS", "ThreadPool", "chunked", "row_ranges", "row_spans", "run_parts"]

#: elements per parallel work item: big enough to amortise the per-chunk setup
#: and keep each thread streaming, small enough to balance a bucket over threads
CHUNK = 1 << 16

#: buckets with fewer elements than this run the serial loop (see the module docstring)
PARALLEL_MIN_ELEMENTS = 1 << 20


def chunked(table, chunk: int, itemsize: int, n_arrays: int | None = None, start: int | None = None):
    """Rows of at most ``chunk`` elements: long tensors are cut, their addresses offset.

    Only the first ``n_arrays`` address columns (all, by default) point at
    the span's first element and move with it; operands are indexed by the
    element's place in its tensor, which column ``start`` (if any) keeps.
    """
    return chunked_with_offsets(table, chunk, itemsize, n_arrays, start)[0]


def chunked_with_offsets(table, chunk: int, itemsize: int, n_arrays: int | None = None,
                         start: int | None = None):
    """:func:`chunked`, and for each new row its source row and its offset in bytes.

    The two let a caller that keeps the chunked table across steps rewrite one
    address column (the gradients') as ``address[source] + offset``.
    """
    sizes = table[:, 0]
    counts = (sizes + chunk - 1) // chunk
    if not len(table) or counts.max() <= 1:
        return table, np.arange(len(table)), np.zeros(len(table), dtype=np.int64)
    rows = np.repeat(table, counts, axis=0)
    source = np.repeat(np.arange(len(table)), counts)
    first = np.cumsum(counts) - counts
    offset = (np.arange(len(rows)) - np.repeat(first, counts)) * chunk
    rows[:, 0] = np.minimum(rows[:, 0] - offset, chunk)
    last = table.shape[1] if n_arrays is None else 1 + n_arrays
    rows[:, 1:last] += (offset * itemsize)[:, None]
    if start is not None:
        rows[:, start] += offset
    return rows, source, offset * itemsize


def row_spans(table, threads: int) -> list[tuple[int, int]]:
    """Up to ``threads`` non-empty ``(start, stop)`` row spans of about equal element counts (column 0)."""
    ends = np.cumsum(table[:, 0])
    total = int(ends[-1]) if len(ends) else 0
    cuts = [0, *np.searchsorted(ends, [total * k // threads for k in range(1, threads)], side="right"),
            len(table)]
    return [(int(a), int(b)) for a, b in zip(cuts, cuts[1:]) if b > a]


def row_ranges(table, threads: int) -> list:
    """``table`` as up to ``threads`` contiguous row ranges (views) of about equal element counts."""
    return [table[a:b] for a, b in row_spans(table, threads)]


class ThreadPool:
    """A lazily grown pool of worker threads, rebuilt in a forked child (whose threads are gone)."""

    def __init__(self, name: str = "ms_optim-cpu"):
        self._name = name
        self._pool = None
        self._size = 0
        self._pid = 0
        self._lock = threading.Lock()

    def get(self, workers: int):
        """An executor with at least ``workers`` threads (made here, so a launch after it cannot fail)."""
        if self._pool is not None and self._pid != os.getpid():
            self._pool, self._size = None, 0
        if self._pool is None or self._size < workers:
            from concurrent.futures import ThreadPoolExecutor

            with self._lock:
                if self._pool is None or self._size < workers:
                    old = self._pool
                    self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=self._name)
                    self._size = workers
                    self._pid = os.getpid()
                    if old is not None:
                        old.shutdown(wait=False)
        return self._pool


def run_parts(fn, parts: list, h, pool) -> None:
    """``fn(part, h)`` for every part: the first on this thread, the rest on ``pool``."""
    if len(parts) == 1:
        fn(parts[0], h)
        return
    futures = [pool.submit(fn, part, h) for part in parts[1:]]
    try:
        fn(parts[0], h)
    finally:
        for f in futures:
            f.result()
