/* Kernels for CPU decoding, called from Python through ctypes (nn/native.py).

   int8_linear   y = x @ (w * scale).T + bias for a few rows of x (nn/quant.py)
   f32_linear    the same for float32 weights (output heads of decode steps)
   gguf_linear   the same for GGUF blocks as stored (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K,
                 Q6_K; nn/gguf_linear.py)
   llama_layer   one whole Llama decoder layer for one new token per row (a decode step,
   gpt_layer     generation/native_decode.py), the PyTorch layer's arithmetic in one call;
                 the same for a GPT-2 layer

   Weights are int8 (N, K) row-major with one float32 scale per output row, float32, or rows of
   llama.cpp's blocks of 32 (the decode layer takes any); activations, norms, RoPE, attention and the KV cache are
   float32. A batch-1 decode step reads every weight once, so its speed is the memory bandwidth
   over the weight bytes: int8 moves a quarter of fp32's. The rest of a layer (norms, RoPE,
   attention over the cache, SwiGLU) is a few microseconds of arithmetic that PyTorch spreads
   over ~40 small ops with several microseconds of dispatch each; doing it in one call is what
   lets a step run at the speed of its weight bytes. */

#include <math.h>
#include <stdint.h>
#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
#include <stdlib.h>
#include <string.h>

#include "parallel.h"

/* ---- matrix x few-vectors ------------------------------------------------------------------
   Rows are taken four at a time and split across threads in contiguous ranges (parallel.h:
   OpenMP's, or a pthread pool where the compiler has no OpenMP); each
   block of four rows is streamed from memory once (with a software prefetch ahead, which the
   hardware prefetcher alone does not reach) and reused from L1 for every row of x.
   dot4_int8 / dot4_f32: out[i] = x . row i, for the four rows r, r + K, r + 2K, r + 3K. */

#define PREFETCH_AHEAD 8192 /* bytes; 4-16 KiB measured best on an AVX-512 Xeon */

#if defined(__AVX2__)
/* the sum of a vector's 8 lanes */
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__)
/* acc += 16 weights (int8, widened to float32) * 16 activations */
static inline __m512 fma16(const int8_t *w, const float *x, __m512 acc) {
    __m128i q = _mm_loadu_si128((const __m128i *)w);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), _mm512_loadu_ps(x), acc);
}

static void dot4_int8(const void *rows, int64_t K, const float *x, float out[4]) {
    const int8_t *r = rows;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        if ((k & 63) == 0) /* one prefetch per 64-byte line */
            for (int i = 0; i < 4; i++)
                _mm_prefetch((const char *)(r + i * K + k) + PREFETCH_AHEAD, _MM_HINT_T0);
        a0 = fma16(r + k, x + k, a0);
        a1 = fma16(r + K + k, x + k, a1);
        a2 = fma16(r + 2 * K + k, x + k, a2);
        a3 = fma16(r + 3 * K + k, x + k, a3);
    }
    out[0] = _mm512_reduce_add_ps(a0);
    out[1] = _mm512_reduce_add_ps(a1);
    out[2] = _mm512_reduce_add_ps(a2);
    out[3] = _mm512_reduce_add_ps(a3);
    for (; k < K; k++)
        for (int i = 0; i < 4; i++) out[i] += x[k] * (float)r[i * K + k];
}

static void dot4_f32(const void *rows, int64_t K, const float *x, float out[4]) {
    const float *r = rows;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        for (int i = 0; i < 4; i++)
            _mm_prefetch((const char *)(r + i * K + k) + PREFETCH_AHEAD, _MM_HINT_T0);
        __m512 xv = _mm512_loadu_ps(x + k);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r + k), xv, a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(r + K + k), xv, a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 2 * K + k), xv, a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 3 * K + k), xv, a3);
    }
    out[0] = _mm512_reduce_add_ps(a0);
    out[1] = _mm512_reduce_add_ps(a1);
    out[2] = _mm512_reduce_add_ps(a2);
    out[3] = _mm512_reduce_add_ps(a3);
    for (; k < K; k++)
        for (int i = 0; i < 4; i++) out[i] += x[k] * r[i * K + k];
}

/* out[b][i] = x_b . row i for four rows and four rows of x (x0, x0 + ldx, ...): each weight
   load feeds four FMAs and each activation load four, where dot4 does five loads for four
   FMAs; what a batch of rows (several sequences decoding together) runs at. */
#define HAVE_DOT4X4 1
static void dot4x4_f32(const float *r, int64_t K, const float *x, int64_t ldx,
                       float out[4][4]) {
    __m512 acc[4][4];
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 4; i++) acc[b][i] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        for (int i = 0; i < 4; i++)
            _mm_prefetch((const char *)(r + i * K + k) + PREFETCH_AHEAD, _MM_HINT_T0);
        __m512 w0 = _mm512_loadu_ps(r + k), w1 = _mm512_loadu_ps(r + K + k);
        __m512 w2 = _mm512_loadu_ps(r + 2 * K + k), w3 = _mm512_loadu_ps(r + 3 * K + k);
        for (int b = 0; b < 4; b++) {
            __m512 xv = _mm512_loadu_ps(x + b * ldx + k);
            acc[b][0] = _mm512_fmadd_ps(w0, xv, acc[b][0]);
            acc[b][1] = _mm512_fmadd_ps(w1, xv, acc[b][1]);
            acc[b][2] = _mm512_fmadd_ps(w2, xv, acc[b][2]);
            acc[b][3] = _mm512_fmadd_ps(w3, xv, acc[b][3]);
        }
    }
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 4; i++) {
            float v = _mm512_reduce_add_ps(acc[b][i]);
            for (int64_t j = k; j < K; j++) v += x[b * ldx + j] * r[i * K + j];
            out[b][i] = v;
        }
}
#elif defined(__AVX2__) && defined(__FMA__)
/* AVX2 + FMA (every x86-64 CPU since Haswell / Zen 1 without AVX-512): the same loops at 8
   lanes, two accumulators per row so that two FMAs are in flight per row */

/* 8 int8 weights widened to float32 */
static inline __m256 widen8(const int8_t *w) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)w)));
}

static void dot4_int8(const void *rows, int64_t K, const float *x, float out[4]) {
    const int8_t *r = rows;
    __m256 a[4], b[4];
    for (int i = 0; i < 4; i++) a[i] = b[i] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        if ((k & 63) == 0)
            for (int i = 0; i < 4; i++)
                _mm_prefetch((const char *)(r + i * K + k) + PREFETCH_AHEAD, _MM_HINT_T0);
        __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
        for (int i = 0; i < 4; i++) {
            a[i] = _mm256_fmadd_ps(widen8(r + i * K + k), x0, a[i]);
            b[i] = _mm256_fmadd_ps(widen8(r + i * K + k + 8), x1, b[i]);
        }
    }
    for (int i = 0; i < 4; i++) out[i] = hsum8(_mm256_add_ps(a[i], b[i]));
    for (; k < K; k++)
        for (int i = 0; i < 4; i++) out[i] += x[k] * (float)r[i * K + k];
}

static void dot4_f32(const void *rows, int64_t K, const float *x, float out[4]) {
    const float *r = rows;
    __m256 a[4], b[4];
    for (int i = 0; i < 4; i++) a[i] = b[i] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        for (int i = 0; i < 4; i++)
            _mm_prefetch((const char *)(r + i * K + k) + PREFETCH_AHEAD, _MM_HINT_T0);
        __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
        for (int i = 0; i < 4; i++) {
            a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(r + i * K + k), x0, a[i]);
            b[i] = _mm256_fmadd_ps(_mm256_loadu_ps(r + i * K + k + 8), x1, b[i]);
        }
    }
    for (int i = 0; i < 4; i++) out[i] = hsum8(_mm256_add_ps(a[i], b[i]));
    for (; k < K; k++)
        for (int i = 0; i < 4; i++) out[i] += x[k] * r[i * K + k];
}

#define HAVE_DOT4X4 1
static void dot4x4_f32(const float *r, int64_t K, const float *x, int64_t ldx,
                       float out[4][4]) {
    __m256 acc[4][4];
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 4; i++) acc[b][i] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        if ((k & 15) == 0)
            for (int i = 0; i < 4; i++)
                _mm_prefetch((const char *)(r + i * K + k) + PREFETCH_AHEAD, _MM_HINT_T0);
        __m256 w0 = _mm256_loadu_ps(r + k), w1 = _mm256_loadu_ps(r + K + k);
        __m256 w2 = _mm256_loadu_ps(r + 2 * K + k), w3 = _mm256_loadu_ps(r + 3 * K + k);
        for (int b = 0; b < 4; b++) {
            __m256 xv = _mm256_loadu_ps(x + b * ldx + k);
            acc[b][0] = _mm256_fmadd_ps(w0, xv, acc[b][0]);
            acc[b][1] = _mm256_fmadd_ps(w1, xv, acc[b][1]);
            acc[b][2] = _mm256_fmadd_ps(w2, xv, acc[b][2]);
            acc[b][3] = _mm256_fmadd_ps(w3, xv, acc[b][3]);
        }
    }
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 4; i++) {
            float v = hsum8(acc[b][i]);
            for (int64_t j = k; j < K; j++) v += x[b * ldx + j] * r[i * K + j];
            out[b][i] = v;
        }
}
#else
/* portable versions: the compiler vectorizes the inner loops */
static void dot4_int8(const void *rows, int64_t K, const float *x, float out[4]) {
    const int8_t *r = rows;
    for (int i = 0; i < 4; i++) {
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < K; k++) acc += x[k] * (float)r[i * K + k];
        out[i] = acc;
    }
}

static void dot4_f32(const void *rows, int64_t K, const float *x, float out[4]) {
    const float *r = rows;
    for (int i = 0; i < 4; i++) {
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < K; k++) acc += x[k] * r[i * K + k];
        out[i] = acc;
    }
}
#endif


/* ---- GGUF blocks of 32 weights, read as stored ---------------------------------------------
   Q8_0: fp16 d, 32 int8 q            w = d * q
   Q4_0: fp16 d, 16 bytes             w = d * (q - 8)   q: element j in the low nibble of
   Q4_1: fp16 d, fp16 m, 16 bytes     w = d * q + m        byte j, element j + 16 in the high
   K-quants: super-blocks of 256 (nn/gguf_blocks.py has every layout)
   Q5_0: fp16 d, 4 bytes of fifth bits, 16 bytes   w = d * (q - 16)    (Q4_0's nibbles, plus
   Q5_1: fp16 d, fp16 m, 4 bytes, 16 bytes          w = d * q + m         bit j of the 4 bytes)
   Q4_K: fp16 d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes   w = d*sc*q - dmin*mn
   Q5_K: as Q4_K with 32 bytes of fifth bits before the nibbles (bit s of byte l: weight l of
         sub-block s)
   Q6_K: 128 bytes low 4 bits, 64 bytes high 2 bits, 16 int8 scales, d  w = d*sc*(q - 32)
   A row of K weights is K / 32 blocks (K / 256 for K-quants). Each weight is widened to float32 in registers and
   multiplied in float32 (no second rounding of the activations, unlike an int8 dot product):
   the result is the dequantize-then-matmul result up to float32 summation order, and a
   batch-1 step reads 4.5-8.5 bits per weight instead of int8's 8 or fp32's 32. */
