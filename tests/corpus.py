"""The bad-input corpus: damaged copies of real fixtures, made on demand in a temporary directory.

Each case is a function that damages a fresh copy of a fixture (``src``) and returns the file the
error must name. ``outside`` is a sibling directory standing for "anywhere else on the disk": escape
attempts point into it, and it is hashed with the input, so a converter that touched it is caught.
Nothing here is committed as binary data; every case is rebuilt from ``fixtures/`` by the tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from conftest import fixture_path
from safetensors.torch import load_file, save_file

GPTQ = "ar-g32-asym-auto_gptq"
AWQ = "ar-g32-asym-auto_awq"
INC = "inc-default-rtn-g32-asym"
LAYER = "model.layers.0.self_attn.q_proj"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class Case:
    fixture: str
    damage: Callable[[Path, Path], str]  # (src, outside) -> the file (relative to src, "" = src itself) the error must name
    problem: str  # a fragment of the one-line problem, lower case


# -- raw safetensors surgery ------------------------------------------------------------------

def read_raw(path: Path) -> tuple[dict, bytes]:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def write_raw(path: Path, header: dict | bytes, data: bytes, *, length: int | None = None) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


def edit_header(fn: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(src: Path) -> None:
        header, data = read_raw(src / WEIGHTS)
        fn(header)
        write_raw(src / WEIGHTS, header, data)

    return apply


def truncate(keep: Callable[[int], int]) -> Callable[[Path], None]:
    def apply(src: Path) -> None:
        blob = (src / WEIGHTS).read_bytes()
        (src / WEIGHTS).write_bytes(blob[: keep(len(blob))])

    return apply


def header_bytes(raw: bytes) -> Callable[[Path], None]:
    def apply(src: Path) -> None:
        _, data = read_raw(src / WEIGHTS)
        write_raw(src / WEIGHTS, raw, data)

    return apply


def set_length(value: int) -> Callable[[Path], None]:
    def apply(src: Path) -> None:
        blob = bytearray((src / WEIGHTS).read_bytes())
        blob[:8] = struct.pack("<Q", value)
        (src / WEIGHTS).write_bytes(bytes(blob))

    return apply


def edit_tensors(fn: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(src: Path) -> None:
        tensors = load_file(src / WEIGHTS)
        fn(tensors)
        save_file(tensors, src / WEIGHTS, metadata={"format": "pt"})

    return apply


def edit_config(fn: Callable[[dict], object], name: str = "config.json") -> Callable[[Path], None]:
    """Edit the quantization_config in config.json (and its copy in quantization_config.json)."""

    def apply(src: Path) -> None:
        for file in (name, "quantization_config.json"):
            if not (src / file).exists():
                continue
            data = json.loads((src / file).read_text())
            qc = data["quantization_config"] if file == "config.json" else data
            fn(qc)
            (src / file).write_text(json.dumps(data))

    return apply


def entry(name: str, **changes) -> Callable[[dict], None]:
    return lambda h: h[name].update(changes)


def shard(src: Path) -> list[str]:
    """Split model.safetensors into two shards with an index, as save_pretrained does."""
    tensors = load_file(src / WEIGHTS)
    names = sorted(tensors)
    half = len(names) // 2
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for file, part in zip(files, (names[:half], names[half:])):
        save_file({n: tensors[n] for n in part}, src / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    (src / WEIGHTS).unlink()
    write_index(src, weight_map)
    return files


def write_index(src: Path, weight_map) -> None:
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def index_edit(fn: Callable[[Path, Path, dict, list[str]], object], names: str = "model.safetensors.index.json") -> Callable[[Path, Path], str]:
    def apply(src: Path, outside: Path) -> str:
        files = shard(src)
        index = json.loads((src / "model.safetensors.index.json").read_text())
        fn(src, outside, index["weight_map"], files)
        write_index(src, index["weight_map"])
        return names

    return apply


def _in_both(src: Path, outside: Path, wm: dict, files: list[str]) -> None:
    """The same tensor stored in both shards (the index names one of them)."""
    first = load_file(src / files[0])
    second = load_file(src / files[1])
    name = sorted(first)[0]
    second[name] = first[name]
    save_file(second, src / files[1], metadata={"format": "pt"})


def _escape(src: Path, outside: Path, wm: dict, files: list[str], how: str) -> None:
    shutil.copy(src / files[1], outside / files[1])
    target = f"../outside/{files[1]}" if how == "dotdot" else str(outside / files[1])
    for k, v in wm.items():
        if v == files[1]:
            wm[k] = target
    (src / files[1]).unlink()


def _index_not_json(src: Path, outside: Path) -> str:
    shard(src)
    (src / "model.safetensors.index.json").write_text("{")
    return "model.safetensors.index.json"


def _symlinked_shard(src: Path, outside: Path, wm: dict, files: list[str]) -> None:
    shutil.move(src / files[1], outside / files[1])
    (src / files[1]).symlink_to(outside / files[1])


def _rename_shard(new: str) -> Callable:
    def apply(src: Path, outside: Path, wm: dict, files: list[str]) -> None:
        for k, v in wm.items():
            if v == files[1]:
                wm[k] = new

    return apply


# -- symlinks, special files ------------------------------------------------------------------

def symlink_out(rel: str) -> Callable[[Path, Path], str]:
    """Move a valid file out of the checkpoint and leave a symlink to it: the bytes are fine, the place is not."""

    def apply(src: Path, outside: Path) -> str:
        shutil.move(src / rel, outside / rel)
        (src / rel).symlink_to(outside / rel)
        return rel

    return apply


def _symlinked_dir(src: Path, outside: Path) -> str:
    (outside / "extra").mkdir()
    (outside / "extra" / "secret.txt").write_text("not part of the checkpoint")
    (src / "extra").symlink_to(outside / "extra", target_is_directory=True)
    return "extra"


def _fifo(src: Path, outside: Path) -> str:
    (src / WEIGHTS).unlink()
    os.mkfifo(src / WEIGHTS)
    return WEIGHTS


def _config_fifo(src: Path, outside: Path) -> str:
    (src / "config.json").unlink()
    os.mkfifo(src / "config.json")
    return "config.json"


def _symlink_loop(src: Path, outside: Path) -> str:
    (src / "loop").symlink_to(src / "loop")
    return "loop"


def _huge_config(src: Path, outside: Path) -> str:
    with open(src / "config.json", "r+b") as f:
        f.truncate(65 * 1024 * 1024)  # sparse: costs no disk
    return "config.json"


def _weights_dir(src: Path, outside: Path) -> str:
    (src / WEIGHTS).unlink()
    (src / WEIGHTS).mkdir()
    return WEIGHTS


# -- pickles ----------------------------------------------------------------------------------

class NotATensor:
    """Any class: torch's weights_only unpickler must refuse to build it."""


