"""Fuzzing (issue 6, item 4): safetensors headers and bytes, sharded indexes, quantization configs.

The one property: reading (and converting) whatever hypothesis makes either works or raises
WoqconvError, the error the CLI prints as one line with exit 2. Nothing else may escape, and the
input files are never changed.

CI runs a few hundred cases (derandomized, so the suite is repeatable). ``WOQCONV_FUZZ_SCALE=N``
multiplies every test's case count and draws fresh random cases; ``scripts/fuzz_long.py`` runs that
long campaign and totals the cases (see fixtures/README.md, "Fuzzing").
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from conftest import fixture_path
from corpus import snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import woqconv
from woqconv.errors import WoqconvError
from woqconv.formats import TARGETS
from woqconv.io.safetensors_io import DTYPES, ITEMSIZE, SafetensorsFile

pytestmark = pytest.mark.slow  # the quick tier (-m "not slow") leaves this module out

SCALE = int(os.environ.get("WOQCONV_FUZZ_SCALE", "0"))


def fuzz(ci_examples: int):
    long_run = SCALE > 0
    return settings(
        max_examples=ci_examples * SCALE if long_run else ci_examples,
        deadline=None,
        derandomize=not long_run,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="woqconv-fuzz-") as tmp:
        yield Path(tmp)


def only_clean_errors(fn, *args, **kwargs):
    """Run fn; a WoqconvError is a clean refusal, anything else fails the test (hypothesis shrinks it)."""
    try:
        result = fn(*args, **kwargs)
    except WoqconvError as e:
        assert e.one_line() and "\n" not in e.one_line()
        event(f"{fn.__name__}: refused")
        return None
    event(f"{fn.__name__}: ok")
    return result


# -- safetensors headers ----------------------------------------------------------------------

DTYPE_NAMES = sorted(ITEMSIZE) + ["Q4_0", "", "f32", "I128"]
ints = st.one_of(st.integers(-3, 40), st.sampled_from([2**31, 2**32, 2**53, 2**63, 2**64 - 1, 10**30]), st.integers())
json_scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=True), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@st.composite
def headers(draw):
    """A header that is often valid, often nearly valid: tensors tiling a buffer, then perturbed."""
    n = draw(st.integers(0, 5))
    header, pos = {}, 0
    for i in range(n):
        dtype = draw(st.sampled_from(sorted(ITEMSIZE)))
        shape = draw(st.lists(st.integers(0, 6), max_size=3))
        nbytes = ITEMSIZE[dtype]
        for s in shape:
            nbytes *= s
        header[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    data_len = pos + draw(st.sampled_from([0, 0, 0, 1, -1]))
    for _ in range(draw(st.integers(0, 3))):
        if not header:
            break
        name = draw(st.sampled_from(sorted(header)))
        if not isinstance(header[name], dict):
            continue
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry", "extra"]))
        if field == "dtype":
            header[name]["dtype"] = draw(st.sampled_from(DTYPE_NAMES) | json_values)
        elif field == "shape":
            header[name]["shape"] = draw(st.lists(ints, max_size=4) | json_values)
        elif field == "data_offsets":
            header[name]["data_offsets"] = draw(st.lists(ints, min_size=0, max_size=3) | json_values)
        elif field == "entry":
            header[name] = draw(json_values)
        else:
            header[name][draw(st.text(max_size=4))] = draw(json_values)
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5) | json_values, max_size=3))
    return header, max(data_len, 0)


@fuzz(150)
@given(case=headers(), length_delta=st.sampled_from([0, 0, 0, 0, 1, -1, 7, 2**40, 2**63]))
def test_fuzzed_headers_parse_or_refuse(case, length_delta, workdir):
    header, data_len = case
    path = workdir / "h.safetensors"
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", (len(raw) + length_delta) % 2**64) + raw + bytes(range(256)) * (data_len // 256) + bytes(data_len % 256))
    f = only_clean_errors(SafetensorsFile, path)
    if f is not None:
        with f:
            for name, info in f.tensors.items():
                if info.dtype in DTYPES:
                    assert f.read(name).numel() == info.numel


@fuzz(150)
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=16)), max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_mutated_real_weights_read_or_refuse(edits, cut, workdir):
    """Byte edits and truncation of a real checkpoint's file, biased towards the header; then read
    everything through the format layer (inspect) as the converter would."""
    src = workdir / "mutated"
    if not src.exists():
        shutil.copytree(fixture_path("ar-g32-asym-auto_gptq"), src)
        (src / "pristine.bin").write_bytes((src / "model.safetensors").read_bytes())
    blob = bytearray((src / "pristine.bin").read_bytes())
    head = 8 + struct.unpack("<Q", blob[:8])[0]
    for pos, chunk in edits:
        at = pos % head if pos % 2 else pos % len(blob)
        blob[at : at + len(chunk)] = chunk
    if cut is not None:
        blob = blob[: cut % (len(blob) + 1)]
    (src / "model.safetensors").write_bytes(bytes(blob))
    f = only_clean_errors(SafetensorsFile, src / "model.safetensors")
    if f is not None:
        with f:
            for name, info in f.tensors.items():
                if info.dtype in DTYPES:
                    f.read(name)
        only_clean_errors(woqconv.inspect, src)


# -- sharded indexes --------------------------------------------------------------------------

@st.composite
def weight_maps(draw, names: list[str], shards: list[str]):
    shard_names = st.sampled_from(shards) | st.sampled_from(
        ["", ".", "..", "../x.safetensors", "/etc/passwd", "config.json", "missing.safetensors", "sub/../" + shards[0], shards[0] + "\0"]
    ) | st.text(max_size=12)
    wm = {n: draw(st.sampled_from(shards)) for n in names}
    for _ in range(draw(st.integers(0, 3))):
        choice = draw(st.integers(0, 2))
        if choice == 0 and wm:
            wm[draw(st.sampled_from(sorted(wm)))] = draw(shard_names | json_values)
        elif choice == 1 and wm:
            del wm[draw(st.sampled_from(sorted(wm)))]
        else:
            wm[draw(st.text(max_size=10))] = draw(shard_names)
    index = {"metadata": draw(json_values), "weight_map": wm}
    return draw(st.sampled_from([index, index, index, {"weight_map": draw(json_values)}, draw(json_values)]))


def _sharded_base(workdir: Path) -> tuple[Path, list[str], list[str]]:
    src = workdir / "sharded"
    if not src.exists():
        from corpus import shard

        shutil.copytree(fixture_path("ar-g32-sym-auto_gptq"), src)
        shard(src)
        shutil.copy(src / "model.safetensors.index.json", workdir / "pristine-index.json")
    index = json.loads((workdir / "pristine-index.json").read_text())
    return src, sorted(index["weight_map"]), sorted(set(index["weight_map"].values()))


@fuzz(60)
@given(data=st.data())
def test_fuzzed_index_opens_or_refuses(data, workdir):
    src, names, shards = _sharded_base(workdir)
    index = data.draw(weight_maps(names, shards))
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    before = {s: (src / s).stat().st_mtime_ns for s in shards}
    only_clean_errors(woqconv.inspect, src)
    assert {s: (src / s).stat().st_mtime_ns for s in shards} == before


# -- quantization configs ---------------------------------------------------------------------

QC_KEYS = {
    "quant_method": st.sampled_from(["gptq", "awq", "auto-round", "intel/auto-round", "hqq", "GPTQ", ""]),
    "bits": st.sampled_from([2, 3, 4, 5, 8, 0, 1, 16, -4]),
    "group_size": st.sampled_from([32, 64, 128, -1, 0, -2, 48, 100, 2**40]),
    "sym": st.booleans(),
    "zero_point": st.booleans(),
    "desc_act": st.booleans(),
    "checkpoint_format": st.sampled_from(["gptq", "gptq_v2", "marlin", "bitblas"]),
    "format": st.sampled_from(["gptq", "gptq_v2", "gemm", "gemv"]),
    "version": st.sampled_from(["gemm", "gemv", "GEMM", "exllama"]),
    "packing_format": st.sampled_from(["auto_round:auto_gptq", "auto_round:auto_awq", "auto_round", "auto_round:gptqmodel", "auto_round:fp8"]),
    "data_type": st.sampled_from(["int", "int_sym", "nv_fp", "mx_fp"]),
    "pack_dtype": st.sampled_from(["int32", "int16"]),
    "dynamic": st.sampled_from([None, {}, {"-:.*": {}}]),
    "meta": st.sampled_from([None, {}, {"quantizer": ["gptqmodel:4.0"]}, {"quantizer": "auto_gptq"}, {"quantizer": [1, None]}]),
    "provider": st.sampled_from(["auto-round", ""]),
}


@st.composite
def quant_configs(draw, base: dict):
    qc = dict(base)
    for key in draw(st.lists(st.sampled_from(sorted(QC_KEYS)), max_size=4, unique=True)):
        if draw(st.integers(0, 4)) == 0:
            qc.pop(key, None)
        else:
            qc[key] = draw(QC_KEYS[key] | json_values) if draw(st.integers(0, 3)) == 0 else draw(QC_KEYS[key])
    return qc


CONFIG_BASES = ["ar-g32-asym-auto_gptq", "ar-g32-sym-auto_awq", "ar-w3-g32-asym-auto_round", "ar-g32-asym-auto_round_gptqmodel"]


@fuzz(100)
@given(data=st.data(), base=st.sampled_from(CONFIG_BASES), target=st.sampled_from(sorted(TARGETS)))
def test_fuzzed_config_inspects_and_converts_or_refuses(data, base, target, workdir):
    src = workdir / base
    if not src.exists():
        shutil.copytree(fixture_path(base), src)
        (src / "quantization_config.json").unlink(missing_ok=True)
    config = json.loads((fixture_path(base) / "config.json").read_text())
    config["quantization_config"] = data.draw(quant_configs(config["quantization_config"]))
    (src / "config.json").write_text(json.dumps(config))
    before = snapshot(src)
    out = workdir / "out"
    only_clean_errors(woqconv.inspect, src)
    try:
        only_clean_errors(woqconv.convert, src, out, to=target, allow_bf16=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert snapshot(src) == before
    assert not [p for p in workdir.iterdir() if "woqconv" in p.name]


INC_ENTRY_KEYS = {
    "bits": st.sampled_from([2, 4, 8, 3, 5, 0, 16]),
    "group_size": st.sampled_from([32, -1, 0, 64, 128, 48]),
    "use_sym": st.booleans(),
    "dtype": st.sampled_from(["int", "int4", "nf4", "fp8", "uint4"]),
    "act_order": st.booleans(),
}


@fuzz(40)
@given(data=st.data())
def test_fuzzed_inc_qconfig_inspects_or_refuses(data, workdir):
    src = workdir / "inc"
    if not src.exists():
        shutil.copytree(fixture_path("inc-default-rtn-g32-asym"), src)
    qconfig = json.loads((fixture_path("inc-default-rtn-g32-asym") / "qconfig.json").read_text())
    for _ in range(data.draw(st.integers(1, 4))):
        key = data.draw(st.sampled_from(sorted(qconfig)))
        how = data.draw(st.integers(0, 5))
        if how == 0:
            qconfig[key] = data.draw(json_values)
        elif how == 1:
            qconfig[data.draw(st.text(max_size=20))] = qconfig.pop(key)
        elif isinstance(qconfig.get(key), dict) and qconfig[key] and isinstance(next(iter(qconfig[key].values())), dict):
            entry = next(iter(qconfig[key].values()))
            field = data.draw(st.sampled_from(sorted(INC_ENTRY_KEYS)))
            entry[field] = data.draw(INC_ENTRY_KEYS[field] | json_values) if how == 2 else data.draw(INC_ENTRY_KEYS[field])
    (src / "qconfig.json").write_text(json.dumps(qconfig))
    only_clean_errors(woqconv.inspect, src)
