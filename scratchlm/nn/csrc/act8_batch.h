/* Part of decode.c's one translation unit (nn/native.py builds decode.c alone); act8.h's integer
   kernels for batches of 4 and 8 rows */

#if defined(HAVE_ACT8) && defined(__AVX2__)
/* ---- 4 or 8 rows of x at once (a batch decoding together) ----------------------------------
   Per block and row of x, act8.h's one-row kernel spends a conversion, a broadcast scale and
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
        for (int64_t j = 0; j < nb; j++) {
            int64_t s = (b0 + b) * nb + j;
            t.xd[j * R + b] = a->d[s];
            t.xs[j * R + b] = a->s[s];
            t.xr[2 * j * R + b] = a->r[2 * s];
            t.xr[(2 * j + 1) * R + b] = a->r[2 * s + 1];
        }
    }
    /* the bytes: per block, the R rows' 8 groups of 4 transposed (an 8 x 8 transpose of
       32-bit words; rows past R are zeros, and only R words of each group are kept) */
    for (int64_t j = 0; j < nb; j++) {
        __m256i v[8];
        for (int b = 0; b < 8; b++)
            v[b] = b < R ? _mm256_loadu_si256((const __m256i *)(a->q + (b0 + b) * K + 32 * j))
                         : _mm256_setzero_si256();
        __m256i u[8], w[8];
        for (int i = 0; i < 8; i += 2) { /* pairs of rows, then quads, then halves */
            u[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);
            u[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);
        }
        for (int i = 0; i < 8; i += 4)
            for (int k = 0; k < 2; k++) {
                w[i + k] = _mm256_unpacklo_epi64(u[i + k], u[i + k + 2]);
                w[i + k + 2] = _mm256_unpackhi_epi64(u[i + k], u[i + k + 2]);
            }
        /* w[0..3]: rows 0-3, groups (0, 4), (2, 6), (1, 5), (3, 7) in the two halves;
           w[4..7]: the same for rows 4-7 */
        static const int group[4] = {0, 2, 1, 3};
        for (int k = 0; k < 4; k++) {
            int g = group[k];
            __m256i lo = _mm256_permute2x128_si256(w[k], w[k + 4], 0x20); /* group g */
            __m256i hi = _mm256_permute2x128_si256(w[k], w[k + 4], 0x31); /* group g + 4 */
            if (R == 8) {
                _mm256_store_si256((__m256i *)(t.xi + (32 * j + 4 * g) * 8), lo);
                _mm256_store_si256((__m256i *)(t.xi + (32 * j + 4 * (g + 4)) * 8), hi);
            } else {
                _mm_store_si128((__m128i *)(t.xi + (32 * j + 4 * g) * 4),
                                _mm256_castsi256_si128(lo));
                _mm_store_si128((__m128i *)(t.xi + (32 * j + 4 * (g + 4)) * 4),
                                _mm256_castsi256_si128(hi));
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
/* the same at 8 lanes: 8 / R groups of 4 weights per dot product instruction. Each weight
   group is broadcast from memory (a load, not a lane permute) at R = 8. Without VNNI, maddubs
   makes int16 pair sums and madd widens them: for weights below 32 (4- and 5-bit) four maddubs
   results are added in int16 before one madd (2 * 31 * 127 * 4 < 2^15), two for Q6_K's below
   64, one for Q8_0's signed weights (|w| <= 128, with sign(x, w)) */
static inline __attribute__((always_inline)) void act8_batch_dots(
    __m256i u, const int8_t *xi, const int R, bvec *lo, bvec *hi, const int signed_w,
    const int sum16) {
    uint32_t ub[8] __attribute__((aligned(32)));
    _mm256_store_si256((__m256i *)ub, u);
    __m256i a = _mm256_setzero_si256(), c = a;
    const int n = R; /* dot product instructions per block: 32 R / 32 bytes */
#if !(defined(__AVX512VNNI__) && defined(__AVX512VL__)) && !defined(__AVXVNNI__)
    __m256i p = a;
    int held = 0;
#endif
    for (int h = 0; h < n; h++) {
        __m256i w = R == 8 ? _mm256_set1_epi32((int)ub[h])
                           : _mm256_permutevar8x32_epi32(
                                 u, _mm256_setr_epi32(2 * h, 2 * h, 2 * h, 2 * h, 2 * h + 1,
                                                      2 * h + 1, 2 * h + 1, 2 * h + 1));
        __m256i x = _mm256_load_si256((const __m256i *)(xi + 32 * h));
        if (signed_w) {
            x = _mm256_sign_epi8(x, w);
            w = _mm256_sign_epi8(w, w);
        }
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
        (void)sum16;
        if (h < n / 2)
            a = dpbusd8(a, w, x);
        else
            c = dpbusd8(c, w, x);
#else
        __m256i m = _mm256_maddubs_epi16(w, x);
        p = held ? _mm256_add_epi16(p, m) : m;
        if (++held == sum16 || h == n / 2 - 1 || h == n - 1) {
            __m256i v = _mm256_madd_epi16(p, _mm256_set1_epi16(1));
            if (h < n / 2)
                a = _mm256_add_epi32(a, v);
            else
                c = _mm256_add_epi32(c, v);
            held = 0;
        }
#endif
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
#define ACT8_DOTS(u, xi, R, lo, hi) \
    act8_batch_dots(u, xi, R, lo, hi, 0, fmt == FMT_Q6_K ? 2 : 4)
#endif

/* out[b] = row . x_b for one weight row and R = 4 or 8 interleaved rows of x */
static inline __attribute__((always_inline)) void act8_batch_row(
    const uint8_t *row, int64_t K, const Act8Batch *t, float out[8], const int64_t fmt,
    const int R) {
    int64_t bs = block_bytes(fmt);
    __m256 y = _mm256_setzero_ps(), y2 = y;
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
            act8_batch_dots(u, t->xi + 32 * j * R, R, &lo, &hi, fmt == FMT_Q8_0,
                            fmt == FMT_Q8_0 ? 1 : 4);
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
                    __m256i u = q6k_ubytes(blk, g); /* q, unsigned; -32 sum(x) below */
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
            for (int c = 0; c < 4; c++) {
                for (int odd = 0; odd < 2; odd++) { /* sub-block 2c + odd */
                    __m256i v = q4k_sub_bytes(blk, 2 * c + odd, q5);
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

#ifndef ACT8_WIDE
/* 4 bytes at p in every 32-bit lane, by a load: left to itself, gcc turns a broadcast of bytes
   just stored or loaded into shuffles, which all go to one port */
static inline __m256i broadcast32(const void *p) {
    __m256i v;
    __asm__("vpbroadcastd %1, %0" : "=x"(v) : "m"(*(const int32_t *)p));
    return v;
}

/* AVX2, 8 rows of x, the 4- and 5-bit formats of blocks of 32: four weight rows at once, so
   that each load of x's interleaved group (8 rows x 4 activations) serves four dot products;
   one weight row at a time, x's loads and the weights' broadcasts were as many as the dot
   products. The groups of 4 weights are broadcast by loads: Q4_0 / Q4_1's straight from the
   block (a group h and h + 4 share bytes 4h .. 4h + 3), Q5's from the bytes assembled on the
   stack. Without VNNI, 4-bit products are summed in int16 over the whole block
   (8 x 2 x 15 x 127 < 2^15), 5-bit ones over half of it. (Q8_0, whose sign trick costs two
   more instructions a product, measured no faster this way: act8_batch_row takes it.) */
static inline __attribute__((always_inline)) void act8_batch4x8_blocks(
    const uint8_t *rows, size_t row_bytes, int64_t K, const Act8Batch *t, float out[8][4],
    const int64_t fmt) {
    const int64_t bs = block_bytes(fmt);
    const int direct = fmt == FMT_Q4_0 || fmt == FMT_Q4_1;
    const int offset = fmt == FMT_Q4_0 ? -8 : fmt == FMT_Q5_0 ? -16 : 0; /* of q, times d */
#if !(defined(__AVX512VNNI__) && defined(__AVX512VL__)) && !defined(__AVXVNNI__)
    const int sum16 = direct ? 8 : 4;
#endif
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256 y[4];
    for (int i = 0; i < 4; i++) y[i] = _mm256_setzero_ps();
    for (int64_t j = 0; j < K / 32; j++) {
        uint32_t ub[4][8] __attribute__((aligned(32)));
        const uint8_t *blk[4];
        for (int i = 0; i < 4; i++) {
            blk[i] = rows + i * row_bytes + j * bs;
            if ((j & 1) == 0)
                _mm_prefetch((const char *)blk[i] + PREFETCH_AHEAD / 2, _MM_HINT_T0);
            if (!direct)
                _mm256_store_si256((__m256i *)ub[i], act8_block_bytes(blk[i], fmt));
        }
        const int qoff = fmt == FMT_Q4_1 ? 4 : 2; /* the q bytes in a block */
        const int8_t *xi = t->xi + 32 * j * 8;
        __m256i acc[4];
#if !(defined(__AVX512VNNI__) && defined(__AVX512VL__)) && !defined(__AVXVNNI__)
        __m256i p[4];
#endif
#pragma GCC unroll 8
        for (int h = 0; h < 8; h++) {
            __m256i x = _mm256_load_si256((const __m256i *)(xi + 32 * h));
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                __m256i w;
                if (!direct)
                    w = broadcast32(&ub[i][h]);
                else {
                    w = broadcast32(blk[i] + qoff + 4 * (h & 3));
                    w = _mm256_and_si256(h < 4 ? w : _mm256_srli_epi16(w, 4), low4);
                }
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
                acc[i] = dpbusd8(h ? acc[i] : _mm256_setzero_si256(), w, x);
#else
                __m256i prod = _mm256_maddubs_epi16(w, x);
                p[i] = h % sum16 ? _mm256_add_epi16(p[i], prod) : prod;
                /* keep the sums in order (gcc otherwise computes every product first and runs
                   out of registers) */
                __asm__("" : "+x"(p[i]));
                if (h % sum16 == sum16 - 1) {
                    __m256i v = _mm256_madd_epi16(p[i], _mm256_set1_epi16(1));
                    acc[i] = h == sum16 - 1 ? v : _mm256_add_epi32(acc[i], v);
                }
#endif
            }
        }
        /* y += d (dot xd + offset xs), or + m xs for Q4_1 / Q5_1 */
        __m256 xd = _mm256_loadu_ps(t->xd + j * 8), xs = _mm256_loadu_ps(t->xs + j * 8);
        __m256 oxs = _mm256_mul_ps(_mm256_set1_ps((float)offset), xs);
        for (int i = 0; i < 4; i++) {
            __m256 d = _mm256_set1_ps(half_to_float(blk[i]));
            __m256 dot = _mm256_cvtepi32_ps(acc[i]);
            if (fmt == FMT_Q4_1 || fmt == FMT_Q5_1) {
                y[i] = _mm256_fmadd_ps(_mm256_mul_ps(dot, xd), d, y[i]);
                y[i] = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(blk[i] + 2)), xs, y[i]);
            } else
                y[i] = _mm256_fmadd_ps(_mm256_fmadd_ps(dot, xd, oxs), d, y[i]);
        }
    }
    for (int i = 0; i < 4; i++) {
        float o[8];
        _mm256_storeu_ps(o, y[i]);
        for (int b = 0; b < 8; b++) out[b][i] = o[b];
    }
}
#endif

static inline __attribute__((always_inline)) void act8_batch4_fmt(
    const uint8_t *rows, size_t row_bytes, int64_t K, const Act8Batch *t, float out[8][4],
    const int64_t fmt, const int R) {
#ifndef ACT8_WIDE
    if (R == 8 && !is_kquant(fmt) && fmt != FMT_Q8_0) {
        act8_batch4x8_blocks(rows, row_bytes, K, t, out, fmt);
        return;
    }
#endif
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