enum { FMT_F32 = 0, FMT_INT8 = 1, FMT_Q8_0 = 2, FMT_Q4_0 = 3, FMT_Q4_1 = 4, FMT_Q4_K = 5,
       FMT_Q6_K = 6, FMT_F32_PANELS = 7, FMT_Q5_0 = 8, FMT_Q5_1 = 9, FMT_Q5_K = 10 };
/* a flag on a block format: round the activations to 8 bits and multiply integers (act8.h);
   a build without those kernels multiplies in float32 instead (act8_block_formats says which
   formats have them, so Python never asks a build that lacks them) */
#define FMT_ACT8 256
/* ...for fewer rows of x than this where the build has no batch kernel (act8.h's is AVX-512
   VNNI): there, at 4 and more rows, the float kernels, which widen each block once for several
   rows, are faster than the one-row integer kernel (3072 x 1536 Q5_0 at 8 rows: 393 vs 607 us;
   at 1 row 201 vs 114 us) */
#define ACT8_MAX_ROWS 4

static int64_t block_bytes(int64_t fmt) {
    switch (fmt) {
    case FMT_Q8_0: return 34;
    case FMT_Q4_0: return 18;
    case FMT_Q4_1: return 20;
    case FMT_Q5_0: return 22;
    case FMT_Q5_1: return 24;
    case FMT_Q4_K: return 144;
    case FMT_Q5_K: return 176;
    default: return 210; /* FMT_Q6_K */
    }
}

static inline int is_kquant(int64_t fmt) {
    return fmt == FMT_Q4_K || fmt == FMT_Q5_K || fmt == FMT_Q6_K;
}

static inline int is_blocks(int64_t fmt) { return fmt >= FMT_Q8_0 && fmt != FMT_F32_PANELS; }

static int64_t block_len(int64_t fmt) { return is_kquant(fmt) ? 256 : 32; }

static inline float half_to_float(const uint8_t *p) {
    uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
#if defined(__F16C__)
    return _cvtsh_ss(h); /* one instruction where the CPU has F16C (every AVX2 / AVX-512 CPU) */
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* Q4_K's 8 sub-block scales d * sc and minimums dmin * mn (6-bit sc, mn packed in 12 bytes) */
static inline void q4k_scales(const uint8_t *blk, float sc[8], float mn[8]) {
    const uint8_t *p = blk + 4;
    float d = half_to_float(blk), dmin = half_to_float(blk + 2);
    for (int t = 0; t < 4; t++) {
        sc[t] = d * (float)(p[t] & 63);
        mn[t] = dmin * (float)(p[t + 4] & 63);
        sc[t + 4] = d * (float)((p[t + 8] & 0x0f) | ((p[t] >> 6) << 4));
        mn[t + 4] = dmin * (float)((p[t + 8] >> 4) | ((p[t + 4] >> 6) << 4));
    }
}

#if defined(__AVX2__)
/* Q6_K: the 32 six-bit values of weights 32g + [0, 32) (half h = g / 4, k = g % 4) put
   together in bytes, minus 32: low 4 bits from ql (byte 32 (k & 1) + l of the half's 64, the
   high nibble for k >= 2), high 2 from bits 2k of qh byte l. Weights [0, 16) take scale
   8h + 2k, [16, 32) the next one. */
static inline __m256i q6k_bytes(const uint8_t *blk, int g) {
    int h = g / 4, k = g % 4;
    __m256i ql = _mm256_loadu_si256((const __m256i *)(blk + 64 * h + 32 * (k & 1)));
    __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h));
    __m256i lo = _mm256_and_si256(_mm256_srli_epi16(ql, 4 * (k >> 1)), _mm256_set1_epi8(0x0f));
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), _mm256_set1_epi8(3));
    return _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), _mm256_set1_epi8(32));
}

/* Q4_K's 8 scales d * sc into sc and minimums dmin * mn as a vector, unpacked four at a time
   in 32-bit words (as llama.cpp's kernels do) instead of one by one */
static inline void q4k_scales8(const uint8_t *blk, float sc[8], __m256 *mn) {
    uint32_t u[4];
    memcpy(u, blk + 4, 12);
    u[3] = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4); /* mins 4..7 */
    uint32_t mins03 = u[1] & 0x3f3f3f3f;
    u[1] = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4); /* scales 4..7 */
    u[2] = mins03;
    u[0] &= 0x3f3f3f3f; /* scales 0..3 */
    __m128i v = _mm_loadu_si128((const __m128i *)u);
    __m256 s = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
    _mm256_storeu_ps(sc, _mm256_mul_ps(s, _mm256_set1_ps(half_to_float(blk))));
    *mn = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8))),
                        _mm256_set1_ps(half_to_float(blk + 2)));
}

/* Q4_K for one row of x: w = sc q - mn, so a sub-block's dot product is sc (q . x) - mn sum(x).
   xsum holds x's sums over each run of 32 (taken once per matvec, not per weight row), and the
   nibbles are split in bytes, 32 at a time, before they are widened: about 4 instructions per
   8 weights instead of 6 (1.2x the widened-weights loop of dot4xR_kquants8) */
static inline __attribute__((always_inline)) void dot4_q4k8(
    const void *rows, int64_t K, const float *x, const float *xsum, float out[4], const int q5) {
    const uint8_t *r = rows;
    int64_t bs = q5 ? 176 : 144, nb = K / 256, rb = nb * bs;
    const __m256i low4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    for (int i = 0; i < 4; i++) {
        __m256 acc = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps();
        __m256 mins = _mm256_setzero_ps();
        for (int64_t j = 0; j < nb; j++) {
            const uint8_t *blk = r + i * rb + j * bs;
            _mm_prefetch((const char *)blk + PREFETCH_AHEAD / 2, _MM_HINT_T0);
            _mm_prefetch((const char *)blk + 64 + PREFETCH_AHEAD / 2, _MM_HINT_T0);
            _mm_prefetch((const char *)blk + 128 + PREFETCH_AHEAD / 2, _MM_HINT_T0);
            float sc[8];
            __m256 mn;
            q4k_scales8(blk, sc, &mn);
            mins = _mm256_fmadd_ps(mn, _mm256_loadu_ps(xsum + 8 * j), mins);
            __m256i qh = q5 ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : low4;
            for (int c = 0; c < 4; c++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(blk + (q5 ? 48 : 16) + 32 * c));
                for (int odd = 0; odd < 2; odd++) { /* sub-block 2c + odd */
                    __m256i v = odd ? _mm256_and_si256(_mm256_srli_epi16(q, 4), low4)
                                    : _mm256_and_si256(q, low4);
                    if (q5) /* bit 2c + odd of qh byte l, as 16 */
                        v = _mm256_or_si256(v, _mm256_slli_epi16(_mm256_and_si256(
                            _mm256_srli_epi16(qh, 2 * c + odd), one), 4));
                    __m128i v0 = _mm256_castsi256_si128(v), v1 = _mm256_extracti128_si256(v, 1);
                    const float *xs = x + 256 * j + 64 * c + 32 * odd;
                    __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v0)),
                                             _mm256_loadu_ps(xs));
                    __m256 t2 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v1)),
                                              _mm256_loadu_ps(xs + 16));
                    t = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v0, 8))),
                        _mm256_loadu_ps(xs + 8), t);
                    t2 = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v1, 8))),
                        _mm256_loadu_ps(xs + 24), t2);
                    __m256 scale = _mm256_set1_ps(sc[2 * c + odd]);
                    acc = _mm256_fmadd_ps(t, scale, acc);
                    acc2 = _mm256_fmadd_ps(t2, scale, acc2);
                }
            }
        }
        out[i] = hsum8(_mm256_sub_ps(_mm256_add_ps(acc, acc2), mins));
    }
}

/* Q5_0 / Q5_1: the block's 32 five-bit values in bytes, weight j in byte j: the nibbles (byte j
   of the 16 holds weights j and j + 16), and bit j of qh as 16 (each qh byte spread over 8
   bytes, a byte all ones where its bit is set, as llama.cpp's bytes_from_bits_32) */
static inline __m256i q5_bytes(const uint8_t *b, int64_t fmt) {
    const uint8_t *hp = b + (fmt == FMT_Q5_0 ? 2 : 4);
    uint32_t qh;
    memcpy(&qh, hp, 4);
    __m128i q = _mm_loadu_si128((const __m128i *)(hp + 4));
    __m256i nib = _mm256_and_si256(
        _mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1),
        _mm256_set1_epi8(0x0f));
    const __m256i spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                             0x0101010101010101, 0);
    __m256i bits = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), spread);
    bits = _mm256_cmpeq_epi8(_mm256_or_si256(bits, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)),
                             _mm256_set1_epi64x(-1));
    return _mm256_or_si256(nib, _mm256_and_si256(bits, _mm256_set1_epi8(0x10)));
}

/* Q5_0 / Q5_1 for one row of x: w = d q + m (Q5_0: m = -16 d), so a block's dot product is
   d (q . x) + m sum(x), with x's sums over each 32 (xsum) taken once per matvec */
static __attribute__((unused)) void dot4_q5(const void *rows, int64_t K, const float *x,
                                            const float *xsum, float out[4], int64_t fmt) {
    const uint8_t *r = rows;
    int64_t bs = block_bytes(fmt), nb = K / 32, rb = nb * bs;
    for (int i = 0; i < 4; i++) {
        __m256 acc = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps();
        float mins = 0.f;
        for (int64_t j = 0; j < nb; j++) {
            const uint8_t *b = r + i * rb + j * bs;
            if ((j & 1) == 0)
                _mm_prefetch((const char *)b + PREFETCH_AHEAD / 2, _MM_HINT_T0);
            __m256i q = q5_bytes(b, fmt);
            __m128i q0 = _mm256_castsi256_si128(q), q1 = _mm256_extracti128_si256(q, 1);
            const float *xj = x + 32 * j;
            __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q0)),
                                     _mm256_loadu_ps(xj));
            __m256 t2 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q1)),
                                      _mm256_loadu_ps(xj + 16));
            t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q0, 8))),
                                _mm256_loadu_ps(xj + 8), t);
            t2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q1, 8))),
                                 _mm256_loadu_ps(xj + 24), t2);
            float d = half_to_float(b), m = fmt == FMT_Q5_0 ? -16.f * d : half_to_float(b + 2);
            __m256 dv = _mm256_set1_ps(d);
            acc = _mm256_fmadd_ps(t, dv, acc);
            acc2 = _mm256_fmadd_ps(t2, dv, acc2);
            mins += m * xsum[j];
        }
        out[i] = hsum8(_mm256_add_ps(acc, acc2)) + mins;
    }
}

