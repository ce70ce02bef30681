"""A model's architecture without its weights: what its config.json builds, on the ``meta`` device.

Module names, parameter shapes, buffers and state-dict metadata, for checks against a checkpoint's
tensors and for laying out files the way the real model's ``state_dict()`` would, in a second and
without a byte of weights even at 70B.
"""

from __future__ import annotations

from typing import Mapping

from ._lazy import torch


def meta_model(config: Mapping) -> torch.nn.Module:
    """The model AutoModelForCausalLM builds from ``config`` (a config.json dict), on ``meta``. Any
    ``quantization_config`` is left out: this is the unquantized original model. Raises whatever
    transformers raises for a config it cannot build."""
    from transformers import AutoConfig, AutoModelForCausalLM

    rest = {k: v for k, v in config.items() if k not in ("model_type", "quantization_config")}
    cfg = AutoConfig.for_model(config.get("model_type", "?"), **rest)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)