def _torch_save_extra(value) -> Callable[[Path, Path], str]:
    def apply(src: Path, outside: Path) -> str:
        state = torch.load(src / "quantized_weight.pt", weights_only=True)
        state["payload"] = value
        torch.save(state, src / "quantized_weight.pt")
        return "quantized_weight.pt"

    return apply


class _Exploit:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _code_running_pickle(src: Path, outside: Path) -> str:
    """A classic hostile pickle: unpickling it would create a marker file through os.system."""
    exploit = _Exploit()
    exploit.marker = str(outside / "PWNED")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(exploit, protocol=2))
        z.writestr("archive/version", "3\n")
    (src / "quantized_weight.pt").write_bytes(buf.getvalue())
    return "quantized_weight.pt"


def _storage_bomb(src: Path, outside: Path) -> str:
    """A torch.save archive whose pickle declares a 4 GiB storage backed by 16 bytes: no allocation, one line."""
    buf = io.BytesIO()
    torch.save({"a": torch.zeros(4)}, buf)
    with zipfile.ZipFile(buf) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    key = next(n for n in entries if n.endswith("data.pkl"))
    big = b"J" + struct.pack("<i", 2**30)  # BININT 2^30 instead of BININT1 4: the storage's numel, then the size
    entries[key] = entries[key].replace(b"K\x04t", big + b"t", 1).replace(b"K\x04\x85", big + b"\x85", 1)
    with zipfile.ZipFile(src / "quantized_weight.pt", "w", zipfile.ZIP_STORED) as out:
        for name, data in entries.items():
            out.writestr(name, data)
    return "quantized_weight.pt"


