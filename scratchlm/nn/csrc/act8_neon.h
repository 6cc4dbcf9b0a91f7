/* Part of decode.c's one translation unit (nn/native.py builds decode.c alone); act8.h's
   integer kernels for ARM (aarch64 NEON, with the dotprod extension where the build has it).

   The same arithmetic as act8.h: each row of x rounded per run of 32 to int8 (scale
   max|x| / 127, ties to even), a block of 32 weights as one integer dot product of 32 bytes,
   then the block's scale times x's; offsets and minimums through the block's sum of x, Q8_0
   and Q6_K (signed values) as they are. NEON's dot product is signed by signed (sdot), so the
   weights' bytes go in as int8 (every unsigned value here is below 64). Without dotprod
   (ARMv8.0: Raspberry Pi 4, Cortex-A72) vmull_s8 + vpadalq_s16 take its place. Every row of x
   takes this path, one at a time: the alternative is the portable float code. Tested under
   qemu-user against act8.h's results (tests/nn/test_neon.py). */

#if !defined(HAVE_ACT8) && defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define HAVE_ACT8 1

static inline int act8_format(int64_t fmt) {
    return fmt == FMT_Q8_0 || fmt == FMT_Q4_0 || fmt == FMT_Q4_1 || fmt == FMT_Q5_0
           || fmt == FMT_Q5_1 || fmt == FMT_Q4_K || fmt == FMT_Q5_K || fmt == FMT_Q6_K;
}

typedef struct { int8_t *q; float *d, *s; } Act8;

static Act8 act8_quantize(const float *x, int64_t B, int64_t K) {
    int64_t n = B * K / 32;
    Act8 a = {malloc((size_t)(B * K) + 64), malloc(sizeof(float) * (size_t)n),
              malloc(sizeof(float) * (size_t)n)};
    for (int64_t t = 0; t < n; t++) {
        const float *xt = x + 32 * t;
        float32x4_t v[8], m = vdupq_n_f32(0.f), sum = m;
        for (int i = 0; i < 8; i++) {
            v[i] = vld1q_f32(xt + 4 * i);
            m = vmaxq_f32(m, vabsq_f32(v[i]));
        }
        /* the sum as act8.h adds it (lanes of 8, then across), but for the last steps */
        float32x4_t lo = vaddq_f32(vaddq_f32(v[0], v[2]), vaddq_f32(v[4], v[6]));
        float32x4_t hi = vaddq_f32(vaddq_f32(v[1], v[3]), vaddq_f32(v[5], v[7]));
        sum = vaddq_f32(lo, hi);
        float amax = vmaxvq_f32(m), d = amax / 127.f;
        float32x4_t inv = vdupq_n_f32(d > 0.f ? 127.f / amax : 0.f);
        int16x8_t h[4];
        for (int i = 0; i < 4; i++) /* round to nearest, ties to even */
            h[i] = vcombine_s16(vqmovn_s32(vcvtnq_s32_f32(vmulq_f32(v[2 * i], inv))),
                                vqmovn_s32(vcvtnq_s32_f32(vmulq_f32(v[2 * i + 1], inv))));
        vst1q_s8(a.q + 32 * t, vcombine_s8(vqmovn_s16(h[0]), vqmovn_s16(h[1])));
        vst1q_s8(a.q + 32 * t + 16, vcombine_s8(vqmovn_s16(h[2]), vqmovn_s16(h[3])));
        a.d[t] = d;
        a.s[t] = vaddvq_f32(sum);
    }
    return a;
}

static void act8_free(Act8 a) {
    free(a.q);
    free(a.d);
    free(a.s);
}

/* acc + the dot products of a and b in groups of 4 (int32 lanes) */
static inline int32x4_t act8_dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else /* |a b| <= 64 * 127 here (Q8_0: 128 * 127), two of them fit int16 */
    int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    p = vmlal_s8(p, vget_high_s8(a), vget_high_s8(b));
    return vpadalq_s16(acc, p);
#endif
}

/* the fifth bits of Q5_0 / Q5_1 / a Q5_K sub-block for 16 weights, as 16 (bits b0.., one a
   byte of m8 per 8 weights: lanes 0-7 from byte lo, 8-15 from byte hi) */
static inline uint8x16_t act8_bits16(uint8_t lo, uint8_t hi) {
    static const uint8_t masks[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint8x16_t b = vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi));
    return vandq_u8(vtstq_u8(b, vld1q_u8(masks)), vdupq_n_u8(16));
}

