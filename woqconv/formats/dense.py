"""The dense target: every quantized layer written as its dequantized ``weight``, with no quantization config.

The result is a plain Hugging Face checkpoint (what llama.cpp's converter, fine-tuning, or any quantizer
reads). float32 is the default because it holds the IR's ``dequantize()`` exactly: the products
``(q - z) * s`` are computed in fp32 and written as they are. float16 and bfloat16 round those products;
the rounding is measured per layer while each layer is written (``Target.encode``'s loss), never assumed.

Unquantized tensors keep their bytes, except that a float32 output widens 16-bit floats to float32 (exact),
so that the whole model is float32. A 16-bit output keeps them as stored: narrowing them would be a second,
unasked-for loss, and every loader casts on load anyway.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

from .._lazy import torch
from ..engines import loads
from ..io.checkpoint import CONFIG_NAME, read_json
from ..io.safetensors_io import TensorSpec
from ..ir import CodebookLinear
from .base import ZP_V2, LayerFamily, spec_of
from .targets import LoadExample, ModelQuantSummary, Prepared, Target

# --dtype choices: torch dtype name -> safetensors dtype.
DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
DEFAULT_DTYPE = "float32"


def rounding_loss(exact: torch.Tensor, rounded: torch.Tensor) -> dict | None:
    """How ``rounded`` (``exact`` cast to a narrower float) differs from the fp32 ``exact``: None when it
    does not. The same figures ``--requantize`` reports (relative Frobenius error, max |err|), plus the
    count of weights the cast changed."""
    diff = rounded.to(torch.float32) - exact
    changed = int(torch.count_nonzero(diff))
    if not changed:
        return None
    norm = float(exact.norm())
    # Weights that survived contribute 0 to the relative change, so the max needs no mask.
    rel = float((diff.abs() / exact.abs().clamp_min(torch.finfo(torch.float32).tiny)).max())
    return {"kind": "rounding", "dtype": str(rounded.dtype).removeprefix("torch."), "values_changed": changed,
            "values_total": exact.numel(), "max_abs": float(diff.abs().max()), "max_rel_change": rel,
            "rel_fro": float(diff.norm()) / max(norm, 1e-30)}


def largest_weight(layer) -> float:
    """An upper bound on ``|dequantize()|`` from the small tensors alone (planning has no codes)."""
    if isinstance(layer, CodebookLinear):
        return float(layer.absmax.abs().max()) * float(layer.code.abs().max()) if layer.absmax.numel() else 0.0
    if not layer.scales.numel():
        return 0.0
    top = (1 << layer.bits) - 1
    reach = torch.maximum(layer.zeros.to(torch.float32), top - layer.zeros.to(torch.float32))
    return float((reach * layer.scales.to(torch.float32).abs()).max())


class DenseFamily(LayerFamily):
    """A linear as ``<module>.weight`` ``[out, in]`` in ``dtype`` (and its bias as the IR holds it)."""

    dtype: str = DEFAULT_DTYPE
    widen_bias = True  # a float32 output widens a 16-bit bias (exact); a 16-bit one keeps it as stored

    @classmethod
    def specs(cls, layer) -> list[TensorSpec]:
        specs = [TensorSpec(f"{layer.name}.weight", DTYPES[cls.dtype], (layer.out_features, layer.in_features))]
        if layer.bias is not None:
            specs.append(TensorSpec(f"{layer.name}.bias", DTYPES[cls.dtype], (layer.out_features,)) if cls.widen_bias
                         else spec_of(f"{layer.name}.bias", layer.bias))
        return specs

    @classmethod
    def encode_measured(cls, layer) -> tuple[dict[str, torch.Tensor], dict | None]:
        """The layer's tensors, and what casting its fp32 products to ``dtype`` changed (None: nothing)."""
        exact = layer.dequantize()
        weight = exact if cls.dtype == "float32" else exact.to(getattr(torch, cls.dtype))
        loss = None if weight is exact else rounding_loss(exact, weight)
        tensors = {f"{layer.name}.weight": weight}
        if layer.bias is not None:
            tensors[f"{layer.name}.bias"] = layer.bias.to(torch.float32) if cls.widen_bias else layer.bias
        return tensors, loss

    @classmethod
    def encode(cls, layer, zero_point_convention: str) -> dict[str, torch.Tensor]:
        return cls.encode_measured(layer)[0]


_FAMILIES: dict[str, type[DenseFamily]] = {DEFAULT_DTYPE: DenseFamily}


