/* Part of decode.c's one translation unit (nn/native.py builds decode.c alone); whole decoder
   layers: Llama's and GPT-2's, for a decode step */

/* ---- one Llama decoder layer --------------------------------------------------------------
   For each of the B rows, one new token at cache slot `slot`:

     h = rms_norm(x) * norm1                      q, k, v = split(h @ Wqkv)
     q, k = rms_norm(q) * q_norm, rms_norm(k) * k_norm   per head, when given (Qwen3)
     q, k = rope(q), rope(k)  (cos/sin rows of this token's position; sin's first half negated)
     cache[slot] = k, v       ctx = softmax(q . K[start:slot+1] / sqrt(D)) V   per head (GQA)
     x += ctx @ Wo            h = rms_norm(x) * norm2
     g, u = split(h @ W12)    x += (silu(g) * u) @ W3

   x (B, C) is updated in place; k_cache/v_cache are this layer's (B, KV, max_len, D) tensors;
   start[b] is row b's first real slot (left padding). */

static void rms_norm(const float *x, const float *weight, float eps, float *out, int64_t C) {
    float ss = 0.f;
    for (int64_t c = 0; c < C; c++) ss += x[c] * x[c];
    float inv = 1.f / sqrtf(ss / (float)C + eps);
    for (int64_t c = 0; c < C; c++) out[c] = x[c] * inv * weight[c];
}

/* v = v cos + rotate_half(v) sin, the halves in two loops (an index taken modulo D kept the
   loop scalar) */
static void rope(float *v, const float *cos, const float *sin, int64_t D) {
    float tmp[D];
    int64_t half = D / 2;
    for (int64_t i = 0; i < half; i++) tmp[i] = v[i] * cos[i] + v[i + half] * sin[i];
    for (int64_t i = half; i < D; i++) tmp[i] = v[i] * cos[i] + v[i - half] * sin[i];
    memcpy(v, tmp, sizeof(float) * D);
}

/* e^x for x in [-87.3, 88.3] (clamped there) within 2 ulp: Cephes' expf, 2^n times a degree-7
   polynomial of the remainder, in plain arithmetic so that a loop of it vectorizes (glibc's
   expf is a scalar call; it was most of the softmax and SiLU time, 0.9 ms a token for SmolLM2
   at batch 1) */
static inline float exp_approx(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f; /* round to nearest */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* The activations of a layer's hidden units, in place or into a: silu(g) u (SwiGLU) and GELU's
   tanh form. With AVX2 eight at a time by exp8, the same arithmetic as exp_approx: gcc keeps
   exp_approx's clamp as branches and the loop scalar (12288 values of a batch-8 SmolLM2 layer
   took 30 us on one core while the other waited), and with -fno-trapping-math it vectorizes
   the loop as three cases blended, one of which divides by e^88 and makes denormals (3x
   slower than scalar). */
static inline float silu_mul(float g, float u) { return g / (1.f + exp_approx(-g)) * u; }

static inline float gelu_tanh(float v) { /* 1 + tanh(y) = 2 - 2 / (e^(2y) + 1) */
    float y = 0.7978845608028654f * (v + 0.044715f * v * v * v); /* sqrt(2 / pi) (...) */
    return 0.5f * v * (2.f - 2.f / (exp_approx(2.f * y) + 1.f));
}

#if defined(__AVX2__) && defined(__FMA__)
static inline __m256 exp8(__m256 x) {
    /* the clamp's operands in this order keep a NaN a NaN (max/min return the second one) */
    x = _mm256_min_ps(_mm256_set1_ps(88.3f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x));
    __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f),
                                             _mm256_set1_ps(12582912.f)),
                             _mm256_set1_ps(12582912.f));
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f),
                               _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.f));
    __m256i bits = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

/* a[j] = silu(g[j]) u[j] for j < n */
static void silu_rows(const float *g, const float *u, float *a, int64_t n) {
    int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 one = _mm256_set1_ps(1.f);
    for (; j + 8 <= n; j += 8) {
        __m256 gv = _mm256_loadu_ps(g + j);
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        _mm256_storeu_ps(a + j, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)),
                                              _mm256_loadu_ps(u + j)));
    }
