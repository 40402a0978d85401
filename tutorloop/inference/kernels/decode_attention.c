/* Decode attention for the generation engine: one query token per row, bf16 KV, CPU.
 *
 * torch's CPU flash kernel costs ~6 us per (row, kv-head) block at the engine's shapes (3 query
 * heads per kv head, ~200 columns), and attention was half of a decode step. Here each block is
 * one pass over K (scores for the G query heads that share the kv head), a softmax in fp32 and
 * one pass over V, everything accumulated in fp32 (a vectorisable exp, ~2 ulp) and the output
 * rounded to bf16 once (round-to-nearest-even).
 *
 * Two implementations of a block:
 * - with AVX-512 BF16 (compiled in when -march=native has it; head dims that are multiples of 32):
 *   q.k by vdpbf16ps straight from the bf16 cache, 16 columns at a time so that their horizontal
 *   sums share one transpose tree; software prefetch of K ahead, of V during the score pass and
 *   of the thread's next block during the value pass (the hardware prefetcher stops at 4 KB pages);
 * - a portable C loop (any head dim, any x86-64), which the compiler vectorises.
 * Measured at 120 rows x 3 kv heads x 184 columns, 30 layers of distinct buffers, 2 cores:
 * 1.11 ms a layer against 2.16 for torch's flash kernel (the portable loop: 1.6).
 *
 * Built by tutorloop/inference/kernels/attention.py at first use (cc -O3 -march=native -fopenmp, ~1 s);
 * OpenMP resolves to the libgomp torch has already loaded (same soname), so it shares torch's
 * threads instead of adding a second pool.
 */
#include <math.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef PREFETCH_ROWS
#define PREFETCH_ROWS 8
#endif

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

/* In place: the masked scores (-inf) of each of the G rows become softmax numerators; returns
 * 1 / their sum per row in inv. */
static inline __attribute__((always_inline)) void softmax_rows(float *restrict s, const int G, const int L,
                                                               float *restrict inv) {
    for (int g = 0; g < G; g++) {
        float *sg = s + g * L;
        float mx = -INFINITY;
        int j = 0;
#ifdef __AVX512F__
        __m512 vm = _mm512_set1_ps(-INFINITY);
        for (; j + 16 <= L; j += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(sg + j));
        mx = _mm512_reduce_max_ps(vm);
#endif
        for (; j < L; j++) mx = sg[j] > mx ? sg[j] : mx;
        if (mx == -INFINITY) {   /* a fully masked row (a free slot): zeros, not NaN from -inf - -inf */
            for (int j = 0; j < L; j++) sg[j] = 0.0f;
            inv[g] = 0.0f;
            continue;
        }
        float sum = 0.0f;
        for (int j = 0; j < L; j++) {   /* masked columns hold -inf: exp gives 0 */
            float e = exp_nonpos(sg[j] - mx);
            sg[j] = e;
            sum += e;
        }
        inv[g] = 1.0f / sum;
    }
}

/* One block, written once for both element types: T is the cache's element type, LOAD widens one
 * element to fp32 (bf16: a shift; fp32: nothing), STORE writes one output. G and D are compile-time
 * constants in the dispatched copies below, so the G x D accumulators stay in registers and each
 * K/V row is widened to fp32 once for all G query heads. The fp32 copy (CPUs without native bf16
 * run the engine in fp32) is vectorised by -march=native with the CPU's widest FMA (AVX2 here). */
static inline float load_bf16(uint16_t h) { return bf2f(h); }
static inline float load_f32(float x) { return x; }
static inline uint16_t store_bf16(float x) { return f2bf(x); }
static inline float store_f32(float x) { return x; }

