"""Bit kernels: packing and unpacking codes and zero points, and the word re-layouts between GPTQ's,
AWQ's and INC's HPU packings (``packing``: pure, vectorized functions; ``_relayout.c``: the same
re-layouts in C, built at install when a compiler is present)."""