#endif
    for (; j < n; j++) a[j] = silu_mul(g[j], u[j]);
}

/* h[j] = gelu_tanh(h[j]) for j < n */
static void gelu_rows(float *h, int64_t n) {
    int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 k0 = _mm256_set1_ps(0.7978845608028654f), k1 = _mm256_set1_ps(0.044715f);
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.f), two = _mm256_set1_ps(2.f);
    for (; j + 8 <= n; j += 8) {
        __m256 v = _mm256_loadu_ps(h + j);
        /* y = k0 (v + k1 v v v), as gelu_tanh rounds it */
        __m256 y = _mm256_mul_ps(k0, _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(k1, v), v), v, v));
        __m256 t = _mm256_div_ps(two, _mm256_add_ps(exp8(_mm256_mul_ps(two, y)), one));
        _mm256_storeu_ps(h + j, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_sub_ps(two, t)));
    }
#endif
    for (; j < n; j++) h[j] = gelu_tanh(h[j]);
}

/* Write this token's keys and values (rows of qkv after the H query heads) at `slot`. */
static void cache_write(const float *qkv, int64_t Q, int64_t B, int64_t H, int64_t KV, int64_t D,
                        float *k_cache, float *v_cache, int64_t max_len, int64_t slot) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < KV; j++) {
            int64_t at = ((b * KV + j) * max_len + slot) * D;
            memcpy(k_cache + at, qkv + b * Q + (H + j) * D, sizeof(float) * D);
            memcpy(v_cache + at, qkv + b * Q + (H + KV + j) * D, sizeof(float) * D);
        }
}

/* ctx (B, H*D): per head, softmax(q . K[start:slot+1] / sqrt(D)) V over the cache, the query
   heads of a group sharing one key/value head (GQA; KV == H is plain multi-head attention) */
typedef struct {
    const float *qkv, *k_cache, *v_cache;
    const int64_t *start;
    float *ctx, *scores;
    int64_t Q, H, KV, D, max_len, slot;
} AttendJob;

#if defined(__AVX2__) && defined(__FMA__)
/* s[r] = q . keys[r] for 8 consecutive key rows (D a multiple of 8): eight accumulators, then
   one transpose-add of the eight into a vector of the 8 sums, instead of a horizontal sum per
   key (which cost as much as the key's 64 multiply-adds) */
static inline void dots8(const float *q, const float *keys, int64_t D, float s[8]) {
    __m256 acc[8];
    for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < D; i += 8) {
        __m256 qv = _mm256_loadu_ps(q + i);
        for (int r = 0; r < 8; r++)
            acc[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(keys + r * D + i), acc[r]);
    }
    __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
    __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
    _mm256_storeu_ps(s, _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20),
                                      _mm256_permute2f128_ps(t0, t1, 0x31)));
}

/* o[0, D) = sum_t p[t] vals[t] for t in [t0, t1] (D a multiple of 8, at most 128: the sums
   stay in registers across the keys instead of being loaded and stored for each) */
static inline void weighted_sum(const float *p, const float *vals, int64_t t0, int64_t t1,
                                int64_t D, float *o) {
    __m256 acc[16];
    int64_t n = D / 8;
    for (int64_t j = 0; j < n; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t t = t0; t <= t1; t++) {
        __m256 pt = _mm256_set1_ps(p[t]);
        const float *v = vals + t * D;
        for (int64_t j = 0; j < n; j++)
            acc[j] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(v + 8 * j), acc[j]);
    }
    for (int64_t j = 0; j < n; j++) _mm256_storeu_ps(o + 8 * j, acc[j]);
}
#define HAVE_ATTEND_X86 1
#endif

