/* The 4-bit GPTQ <-> row-wise (AWQ GEMM, INC's HPU layout) re-layout as one pass over memory.
 *
 * packing.py holds the definition and a numpy version of the same code; this module exists only for
 * speed. numpy needs ~20 element-wise passes per chunk for the same work (three delta-swap stages of
 * six calls each, plus the gathers), which makes the re-layout the largest CPU cost of a 7B conversion
 * to AWQ. Here each 8 (in) x 8 (out) block of codes is loaded once, transposed in registers and stored
 * once: AVX2 takes eight blocks per step, any other CPU one block at a time.
 *
 * Layouts, in int32 words (see packing.gptq4_to_rowwise):
 *   GPTQ     [rows][cols][8]  word k of block (r, c) holds in-channels 8r..8r+7 of out-channel 8c + k
 *   row-wise [rows][8][cols]  word (r, i, c) holds out-channels 8c..8c+7 of in-channel 8r + i, field k
 *                             being out-channel 8c + order[k]
 * Both functions release the GIL: conversion workers run them side by side.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_AVX2_PATH 1
#include <immintrin.h>
#endif

/* Swap the high `s` bits of each field pair of a with the low ones of b (one delta swap). */
#define SWAP32(a, b, s, m)                        \
    do {                                          \
        uint32_t t_ = (((a) >> (s)) ^ (b)) & (m); \
        (b) ^= t_;                                \
        (a) ^= t_ << (s);                         \
    } while (0)

/* One delta-swap stage on four word pairs. */
#define STAGE(SW, s, m, a0, b0, a1, b1, a2, b2, a3, b3) \
    do {                                                 \
        SW(a0, b0, s, m);                                \
        SW(a1, b1, s, m);                                \
        SW(a2, b2, s, m);                                \
        SW(a3, b3, s, m);                                \
    } while (0)

/* Transposes the 8x8 nibble matrix held in w0..w7: nibble i of word k <-> nibble k of word i (16-bit
 * halves between words 4 apart, then bytes between words 2 apart, then nibbles between neighbours).
 * It is its own inverse. */
#define TRANSPOSE_NIBBLES(SW, w0, w1, w2, w3, w4, w5, w6, w7)                  \
    do {                                                                       \
        STAGE(SW, 16, 0x0000FFFFu, w0, w4, w1, w5, w2, w6, w3, w7);            \
        STAGE(SW, 8, 0x00FF00FFu, w0, w2, w1, w3, w4, w6, w5, w7);             \
        STAGE(SW, 4, 0x0F0F0F0Fu, w0, w1, w2, w3, w4, w5, w6, w7);             \
    } while (0)

/* One block, GPTQ -> row-wise. `block` is GPTQ's 8 words, `out` the block's first row-wise word. */
static void to_rowwise_block(const uint32_t *block, uint32_t *out, size_t cols, const uint8_t *order)
{
    uint32_t w0 = block[order[0]], w1 = block[order[1]], w2 = block[order[2]], w3 = block[order[3]];
    uint32_t w4 = block[order[4]], w5 = block[order[5]], w6 = block[order[6]], w7 = block[order[7]];
    TRANSPOSE_NIBBLES(SWAP32, w0, w1, w2, w3, w4, w5, w6, w7);
    out[0] = w0, out[cols] = w1, out[2 * cols] = w2, out[3 * cols] = w3;
    out[4 * cols] = w4, out[5 * cols] = w5, out[6 * cols] = w6, out[7 * cols] = w7;
}

/* One block, row-wise -> GPTQ: the inverse of to_rowwise_block. */
static void to_gptq_block(const uint32_t *in, uint32_t *block, size_t cols, const uint8_t *order)
{
    uint32_t w0 = in[0], w1 = in[cols], w2 = in[2 * cols], w3 = in[3 * cols];
    uint32_t w4 = in[4 * cols], w5 = in[5 * cols], w6 = in[6 * cols], w7 = in[7 * cols];
    TRANSPOSE_NIBBLES(SWAP32, w0, w1, w2, w3, w4, w5, w6, w7);
    block[order[0]] = w0, block[order[1]] = w1, block[order[2]] = w2, block[order[3]] = w3;
    block[order[4]] = w4, block[order[5]] = w5, block[order[6]] = w6, block[order[7]] = w7;
}

static void to_rowwise_scalar(const uint32_t *src, uint32_t *dst, size_t rows, size_t cols, size_t c0,
                              const uint8_t *order)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t c = c0; c < cols; c++)
            to_rowwise_block(src + (r * cols + c) * 8, dst + r * 8 * cols + c, cols, order);
}

