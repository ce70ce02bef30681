"""compressed-tensors ``pack-quantized``: woqconv's packing, scheme matching, reader and writer against
compressed-tensors' own code, and its producers' real files (llm-compressor, AutoRound's ``llm_compressor``
export, compressed-tensors' AutoAWQ converter). Conversions to and from every other target are in
test_convert_fixtures.py's matrix."""

from __future__ import annotations

import json

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from compressed_tensors.quantization import QuantizationConfig
from safetensors.torch import load_file

from conftest import MANIFEST, fixture_path

import woqconv
from woqconv.formats.compressed_tensors import scheme_of
from woqconv.kernels import packing

CT_FIXTURES = sorted(n for n, e in MANIFEST.items() if e.get("family") == "compressed-tensors")
AWQ_FIXTURES = sorted(n for n, e in MANIFEST.items() if e.get("export") == "auto_awq" and not e.get("layer_config"))  # AutoAWQ configs


# -- packing: the dense stream, as compressed-tensors packs it --------------------------------------------

@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [32, 96, 100, 7])
def test_padded_stream_is_compressed_tensors_packing(bits, count):
    g = torch.Generator().manual_seed(bits * 1000 + count)
    unsigned = torch.randint(0, 1 << bits, (5, count), generator=g, dtype=torch.int32)
    signed = (unsigned - (1 << (bits - 1))).to(torch.int8)
    theirs = pack_to_int32(signed, bits)
    ours = packing.pack_padded(unsigned.to(torch.uint8), bits)
    assert ours.dtype == torch.int32 and torch.equal(ours, theirs)
    assert torch.equal(packing.unpack_padded(theirs, bits, count).to(torch.int32), unsigned)
    assert torch.equal(unpack_from_int32(ours, bits, torch.Size((5, count))).to(torch.int32) + (1 << (bits - 1)), unsigned)
    # zero points are packed along out_features: the same stream on the transpose
    assert torch.equal(packing.pack_padded(unsigned.to(torch.uint8), bits).T, pack_to_int32(signed.T.contiguous(), bits, packed_dim=0))


def test_padded_stream_refuses_a_wrong_word_count():
    with pytest.raises(ValueError, match="do not hold"):
        packing.unpack_padded(torch.zeros((2, 3), dtype=torch.int32), 4, 32)


# -- which config group a layer belongs to ------------------------------------------------------------

def _tiny_llama():
    from transformers import AutoConfig, AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(fixture_path("base-fp16")))


GROUPINGS = {
    "one class target": ({"a": ["Linear"]}, ["lm_head"]),
    "regex beats class": ({"a": ["Linear"], "b": ["re:.*down_proj"]}, ["lm_head"]),
    "exact beats regex": ({"a": ["re:.*self_attn.*"], "b": ["model.layers.1.self_attn.q_proj"], "c": ["Linear"]}, ["re:.*lm_head"]),
    "later copy of a target wins": ({"a": ["re:.*mlp.*", "Linear"], "b": ["re:.*mlp.*"]}, ["lm_head"]),
    "ignore by regex": ({"a": ["Linear"]}, ["re:.*layers.0.*", "lm_head"]),
}


@pytest.mark.parametrize("case", sorted(GROUPINGS))
def test_scheme_of_agrees_with_compressed_tensors_own_matching(case):
    from compressed_tensors.quantization import apply_quantization_config

    targets, ignore = GROUPINGS[case]
    weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32}
    groups = {name: {"targets": t, "weights": {**weights, "num_bits": 4 + k}} for k, (name, t) in enumerate(targets.items())}
    config = QuantizationConfig.model_validate({"config_groups": groups, "ignore": ignore, "quantization_status": "frozen"})
    model = _tiny_llama()
    apply_quantization_config(model, config, show_progress=False)
    bits_to_group = {4 + k: name for k, name in enumerate(targets)}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            scheme = getattr(module, "quantization_scheme", None)
            theirs = bits_to_group[scheme.weights.num_bits] if scheme is not None else None
            assert scheme_of(name, groups, ignore) == theirs, (case, name)


# -- reading the producers' files ------------------------------------------------------------------------

def _decompressed(path, config: QuantizationConfig, groups_of: dict[str, str]) -> dict[str, torch.Tensor]:
    """compressed-tensors' own decompression of every quantized linear of a checkpoint."""
    tensors = load_file(path / "model.safetensors")
    out = {}
    for prefix, group in groups_of.items():
        state = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(prefix + ".") and k.count(".") == prefix.count(".") + 1}
        out[prefix] = PackedQuantizationCompressor.decompress(state, config.config_groups[group])["weight"]
    return out