/* x's sums over each run of 32: (B, K / 32) floats */
static float *sums32(const float *x, int64_t B, int64_t K) {
    float *out = malloc(sizeof(float) * (size_t)(B * K / 32));
    for (int64_t t = 0; t < B * K / 32; t++) {
        const float *xt = x + 32 * t;
        __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(xt), _mm256_loadu_ps(xt + 8)),
                                 _mm256_add_ps(_mm256_loadu_ps(xt + 16), _mm256_loadu_ps(xt + 24)));
        out[t] = hsum8(s);
    }
    return out;
}

#endif

#include "act8.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define HAVE_BLOCKS_AVX512 1

/* one block's 32 weights as two vectors of 16 float32 (elements 0-15, 16-31) */
static inline void block_weights(const uint8_t *b, int64_t fmt, __m512 *lo, __m512 *hi) {
    __m512 d = _mm512_set1_ps(half_to_float(b));
    if (fmt == FMT_Q5_0 || fmt == FMT_Q5_1) { /* d * q + m (Q5_0: m = -16 d) */
        /* the fifth bits straight from qh as lane masks (an OR of 16 under a 16-bit mask):
           fewer instructions than assembling the bytes first (20.9 vs 18.4 G weights/s) */
        const uint8_t *hp = b + (fmt == FMT_Q5_0 ? 2 : 4);
        uint32_t qh;
        memcpy(&qh, hp, 4);
        __m512 m = _mm512_set1_ps(fmt == FMT_Q5_0 ? -16.f * half_to_float(b) : half_to_float(b + 2));
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(hp + 4)));
        __m512i sixteen = _mm512_set1_epi32(16);
        __m512i ql = _mm512_and_si512(v, _mm512_set1_epi32(0x0f)), qu = _mm512_srli_epi32(v, 4);
        ql = _mm512_mask_or_epi32(ql, (__mmask16)(qh & 0xffff), ql, sixteen);
        qu = _mm512_mask_or_epi32(qu, (__mmask16)(qh >> 16), qu, sixteen);
        *lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ql), d, m);
        *hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(qu), d, m);
        return;
    }
    if (fmt == FMT_Q8_0) {
        *lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                  _mm_loadu_si128((const __m128i *)(b + 2)))), d);
        *hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                  _mm_loadu_si128((const __m128i *)(b + 18)))), d);
        return;
    }
    /* The block's 16 possible weights as a table (Q4_0: d * q - 8d, Q4_1: d * q + m, q = 0..15),
       then one lane permute per 16 weights looks them up: vpermps reads only the low 4 bits of
       each index, so a byte's low nibble indexes directly and its high nibble after a shift. */
    const __m512 levels = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 m = _mm512_set1_ps(fmt == FMT_Q4_0 ? -8.f * half_to_float(b) : half_to_float(b + 2));
    __m512 table = _mm512_fmadd_ps(levels, d, m);
    const uint8_t *qs = b + (fmt == FMT_Q4_0 ? 2 : 4);
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    *lo = _mm512_permutexvar_ps(v, table);
    *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table);
}

/* Q8_0: the block's sum of q * x first, then its scale once. The four rows' scales of a run of
   blocks are converted before the run: a scalar fp16 load, conversion and broadcast between
   the vector loads of every block halved the kernel's speed (0.59 vs 1.22 ms for a 49152 x 576
   head) */
#define Q8_RUN 64
static void dot4_q8_0(const uint8_t *r, int64_t K, const float *x, __m512 acc[4]) {
    int64_t nb = K / 32, rb = nb * 34;
    float d[4][Q8_RUN];
    for (int64_t j0 = 0; j0 < nb; j0 += Q8_RUN) {
        int64_t j1 = j0 + Q8_RUN < nb ? j0 + Q8_RUN : nb;
        for (int i = 0; i < 4; i++)
            for (int64_t j = j0; j < j1; j++) d[i][j - j0] = half_to_float(r + i * rb + j * 34);
        for (int64_t j = j0; j < j1; j++) {
            if ((j & 1) == 0)
                for (int i = 0; i < 4; i++)
                    _mm_prefetch((const char *)(r + i * rb + j * 34) + PREFETCH_AHEAD, _MM_HINT_T0);
            __m512 x0 = _mm512_loadu_ps(x + 32 * j), x1 = _mm512_loadu_ps(x + 32 * j + 16);
            for (int i = 0; i < 4; i++) {
                const uint8_t *b = r + i * rb + j * 34;
                __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                    _mm_loadu_si128((const __m128i *)(b + 2))));
                __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                    _mm_loadu_si128((const __m128i *)(b + 18))));
                __m512 t = _mm512_fmadd_ps(q0, x0, _mm512_mul_ps(q1, x1));
                acc[i] = _mm512_fmadd_ps(t, _mm512_set1_ps(d[i][j - j0]), acc[i]);
            }
        }
    }
}

static void dot4_blocks(const void *rows, int64_t K, const float *x, float out[4], int64_t fmt) {
    const uint8_t *r = rows;
    int64_t bs = block_bytes(fmt), nb = K / 32, rb = nb * bs;
    __m512 acc[4];
    for (int i = 0; i < 4; i++) acc[i] = _mm512_setzero_ps();
    if (fmt == FMT_Q8_0) {
        dot4_q8_0(r, K, x, acc);
    } else {
        for (int64_t j = 0; j < nb; j++) {
            if ((j & 1) == 0)
                for (int i = 0; i < 4; i++)
                    _mm_prefetch((const char *)(r + i * rb + j * bs) + PREFETCH_AHEAD / 2,
                                 _MM_HINT_T0);
            __m512 x0 = _mm512_loadu_ps(x + 32 * j), x1 = _mm512_loadu_ps(x + 32 * j + 16);
            for (int i = 0; i < 4; i++) {
                __m512 lo, hi;
                block_weights(r + i * rb + j * bs, fmt, &lo, &hi);
                acc[i] = _mm512_fmadd_ps(hi, x1, _mm512_fmadd_ps(lo, x0, acc[i]));
            }
        }
    }
    for (int i = 0; i < 4; i++) out[i] = _mm512_reduce_add_ps(acc[i]);
}

/* Q4_K (Q5_K: q5 set): the 64 weights of chunk c (sub-blocks 2c and 2c + 1) as four vectors of
   16, in order. A sub-block's 16 (Q5_K: 32) possible weights sc q - mn are a table that one
   lane permute per 16 weights looks up (Q5_K: a two-table permute on 5-bit indices). */
static inline void q4k_weights(const uint8_t *blk, const float sc[8], const float mn[8], int c,
                               __m512 w[4], const int q5) {
    const __m512 levels = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const uint8_t *qs = blk + (q5 ? 48 : 16) + 32 * c;
    __m512i v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    __m512i v1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16)));
    __m512 s0 = _mm512_set1_ps(sc[2 * c]), s1 = _mm512_set1_ps(sc[2 * c + 1]);
    __m512 m0 = _mm512_set1_ps(mn[2 * c]), m1 = _mm512_set1_ps(mn[2 * c + 1]);
    __m512 t0 = _mm512_fmsub_ps(levels, s0, m0), t1 = _mm512_fmsub_ps(levels, s1, m1);
    if (!q5) {
        w[0] = _mm512_permutexvar_ps(v0, t0);
        w[1] = _mm512_permutexvar_ps(v1, t0);
        w[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(v0, 4), t1);
        w[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(v1, 4), t1);
        return;
    }
    const __m512 upper = _mm512_set1_ps(16.f);
    __m512 u0 = _mm512_fmsub_ps(_mm512_add_ps(levels, upper), s0, m0);
    __m512 u1 = _mm512_fmsub_ps(_mm512_add_ps(levels, upper), s1, m1);
    const __m512i low4 = _mm512_set1_epi32(0x0f), one = _mm512_set1_epi32(1);
    __m512i h0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + 16)));
    __m512i h1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + 32)));
    __m512i b00 = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(h0, 2 * c), one), 4);
    __m512i b01 = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(h1, 2 * c), one), 4);
    __m512i b10 = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(h0, 2 * c + 1), one), 4);
    __m512i b11 = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(h1, 2 * c + 1), one), 4);
    w[0] = _mm512_permutex2var_ps(t0, _mm512_or_si512(_mm512_and_si512(v0, low4), b00), u0);
    w[1] = _mm512_permutex2var_ps(t0, _mm512_or_si512(_mm512_and_si512(v1, low4), b01), u0);
    w[2] = _mm512_permutex2var_ps(t1, _mm512_or_si512(_mm512_srli_epi32(v0, 4), b10), u1);
    w[3] = _mm512_permutex2var_ps(t1, _mm512_or_si512(_mm512_srli_epi32(v1, 4), b11), u1);
}

/* Q6_K: the 64 weights 64p + [0, 64) of a super-block as four vectors of 16 (each under one
   scale): the six-bit values are put together 32 at a time in bytes (q6k_bytes), then widened */
static inline void q6k_weights(const uint8_t *blk, int p, __m512 w[4]) {
    const int8_t *sc = (const int8_t *)(blk + 192);
    float d = half_to_float(blk + 208);
    for (int t = 0; t < 2; t++) {
        int g = 2 * p + t;
        __m256i q = q6k_bytes(blk, g);
        int s = 8 * (g / 4) + 2 * (g % 4);
        w[2 * t] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                     _mm256_castsi256_si128(q))), _mm512_set1_ps(d * sc[s]));
        w[2 * t + 1] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                         _mm256_extracti128_si256(q, 1))),
                                     _mm512_set1_ps(d * sc[s + 1]));
    }
}

/* Q4_K: a super-block of 256 is 8 sub-blocks of 32 that each read like a Q4_1 block, with
   scale d * sc and minimum -dmin * mn (6-bit sc, mn), so the same table lookup serves: chunk c
   of 32 bytes holds sub-block 2c in its low nibbles and 2c + 1 in its high ones. */
static inline __attribute__((always_inline)) void dot4_q4k(
    const void *rows, int64_t K, const float *x, float out[4], const int q5) {
    const uint8_t *r = rows;
    int64_t bs = q5 ? 176 : 144, nb = K / 256, rb = nb * bs;
    __m512 acc[4], acc2[4]; /* two chains per row */
    for (int i = 0; i < 4; i++) acc[i] = acc2[i] = _mm512_setzero_ps();
    for (int64_t j = 0; j < nb; j++) {
        for (int i = 0; i < 4; i++) {
            const uint8_t *b = r + i * rb + j * bs;
            _mm_prefetch((const char *)b + PREFETCH_AHEAD / 2, _MM_HINT_T0);
            _mm_prefetch((const char *)b + 64 + PREFETCH_AHEAD / 2, _MM_HINT_T0);
            _mm_prefetch((const char *)b + 128 + PREFETCH_AHEAD / 2, _MM_HINT_T0);
            float sc[8], mn[8];
            q4k_scales(b, sc, mn);
            for (int c = 0; c < 4; c++) {
                const float *xc = x + 256 * j + 64 * c;
                __m512 w[4];
                q4k_weights(b, sc, mn, c, w, q5);
                acc[i] = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(xc), acc[i]);
                acc2[i] = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(xc + 16), acc2[i]);
                acc[i] = _mm512_fmadd_ps(w[2], _mm512_loadu_ps(xc + 32), acc[i]);
                acc2[i] = _mm512_fmadd_ps(w[3], _mm512_loadu_ps(xc + 48), acc2[i]);
            }
        }
    }
    for (int i = 0; i < 4; i++) out[i] = _mm512_reduce_add_ps(_mm512_add_ps(acc[i], acc2[i]));
}