static void to_gptq_scalar(const uint32_t *src, uint32_t *dst, size_t rows, size_t cols, size_t c0,
                           const uint8_t *order)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t c = c0; c < cols; c++)
            to_gptq_block(src + r * 8 * cols + c, dst + (r * cols + c) * 8, cols, order);
}

#ifdef HAVE_AVX2_PATH
#define SWAP256(a, b, s, m)                                                                              \
    do {                                                                                                 \
        __m256i t_ = _mm256_and_si256(_mm256_xor_si256(_mm256_srli_epi32((a), (s)), (b)),                \
                                      _mm256_set1_epi32((int)(m)));                                      \
        (b) = _mm256_xor_si256((b), t_);                                                                 \
        (a) = _mm256_xor_si256((a), _mm256_slli_epi32(t_, (s)));                                         \
    } while (0)

/* 8x8 transpose of 32-bit words: afterwards lane j of x_k is what lane k of x_j was. */
#define TRANSPOSE_WORDS(x0, x1, x2, x3, x4, x5, x6, x7)                                       \
    do {                                                                                      \
        __m256i t0_ = _mm256_unpacklo_epi32(x0, x1), t1_ = _mm256_unpackhi_epi32(x0, x1);     \
        __m256i t2_ = _mm256_unpacklo_epi32(x2, x3), t3_ = _mm256_unpackhi_epi32(x2, x3);     \
        __m256i t4_ = _mm256_unpacklo_epi32(x4, x5), t5_ = _mm256_unpackhi_epi32(x4, x5);     \
        __m256i t6_ = _mm256_unpacklo_epi32(x6, x7), t7_ = _mm256_unpackhi_epi32(x6, x7);     \
        __m256i u0_ = _mm256_unpacklo_epi64(t0_, t2_), u1_ = _mm256_unpackhi_epi64(t0_, t2_); \
        __m256i u2_ = _mm256_unpacklo_epi64(t1_, t3_), u3_ = _mm256_unpackhi_epi64(t1_, t3_); \
        __m256i u4_ = _mm256_unpacklo_epi64(t4_, t6_), u5_ = _mm256_unpackhi_epi64(t4_, t6_); \
        __m256i u6_ = _mm256_unpacklo_epi64(t5_, t7_), u7_ = _mm256_unpackhi_epi64(t5_, t7_); \
        x0 = _mm256_permute2x128_si256(u0_, u4_, 0x20);                                       \
        x4 = _mm256_permute2x128_si256(u0_, u4_, 0x31);                                       \
        x1 = _mm256_permute2x128_si256(u1_, u5_, 0x20);                                       \
        x5 = _mm256_permute2x128_si256(u1_, u5_, 0x31);                                       \
        x2 = _mm256_permute2x128_si256(u2_, u6_, 0x20);                                       \
        x6 = _mm256_permute2x128_si256(u2_, u6_, 0x31);                                       \
        x3 = _mm256_permute2x128_si256(u3_, u7_, 0x20);                                       \
        x7 = _mm256_permute2x128_si256(u3_, u7_, 0x31);                                       \
    } while (0)

#define LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define STORE(p, v) _mm256_storeu_si256((__m256i *)(p), (v))

/* Eight blocks (c .. c+7 of one row) per step; returns the first column left for the scalar code. */
__attribute__((target("avx2"))) static size_t to_rowwise_avx2(const uint32_t *src, uint32_t *dst, size_t rows,
                                                               size_t cols, const uint8_t *order)
{
    /* Gathering block words in slot order: lane k <- word order[k]. */
    const __m256i gather = _mm256_setr_epi32(order[0], order[1], order[2], order[3], order[4], order[5],
                                             order[6], order[7]);
    size_t full = cols - cols % 8;
    for (size_t r = 0; r < rows; r++) {
        const uint32_t *s = src + r * cols * 8;
        uint32_t *d = dst + r * 8 * cols;
        for (size_t c = 0; c < full; c += 8) {
            const uint32_t *b = s + c * 8;
            __m256i x0 = _mm256_permutevar8x32_epi32(LOAD(b), gather);
            __m256i x1 = _mm256_permutevar8x32_epi32(LOAD(b + 8), gather);
            __m256i x2 = _mm256_permutevar8x32_epi32(LOAD(b + 16), gather);
            __m256i x3 = _mm256_permutevar8x32_epi32(LOAD(b + 24), gather);
            __m256i x4 = _mm256_permutevar8x32_epi32(LOAD(b + 32), gather);
            __m256i x5 = _mm256_permutevar8x32_epi32(LOAD(b + 40), gather);
            __m256i x6 = _mm256_permutevar8x32_epi32(LOAD(b + 48), gather);
            __m256i x7 = _mm256_permutevar8x32_epi32(LOAD(b + 56), gather);
            TRANSPOSE_WORDS(x0, x1, x2, x3, x4, x5, x6, x7); /* x_k: slot k's word of the 8 blocks */
            TRANSPOSE_NIBBLES(SWAP256, x0, x1, x2, x3, x4, x5, x6, x7); /* x_i: in-channel 8r + i */
            STORE(d + c, x0), STORE(d + cols + c, x1), STORE(d + 2 * cols + c, x2), STORE(d + 3 * cols + c, x3);
            STORE(d + 4 * cols + c, x4), STORE(d + 5 * cols + c, x5), STORE(d + 6 * cols + c, x6);
            STORE(d + 7 * cols + c, x7);
        }
    }
    return full;
}

