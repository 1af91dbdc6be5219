/* Compiled fast path of the int8/uint4/uint2 and fp16 codecs (splitpipe.kernels.quant).
 *
 * Why it exists: below a few hundred KiB a codec call's fixed cost (two numpy reductions, the
 * scale rule in Python, an ONNX Runtime run()) is many times a cached copy of the tensor. Here
 * one call does the range, the scale rule and the quantization in two passes over the data.
 *
 * The arithmetic is the one documented in quant.py, in float32 (FLT_EVAL_METHOD 0: SSE on
 * x86-64, NEON on aarch64), and the tests compare every function with the numpy references:
 *   q = clip(round_half_even(x / scale) + zero_point, qmin, qmax);  x' = (q - zero_point) * scale
 * Rounding uses the 1.5 * 2**23 trick: for |v| <= 2**22, (v + M) - M is v rounded to the nearest
 * integer, ties to even, in the default rounding mode.
 *
 * The loops are plain C that compilers vectorize (-O3 -fno-trapping-math -fopenmp-simd). With
 * GCC on x86-64 each is also compiled for AVX2 and for AVX-512 (x86-64-v4), picked at load time.
 * On the AMD EPYC development VM the quantize loop ran 1.3-1.4x faster with AVX-512 than with
 * AVX2, and about 3x faster than with baseline SSE2.
 *
 * Inputs are C-contiguous buffers checked here (format, item size, length); the Python caller
 * passes numpy arrays it has made contiguous. Nothing here reads from the network directly:
 * the decoder has checked payload lengths against the meta before calling in.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if FLT_EVAL_METHOD != 0
#error "splitpipe._cquant needs float32 arithmetic in float32 registers (FLT_EVAL_METHOD 0)"
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_F16C_DISPATCH 1
#endif

static const float ROUND_MAGIC = 12582912.0f; /* 1.5 * 2**23 */
static const float RANGE_LIMIT = 0x1p126f;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(SPLITPIPE_NO_CLONES)
#define HOT __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define HOT
#endif

/* ---- buffers ------------------------------------------------------------------------------ */

/* A C-contiguous buffer of `itemsize`-byte items; 4- and 2-byte items must be float32 ('f') and
 * float16 ('e'), 1-byte ones may be any (codes, bytes). */
