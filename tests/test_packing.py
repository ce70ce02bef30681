"""Packing primitives: hand-computed words, the peers' own packers, and round-trip properties."""

import platform
import shutil

import numpy as np
import pytest
import torch
from conftest import fixture_path
from hypothesis import given, settings
from hypothesis import strategies as st

import woqconv
from woqconv.kernels import packing
from woqconv.ir import all_finite


def u32(t: torch.Tensor) -> list[int]:
    return [w & 0xFFFFFFFF for w in t.reshape(-1).tolist()]


# -- hand-computed words (FORMATS.md 1.2, 1.3, 2.1) -------------------------------------------

def test_gptq_codes_1_to_8_along_in_features():
    codes_in_x_out = torch.arange(1, 9, dtype=torch.uint8).view(8, 1)  # in-channels 0..7 of out 0
    assert u32(packing.pack(codes_in_x_out, 4, dim=0)) == [0x87654321]


def test_awq_interleave_of_codes_1_to_8():
    row = torch.arange(1, 9, dtype=torch.uint8).view(1, 8)  # out-channels 0..7 of in 0
    assert u32(packing.pack(packing.awq_interleave(row), 4, dim=1)) == [0x86427531]
    back = packing.awq_deinterleave(packing.unpack(torch.tensor([[0x86427531 - 2**32]], dtype=torch.int32), 4, dim=1))
    assert back.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]


def test_three_bit_stream_words():
    codes = (torch.arange(32) % 8).to(torch.uint8).view(32, 1)
    assert u32(packing.pack(codes, 3, dim=0)) == [0x88FAC688, 0xC688FAC6, 0xFAC688FA]