__attribute__((target("avx2"))) static size_t to_gptq_avx2(const uint32_t *src, uint32_t *dst, size_t rows,
                                                            size_t cols, const uint8_t *order)
{
    /* Scattering slots back to block words: word j <- lane k where order[k] = j. */
    int inverse[8];
    for (int k = 0; k < 8; k++)
        inverse[order[k]] = k;
    const __m256i scatter = _mm256_setr_epi32(inverse[0], inverse[1], inverse[2], inverse[3], inverse[4],
                                              inverse[5], inverse[6], inverse[7]);
    size_t full = cols - cols % 8;
    for (size_t r = 0; r < rows; r++) {
        const uint32_t *s = src + r * 8 * cols;
        uint32_t *d = dst + r * cols * 8;
        for (size_t c = 0; c < full; c += 8) {
            __m256i x0 = LOAD(s + c), x1 = LOAD(s + cols + c), x2 = LOAD(s + 2 * cols + c);
            __m256i x3 = LOAD(s + 3 * cols + c), x4 = LOAD(s + 4 * cols + c), x5 = LOAD(s + 5 * cols + c);
            __m256i x6 = LOAD(s + 6 * cols + c), x7 = LOAD(s + 7 * cols + c);
            TRANSPOSE_NIBBLES(SWAP256, x0, x1, x2, x3, x4, x5, x6, x7); /* x_k: slot k of the 8 blocks */
            TRANSPOSE_WORDS(x0, x1, x2, x3, x4, x5, x6, x7);           /* x_j: block c + j, in slot order */
            uint32_t *b = d + c * 8;
            STORE(b, _mm256_permutevar8x32_epi32(x0, scatter));
            STORE(b + 8, _mm256_permutevar8x32_epi32(x1, scatter));
            STORE(b + 16, _mm256_permutevar8x32_epi32(x2, scatter));
            STORE(b + 24, _mm256_permutevar8x32_epi32(x3, scatter));
            STORE(b + 32, _mm256_permutevar8x32_epi32(x4, scatter));
            STORE(b + 40, _mm256_permutevar8x32_epi32(x5, scatter));
            STORE(b + 48, _mm256_permutevar8x32_epi32(x6, scatter));
            STORE(b + 56, _mm256_permutevar8x32_epi32(x7, scatter));
        }
    }
    return full;
}
#endif

static int use_avx2 = 0;

/* Both buffers hold `bytes`, are aligned for uint32_t and do not overlap (blocks are read after others are
 * written: an output over its own input would read written words); else a Python error is set. ("y*" and
 * "w*" have already refused buffers that are not contiguous.) */
static int buffers_fit(const Py_buffer *src, const Py_buffer *dst, size_t bytes)
{
    if ((size_t)src->len != bytes || (size_t)dst->len != bytes) {
        PyErr_Format(PyExc_ValueError, "expected %zu bytes in and out, got %zd and %zd", bytes, src->len, dst->len);
        return 0;
    }
    uintptr_t in = (uintptr_t)src->buf, out = (uintptr_t)dst->buf;
    if (in % 4 || out % 4) {
        PyErr_SetString(PyExc_ValueError, "buffers must be aligned to 4 bytes");
        return 0;
    }
    if (bytes && in < out + bytes && out < in + bytes) {
        PyErr_SetString(PyExc_ValueError, "the output must not overlap the input");
        return 0;
    }
    return 1;
}