#define DEFINE_BLOCK(NAME, T, LOAD, STORE)                                                          \
static inline __attribute__((always_inline)) void NAME(                                            \
        const T *restrict q, const T *restrict k, const T *restrict v,                             \
        const uint8_t *restrict m, T *restrict out, const int G, const int D, const int L,         \
        const float scale, float *restrict s) {                                                    \
    float qf[G * D], acc[G * D], inv[G];                                                           \
    for (int i = 0; i < G * D; i++) qf[i] = LOAD(q[i]) * scale;                                    \
    for (int j = 0; j < L; j++) {                                                                  \
        const T *kj = k + (int64_t)j * D;                                                          \
        /* Software prefetch: K a few rows ahead (the hardware prefetcher stops at each 4 KB       \
         * page) and this row of V, which the second pass reads: it then comes from cache. */     \
        for (int b = 0; b < D * (int)sizeof(T); b += 64) {                                         \
            __builtin_prefetch((const char *)(kj + PREFETCH_ROWS * D) + b, 0, 3);                  \
            __builtin_prefetch((const char *)(v + (int64_t)j * D) + b, 0, 3);                      \
        }                                                                                          \
        float kf[D];                                                                               \
        for (int d = 0; d < D; d++) kf[d] = LOAD(kj[d]);                                           \
        for (int g = 0; g < G; g++) {                                                              \
            float a = 0.0f;                                                                        \
            for (int d = 0; d < D; d++) a += qf[g * D + d] * kf[d];                                \
            s[g * L + j] = a;                                                                      \
        }                                                                                          \
        if (!m[j])                                                                                 \
            for (int g = 0; g < G; g++) s[g * L + j] = -INFINITY;                                  \
    }                                                                                              \
    softmax_rows(s, G, L, inv);                                                                    \
    for (int i = 0; i < G * D; i++) acc[i] = 0.0f;                                                 \
    for (int j = 0; j < L; j++) {                                                                  \
        if (!m[j]) continue;                                                                       \
        const T *vj = v + (int64_t)j * D;                                                          \
        float vf[D];                                                                               \
        for (int d = 0; d < D; d++) vf[d] = LOAD(vj[d]);                                           \
        for (int g = 0; g < G; g++) {                                                              \
            const float p = s[g * L + j];                                                          \
            for (int d = 0; d < D; d++) acc[g * D + d] += p * vf[d];                               \
        }                                                                                          \
    }                                                                                              \
    for (int g = 0; g < G; g++)                                                                    \
        for (int d = 0; d < D; d++) out[g * D + d] = STORE(acc[g * D + d] * inv[g]);               \
}

DEFINE_BLOCK(one_block, uint16_t, load_bf16, store_bf16)
DEFINE_BLOCK(one_block_f32, float, load_f32, store_f32)


#if defined(__AVX512F__) && defined(__AVX512BF16__) && !defined(TUTORLOOP_PORTABLE)
#include <immintrin.h>
#define HAVE_AVX512_BF16 1

/* r[i] = the sum of the 16 lanes of v[i]: a transpose-and-add tree (45 instructions for 16 sums
 * instead of ~8 per sum), then one permute to put the sums in order. */
static inline __m512 hsum16(const __m512 *v) {
    __m512 w[8], x[4], y[2];
    for (int i = 0; i < 8; i++)   /* 128-bit lanes: (a0+a2, a1+a3, b0+b2, b1+b3) */
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)   /* lane k: 4 partial sums of v[4i + k] */
        x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)
        y[i] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]), _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]));
    __m512 z = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(y[0]), _mm512_castps_pd(y[1]))),
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(y[0]), _mm512_castps_pd(y[1]))));
    /* z[4k + m] = sum of v[4m + k] */
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), z);
}

/* The same block with AVX-512 BF16 (D a multiple of 32): q.k by vdpbf16ps straight from the bf16
 * cache (pairs of products summed in fp32), 16 columns at a time so the horizontal sums share one
 * tree; V widened with vcvtneb... (exact) and accumulated in fp32; the output rounded to nearest even. */
