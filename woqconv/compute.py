"""How many threads woqconv's tensor work uses."""

from __future__ import annotations

from contextlib import contextmanager

from ._lazy import torch


@contextmanager
def compute_threads(workers: int = 1):
    """One torch thread per worker (``workers`` is how many run at once; each gets one thread). A converter's tensor ops are small and memory-bound: splitting each
    across cores gains little, and on a busy machine the op's barriers wait for a descheduled thread
    (a 7B conversion took 3x longer at load 4 with torch's default threads). Layers run in parallel
    in ``workers`` threads instead."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _glibc_trim():
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return lambda: None
    return lambda: trim(0)


_trim = _glibc_trim()


def release_freed_memory() -> None:
    """Give memory freed by the last layer back to the operating system.

    glibc keeps the small tensors a layer frees in its heap, and the next layer's allocations seldom
    fit the holes exactly: over a scan of a 7B model that held 130 MB that nothing used (368 MB peak
    against 257 MB for a 1B model). ``malloc_trim`` returns the free pages in about 0.2 ms, so the
    scan and the plan call it after every layer and resident memory stays flat with model size.
    """
    _trim()
