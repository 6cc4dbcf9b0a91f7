/* Part of decode.c's one translation unit (nn/native.py builds decode.c alone); x86 helpers that
   put blocks' values together in bytes (AVX2 and up) */

#if defined(__AVX2__)
/* Q6_K: the 32 six-bit values of weights 32g + [0, 32) (half h = g / 4, k = g % 4) put
   together in bytes, minus 32: low 4 bits from ql (byte 32 (k & 1) + l of the half's 64, the
   high nibble for k >= 2), high 2 from bits 2k of qh byte l. Weights [0, 16) take scale
   8h + 2k, [16, 32) the next one. */
static inline __m256i q6k_ubytes(const uint8_t *blk, int g) { /* q in 0..63, not centred */
    int h = g / 4, k = g % 4;
    __m256i ql = _mm256_loadu_si256((const __m256i *)(blk + 64 * h + 32 * (k & 1)));
    __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h));
    __m256i lo = _mm256_and_si256(_mm256_srli_epi16(ql, 4 * (k >> 1)), _mm256_set1_epi8(0x0f));
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), _mm256_set1_epi8(3));
    return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
}

static inline __m256i q6k_bytes(const uint8_t *blk, int g) {
    return _mm256_sub_epi8(q6k_ubytes(blk, g), _mm256_set1_epi8(32));
}

/* Q4_K / Q5_K: the 32 values of sub-block sb (0..7) in bytes: chunk sb / 2's 32 bytes of
   nibbles (the low ones for an even sb, the high for an odd) and, for Q5_K, bit sb of qh byte
   l as 16 (the loads of a chunk's two sub-blocks are one load once inlined) */
static inline __attribute__((always_inline)) __m256i q4k_sub_bytes(const uint8_t *blk, int sb,
                                                                   const int q5) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256i q = _mm256_loadu_si256((const __m256i *)(blk + (q5 ? 48 : 16) + 32 * (sb / 2)));
    __m256i v = _mm256_and_si256(sb & 1 ? _mm256_srli_epi16(q, 4) : q, low4);
    if (q5) {
        __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 16));
        v = _mm256_or_si256(v, _mm256_slli_epi16(
                                   _mm256_and_si256(_mm256_srli_epi16(qh, sb), _mm256_set1_epi8(1)),
                                   4));
    }
    return v;
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
            for (int c = 0; c < 4; c++) {
                for (int odd = 0; odd < 2; odd++) { /* sub-block 2c + odd */
                    __m256i v = q4k_sub_bytes(blk, 2 * c + odd, q5);
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
