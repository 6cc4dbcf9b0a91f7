/* GGUF blocks times activations rounded to 8 bits: integer dot products, as llama.cpp
   multiplies (included by decode.c after its block helpers; x86 with AVX2; ARM: act8_neon.h).

   The float path of decode.c widens every weight to float32 and multiplies in float32: exact
   to the file's weights, but bound by the arithmetic of widening (about 20 G weights/s for
   Q5_0 on an AVX-512 core, docs/llama.md). Here each row of x is first rounded, per run of 32,
   to int8 with one float scale (xd = max|x| / 127, as llama.cpp's Q8_0 activations; llama.cpp
   rounds its K-quants' activations per 256, coarser), and a block of 32 weights becomes one
   integer dot product of 32 bytes:

       u8 weights . s8 activations -> 8 int32 lanes   (VNNI vpdpbusd, or AVX2's
                                                        maddubs + madd where there is no VNNI)

   then one float multiply-add by the block's scale times x's. Unsigned weights (Q4_*, Q5_*,
   Q4_K, Q5_K: q in 0..31) go in as they are, their offset or minimum applied through the sum
   of the block's activations (taken once per matvec); signed ones (Q8_0, Q6_K's q - 32) as
   |w| . sign(x, w). Results differ from the float path by the rounding of x (relative error
   about 1/254 per block, as in llama.cpp). quantize="gguf-a8" (checkpoints/load.py) asks for
   it by setting FMT_ACT8 on a weight's format. */

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define HAVE_ACT8 1

/* acc + the 4-byte dot products of u (unsigned) and s (signed) in each int32 lane */
static inline __m256i dpbusd8(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else /* pairs into int16 (no overflow: u <= 128, |s| <= 127), then pairs of those */
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s),
                                                   _mm256_set1_epi16(1)));
#endif
}

/* Whether a format has an integer kernel here */
static inline int act8_format(int64_t fmt) {
    return fmt == FMT_Q8_0 || fmt == FMT_Q4_0 || fmt == FMT_Q4_1 || fmt == FMT_Q5_0
           || fmt == FMT_Q5_1 || fmt == FMT_Q4_K || fmt == FMT_Q5_K || fmt == FMT_Q6_K;
}

/* x (B, K) rounded per run of 32: xq (B, K) int8, xd (B, K / 32) the scales, xs (B, K / 32)
   each run's sum of x (not rounded), for the offsets and minimums; r (B, K / 16) the rounded
   sums per 16, xd * sum(xq) (the batch kernel's signed-weight corrections: taken only when
   there are 4 rows or more, which are the rows that kernel gets; NULL otherwise) */
typedef struct { int8_t *q; float *d, *s, *r; } Act8;

static Act8 act8_quantize(const float *x, int64_t B, int64_t K) {
    int64_t n = B * K / 32;
    int batch = B >= 4;
    Act8 a = {malloc((size_t)(B * K) + 64), malloc(sizeof(float) * (size_t)n),
              malloc(sizeof(float) * (size_t)n),
              batch ? malloc(sizeof(float) * (size_t)(2 * n)) : NULL};
    const __m256 sign = _mm256_set1_ps(-0.f);
    for (int64_t t = 0; t < n; t++) {
        const float *xt = x + 32 * t;
        __m256 v[4], m = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(xt + 8 * i);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[i]));
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h))), d = amax / 127.f;
        __m256 inv = _mm256_set1_ps(d > 0.f ? 127.f / amax : 0.f);
        __m256i i32[4];
        for (int i = 0; i < 4; i++) /* round to nearest (even), as llama.cpp's roundf nearly */
            i32[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
        __m256i p01 = _mm256_packs_epi32(i32[0], i32[1]), p23 = _mm256_packs_epi32(i32[2], i32[3]);
        __m256i q = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23),
                                                _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(a.q + 32 * t), q);
        a.d[t] = d;
        a.s[t] = hsum8(_mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3])));
        if (batch) {
            a.r[2 * t] = d * hsum8(_mm256_cvtepi32_ps(_mm256_add_epi32(i32[0], i32[1])));
            a.r[2 * t + 1] = d * hsum8(_mm256_cvtepi32_ps(_mm256_add_epi32(i32[2], i32[3])));
        }
    }
    return a;
}

static void act8_free(Act8 a) {
    free(a.q);
    free(a.d);
    free(a.s);
    free(a.r);
}

/* The 32 weights of a block of 32 as bytes in element order: unsigned q (Q4_*, Q5_*) or
   signed w (Q8_0) */