static inline __attribute__((always_inline)) void one_block_avx512(
        const uint16_t *restrict q, const uint16_t *restrict k, const uint16_t *restrict v,
        const uint8_t *restrict m, uint16_t *restrict out, const int G, const int D, const int L,
        const float scale, float *restrict s, const uint16_t *next_k) {
    const int NC = D / 32, NV = D / 16;
    __m512bh qv[G * NC];
    for (int i = 0; i < G * NC; i++) qv[i] = (__m512bh)_mm512_loadu_si512(q + i * 32);
    const __m512 sc = _mm512_set1_ps(scale);
    int j0 = 0;
    for (; j0 + 16 <= L; j0 += 16) {
        /* the next tile of K and this tile of V (read by the second pass) */
        for (int b = 0; b < 16 * D * 2; b += 64) {
            __builtin_prefetch((const char *)(k + (int64_t)(j0 + 16) * D) + b, 0, 3);
            __builtin_prefetch((const char *)(v + (int64_t)j0 * D) + b, 0, 3);
        }
        for (int g = 0; g < G; g++) {
            __m512 acc[16];
            for (int jj = 0; jj < 16; jj++) {
                const uint16_t *kj = k + (int64_t)(j0 + jj) * D;
                __m512 a = _mm512_setzero_ps();
                for (int c = 0; c < NC; c++)
                    a = _mm512_dpbf16_ps(a, qv[g * NC + c], (__m512bh)_mm512_loadu_si512(kj + 32 * c));
                acc[jj] = a;
            }
            _mm512_storeu_ps(s + g * L + j0, _mm512_mul_ps(hsum16(acc), sc));
        }
    }
    for (; j0 < L; j0++) {   /* the last L % 16 columns */
        const uint16_t *kj = k + (int64_t)j0 * D;
        for (int g = 0; g < G; g++) {
            __m512 a = _mm512_setzero_ps();
            for (int c = 0; c < NC; c++)
                a = _mm512_dpbf16_ps(a, qv[g * NC + c], (__m512bh)_mm512_loadu_si512(kj + 32 * c));
            s[g * L + j0] = _mm512_reduce_add_ps(a) * scale;
        }
    }
    for (int j = 0; j < L; j++)
        if (!m[j])
            for (int g = 0; g < G; g++) s[g * L + j] = -INFINITY;
    float inv[G];
    softmax_rows(s, G, L, inv);
    __m512 acc[G * NV];
    for (int i = 0; i < G * NV; i++) acc[i] = _mm512_setzero_ps();
    for (int j = 0; j < L; j++) {
        /* the thread's next block starts with K: fetch it row by row while this one finishes */
        for (int b = 0; b < D * 2; b += 64) __builtin_prefetch((const char *)(next_k + (int64_t)j * D) + b, 0, 3);
        if (!m[j]) continue;
        const uint16_t *vj = v + (int64_t)j * D;
        __m512 vf[NV];
        for (int c = 0; c < NV; c++)
            vf[c] = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(vj + 16 * c))), 16));
        for (int g = 0; g < G; g++) {
            const __m512 p = _mm512_set1_ps(s[g * L + j]);
            for (int c = 0; c < NV; c++) acc[g * NV + c] = _mm512_fmadd_ps(p, vf[c], acc[g * NV + c]);
        }
    }
    for (int g = 0; g < G; g++)
        for (int c = 0; c < NV; c++)
            _mm256_storeu_si256((__m256i *)(out + g * D + 16 * c),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc[g * NV + c], _mm512_set1_ps(inv[g]))));
}
#endif

#ifdef HAVE_AVX512_BF16
#define BLOCK(GG, DD) one_block_avx512(q + qo, k + kv, v + kv, m, out + qo, GG, DD, L, scale, s, k + next_kv)
#else
#define BLOCK(GG, DD) one_block(q + qo, k + kv, v + kv, m, out + qo, GG, DD, L, scale, s)
#endif
#define BLOCK_C(GG, DD) one_block(q + qo, k + kv, v + kv, m, out + qo, GG, DD, L, scale, s)

/* Which block implementation this build runs for D = 64 / 128: 1 = AVX-512 BF16, 0 = the portable
 * loop (tests check each path they build, and say which one ran). */
int decode_attention_isa(void) {
#ifdef HAVE_AVX512_BF16
    return 1;
#else
    return 0;
#endif
}

