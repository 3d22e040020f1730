/* Decode attention of one query head over the KV cache (see vlm_kernels.h). At decode the
   scores and the mix read every cached key and value once per head: the loops below keep the
   head's query (scores) or output (mix) in registers while the cache streams by. Each kernel
   is written once over a load of 8 cached numbers, for Float32 and for f16 caches. */

#include "vlm_kernels.h"
#include "half.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

static inline float hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

static inline __m256 load8_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 load8_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
static inline float load1_f32(const float *p) { return *p; }
static inline float load1_f16(const uint16_t *p) { return _cvtsh_ss(*p); }

#define ATTENTION_KERNELS(SUFFIX, T)                                                                    \
void vlm_attention_scores##SUFFIX(const float *q, const T *keys, size_t stride, int total, int hd,      \
                                  float scale, float *scores) {                                         \
    if (hd == 64) {                                                                                     \
        __m256 q0 = _mm256_loadu_ps(q), q1 = _mm256_loadu_ps(q + 8), q2 = _mm256_loadu_ps(q + 16),      \
               q3 = _mm256_loadu_ps(q + 24), q4 = _mm256_loadu_ps(q + 32), q5 = _mm256_loadu_ps(q + 40), \
               q6 = _mm256_loadu_ps(q + 48), q7 = _mm256_loadu_ps(q + 56);                              \
        for (int j = 0; j < total; j++) {                                                               \
            const T *k = keys + (size_t)j * stride;                                                     \
            __m256 a = _mm256_mul_ps(q0, load8##SUFFIX(k)), b = _mm256_mul_ps(q1, load8##SUFFIX(k + 8)); \
            a = _mm256_fmadd_ps(q2, load8##SUFFIX(k + 16), a); b = _mm256_fmadd_ps(q3, load8##SUFFIX(k + 24), b); \
            a = _mm256_fmadd_ps(q4, load8##SUFFIX(k + 32), a); b = _mm256_fmadd_ps(q5, load8##SUFFIX(k + 40), b); \
            a = _mm256_fmadd_ps(q6, load8##SUFFIX(k + 48), a); b = _mm256_fmadd_ps(q7, load8##SUFFIX(k + 56), b); \
            scores[j] = hsum8(_mm256_add_ps(a, b)) * scale;                                             \
        }                                                                                               \
        return;                                                                                         \
    }                                                                                                   \
    for (int j = 0; j < total; j++) {                                                                   \
        const T *k = keys + (size_t)j * stride;                                                         \
        __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();                                        \
        int i = 0;                                                                                      \
        for (; i + 16 <= hd; i += 16) {                                                                 \
            a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8##SUFFIX(k + i), a);                       \
            b = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), load8##SUFFIX(k + i + 8), b);               \
        }                                                                                               \
        for (; i + 8 <= hd; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8##SUFFIX(k + i), a); \
        float s = hsum8(_mm256_add_ps(a, b));                                                           \
        for (; i < hd; i++) s += q[i] * load1##SUFFIX(k + i);                                           \
        scores[j] = s * scale;                                                                          \
    }                                                                                                   \
}                                                                                                       \
                                                                                                        \
void vlm_attention_mix##SUFFIX(const float *p, const T *values, size_t stride, int total, int hd, float *out) { \
    int i = 0;                                                                                          \
    /* 64 outputs at a time in registers, over every position. */                                       \
    for (; i + 64 <= hd; i += 64) {                                                                     \
        __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0, o4 = o0, o5 = o0, o6 = o0, o7 = o0; \
        for (int j = 0; j < total; j++) {                                                               \
            const T *v = values + (size_t)j * stride + i;                                               \
            __m256 w = _mm256_broadcast_ss(p + j);                                                      \
            o0 = _mm256_fmadd_ps(w, load8##SUFFIX(v), o0);      o1 = _mm256_fmadd_ps(w, load8##SUFFIX(v + 8), o1); \
            o2 = _mm256_fmadd_ps(w, load8##SUFFIX(v + 16), o2); o3 = _mm256_fmadd_ps(w, load8##SUFFIX(v + 24), o3); \
            o4 = _mm256_fmadd_ps(w, load8##SUFFIX(v + 32), o4); o5 = _mm256_fmadd_ps(w, load8##SUFFIX(v + 40), o5); \
            o6 = _mm256_fmadd_ps(w, load8##SUFFIX(v + 48), o6); o7 = _mm256_fmadd_ps(w, load8##SUFFIX(v + 56), o7); \
        }                                                                                               \
        _mm256_storeu_ps(out + i, o0);      _mm256_storeu_ps(out + i + 8, o1);  _mm256_storeu_ps(out + i + 16, o2); \
        _mm256_storeu_ps(out + i + 24, o3); _mm256_storeu_ps(out + i + 32, o4); _mm256_storeu_ps(out + i + 40, o5); \
        _mm256_storeu_ps(out + i + 48, o6); _mm256_storeu_ps(out + i + 56, o7);                         \
    }                                                                                                   \
    for (; i < hd; i++) {                                                                               \
        float s = 0.0f;                                                                                 \
        for (int j = 0; j < total; j++) s += p[j] * load1##SUFFIX(values + (size_t)j * stride + i);     \
        out[i] = s;                                                                                     \
    }                                                                                                   \
}

ATTENTION_KERNELS(_f32, float)
ATTENTION_KERNELS(_f16, uint16_t)

void vlm_f16_from_f32(const float *x, uint16_t *y, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = float_to_half(x[i]);
}

void vlm_f32_from_f16(const uint16_t *x, float *y, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load8_f16(x + i));
    for (; i < n; i++) y[i] = half_to_float(x[i]);
}

#else

static inline float load1_f32(const float *p) { return *p; }
static inline float load1_f16(const uint16_t *p) { return half_to_float(*p); }

#define ATTENTION_KERNELS(SUFFIX, T)                                                                    \
void vlm_attention_scores##SUFFIX(const float *q, const T *keys, size_t stride, int total, int hd,      \
                                  float scale, float *scores) {                                         \
    for (int j = 0; j < total; j++) {                                                                   \
        const T *k = keys + (size_t)j * stride;                                                         \
        float s = 0.0f;                                                                                 \
        for (int i = 0; i < hd; i++) s += q[i] * load1##SUFFIX(k + i);                                  \
        scores[j] = s * scale;                                                                          \
    }                                                                                                   \
}                                                                                                       \
void vlm_attention_mix##SUFFIX(const float *p, const T *values, size_t stride, int total, int hd, float *out) { \
    for (int i = 0; i < hd; i++) out[i] = 0.0f;                                                         \
    for (int j = 0; j < total; j++)                                                                     \
        for (int i = 0; i < hd; i++) out[i] += p[j] * load1##SUFFIX(values + (size_t)j * stride + i);   \
}

ATTENTION_KERNELS(_f32, float)
ATTENTION_KERNELS(_f16, uint16_t)

void vlm_f16_from_f32(const float *x, uint16_t *y, size_t n) { for (size_t i = 0; i < n; i++) y[i] = float_to_half(x[i]); }
void vlm_f32_from_f16(const uint16_t *x, float *y, size_t n) { for (size_t i = 0; i < n; i++) y[i] = half_to_float(x[i]); }

#endif
