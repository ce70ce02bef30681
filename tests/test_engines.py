"""inspect's "who can load this": each engine's verdict on the producers' checkpoints as they stand, declared by
the format modules, and the fix planned by the converter. The verdicts that loaders here can prove are proved
against the loaders themselves in test_vllm.py (vLLM CPU) and test_loaders.py; this file checks the table."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from cli_in_process import run_cli

from conftest import fixture_path

import woqconv
from woqconv.engines import ENGINES
from woqconv.formats import TARGETS


def rows(name: str, **kw) -> dict[str, dict]:
    return {row["engine"]: row for row in woqconv.inspect(fixture_path(name), **kw).engines}


def test_every_engine_has_a_row_with_a_reason_or_a_way():
    table = rows("ar-g32-asym-auto_gptq")
    assert list(table) == [e.key for e in ENGINES]
    assert all(row["detail"] for row in table.values() if row["loads"] is False)


def test_asymmetric_gptq_on_vllm_is_refused_with_vllms_words_and_fixed_by_awq():
    table = rows("ar-g32-asym-auto_gptq")
    for engine in ("vllm-cpu", "vllm-cuda"):
        assert table[engine]["loads"] is False and "sym=False" in table[engine]["detail"]
        assert table[engine]["fix"]["to"] == "awq" and table[engine]["fix"]["lossless"]
    assert table["transformers"]["loads"] and table["inc-cpu"]["loads"]
    assert rows("ar-g32-sym-auto_gptq")["vllm-cpu"]["loads"] is True  # vLLM reads no zero points: sym loads


def test_v2_zero_points_are_refused_by_vllm_gaudi_and_inc_and_fixed_by_v1():
    table = rows("ar-g32-asym-auto_round_gptqmodel")
    for engine in ("vllm-gaudi", "inc-cpu", "inc-gaudi"):
        assert table[engine]["loads"] is False and "v1" in table[engine]["detail"], table[engine]
        assert table[engine]["fix"] == {"to": "gptq", "flags": [], "lossless": True, "note": ""}


def test_a_fix_that_is_not_lossless_is_not_offered_as_one():
    # z = 0 in some groups: GPTQ v1 cannot store it, so INC (which reads v1 only) has no lossless fix from gptq;
    # INC's own formats store it as an all-ones field (its modular v1), and are the fix.
    table = rows("ar-zp0-g32-asym-auto_round_gptqmodel")
    fix = table["inc-cpu"]["fix"]
    assert fix is not None and fix["to"] != "gptq" and fix["lossless"], fix


def test_compressed_tensors_asym_in_transformers_states_the_upstream_failure():
    table = rows("llmc-w4a16-asym-g32")
    assert table["transformers"]["loads"] is False and "ignore_mismatched_sizes" in table["transformers"]["detail"]
    assert rows("llmc-w4a16-sym-g128")["transformers"]["loads"] is True
    assert table["vllm-cpu"]["loads"] and not rows("llmc-w8a16-sym-g128")["vllm-cpu"]["loads"]  # the CPU kernel is 4-bit


def test_8_bit_on_gaudi_has_no_fix_but_vllm_cpu_has_a_dense_one():
    table = rows("ar-w8-g32-asym-auto_gptq")
    assert table["inc-gaudi"]["loads"] is False and table["inc-gaudi"]["fix"] is None
    fix = table["vllm-cpu"]["fix"]
    assert fix["to"] == "dense" and "no longer a quantized checkpoint" in fix["note"]


def test_gaudi_targets_are_offered_with_their_flag_when_bf16_is_the_only_loss():
    table = rows("inc-default-rtn-g32-asym")
    assert table["transformers"]["loads"] is False and table["inc-cpu"]["loads"] and table["inc-gaudi"]["loads"]
    assert "repacks" in table["inc-gaudi"]["detail"]


def test_no_fixes_gives_the_verdicts_alone():
    planned, verdicts = rows("ar-g32-asym-auto_gptq"), rows("ar-g32-asym-auto_gptq", fixes=False)
    for engine, row in verdicts.items():
        assert row["fix"] is None and {k: v for k, v in row.items() if k != "fix"} == {k: v for k, v in planned[engine].items() if k != "fix"}


def test_cli_table_and_json():
    r = run_cli("inspect", fixture_path("ar-g32-asym-auto_gptq"), "--format", "json")
    assert r.returncode == 0, r.stderr
    table = {row["engine"]: row for row in json.loads(r.stdout)["engines"]}
    assert table["vllm-cpu"]["fix"]["to"] == "awq"
    r = run_cli("inspect", fixture_path("ar-g32-asym-auto_gptq"))
    assert r.returncode == 0 and "who can load this" in r.stdout and "--to awq (lossless)" in r.stdout, r.stdout


def test_inspect_names_no_format():
    """The table's code asks the format modules; no format's name appears in it (the engines' own words aside)."""
    root = Path(woqconv.__file__).parent
    # (OpenVINO is an engine as well as a format: its engine key is allowed.)
    names = (set(TARGETS) | {"gptq_v2", "bnb-nf4", "bnb-fp4", "inc-nf4", "inc-fp4", "inc-nonopt"}) - {e.key for e in ENGINES}
    for module in ("engines.py", "inspect_report.py", "inspection.py"):
        tree = ast.parse((root / module).read_text())
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not strings & names, (module, strings & names)


@pytest.mark.parametrize("name", ["bnb-nf4-fp16", "ov-optimum-llama-int4-sym-g64", "inc-default-nf4-g64", "inc-nonopt-dim1-int32-g32-asym"])
def test_formats_woqconv_only_reads_declare_their_engines(name):
    table = rows(name, fixes=False)
    assert any(row["loads"] for row in table.values()), table