def family_for(dtype: str) -> type[DenseFamily]:
    """The dense layout in ``dtype`` (one class per dtype, made once)."""
    if dtype not in _FAMILIES:
        _FAMILIES[dtype] = type(f"Dense{dtype.capitalize()}Family", (DenseFamily,), {"dtype": dtype, "widen_bias": dtype == "float32"})
    return _FAMILIES[dtype]


class DenseTarget(Target):
    name = "dense"
    family = DenseFamily
    zero_point_convention = ZP_V2  # unused: no zero points are written
    keeps_g_idx = True  # dequantize() applies any g_idx
    per_layer_precision = True
    carried_float_dtype = "F32"
    carried_float_reason = "so that the whole model is float32"
    description = "dense safetensors, no quantization_config (llama.cpp's converter, fine-tuning, any quantizer): --dtype float32 (exact), float16 or bfloat16 (rounded, reported)"
    dtype_option = True
    carries_producer_tensors = False
    fix_note = "dequantized: no longer a quantized checkpoint (float32 by default, 8x the bytes of 4-bit codes)"
    # A plain model: what every engine that reads Hugging Face checkpoints runs (llama.cpp through its converter).
    engines = staticmethod(lambda facts: {"transformers": loads("a plain model"), "vllm-cpu": loads(), "vllm-cuda": loads(),
                                          "vllm-gaudi": loads()})
    load_examples = (LoadExample("With transformers (a plain model: no quantization backend):",
                                 'from transformers import AutoModelForCausalLM{tokenizer_import}\n\n'
                                 'model = AutoModelForCausalLM.from_pretrained("{repo}"){tokenizer}'),)
    dtype_choices = tuple(DTYPES)

    @property
    def dtype(self) -> str:
        return self.family.dtype

    @property
    def lossy_encoding(self) -> bool:
        return self.dtype != "float32"

    # The linears of the source's architecture that have a bias (None: unknown, every bias is kept).
    biased: frozenset[str] | None = None

    def configured(self, *, dtype: str) -> "DenseTarget":
        """This target writing ``dtype`` (one of DTYPES)."""
        t = copy.copy(self)
        t.family, t.carried_float_dtype = family_for(dtype), "F32" if dtype == "float32" else None
        return t

    def for_source(self, src) -> "DenseTarget":
        """Quantizers store a bias for every linear (GPTQ's writers, zeros where the model has none); a plain
        model has a slot only where its architecture does. The architecture, built on ``meta``, says where."""
        from ..architecture import meta_model

        try:
            model = meta_model(src.ckpt.config)
        except Exception:  # an architecture transformers cannot build here: keep every bias as it is
            return self
        linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        t = copy.copy(self)
        t.biased = frozenset(name for name, m in linears.items() if m.bias is not None)
        return t

    def prepare(self, layer) -> Prepared:
        """Every layer dequantizes; a product beyond the dtype's range is refused (it would be infinite), and so
        is a non-zero bias where the architecture has none. A zero bias there is dropped: it adds nothing."""
        limit = torch.finfo(getattr(torch, self.dtype)).max
        top = largest_weight(layer)
        if top > limit:
            return Prepared(layer, [], f"dequantized weights reach up to {top:.4g}, beyond {self.dtype}'s largest value {limit:.4g}; "
                                       "use `--dtype float32`")
        if layer.bias is not None and self.biased is not None and layer.name not in self.biased:
            if bool(layer.bias.any()):
                return Prepared(layer, [], "a non-zero bias where the architecture's linear has none: a plain model cannot hold it")
            return Prepared(replace(layer, bias=None), ["zero bias dropped (the architecture's linear has none)"])
        return Prepared(layer, [])

    def encode(self, layer) -> tuple[dict[str, torch.Tensor], dict | None]:
        return self.family.encode_measured(layer)

    def quantization_config(self, summary: ModelQuantSummary) -> None:
        return None  # a dense model: config.json loses its quantization_config

    def output_config(self, config: dict) -> dict:
        """config.json says the dtype the weights are in (transformers 5 reads ``dtype``; older ``torch_dtype``)."""
        config = {**config, "dtype": self.dtype}
        if "torch_dtype" in config:
            config["torch_dtype"] = self.dtype
        return config


def is_dense_checkpoint(path: Path) -> bool:
    """A plain checkpoint (what the dense target writes): safetensors weights and a config.json with no
    quantization_config and no quantization config file of any format beside it."""
    from ..io.checkpoint import QUANT_CONFIG_FILES

    config = path / CONFIG_NAME
    if not config.is_file() or any((path / f).exists() for f in QUANT_CONFIG_FILES):
        return False
    has_weights = (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists()
    return has_weights and "quantization_config" not in read_json(config)
