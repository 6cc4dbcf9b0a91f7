/* The interface of the decode kernels (decode.c): what nn/native.py calls through ctypes.
   nn/native.py's FORMATS, ACT8 and SIGNATURES are tested against this file
   (tests/nn/test_native_header.py). */

#ifndef SCRATCHLM_DECODE_H
#define SCRATCHLM_DECODE_H

#include <stdint.h>

/* How a weight's rows are stored: float32, int8 with a float32 scale per row, float32 panels
   (f32_panels), or GGUF blocks (blocks.h has each layout) */
enum { FMT_F32 = 0, FMT_INT8 = 1, FMT_Q8_0 = 2, FMT_Q4_0 = 3, FMT_Q4_1 = 4, FMT_Q4_K = 5,
       FMT_Q6_K = 6, FMT_F32_PANELS = 7, FMT_Q5_0 = 8, FMT_Q5_1 = 9, FMT_Q5_K = 10 };
/* A flag on a block format: round the activations to 8 bits and multiply integers (act8.h);
   a build without those kernels multiplies in float32 instead (act8_block_formats says which
   formats have them, so Python never asks a build that lacks them) */
#define FMT_ACT8 256

/* A weight matrix (N = rows, K) row-major: int8 with a float32 scale per row, float32, or
   GGUF blocks (fmt, one of FMT_*). */
typedef struct {
    const void *w;
    const float *scale; /* int8 only */
    const float *bias;  /* or NULL */
    int64_t rows;
    int64_t fmt;
} Weight;

/* y (B, N) = x (B, K) @ W.T + bias, W stored as its name says */
void int8_linear(const float *x, const int8_t *w, const float *scale, const float *bias,
                 float *y, int64_t B, int64_t N, int64_t K);
void f32_linear(const float *x, const float *w, const float *bias, float *y, int64_t B,
                int64_t N, int64_t K);
void panel_linear(const float *x, const float *panels, const float *bias, float *y, int64_t B,
                  int64_t N, int64_t K);
void gguf_linear(const float *x, const uint8_t *w, int64_t fmt, const float *bias, float *y,
                 int64_t B, int64_t N, int64_t K);
/* w (N, K) float32 into panels (ceil(N / 32) * 32, K) for panel_linear */
void f32_panels(const float *w, int64_t N, int64_t K, float *out);
/* the weight (N, K) float32 of N rows of GGUF blocks */
void gguf_dequantize(const uint8_t *w, int64_t fmt, float *out, int64_t N, int64_t K);

/* one decoder layer for one new token per row of x (layers.h says what each argument is) */
void llama_layer(float *x, int64_t B, int64_t C, int64_t H, int64_t KV, int64_t D, int64_t I,
                 float eps, const float *norm1, const Weight *qkv_w, int64_t n_qkv,
                 const Weight *o_w, const float *norm2, const Weight *gate_up_w,
                 int64_t n_gate_up, const Weight *down_w,
                 const float *cos, const float *sin, float *k_cache, float *v_cache,
                 int64_t max_len, int64_t slot, const int64_t *start,
                 const float *q_norm, const float *k_norm);
void gpt_layer(float *x, int64_t B, int64_t C, int64_t H, int64_t D, int64_t I, float eps,
               const float *ln1_w, const float *ln1_b, const Weight *qkv_w, const Weight *o_w,
               const float *ln2_w, const float *ln2_b, const Weight *fc_w, const Weight *proj_w,
               float *k_cache, float *v_cache, int64_t max_len, int64_t slot,
               const int64_t *start);

/* what this build can do: the block formats it multiplies in vector registers and with 8-bit
   activations (bits 1 << FMT_*), and the most rows of x it takes with 8-bit activations */
int64_t simd_block_formats(void);
int64_t act8_block_formats(void);
int64_t act8_max_rows(void);

/* the pthread pool's size where built without OpenMP (parallel.h); -1 with OpenMP */
int64_t set_threads(int64_t n);

#endif
