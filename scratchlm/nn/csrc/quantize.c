/* llama.cpp's quantizers for the K-quants (Q4_K, Q5_K, Q6_K), their 5-bit fallbacks (Q5_0,
   Q5_1), and Q8_0 / Q4_0 (which export/quants.py also has in numpy, for a machine without a
   compiler), for the GGUF writer.

   These follow ggml-quants.c's reference functions (quantize_row_*_ref, what llama.cpp's
   llama_model_quantize runs without an importance matrix) operation for operation,
   so that the blocks written are byte-identical to llama.cpp's. That needs the float
   arithmetic rounded as written: nn/native.py builds this file with -ffp-contract=off and no
   -march (llama.cpp builds its quantizers the same way, in the ISA-neutral ggml base library).

   A super-block of 256 weights:
     Q4_K / Q5_K: 8 sub-blocks of 32, each with its own scale and minimum (6 bits each, under
                  fp16 d and dmin), 4-bit (Q5_K: 5-bit) q:  w = d * sc * q - dmin * m
     Q6_K:        16 sub-blocks of 16, each with an int8 scale (under fp16 d), 6-bit q:
                  w = d * sc * (q - 32)
   The layouts are nn/gguf_blocks.py's. */

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "parallel.h"

#define QK_K 256
#define GROUP_MAX_EPS 1e-15f

