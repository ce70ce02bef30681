"""Only the C re-layout kernel is declared here; everything else is in pyproject.toml.

The extension is optional: without a C compiler the build goes on, and packing.py falls back to its
numpy version of the same re-layout (slower, same bytes)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("woqconv.kernels._relayout", ["woqconv/kernels/_relayout.c"], optional=True)])
