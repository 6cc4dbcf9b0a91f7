/* Part of decode.c's one translation unit (nn/native.py builds decode.c alone); int8 and float32
   weight rows times a few rows of x, per ISA */

/* ---- matrix x few-vectors ------------------------------------------------------------------
   Rows are taken four at a time and split across threads in contiguous ranges (parallel.h:
   OpenMP's, or a pthread pool where the compiler has no OpenMP); each
   block of four rows is streamed from memory once (with a software prefetch ahead, which the
   hardware prefetcher alone does not reach) and reused from L1 for every row of x.
   dot4_int8 / dot4_f32: out[i] = x . row i, for the four rows r, r + K, r + 2K, r + 3K. */

#if defined(__AVX2__)
/* the sum of a vector's 8 lanes */
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__)
/* acc += 16 weights (int8, widened to float32) * 16 activations */
static inline __m512 fma16(const int8_t *w, const float *x, __m512 acc) {
    __m128i q = _mm_loadu_si128((const __m128i *)w);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), _mm512_loadu_ps(x), acc);
}

static void dot4_int8(const void *rows, int64_t K, const float *x, float out[4]) {
    const int8_t *r = rows;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        if ((k & 63) == 0) /* one prefetch per 64-byte line */
            for (int i = 0; i < 4; i++)
                _mm_prefetch((const char *)(r + i * K + k) + PREFETCH_AHEAD, _MM_HINT_T0);
        a0 = fma16(r + k, x + k, a0);
        a1 = fma16(r + K + k, x + k, a1);
        a2 = fma16(r + 2 * K + k, x + k, a2);
        a3 = fma16(r + 3 * K + k, x + k, a3);
    }
    out[0] = _mm512_reduce_add_ps(a0);
    out[1] = _mm512_reduce_add_ps(a1);
    out[2] = _mm512_reduce_add_ps(a2);
    out[3] = _mm512_reduce_add_ps(a3);
    for (; k < K; k++)
        for (int i = 0; i < 4; i++) out[i] += x[k] * (float)r[i * K + k];
}

static void dot4_f32(const void *rows, int64_t K, const float *x, float out[4]) {
    const float *r = rows;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        for (int i = 0; i < 4; i++)
            _mm_prefetch((const char *)(r + i * K + k) + PREFETCH_AHEAD, _MM_HINT_T0);
        __m512 xv = _mm512_loadu_ps(x + k);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r + k), xv, a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(r + K + k), xv, a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 2 * K + k), xv, a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 3 * K + k), xv, a3);
    }
    out[0] = _mm512_reduce_add_ps(a0);
    out[1] = _mm512_reduce_add_ps(a1);
    out[2] = _mm512_reduce_add_ps(a2);
    out[3] = _mm512_reduce_add_ps(a3);
    for (; k < K; k++)
        for (int i = 0; i < 4; i++) out[i] += x[k] * r[i * K + k];
}

/* out[b][i] = x_b . row i for four rows and four rows of x (x0, x0 + ldx, ...): each weight
   load feeds four FMAs and each activation load four, where dot4 does five loads for four
   FMAs; what a batch of rows (several sequences decoding together) runs at. */
#define HAVE_DOT4X4 1
static void dot4x4_f32(const float *r, int64_t K, const float *x, int64_t ldx,
                       float out[4][4]) {
    __m512 acc[4][4];
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 4; i++) acc[b][i] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        for (int i = 0; i < 4; i++)
            _mm_prefetch((const char *)(r + i * K + k) + PREFETCH_AHEAD, _MM_HINT_T0);
        __m512 w0 = _mm512_loadu_ps(r + k), w1 = _mm512_loadu_ps(r + K + k);
        __m512 w2 = _mm512_loadu_ps(r + 2 * K + k), w3 = _mm512_loadu_ps(r + 3 * K + k);
        for (int b = 0; b < 4; b++) {
            __m512 xv = _mm512_loadu_ps(x + b * ldx + k);
            acc[b][0] = _mm512_fmadd_ps(w0, xv, acc[b][0]);
            acc[b][1] = _mm512_fmadd_ps(w1, xv, acc[b][1]);
            acc[b][2] = _mm512_fmadd_ps(w2, xv, acc[b][2]);
            acc[b][3] = _mm512_fmadd_ps(w3, xv, acc[b][3]);
        }
    }
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 4; i++) {
            float v = _mm512_reduce_add_ps(acc[b][i]);
            for (int64_t j = k; j < K; j++) v += x[b * ldx + j] * r[i * K + j];
            out[b][i] = v;
        }
}
#elif defined(__AVX2__) && defined(__FMA__)
/* AVX2 + FMA (every x86-64 CPU since Haswell / Zen 1 without AVX-512): the same loops at 8
   lanes, two accumulators per row so that two FMAs are in flight per row */

