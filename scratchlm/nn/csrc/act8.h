/* GGUF blocks times activations rounded to 8 bits: integer dot products, as llama.cpp
   multiplies (included by decode.c after its block helpers; x86 with AVX2 only).

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
   each run's sum of x (not rounded), for the offsets and minimums */
typedef struct { int8_t *q; float *d, *s; } Act8;

static Act8 act8_quantize(const float *x, int64_t B, int64_t K) {
    int64_t n = B * K / 32;
    Act8 a = {malloc((size_t)(B * K) + 64), malloc(sizeof(float) * (size_t)n),
              malloc(sizeof(float) * (size_t)n)};
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
    }
    return a;
}

static void act8_free(Act8 a) {
    free(a.q);
    free(a.d);
    free(a.s);
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
    const __m256i low4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
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
        __m256i qh = q5 ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : low4;
        for (int c = 0; c < 4; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(blk + (q5 ? 48 : 16) + 32 * c));
            for (int odd = 0; odd < 2; odd++) { /* sub-block 2c + odd */
                __m256i v = odd ? _mm256_and_si256(_mm256_srli_epi16(q, 4), low4)
                                : _mm256_and_si256(q, low4);
                if (q5)
                    v = _mm256_or_si256(v, _mm256_slli_epi16(_mm256_and_si256(
                        _mm256_srli_epi16(qh, 2 * c + odd), one), 4));
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

/* ---- 4 or 8 rows of x at once (a batch decoding together) ----------------------------------
   Per block and row of x, the one-row kernel above spends a conversion, a broadcast scale and
   a multiply-add on every 32 weights: at 8 rows it was slower than the float kernels. Here the
   R rows' activations are interleaved, so that one integer dot product instruction multiplies
   4 weights by 4 activations of each of the R rows (int32 lanes: groups of 4 weights x R
   rows, the weights broadcast to the R lanes of their group): with AVX-512 VNNI a block of 32
   weights is 32 R / 64 vpdpbusd; with AVX2 32 R / 32 of them (or of maddubs + madd without
   VNNI). The block's scale is applied to the R rows' sums at once, one vector of R floats, and
   offsets and minimums the same way. */
#define HAVE_ACT8_BATCH 1
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define ACT8_WIDE 1 /* 16 lanes */
typedef __m512i bvec;
#define bvec_add _mm512_add_epi32
#else
typedef __m256i bvec;
#define bvec_add _mm256_add_epi32
#endif

/* rows b0 .. b0 + R of a (Act8) interleaved: xi[(j 32 + 4 g) R + 4 b + t] = xq[b][32 j + 4 g + t]
   (block j, group g of 4, row b); per block j the R rows' scales xd[j R + b], exact sums
   xs[j R + b] and rounded sums per 16, xr[(2 j + half) R + b] = xd * sum(xq over the half) */
typedef struct { int8_t *xi; float *xd, *xs, *xr; } Act8Batch;

static Act8Batch act8_interleave(const Act8 *a, int64_t K, int64_t b0, int R) {
    int64_t nb = K / 32;
    Act8Batch t = {aligned_alloc(64, (size_t)(K * R + 64) / 64 * 64),
                   malloc(sizeof(float) * (size_t)(nb * R)),
                   malloc(sizeof(float) * (size_t)(nb * R)),
                   malloc(sizeof(float) * (size_t)(2 * nb * R))};
    for (int b = 0; b < R; b++) {
        const int8_t *q = a->q + (b0 + b) * K;
        for (int64_t j = 0; j < nb; j++) {
            int64_t s = (b0 + b) * nb + j;
            for (int g = 0; g < 8; g++)
                memcpy(t.xi + (32 * j + 4 * g) * R + 4 * b, q + 32 * j + 4 * g, 4);
            t.xd[j * R + b] = a->d[s];
            t.xs[j * R + b] = a->s[s];
            for (int half = 0; half < 2; half++) {
                int sum = 0;
                for (int k = 0; k < 16; k++) sum += q[32 * j + 16 * half + k];
                t.xr[(2 * j + half) * R + b] = a->d[s] * (float)sum;
            }
        }
    }
    return t;
}

static void act8_batch_free(Act8Batch t) {
    free(t.xi);
    free(t.xd);
    free(t.xs);
    free(t.xr);
}

#ifdef ACT8_WIDE
/* the R rows' integer dot products with one block of 32 unsigned weights u (element order),
   summed separately over weights [0, 16) (lo) and [16, 32) (hi) */
static inline __attribute__((always_inline)) void act8_batch_dots(
    __m256i u, const int8_t *xi, const int R, bvec *lo, bvec *hi) {
    __m512i w = _mm512_castsi256_si512(u), a = _mm512_setzero_si512(), c = a;
    const int per = 16 / R; /* groups of 4 weights per vpdpbusd */
    for (int h = 0; h < 8 / per; h++) {
        /* lane l takes group h per + l / R (dwords of u) */
        __m512i idx = R == 8 ? _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
                             : _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        idx = _mm512_add_epi32(idx, _mm512_set1_epi32(h * per));
        __m512i x = _mm512_load_si512((const void *)(xi + 64 * h));
        if (h < 4 / per)
            a = _mm512_dpbusd_epi32(a, _mm512_permutexvar_epi32(idx, w), x);
        else
            c = _mm512_dpbusd_epi32(c, _mm512_permutexvar_epi32(idx, w), x);
    }
    *lo = a;
    *hi = c;
}

/* the R sums of 16 lanes that hold (groups x R rows): R floats */
static inline __m256 act8_rows_sum(bvec v, const int R) {
    __m256i s = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    if (R == 4) {
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        return _mm256_castps128_ps256(_mm_cvtepi32_ps(s4));
    }
    return _mm256_cvtepi32_ps(s);
}
#else
/* the same at 8 lanes: 8 / R groups of 4 weights per dot product instruction. u's values are
   below 64 (Q8_0's signed weights come as |w| with sign(x, w): act8_batch_row), so without
   VNNI maddubs' int16 pair sums cannot saturate */
static inline __attribute__((always_inline)) void act8_batch_dots(
    __m256i u, const int8_t *xi, const int R, bvec *lo, bvec *hi, const int signed_w) {
    __m256i a = _mm256_setzero_si256(), c = a;
    const int per = 8 / R;
    for (int h = 0; h < 8 / per; h++) {
        __m256i idx = R == 8 ? _mm256_set1_epi32(h)
                             : _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        if (R == 4)
            idx = _mm256_add_epi32(idx, _mm256_set1_epi32(2 * h));
        __m256i w = _mm256_permutevar8x32_epi32(u, idx);
        __m256i x = _mm256_load_si256((const __m256i *)(xi + 32 * h));
        if (signed_w) {
            x = _mm256_sign_epi8(x, w);
            w = _mm256_sign_epi8(w, w);
        }
        if (h < 4 / per)
            a = dpbusd8(a, w, x);
        else
            c = dpbusd8(c, w, x);
    }
    *lo = a;
    *hi = c;
}

static inline __m256 act8_rows_sum(bvec v, const int R) {
    if (R == 4)
        return _mm256_castps128_ps256(_mm_cvtepi32_ps(
            _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1))));
    return _mm256_cvtepi32_ps(v);
}
#endif