typedef void (*scalar_fn)(const uint32_t *, uint32_t *, size_t, size_t, size_t, const uint8_t *);
typedef size_t (*vector_fn)(const uint32_t *, uint32_t *, size_t, size_t, const uint8_t *);

/* Parses (src, dst, rows, cols, order), checks the buffers' sizes and the order, and runs the kernel:
 * `vector` (NULL for none) where the CPU has AVX2, then `scalar` for the columns it left. */
static PyObject *run(PyObject *args, scalar_fn scalar, vector_fn vector)
{
    Py_buffer src, dst, order;
    Py_ssize_t rows, cols;
    if (!PyArg_ParseTuple(args, "y*w*nny*", &src, &dst, &rows, &cols, &order))
        return NULL;
    PyObject *result = NULL;
    int seen = 0;
    if (rows < 0 || cols < 0) {
        PyErr_SetString(PyExc_ValueError, "rows and cols must not be negative");
        goto done;
    }
    if (order.len != 8) {
        PyErr_SetString(PyExc_ValueError, "order must hold 8 bytes");
        goto done;
    }
    for (int k = 0; k < 8; k++) {
        unsigned char o = ((const unsigned char *)order.buf)[k];
        if (o > 7 || (seen & (1 << o))) {
            PyErr_SetString(PyExc_ValueError, "order must be a permutation of 0..7");
            goto done;
        }
        seen |= 1 << o;
    }
    if (cols && (size_t)rows > SIZE_MAX / 32 / (size_t)cols) {
        PyErr_SetString(PyExc_OverflowError, "rows * cols too large");
        goto done;
    }
    size_t bytes = (size_t)rows * (size_t)cols * 32;
    if (!buffers_fit(&src, &dst, bytes))
        goto done;
    if (bytes == 0) { /* nothing to move; rows may still be huge, with cols 0 */
        Py_INCREF(Py_None);
        result = Py_None;
        goto done;
    }
    uint8_t ord[8];
    memcpy(ord, order.buf, 8);
    Py_BEGIN_ALLOW_THREADS
    size_t c0 = 0;
    if (vector != NULL && use_avx2)
        c0 = vector((const uint32_t *)src.buf, (uint32_t *)dst.buf, (size_t)rows, (size_t)cols, ord);
    scalar((const uint32_t *)src.buf, (uint32_t *)dst.buf, (size_t)rows, (size_t)cols, c0, ord);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&order);
    return result;
}

#ifdef HAVE_AVX2_PATH
#define VECTOR(f) f
#else
#define VECTOR(f) NULL
#endif

/* The module's four functions: each direction, with and without the vector path. */
#define ENTRY(name, scalar, vector)                       \
    static PyObject *name(PyObject *self, PyObject *args) \
    {                                                     \
        (void)self;                                       \
        return run(args, scalar, vector);                 \
    }
ENTRY(gptq4_to_rowwise, to_rowwise_scalar, VECTOR(to_rowwise_avx2))
ENTRY(rowwise4_to_gptq, to_gptq_scalar, VECTOR(to_gptq_avx2))
ENTRY(gptq4_to_rowwise_scalar, to_rowwise_scalar, NULL)
ENTRY(rowwise4_to_gptq_scalar, to_gptq_scalar, NULL)

/* A 2-D array of 32-bit words transposed, a 32 x 32 tile at a time (a row of the source and a row of the
 * destination stay in cache; numpy's copy of a transposed view strides through one of them a word at a time).
 * Rows from r_start on, columns from c_start on, plus every column of the rows before r_start that the vector
 * path left (from c_start): what remains after transpose32_avx2. */
static void transpose32_tiles(const uint32_t *src, uint32_t *dst, size_t rows, size_t cols, size_t r_start, size_t c_start)
{
    const size_t tile = 32;
    for (size_t r0 = 0; r0 < rows; r0 += tile) {
        size_t r1 = r0 + tile < rows ? r0 + tile : rows;
        for (size_t c0 = 0; c0 < cols; c0 += tile) {
            size_t c1 = c0 + tile < cols ? c0 + tile : cols;
            for (size_t r = r0; r < r1; r++)
                for (size_t c = r < r_start ? (c0 > c_start ? c0 : c_start) : c0; c < c1; c++)
                    dst[c * rows + r] = src[r * cols + c];
        }
    }
}

