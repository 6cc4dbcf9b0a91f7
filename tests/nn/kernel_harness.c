/* The decode kernels (scratchlm/nn/csrc/decode.c) as a program, for a CPU that Python cannot
   run on here: tests/nn/test_neon.py cross-compiles it for aarch64 and runs it under
   qemu-user. It reads cases from argv[1] until its end and writes each one's result to
   argv[2], one after another; with no arguments it prints act8_block_formats() and
   act8_max_rows(). A case starts with an int64 kind:
     0 gguf_linear: int64 fmt, B, N, K, the byte count of w; x (B x K float32), w's bytes;
       result y (B x N float32);
     1 llama_layer with fused qkv and gate/up, every weight of one format: int64 fmt, B, C, H,
       KV, D, I, max_len, slot, the byte counts of Wqkv, Wo, Wgate_up, Wdown; float32 eps, x
       (B x C), norm1, norm2 (C), cos, sin (B x D), the K and V caches (B x KV x max_len x
       D each); int64 start (B); the four weights' bytes; result x, then the two caches. */

#include "decode.c"

#include <stdio.h>

/* n values of size bytes from f into a new buffer (NULL at a short read) */
static void *take(FILE *f, size_t size, int64_t n) {
    void *p = malloc(size * (size_t)n + 1);
    if (fread(p, size, (size_t)n, f) != (size_t)n) {
        free(p);
        return NULL;
    }
    return p;
}

static int linear_case(FILE *f, FILE *o) {
    int64_t h[5];
    if (fread(h, sizeof h, 1, f) != 1)
        return 1;
    int64_t fmt = h[0], B = h[1], N = h[2], K = h[3];
    float *x = take(f, sizeof(float), B * K), *y = malloc(sizeof(float) * (size_t)(B * N));
    uint8_t *w = take(f, 1, h[4]);
    if (!x || !w)
        return 1;
    gguf_linear(x, w, fmt, NULL, y, B, N, K);
    int bad = fwrite(y, sizeof(float), (size_t)(B * N), o) != (size_t)(B * N);
    free(x);
    free(y);
    free(w);
    return bad;
}

static int layer_case(FILE *f, FILE *o) {
    int64_t h[13];
    float eps;
    if (fread(h, sizeof h, 1, f) != 1 || fread(&eps, sizeof eps, 1, f) != 1)
        return 1;
    int64_t fmt = h[0], B = h[1], C = h[2], H = h[3], KV = h[4], D = h[5], I = h[6];
    int64_t max_len = h[7], slot = h[8], cache = B * KV * max_len * D;
    float *x = take(f, 4, B * C), *n1 = take(f, 4, C), *n2 = take(f, 4, C);
    float *cos = take(f, 4, B * D), *sin = take(f, 4, B * D);
    float *kc = take(f, 4, cache), *vc = take(f, 4, cache);
    int64_t *start = take(f, 8, B);
    uint8_t *w[4];
    for (int i = 0; i < 4; i++) w[i] = take(f, 1, h[9 + i]);
    if (!x || !n1 || !n2 || !cos || !sin || !kc || !vc || !start || !w[0] || !w[1] || !w[2]
        || !w[3])
        return 1;
    Weight qkv = {w[0], NULL, NULL, (H + 2 * KV) * D, fmt}, ow = {w[1], NULL, NULL, C, fmt};
    Weight gu = {w[2], NULL, NULL, 2 * I, fmt}, down = {w[3], NULL, NULL, C, fmt};
    llama_layer(x, B, C, H, KV, D, I, eps, n1, &qkv, 1, &ow, n2, &gu, 1, &down, cos, sin, kc,
                vc, max_len, slot, start, NULL, NULL);
    int bad = fwrite(x, 4, (size_t)(B * C), o) != (size_t)(B * C)
              || fwrite(kc, 4, (size_t)cache, o) != (size_t)cache
              || fwrite(vc, 4, (size_t)cache, o) != (size_t)cache;
    free(x); free(n1); free(n2); free(cos); free(sin); free(kc); free(vc); free(start);
    for (int i = 0; i < 4; i++) free(w[i]);
    return bad;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        printf("%lld %lld\n", (long long)act8_block_formats(), (long long)act8_max_rows());
        return 0;
    }
    FILE *f = fopen(argv[1], "rb"), *o = fopen(argv[2], "wb");
    int64_t kind;
    if (!f || !o)
        return 2;
    while (fread(&kind, sizeof kind, 1, f) == 1) {
        if (kind == 0 ? linear_case(f, o) : layer_case(f, o))
            return 2;
    }
    fclose(f);
    fclose(o);
    return 0;
}