/* the R rows' vector of per-row floats at p (R = 4: the low half) */
static inline __m256 act8_load_rows(const float *p, const int R) {
    return R == 8 ? _mm256_loadu_ps(p) : _mm256_castps128_ps256(_mm_loadu_ps(p));
}

/* unsigned weights (all but Q8_0) */
#ifdef ACT8_WIDE
#define ACT8_DOTS(u, xi, R, lo, hi) act8_batch_dots(u, xi, R, lo, hi)
#else
#define ACT8_DOTS(u, xi, R, lo, hi) act8_batch_dots(u, xi, R, lo, hi, 0)
#endif

/* out[b] = row . x_b for one weight row and R = 4 or 8 interleaved rows of x */
static inline __attribute__((always_inline)) void act8_batch_row(
    const uint8_t *row, int64_t K, const Act8Batch *t, float out[8], const int64_t fmt,
    const int R) {
    int64_t bs = block_bytes(fmt);
    __m256 y = _mm256_setzero_ps(), y2 = y;
    const __m256i low4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    if (!is_kquant(fmt)) {
        for (int64_t j = 0; j < K / 32; j++) {
            const uint8_t *blk = row + j * bs;
            if ((j & 1) == 0)
                _mm_prefetch((const char *)blk + PREFETCH_AHEAD / 2, _MM_HINT_T0);
            __m256i u = act8_block_bytes(blk, fmt);
            bvec lo, hi;
#ifdef ACT8_WIDE
            if (fmt == FMT_Q8_0) /* w + 128, unsigned; -128 sum(x) below */
                u = _mm256_xor_si256(u, _mm256_set1_epi8((char)0x80));
            act8_batch_dots(u, t->xi + 32 * j * R, R, &lo, &hi);
#else /* Q8_0: |w| . sign(x, w) */
            act8_batch_dots(u, t->xi + 32 * j * R, R, &lo, &hi, fmt == FMT_Q8_0);
#endif
            float d = half_to_float(blk);
            __m256 dot = act8_rows_sum(bvec_add(lo, hi), R);
            y = _mm256_fmadd_ps(dot, _mm256_mul_ps(_mm256_set1_ps(d),
                                                   act8_load_rows(t->xd + j * R, R)), y);
            if (fmt == FMT_Q8_0) {
#ifdef ACT8_WIDE
                __m256 xr = _mm256_add_ps(act8_load_rows(t->xr + 2 * j * R, R),
                                          act8_load_rows(t->xr + (2 * j + 1) * R, R));
                y2 = _mm256_fmadd_ps(_mm256_set1_ps(-128.f * d), xr, y2);
#endif
            } else {
                float m = fmt == FMT_Q4_0 ? -8.f * d : fmt == FMT_Q5_0 ? -16.f * d
                                                     : half_to_float(blk + 2);
                y2 = _mm256_fmadd_ps(_mm256_set1_ps(m), act8_load_rows(t->xs + j * R, R), y2);
            }
        }
    } else {
        for (int64_t j = 0; j < K / 256; j++) {
            const uint8_t *blk = row + j * bs;
            for (int line = 0; line < 3; line++)
                _mm_prefetch((const char *)blk + 64 * line + PREFETCH_AHEAD / 2, _MM_HINT_T0);
            if (fmt == FMT_Q6_K) {
                const int8_t *sc = (const int8_t *)(blk + 192);
                float d = half_to_float(blk + 208);
                for (int g = 0; g < 8; g++) { /* weights 32g + [0, 32): scales s, s + 1 */
                    __m256i u = _mm256_add_epi8(q6k_bytes(blk, g), _mm256_set1_epi8(32));
                    int s = 8 * (g / 4) + 2 * (g % 4);
                    int64_t jx = 8 * j + g; /* the block of 32 of x */
                    bvec lo, hi;
                    ACT8_DOTS(u, t->xi + 32 * jx * R, R, &lo, &hi);
                    __m256 xd = act8_load_rows(t->xd + jx * R, R);
                    float s0 = d * (float)sc[s], s1 = d * (float)sc[s + 1];
                    y = _mm256_fmadd_ps(act8_rows_sum(lo, R),
                                        _mm256_mul_ps(_mm256_set1_ps(s0), xd), y);
                    y = _mm256_fmadd_ps(act8_rows_sum(hi, R),
                                        _mm256_mul_ps(_mm256_set1_ps(s1), xd), y);
                    y2 = _mm256_fmadd_ps(_mm256_set1_ps(-32.f * s0),
                                         act8_load_rows(t->xr + 2 * jx * R, R), y2);
                    y2 = _mm256_fmadd_ps(_mm256_set1_ps(-32.f * s1),
                                         act8_load_rows(t->xr + (2 * jx + 1) * R, R), y2);
                }
                continue;
            }
            const int q5 = fmt == FMT_Q5_K;
            float sc[8], mn[8];
            __m256 mnv;
            q4k_scales8(blk, sc, &mnv);
            _mm256_storeu_ps(mn, mnv);
            __m256i qh = q5 ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : low4;
            for (int c = 0; c < 4; c++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(blk + (q5 ? 48 : 16) + 32 * c));
                for (int odd = 0; odd < 2; odd++) { /* sub-block 2c + odd */
                    __m256i v = odd ? _mm256_and_si256(_mm256_srli_epi16(q, 4), low4)
                                    : _mm256_and_si256(q, low4);
                    if (q5)
                        v = _mm256_or_si256(v, _mm256_slli_epi16(_mm256_and_si256(
                            _mm256_srli_epi16(qh, 2 * c + odd), one), 4));
                    int sb = 2 * c + odd;
                    int64_t jx = 8 * j + sb;
                    bvec lo, hi;
                    ACT8_DOTS(v, t->xi + 32 * jx * R, R, &lo, &hi);
                    __m256 dot = act8_rows_sum(bvec_add(lo, hi), R);
                    y = _mm256_fmadd_ps(dot, _mm256_mul_ps(_mm256_set1_ps(sc[sb]),
                                                           act8_load_rows(t->xd + jx * R, R)), y);
                    y2 = _mm256_fmadd_ps(_mm256_set1_ps(-mn[sb]),
                                         act8_load_rows(t->xs + jx * R, R), y2);
                }
            }
        }
    }
    float o[8];
    _mm256_storeu_ps(o, _mm256_add_ps(y, y2));
    for (int b = 0; b < R; b++) out[b] = o[b];
}