static inline __m256i act8_block_bytes(const uint8_t *b, int64_t fmt) {
    if (fmt == FMT_Q8_0)
        return _mm256_loadu_si256((const __m256i *)(b + 2));
    if (fmt == FMT_Q5_0 || fmt == FMT_Q5_1)
        return q5_bytes(b, fmt);
    __m128i q = _mm_loadu_si128((const __m128i *)(b + (fmt == FMT_Q4_0 ? 2 : 4)));
    return _mm256_and_si256(
        _mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1),
        _mm256_set1_epi8(0x0f));
}

/* out[b] = row . x_b for one weight row of blocks of 32 and R rows of x (rounded: a) */
static inline __attribute__((always_inline)) void act8_row_blocks(
    const uint8_t *row, int64_t K, const Act8 *a, int64_t b0, float out[8], const int64_t fmt,
    const int R) {
    int64_t bs = block_bytes(fmt), nb = K / 32;
    __m256 acc[2][8]; /* even and odd blocks: two chains of multiply-adds per row of x */
    float corr[8];
    for (int b = 0; b < R; b++) {
        acc[0][b] = acc[1][b] = _mm256_setzero_ps();
        corr[b] = 0.f;
    }
    for (int64_t j0 = 0; j0 < nb; j0 += 2) {
        _mm_prefetch((const char *)(row + j0 * bs) + PREFETCH_AHEAD / 2, _MM_HINT_T0);
        for (int h = 0; h < 2; h++) { /* unrolled: acc[h] stays in registers */
            int64_t j = j0 + h;
            if (j >= nb)
                break;
            const uint8_t *blk = row + j * bs;
            __m256i w = act8_block_bytes(blk, fmt), u = w;
            if (fmt == FMT_Q8_0)
                u = _mm256_sign_epi8(w, w); /* |w| */
            float d = half_to_float(blk);
            /* the block's constant term per unit of x: Q4_0 -8d, Q5_0 -16d, Q4_1 / Q5_1 m */
            float m = fmt == FMT_Q4_0 ? -8.f * d : fmt == FMT_Q5_0 ? -16.f * d
                      : fmt == FMT_Q4_1 || fmt == FMT_Q5_1 ? half_to_float(blk + 2) : 0.f;
            for (int b = 0; b < R; b++) {
                int64_t t = (b0 + b) * nb + j;
                __m256i s = _mm256_loadu_si256((const __m256i *)(a->q + 32 * t));
                if (fmt == FMT_Q8_0)
                    s = _mm256_sign_epi8(s, w);
                __m256i dot = dpbusd8(_mm256_setzero_si256(), u, s);
                acc[h][b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                                            _mm256_set1_ps(d * a->d[t]), acc[h][b]);
                if (fmt != FMT_Q8_0)
                    corr[b] += m * a->s[t];
            }
        }
    }
    for (int b = 0; b < R; b++) out[b] = hsum8(_mm256_add_ps(acc[0][b], acc[1][b])) + corr[b];
}

/* The same for a row of K-quant super-blocks (Q4_K, Q5_K: eight sub-blocks of 32 with 6-bit
   scale and minimum; Q6_K: sixteen of 16 with int8 scales, q - 32 signed) */
