"""What each optional capability needs installed, and one line naming the extra when it is missing.

The conversions between safetensors formats need only woqconv's own dependencies. Verifying with real
loaders, the Gaudi targets, bitsandbytes and OpenVINO each need their peer libraries, installed as
``pip install 'woqconv[EXTRA]'`` (pyproject.toml lists each extra's packages).
"""

from __future__ import annotations

import importlib.util

from .errors import WoqconvError

# gptqmodel cannot be an extra: its metadata asks for a newer torch, which pip would fetch as a CUDA build.
GPTQMODEL_INSTALL = ("pip install --no-deps gptqmodel==7.7.0 optimum==2.3.0 && pip install device-smi logbar tokenicer defuser "
                     "pypcre threadpoolctl protobuf pillow")


class MissingExtra(WoqconvError):
    """A capability whose peer library is not installed: exit 2, with the command that installs it."""


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, extra: str, what: str) -> None:
    """Raise MissingExtra unless ``module`` imports: ``what`` needs it, and ``woqconv[extra]`` installs it."""
    if installed(module):
        return
    how = GPTQMODEL_INSTALL if module == "gptqmodel" else f"pip install 'woqconv[{extra}]'"
    raise MissingExtra(f"{what} needs {module}, which is not installed: {how}")
