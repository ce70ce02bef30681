"""OpenVINO IR: read (``reader``: NNCF-compressed weights found by structure), written (``target`` and
``export``: optimum-intel's export of the architecture with the codes put in), and optimum-intel's side of
both, run in its own environment (``worker``, a script run by path)."""

from .reader import HUB_FILE_PATTERNS, KEY, OpenVinoFamily, detect  # noqa: F401
from .target import OpenvinoTarget  # noqa: F401  (registers the openvino target)
