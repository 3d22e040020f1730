/* Decode attention of one query head over the KV cache (see vlm_kernels.h). At decode the
   scores and the mix read every cached key and value once per head: the loops below keep the
   head's query (scores) or output (mix) in registers while the cache streams by. */

#include "vlm_kernels.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

static inline float hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

void vlm_attention_scores(const float *q, const float *keys, size_t stride, int total, int hd,
                          float scale, float *scores) {
    if (hd == 64) {
        __m256 q0 = _mm256_loadu_ps(q), q1 = _mm256_loadu_ps(q + 8), q2 = _mm256_loadu_ps(q + 16),
               q3 = _mm256_loadu_ps(q + 24), q4 = _mm256_loadu_ps(q + 32), q5 = _mm256_loadu_ps(q + 40),
               q6 = _mm256_loadu_ps(q + 48), q7 = _mm256_loadu_ps(q + 56);
        for (int j = 0; j < total; j++) {
            const float *k = keys + (size_t)j * stride;
            __m256 a = _mm256_mul_ps(q0, _mm256_loadu_ps(k)), b = _mm256_mul_ps(q1, _mm256_loadu_ps(k + 8));
            a = _mm256_fmadd_ps(q2, _mm256_loadu_ps(k + 16), a); b = _mm256_fmadd_ps(q3, _mm256_loadu_ps(k + 24), b);
            a = _mm256_fmadd_ps(q4, _mm256_loadu_ps(k + 32), a); b = _mm256_fmadd_ps(q5, _mm256_loadu_ps(k + 40), b);
            a = _mm256_fmadd_ps(q6, _mm256_loadu_ps(k + 48), a); b = _mm256_fmadd_ps(q7, _mm256_loadu_ps(k + 56), b);
            scores[j] = hsum8(_mm256_add_ps(a, b)) * scale;
        }
        return;
    }
    for (int j = 0; j < total; j++) {
        const float *k = keys + (size_t)j * stride;
        __m256 a = _mm256_setzero_ps();
        int i = 0;
        for (; i + 8 <= hd; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a);
        float s = hsum8(a);
        for (; i < hd; i++) s += q[i] * k[i];
        scores[j] = s * scale;
    }
}

void vlm_attention_mix(const float *p, const float *values, size_t stride, int total, int hd, float *out) {
    if (hd == 64) {
        __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0, o4 = o0, o5 = o0, o6 = o0, o7 = o0;
        for (int j = 0; j < total; j++) {
            const float *v = values + (size_t)j * stride;
            __m256 w = _mm256_broadcast_ss(p + j);
            o0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v), o0);      o1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8), o1);
            o2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 16), o2); o3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 24), o3);
            o4 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 32), o4); o5 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 40), o5);
            o6 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 48), o6); o7 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 56), o7);
        }
        _mm256_storeu_ps(out, o0);      _mm256_storeu_ps(out + 8, o1);  _mm256_storeu_ps(out + 16, o2);
        _mm256_storeu_ps(out + 24, o3); _mm256_storeu_ps(out + 32, o4); _mm256_storeu_ps(out + 40, o5);
        _mm256_storeu_ps(out + 48, o6); _mm256_storeu_ps(out + 56, o7);
        return;
    }
    for (int i = 0; i < hd; i++) out[i] = 0.0f;
    for (int j = 0; j < total; j++) {
        const float *v = values + (size_t)j * stride;
        __m256 w = _mm256_broadcast_ss(p + j);
        int i = 0;
        for (; i + 8 <= hd; i += 8) _mm256_storeu_ps(out + i, _mm256_fmadd_ps(w, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
        for (; i < hd; i++) out[i] += p[j] * v[i];
    }
}

#else

void vlm_attention_scores(const float *q, const float *keys, size_t stride, int total, int hd,
                          float scale, float *scores) {
    for (int j = 0; j < total; j++) {
        const float *k = keys + (size_t)j * stride;
        float s = 0.0f;
        for (int i = 0; i < hd; i++) s += q[i] * k[i];
        scores[j] = s * scale;
    }
}

void vlm_attention_mix(const float *p, const float *values, size_t stride, int total, int hd, float *out) {
    for (int i = 0; i < hd; i++) out[i] = 0.0f;
    for (int j = 0; j < total; j++)
        for (int i = 0; i < hd; i++) out[i] += p[j] * values[(size_t)j * stride + i];
}

#endif
