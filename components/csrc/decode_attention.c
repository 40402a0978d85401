/* Decode attention for the generation engine: one query token per row, bf16 KV, CPU.
 *
 * torch's CPU flash kernel costs ~6 us per (row, kv-head) block at the engine's shapes (3 query
 * heads per kv head, ~200 columns): ~2x what reading the block's KV from memory takes. Here each
 * block is one pass over K (scores for the G query heads that share the kv head), a softmax in
 * fp32 and one pass over V; bf16 is widened to fp32 by a shift, everything accumulates in fp32
 * (a vectorisable exp, ~2 ulp), and the output is rounded to bf16 once (round-to-nearest-even).
 *
 * Built by components/decode_attention.py at first use (cc -O3 -march=native -fopenmp, ~1 s);
 * OpenMP resolves to the libgomp torch has already loaded (same soname), so it shares torch's
 * threads instead of adding a second pool.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf2f(uint16_t h) {
    union { uint32_t u; float f; } c;
    c.u = ((uint32_t)h) << 16;
    return c.f;
}

static inline uint16_t f2bf(float f) {
    union { uint32_t u; float f; } c;
    c.f = f;
    if ((c.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((c.u >> 16) | 0x40u);  /* NaN stays NaN */
    c.u += 0x7fffu + ((c.u >> 16) & 1u);
    return (uint16_t)(c.u >> 16);
}

/* exp(x) for x <= 0 (scores minus their max): Cody-Waite range reduction and a degree-6 polynomial,
 * plain arithmetic so the compiler vectorises the loop; x below -87 gives 0. */
static inline float exp_nonpos(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t u; float f; } c;
    c.u = (uint32_t)((int32_t)n + 127) << 23;
    return x <= -87.0f ? 0.0f : p * c.f;
}

static inline __attribute__((always_inline)) void one_block(
        const uint16_t *restrict q, const uint16_t *restrict k, const uint16_t *restrict v,
        const uint8_t *restrict m, uint16_t *restrict out, const int G, const int D, const int L,
        const float scale, float *restrict s) {
    /* G and D are compile-time constants in the dispatched copies below, so the G x D accumulators
     * stay in registers and each K/V row is widened to fp32 once for all G query heads. */
    float qf[G * D], acc[G * D], inv[G];
    for (int i = 0; i < G * D; i++) qf[i] = bf2f(q[i]) * scale;
    for (int j = 0; j < L; j++) {
        const uint16_t *kj = k + (int64_t)j * D;
        float kf[D];
        for (int d = 0; d < D; d++) kf[d] = bf2f(kj[d]);
        for (int g = 0; g < G; g++) {
            float a = 0.0f;
            for (int d = 0; d < D; d++) a += qf[g * D + d] * kf[d];
            s[g * L + j] = a;
        }
        if (!m[j])
            for (int g = 0; g < G; g++) s[g * L + j] = -INFINITY;
    }
    for (int g = 0; g < G; g++) {
        float *sg = s + g * L;
        float mx = -INFINITY;
        for (int j = 0; j < L; j++) mx = sg[j] > mx ? sg[j] : mx;
        float sum = 0.0f;
        for (int j = 0; j < L; j++) {   /* masked columns hold -inf: exp gives 0 */
            float e = exp_nonpos(sg[j] - mx);
            sg[j] = e;
            sum += e;
        }
        inv[g] = 1.0f / sum;
    }
    for (int i = 0; i < G * D; i++) acc[i] = 0.0f;
    for (int j = 0; j < L; j++) {
        if (!m[j]) continue;
        const uint16_t *vj = v + (int64_t)j * D;
        float vf[D];
        for (int d = 0; d < D; d++) vf[d] = bf2f(vj[d]);
        for (int g = 0; g < G; g++) {
            const float p = s[g * L + j];
            for (int d = 0; d < D; d++) acc[g * D + d] += p * vf[d];
        }
    }
    for (int g = 0; g < G; g++)
        for (int d = 0; d < D; d++) out[g * D + d] = f2bf(acc[g * D + d] * inv[g]);
}

#define BLOCK(GG, DD) one_block(q + qo, k + kv, v + kv, m, out + qo, GG, DD, L, scale, s)

/* q, out: [rows, H, G, D] contiguous. k, v: element (r, h, j, d) at r*row_stride + h*head_stride
 * + j*D + d (the engine's slot buffers from column lo on). mask: [rows, L], nonzero = attend; every
 * row attends at least one column (the engine's current one). */
int decode_attention_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                          int64_t row_stride, int64_t head_stride, const uint8_t *mask,
                          int64_t mask_stride, uint16_t *out, int rows, int H, int G, int D, int L,
                          float scale) {
    if (G < 1 || D < 1 || L < 1) return 1;
    int failed = 0;
#pragma omp parallel
    {
        /* Each thread's scores (G x L floats) on the heap: long contexts would overflow a thread stack. */
        float *s = (float *)malloc(sizeof(float) * (size_t)G * (size_t)L);
        if (s == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for collapse(2) schedule(static)
        for (int r = 0; r < rows; r++) {
            for (int h = 0; h < H; h++) {
                if (s == NULL) continue;
                const int64_t kv = (int64_t)r * row_stride + (int64_t)h * head_stride;
                const int64_t qo = ((int64_t)r * H + h) * G * D;
                const uint8_t *m = mask + (int64_t)r * mask_stride;
                /* Copies specialised for the common shapes (SmolLM2 3 x 64, Llama-3 4 x 128, Qwen2.5 7 x 64...). */
                if (D == 64) {
                    switch (G) {
                    case 1: BLOCK(1, 64); break;
                    case 2: BLOCK(2, 64); break;
                    case 3: BLOCK(3, 64); break;
                    case 4: BLOCK(4, 64); break;
                    case 7: BLOCK(7, 64); break;
                    case 8: BLOCK(8, 64); break;
                    default: BLOCK(G, 64);
                    }
                } else if (D == 128) {
                    switch (G) {
                    case 1: BLOCK(1, 128); break;
                    case 2: BLOCK(2, 128); break;
                    case 4: BLOCK(4, 128); break;
                    case 8: BLOCK(8, 128); break;
                    default: BLOCK(G, 128);
                    }
                } else {
                    BLOCK(G, D);
                }
            }
        }
        free(s);
    }
    return failed ? 2 : 0;
}