/* 8 int8 weights widened to float32 */
static inline __m256 widen8(const int8_t *w) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)w)));
}

static void dot4_int8(const void *rows, int64_t K, const float *x, float out[4]) {
    const int8_t *r = rows;
    __m256 a[4], b[4];
    for (int i = 0; i < 4; i++) a[i] = b[i] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        if ((k & 63) == 0)
            for (int i = 0; i < 4; i++)
                _mm_prefetch((const char *)(r + i * K + k) + PREFETCH_AHEAD, _MM_HINT_T0);
        __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
        for (int i = 0; i < 4; i++) {
            a[i] = _mm256_fmadd_ps(widen8(r + i * K + k), x0, a[i]);
            b[i] = _mm256_fmadd_ps(widen8(r + i * K + k + 8), x1, b[i]);
        }
    }
    for (int i = 0; i < 4; i++) out[i] = hsum8(_mm256_add_ps(a[i], b[i]));
    for (; k < K; k++)
        for (int i = 0; i < 4; i++) out[i] += x[k] * (float)r[i * K + k];
}

static void dot4_f32(const void *rows, int64_t K, const float *x, float out[4]) {
    const float *r = rows;
    __m256 a[4], b[4];
    for (int i = 0; i < 4; i++) a[i] = b[i] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        for (int i = 0; i < 4; i++)
            _mm_prefetch((const char *)(r + i * K + k) + PREFETCH_AHEAD, _MM_HINT_T0);
        __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
        for (int i = 0; i < 4; i++) {
            a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(r + i * K + k), x0, a[i]);
            b[i] = _mm256_fmadd_ps(_mm256_loadu_ps(r + i * K + k + 8), x1, b[i]);
        }
    }
    for (int i = 0; i < 4; i++) out[i] = hsum8(_mm256_add_ps(a[i], b[i]));
    for (; k < K; k++)
        for (int i = 0; i < 4; i++) out[i] += x[k] * r[i * K + k];
}

#define HAVE_DOT4X4 1
static void dot4x4_f32(const float *r, int64_t K, const float *x, int64_t ldx,
                       float out[4][4]) {
    __m256 acc[4][4];
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 4; i++) acc[b][i] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        if ((k & 15) == 0)
            for (int i = 0; i < 4; i++)
                _mm_prefetch((const char *)(r + i * K + k) + PREFETCH_AHEAD, _MM_HINT_T0);
        __m256 w0 = _mm256_loadu_ps(r + k), w1 = _mm256_loadu_ps(r + K + k);
        __m256 w2 = _mm256_loadu_ps(r + 2 * K + k), w3 = _mm256_loadu_ps(r + 3 * K + k);
        for (int b = 0; b < 4; b++) {
            __m256 xv = _mm256_loadu_ps(x + b * ldx + k);
            acc[b][0] = _mm256_fmadd_ps(w0, xv, acc[b][0]);
            acc[b][1] = _mm256_fmadd_ps(w1, xv, acc[b][1]);
            acc[b][2] = _mm256_fmadd_ps(w2, xv, acc[b][2]);
            acc[b][3] = _mm256_fmadd_ps(w3, xv, acc[b][3]);
        }
    }
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 4; i++) {
            float v = hsum8(acc[b][i]);
            for (int64_t j = k; j < K; j++) v += x[b * ldx + j] * r[i * K + j];
            out[b][i] = v;
        }
}
#else
/* portable versions: the compiler vectorizes the inner loops */
static void dot4_int8(const void *rows, int64_t K, const float *x, float out[4]) {
    const int8_t *r = rows;
    for (int i = 0; i < 4; i++) {
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < K; k++) acc += x[k] * (float)r[i * K + k];
        out[i] = acc;
    }
}

static void dot4_f32(const void *rows, int64_t K, const float *x, float out[4]) {
    const float *r = rows;
    for (int i = 0; i < 4; i++) {
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < K; k++) acc += x[k] * r[i * K + k];
        out[i] = acc;
    }
}
#endif