static inline __attribute__((always_inline)) void act8_batch4_fmt(
    const uint8_t *rows, size_t row_bytes, int64_t K, const Act8Batch *t, float out[8][4],
    const int64_t fmt, const int R) {
    for (int i = 0; i < 4; i++) {
        float o[8];
        act8_batch_row(rows + i * row_bytes, K, t, o, fmt, R);
        for (int b = 0; b < R; b++) out[b][i] = o[b];
    }
}

#define ACT8_BATCH_CASES(R)                                                                 \
    switch (fmt) {                                                                          \
    case FMT_Q8_0: act8_batch4_fmt(rows, row_bytes, K, t, out, FMT_Q8_0, R); break;        \
    case FMT_Q4_0: act8_batch4_fmt(rows, row_bytes, K, t, out, FMT_Q4_0, R); break;        \
    case FMT_Q4_1: act8_batch4_fmt(rows, row_bytes, K, t, out, FMT_Q4_1, R); break;        \
    case FMT_Q5_0: act8_batch4_fmt(rows, row_bytes, K, t, out, FMT_Q5_0, R); break;        \
    case FMT_Q5_1: act8_batch4_fmt(rows, row_bytes, K, t, out, FMT_Q5_1, R); break;        \
    case FMT_Q4_K: act8_batch4_fmt(rows, row_bytes, K, t, out, FMT_Q4_K, R); break;        \
    case FMT_Q5_K: act8_batch4_fmt(rows, row_bytes, K, t, out, FMT_Q5_K, R); break;        \
    default: act8_batch4_fmt(rows, row_bytes, K, t, out, FMT_Q6_K, R); break;              \
    }

/* four weight rows by the R = 4 or 8 interleaved rows of x in t */
static void act8_batch4(const uint8_t *rows, size_t row_bytes, int64_t K, const Act8Batch *t,
                        float out[8][4], int64_t fmt, int R) {
    if (R == 8) {
        ACT8_BATCH_CASES(8)
    } else {
        ACT8_BATCH_CASES(4)
    }
}
#undef ACT8_BATCH_CASES
#undef ACT8_DOTS

#endif