def test_every_producer_is_here():
    producers = {MANIFEST[n]["producer"].split()[0] for n in CT_FIXTURES}
    assert {"llm-compressor", "auto-round", "compressed-tensors"} <= producers, producers
    assert {MANIFEST[n]["sym"] for n in CT_FIXTURES} == {True, False}


@pytest.mark.parametrize("name", CT_FIXTURES)
def test_reads_bit_exactly_as_compressed_tensors_decompresses(name):
    path = fixture_path(name)
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(qc)
    with woqconv.open_checkpoint(path) as ckpt:
        assert ckpt.format.name == "compressed-tensors"
        layers = {layer.name: layer for layer in ckpt.iter_layers()}
    groups_of = {p: scheme_of(p, qc["config_groups"], qc.get("ignore") or []) for p in layers}
    theirs = _decompressed(path, config, groups_of)
    assert sorted(theirs) == sorted(layers) and len(layers) == 14
    for prefix, layer in layers.items():
        # One rounding either way: (q - z) * s is exact in fp32, compressed-tensors computes it in the scale dtype.
        ours = layer.dequantize().to(layer.scales.dtype)
        assert ours.dtype == theirs[prefix].dtype and torch.equal(ours, theirs[prefix]), prefix


# -- writing: what compressed-tensors' own converter and AutoRound's export write ---------------------------

@pytest.mark.parametrize("name", AWQ_FIXTURES)
def test_awq_to_compressed_tensors_equals_compressed_tensors_own_converter(name, tmp_path):
    from compressed_tensors.entrypoints.convert import convert_checkpoint
    from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter

    src = fixture_path(name)
    convert_checkpoint(src, tmp_path / "theirs", converter=AutoAWQConverter.from_pretrained(str(src)), max_workers=1, device="cpu")
    woqconv.convert(src, tmp_path / "ours", to="compressed-tensors")
    theirs, ours = load_file(tmp_path / "theirs" / "model.safetensors"), load_file(tmp_path / "ours" / "model.safetensors")
    assert sorted(theirs) == sorted(ours)
    for t, v in theirs.items():
        assert v.dtype == ours[t].dtype and torch.equal(v, ours[t]), t


def _same_run_exports(export: str) -> list[tuple[str, str]]:
    pairs = []
    for ct in CT_FIXTURES:
        run = MANIFEST[ct].get("run")
        if MANIFEST[ct]["producer"].startswith("auto-round"):
            pairs += [(n, ct) for n, e in sorted(MANIFEST.items()) if e.get("run") == run and e.get("export") == export
                      and e.get("run_exact", True) and not n.startswith("mislabelled")]
    return pairs


@pytest.mark.parametrize("src,export", _same_run_exports("auto_gptq") + _same_run_exports("auto_awq"))
def test_gptq_and_awq_to_compressed_tensors_equal_autorounds_own_export(src, export, tmp_path):
    woqconv.convert(fixture_path(src), tmp_path / "out", to="compressed-tensors")
    theirs, ours = load_file(fixture_path(export) / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    quantized = [t for t in theirs if t.rsplit(".", 1)[1].startswith("weight_")]
    assert quantized
    for t in quantized:
        assert theirs[t].dtype == ours[t].dtype and torch.equal(theirs[t], ours[t]), t


def test_written_config_is_compressed_tensors_own_schema_and_matching(tmp_path):
    """Mixed precision: one config group per precision, each naming its layers; compressed-tensors' own
    validation accepts the config and its own matching gives every layer the bits it holds."""
    from compressed_tensors.quantization import apply_quantization_config

    src = fixture_path("ar-mixed-g32-asym-auto_round_gptqmodel")
    woqconv.convert(src, tmp_path / "out", to="compressed-tensors")
    qc = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(qc)
    assert len(config.config_groups) > 1 and qc["ignore"] == ["lm_head"]
    with woqconv.open_checkpoint(tmp_path / "out") as ckpt:
        # (bits, group size), the group size None for one group per row, as compressed-tensors' channel strategy says
        held = {layer.name: (layer.bits, layer.group_size if layer.group_size < layer.in_features else None)
                for layer in ckpt.iter_layers()}
    assert len(set(held.values())) > 1
    model = _tiny_llama()
    config = QuantizationConfig.model_validate({**qc, "quantization_status": "frozen"})
    apply_quantization_config(model, config, show_progress=False)
    for name, module in model.named_modules():
        if name in held:
            w = module.quantization_scheme.weights
            assert (w.num_bits, w.group_size) == held[name], name
    assert getattr(model.lm_head, "quantization_scheme", None) is None