static inline uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* IEEE half from float, round to nearest even (ggml_compute_fp32_to_fp16) */
static uint16_t to_half(float f) {
    const float scale_to_inf = 0x1.0p+112f, scale_to_zero = 0x1.0p-110f;
    float base = (fabsf(f) * scale_to_inf) * scale_to_zero;
    uint32_t w = bits_of(f), shl1_w = w + w, sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = float_of((bias >> 1) + 0x07800000u) + base;
    uint32_t bits = bits_of(base);
    uint32_t exp_bits = (bits >> 13) & 0x00007C00u, mantissa_bits = bits & 0x00000FFFu;
    uint32_t nonsign = exp_bits + mantissa_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

/* float from IEEE half (ggml_compute_fp16_to_fp32) */
static float from_half(uint16_t h) {
    uint32_t w = (uint32_t)h << 16, sign = w & 0x80000000u, two_w = w + w;
    float normalized = float_of((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    float denormalized = float_of((two_w >> 17) | (126u << 23)) - 0.5f;
    return float_of(sign | (two_w < (1u << 27) ? bits_of(denormalized) : bits_of(normalized)));
}

static inline void put_half(uint8_t *p, float f) {
    uint16_t h = to_half(f);
    p[0] = (uint8_t)(h & 0xff);
    p[1] = (uint8_t)(h >> 8);
}

static inline float get_half(const uint8_t *p) {
    return from_half((uint16_t)(p[0] | (p[1] << 8)));
}

/* round to nearest, ties to even, for |f| <= 2^22 (the bits of f + 1.5 * 2^23) */
static inline int nearest_int(float f) {
    int i;
    float v = f + 12582912.f;
    memcpy(&i, &v, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* Scale and minimum for n values quantized to 0..nmax, minimising the weighted squared error
   over nstep + 1 trial scales around nmax / (max - min); L gets the levels, *the_min the
   minimum (as a positive number to subtract). ggml's make_qkx2_quants, with use_mad false. */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights,
                              uint8_t *L, float *the_min, uint8_t *Laux, float rmin,
                              float rdelta, int nstep) {
    float min = x[0], max = x[0], sum_w = weights[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min), scale = 1 / iscale, best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)MAX(0, MIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = diff * diff;
        best_error += weights[i] * diff;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * (x[i] - min));
            l = MAX(0, MIN(nmax, l));
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = diff * diff;
                cur_error += weights[i] * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Signed levels -nmax..nmax-1 (stored + nmax) for n values and their scale, weighted by x^2,
   trying 19 scales around nmax / max|x|. ggml's make_qx_quants with rmse_type 1, no weights. */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        l = MAX(-nmax, MIN(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]);
            l = MAX(-nmax, MIN(nmax - 1, l));
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                int l = nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + MAX(-nmax, MIN(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* sub-block j's 6-bit scale and minimum from the 12 packed bytes q */
static inline void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

/* Q4_K (nmax 15) or Q5_K (nmax 31) super-block of x into the levels L, writing d, dmin and
   the packed scales at blk (Q4_K and Q5_K share that header's layout) */
static void kx_scales_levels(const float *x, uint8_t *blk, uint8_t L[QK_K], int nmax) {
    float mins[QK_K / 32], scales[QK_K / 32], weights[32], max_scale = 0, max_min = 0;
    uint8_t Laux[32], *packed = blk + 4;
    for (int j = 0; j < QK_K / 32; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = nmax == 15
            ? make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f,
                               0.1f, 20)
            : make_qkx2_quants(32, 31, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.5f,
                               0.1f, 15);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(packed, 0, 12);
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = MIN(63, ls);
        lm = MIN(63, lm);
        if (j < 4) {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= ((ls >> 4) << 6);
            packed[j - 0] |= ((lm >> 4) << 6);
        }
    }
    put_half(blk, max_scale / 63.f);
    put_half(blk + 2, max_min / 63.f);
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t sc, m;
        get_scale_min_k4(j, packed, &sc, &m);
        const float d = get_half(blk) * sc;
        if (!d) continue;
        const float dm = get_half(blk + 2) * m;
        for (int ii = 0; ii < 32; ++ii) {
            int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)MAX(0, MIN(nmax, l));
        }
    }
}

/* 144 bytes: d, dmin, 12 bytes of scales, 128 bytes of nibbles (byte l of each 32 holds
   sub-block 2c's weight l low, 2c + 1's high) */
static void q4_k_block(const float *x, uint8_t *blk) {
    uint8_t L[QK_K];
    kx_scales_levels(x, blk, L, 15);
    uint8_t *q = blk + 16;
    for (int j = 0; j < QK_K; j += 64) {
        for (int l = 0; l < 32; ++l) q[l] = L[j + l] | (L[j + l + 32] << 4);
        q += 32;
    }
}

/* 176 bytes: d, dmin, 12 bytes of scales, 32 bytes of fifth bits (bit s of byte l: weight l
   of sub-block s), 128 bytes of low nibbles as Q4_K's */
static void q5_k_block(const float *x, uint8_t *blk) {
    uint8_t L[QK_K];
    kx_scales_levels(x, blk, L, 31);
    uint8_t *qh = blk + 16, *ql = blk + 48, m1 = 1, m2 = 2;
    memset(qh, 0, QK_K / 8);
    for (int n = 0; n < QK_K; n += 64) {
        for (int j = 0; j < 32; ++j) {
            int l1 = L[n + j];
            if (l1 > 15) {
                l1 -= 16;
                qh[j] |= m1;
            }
            int l2 = L[n + j + 32];
            if (l2 > 15) {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[j] = (uint8_t)(l1 | (l2 << 4));
        }
        m1 <<= 2;
        m2 <<= 2;
        ql += 32;
    }
}

/* 210 bytes: 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8 scales, d */
static void q6_k_block(const float *x, uint8_t *blk) {
    int8_t L[QK_K];
    float scales[QK_K / 16], max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
        scales[ib] = scale;
        const float abs_scale = fabsf(scale);
        if (abs_scale > max_abs_scale) {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    memset(blk, 0, 210);
    if (max_abs_scale < GROUP_MAX_EPS) return; /* all zero, d = 0 */
    int8_t *sc = (int8_t *)(blk + 192);
    float iscale = -128.f / max_scale;
    put_half(blk + 208, 1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ++ib) sc[ib] = (int8_t)MIN(127, nearest_int(iscale * scales[ib]));
    for (int j = 0; j < QK_K / 16; ++j) {
        float d = get_half(blk + 208) * sc[j];
        if (!d) continue;
        for (int ii = 0; ii < 16; ++ii) {
            int l = nearest_int(x[16 * j + ii] / d);
            l = MAX(-32, MIN(31, l));
            L[16 * j + ii] = (int8_t)(l + 32);
        }
    }
    uint8_t *ql = blk, *qh = blk + 128;
    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; ++l) {
            const uint8_t q1 = L[j + l + 0] & 0xF, q2 = L[j + l + 32] & 0xF;
            const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
            ql[l + 0] = q1 | (q3 << 4);
            ql[l + 32] = q2 | (q4 << 4);
            qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2)
                              | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
        }
        ql += 64;
        qh += 32;
    }
}

/* Q5_0 (nmax 16: w = d (q - 16), d = x[argmax |x|] / -16) or Q5_1 (w = d q + m over
   [min, max]): 32 weights, fp16 d (and m), 4 bytes of fifth bits (bit j: weight j), 16 bytes
   of low nibbles (weights j and j + 16 in byte j) */
static void q5_block(const float *x, uint8_t *blk, int with_min) {
    float d, id, min = 0;
    if (with_min) {
        float max = -3.402823466e+38f;
        min = 3.402823466e+38f;
        for (int j = 0; j < 32; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        d = (max - min) / ((1 << 5) - 1);
    } else {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        d = max / -16;
    }
    id = d ? 1.0f / d : 0.0f;
    put_half(blk, d);
    if (with_min) put_half(blk + 2, min);
    uint8_t *qs = blk + (with_min ? 8 : 6);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        uint8_t xi0, xi1;
        if (with_min) {
            xi0 = (uint8_t)((x[j] - min) * id + 0.5f);
            xi1 = (uint8_t)((x[16 + j] - min) * id + 0.5f);
        } else {
            xi0 = (uint8_t)MIN(31, (int8_t)(x[j] * id + 16.5f));
            xi1 = (uint8_t)MIN(31, (int8_t)(x[16 + j] * id + 16.5f));
        }
        qs[j] = (uint8_t)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
        qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
        qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
    }
    uint8_t *h = blk + (with_min ? 4 : 2);
    for (int t = 0; t < 4; t++) h[t] = (uint8_t)(qh >> (8 * t));
}

/* Q8_0 (34 bytes: d = max|x| / 127, q = round(x / d), halves away from zero) or Q4_0 (18
   bytes: d = x[argmax |x|] / -8, q = x / d + 8.5 truncated, at most 15; weights j and j + 16
   in byte j's low and high nibble) */
static void q8_q4_block(const float *x, uint8_t *blk, int q8) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; j++) {
        if (q8) {
            amax = MAX(amax, fabsf(x[j]));
        } else if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    const float d = q8 ? amax / ((1 << 7) - 1) : max / -8;
    const float id = d ? 1.0f / d : 0.0f;
    put_half(blk, d);
    if (q8) {
        for (int j = 0; j < 32; ++j) blk[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
        return;
    }
    for (int j = 0; j < 16; ++j) {
        const uint8_t xi0 = (uint8_t)MIN(15, (int8_t)(x[j] * id + 8.5f));
        const uint8_t xi1 = (uint8_t)MIN(15, (int8_t)(x[16 + j] * id + 8.5f));
        blk[2 + j] = (uint8_t)(xi0 | (xi1 << 4));
    }
}

/* out = the blocks of n float32 values x (n a multiple of the block's length) in format fmt:
   0 Q4_K, 1 Q5_K, 2 Q6_K, 3 Q5_0, 4 Q5_1, 5 Q8_0, 6 Q4_0 (NATIVE in export/quants.py);
   blocks are split over threads */
typedef struct { const float *x; uint8_t *out; int64_t fmt; } QuantJob;
static const int64_t BYTES[7] = {144, 176, 210, 22, 24, 34, 18};
static const int64_t LENGTH[7] = {256, 256, 256, 32, 32, 32, 32};

static void quantize_range(void *job, int64_t lo, int64_t hi) {
    const QuantJob *a = job;
    const int64_t fmt = a->fmt, *length = LENGTH, *bytes = BYTES;
    const float *x = a->x;
    uint8_t *out = a->out;
    for (int64_t i = lo; i < hi; i++) {
        const float *xi = x + i * length[fmt];
        uint8_t *blk = out + i * bytes[fmt];
        if (fmt == 0)
            q4_k_block(xi, blk);
        else if (fmt == 1)
            q5_k_block(xi, blk);
        else if (fmt == 2)
            q6_k_block(xi, blk);
        else if (fmt <= 4)
            q5_block(xi, blk, fmt == 4);
        else
            q8_q4_block(xi, blk, fmt == 5);
    }
}

void quantize_blocks(const float *x, uint8_t *out, int64_t n, int64_t fmt) {
    QuantJob job = {x, out, fmt};
    parallel_for(n / LENGTH[fmt], quantize_range, &job);
}

/* out = n IEEE halves as float32 (exactly; a GGUF file's F16 tensors before they are
   quantized), split over threads */
typedef struct { const uint16_t *h; float *out; } HalvesJob;

static void halves_range(void *job, int64_t lo, int64_t hi) {
    const HalvesJob *a = job;
    for (int64_t i = lo; i < hi; i++) a->out[i] = from_half(a->h[i]);
}

void halves_to_floats(const uint16_t *h, float *out, int64_t n) {
    HalvesJob job = {h, out};
    parallel_for(n, halves_range, &job);
}
