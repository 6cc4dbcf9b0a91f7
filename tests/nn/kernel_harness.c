/* The decode kernels (scratchlm/nn/csrc/decode.c) as a program, for a CPU that Python cannot
   run on here: tests/nn/test_neon.py cross-compiles it for aarch64 and runs it under
   qemu-user. It reads cases from argv[1] until its end (each: int64 fmt, B, N, K, the byte
   count of w; then x as B x K float32 and w's bytes), calls gguf_linear on each, and writes
   their y (B x N float32) one after another to argv[2]; with no arguments it prints
   act8_block_formats() and act8_max_rows(). */

#include "decode.c"

#include <stdio.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        printf("%lld %lld\n", (long long)act8_block_formats(), (long long)act8_max_rows());
        return 0;
    }
    FILE *f = fopen(argv[1], "rb"), *o = fopen(argv[2], "wb");
    int64_t head[5];
    if (!f || !o)
        return 2;
    while (fread(head, sizeof head, 1, f) == 1) {
        int64_t fmt = head[0], B = head[1], N = head[2], K = head[3], nw = head[4];
        float *x = malloc(sizeof(float) * (size_t)(B * K));
        float *y = malloc(sizeof(float) * (size_t)(B * N));
        uint8_t *w = malloc((size_t)nw);
        if (fread(x, sizeof(float), (size_t)(B * K), f) != (size_t)(B * K)
            || fread(w, 1, (size_t)nw, f) != (size_t)nw)
            return 2;
        gguf_linear(x, w, fmt, NULL, y, B, N, K);
        if (fwrite(y, sizeof(float), (size_t)(B * N), o) != (size_t)(B * N))
            return 2;
        free(x);
        free(y);
        free(w);
    }
    fclose(f);
    fclose(o);
    return 0;
}