@pytest.mark.parametrize(
    "bits,v1_words,v2_words",
    [
        (2, [0x55555555], [0xAAAAAAAA]),
        (3, [0xDB6DB6DB, 0xB6DB6DB6, 0x6DB6DB6D], [0x24924924, 0x49249249, 0x92492492]),
        (4, [0x77777777], [0x88888888]),
        (8, [0x7F7F7F7F], [0x80808080]),
    ],
)
def test_symmetric_zero_point_constants(bits, v1_words, v2_words):
    z = torch.full((1, 32), 1 << (bits - 1), dtype=torch.uint8)  # one group, 32 out-channels
    assert u32(packing.pack(packing.v1_encode_zeros(z, bits), bits, dim=1)) == v1_words * (32 * bits // 32 // len(v1_words))
    assert u32(packing.pack(z, bits, dim=1)) == v2_words * (32 * bits // 32 // len(v2_words))


def test_v1_zero_point_zero_is_modular_per_field():
    # true z = [0,5,3,15,1,8,0,7]: INC's modular v1 word is 0x6f70e24f (FORMATS.md 1.4)
    z = torch.tensor([[0, 5, 3, 15, 1, 8, 0, 7]], dtype=torch.uint8)
    word = packing.pack(packing.v1_encode_zeros(z, 4), 4, dim=1)
    assert u32(word) == [0x6F70E24F]
    assert packing.v1_decode_zeros(packing.unpack(word, 4, dim=1), 4).tolist() == z.tolist()


def test_gptqmodel_word_dialect_decodes_exactly():
    # GPTQModel writes v1 as word(z) - 0x11111111 with borrows: 0x5f70e23f for the same z.
    word = torch.tensor([[0x5F70E23F]], dtype=torch.int32)
    z = packing.unpack(packing.v1_word_decode(word, 4), 4, dim=1)
    assert z.tolist() == [[0, 5, 3, 15, 1, 8, 0, 7]]
    # Read modularly it gives the wrong answer FORMATS.md predicts; the dialect matters.
    assert packing.v1_decode_zeros(packing.unpack(word, 4, dim=1), 4).tolist() == [[0, 4, 3, 15, 1, 8, 0, 6]]


# -- the peers' own packers -------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_matches_auto_round_bitstream_packer(bits):
    from auto_round.utils.bit_packing import pack_bitstream, unpack_bitstream

    g = torch.Generator().manual_seed(bits)
    values = torch.randint(0, 1 << bits, (64, 96), generator=g, dtype=torch.int32)
    for dim in (0, 1):
        theirs = pack_bitstream(values, bits, dim=dim)
        ours = packing.pack(values.to(torch.uint8), bits, dim=dim)
        assert ours.dtype == torch.int32 and torch.equal(ours, theirs.to(torch.int32))
        assert torch.equal(packing.unpack(theirs.to(torch.int32), bits, dim=dim).to(torch.int32), unpack_bitstream(theirs, bits, dim=dim).to(torch.int32))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_matches_inc_optimum_packer(bits):
    from neural_compressor.torch.algorithms.weight_only.modules import (
        INCWeightOnlyLinear,
    )

    in_f, out_f, gs = 64, 32, 32
    g = torch.Generator().manual_seed(bits)
    q = torch.randint(0, 1 << bits, (out_f, in_f), generator=g, dtype=torch.uint8)
    z = torch.randint(1, 1 << bits, (out_f, in_f // gs), generator=g, dtype=torch.uint8)
    s = torch.rand(out_f, in_f // gs, generator=g)
    m = INCWeightOnlyLinear(in_f, out_f, bits=bits, group_size=gs, zp=True, use_optimum_format=True, device="cpu")
    m.pack(q.clone().to(torch.int32), s, z.clone().to(torch.int32), None)
    assert torch.equal(m.qweight, packing.pack(q.T, bits, dim=0))
    assert torch.equal(m.qzeros, packing.pack(packing.v1_encode_zeros(z, bits).T, bits, dim=1))


def test_awq_order_matches_auto_round():
    from auto_round.utils.bit_packing import AWQ_PACK_ORDER, AWQ_REVERSE_ORDER

    assert tuple(AWQ_PACK_ORDER) == packing.AWQ_ORDER
    assert tuple(AWQ_REVERSE_ORDER) == packing.AWQ_REVERSE_ORDER


# -- properties -------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), runs=st.integers(1, 3), width=st.integers(1, 5), dim=st.sampled_from([0, 1]), seed=st.integers(0, 2**31))
def test_unpack_inverts_pack(bits, runs, width, dim, seed):
    g = torch.Generator().manual_seed(seed)
    shape = [32 * runs, width] if dim == 0 else [width, 32 * runs]
    x = torch.randint(0, 1 << bits, shape, generator=g, dtype=torch.uint8)
    words = packing.pack(x, bits, dim=dim)
    assert words.shape[dim] == runs * bits
    assert torch.equal(packing.unpack(words, bits, dim=dim), x)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), seed=st.integers(0, 2**31))
def test_v1_zero_offset_round_trips_every_value(bits, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(0, 1 << bits, (3, 32), generator=g, dtype=torch.uint8)
    assert torch.equal(packing.v1_decode_zeros(packing.v1_encode_zeros(z, bits), bits), z)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), rows=st.integers(1, 4), blocks=st.integers(1, 4))
def test_awq_interleave_round_trips(seed, rows, blocks):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 16, (rows, 8 * blocks), generator=g, dtype=torch.uint8)
    assert torch.equal(packing.awq_deinterleave(packing.awq_interleave(x)), x)


def test_pack_refuses_partial_words():
    with pytest.raises(ValueError):
        packing.pack(torch.zeros(7, 1, dtype=torch.uint8), 4, dim=0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), rows=st.integers(1, 4), blocks=st.integers(1, 4))
def test_awq_slot_order_equals_interleave_then_pack(seed, rows, blocks):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 16, (rows, 8 * blocks), generator=g, dtype=torch.uint8)
    words = packing.pack(x, 4, dim=1, slot_order=packing.AWQ_ORDER)
    assert torch.equal(words, packing.pack(packing.awq_interleave(x), 4, dim=1))
    assert torch.equal(packing.unpack(words, 4, dim=1, slot_order=packing.AWQ_ORDER), x)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_unpack_with_a_slot_order_by_bytes_equals_the_definition(bits):
    # Field k of each word holds channel order[k]; words in any layout (transposed, one column, every
    # other row) unpack as their contiguous copies would.
    per_word = 32 // bits
    g = torch.Generator().manual_seed(bits)
    orders = [tuple(reversed(range(per_word))), tuple(torch.randperm(per_word, generator=g).tolist())]
    if bits == 4:
        orders.append(packing.AWQ_ORDER)
    words = torch.randint(-(2**31), 2**31 - 1, (8, 6), generator=g, dtype=torch.int32)
    for order in orders:
        for w in (words, words.t(), words[:, :1], words[::2]):
            want = torch.empty((*w.shape, per_word), dtype=torch.uint8)
            for k in range(per_word):
                want[..., order[k]] = (w >> (k * bits)) & ((1 << bits) - 1)
            assert torch.equal(packing.unpack(w, bits, dim=1, slot_order=order), want.reshape(w.shape[0], -1)), (order, w.shape)