/* Q6_K: sixteen weights share a scale, so each vector of 16 is converted and scaled once */
static void dot4_q6k(const void *rows, int64_t K, const float *x, float out[4]) {
    const uint8_t *r = rows;
    int64_t nb = K / 256, rb = nb * 210;
    __m512 acc[4], acc2[4];
    for (int i = 0; i < 4; i++) acc[i] = acc2[i] = _mm512_setzero_ps();
    for (int64_t j = 0; j < nb; j++) {
        for (int i = 0; i < 4; i++) {
            const uint8_t *b = r + i * rb + j * 210;
            for (int line = 0; line < 4; line++)
                _mm_prefetch((const char *)b + 64 * line + PREFETCH_AHEAD / 2, _MM_HINT_T0);
            for (int p = 0; p < 4; p++) {
                const float *xp = x + 256 * j + 64 * p;
                __m512 w[4];
                q6k_weights(b, p, w);
                acc[i] = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(xp), acc[i]);
                acc2[i] = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(xp + 16), acc2[i]);
                acc[i] = _mm512_fmadd_ps(w[2], _mm512_loadu_ps(xp + 32), acc[i]);
                acc2[i] = _mm512_fmadd_ps(w[3], _mm512_loadu_ps(xp + 48), acc2[i]);
            }
        }
    }
    for (int i = 0; i < 4; i++) out[i] = _mm512_reduce_add_ps(_mm512_add_ps(acc[i], acc2[i]));
}

/* The K-quants for R rows of x (R = 4 or 8), one weight row at a time as dot4xR_blocks: each
   sub-block is widened once for the R rows, not once per row */
static inline __attribute__((always_inline)) void dot4xR_kquants(
    const void *rows, int64_t K, const float *x, int64_t ldx, float out[8][4],
    const int64_t fmt, const int R) {
    const uint8_t *r = rows;
    int64_t bs = block_bytes(fmt), nb = K / 256, rb = nb * bs;
    for (int i = 0; i < 4; i++) {
        __m512 acc[8];
        for (int b = 0; b < R; b++) acc[b] = _mm512_setzero_ps();
        for (int64_t j = 0; j < nb; j++) {
            const uint8_t *blk = r + i * rb + j * bs;
            float sc[8], mn[8];
            if (fmt != FMT_Q6_K)
                q4k_scales(blk, sc, mn);
            for (int part = 0; part < 4; part++) { /* weights 64 part + [0, 64) */
                __m512 w[4]; /* weights 64 part + 16t, t = 0..3 */
                if (fmt != FMT_Q6_K)
                    q4k_weights(blk, sc, mn, part, w, fmt == FMT_Q5_K);
                else
                    q6k_weights(blk, part, w);
                for (int t = 0; t < 4; t++)
                    for (int b = 0; b < R; b++)
                        acc[b] = _mm512_fmadd_ps(
                            w[t], _mm512_loadu_ps(x + b * ldx + 256 * j + 64 * part + 16 * t),
                            acc[b]);
            }
        }
        for (int b = 0; b < R; b++) out[b][i] = _mm512_reduce_add_ps(acc[b]);
    }
}

/* out[b][i] = x_b . row i for four rows and R rows of x (R = 4 or 8; a batch of sequences
   decoding together), one weight row at a time: each block is widened once and used for R rows
   of x, with two accumulators per x row. Against four weight rows by four x rows (four
   accumulators each) it widens half as often per multiply: for R = 8 a 1536 x 576 Q4_1 layer
   took 48 instead of 69 us, SmolLM2's Q8_0 head 2.1 instead of 3.6 ms (2 threads). */
static inline __attribute__((always_inline)) void dot4xR_blocks(
    const void *rows, int64_t K, const float *x, int64_t ldx, float out[8][4], int64_t fmt,
    const int R) {
    const uint8_t *r = rows;
    int64_t bs = block_bytes(fmt), nb = K / 32, rb = nb * bs;
    for (int i = 0; i < 4; i++) {
        __m512 acc[8], acc2[8];
        for (int b = 0; b < R; b++) acc[b] = acc2[b] = _mm512_setzero_ps();
        for (int64_t j = 0; j < nb; j++) {
            __m512 lo, hi;
            block_weights(r + i * rb + j * bs, fmt, &lo, &hi);
            for (int b = 0; b < R; b++) {
                const float *xb = x + b * ldx + 32 * j;
                acc[b] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xb), acc[b]);
                acc2[b] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), acc2[b]);
            }
        }
        for (int b = 0; b < R; b++) out[b][i] = _mm512_reduce_add_ps(_mm512_add_ps(acc[b], acc2[b]));
    }
}

/* out[b][i] for four weight rows and R = 4 or 8 rows of x (ldx = K), any block format; each
   call below has a constant format and R, so it is compiled on its own */
static void dot4xR(const void *rows, int64_t K, const float *x, float out[8][4], int64_t fmt,
                   int R) {
    if (fmt == FMT_Q4_K && R == 8)
        dot4xR_kquants(rows, K, x, K, out, FMT_Q4_K, 8);
    else if (fmt == FMT_Q4_K)
        dot4xR_kquants(rows, K, x, K, out, FMT_Q4_K, 4);
    else if (fmt == FMT_Q5_K && R == 8)
        dot4xR_kquants(rows, K, x, K, out, FMT_Q5_K, 8);
    else if (fmt == FMT_Q5_K)
        dot4xR_kquants(rows, K, x, K, out, FMT_Q5_K, 4);
    else if (fmt == FMT_Q6_K && R == 8)
        dot4xR_kquants(rows, K, x, K, out, FMT_Q6_K, 8);
    else if (fmt == FMT_Q6_K)
        dot4xR_kquants(rows, K, x, K, out, FMT_Q6_K, 4);
    else if (R == 8)
        dot4xR_blocks(rows, K, x, K, out, fmt, 8);
    else
        dot4xR_blocks(rows, K, x, K, out, fmt, 4);
}
static inline int simd_blocks(int64_t fmt) { return is_blocks(fmt); }

/* four weight rows by one row of x (xsum: x's sums over each 32, for Q5_K, Q5_0 and Q5_1) */
static void dot4_row(const void *rows, int64_t K, const float *x, const float *xsum,
                     float out[4], int64_t fmt) {
    if (fmt == FMT_Q4_K)
        dot4_q4k(rows, K, x, out, 0);
    else if (fmt == FMT_Q5_K) /* the byte-assembled AVX2 loop: 1.3x the two-table lookup */
        dot4_q4k8(rows, K, x, xsum, out, 1);
    else if (fmt == FMT_Q6_K)
        dot4_q6k(rows, K, x, out);
    else
        dot4_blocks(rows, K, x, out, fmt);
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define HAVE_BLOCKS_AVX2 1
/* The blocks of 32 at 8 lanes: a block is four vectors. Q4_0 / Q4_1 widen each nibble to
   float32 and apply d and m with one FMA (w = d * q + m; Q4_0: m = -8d); Q8_0 sums q * x over
   the block and applies d once. The K-quants are read 32 weights at a time in the same way
   (dot4xR_kquants8). */
static inline int simd_blocks(int64_t fmt) { return is_blocks(fmt); }

static inline void block_weights8(const uint8_t *b, int64_t fmt, __m256 w[4]) {
    if (fmt == FMT_Q5_0 || fmt == FMT_Q5_1) { /* d * q + m (Q5_0: m = -16 d) */
        float dh = half_to_float(b);
        __m256 d = _mm256_set1_ps(dh);
        __m256 m = _mm256_set1_ps(fmt == FMT_Q5_0 ? -16.f * dh : half_to_float(b + 2));
        __m256i q = q5_bytes(b, fmt);
        __m128i q0 = _mm256_castsi256_si128(q), q1 = _mm256_extracti128_si256(q, 1);
        __m128i parts[4] = {q0, _mm_srli_si128(q0, 8), q1, _mm_srli_si128(q1, 8)};
        for (int t = 0; t < 4; t++)
            w[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[t])), d, m);
        return;
    }
    if (fmt == FMT_Q8_0) {
        __m256 d = _mm256_set1_ps(half_to_float(b));
        for (int t = 0; t < 4; t++) w[t] = _mm256_mul_ps(widen8((const int8_t *)b + 2 + 8 * t), d);
        return;
    }
    float dh = half_to_float(b);
    __m256 d = _mm256_set1_ps(dh);
    __m256 m = _mm256_set1_ps(fmt == FMT_Q4_0 ? -8.f * dh : half_to_float(b + 2));
    __m128i q = _mm_loadu_si128((const __m128i *)(b + (fmt == FMT_Q4_0 ? 2 : 4)));
    __m128i mask = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_and_si128(q, mask), hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
    w[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), d, m);
    w[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), d, m);
    w[2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), d, m);
    w[3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), d, m);
}

static void dot4_blocks(const void *rows, int64_t K, const float *x, float out[4], int64_t fmt) {
    const uint8_t *r = rows;
    int64_t bs = block_bytes(fmt), nb = K / 32, rb = nb * bs;
    __m256 acc[4], acc2[4];
    for (int i = 0; i < 4; i++) acc[i] = acc2[i] = _mm256_setzero_ps();
    for (int64_t j = 0; j < nb; j++) {
        if ((j & 1) == 0)
            for (int i = 0; i < 4; i++)
                _mm_prefetch((const char *)(r + i * rb + j * bs) + PREFETCH_AHEAD / 2,
                             _MM_HINT_T0);
        const float *xj = x + 32 * j;
        __m256 x0 = _mm256_loadu_ps(xj), x1 = _mm256_loadu_ps(xj + 8);
        __m256 x2 = _mm256_loadu_ps(xj + 16), x3 = _mm256_loadu_ps(xj + 24);
        for (int i = 0; i < 4; i++) {
            const uint8_t *b = r + i * rb + j * bs;
            if (fmt == FMT_Q8_0) {
                const int8_t *q = (const int8_t *)b + 2;
                __m256 t = _mm256_fmadd_ps(widen8(q), x0, _mm256_mul_ps(widen8(q + 8), x1));
                t = _mm256_fmadd_ps(widen8(q + 16), x2, t);
                t = _mm256_fmadd_ps(widen8(q + 24), x3, t);
                acc[i] = _mm256_fmadd_ps(t, _mm256_set1_ps(half_to_float(b)), acc[i]);
            } else {
                __m256 w[4];
                block_weights8(b, fmt, w);
                acc[i] = _mm256_fmadd_ps(w[1], x1, _mm256_fmadd_ps(w[0], x0, acc[i]));
                acc2[i] = _mm256_fmadd_ps(w[3], x3, _mm256_fmadd_ps(w[2], x2, acc2[i]));
            }
        }
    }
    for (int i = 0; i < 4; i++) out[i] = hsum8(_mm256_add_ps(acc[i], acc2[i]));
}