/* one weight row of blocks (row) times row b of x (rounded: a) */
static float act8_row_neon(const uint8_t *row, int64_t K, const Act8 *a, int64_t b,
                           int64_t fmt) {
    int64_t nx = K / 32;
    const int8_t *xq = a->q + b * K;
    const float *xd = a->d + b * nx, *xs = a->s + b * nx;
    const uint8x16_t low4 = vdupq_n_u8(0x0f);
    float y = 0.f, corr = 0.f;
    if (!is_kquant(fmt)) {
        int64_t bs = block_bytes(fmt);
        for (int64_t j = 0; j < nx; j++) {
            const uint8_t *blk = row + j * bs;
            int8x16_t w0, w1;
            float d = half_to_float(blk), m = 0.f;
            if (fmt == FMT_Q8_0) {
                w0 = vld1q_s8((const int8_t *)blk + 2);
                w1 = vld1q_s8((const int8_t *)blk + 18);
            } else {
                int q5 = fmt == FMT_Q5_0 || fmt == FMT_Q5_1, has_m = fmt == FMT_Q4_1
                                                                      || fmt == FMT_Q5_1;
                const uint8_t *qs = blk + 2 + 2 * has_m + 4 * q5;
                uint8x16_t q = vld1q_u8(qs), lo = vandq_u8(q, low4), hi = vshrq_n_u8(q, 4);
                if (q5) {
                    const uint8_t *qh = blk + 2 + 2 * has_m;
                    lo = vorrq_u8(lo, act8_bits16(qh[0], qh[1]));
                    hi = vorrq_u8(hi, act8_bits16(qh[2], qh[3]));
                }
                w0 = vreinterpretq_s8_u8(lo);
                w1 = vreinterpretq_s8_u8(hi);
                m = has_m ? half_to_float(blk + 2) : q5 ? -16.f * d : -8.f * d;
            }
            int32x4_t acc = act8_dot16(vdupq_n_s32(0), w0, vld1q_s8(xq + 32 * j));
            acc = act8_dot16(acc, w1, vld1q_s8(xq + 32 * j + 16));
            y += d * xd[j] * (float)vaddvq_s32(acc);
            corr += m * xs[j];
        }
        return y + corr;
    }
    int64_t bs = block_bytes(fmt);
    for (int64_t j = 0; j < K / 256; j++) {
        const uint8_t *blk = row + j * bs;
        if (fmt == FMT_Q6_K) {
            const int8_t *sc = (const int8_t *)(blk + 192);
            float d = half_to_float(blk + 208);
            for (int g = 0; g < 8; g++) { /* weights 32g + [0, 32): scales s, s + 1 */
                int h = g / 4, k = g % 4, s = 8 * h + 2 * k;
                const uint8_t *ql = blk + 64 * h + 32 * (k & 1), *qh = blk + 128 + 32 * h;
                int64_t t = 8 * j + g;
                int32_t dots[2];
                for (int half = 0; half < 2; half++) {
                    uint8x16_t l = vld1q_u8(ql + 16 * half), u = vld1q_u8(qh + 16 * half);
                    l = k >> 1 ? vshrq_n_u8(l, 4) : vandq_u8(l, low4);
                    u = vandq_u8(vshlq_u8(u, vdupq_n_s8((int8_t)(-2 * k))), vdupq_n_u8(3));
                    int8x16_t w = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(l, vshlq_n_u8(u, 4))),
                                           vdupq_n_s8(32));
                    dots[half] = vaddvq_s32(act8_dot16(vdupq_n_s32(0), w,
                                                       vld1q_s8(xq + 32 * t + 16 * half)));
                }
                y += d * xd[t] * ((float)sc[s] * (float)dots[0] + (float)sc[s + 1] * (float)dots[1]);
            }
            continue;
        }
        const int q5 = fmt == FMT_Q5_K;
        float sc[8], mn[8];
        q4k_scales(blk, sc, mn);
        const uint8_t *qs = blk + (q5 ? 48 : 16), *qh = blk + 16;
        for (int c = 0; c < 4; c++)
            for (int odd = 0; odd < 2; odd++) { /* sub-block 2c + odd: 32 bytes' nibbles */
                int sb = 2 * c + odd;
                int64_t t = 8 * j + sb;
                int32x4_t acc = vdupq_n_s32(0);
                for (int half = 0; half < 2; half++) {
                    uint8x16_t q = vld1q_u8(qs + 32 * c + 16 * half);
                    q = odd ? vshrq_n_u8(q, 4) : vandq_u8(q, low4);
                    if (q5) {
                        uint8x16_t hb = vld1q_u8(qh + 16 * half);
                        hb = vandq_u8(vshlq_u8(hb, vdupq_n_s8((int8_t)(-sb))), vdupq_n_u8(1));
                        q = vorrq_u8(q, vshlq_n_u8(hb, 4));
                    }
                    acc = act8_dot16(acc, vreinterpretq_s8_u8(q), vld1q_s8(xq + 32 * t + 16 * half));
                }
                y += sc[sb] * xd[t] * (float)vaddvq_s32(acc);
                corr -= mn[sb] * xs[t];
            }
    }
    return y + corr;
}

/* act8.h's entry: four weight rows (rows, row_bytes apart) by rows b0 .. b0 + R of x */
static void act8_dot4xR(const uint8_t *rows, size_t row_bytes, int64_t K, const Act8 *a,
                        int64_t b0, float out[8][4], int64_t fmt, int R) {
    for (int i = 0; i < 4; i++)
        for (int b = 0; b < R; b++)
            out[b][i] = act8_row_neon(rows + i * row_bytes, K, a, b0 + b, fmt);
}
#endif
