/* Part of decode.c's one translation unit (nn/native.py builds decode.c alone); GGUF block
   formats: sizes, fp16, dequantization, in plain C */

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
