"""``torch``, imported the first time it is used.

Importing torch takes 1.3-1.5 s on a small machine: longer than everything else ``woqconv inspect``
does for a 7B checkpoint (headers, then a numpy pass over zero points, scales and g_idx). woqconv's
library modules therefore write ``from ._lazy import torch`` instead of ``import torch``. The name
stands for the module; the real import happens at the first attribute lookup (``torch.empty``,
``torch.Tensor``), that is, the first time woqconv computes on a tensor.

The one rule that follows: code that runs at import time (module constants, class bodies, default
arguments) must not look anything up on ``torch``. Dtype tables are kept by name and turned into
torch objects on first use. ``tests/test_inspect_fast.py`` checks that an inspect never imports torch.
The worker processes in ``runtime/`` import torch directly: they always compute.
"""

from __future__ import annotations

import importlib
import sys
import types


class LazyModule(types.ModuleType):
    """A module imported on first attribute access, then read like the module itself."""

    def __init__(self, name: str):
        super().__init__(name)
        # Called with the module once it is imported (settings that must hold before the first use).
        self.__dict__["_on_import"] = []

    def __getattr__(self, attr: str):
        module = importlib.import_module(self.__name__)
        hooks, self.__dict__["_on_import"] = self.__dict__.get("_on_import", []), []
        # Copy the module's namespace once, so later lookups are plain attribute reads.
        self.__dict__.update(module.__dict__)
        for hook in hooks:
            hook(module)
        return getattr(module, attr)

    def when_imported(self, hook) -> None:
        """Run ``hook(module)`` now if the module is imported already, else right after its import."""
        if self.__name__ in sys.modules and "__file__" in self.__dict__:
            hook(sys.modules[self.__name__])
        else:
            self.__dict__["_on_import"].append(hook)

    def forget(self, hook) -> None:
        if hook in self.__dict__["_on_import"]:
            self.__dict__["_on_import"].remove(hook)


torch = LazyModule("torch")
