/* Part of decode.c's one translation unit (nn/native.py builds decode.c alone); GGUF blocks times
   float32 x, AVX-512 */

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
#endif