/* four weight rows by R = 4 or 8 rows of x, one weight row at a time: each block is widened
   once for the R rows (as dot4xR_blocks of the AVX-512 path) */
static inline __attribute__((always_inline)) void dot4xR_blocks8(
    const void *rows, int64_t K, const float *x, int64_t ldx, float out[8][4], int64_t fmt,
    const int R) {
    const uint8_t *r = rows;
    int64_t bs = block_bytes(fmt), nb = K / 32, rb = nb * bs;
    for (int i = 0; i < 4; i++) {
        __m256 acc[8], acc2[8];
        for (int b = 0; b < R; b++) acc[b] = acc2[b] = _mm256_setzero_ps();
        for (int64_t j = 0; j < nb; j++) {
            __m256 w[4];
            block_weights8(r + i * rb + j * bs, fmt, w);
            for (int b = 0; b < R; b++) {
                const float *xb = x + b * ldx + 32 * j;
                acc[b] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xb + 8),
                                         _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xb), acc[b]));
                acc2[b] = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xb + 24),
                                          _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xb + 16), acc2[b]));
            }
        }
        for (int b = 0; b < R; b++) out[b][i] = hsum8(_mm256_add_ps(acc[b], acc2[b]));
    }
}

/* Q4_K: the 32 weights of sub-block s as four vectors of 8: byte 32 (s / 2) + l holds weight l
   of sub-block s in its low nibble when s is even, in its high one when odd; w = sc q - mn */
static inline void q4k8_weights(const uint8_t *blk, const float sc[8], const float mn[8], int s,
                                __m256 w[4], const int q5) {
    const uint8_t *qs = blk + (q5 ? 48 : 16) + 32 * (s / 2);
    __m256 d = _mm256_set1_ps(sc[s]), m = _mm256_set1_ps(mn[s]);
    const __m256i low4 = _mm256_set1_epi32(0x0f), one = _mm256_set1_epi32(1);
    for (int t = 0; t < 4; t++) {
        __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8 * t)));
        v = s & 1 ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, low4);
        if (q5) { /* Q5_K: bit s of qh byte 8t + lane */
            __m256i h = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 16 + 8 * t)));
            v = _mm256_or_si256(v, _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(h, s),
                                                                      one), 4));
        }
        w[t] = _mm256_fmsub_ps(_mm256_cvtepi32_ps(v), d, m);
    }
}

/* Q6_K: the 32 weights 32g + [0, 32) as four vectors of 8 (q6k_bytes widened 8 at a time) */
static inline void q6k8_weights(const uint8_t *blk, int g, __m256 w[4]) {
    const int8_t *sc = (const int8_t *)(blk + 192);
    __m256i q = q6k_bytes(blk, g);
    __m128i q0 = _mm256_castsi256_si128(q), q1 = _mm256_extracti128_si256(q, 1);
    float d = half_to_float(blk + 208);
    int s = 8 * (g / 4) + 2 * (g % 4);
    __m256 s0 = _mm256_set1_ps(d * (float)sc[s]), s1 = _mm256_set1_ps(d * (float)sc[s + 1]);
    w[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0)), s0);
    w[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q0, 8))), s0);
    w[2] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1)), s1);
    w[3] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q1, 8))), s1);
}

/* The K-quants for R = 1, 4 or 8 rows of x, one weight row at a time: each run of 32 weights is
   widened once for the R rows (four vectors and R accumulators fit AVX2's 16 registers) */
static inline __attribute__((always_inline)) void dot4xR_kquants8(
    const void *rows, int64_t K, const float *x, int64_t ldx, float out[8][4],
    const int64_t fmt, const int R) {
    const uint8_t *r = rows;
    int64_t bs = block_bytes(fmt), nb = K / 256, rb = nb * bs;
    for (int i = 0; i < 4; i++) {
        __m256 acc[8], acc2[8];
        for (int b = 0; b < R; b++) acc[b] = acc2[b] = _mm256_setzero_ps();
        for (int64_t j = 0; j < nb; j++) {
            const uint8_t *blk = r + i * rb + j * bs;
            for (int line = 0; line < 4; line++)
                _mm_prefetch((const char *)blk + 64 * line + PREFETCH_AHEAD / 2, _MM_HINT_T0);
            float sc[8], mn[8];
            if (fmt != FMT_Q6_K)
                q4k_scales(blk, sc, mn);
            for (int g = 0; g < 8; g++) { /* weights 32g + [0, 32) of the super-block */
                __m256 w[4];
                if (fmt != FMT_Q6_K)
                    q4k8_weights(blk, sc, mn, g, w, fmt == FMT_Q5_K);
                else
                    q6k8_weights(blk, g, w);
                for (int b = 0; b < R; b++) {
                    const float *xb = x + b * ldx + 256 * j + 32 * g;
                    acc[b] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xb + 8),
                                             _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xb), acc[b]));
                    acc2[b] = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xb + 24),
                                              _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xb + 16),
                                                              acc2[b]));
                }
            }
        }
        for (int b = 0; b < R; b++) out[b][i] = hsum8(_mm256_add_ps(acc[b], acc2[b]));
    }
}

/* out[b][i] for four weight rows and R = 1, 4 or 8 rows of x (ldx = K); each call below has a
   constant format and R, so it is compiled on its own */
static void dot4xR(const void *rows, int64_t K, const float *x, float out[8][4], int64_t fmt,
                   int R) {
    if (fmt == FMT_Q4_K && R == 8)
        dot4xR_kquants8(rows, K, x, K, out, FMT_Q4_K, 8);
    else if (fmt == FMT_Q4_K && R == 4)
        dot4xR_kquants8(rows, K, x, K, out, FMT_Q4_K, 4);
    else if (fmt == FMT_Q4_K)
        dot4xR_kquants8(rows, K, x, K, out, FMT_Q4_K, 1);
    else if (fmt == FMT_Q5_K && R == 8)
        dot4xR_kquants8(rows, K, x, K, out, FMT_Q5_K, 8);
    else if (fmt == FMT_Q5_K && R == 4)
        dot4xR_kquants8(rows, K, x, K, out, FMT_Q5_K, 4);
    else if (fmt == FMT_Q5_K)
        dot4xR_kquants8(rows, K, x, K, out, FMT_Q5_K, 1);
    else if (fmt == FMT_Q6_K && R == 8)
        dot4xR_kquants8(rows, K, x, K, out, FMT_Q6_K, 8);
    else if (fmt == FMT_Q6_K && R == 4)
        dot4xR_kquants8(rows, K, x, K, out, FMT_Q6_K, 4);
    else if (fmt == FMT_Q6_K)
        dot4xR_kquants8(rows, K, x, K, out, FMT_Q6_K, 1);
    else if (R == 8)
        dot4xR_blocks8(rows, K, x, K, out, fmt, 8);
    else
        dot4xR_blocks8(rows, K, x, K, out, fmt, 4);
}

/* four weight rows by one row of x (xsum: x's sums over each 32, for Q4_K, Q5_K, Q5_0, Q5_1) */
static void dot4_row(const void *rows, int64_t K, const float *x, const float *xsum,
                     float out[4], int64_t fmt) {
    float acc[8][4];
    if (fmt == FMT_Q4_K) {
        dot4_q4k8(rows, K, x, xsum, out, 0);
    } else if (fmt == FMT_Q5_K) {
        dot4_q4k8(rows, K, x, xsum, out, 1);
    } else if (fmt == FMT_Q6_K) {
        dot4xR(rows, K, x, acc, fmt, 1);
        memcpy(out, acc[0], sizeof(float) * 4);
    } else if (fmt == FMT_Q5_0 || fmt == FMT_Q5_1) {
        dot4_q5(rows, K, x, xsum, out, fmt);
    } else {
        dot4_blocks(rows, K, x, out, fmt);
    }
}
#endif

/* One block's weights into out (32, or 256 for K-quants), as nn/gguf_blocks.py computes them */
static void dequant_block(const uint8_t *restrict b, int64_t fmt, float *restrict out) {
    if (fmt == FMT_Q8_0) {
        float d = half_to_float(b);
        for (int t = 0; t < 32; t++) out[t] = d * (float)(int8_t)b[2 + t];
    } else if (fmt == FMT_Q4_0 || fmt == FMT_Q4_1) {
        const uint8_t *qs = b + (fmt == FMT_Q4_0 ? 2 : 4);
        float d = half_to_float(b), m = fmt == FMT_Q4_1 ? half_to_float(b + 2) : -8.f * d;
        for (int t = 0; t < 16; t++) {
            out[t] = (float)(qs[t] & 0x0f) * d + m;
            out[t + 16] = (float)(qs[t] >> 4) * d + m;
        }
    } else if (fmt == FMT_Q5_0 || fmt == FMT_Q5_1) {
        const uint8_t *hp = b + (fmt == FMT_Q5_0 ? 2 : 4), *qs = hp + 4;
        uint32_t qh;
        memcpy(&qh, hp, 4);
        float d = half_to_float(b), m = fmt == FMT_Q5_1 ? half_to_float(b + 2) : -16.f * d;
        for (int t = 0; t < 16; t++) {
            out[t] = (float)((qs[t] & 0x0f) | ((qh >> t) & 1) << 4) * d + m;
            out[t + 16] = (float)((qs[t] >> 4) | ((qh >> (t + 16)) & 1) << 4) * d + m;
        }
    } else if (fmt == FMT_Q4_K || fmt == FMT_Q5_K) {
        float d = half_to_float(b), dmin = half_to_float(b + 2);
        const uint8_t *p = b + 4, *qh = b + 16, *qs = b + (fmt == FMT_Q5_K ? 48 : 16);
        int q5 = fmt == FMT_Q5_K;
        float sc[8], mn[8];
        for (int j = 0; j < 4; j++) {
            sc[j] = (float)(p[j] & 63);
            mn[j] = (float)(p[j + 4] & 63);
            sc[j + 4] = (float)((p[j + 8] & 0x0f) | ((p[j] >> 6) << 4));
            mn[j + 4] = (float)((p[j + 8] >> 4) | ((p[j + 4] >> 6) << 4));
        }
        for (int c = 0; c < 4; c++) { /* 32 bytes: sub-block 2c in the low, 2c + 1 in the high */
            float s0 = d * sc[2 * c], m0 = dmin * mn[2 * c];
            float s1 = d * sc[2 * c + 1], m1 = dmin * mn[2 * c + 1];
#pragma omp simd
            for (int l = 0; l < 32; l++) {
                int h0 = q5 ? ((qh[l] >> (2 * c)) & 1) << 4 : 0;
                int h1 = q5 ? ((qh[l] >> (2 * c + 1)) & 1) << 4 : 0;
                out[64 * c + l] = s0 * (float)((qs[32 * c + l] & 0x0f) | h0) - m0;
                out[64 * c + 32 + l] = s1 * (float)((qs[32 * c + l] >> 4) | h1) - m1;
            }
        }
    } else { /* FMT_Q6_K: two halves of 128 weights; weight 32k + l of half h takes its low 4
                bits from byte l (k = 0, 2) or 32 + l (k = 1, 3) of the half's 64 (low nibble for
                k < 2), its high 2 bits from bits 2k of qh byte l, a scale per 16 weights */
        const int8_t *sc = (const int8_t *)(b + 192);
        float d = half_to_float(b + 208);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
            float *o = out + 128 * h;
            for (int k = 0; k < 4; k++) {
                const uint8_t *lo = ql + (k & 1) * 32;
                int shift = k < 2 ? 0 : 4;
                for (int half = 0; half < 2; half++) { /* 16 weights under one scale */
                    float s = d * (float)sc[8 * h + 2 * k + half];
#pragma omp simd
                    for (int l = 16 * half; l < 16 * half + 16; l++) {
                        int q = ((lo[l] >> shift) & 0x0f) | (((qh[l] >> (2 * k)) & 3) << 4);
                        o[32 * k + l] = s * (float)(q - 32);
                    }
                }
            }
        }
    }
}

