"""The ``woqconv`` command line: a thin layer over the Python API."""

from .app import app, main  # noqa: F401