static void attend_heads(void *job, int64_t lo, int64_t hi) {
    const AttendJob *a = job;
    const float *qkv = a->qkv, *k_cache = a->k_cache, *v_cache = a->v_cache;
    const int64_t *start = a->start;
    float *ctx = a->ctx, *scores = a->scores;
    int64_t Q = a->Q, H = a->H, KV = a->KV, D = a->D, max_len = a->max_len, slot = a->slot;
    int64_t group = H / KV;
    float scale = 1.f / sqrtf((float)D);
    for (int64_t bh = lo; bh < hi; bh++) {
        int64_t b = bh / H, hd = bh % H, kvh = hd / group;
        const float *q = qkv + b * Q + hd * D;
        const float *keys = k_cache + (b * KV + kvh) * max_len * D;
        const float *vals = v_cache + (b * KV + kvh) * max_len * D;
        float *s = scores + bh * (slot + 1), *o = ctx + (b * H + hd) * D;
        float m = -INFINITY, sum = 0.f;
        int64_t t = start[b];
#ifdef HAVE_ATTEND_X86
        if (D % 8 == 0)
            for (; t + 8 <= slot + 1; t += 8) {
                dots8(q, keys + t * D, D, s + t);
                for (int r = 0; r < 8; r++) {
                    s[t + r] *= scale;
                    m = s[t + r] > m ? s[t + r] : m;
                }
            }
#endif
        for (; t <= slot; t++) {
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < D; i++) dot += q[i] * keys[t * D + i];
            s[t] = dot * scale;
            m = s[t] > m ? s[t] : m;
        }
#pragma omp simd reduction(+ : sum)
        for (int64_t t = start[b]; t <= slot; t++) {
            s[t] = exp_approx(s[t] - m);
            sum += s[t];
        }
#ifdef HAVE_ATTEND_X86
        if (D % 8 == 0 && D <= 128) {
            weighted_sum(s, vals, start[b], slot, D, o);
        } else
#endif
        {
            for (int64_t i = 0; i < D; i++) o[i] = 0.f;
            for (int64_t u = start[b]; u <= slot; u++) {
                float p = s[u];
#pragma omp simd
                for (int64_t i = 0; i < D; i++) o[i] += p * vals[u * D + i];
            }
        }
        for (int64_t i = 0; i < D; i++) o[i] /= sum;
    }
}

static void attend(const float *qkv, int64_t Q, int64_t B, int64_t H, int64_t KV, int64_t D,
                   const float *k_cache, const float *v_cache, int64_t max_len, int64_t slot,
                   const int64_t *start, float *ctx) {
    float *scores = malloc(sizeof(float) * B * H * (slot + 1));
    AttendJob job = {qkv, k_cache, v_cache, start, ctx, scores, Q, H, KV, D, max_len, slot};
    parallel_for(B * H, attend_heads, &job);
    free(scores);
}

