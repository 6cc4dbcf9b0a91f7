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
   lets a step run at the speed of its weight bytes.

   decode.h is the interface (formats, the Weight struct, the entry points; nn/native.py's
   tables are tested against it). The kernels are split by concern into headers that this file
   includes, one translation unit: rows.h (int8 / float32 rows per ISA), blocks.h (the block
   formats, plain C), blocks_x86.h, act8.h, act8_batch.h, act8_neon.h, blocks_avx512.h,
   blocks_avx2.h (the block kernels per ISA), layers.h (the decoder layers); this file has the matvec that dispatches to them,
   the float32 panels and the entry points. */

#include <math.h>
#include <stdint.h>
#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
#include <stdlib.h>
#include <string.h>

#include "decode.h"
#include "parallel.h"

#define PREFETCH_AHEAD 8192 /* bytes; 4-16 KiB measured best on an AVX-512 Xeon */

#include "rows.h"          /* int8 / float32 rows, per ISA */
#include "blocks.h"        /* the block formats, dequantization */
#include "blocks_x86.h"    /* x86 byte assembly of blocks */
#include "act8.h"          /* blocks x activations rounded to 8 bits (integers) */
#include "act8_batch.h"    /* the same for batches of rows */
#include "act8_neon.h"     /* the same on ARM (NEON, dotprod) */
#include "blocks_avx512.h" /* blocks x float32, AVX-512 */
#include "blocks_avx2.h"   /* blocks x float32, AVX2 */

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

/* The most rows of x a matvec takes with 8-bit activations (FMT_ACT8): any number where the
   build has them (x86: act8_batch.h's groups of 8 and 4, then single rows; ARM: single rows) */
int64_t act8_max_rows(void) {
#ifdef HAVE_ACT8
    return INT64_MAX;
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

#include "layers.h" /* llama_layer, gpt_layer */

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