static inline __attribute__((always_inline)) void act8_row_kquants(
    const uint8_t *row, int64_t K, const Act8 *a, int64_t b0, float out[8], const int64_t fmt,
    const int R) {
    int64_t bs = block_bytes(fmt), nb = K / 256, nx = K / 32;
    __m256 acc[2][8], mins[8]; /* two chains of multiply-adds per row of x */
    for (int b = 0; b < R; b++) acc[0][b] = acc[1][b] = mins[b] = _mm256_setzero_ps();
    for (int64_t j = 0; j < nb; j++) {
        const uint8_t *blk = row + j * bs;
        for (int line = 0; line < 3; line++)
            _mm_prefetch((const char *)blk + 64 * line + PREFETCH_AHEAD / 2, _MM_HINT_T0);
        if (fmt == FMT_Q6_K) {
            const int8_t *sc = (const int8_t *)(blk + 192);
            float d = half_to_float(blk + 208);
            for (int g = 0; g < 8; g++) { /* weights 32g + [0, 32): scales s, s + 1 */
                __m256i w = q6k_bytes(blk, g), u = _mm256_sign_epi8(w, w);
                int s = 8 * (g / 4) + 2 * (g % 4);
                __m256i scales = _mm256_setr_epi32(sc[s], sc[s], sc[s], sc[s], sc[s + 1],
                                                   sc[s + 1], sc[s + 1], sc[s + 1]);
                for (int b = 0; b < R; b++) {
                    int64_t t = (b0 + b) * nx + 8 * j + g;
                    __m256i xs = _mm256_sign_epi8(
                        _mm256_loadu_si256((const __m256i *)(a->q + 32 * t)), w);
                    __m256i dot = _mm256_mullo_epi32(dpbusd8(_mm256_setzero_si256(), u, xs),
                                                     scales);
                    acc[g & 1][b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                                                    _mm256_set1_ps(d * a->d[t]), acc[g & 1][b]);
                }
            }
            continue;
        }
        const int q5 = fmt == FMT_Q5_K;
        float sc[8], scx[8][8]; /* scx[b][s]: sub-block s's scale times x's */
        __m256 mn;
        q4k_scales8(blk, sc, &mn);
        for (int b = 0; b < R; b++) { /* the minimums times x's sums, 8 sub-blocks at once */
            int64_t t = (b0 + b) * nx + 8 * j;
            mins[b] = _mm256_fmadd_ps(mn, _mm256_loadu_ps(a->s + t), mins[b]);
            _mm256_storeu_ps(scx[b], _mm256_mul_ps(_mm256_loadu_ps(sc),
                                                   _mm256_loadu_ps(a->d + t)));
        }
        for (int c = 0; c < 4; c++) {
            for (int odd = 0; odd < 2; odd++) { /* sub-block 2c + odd */
                __m256i v = q4k_sub_bytes(blk, 2 * c + odd, q5);
                int sb = 2 * c + odd;
                for (int b = 0; b < R; b++) {
                    int64_t t = (b0 + b) * nx + 8 * j + sb;
                    __m256i s = _mm256_loadu_si256((const __m256i *)(a->q + 32 * t));
                    __m256i dot = dpbusd8(_mm256_setzero_si256(), v, s);
                    acc[odd][b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                                                  _mm256_broadcast_ss(&scx[b][sb]), acc[odd][b]);
                }
            }
        }
    }
    for (int b = 0; b < R; b++)
        out[b] = hsum8(_mm256_sub_ps(_mm256_add_ps(acc[0][b], acc[1][b]), mins[b]));
}

/* out[b][i] = row i . x_b for four weight rows and R <= 8 rows of x */
static inline __attribute__((always_inline)) void act8_dot4xR_fmt(
    const uint8_t *rows, size_t row_bytes, int64_t K, const Act8 *a, int64_t b0,
    float out[8][4], const int64_t fmt, const int R) {
    for (int i = 0; i < 4; i++) {
        float o[8];
        if (is_kquant(fmt))
            act8_row_kquants(rows + i * row_bytes, K, a, b0, o, fmt, R);
        else
            act8_row_blocks(rows + i * row_bytes, K, a, b0, o, fmt, R);
        for (int b = 0; b < R; b++) out[b][i] = o[b];
    }
}

/* each (format, R) below is compiled on its own */
#define ACT8_CASES(R)                                                                     \
    switch (fmt) {                                                                        \
    case FMT_Q8_0: act8_dot4xR_fmt(rows, row_bytes, K, a, b0, out, FMT_Q8_0, R); break;  \
    case FMT_Q4_0: act8_dot4xR_fmt(rows, row_bytes, K, a, b0, out, FMT_Q4_0, R); break;  \
    case FMT_Q4_1: act8_dot4xR_fmt(rows, row_bytes, K, a, b0, out, FMT_Q4_1, R); break;  \
    case FMT_Q5_0: act8_dot4xR_fmt(rows, row_bytes, K, a, b0, out, FMT_Q5_0, R); break;  \
    case FMT_Q5_1: act8_dot4xR_fmt(rows, row_bytes, K, a, b0, out, FMT_Q5_1, R); break;  \
    case FMT_Q4_K: act8_dot4xR_fmt(rows, row_bytes, K, a, b0, out, FMT_Q4_K, R); break;  \
    case FMT_Q5_K: act8_dot4xR_fmt(rows, row_bytes, K, a, b0, out, FMT_Q5_K, R); break;  \
    default: act8_dot4xR_fmt(rows, row_bytes, K, a, b0, out, FMT_Q6_K, R); break;        \
    }

/* four weight rows (rows, row_bytes apart) by rows b0 .. b0 + R of x, R = 1, 4 or 8 */
static void act8_dot4xR(const uint8_t *rows, size_t row_bytes, int64_t K, const Act8 *a,
                        int64_t b0, float out[8][4], int64_t fmt, int R) {
    if (R == 8) {
        ACT8_CASES(8)
    } else if (R == 4) {
        ACT8_CASES(4)
    } else {
        ACT8_CASES(1)
    }
}
#undef ACT8_CASES

#endif