void llama_layer(float *x, int64_t B, int64_t C, int64_t H, int64_t KV, int64_t D, int64_t I,
                 float eps, const float *norm1, const Weight *qkv_w, int64_t n_qkv,
                 const Weight *o_w, const float *norm2, const Weight *gate_up_w,
                 int64_t n_gate_up, const Weight *down_w,
                 const float *cos, const float *sin, float *k_cache, float *v_cache,
                 int64_t max_len, int64_t slot, const int64_t *start,
                 const float *q_norm, const float *k_norm) {
    int64_t Q = (H + 2 * KV) * D;
    float *h = malloc(sizeof(float) * B * C), *qkv = malloc(sizeof(float) * B * Q);
    float *ctx = malloc(sizeof(float) * B * H * D), *out = malloc(sizeof(float) * B * C);
    float *gu = malloc(sizeof(float) * B * 2 * I), *act = malloc(sizeof(float) * B * I);

    for (int64_t b = 0; b < B; b++) rms_norm(x + b * C, norm1, eps, h + b * C, C);
    matvec(qkv_w, n_qkv, h, qkv, B, C, Q);
    for (int64_t b = 0; b < B; b++) {
        float *row = qkv + b * Q;
        if (q_norm)  /* in place: rms_norm reads each value before it writes it */
            for (int64_t j = 0; j < H + KV; j++)
                rms_norm(row + j * D, j < H ? q_norm : k_norm, eps, row + j * D, D);
        for (int64_t j = 0; j < H + KV; j++) rope(row + j * D, cos + b * D, sin + b * D, D);
    }
    cache_write(qkv, Q, B, H, KV, D, k_cache, v_cache, max_len, slot);
    attend(qkv, Q, B, H, KV, D, k_cache, v_cache, max_len, slot, start, ctx);
    matvec(o_w, 1, ctx, out, B, H * D, C);
    for (int64_t j = 0; j < B * C; j++) x[j] += out[j];

    for (int64_t b = 0; b < B; b++) rms_norm(x + b * C, norm2, eps, h + b * C, C);
    matvec(gate_up_w, n_gate_up, h, gu, B, C, 2 * I);
    for (int64_t b = 0; b < B; b++) silu_rows(gu + b * 2 * I, gu + b * 2 * I + I, act + b * I, I);
    matvec(down_w, 1, act, out, B, I, C);
    for (int64_t j = 0; j < B * C; j++) x[j] += out[j];

    free(h); free(qkv); free(ctx); free(out); free(gu); free(act);
}

/* ---- one GPT-2 decoder layer --------------------------------------------------------------
     h = layer_norm(x)            q, k, v = split(h @ Wqkv + b)      cache[slot] = k, v
     ctx = attention as above     x += ctx @ Wo + b
     h = layer_norm(x)            x += gelu_tanh(h @ Wfc + b) @ Wproj + b
   (positions are learned embeddings, added to x before the first layer) */

static void layer_norm(const float *x, const float *weight, const float *bias, float eps,
                       float *out, int64_t C) {
    float mean = 0.f, var = 0.f;
    for (int64_t c = 0; c < C; c++) mean += x[c];
    mean /= (float)C;
    for (int64_t c = 0; c < C; c++) var += (x[c] - mean) * (x[c] - mean);
    float inv = 1.f / sqrtf(var / (float)C + eps);
    for (int64_t c = 0; c < C; c++) out[c] = (x[c] - mean) * inv * weight[c] + bias[c];
}

void gpt_layer(float *x, int64_t B, int64_t C, int64_t H, int64_t D, int64_t I, float eps,
               const float *ln1_w, const float *ln1_b, const Weight *qkv_w, const Weight *o_w,
               const float *ln2_w, const float *ln2_b, const Weight *fc_w, const Weight *proj_w,
               float *k_cache, float *v_cache, int64_t max_len, int64_t slot,
               const int64_t *start) {
    int64_t Q = 3 * H * D;
    float *h = malloc(sizeof(float) * B * C), *qkv = malloc(sizeof(float) * B * Q);
    float *ctx = malloc(sizeof(float) * B * H * D), *out = malloc(sizeof(float) * B * C);
    float *hid = malloc(sizeof(float) * B * I);

    for (int64_t b = 0; b < B; b++) layer_norm(x + b * C, ln1_w, ln1_b, eps, h + b * C, C);
    matvec(qkv_w, 1, h, qkv, B, C, Q);
    cache_write(qkv, Q, B, H, H, D, k_cache, v_cache, max_len, slot);
    attend(qkv, Q, B, H, H, D, k_cache, v_cache, max_len, slot, start, ctx);
    matvec(o_w, 1, ctx, out, B, H * D, C);
    for (int64_t j = 0; j < B * C; j++) x[j] += out[j];

    for (int64_t b = 0; b < B; b++) layer_norm(x + b * C, ln2_w, ln2_b, eps, h + b * C, C);
    matvec(fc_w, 1, h, hid, B, C, I);
    gelu_rows(hid, B * I);
    matvec(proj_w, 1, hid, out, B, I, C);
    for (int64_t j = 0; j < B * C; j++) x[j] += out[j];

    free(h); free(qkv); free(ctx); free(out); free(hid);
}