/* acc[b][i] = x_b . row i for four rows of blocks and B <= 16 rows of x: each block of the
   four rows is dequantized once into float32 and dotted with every row of x (the K-quants,
   and every block format in a build without AVX-512) */
static void dot4_generic(const void *rows, int64_t K, const float *x, int64_t B, int64_t ldx,
                         float acc[16][4], int64_t fmt) {
    const uint8_t *r = rows;
    int64_t bs = block_bytes(fmt), L = block_len(fmt), nb = K / L, rb = nb * bs;
    float w[4][256];
    /* 32 partial sums per (x row, weight row), added to lane by lane and reduced once at the
       end: a reduction per block of 32 would cost as much as the block's multiplies */
    float part[16][4][32];
    memset(part, 0, sizeof(float) * 4 * 32 * (size_t)B);
    for (int64_t j = 0; j < nb; j++) {
        for (int i = 0; i < 4; i++) dequant_block(r + i * rb + j * bs, fmt, w[i]);
        for (int64_t b = 0; b < B; b++) {
            const float *xb = x + b * ldx + j * L;
            for (int i = 0; i < 4; i++)
                for (int64_t t = 0; t < L; t += 32) {
                    float *p = part[b][i];
                    const float *wt = w[i] + t, *xt = xb + t;
#pragma omp simd
                    for (int l = 0; l < 32; l++) p[l] += wt[l] * xt[l];
                }
        }
    }
    for (int64_t b = 0; b < B; b++)
        for (int i = 0; i < 4; i++) {
            float sum = 0.f;
            for (int l = 0; l < 32; l++) sum += part[b][i][l];
            acc[b][i] = sum;
        }
}

/* A weight matrix (N = rows, K) row-major: int8 with a float32 scale per row, float32, or
   GGUF blocks (fmt, one of FMT_*). */
typedef struct {
    const void *w;
    const float *scale; /* int8 only */
    const float *bias;  /* or NULL */
    int64_t rows;
    int64_t fmt;
} Weight;

/* ---- float32 weights as panels, for batches -------------------------------------------------
   Row-major dot products end in a horizontal sum for every (weight row, x row) pair: at 32
   rows of x (a GRPO rollout's batch) those sums and the x loads held dot4x4_f32 to 220 GFLOP/s.
   Panels: W's rows in groups of 16, each group stored k-major as (K, 16), so that one vector
   load gives 16 outputs' weights for input k, multiplied by x[b][k] broadcast: two panels by
   PANEL_ROWS rows of x are 24 accumulators and no horizontal sum (3072 x 576 at 32 rows: 367
   vs 222 GFLOP/s; 576 x 1536: 414 vs 250; at 8 rows 178 vs 116). f32_panels packs a weight;
   the decode layers take it as FMT_F32_PANELS (generation/native_decode.py, batches of 8+). */
#define PANEL_ROWS 12

/* out (ceil(N / 32) * 32, K) floats = the panels of w (N, K): panel p holds W[16p + j, k] at
   out[p * 16K + 16k + j], zero for rows past N */
typedef struct { const float *w; int64_t N, K; float *out; } PanelsJob;

static void panels_range(void *job, int64_t lo, int64_t hi) {
    const PanelsJob *a = job;
    for (int64_t p = lo; p < hi; p++) {
        float *o = a->out + p * 16 * a->K;
        for (int64_t j = 0; j < 16; j++) {
            int64_t n = p * 16 + j;
            for (int64_t k = 0; k < a->K; k++)
                o[16 * k + j] = n < a->N ? a->w[n * a->K + k] : 0.f;
        }
    }
}

void f32_panels(const float *w, int64_t N, int64_t K, float *out) {
    PanelsJob job = {w, N, K, out};
    parallel_for((N + 31) / 32 * 2, panels_range, &job);
}

/* out[b][0..32) = rows b < R of x times the 32 outputs of the panel pair at p */
static inline __attribute__((always_inline)) void panel_tile(
    const float *p, int64_t K, const float *x, int64_t ldx, float out[PANEL_ROWS][32],
    const int R) {
#if defined(__AVX512F__)
    const float *p1 = p + 16 * K;
    __m512 a0[PANEL_ROWS], a1[PANEL_ROWS];
    for (int b = 0; b < R; b++) a0[b] = a1[b] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        __m512 w0 = _mm512_loadu_ps(p + 16 * k), w1 = _mm512_loadu_ps(p1 + 16 * k);
        for (int b = 0; b < R; b++) {
            __m512 xb = _mm512_set1_ps(x[b * ldx + k]);
            a0[b] = _mm512_fmadd_ps(w0, xb, a0[b]);
            a1[b] = _mm512_fmadd_ps(w1, xb, a1[b]);
        }
    }
    for (int b = 0; b < R; b++) {
        _mm512_storeu_ps(out[b], a0[b]);
        _mm512_storeu_ps(out[b] + 16, a1[b]);
    }
#else
    for (int b = 0; b < R; b++)
        for (int j = 0; j < 32; j++) out[b][j] = 0.f;
    for (int64_t k = 0; k < K; k++)
        for (int b = 0; b < R; b++) {
            float xb = x[b * ldx + k];
#pragma omp simd
            for (int j = 0; j < 16; j++) {
                out[b][j] += xb * p[16 * k + j];
                out[b][16 + j] += xb * p[16 * K + 16 * k + j];
            }
        }
#endif
}

/* One call's arguments, for the ranges of rows each thread takes (parallel.h) */
typedef struct {
    const Weight *wt;
    const float *x;
    float *y;
    int64_t B, K, ldy;
    char *tail;          /* matvec1: the last N % 4 rows, zero-padded to four */
    const float *xsum;   /* matvec1: x's sums over each 32, or NULL */
    size_t row_bytes;    /* matvec1: the bytes of one weight row */
} MatvecJob;

static void panels_rows(void *job, int64_t lo, int64_t hi) {
    const MatvecJob *a = job;
    const Weight *wt = a->wt;
    const float *x = a->x;
    float *y = a->y;
    int64_t B = a->B, K = a->K, ldy = a->ldy, N = wt->rows;
    for (int64_t q = lo; q < hi; q++) {
        const float *p = (const float *)wt->w + q * 32 * K;
        int64_t n = q * 32, m = N - n < 32 ? N - n : 32;
        for (int64_t b = 0; b < B;) {
            float out[PANEL_ROWS][32];
            int64_t r = B - b >= PANEL_ROWS ? PANEL_ROWS : B - b >= 4 ? 4 : 1;
            if (r == PANEL_ROWS)
                panel_tile(p, K, x + b * K, K, out, PANEL_ROWS);
            else if (r == 4)
                panel_tile(p, K, x + b * K, K, out, 4);
            else
                panel_tile(p, K, x + b * K, K, out, 1);
            for (int64_t j = 0; j < r; j++)
                for (int64_t i = 0; i < m; i++)
                    y[(b + j) * ldy + n + i] = out[j][i] + (wt->bias ? wt->bias[n + i] : 0.f);
            b += r;
        }
    }
}

static void matvec_panels(const Weight *wt, const float *x, float *y, int64_t B, int64_t K,
                          int64_t ldy) {
    MatvecJob job = {wt, x, y, B, K, ldy, NULL, NULL, 0};
    parallel_for((wt->rows + 31) / 32, panels_rows, &job);
}

/* The block formats this build multiplies in vector registers, as bits (1 << FMT_*); the
   others take dot4_generic. quantize="auto" asks (nn/native.simd_block_formats) before it
   keeps a GGUF file's blocks rather than converting them to int8. */
int64_t simd_block_formats(void) {
#if defined(HAVE_BLOCKS_AVX512) || defined(HAVE_BLOCKS_AVX2)
    int64_t bits = 0;
    for (int64_t fmt = FMT_Q8_0; fmt <= FMT_Q5_K; fmt++)
        if (simd_blocks(fmt)) bits |= (int64_t)1 << fmt;
    return bits;
#else
    return 0;
#endif
}

/* rows [4 lo, 4 hi) of a matvec (matvec1): each block of four weight rows against every row
   of x */