# -- word-level 4-bit re-layouts (the converter's fast path) ------------------------------------

@pytest.mark.parametrize("shape", [(32, 32), (64, 96), (160, 64)])
def test_gptq_to_awq_and_hpu_words_match_auto_round_packers(shape):
    from auto_round.utils.bit_packing import pack_awq_bitstream, pack_bitstream

    g = torch.Generator().manual_seed(shape[0])
    codes = torch.randint(0, 16, shape, generator=g, dtype=torch.int32)  # [in, out]
    gptq = pack_bitstream(codes, 4, dim=0).to(torch.int32)
    awq = pack_awq_bitstream(codes, 4, dim=1).to(torch.int32)
    sequential = pack_bitstream(codes, 4, dim=1).to(torch.int32)  # INC's HPU layout
    assert torch.equal(packing.gptq4_to_rowwise(gptq, packing.AWQ_ORDER), awq)
    assert torch.equal(packing.gptq4_to_rowwise(gptq), sequential)
    assert torch.equal(packing.rowwise4_to_gptq(awq, packing.AWQ_ORDER), gptq)
    assert torch.equal(packing.rowwise4_to_gptq(sequential), gptq)


@pytest.mark.parametrize("order", [None, packing.AWQ_ORDER, (7, 6, 5, 4, 3, 2, 1, 0)], ids=["sequential", "awq", "other"])
def test_relayout_of_any_slot_order_equals_unpack_then_pack(order):
    # The sequential and AWQ orders move their slots in one strided copy; any other order slot by slot.
    g = torch.Generator().manual_seed(11)
    words = torch.randint(-(2**31), 2**31 - 1, (6, 48), generator=g, dtype=torch.int32)
    want = packing.pack(packing.unpack(words, 4, dim=0), 4, dim=1, slot_order=order)
    assert torch.equal(packing.gptq4_to_rowwise(words, order), want)
    assert torch.equal(packing.rowwise4_to_gptq(want, order), words)


def test_numpy_relayout_works_in_chunks(monkeypatch):
    # A layer larger than one cache-sized chunk, with a ragged last chunk.
    monkeypatch.setattr(packing, "_CHUNK_WORDS", 24)
    g = torch.Generator().manual_seed(7)
    words = torch.randint(-(2**31), 2**31 - 1, (13, 32), generator=g, dtype=torch.int32)
    want = packing.pack(packing.unpack(words, 4, dim=0), 4, dim=1, slot_order=packing.AWQ_ORDER)
    result = np.empty(want.numel(), dtype=np.int32)
    packing.gptq4_to_rowwise_numpy(words.numpy(), packing.AWQ_ORDER, result)
    assert np.array_equal(result.reshape(want.shape), want.numpy())
    back = np.empty_like(words.numpy())
    packing.rowwise4_to_gptq_numpy(want.numpy(), packing.AWQ_ORDER, back)
    assert np.array_equal(back, words.numpy())


def _relayouts() -> dict:
    """Every implementation of the two re-layouts, as (to_rowwise, to_gptq) on numpy arrays."""
    found = {"numpy": (packing.gptq4_to_rowwise_numpy, packing.rowwise4_to_gptq_numpy)}
    native = packing._native
    if native is not None:
        found["c"] = _c_relayouts(native.gptq4_to_rowwise, native.rowwise4_to_gptq)
        found["c-scalar"] = _c_relayouts(native.gptq4_to_rowwise_scalar, native.rowwise4_to_gptq_scalar)
    return found