def _legacy_pickle(src: Path, outside: Path) -> str:
    (src / "quantized_weight.pt").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    return "quantized_weight.pt"


def _damaged_zip(src: Path, outside: Path) -> str:
    """Cut off the end, where a zip keeps its directory (damage inside stored tensor data is just other numbers)."""
    blob = (src / "quantized_weight.pt").read_bytes()
    (src / "quantized_weight.pt").write_bytes(blob[: len(blob) * 2 // 3])
    return "quantized_weight.pt"


def _pickle_bin_only(src: Path, outside: Path) -> str:
    """A GPTQ checkpoint whose weights are only a pytorch_model.bin (with a code-running pickle)."""
    (src / WEIGHTS).unlink()
    exploit = _Exploit()
    exploit.marker = str(outside / "PWNED")
    (src / "pytorch_model.bin").write_bytes(pickle.dumps(exploit, protocol=2))
    return ""


def simple(fn: Callable[[Path], object], file: str) -> Callable[[Path, Path], str]:
    def apply(src: Path, outside: Path) -> str:
        fn(src)
        return file

    return apply


def _scale(value: float) -> Callable[[dict], None]:
    def apply(t: dict) -> None:
        t[f"{LAYER}.scales"] = t[f"{LAYER}.scales"].clone()
        t[f"{LAYER}.scales"][1, 5] = value

    return apply


def _set(name: str, make: Callable[[dict], torch.Tensor]) -> Callable[[dict], None]:
    return lambda t: t.__setitem__(name, make(t))


def _zero_size_layer(t: dict) -> None:
    t[f"{LAYER}.qweight"] = torch.zeros(0, 128, dtype=torch.int32)
    t[f"{LAYER}.qzeros"] = torch.zeros(0, 16, dtype=torch.int32)
    t[f"{LAYER}.scales"] = torch.zeros(0, 128, dtype=torch.float16)
    t[f"{LAYER}.g_idx"] = torch.zeros(0, dtype=torch.int32)


W, C, Q = WEIGHTS, "config.json", "qconfig.json"
Q_ = f"{LAYER}.qweight"


def _qc(**kv) -> Callable[[dict], None]:
    return lambda qc: qc.update(kv)


def _drop(key: str) -> Callable[[dict], None]:
    return lambda qc: qc.pop(key)


def _config_text(text: str, name: str = C) -> Callable[[Path, Path], str]:
    def apply(src: Path, outside: Path) -> str:
        (src / name).write_text(text)
        return name

    return apply


def _inc_qconfig(fn: Callable[[dict], None]) -> Callable[[Path, Path], str]:
    """Edit every layer entry of INC's qconfig.json."""

    def apply(src: Path, outside: Path) -> str:
        data = json.loads((src / Q).read_text())
        for value in data.values():
            if isinstance(value, dict):
                for algo in value.values():
                    if isinstance(algo, dict):
                        fn(algo)
        (src / Q).write_text(json.dumps(data))
        return Q

    return apply


CASES: dict[str, Case] = {
    # safetensors container
    "empty weights file": Case(GPTQ, simple(truncate(lambda n: 0), W), "too short"),
    "truncated in the length prefix": Case(GPTQ, simple(truncate(lambda n: 5), W), "too short"),
    "truncated in the header": Case(GPTQ, simple(truncate(lambda n: 1000), W), "header length"),
    "truncated in the data": Case(GPTQ, simple(truncate(lambda n: n - 100), W), "data_offsets"),
    "header length beyond the file": Case(GPTQ, simple(lambda s: set_length((s / W).stat().st_size)(s), W), "runs past the end"),
    "header length 2^63": Case(GPTQ, simple(set_length(2**63), W), "header length"),
    "header length 2^64-1": Case(GPTQ, simple(set_length(2**64 - 1), W), "header length"),
    "header not JSON": Case(GPTQ, simple(header_bytes(b"{not json"), W), "not valid json"),
    "header not UTF-8": Case(GPTQ, simple(header_bytes(b'{"\xff\xfe": 1}'), W), "not valid json"),
    "header a JSON list": Case(GPTQ, simple(header_bytes(b"[1, 2, 3]"), W), "not a json object"),
    "header nested 100000 deep": Case(GPTQ, simple(header_bytes(b"[" * 100000 + b"]" * 100000), W), "json"),
    "header with a 5000-digit number": Case(GPTQ, simple(header_bytes(b'{"x": ' + b"9" * 5000 + b"}"), W), "json"),
    "header names a tensor twice": Case(
        GPTQ,
        simple(lambda s: header_bytes(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}')(s), W),
        "twice",
    ),
    "__metadata__ not strings": Case(GPTQ, simple(edit_header(lambda h: h.__setitem__("__metadata__", {"format": 1})), W), "__metadata__"),
    "header entry not an object": Case(GPTQ, simple(edit_header(lambda h: h.__setitem__(Q_, [1, 2])), W), "not an object"),
    "unknown dtype": Case(GPTQ, simple(edit_header(entry(Q_, dtype="Q4_0")), W), "unknown dtype"),
    "dtype a list": Case(GPTQ, simple(edit_header(entry(Q_, dtype=["I32"])), W), "unknown dtype"),
    "negative shape": Case(GPTQ, simple(edit_header(entry(Q_, shape=[-16, -128])), W), "invalid shape"),
    "float shape": Case(GPTQ, simple(edit_header(entry(Q_, shape=[16.0, 128])), W), "invalid shape"),
    "absurd shape": Case(GPTQ, simple(edit_header(entry(Q_, shape=[2**62, 2**62])), W), "needs"),
    "shape disagrees with bytes": Case(GPTQ, simple(edit_header(entry(Q_, shape=[16, 64])), W), "needs"),
    "dtype disagrees with bytes": Case(GPTQ, simple(edit_header(entry(Q_, dtype="I16")), W), "needs"),
    "offsets out of range": Case(GPTQ, simple(edit_header(lambda h: h[Q_]["data_offsets"].__setitem__(1, 10**12)), W), "outside the data buffer"),
    "offsets reversed": Case(GPTQ, simple(edit_header(lambda h: h[Q_].__setitem__("data_offsets", h[Q_]["data_offsets"][::-1])), W), "data_offsets"),
    "offsets not a pair": Case(GPTQ, simple(edit_header(entry(Q_, data_offsets=[0, 1, 2])), W), "data_offsets"),
    "offsets as strings": Case(GPTQ, simple(edit_header(entry(Q_, data_offsets=["0", "8192"])), W), "data_offsets"),
    "offsets overlapping": Case(
        GPTQ, simple(edit_header(lambda h: h[f"{LAYER}.qzeros"].update(data_offsets=h[f"{LAYER}.g_idx"]["data_offsets"], shape=[4, 32], dtype="I32")), W), "data_offsets",
    ),
    "trailing bytes not covered": Case(GPTQ, simple(lambda s: (s / W).write_bytes((s / W).read_bytes() + b"\0" * 64), W), "not covered"),
    # sharded checkpoints and their index
    "index names a missing shard": Case(GPTQ, index_edit(_rename_shard("model-00003-of-00002.safetensors")), "missing shard"),
    "index path with ..": Case(GPTQ, index_edit(lambda *a: _escape(*a, how="dotdot")), "outside the checkpoint"),
    "index absolute path": Case(GPTQ, index_edit(lambda *a: _escape(*a, how="absolute")), "outside the checkpoint"),
    "index names the directory itself": Case(GPTQ, index_edit(_rename_shard("")), "index"),
    "index names a NUL byte": Case(GPTQ, index_edit(_rename_shard("model\0.safetensors")), "index"),
    "index names the config": Case(GPTQ, index_edit(_rename_shard("config.json"), names="config.json"), "header"),
    "same tensor in two shards": Case(GPTQ, index_edit(_in_both, names="model-00002-of-00002.safetensors"), "two shards"),
    "index shard is a symlink out": Case(GPTQ, index_edit(_symlinked_shard, names="model-00002-of-00002.safetensors"), "outside the checkpoint"),
    "index weight_map empty": Case(GPTQ, index_edit(lambda s, o, wm, f: wm.clear()), "weight_map"),
    "index not JSON": Case(GPTQ, _index_not_json, "invalid json"),
    # symlinks and special files
    "weights symlinked out": Case(GPTQ, symlink_out(W), "outside the checkpoint"),
    "config symlinked out": Case(GPTQ, symlink_out(C), "outside the checkpoint"),
    "tokenizer symlinked out": Case(GPTQ, symlink_out("tokenizer.json"), "outside the checkpoint"),
    "directory symlinked out": Case(GPTQ, _symlinked_dir, "outside the checkpoint"),
    "weights file is a FIFO": Case(GPTQ, _fifo, "not a regular file"),
    "weights file is a directory": Case(GPTQ, _weights_dir, "not a regular file"),
    "config is a FIFO": Case(GPTQ, _config_fifo, "not a regular file"),
    "config of 65 MB": Case(GPTQ, _huge_config, "too large"),
    "symlink loop": Case(GPTQ, _symlink_loop, "symlink loop"),
    # pickles
    "pickle with a class": Case(INC, _torch_save_extra(NotATensor()), "refused to unpickle"),
    "pickle running code": Case(INC, _code_running_pickle, "refused to unpickle"),
    "pickle with nested containers": Case(INC, _torch_save_extra({"a": [1, 2]}), "flat state dict"),
    "legacy (non-zip) pickle": Case(INC, _legacy_pickle, "not a torch.save zip"),
    "pickle declaring a 4 GiB storage": Case(INC, _storage_bomb, "torch archive"),
    "truncated torch zip": Case(INC, _damaged_zip, "zip"),
    "pytorch_model.bin only": Case(GPTQ, _pickle_bin_only, "pickle"),
    # configs
    "bits 5": Case(GPTQ, simple(edit_config(_qc(bits=5)), W), "5-bit"),
    "bits 1": Case(GPTQ, simple(edit_config(_qc(bits=1)), C), "bits 1"),
    "bits 16": Case(GPTQ, simple(edit_config(_qc(bits=16)), C), "bits 16"),
    "bits a string": Case(GPTQ, simple(edit_config(_qc(bits="4")), C), "bits"),
    "bits true": Case(GPTQ, simple(edit_config(_qc(bits=True)), C), "bits"),
    "bits missing": Case(GPTQ, simple(edit_config(_drop("bits")), C), "bits"),
    "group_size 0": Case(GPTQ, simple(edit_config(_qc(group_size=0)), C), "group_size 0"),
    "group_size -2": Case(GPTQ, simple(edit_config(_qc(group_size=-2)), C), "group_size -2"),
    "group_size 48 does not divide in_features": Case(GPTQ, simple(edit_config(_qc(group_size=48)), W), "group_size 48"),
    "group_size 64 disagrees with scales": Case(GPTQ, simple(edit_config(_qc(group_size=64)), W), "group_size 64"),
    "group_size 2^40": Case(GPTQ, simple(edit_config(_qc(group_size=2**40)), W), "group"),
    "awq sym and zero_point contradict": Case(AWQ, simple(edit_config(_qc(sym=True, zero_point=True)), C), "contradict"),
    "awq group_size 48": Case(AWQ, simple(edit_config(_qc(group_size=48)), W), "group_size 48"),
    "auto-round packing_format a list": Case("ar-w3-g32-asym-auto_round", simple(edit_config(_qc(packing_format=[None])), C), "packing_format"),
    "quant_method unknown": Case(GPTQ, simple(edit_config(_qc(quant_method="hqq")), C), "quant_method"),
    "checkpoint_format unknown": Case(GPTQ, simple(edit_config(_qc(checkpoint_format="marlin")), C), "checkpoint_format"),
    "quantization_config a string": Case(GPTQ, lambda s, o: (s / "quantization_config.json").unlink() or _config_text(
        json.dumps({**json.loads((s / C).read_text()), "quantization_config": "gptq"}))(s, o), "quantization_config"),
    "config not JSON": Case(GPTQ, _config_text("{\"model_type\": "), "invalid json"),
    "config a JSON list": Case(GPTQ, _config_text("[]"), "json object"),
    "config nested 100000 deep": Case(GPTQ, _config_text("[" * 100000 + "]" * 100000), "json"),
    "config not UTF-8": Case(GPTQ, lambda s, o: ((s / C).write_bytes(b'{"a": "\xff"}'), C)[1], "utf-8"),
    "inc bits 5": Case(INC, lambda s, o: (_inc_qconfig(lambda a: a.update(bits=5))(s, o), "quantized_weight.pt")[1], "5-bit"),
    "inc bits a list": Case(INC, _inc_qconfig(lambda a: a.update(bits=[4])), "bits"),
    "inc group_size 0": Case(INC, _inc_qconfig(lambda a: a.update(group_size=0)), "group_size"),
    "inc qconfig not JSON": Case(INC, _config_text("{", Q), "invalid json"),
    # tensor contents
    "NaN scale": Case(GPTQ, simple(edit_tensors(_scale(float("nan"))), W), "nan or infinite"),
    "Inf scale": Case(GPTQ, simple(edit_tensors(_scale(float("inf"))), W), "nan or infinite"),
    "-Inf scale": Case(GPTQ, simple(edit_tensors(_scale(float("-inf"))), W), "nan or infinite"),
    "awq NaN scale": Case(AWQ, simple(edit_tensors(_scale(float("nan"))), W), "nan or infinite"),
    "zero-size quantized layer": Case(GPTQ, simple(edit_tensors(_zero_size_layer), W), "empty"),
    "zero-size scales": Case(GPTQ, simple(edit_tensors(_set(f"{LAYER}.scales", lambda t: torch.zeros(0, 128, dtype=torch.float16))), W), "scales"),
    "qzeros shape mismatched": Case(GPTQ, simple(edit_tensors(_set(f"{LAYER}.qzeros", lambda t: t[f"{LAYER}.qzeros"][:, :8].clone())), W), "qzeros"),
    "scales shape mismatched": Case(GPTQ, simple(edit_tensors(_set(f"{LAYER}.scales", lambda t: t[f"{LAYER}.scales"][:2].clone())), W), "disagrees"),
    "g_idx shape mismatched": Case(GPTQ, simple(edit_tensors(_set(f"{LAYER}.g_idx", lambda t: t[f"{LAYER}.g_idx"][:64].clone())), W), "g_idx"),
    "bias shape mismatched": Case(GPTQ, simple(edit_tensors(_set(f"{LAYER}.bias", lambda t: torch.zeros(7, dtype=torch.float16))), W), "bias"),
    "qweight rows mismatched": Case(GPTQ, simple(edit_tensors(_set(Q_, lambda t: t[Q_][:8].clone())), W), "groups"),
    "g_idx out of range": Case(GPTQ, simple(edit_tensors(_set(f"{LAYER}.g_idx", lambda t: torch.full((128,), 9, dtype=torch.int32))), W), "g_idx"),
    "g_idx negative": Case(GPTQ, simple(edit_tensors(_set(f"{LAYER}.g_idx", lambda t: torch.full((128,), -1, dtype=torch.int32))), W), "g_idx"),
    "qweight float": Case(GPTQ, simple(edit_tensors(_set(Q_, lambda t: t[Q_].view(torch.float32))), W), "dtype f32"),
    "scales int": Case(GPTQ, simple(edit_tensors(_set(f"{LAYER}.scales", lambda t: t[f"{LAYER}.scales"].view(torch.int16))), W), "dtype i16"),
    "qzeros missing": Case(GPTQ, simple(edit_tensors(lambda t: t.pop(f"{LAYER}.qzeros")), ""), "no qzeros"),
    "awq qzeros shape mismatched": Case(AWQ, simple(edit_tensors(_set(f"{LAYER}.qzeros", lambda t: t[f"{LAYER}.qzeros"][:, :8].clone())), W), "qzeros"),
    "awq with g_idx": Case(AWQ, simple(edit_tensors(_set(f"{LAYER}.g_idx", lambda t: torch.arange(128, dtype=torch.int32) // 32)), W), "g_idx"),
}


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under the roots: type, bytes' hash, mode and mtime (lstat: symlinks not followed)."""
    out = {}
    for root in roots:
        for p in sorted([root, *root.rglob("*")]):
            st = p.lstat()
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            else:
                content = None
            out[str(p)] = (stat.S_IFMT(st.st_mode), content, st.st_mode, st.st_mtime_ns)
    return out


def build(case: Case, tmp: Path) -> tuple[Path, Path, Path]:
    """Make the damaged checkpoint: returns (src, outside, the file the error must name)."""
    src, outside = tmp / "src", tmp / "outside"
    shutil.copytree(fixture_path(case.fixture), src)
    outside.mkdir()
    rel = case.damage(src, outside)
    return src, outside, src / rel if rel else src


def random_small_tensors(seed: int, g_idx: bool = True):
    """Random qzeros (every bit pattern per layer, or one symmetric value in every layer), g_idx (trivial,
    block-permuted, scattered, out of range) and the odd non-finite scale: what the torch and numpy readers must agree on (inspect's scans, convert's paths)."""
    g = torch.Generator().manual_seed(seed)
    symmetric = {1: 0x77777777, 2: -0x77777778}.get(seed % 5)  # every field 7 (symmetric v1) or 8 (symmetric v2)

    def damage(t: dict) -> None:
        for name in [n for n in t if n.endswith(".qzeros")]:
            p = name[: -len(".qzeros")]
            if symmetric is not None:
                t[name] = torch.full(t[name].shape, symmetric, dtype=torch.int32)
            elif int(torch.randint(0, 2, (1,), generator=g)):
                t[name] = torch.randint(-(2**31), 2**31 - 1, t[name].shape, dtype=torch.int32, generator=g)
            n, gs = t[f"{p}.g_idx"].numel(), 32
            kind = int(torch.randint(0, 4, (1,), generator=g)) if g_idx else 0  # 0: left trivial
            if kind == 1:
                t[f"{p}.g_idx"] = torch.randperm(n // gs, generator=g).repeat_interleave(gs).to(torch.int32)
            elif kind == 2:
                t[f"{p}.g_idx"] = (torch.randperm(n, generator=g) // gs).to(torch.int32)
            elif kind == 3 and seed % 7 == 3:
                t[f"{p}.g_idx"] = torch.randint(0, n // gs + 1, (n,), dtype=torch.int32, generator=g)
        if seed % 6 == 5:
            name = sorted(n for n in t if n.endswith(".scales"))[seed % 14]
            t[name] = t[name].clone()
            t[name][0, 0] = float("inf")

    return damage
