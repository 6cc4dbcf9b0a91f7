/* Part of decode.c's one translation unit (nn/native.py builds decode.c alone); GGUF blocks times
   float32 x, AVX2 + FMA (a CPU without AVX-512) */

#if !defined(HAVE_BLOCKS_AVX512) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
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
