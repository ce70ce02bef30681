"""How many threads woqconv's tensor work uses."""

from __future__ import annotations

from contextlib import contextmanager

import torch


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