/* The loop over (row, kv head) blocks shared by both entry points: `BLK(GG, DD)` runs one block
 * with head dims specialised for the common shapes (SmolLM2 3 x 64, Llama-3 4 x 128, Qwen2.5 7 x 64). */
#define DECODE_LOOP(BLK, BLK_C)                                                                      \
    if (G < 1 || D < 1 || L < 1 || threads < 1) return 1;                                            \
    int failed = 0;                                                                                  \
    _Pragma("omp parallel num_threads(threads)")                                                     \
    {                                                                                                \
        /* Each thread's scores (G x L floats) on the heap: long contexts would overflow a stack. */ \
        float *s = (float *)malloc(sizeof(float) * (size_t)G * (size_t)L);                           \
        if (s == NULL) {                                                                             \
            _Pragma("omp atomic write")                                                              \
            failed = 1;                                                                              \
        }                                                                                            \
        _Pragma("omp for collapse(2) schedule(static)")                                              \
        for (int r = 0; r < rows; r++) {                                                             \
            for (int h = 0; h < H; h++) {                                                            \
                if (s == NULL) continue;                                                             \
                const int64_t kv = (int64_t)r * row_stride + (int64_t)h * head_stride;               \
                const int64_t qo = ((int64_t)r * H + h) * G * D;                                     \
                const uint8_t *m = mask + (int64_t)r * mask_stride;                                  \
                /* where this thread most likely goes next (static schedule: next head, or row) */   \
                const int64_t next_kv = h + 1 < H ? kv + head_stride                                 \
                    : (r + 1 < rows ? kv - (int64_t)h * head_stride + row_stride : kv);              \
                (void)next_kv;                                                                       \
                if (D == 64) {                                                                       \
                    switch (G) {                                                                     \
                    case 1: BLK(1, 64); break;                                                       \
                    case 2: BLK(2, 64); break;                                                       \
                    case 3: BLK(3, 64); break;                                                       \
                    case 4: BLK(4, 64); break;                                                       \
                    case 7: BLK(7, 64); break;                                                       \
                    case 8: BLK(8, 64); break;                                                       \
                    default: BLK(G, 64);                                                             \
                    }                                                                                \
                } else if (D == 128) {                                                               \
                    switch (G) {                                                                     \
                    case 1: BLK(1, 128); break;                                                      \
                    case 2: BLK(2, 128); break;                                                      \
                    case 4: BLK(4, 128); break;                                                      \
                    case 8: BLK(8, 128); break;                                                      \
                    default: BLK(G, 128);                                                            \
                    }                                                                                \
                } else {                                                                             \
                    BLK_C(G, D);   /* other head dims: the portable loop */                          \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        free(s);                                                                                     \
    }                                                                                                \
    return failed ? 2 : 0;

/* q, out: [rows, H, G, D] contiguous. k, v: element (r, h, j, d) at r*row_stride + h*head_stride
 * + j*D + d (the engine's slot buffers from column lo on). mask: [rows, L], nonzero = attend; a row
 * that attends no column gets zeros. threads: torch's thread count. Returns 0, or 1 (empty shape),
 * 2 (out of memory). */
int decode_attention_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                          int64_t row_stride, int64_t head_stride, const uint8_t *mask,
                          int64_t mask_stride, uint16_t *out, int rows, int H, int G, int D, int L,
                          int threads, float scale) {
    DECODE_LOOP(BLOCK, BLOCK_C)
}

/* The same over fp32 q/k/v/out. */
#define BLOCK_F32(GG, DD) one_block_f32(q + qo, k + kv, v + kv, m, out + qo, GG, DD, L, scale, s)
int decode_attention_f32(const float *q, const float *k, const float *v,
                         int64_t row_stride, int64_t head_stride, const uint8_t *mask,
                         int64_t mask_stride, float *out, int rows, int H, int G, int D, int L,
                         int threads, float scale) {
    DECODE_LOOP(BLOCK_F32, BLOCK_F32)
}
