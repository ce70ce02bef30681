"""How many threads woqconv's tensor work uses."""

from __future__ import annotations

import itertools
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

from ._lazy import torch

T = TypeVar("T")
R = TypeVar("R")


# More workers than this gain nothing measurable (each pass is bound by memory and page-cache copies)
# and each holds one more layer in memory.
MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """Workers when none are asked for: one per core this process may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores))


@contextmanager
def compute_threads(workers: int = 1):
    """One torch thread per worker (``workers`` is how many run at once; each gets one thread). A converter's tensor ops are small and memory-bound: splitting each
    across cores gains little, and on a busy machine the op's barriers wait for a descheduled thread
    (a 7B conversion took 3x longer at load 4 with torch's default threads). Layers run in parallel
    in ``workers`` threads instead.
    (torch is not imported for this: where the block imports it, the limit applies from its import on.)"""
    before: list[int] = []

    def limit(module) -> None:
        before.append(module.get_num_threads())
        module.set_num_threads(1)

    torch.when_imported(limit)
    try:
        yield
    finally:
        torch.forget(limit)
        if before:
            torch.set_num_threads(before[0])


def _glibc_trim():
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return lambda: None
    return lambda: trim(0)


_trim = _glibc_trim()


# Layers between two trims. ``malloc_trim`` walks every arena (one per worker thread): at 7B it cost
# 0.5 ms per call, 0.37 s of a 1.9 s scan and plan when called after every layer. Every 8th layer the
# scan and plan of a 7B checkpoint took 1.15 s and peaked 16 MB higher (264 MB against 248 MB), and
# the peak still does not grow with the model (241 MB at 1B).
TRIM_EVERY = 8
_released = itertools.count(1)


def release_freed_memory() -> None:
    """Give memory freed by the last layers back to the operating system (every ``TRIM_EVERY`` calls).

    glibc keeps the small tensors a layer frees in its heap, and the next layer's allocations seldom
    fit the holes exactly: over a scan of a 7B model that held 130 MB that nothing used (368 MB peak
    against 257 MB for a 1B model; 557 MB with no trim at all). The scan and the plan call this after
    every layer, so resident memory stays flat with model size.
    """
    if next(_released) % TRIM_EVERY == 0:  # itertools.count is atomic under the GIL: no lock
        _trim()


def map_bounded(pool: ThreadPoolExecutor | None, fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` in order, with at most ``workers`` items in flight (each may hold one layer).

    Results come back in the order of ``items``, so the first failing item in that order is the one
    whose error is raised, however the threads were scheduled.
    """
    if pool is None:
        yield from map(fn, items)
        return
    pending: deque[Future] = deque()
    try:
        for item in items:
            if len(pending) >= workers:
                yield pending.popleft().result()
            pending.append(pool.submit(fn, item))
        while pending:
            yield pending.popleft().result()
    finally:
        # On failure the caller closes its files next: no worker may still be reading or writing them.
        for f in pending:
            f.cancel()
        wait(pending)


def map_in_order(fn: Callable[[T], R], items: Iterable[T], workers: int = 1) -> list[R]:
    """:func:`map_bounded` on a pool of its own: a pass over every layer, ``workers`` at a time."""
    if workers <= 1:
        return list(map(fn, items))
    with ThreadPoolExecutor(workers) as pool:
        return list(map_bounded(pool, fn, items, workers))