static void matvec_rows(void *job, int64_t lo, int64_t hi) {
    const MatvecJob *a = job;
    const Weight *wt = a->wt;
    const float *x = a->x;
    float *y = a->y;
    int64_t B = a->B, K = a->K, ldy = a->ldy;
    int64_t fmt = wt->fmt, blocks_fmt = is_blocks(fmt);
    size_t row_bytes = a->row_bytes;
    int64_t N = wt->rows, whole = N / 4;
    char *tail = a->tail;
    for (int64_t blk = lo; blk < hi; blk++) {
        int64_t n = blk * 4, m = N - n < 4 ? N - n : 4;
        const void *r = blk < whole ? (const char *)wt->w + n * row_bytes : tail;
        float acc[4];
        int64_t b = 0;
#if defined(HAVE_BLOCKS_AVX512) || defined(HAVE_BLOCKS_AVX2)
        if (blocks_fmt && simd_blocks(fmt)) { /* eight, then four rows of x at a time, then one */
            for (int R = 8; R >= 4; R -= 4)
                for (; b + R <= B; b += R) {
                    float acc8[8][4];
                    dot4xR(r, K, x + b * K, acc8, fmt, R);
                    for (int j = 0; j < R; j++)
                        for (int64_t i = 0; i < m; i++)
                            y[(b + j) * ldy + n + i] = acc8[j][i]
                                                       + (wt->bias ? wt->bias[n + i] : 0.f);
                }
            for (; b < B; b++) {
                dot4_row(r, K, x + b * K, a->xsum ? a->xsum + b * (K / 32) : NULL, acc, fmt);
                for (int64_t i = 0; i < m; i++)
                    y[b * ldy + n + i] = acc[i] + (wt->bias ? wt->bias[n + i] : 0.f);
            }
            continue;
        }
#endif
        int generic = blocks_fmt;
        if (generic) {
            for (; b < B; b += 16) {
                int64_t nrows = B - b < 16 ? B - b : 16;
                float acc16[16][4];
                dot4_generic(r, K, x + b * K, nrows, K, acc16, fmt);
                for (int64_t j = 0; j < nrows; j++)
                    for (int64_t i = 0; i < m; i++)
                        y[(b + j) * ldy + n + i] = acc16[j][i] + (wt->bias ? wt->bias[n + i] : 0.f);
            }
            continue;
        }
#ifdef HAVE_DOT4X4
        if (fmt == FMT_F32)
            for (; b + 4 <= B; b += 4) {
                float acc4[4][4];
                dot4x4_f32(r, K, x + b * K, K, acc4);
                for (int j = 0; j < 4; j++)
                    for (int64_t i = 0; i < m; i++)
                        y[(b + j) * ldy + n + i] = acc4[j][i]
                                                   + (wt->bias ? wt->bias[n + i] : 0.f);
            }
#endif
        for (; b < B; b++) {
            if (fmt == FMT_INT8)
                dot4_int8(r, K, x + b * K, acc);
            else
                dot4_f32(r, K, x + b * K, acc);
            for (int64_t i = 0; i < m; i++)
                y[b * ldy + n + i] = acc[i] * (fmt == FMT_INT8 ? wt->scale[n + i] : 1.f)
                                     + (wt->bias ? wt->bias[n + i] : 0.f);
        }
    }
}

/* The block formats this build multiplies with activations rounded to 8 bits (FMT_ACT8), as
   bits (1 << FMT_*): what quantize="gguf-a8" asks before it sets the flag */
int64_t act8_block_formats(void) {
    int64_t bits = 0;
#ifdef HAVE_ACT8
    for (int64_t fmt = FMT_Q8_0; fmt <= FMT_Q5_K; fmt++)
        if (act8_format(fmt)) bits |= (int64_t)1 << fmt;
#endif
    return bits;
}

/* The most rows of x a matvec takes with 8-bit activations (FMT_ACT8); more take the float
   kernels */
int64_t act8_max_rows(void) {
#if defined(HAVE_ACT8_BATCH)
    return INT64_MAX;
#elif defined(HAVE_ACT8)
    return ACT8_MAX_ROWS - 1;
#else
    return 0;
#endif
}

#ifdef HAVE_ACT8
typedef struct {
    const Weight *wt;
    int64_t fmt, B, K, ldy;
    const Act8 *a;
#ifdef HAVE_ACT8_BATCH
    const Act8Batch *groups; /* rows [0, B4) in interleaved groups of 8, then 4 */
    int64_t B4;
#endif
    const char *tail;
    size_t row_bytes;
    float *y;
} Act8Job;

/* rows [4 lo, 4 hi) of an act8 matvec: each block of four weight rows against the rows of x in
   interleaved groups of eight and four (AVX-512 VNNI), then one at a time */
static void act8_rows(void *job, int64_t lo, int64_t hi) {
    const Act8Job *a = job;
    const Weight *wt = a->wt;
    int64_t N = wt->rows, whole = N / 4, B = a->B;
    for (int64_t blk = lo; blk < hi; blk++) {
        int64_t n = blk * 4, m = N - n < 4 ? N - n : 4;
        const uint8_t *r = blk < whole ? (const uint8_t *)wt->w + n * a->row_bytes
                                       : (const uint8_t *)a->tail;
        int64_t b = 0;
        float out[8][4];
#ifdef HAVE_ACT8_BATCH
        for (const Act8Batch *g = a->groups; b < a->B4; g++) {
            int R = a->B4 - b >= 8 ? 8 : 4;
            act8_batch4(r, a->row_bytes, a->K, g, out, a->fmt, R);
            for (int j = 0; j < R; j++)
                for (int64_t i = 0; i < m; i++)
                    a->y[(b + j) * a->ldy + n + i] = out[j][i]
                                                     + (wt->bias ? wt->bias[n + i] : 0.f);
            b += R;
        }
#endif
        for (; b < B; b++) {
            act8_dot4xR(r, a->row_bytes, a->K, a->a, b, out, a->fmt, 1);
            for (int64_t i = 0; i < m; i++)
                a->y[b * a->ldy + n + i] = out[0][i] + (wt->bias ? wt->bias[n + i] : 0.f);
        }
    }
}
#endif

/* y[b, n] = (sum_k x[b, k] w[n, k]) * scale[n] + bias[n];  x (B, K), y (B, ldy), n < rows */
static void matvec1(const Weight *wt, const float *x, float *y, int64_t B, int64_t K,
                    int64_t ldy) {
    if (wt->fmt == FMT_F32_PANELS) {
        matvec_panels(wt, x, y, B, K, ldy);
        return;
    }
    int64_t fmt = wt->fmt & ~(int64_t)FMT_ACT8, blocks_fmt = is_blocks(fmt);
#ifdef HAVE_ACT8
    if ((wt->fmt & FMT_ACT8) && act8_format(fmt) && B <= act8_max_rows()) {
        size_t row_bytes = (size_t)(K / block_len(fmt) * block_bytes(fmt));
        int64_t N = wt->rows, whole = N / 4;
        char *tail = NULL;
        if (N % 4) {
            tail = calloc(4, row_bytes);
            memcpy(tail, (const char *)wt->w + whole * 4 * row_bytes, (N % 4) * row_bytes);
        }
        Act8 a = act8_quantize(x, B, K);
#ifdef HAVE_ACT8_BATCH
        int64_t ng = 0, B4 = 0;
        Act8Batch *groups = malloc(sizeof(Act8Batch) * (size_t)(B / 4 + 1));
        while (B - B4 >= 4) {
            int R = B - B4 >= 8 ? 8 : 4;
            groups[ng++] = act8_interleave(&a, K, B4, R);
            B4 += R;
        }
        Act8Job job = {wt, fmt, B, K, ldy, &a, groups, B4, tail, row_bytes, y};
#else
        Act8Job job = {wt, fmt, B, K, ldy, &a, tail, row_bytes, y};
#endif
        parallel_for((N + 3) / 4, act8_rows, &job);
#ifdef HAVE_ACT8_BATCH
        for (int64_t g = 0; g < ng; g++) act8_batch_free(groups[g]);
        free(groups);
#endif
        act8_free(a);
        free(tail);
        return;
    }
#endif
    Weight plain = *wt; /* the flag dropped: multiplied in float32 */
    plain.fmt = fmt;
    wt = &plain;
    size_t row_bytes = blocks_fmt ? (size_t)(K / block_len(fmt) * block_bytes(fmt))
                                  : (size_t)K * (fmt == FMT_INT8 ? 1 : sizeof(float));
    int64_t N = wt->rows, whole = N / 4;
    char *tail = NULL; /* the last N % 4 rows, zero-padded to a block of four */
#if defined(HAVE_BLOCKS_AVX512) || defined(HAVE_BLOCKS_AVX2)
    float *xsum = fmt == FMT_Q4_K || fmt == FMT_Q5_K || fmt == FMT_Q5_0 || fmt == FMT_Q5_1
                      ? sums32(x, B, K) : NULL;
#else
    float *xsum = NULL;
#endif
    if (N % 4) {
        tail = calloc(4, row_bytes);
        memcpy(tail, (const char *)wt->w + whole * 4 * row_bytes, (N % 4) * row_bytes);
    }
    MatvecJob job = {wt, x, y, B, K, ldy, tail, xsum, row_bytes};
    parallel_for((N + 3) / 4, matvec_rows, &job);
    free(tail);
    free(xsum);
}

/* y (B, ldy) = x @ [W_0; W_1; ...].T: the outputs of n weights side by side (e.g. q, k, v
   separately, or one fused qkv) */
static void matvec(const Weight *ws, int64_t n, const float *x, float *y, int64_t B, int64_t K,
                   int64_t ldy) {
    int64_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        matvec1(&ws[i], x, y + off, B, K, ldy);
        off += ws[i].rows;
    }
}

/* y (B, N) = x (B, K) @ (w * scale).T + bias, for Int8Linear (nn/quant.py) */
void int8_linear(const float *x, const int8_t *w, const float *scale, const float *bias,
                 float *y, int64_t B, int64_t N, int64_t K) {
    Weight wt = {w, scale, bias, N, FMT_INT8};
    matvec1(&wt, x, y, B, K, N);
}

/* y (B, N) = x (B, K) @ w.T + bias for a float32 weight: an output head in a decode step,
   where a (B, K) x (K, N) matmul with B <= 16 and N ~ 10^5 is a memory stream */
void f32_linear(const float *x, const float *w, const float *bias, float *y, int64_t B,
                int64_t N, int64_t K) {
    Weight wt = {w, NULL, bias, N, FMT_F32};
    matvec1(&wt, x, y, B, K, N);
}

/* y (B, N) = x (B, K) @ W.T + bias for W packed by f32_panels */
void panel_linear(const float *x, const float *panels, const float *bias, float *y, int64_t B,
                  int64_t N, int64_t K) {
    Weight wt = {panels, NULL, bias, N, FMT_F32_PANELS};
    matvec1(&wt, x, y, B, K, N);
}

/* y (B, N) = x (B, K) @ W.T + bias for W stored as GGUF blocks of format fmt (FMT_Q8_0,
   FMT_Q4_0, FMT_Q4_1, FMT_Q5_0, FMT_Q5_1: K a multiple of 32; the K-quants: of 256)
   (nn/gguf_linear.py) */
void gguf_linear(const float *x, const uint8_t *w, int64_t fmt, const float *bias, float *y,
                 int64_t B, int64_t N, int64_t K) {
    Weight wt = {w, NULL, bias, N, fmt};
    matvec1(&wt, x, y, B, K, N);
}

/* ---- one Llama decoder layer --------------------------------------------------------------
   For each of the B rows, one new token at cache slot `slot`:

     h = rms_norm(x) * norm1                      q, k, v = split(h @ Wqkv)
     q, k = rms_norm(q) * q_norm, rms_norm(k) * k_norm   per head, when given (Qwen3)
     q, k = rope(q), rope(k)  (cos/sin rows of this token's position; sin's first half negated)
     cache[slot] = k, v       ctx = softmax(q . K[start:slot+1] / sqrt(D)) V   per head (GQA)
     x += ctx @ Wo            h = rms_norm(x) * norm2
     g, u = split(h @ W12)    x += (silu(g) * u) @ W3

   x (B, C) is updated in place; k_cache/v_cache are this layer's (B, KV, max_len, D) tensors;
   start[b] is row b's first real slot (left padding). */