static int get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    const char *fmt = view->format ? view->format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@')
        fmt++;
    const char *want = itemsize == 4 ? "f" : itemsize == 2 ? "e" : NULL;
    if (view->itemsize != itemsize || view->len % itemsize || (want && strcmp(fmt, want) != 0)) {
        PyErr_Format(PyExc_ValueError, "%s must hold %s", what,
                     itemsize == 4 ? "float32" : itemsize == 2 ? "float16" : "1-byte items");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* input and output of an elementwise call: as many items out as in */
static int get_pair(PyObject *io, Py_ssize_t in_size, const char *in_what, PyObject *oo, Py_ssize_t out_size,
                    Py_buffer *in, Py_buffer *out)
{
    if (get_buffer(io, in, 0, in_size, in_what) < 0)
        return -1;
    if (get_buffer(oo, out, 1, out_size, "out") < 0) {
        PyBuffer_Release(in);
        return -1;
    }
    if (in->len / in_size != out->len / out_size) {
        PyErr_Format(PyExc_ValueError, "out must have one item per item of %s", in_what);
        PyBuffer_Release(in);
        PyBuffer_Release(out);
        return -1;
    }
    return 0;
}

/* code range and zero point of a call: int8 or uint8 codes, qmin <= zero point <= qmax */
static int check_codes(int qmin, int qmax, int zp)
{
    if (qmin < -128 || qmax > 255 || qmin >= qmax || zp < qmin || zp > qmax) {
        PyErr_SetString(PyExc_ValueError, "need -128 <= qmin <= zero_point <= qmax <= 255 and qmin < qmax");
        return -1;
    }
    return 0;
}

static uint32_t bits_of(float v)
{
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

/* ---- kernels ------------------------------------------------------------------------------
 * Every kernel works on a tensor viewed as (outer, C, inner), C-contiguous: channel c of outer
 * block o is the row of `inner` values at (o * C + c) * inner, with its own scale and zero point.
 * Per tensor is (1, 1, n). The loop bodies are inline so that each layout function is compiled
 * (and cloned, see HOT) with its rows' loops inside it. */

/* (lo, hi) of n > 0 values; returns 1 if a value is NaN or inf (lo/hi then meaningless). The
 * simd pragma lets the compiler reorder the min/max reductions (it will not otherwise, as NaN
 * would make the order matter); NaN is caught by the bit test instead. */
static inline int range_row(const float *x, Py_ssize_t n, float *plo, float *phi)
{
    float lo = x[0], hi = x[0];
    uint32_t bad = 0;
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(| : bad)
    for (Py_ssize_t i = 0; i < n; i++) {
        float v = x[i];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
        bad |= (uint32_t)((bits_of(v) & 0x7f800000u) == 0x7f800000u);
    }
    *plo = lo;
    *phi = hi;
    return bad != 0;
}

/* v is clipped to [qmin - zp, qmax - zp] before rounding: those bounds are integers, so this is
 * the same as saturating the rounded code (rounding is monotonic), it keeps |v| <= 2**9 for the
 * rounding trick, and +-inf saturates. Returns 1 if some x is NaN or inf (the codes are written
 * all the same; those of NaN are meaningless and the caller must refuse them). Multiplying by
 * 1 / scale instead of dividing, with the check that keeps the result bit-exact, was tried and
 * was not faster. */
static inline int quantize_row(const float *restrict x, Py_ssize_t n, float scale, int zp, int qmin,
                               int qmax, uint8_t *restrict out)
{
    const float lo = (float)(qmin - zp), hi = (float)(qmax - zp);
    uint32_t bad = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        bad |= (uint32_t)((bits_of(x[i]) & 0x7f800000u) == 0x7f800000u);
        float v = x[i] / scale;
        v = v > lo ? v : lo;
        v = v < hi ? v : hi;
        out[i] = (uint8_t)(int8_t)((int)((v + ROUND_MAGIC) - ROUND_MAGIC) + zp);
    }
    return bad != 0;
}

static inline void dequantize_row(const uint8_t *restrict q, Py_ssize_t n, float scale, int zp,
                                  int is_signed, float *restrict out)
{
    if (is_signed) {
        const int8_t *s = (const int8_t *)q;
        for (Py_ssize_t i = 0; i < n; i++)
            out[i] = (float)((int32_t)s[i] - zp) * scale;
    } else {
        for (Py_ssize_t i = 0; i < n; i++)
            out[i] = (float)((int32_t)q[i] - zp) * scale;
    }
}

typedef struct {
    Py_ssize_t outer, channels, inner;
} Layout;

/* per-channel ranges (inner > 0); 1 if a value is NaN or inf */
HOT static int range_layout(const float *x, Layout d, float *lo, float *hi)
{
    int bad = 0;
    for (Py_ssize_t o = 0; o < d.outer; o++)
        for (Py_ssize_t c = 0; c < d.channels; c++) {
            float l, h;
            bad |= range_row(x + (o * d.channels + c) * d.inner, d.inner, &l, &h);
            if (o == 0 || l < lo[c])
                lo[c] = l;
            if (o == 0 || h > hi[c])
                hi[c] = h;
        }
    return bad;
}

HOT static int quantize_layout(const float *x, Layout d, const float *scale, const int *zp, int qmin,
                               int qmax, uint8_t *out)
{
    int bad = 0;
    for (Py_ssize_t o = 0; o < d.outer; o++)
        for (Py_ssize_t c = 0; c < d.channels; c++) {
            Py_ssize_t at = (o * d.channels + c) * d.inner;
            bad |= quantize_row(x + at, d.inner, scale[c], zp[c], qmin, qmax, out + at);
        }
    return bad;
}

HOT static void dequantize_layout(const uint8_t *q, Layout d, const float *scale, const int *zp,
                                  int is_signed, float *out)
{
    for (Py_ssize_t o = 0; o < d.outer; o++)
        for (Py_ssize_t c = 0; c < d.channels; c++) {
            Py_ssize_t at = (o * d.channels + c) * d.inner;
            dequantize_row(q + at, d.inner, scale[c], zp[c], is_signed, out + at);
        }
}

/* 1 if any of n values is NaN */
static int any_nan(const float *x, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (x[i] != x[i])
            return 1;
    return 0;
}

/* quant.params_scalar in C: the same float32 operations in the same order */
static inline void params(float lo, float hi, int qmin, int qmax, int symmetric, float *pscale, int *pzp)
{
    float lo32 = lo < 0.0f ? lo : 0.0f;
    float hi32 = hi > 0.0f ? hi : 0.0f;
    lo32 = lo32 > -RANGE_LIMIT ? lo32 : -RANGE_LIMIT;
    hi32 = hi32 < RANGE_LIMIT ? hi32 : RANGE_LIMIT;
    float scale;
    if (symmetric) {
        float amax = hi32 > -lo32 ? hi32 : -lo32;
        scale = amax > 0.0f ? amax / (float)qmax : 1.0f;
    } else {
        scale = hi32 != lo32 ? (hi32 - lo32) / (float)(qmax - qmin) : 1.0f;
    }
    if (scale < FLT_MIN)
        scale = FLT_MIN;
    *pscale = scale;
    if (symmetric) {
        *pzp = 0;
        return;
    }
    float initial = (float)qmin - lo32 / scale;
    initial = initial < (float)qmin ? (float)qmin : initial;
    initial = initial > (float)qmax ? (float)qmax : initial;
    *pzp = (int)((initial + ROUND_MAGIC) - ROUND_MAGIC);
}

/* the scale rule for every channel: lo[c], hi[c] -> scale[c], zp[c] (a loop the compiler
 * vectorizes, where one call per channel was a third of a small per-channel encode) */
HOT static void params_channels(const float *restrict lo, const float *restrict hi, Py_ssize_t nch,
                                int qmin, int qmax, int symmetric, float *restrict scale,
                                int *restrict zp)
{
    for (Py_ssize_t c = 0; c < nch; c++)
        params(lo[c], hi[c], qmin, qmax, symmetric, &scale[c], &zp[c]);
}

/* ---- per tensor ----------------------------------------------------------------------------- */

/* quantize_dynamic(x float32, qmin, qmax, symmetric) -> (codes: bytes, scale, zero_point), or
 * None when x holds NaN or inf (the caller's numpy path handles those). x must not be empty. */
static PyObject *py_quantize_dynamic(PyObject *self, PyObject *args)
{
    PyObject *obj;
    int qmin, qmax, symmetric;
    if (!PyArg_ParseTuple(args, "Oiip", &obj, &qmin, &qmax, &symmetric) || check_codes(qmin, qmax, qmin) < 0)
        return NULL;
    Py_buffer x;
    if (get_buffer(obj, &x, 0, 4, "x") < 0)
        return NULL;
    Py_ssize_t n = x.len / 4;
    if (n == 0) {
        PyBuffer_Release(&x);
        PyErr_SetString(PyExc_ValueError, "x is empty");
        return NULL;
    }
    PyObject *codes = PyBytes_FromStringAndSize(NULL, n);
    if (codes == NULL) {
        PyBuffer_Release(&x);
        return NULL;
    }
    Layout d = {1, 1, n};
    float lo, hi, scale;
    int zp, bad;
    Py_BEGIN_ALLOW_THREADS;
    bad = range_layout((const float *)x.buf, d, &lo, &hi);
    if (!bad) {
        params(lo, hi, qmin, qmax, symmetric, &scale, &zp);
        (void)quantize_layout((const float *)x.buf, d, &scale, &zp, qmin, qmax,
                              (uint8_t *)PyBytes_AS_STRING(codes));
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&x);
    if (bad) {
        Py_DECREF(codes);
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(Ndi)", codes, (double)scale, zp);
}

/* params(lo, hi, qmin, qmax, symmetric) -> (scale, zero_point): the C scale rule alone, so
 * that tests can compare it with quant.params_scalar on any range */
static PyObject *py_params(PyObject *self, PyObject *args)
{
    float lo, hi, scale;
    int qmin, qmax, symmetric, zp;
    if (!PyArg_ParseTuple(args, "ffiip", &lo, &hi, &qmin, &qmax, &symmetric))
        return NULL;
    params(lo, hi, qmin, qmax, symmetric, &scale, &zp);
    return Py_BuildValue("(di)", (double)scale, zp);
}

/* quantize(x float32, out 1-byte, scale, zero_point, qmin, qmax) -> bool: False (out unset)
 * when x holds NaN, which no code represents; +-inf saturates */
static PyObject *py_quantize(PyObject *self, PyObject *args)
{
    PyObject *xo, *oo;
    float scale;
    int zp, qmin, qmax;
    if (!PyArg_ParseTuple(args, "OOfiii", &xo, &oo, &scale, &zp, &qmin, &qmax) || check_codes(qmin, qmax, zp) < 0)
        return NULL;
    if (!(scale > 0.0f) || isinf(scale)) {
        PyErr_SetString(PyExc_ValueError, "scale must be finite and positive");
        return NULL;
    }
    Py_buffer x, out;
    if (get_pair(xo, 4, "x", oo, 1, &x, &out) < 0)
        return NULL;
    Py_ssize_t n = x.len / 4;
    const float *xs = (const float *)x.buf;
    Layout d = {1, 1, n};
    int nan;
    Py_BEGIN_ALLOW_THREADS;
    nan = quantize_layout(xs, d, &scale, &zp, qmin, qmax, (uint8_t *)out.buf) && any_nan(xs, n);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return PyBool_FromLong(!nan);
}

/* dequantize(codes 1-byte, out float32, scale, zero_point, signed) -> None */
static PyObject *py_dequantize(PyObject *self, PyObject *args)
{
    PyObject *qo, *oo;
    float scale;
    int zp, is_signed;
    if (!PyArg_ParseTuple(args, "OOfip", &qo, &oo, &scale, &zp, &is_signed))
        return NULL;
    Py_buffer q, out;
    if (get_pair(qo, 1, "codes", oo, 4, &q, &out) < 0)
        return NULL;
    Layout d = {1, 1, q.len};
    Py_BEGIN_ALLOW_THREADS;
    dequantize_layout((const uint8_t *)q.buf, d, &scale, &zp, is_signed, (float *)out.buf);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&q);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* ---- per channel ---------------------------------------------------------------------------
 * dims = (outer, C, inner). Scales travel as C little-endian float32 (bytes), zero points as C
 * bytes (uint8, or int8 two's complement for /sym). */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "per-channel scales are read and written as little-endian float32"
#endif

static int parse_dims(PyObject *dims, Py_ssize_t n, Layout *d)
{
    if (!PyArg_ParseTuple(dims, "nnn", &d->outer, &d->channels, &d->inner))
        return -1;
    /* each product checked against n before it is formed: no overflow */
    if (d->outer < 1 || d->channels < 1 || d->inner < 1 || d->outer > n / d->channels ||
        d->outer * d->channels > n / d->inner || d->outer * d->channels * d->inner != n) {
        PyErr_SetString(PyExc_ValueError, "dims must be positive (outer, channels, inner) with a product of the element count");
        return -1;
    }
    return 0;
}

/* quantize_dynamic_ch(x float32, (outer, C, inner), qmin, qmax, symmetric)
 *   -> (codes: bytes, scales: bytes, zero_points: bytes), or None when x holds NaN or inf */
static PyObject *py_quantize_dynamic_ch(PyObject *self, PyObject *args)
{
    PyObject *obj, *dims;
    int qmin, qmax, symmetric;
    if (!PyArg_ParseTuple(args, "OO!iip", &obj, &PyTuple_Type, &dims, &qmin, &qmax, &symmetric) ||
        check_codes(qmin, qmax, qmin) < 0)
        return NULL;
    Py_buffer x;
    if (get_buffer(obj, &x, 0, 4, "x") < 0)
        return NULL;
    Layout d;
    if (parse_dims(dims, x.len / 4, &d) < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    Py_ssize_t n = x.len / 4, nch = d.channels;
    PyObject *codes = PyBytes_FromStringAndSize(NULL, n);
    PyObject *scales = PyBytes_FromStringAndSize(NULL, 4 * nch);
    PyObject *zps = PyBytes_FromStringAndSize(NULL, nch);
    float *lo = PyMem_Malloc(3 * nch * sizeof(float));
    int *zi = PyMem_Malloc(nch * sizeof(int));
    if (codes == NULL || scales == NULL || zps == NULL || lo == NULL || zi == NULL) {
        Py_XDECREF(codes);
        Py_XDECREF(scales);
        Py_XDECREF(zps);
        PyMem_Free(lo);
        PyMem_Free(zi);
        PyBuffer_Release(&x);
        return PyErr_NoMemory();
    }
    float *hi = lo + nch, *sc = hi + nch;
    const float *xs = (const float *)x.buf;
    int bad;
    Py_BEGIN_ALLOW_THREADS;
    bad = range_layout(xs, d, lo, hi);
    if (!bad) {
        params_channels(lo, hi, nch, qmin, qmax, symmetric, sc, zi);
        memcpy(PyBytes_AS_STRING(scales), sc, 4 * nch);
        for (Py_ssize_t c = 0; c < nch; c++)
            PyBytes_AS_STRING(zps)[c] = (char)(int8_t)zi[c];
        (void)quantize_layout(xs, d, sc, zi, qmin, qmax, (uint8_t *)PyBytes_AS_STRING(codes));
    }
    Py_END_ALLOW_THREADS;
    PyMem_Free(lo);
    PyMem_Free(zi);
    PyBuffer_Release(&x);
    if (bad) {
        Py_DECREF(codes);
        Py_DECREF(scales);
        Py_DECREF(zps);
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(NNN)", codes, scales, zps);
}

/* C scales (little-endian float32 bytes, each finite and positive) and zero points (bytes) into
 * arrays the kernels take; *scale is freed with PyMem_Free (the zero points live after it) */
static int channel_params(PyObject *so, PyObject *zo, Py_ssize_t nch, int is_signed, int qmin, int qmax,
                          float **scale, int **zp)
{
    Py_buffer s, z;
    if (get_buffer(so, &s, 0, 1, "scales") < 0)
        return -1;
    if (get_buffer(zo, &z, 0, 1, "zero_points") < 0) {
        PyBuffer_Release(&s);
        return -1;
    }
    int rc = -1;
    if (s.len != 4 * nch || z.len != nch) {
        PyErr_SetString(PyExc_ValueError, "scales must hold 4 bytes and zero_points 1 byte per channel");
        goto done;
    }
    *scale = PyMem_Malloc(nch * (sizeof(float) + sizeof(int)));
    if (*scale == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    *zp = (int *)(*scale + nch);
    memcpy(*scale, s.buf, 4 * nch);
    for (Py_ssize_t c = 0; c < nch; c++) {
        uint8_t b = ((const uint8_t *)z.buf)[c];
        (*zp)[c] = is_signed ? (int)(int8_t)b : (int)b;
        if (!((*scale)[c] > 0.0f) || isinf((*scale)[c]) || (*zp)[c] < qmin || (*zp)[c] > qmax) {
            PyErr_SetString(PyExc_ValueError, "scales must be finite and positive, zero points within the codes");
            PyMem_Free(*scale);
            goto done;
        }
    }
    rc = 0;
done:
    PyBuffer_Release(&s);
    PyBuffer_Release(&z);
    return rc;
}

/* quantize_ch(x float32, out 1-byte, (outer, C, inner), scales, zero_points, qmin, qmax, symmetric)
 *   -> bool: False (out unset) when x holds NaN */
static PyObject *py_quantize_ch(PyObject *self, PyObject *args)
{
    PyObject *xo, *oo, *dims, *so, *zo;
    int qmin, qmax, symmetric;
    if (!PyArg_ParseTuple(args, "OOO!OOiip", &xo, &oo, &PyTuple_Type, &dims, &so, &zo, &qmin, &qmax, &symmetric) ||
        check_codes(qmin, qmax, qmin) < 0)
        return NULL;
    Py_buffer x, out;
    if (get_pair(xo, 4, "x", oo, 1, &x, &out) < 0)
        return NULL;
    Py_ssize_t n = x.len / 4;
    Layout d;
    float *scale = NULL;
    int *zp = NULL, nan = 0, ok = 0;
    if (parse_dims(dims, n, &d) == 0 && channel_params(so, zo, d.channels, symmetric, qmin, qmax, &scale, &zp) == 0) {
        const float *xs = (const float *)x.buf;
        Py_BEGIN_ALLOW_THREADS;
        nan = quantize_layout(xs, d, scale, zp, qmin, qmax, (uint8_t *)out.buf) && any_nan(xs, n);
        Py_END_ALLOW_THREADS;
        PyMem_Free(scale);
        ok = 1;
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    if (!ok)
        return NULL;
    return PyBool_FromLong(!nan);
}

/* dequantize_ch(codes 1-byte, out float32, (outer, C, inner), scales, zero_points, signed) -> None */
static PyObject *py_dequantize_ch(PyObject *self, PyObject *args)
{
    PyObject *qo, *oo, *dims, *so, *zo;
    int is_signed;
    if (!PyArg_ParseTuple(args, "OOO!OOp", &qo, &oo, &PyTuple_Type, &dims, &so, &zo, &is_signed))
        return NULL;
    Py_buffer q, out;
    if (get_pair(qo, 1, "codes", oo, 4, &q, &out) < 0)
        return NULL;
    Layout d;
    float *scale = NULL;
    int *zp = NULL, ok = 0;
    if (parse_dims(dims, q.len, &d) == 0 &&
        channel_params(so, zo, d.channels, is_signed, is_signed ? -128 : 0, is_signed ? 127 : 255, &scale, &zp) == 0) {
        Py_BEGIN_ALLOW_THREADS;
        dequantize_layout((const uint8_t *)q.buf, d, scale, zp, is_signed, (float *)out.buf);
        Py_END_ALLOW_THREADS;
        PyMem_Free(scale);
        ok = 1;
    }
    PyBuffer_Release(&q);
    PyBuffer_Release(&out);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- bit packing (4- and 2-bit codes; splitpipe.kernels.pack documents the layout) ------- */

HOT static void pack_run(const uint8_t *restrict c, Py_ssize_t n, int bits, uint8_t *restrict out)
{
    const uint8_t mask = (uint8_t)((1u << bits) - 1u);
    int per = 8 / bits;
    Py_ssize_t full = n / per;
    if (bits == 4) {
        for (Py_ssize_t j = 0; j < full; j++)
            out[j] = (uint8_t)((c[2 * j] & mask) | (c[2 * j + 1] & mask) << 4);
    } else {
        for (Py_ssize_t j = 0; j < full; j++)
            out[j] = (uint8_t)((c[4 * j] & mask) | (c[4 * j + 1] & mask) << 2 | (c[4 * j + 2] & mask) << 4 |
                               (c[4 * j + 3] & mask) << 6);
    }
    if (full * per < n) { /* the last byte, its high bits zero */
        uint8_t b = 0;
        for (Py_ssize_t i = full * per; i < n; i++)
            b |= (uint8_t)((c[i] & mask) << (bits * (i - full * per)));
        out[full] = b;
    }
}

/* byte -> its four 2-bit codes as four bytes, in memory order (filled when the module loads) */
static uint32_t UNPACK2[256];

static void fill_unpack2(void)
{
    for (int b = 0; b < 256; b++) {
        uint8_t four[4] = {(uint8_t)(b & 3), (uint8_t)((b >> 2) & 3), (uint8_t)((b >> 4) & 3), (uint8_t)(b >> 6)};
        memcpy(&UNPACK2[b], four, 4);
    }
}

/* returns 1 if the padding bits after the last code are not zero */
HOT static int unpack_run(const uint8_t *restrict p, Py_ssize_t n, int bits, uint8_t *restrict out)
{
    const uint8_t mask = (uint8_t)((1u << bits) - 1u);
    int per = 8 / bits;
    Py_ssize_t full = n / per;
    if (bits == 4) {
        for (Py_ssize_t j = 0; j < full; j++) {
            out[2 * j] = p[j] & mask;
            out[2 * j + 1] = p[j] >> 4;
        }
    } else { /* four codes per byte: one table lookup writes all four (the shifts did not vectorize) */
        for (Py_ssize_t j = 0; j < full; j++)
            memcpy(out + 4 * j, &UNPACK2[p[j]], 4);
    }
    Py_ssize_t rest = n - full * per;
    if (rest == 0)
        return 0;
    uint8_t b = p[full];
    for (Py_ssize_t i = 0; i < rest; i++)
        out[full * per + i] = (b >> (bits * i)) & mask;
    return (b >> (bits * rest)) != 0;
}

static int check_bits(int bits)
{
    if (bits != 4 && bits != 2) {
        PyErr_SetString(PyExc_ValueError, "bits must be 4 or 2");
        return -1;
    }
    return 0;
}

/* pack(codes 1-byte, bits) -> bytes of ceil(n * bits / 8) */
static PyObject *py_pack(PyObject *self, PyObject *args)
{
    PyObject *co;
    int bits;
    if (!PyArg_ParseTuple(args, "Oi", &co, &bits) || check_bits(bits) < 0)
        return NULL;
    Py_buffer c;
    if (get_buffer(co, &c, 0, 1, "codes") < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (c.len * bits + 7) / 8);
    if (out != NULL) {
        Py_BEGIN_ALLOW_THREADS;
        pack_run((const uint8_t *)c.buf, c.len, bits, (uint8_t *)PyBytes_AS_STRING(out));
        Py_END_ALLOW_THREADS;
    }
    PyBuffer_Release(&c);
    return out;
}

/* unpack(packed 1-byte, bits, out 1-byte of the code count) -> bool: False if padding bits are
 * set; ValueError if the packed length does not match the count */
static PyObject *py_unpack(PyObject *self, PyObject *args)
{
    PyObject *po, *oo;
    int bits;
    if (!PyArg_ParseTuple(args, "OiO", &po, &bits, &oo) || check_bits(bits) < 0)
        return NULL;
    Py_buffer p, out;
    if (get_buffer(po, &p, 0, 1, "packed") < 0)
        return NULL;
    if (get_buffer(oo, &out, 1, 1, "out") < 0) {
        PyBuffer_Release(&p);
        return NULL;
    }
    int ok = p.len == (out.len * bits + 7) / 8, padding = 0;
    if (ok) {
        Py_BEGIN_ALLOW_THREADS;
        padding = unpack_run((const uint8_t *)p.buf, out.len, bits, (uint8_t *)out.buf);
        Py_END_ALLOW_THREADS;
    } else {
        PyErr_SetString(PyExc_ValueError, "packed length does not match the code count");
    }
    PyBuffer_Release(&p);
    PyBuffer_Release(&out);
    if (!ok)
        return NULL;
    return PyBool_FromLong(!padding);
}

/* ---- float16 -------------------------------------------------------------------------------- */

#if defined(HAVE_F16C_DISPATCH)
__attribute__((target("avx,f16c"))) static void to_f16_run(const float *x, uint16_t *h, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        h[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

__attribute__((target("avx,f16c"))) static void from_f16_run(const uint16_t *h, float *x, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++)
        x[i] = _cvtsh_ss(h[i]);
}

static int have_f16c(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
}
#define F16_AVAILABLE have_f16c()
#elif defined(__aarch64__)
/* aarch64 has float16 conversions in its base instruction set (fcvt / fcvtl / fcvtn) */
static void to_f16_run(const float *x, uint16_t *h, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        __fp16 v = (__fp16)x[i];
        memcpy(h + i, &v, 2);
    }
}
static void from_f16_run(const uint16_t *h, float *x, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        __fp16 v;
        memcpy(&v, h + i, 2);
        x[i] = (float)v;
    }
}
#define F16_AVAILABLE 1
#else
/* no conversion instructions: f16_convert refuses before it would call these */
static void to_f16_run(const float *x, uint16_t *h, Py_ssize_t n) { (void)x, (void)h, (void)n; }
static void from_f16_run(const uint16_t *h, float *x, Py_ssize_t n) { (void)x, (void)h, (void)n; }
#define F16_AVAILABLE 0
#endif

static int f16_ok = 0;

/* to_f16(x float32, out 2-byte) / from_f16(h 2-byte, out float32): IEEE round to nearest even */
static PyObject *f16_convert(PyObject *args, int to_half)
{
    PyObject *io, *oo;
    if (!PyArg_ParseTuple(args, "OO", &io, &oo))
        return NULL;
    if (!f16_ok) {
        PyErr_SetString(PyExc_RuntimeError, "no float16 conversion instructions on this CPU");
        return NULL;
    }
    Py_buffer in, out;
    if (get_pair(io, to_half ? 4 : 2, "input", oo, to_half ? 2 : 4, &in, &out) < 0)
        return NULL;
    Py_ssize_t n = in.len / in.itemsize;
    Py_BEGIN_ALLOW_THREADS;
    if (to_half)
        to_f16_run((const float *)in.buf, (uint16_t *)out.buf, n);
    else
        from_f16_run((const uint16_t *)in.buf, (float *)out.buf, n);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyObject *py_to_f16(PyObject *self, PyObject *args) { return f16_convert(args, 1); }
static PyObject *py_from_f16(PyObject *self, PyObject *args) { return f16_convert(args, 0); }

static PyMethodDef methods[] = {
    {"quantize_dynamic", py_quantize_dynamic, METH_VARARGS, "per-tensor range, scale rule and codes"},
    {"params", py_params, METH_VARARGS, "the per-tensor scale rule"},
    {"quantize", py_quantize, METH_VARARGS, "codes with a given scale and zero point"},
    {"dequantize", py_dequantize, METH_VARARGS, "(codes - zero_point) * scale"},
    {"quantize_dynamic_ch", py_quantize_dynamic_ch, METH_VARARGS, "per-channel ranges, scale rule and codes"},
    {"quantize_ch", py_quantize_ch, METH_VARARGS, "per-channel codes with given scales"},
    {"dequantize_ch", py_dequantize_ch, METH_VARARGS, "per-channel (codes - zero_point) * scale"},
    {"pack", py_pack, METH_VARARGS, "4- or 2-bit codes into bytes"},
    {"unpack", py_unpack, METH_VARARGS, "bytes into 4- or 2-bit codes"},
    {"to_f16", py_to_f16, METH_VARARGS, "float32 -> float16 bits"},
    {"from_f16", py_from_f16, METH_VARARGS, "float16 bits -> float32"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cquant", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cquant(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    f16_ok = F16_AVAILABLE;
    fill_unpack2();
    if (PyModule_AddIntConstant(m, "HAS_F16", f16_ok) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