#ifdef HAVE_AVX2_PATH
/* The 8 x 8 word blocks of the first rows - rows % 8 rows and cols - cols % 8 columns, through registers (eight
 * loads, TRANSPOSE_WORDS, eight stores), in 64 x 64 tiles; returns the first column it left, and sets
 * *r_left to the first row it left (transpose32_tiles does the rest). On the development VM a 7B layer's words
 * went 2.5x faster than with the scalar tiles alone. */
__attribute__((target("avx2"))) static size_t transpose32_avx2(const uint32_t *src, uint32_t *dst, size_t rows, size_t cols,
                                                                size_t *r_left)
{
    const size_t tile = 64, full_r = rows - rows % 8, full_c = cols - cols % 8;
    for (size_t r0 = 0; r0 < full_r; r0 += tile) {
        size_t r1 = r0 + tile < full_r ? r0 + tile : full_r;
        for (size_t c0 = 0; c0 < full_c; c0 += tile) {
            size_t c1 = c0 + tile < full_c ? c0 + tile : full_c;
            for (size_t r = r0; r < r1; r += 8)
                for (size_t c = c0; c < c1; c += 8) {
                    const uint32_t *s = src + r * cols + c;
                    __m256i x0 = LOAD(s), x1 = LOAD(s + cols), x2 = LOAD(s + 2 * cols), x3 = LOAD(s + 3 * cols);
                    __m256i x4 = LOAD(s + 4 * cols), x5 = LOAD(s + 5 * cols), x6 = LOAD(s + 6 * cols);
                    __m256i x7 = LOAD(s + 7 * cols);
                    TRANSPOSE_WORDS(x0, x1, x2, x3, x4, x5, x6, x7); /* x_k: column c + k of rows r .. r + 7 */
                    uint32_t *d = dst + c * rows + r;
                    STORE(d, x0), STORE(d + rows, x1), STORE(d + 2 * rows, x2), STORE(d + 3 * rows, x3);
                    STORE(d + 4 * rows, x4), STORE(d + 5 * rows, x5), STORE(d + 6 * rows, x6), STORE(d + 7 * rows, x7);
                }
        }
    }
    *r_left = full_r;
    return full_c;
}
#endif

/* transpose32(src, dst, rows, cols[, vector]): vector=False runs the scalar tiles alone (tests compare the two). */
static PyObject *transpose32(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer src, dst;
    Py_ssize_t rows, cols;
    int vector_transpose = 1;
    if (!PyArg_ParseTuple(args, "y*w*nn|p", &src, &dst, &rows, &cols, &vector_transpose))
        return NULL;
    PyObject *result = NULL;
    if (rows < 0 || cols < 0 || (cols && (size_t)rows > SIZE_MAX / 4 / (size_t)cols)) {
        PyErr_SetString(PyExc_ValueError, "bad rows or cols");
        goto done;
    }
    if (!buffers_fit(&src, &dst, (size_t)rows * (size_t)cols * 4))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    size_t r_left = 0, c_left = 0;
#ifdef HAVE_AVX2_PATH
    if (use_avx2 && vector_transpose)
        c_left = transpose32_avx2((const uint32_t *)src.buf, (uint32_t *)dst.buf, (size_t)rows, (size_t)cols, &r_left);
#endif
    transpose32_tiles((const uint32_t *)src.buf, (uint32_t *)dst.buf, (size_t)rows, (size_t)cols, r_left, c_left);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"transpose32", transpose32, METH_VARARGS,
     "transpose32(src, dst, rows, cols, vector=True): 32-bit words [rows][cols] -> [cols][rows]."},
    {"gptq4_to_rowwise", gptq4_to_rowwise, METH_VARARGS,
     "gptq4_to_rowwise(src, dst, rows, cols, order): GPTQ int32 words [rows][cols][8] -> row-wise [rows][8][cols]."},
    {"rowwise4_to_gptq", rowwise4_to_gptq, METH_VARARGS,
     "rowwise4_to_gptq(src, dst, rows, cols, order): the inverse of gptq4_to_rowwise."},
    {"gptq4_to_rowwise_scalar", gptq4_to_rowwise_scalar, METH_VARARGS,
     "gptq4_to_rowwise without the vector path (tests compare the two)."},
    {"rowwise4_to_gptq_scalar", rowwise4_to_gptq_scalar, METH_VARARGS,
     "rowwise4_to_gptq without the vector path (tests compare the two)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "woqconv._relayout",
    .m_doc = "The 4-bit GPTQ <-> row-wise re-layout in C (see packing.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__relayout(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2");
#endif
    if (PyModule_AddStringConstant(m, "vector", use_avx2 ? "avx2" : "none") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