static void rms_norm(const float *x, const float *weight, float eps, float *out, int64_t C) {
    float ss = 0.f;
    for (int64_t c = 0; c < C; c++) ss += x[c] * x[c];
    float inv = 1.f / sqrtf(ss / (float)C + eps);
    for (int64_t c = 0; c < C; c++) out[c] = x[c] * inv * weight[c];
}

static void rope(float *v, const float *cos, const float *sin, int64_t D) {
    float tmp[D];
    int64_t half = D / 2;
    for (int64_t i = 0; i < D; i++) tmp[i] = v[i] * cos[i] + v[(i + half) % D] * sin[i];
    memcpy(v, tmp, sizeof(float) * D);
}

/* e^x for x in [-87.3, 88.3] (clamped there) within 2 ulp: Cephes' expf, 2^n times a degree-7
   polynomial of the remainder, in plain arithmetic so that a loop of it vectorizes (glibc's
   expf is a scalar call; it was most of the softmax and SiLU time, 0.9 ms a token for SmolLM2
   at batch 1) */
static inline float exp_approx(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f; /* round to nearest */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* Write this token's keys and values (rows of qkv after the H query heads) at `slot`. */
static void cache_write(const float *qkv, int64_t Q, int64_t B, int64_t H, int64_t KV, int64_t D,
                        float *k_cache, float *v_cache, int64_t max_len, int64_t slot) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < KV; j++) {
            int64_t at = ((b * KV + j) * max_len + slot) * D;
            memcpy(k_cache + at, qkv + b * Q + (H + j) * D, sizeof(float) * D);
            memcpy(v_cache + at, qkv + b * Q + (H + KV + j) * D, sizeof(float) * D);
        }
}

/* ctx (B, H*D): per head, softmax(q . K[start:slot+1] / sqrt(D)) V over the cache, the query
   heads of a group sharing one key/value head (GQA; KV == H is plain multi-head attention) */
typedef struct {
    const float *qkv, *k_cache, *v_cache;
    const int64_t *start;
    float *ctx, *scores;
    int64_t Q, H, KV, D, max_len, slot;
} AttendJob;

static void attend_heads(void *job, int64_t lo, int64_t hi) {
    const AttendJob *a = job;
    const float *qkv = a->qkv, *k_cache = a->k_cache, *v_cache = a->v_cache;
    const int64_t *start = a->start;
    float *ctx = a->ctx, *scores = a->scores;
    int64_t Q = a->Q, H = a->H, KV = a->KV, D = a->D, max_len = a->max_len, slot = a->slot;
    int64_t group = H / KV;
    float scale = 1.f / sqrtf((float)D);
    for (int64_t bh = lo; bh < hi; bh++) {
        int64_t b = bh / H, hd = bh % H, kvh = hd / group;
        const float *q = qkv + b * Q + hd * D;
        const float *keys = k_cache + (b * KV + kvh) * max_len * D;
        const float *vals = v_cache + (b * KV + kvh) * max_len * D;
        float *s = scores + bh * (slot + 1), *o = ctx + (b * H + hd) * D;
        float m = -INFINITY, sum = 0.f;
        for (int64_t t = start[b]; t <= slot; t++) {
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < D; i++) dot += q[i] * keys[t * D + i];
            s[t] = dot * scale;
            m = s[t] > m ? s[t] : m;
        }
#pragma omp simd reduction(+ : sum)
        for (int64_t t = start[b]; t <= slot; t++) {
            s[t] = exp_approx(s[t] - m);
            sum += s[t];
        }
        for (int64_t i = 0; i < D; i++) o[i] = 0.f;
        for (int64_t t = start[b]; t <= slot; t++) {
            float p = s[t];
#pragma omp simd
            for (int64_t i = 0; i < D; i++) o[i] += p * vals[t * D + i];
        }
        for (int64_t i = 0; i < D; i++) o[i] /= sum;
    }
}

static void attend(const float *qkv, int64_t Q, int64_t B, int64_t H, int64_t KV, int64_t D,
                   const float *k_cache, const float *v_cache, int64_t max_len, int64_t slot,
                   const int64_t *start, float *ctx) {
    float *scores = malloc(sizeof(float) * B * H * (slot + 1));
    AttendJob job = {qkv, k_cache, v_cache, start, ctx, scores, Q, H, KV, D, max_len, slot};
    parallel_for(B * H, attend_heads, &job);
    free(scores);
}

void llama_layer(float *x, int64_t B, int64_t C, int64_t H, int64_t KV, int64_t D, int64_t I,
                 float eps, const float *norm1, const Weight *qkv_w, int64_t n_qkv,
                 const Weight *o_w, const float *norm2, const Weight *gate_up_w,
                 int64_t n_gate_up, const Weight *down_w,
                 const float *cos, const float *sin, float *k_cache, float *v_cache,
                 int64_t max_len, int64_t slot, const int64_t *start,
                 const float *q_norm, const float *k_norm) {
    int64_t Q = (H + 2 * KV) * D;
    float *h = malloc(sizeof(float) * B * C), *qkv = malloc(sizeof(float) * B * Q);
    float *ctx = malloc(sizeof(float) * B * H * D), *out = malloc(sizeof(float) * B * C);
    float *gu = malloc(sizeof(float) * B * 2 * I), *act = malloc(sizeof(float) * B * I);

    for (int64_t b = 0; b < B; b++) rms_norm(x + b * C, norm1, eps, h + b * C, C);
    matvec(qkv_w, n_qkv, h, qkv, B, C, Q);
    for (int64_t b = 0; b < B; b++) {
        float *row = qkv + b * Q;
        if (q_norm)  /* in place: rms_norm reads each value before it writes it */
            for (int64_t j = 0; j < H + KV; j++)
                rms_norm(row + j * D, j < H ? q_norm : k_norm, eps, row + j * D, D);
        for (int64_t j = 0; j < H + KV; j++) rope(row + j * D, cos + b * D, sin + b * D, D);
    }
    cache_write(qkv, Q, B, H, KV, D, k_cache, v_cache, max_len, slot);
    attend(qkv, Q, B, H, KV, D, k_cache, v_cache, max_len, slot, start, ctx);
    matvec(o_w, 1, ctx, out, B, H * D, C);
    for (int64_t j = 0; j < B * C; j++) x[j] += out[j];

    for (int64_t b = 0; b < B; b++) rms_norm(x + b * C, norm2, eps, h + b * C, C);
    matvec(gate_up_w, n_gate_up, h, gu, B, C, 2 * I);
    for (int64_t b = 0; b < B; b++) {
        const float *g = gu + b * 2 * I, *u = g + I;
        float *a = act + b * I;
#pragma omp simd
        for (int64_t j = 0; j < I; j++) a[j] = g[j] / (1.f + exp_approx(-g[j])) * u[j];
    }
    matvec(down_w, 1, act, out, B, I, C);
    for (int64_t j = 0; j < B * C; j++) x[j] += out[j];

    free(h); free(qkv); free(ctx); free(out); free(gu); free(act);
}

/* ---- one GPT-2 decoder layer --------------------------------------------------------------
     h = layer_norm(x)            q, k, v = split(h @ Wqkv + b)      cache[slot] = k, v
     ctx = attention as above     x += ctx @ Wo + b
     h = layer_norm(x)            x += gelu_tanh(h @ Wfc + b) @ Wproj + b
   (positions are learned embeddings, added to x before the first layer) */

static void layer_norm(const float *x, const float *weight, const float *bias, float eps,
                       float *out, int64_t C) {
    float mean = 0.f, var = 0.f;
    for (int64_t c = 0; c < C; c++) mean += x[c];
    mean /= (float)C;
    for (int64_t c = 0; c < C; c++) var += (x[c] - mean) * (x[c] - mean);
    float inv = 1.f / sqrtf(var / (float)C + eps);
    for (int64_t c = 0; c < C; c++) out[c] = (x[c] - mean) * inv * weight[c] + bias[c];
}

void gpt_layer(float *x, int64_t B, int64_t C, int64_t H, int64_t D, int64_t I, float eps,
               const float *ln1_w, const float *ln1_b, const Weight *qkv_w, const Weight *o_w,
               const float *ln2_w, const float *ln2_b, const Weight *fc_w, const Weight *proj_w,
               float *k_cache, float *v_cache, int64_t max_len, int64_t slot,
               const int64_t *start) {
    int64_t Q = 3 * H * D;
    float *h = malloc(sizeof(float) * B * C), *qkv = malloc(sizeof(float) * B * Q);
    float *ctx = malloc(sizeof(float) * B * H * D), *out = malloc(sizeof(float) * B * C);
    float *hid = malloc(sizeof(float) * B * I);

    for (int64_t b = 0; b < B; b++) layer_norm(x + b * C, ln1_w, ln1_b, eps, h + b * C, C);
    matvec(qkv_w, 1, h, qkv, B, C, Q);
    cache_write(qkv, Q, B, H, H, D, k_cache, v_cache, max_len, slot);
    attend(qkv, Q, B, H, H, D, k_cache, v_cache, max_len, slot, start, ctx);
    matvec(o_w, 1, ctx, out, B, H * D, C);
    for (int64_t j = 0; j < B * C; j++) x[j] += out[j];

    for (int64_t b = 0; b < B; b++) layer_norm(x + b * C, ln2_w, ln2_b, eps, h + b * C, C);
    matvec(fc_w, 1, h, hid, B, C, I);
    const float k0 = 0.7978845608028654f; /* sqrt(2 / pi) */
#pragma omp simd
    for (int64_t j = 0; j < B * I; j++) { /* 1 + tanh(y) = 2 - 2 / (e^(2y) + 1) */
        float v = hid[j], y = k0 * (v + 0.044715f * v * v * v);
        hid[j] = 0.5f * v * (2.f - 2.f / (exp_approx(2.f * y) + 1.f));
    }
    matvec(proj_w, 1, hid, out, B, I, C);
    for (int64_t j = 0; j < B * C; j++) x[j] += out[j];

    free(h); free(qkv); free(ctx); free(out); free(hid);
}

/* out (N, K) float32 = the weight of N rows of GGUF blocks (a prefill's F.linear, parallel) */
typedef struct { const uint8_t *w; int64_t fmt; float *out; int64_t K; } DequantJob;

static void dequant_rows(void *job, int64_t lo, int64_t hi) {
    const DequantJob *a = job;
    int64_t bs = block_bytes(a->fmt), L = block_len(a->fmt), nb = a->K / L;
    for (int64_t n = lo; n < hi; n++)
        for (int64_t j = 0; j < nb; j++)
            dequant_block(a->w + (n * nb + j) * bs, a->fmt, a->out + n * a->K + j * L);
}

void gguf_dequantize(const uint8_t *w, int64_t fmt, float *out, int64_t N, int64_t K) {
    DequantJob job = {w, fmt, out, K};
    parallel_for(N, dequant_rows, &job);
}