def _c_relayouts(kernel_to_rowwise, kernel_to_gptq) -> tuple:
    def to_rowwise(src, order, dst):  # src [in/8, out]
        kernel_to_rowwise(src, dst, src.shape[0], src.shape[1] // 8, bytes(order))

    def to_gptq(src, order, dst):  # src [in, out/8]
        kernel_to_gptq(src, dst, src.shape[0] // 8, src.shape[1], bytes(order))

    return to_rowwise, to_gptq


RELAYOUTS = _relayouts()


def test_the_c_relayout_is_built_where_a_compiler_is():
    # Without it every conversion to AWQ or HPU silently takes the numpy version, several times slower.
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here: the numpy re-layout is the expected one")
    assert packing._native is not None, "woqconv/kernels/_relayout.c was not built: run `pip install -e .` again"
    if platform.machine() in ("x86_64", "AMD64") and "avx2" in _cpu_flags():
        assert packing._native.vector == "avx2"


def _cpu_flags() -> str:
    try:
        return open("/proc/cpuinfo").read()
    except OSError:
        return ""


@pytest.mark.parametrize("impl", sorted(RELAYOUTS))
@pytest.mark.parametrize("order", [tuple(range(8)), packing.AWQ_ORDER, (3, 7, 0, 5, 1, 6, 2, 4)], ids=["sequential", "awq", "other"])
def test_every_relayout_equals_unpack_then_pack(impl, order):
    # Column counts around the vector width (8 blocks per step) exercise the C kernel's scalar tail.
    to_rowwise, to_gptq = RELAYOUTS[impl]
    g = torch.Generator().manual_seed(sum(order) + len(impl))
    for rows, cols in ((1, 1), (2, 7), (3, 8), (1, 9), (4, 16), (5, 17), (2, 31), (6, 64)):
        words = torch.randint(-(2**31), 2**31 - 1, (rows, cols * 8), generator=g, dtype=torch.int32)
        want = packing.pack(packing.unpack(words, 4, dim=0), 4, dim=1, slot_order=order).numpy()
        result = np.full(want.shape, 0x5A5A5A5A, dtype=np.int32)
        to_rowwise(words.numpy(), order, result)
        assert np.array_equal(result, want), (impl, rows, cols)
        back = np.full((rows, cols * 8), 0x5A5A5A5A, dtype=np.int32)
        to_gptq(want, order, back)
        assert np.array_equal(back, words.numpy()), (impl, rows, cols)


@pytest.mark.skipif(packing._native is None, reason="the C re-layout is not built")
def test_c_relayout_refuses_bad_arguments_before_touching_memory():
    native = packing._native
    src = np.zeros((2, 16), dtype=np.int32)
    dst = np.zeros(32, dtype=np.int32)
    native.gptq4_to_rowwise(src, dst, 2, 2, bytes(range(8)))  # the right sizes pass
    empty = np.zeros(0, dtype=np.int32)
    native.gptq4_to_rowwise(empty, empty.copy(), 2**62, 0, bytes(range(8)))  # no words: returns at once
    cases = [
        ((src, np.zeros(31, np.int32), 2, 2, bytes(range(8))), "expected 128 bytes"),
        ((src, dst, 2, 3, bytes(range(8))), "expected 192 bytes"),
        ((src, dst, 2, 2, bytes(range(7))), "8 bytes"),
        ((src, dst, 2, 2, bytes([0, 1, 2, 3, 4, 5, 6, 6])), "permutation"),
        ((src, dst, 2, 2, bytes([0, 1, 2, 3, 4, 5, 6, 8])), "permutation"),
        ((src, dst, -2, -2, bytes(range(8))), "negative"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            native.gptq4_to_rowwise(*args)
    words = np.zeros(64, dtype=np.int32)
    with pytest.raises(ValueError, match="overlap"):
        native.gptq4_to_rowwise(words[:32], words[16:48], 2, 2, bytes(range(8)))
    unaligned = np.zeros(129, dtype=np.uint8)[1:]
    with pytest.raises(ValueError, match="aligned"):
        native.gptq4_to_rowwise(unaligned, dst, 2, 2, bytes(range(8)))
    with pytest.raises(TypeError):  # read-only output
        native.gptq4_to_rowwise(src, bytes(128), 2, 2, bytes(range(8)))
    with pytest.raises((ValueError, BufferError)):  # not contiguous
        native.rowwise4_to_gptq(np.zeros((4, 16), np.int32)[:, ::2], dst, 2, 2, bytes(range(8)))


def test_reused_result_buffer_is_handed_out_once_per_block():
    g = torch.Generator().manual_seed(5)
    big = torch.randint(-(2**31), 2**31 - 1, (16, 64), generator=g, dtype=torch.int32)
    small = torch.randint(-(2**31), 2**31 - 1, (4, 32), generator=g, dtype=torch.int32)
    want_big = packing.pack(packing.unpack(big, 4, dim=0), 4, dim=1, slot_order=packing.AWQ_ORDER)
    want_small = packing.pack(packing.unpack(small, 4, dim=0), 4, dim=1)
    try:
        with packing.result_in_reused_buffer():
            first = packing.gptq4_to_rowwise(big, packing.AWQ_ORDER)
            second = packing.gptq4_to_rowwise(big, packing.AWQ_ORDER)  # the block's buffer is taken: its own memory
            assert torch.equal(first, want_big) and torch.equal(second, want_big)
            assert first.data_ptr() != second.data_ptr()
        with packing.result_in_reused_buffer():
            again = packing.gptq4_to_rowwise(small)  # the next block: the same memory, a smaller result
            assert again.data_ptr() == first.data_ptr() and torch.equal(again, want_small)
        outside = packing.gptq4_to_rowwise(small)
        assert outside.data_ptr() != first.data_ptr() and torch.equal(outside, want_small)
    finally:
        packing.drop_reused_buffer()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_all_finite_matches_isfinite(dtype):
    x = torch.randn(4096).to(dtype)
    x[7], x[8] = torch.finfo(dtype).max, -torch.finfo(dtype).max  # the largest finite values are finite
    assert all_finite(x) and bool(torch.isfinite(x).all())
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[4000] = bad
        assert not all_finite(y)


@pytest.mark.skipif(packing._native is None, reason="the C re-layout is not built: conversions already use numpy")
@pytest.mark.parametrize("src, to", [("ar-g128-asym-auto_gptq", "awq"), ("ar-g128-asym-auto_gptq", "hpu"), ("ar-g32-asym-auto_awq", "gptq")])
def test_conversions_write_the_same_bytes_without_the_c_relayout(src, to, tmp_path, monkeypatch):
    # A machine without a C compiler at install converts with the numpy re-layout: same files, byte for byte.
    # GPTQ -> awq moves bytes (tensor_ops.Relayout), -> hpu computes (its Gaudi cache), AWQ -> gptq the inverse.
    woqconv.convert(fixture_path(src), tmp_path / "c", to=to, allow_bf16=True)
    monkeypatch.setattr(packing, "_native", None)
    woqconv.convert(fixture_path(src), tmp_path / "numpy", to=to, allow_bf16=True)
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "numpy").iterdir()) and "model.safetensors" in files
    for name in files:
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "numpy" / name).read_bytes(), name


def test_a_slot_order_that_is_not_a_permutation_is_refused():
    words = torch.zeros((2, 16), dtype=torch.int32)
    for order in ((0, 1, 2, 3, 4, 5, 6, 6), (0, 1, 2, 3, 4, 5, 6), (1, 2, 3, 4, 5, 6, 7, 8)):
        with pytest.raises(ValueError, match="permutation"):
            packing.gptq4_to_rowwise(words, order)
        with pytest.raises(ValueError, match="permutation"):
            packing.rowwise4_to_gptq(torch.zeros((16, 2), dtype=torch.int32), order)


TRANSPOSE_SHAPES = [(1, 1), (33, 70), (64, 96), (5, 0), (8, 8), (130, 77), (200, 64), (9, 1000), (1000, 15)]


@pytest.mark.parametrize("shape", TRANSPOSE_SHAPES)
@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.uint16])
def test_transposed_is_the_transpose(shape, dtype):
    """The C tiles (32-bit elements: 8 x 8 blocks in AVX2 registers, the edges word by word) and numpy's copy
    (others) give the transpose, whatever the shape."""
    a = np.random.default_rng(sum(shape)).integers(0, 1 << 15, size=shape).astype(dtype)
    t = packing.transposed(a)
    assert t.flags.c_contiguous and t.dtype == a.dtype and np.array_equal(t, a.T)


@pytest.mark.skipif(packing._native is None, reason="the C extension is not built")
@pytest.mark.parametrize("shape", TRANSPOSE_SHAPES)
def test_transpose_vector_path_equals_the_scalar_tiles(shape):
    a = np.random.default_rng(7).integers(0, 1 << 32, size=shape, dtype=np.uint32)
    vector, scalar = np.empty(shape[::-1], np.uint32), np.empty(shape[::-1], np.uint32)
    packing._native.transpose32(a, vector, *shape)
    packing._native.transpose32(a, scalar, *shape, False)
    assert np.array_equal(vector, a.T) and np.array_equal(scalar, a.T)
