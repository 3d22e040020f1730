/* Integer dot products of ggml weight blocks with 8-bit activation blocks (see vlm_kernels.h).
   Block layouts are those of Sources/VLMTensor/Quant/Dequantize.swift; every reference kernel
   below reads its block exactly as the matching decoder there does, and sums integers exactly. */

#include "vlm_kernels.h"
#include "half.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

enum {
    TYPE_Q4_0 = 2, TYPE_Q4_1 = 3, TYPE_Q5_0 = 6, TYPE_Q5_1 = 7, TYPE_Q8_0 = 8,
    TYPE_Q4_K = 12, TYPE_Q5_K = 13, TYPE_Q6_K = 14,
};

/* MARK: Block fields (unaligned, little-endian) */

static inline uint16_t load_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* IEEE half to float by bits (exact; the reference must not depend on F16C). */
static inline float f16_ref(const uint8_t *p) { return half_to_float(load_u16(p)); }

/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K 12-byte table (as Block.scaleMinK4). */
static inline void scale_min_k4(int j, const uint8_t *table, int *scale, int *min) {
    if (j < 4) {
        *scale = table[j] & 63;
        *min = table[j + 4] & 63;
    } else {
        *scale = (table[j + 4] & 0x0F) | ((table[j - 4] >> 6) << 4);
        *min = (table[j + 4] >> 4) | ((table[j] >> 6) << 4);
    }
}

int vlm_activation_block_elements(uint32_t ggml_type) {
    switch (ggml_type) {
    case TYPE_Q4_0: case TYPE_Q4_1: case TYPE_Q5_0: case TYPE_Q5_1: case TYPE_Q8_0: return 32;
    case TYPE_Q4_K: case TYPE_Q5_K: case TYPE_Q6_K: return 256;
    default: return 0;
    }
}

/* MARK: Activation quantization, reference */

/* Scale and inverse scale of a block whose largest magnitude is `amax`. The vector versions
   compute the same two floats and multiply by `inverse` the same way, so quants agree exactly. */
static inline void block_scale(float amax, float *d, float *inverse) {
    *d = amax / 127.0f;
    *inverse = *d != 0.0f ? 1.0f / *d : 0.0f;
}

void vlm_quantize_q8_32_ref(const float *x, vlm_q8_32 *out, int n) {
    for (int b = 0; b < n / 32; b++, x += 32, out++) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d, inverse;
        block_scale(amax, &d, &inverse);
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            int q = (int)nearbyintf(x[j] * inverse); /* round half to even, as cvtps2dq */
            out->qs[j] = (int8_t)q;
            sum += q;
        }
        out->d = d;
        out->s = d * (float)sum;
    }
}

void vlm_quantize_q8_256_ref(const float *x, vlm_q8_256 *out, int n) {
    for (int b = 0; b < n / 256; b++, x += 256, out++) {
        float amax = 0.0f;
        for (int j = 0; j < 256; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d, inverse;
        block_scale(amax, &d, &inverse);
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int j = 16 * g; j < 16 * g + 16; j++) {
                int q = (int)nearbyintf(x[j] * inverse);
                out->qs[j] = (int8_t)q;
                sum += q;
            }
            out->sums16[g] = (int16_t)sum;
        }
        out->d = d;
    }
}

/* MARK: Dot kernels, reference. Each sums q_w·q_x exactly in integers per block, then scales. */

/* Q4_0: x = (q - 8)·d; low nibbles are elements 0..15, high nibbles 16..31. */
static float dot_q4_0_ref(int n, const uint8_t *w, const vlm_q8_32 *a) {
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 18, a++) {
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            isum += ((w[2 + j] & 0x0F) - 8) * a->qs[j] + ((w[2 + j] >> 4) - 8) * a->qs[j + 16];
        }
        sum += f16_ref(w) * a->d * (float)isum;
    }
    return sum;
}

/* Q4_1: x = q·d + m, so Σ x·y = d·d_y·Σ q·q_y + m·(d_y·Σ q_y). */
static float dot_q4_1_ref(int n, const uint8_t *w, const vlm_q8_32 *a) {
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 20, a++) {
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            isum += (w[4 + j] & 0x0F) * a->qs[j] + (w[4 + j] >> 4) * a->qs[j + 16];
        }
        sum += f16_ref(w) * a->d * (float)isum + f16_ref(w + 2) * a->s;
    }
    return sum;
}

/* Q5_0 / Q5_1: four low bits as Q4, the fifth bit of element j is bit j of a 32-bit mask. */
static inline int q5_value(const uint8_t *mask_and_quants, int j) {
    uint32_t high = load_u32(mask_and_quants);
    int nibble = j < 16 ? mask_and_quants[4 + j] & 0x0F : mask_and_quants[4 + j - 16] >> 4;
    return nibble | (int)((high >> j) & 1) << 4;
}

static float dot_q5_0_ref(int n, const uint8_t *w, const vlm_q8_32 *a) {
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 22, a++) {
        int isum = 0;
        for (int j = 0; j < 32; j++) isum += (q5_value(w + 2, j) - 16) * a->qs[j];
        sum += f16_ref(w) * a->d * (float)isum;
    }
    return sum;
}

static float dot_q5_1_ref(int n, const uint8_t *w, const vlm_q8_32 *a) {
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 24, a++) {
        int isum = 0;
        for (int j = 0; j < 32; j++) isum += q5_value(w + 4, j) * a->qs[j];
        sum += f16_ref(w) * a->d * (float)isum + f16_ref(w + 2) * a->s;
    }
    return sum;
}

static float dot_q8_0_ref(int n, const uint8_t *w, const vlm_q8_32 *a) {
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 34, a++) {
        int isum = 0;
        for (int j = 0; j < 32; j++) isum += (int8_t)w[2 + j] * a->qs[j];
        sum += f16_ref(w) * a->d * (float)isum;
    }
    return sum;
}

/* Q4_K / Q5_K: sub-block j of 32 has scale sc_j and min m_j, x = d·sc_j·q - dmin·m_j, so
   Σ x·y = d_y·(d·Σ_j sc_j·Σ q·q_y - dmin·Σ_j m_j·Σ q_y); Σ q_y of sub-block j is two 16-sums. */
static float dot_q4_K_ref(int n, const uint8_t *w, const vlm_q8_256 *a) {
    float sum = 0.0f;
    for (int b = 0; b < n / 256; b++, w += 144, a++) {
        int scaled = 0, mins = 0;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            scale_min_k4(j, w + 4, &sc, &m);
            const uint8_t *qs = w + 16 + 32 * (j / 2);
            int isum = 0;
            for (int l = 0; l < 32; l++) {
                int q = j % 2 == 0 ? qs[l] & 0x0F : qs[l] >> 4;
                isum += q * a->qs[32 * j + l];
            }
            scaled += sc * isum;
            mins += m * (a->sums16[2 * j] + a->sums16[2 * j + 1]);
        }
        sum += a->d * (f16_ref(w) * (float)scaled - f16_ref(w + 2) * (float)mins);
    }
    return sum;
}

static float dot_q5_K_ref(int n, const uint8_t *w, const vlm_q8_256 *a) {
    float sum = 0.0f;
    for (int b = 0; b < n / 256; b++, w += 176, a++) {
        int scaled = 0, mins = 0;
        const uint8_t *qh = w + 16;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            scale_min_k4(j, w + 4, &sc, &m);
            const uint8_t *qs = w + 48 + 32 * (j / 2);
            int isum = 0;
            for (int l = 0; l < 32; l++) {
                int q = (j % 2 == 0 ? qs[l] & 0x0F : qs[l] >> 4) | ((qh[l] >> j) & 1) << 4;
                isum += q * a->qs[32 * j + l];
            }
            scaled += sc * isum;
            mins += m * (a->sums16[2 * j] + a->sums16[2 * j + 1]);
        }
        sum += a->d * (f16_ref(w) * (float)scaled - f16_ref(w + 2) * (float)mins);
    }
    return sum;
}

/* Q6_K: x = d·sc_g·(q - 32) with a signed scale per 16 elements (layout as q6_KBlock). */
static float dot_q6_K_ref(int n, const uint8_t *w, const vlm_q8_256 *a) {
    float sum = 0.0f;
    for (int b = 0; b < n / 256; b++, w += 210, a++) {
        int isum = 0;
        for (int e = 0; e < 256; e++) {
            int half = e / 128, l = e % 32, k = (e % 128) / 32;
            const uint8_t *ql = w + 64 * half, *qh = w + 128 + 32 * half;
            uint8_t low = ql[l + 32 * (k & 1)];
            int q = ((k >> 1) ? low >> 4 : low & 0x0F) | ((qh[l] >> (2 * k)) & 3) << 4;
            int scale = (int8_t)w[192 + e / 16];
            isum += scale * (q - 32) * a->qs[e];
        }
        sum += f16_ref(w + 208) * a->d * (float)isum;
    }
    return sum;
}

float vlm_dot_ref(uint32_t type, int n, const void *row, const void *activations) {
    const uint8_t *w = row;
    switch (type) {
    case TYPE_Q4_0: return dot_q4_0_ref(n, w, activations);
    case TYPE_Q4_1: return dot_q4_1_ref(n, w, activations);
    case TYPE_Q5_0: return dot_q5_0_ref(n, w, activations);
    case TYPE_Q5_1: return dot_q5_1_ref(n, w, activations);
    case TYPE_Q8_0: return dot_q8_0_ref(n, w, activations);
    case TYPE_Q4_K: return dot_q4_K_ref(n, w, activations);
    case TYPE_Q5_K: return dot_q5_K_ref(n, w, activations);
    case TYPE_Q6_K: return dot_q6_K_ref(n, w, activations);
    default: return 0.0f;
    }
}

#if defined(__AVX2__)
#define DOT(name) dot_##name
#else
#define DOT(name) dot_##name##_ref
#endif

#if defined(__AVX2__)

/* MARK: Vector building blocks */

#if defined(__F16C__)
static inline float f16(const uint8_t *p) { return _cvtsh_ss(load_u16(p)); }
#else
static inline float f16(const uint8_t *p) { return f16_ref(p); }
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define VLM_ISA "avx512vnni"
#define VLM_DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#elif defined(__AVXVNNI__)
#define VLM_ISA "avxvnni"
#define VLM_DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#else
#define VLM_ISA "avx2"
#endif

/* Eight int32 lanes, lane k = Σ of u[4k+i]·s[4k+i] (u unsigned bytes, s signed bytes). With VNNI
   one instruction; with AVX2, byte pairs into int16 (cannot saturate: |u·s| ≤ 128·127 and at
   most one factor of a pair reaches 128) and int16 pairs into int32. */
static inline __m256i bytes_dot(__m256i u, __m256i s) {
#if defined(VLM_DPBUSD)
    return VLM_DPBUSD(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

/* As bytes_dot, elements 0..15 weighted by `low`, 16..31 by `high` (K-quant sub-block scales).
   Without VNNI the weights ride on the int16→int32 step for free. */
static inline __m256i bytes_dot_scaled(__m256i u, __m256i s, int low, int high) {
#if defined(VLM_DPBUSD)
    return _mm256_mullo_epi32(VLM_DPBUSD(_mm256_setzero_si256(), u, s),
                              _mm256_set_m128i(_mm_set1_epi32(high), _mm_set1_epi32(low)));
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s),
                             _mm256_set_m128i(_mm_set1_epi16((short)high), _mm_set1_epi16((short)low)));
#endif
}

static inline float hsum_ps(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

static inline int hsum_epi32(__m256i v) {
    __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(1, 0, 3, 2)));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(x);
}

static inline __m256i low_nibbles(__m256i v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0F)); }
static inline __m256i high_nibbles(__m256i v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F)); }

/* 16 bytes of nibbles as 32 byte values in element order: low nibbles 0..15, high nibbles 16..31. */
static inline __m256i nibbles_32(const uint8_t *p) {
    __m128i b = _mm_loadu_si128((const __m128i *)p), mask = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), mask), _mm_and_si128(b, mask));
}

/* Byte j = 0x10 when bit j of `mask` is set, else 0 (Q5_0/Q5_1 fifth bits). */
static inline __m256i fifth_bits(uint32_t mask) {
    const __m256i byte_of_bit = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit_in_byte = _mm256_set1_epi64x(0x8040201008040201LL); /* byte j: 1 << (j % 8) */
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)mask), byte_of_bit);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit_in_byte), bit_in_byte);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

static inline __m256i load_256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* MARK: Activation quantization, vector */

/* Largest |x| over 32 floats, as a vector of four partial maxima folded later. */
static inline __m256 abs_max_32(const float *x, __m256 running) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int j = 0; j < 32; j += 8) running = _mm256_max_ps(running, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
    return running;
}

static inline float fold_max(__m256 v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* 32 floats · inverse, rounded half to even (MXCSR default), packed to bytes in order; the four
   int32 vectors before packing are returned for sums. */
static inline void quantize_32(const float *x, float inverse, int8_t *qs, __m256i parts[4]) {
    __m256 mul = _mm256_set1_ps(inverse);
    for (int k = 0; k < 4; k++) parts[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), mul));
    /* The packs interleave 128-bit lanes; the permute restores element order. */
    __m256i words = _mm256_packs_epi16(_mm256_packs_epi32(parts[0], parts[1]), _mm256_packs_epi32(parts[2], parts[3]));
    words = _mm256_permutevar8x32_epi32(words, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, words);
}

void vlm_quantize_q8_32(const float *x, vlm_q8_32 *out, int n) {
    for (int b = 0; b < n / 32; b++, x += 32, out++) {
        float d, inverse;
        block_scale(fold_max(abs_max_32(x, _mm256_setzero_ps())), &d, &inverse);
        __m256i parts[4];
        quantize_32(x, inverse, out->qs, parts);
        int sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(parts[0], parts[1]), _mm256_add_epi32(parts[2], parts[3])));
        out->d = d;
        out->s = d * (float)sum;
    }
}

void vlm_quantize_q8_256(const float *x, vlm_q8_256 *out, int n) {
    for (int b = 0; b < n / 256; b++, x += 256, out++) {
        __m256 running = _mm256_setzero_ps();
        for (int j = 0; j < 256; j += 32) running = abs_max_32(x + j, running);
        float d, inverse;
        block_scale(fold_max(running), &d, &inverse);
        for (int g = 0; g < 8; g++) {
            __m256i parts[4];
            quantize_32(x + 32 * g, inverse, out->qs + 32 * g, parts);
            out->sums16[2 * g] = (int16_t)hsum_epi32(_mm256_add_epi32(parts[0], parts[1]));
            out->sums16[2 * g + 1] = (int16_t)hsum_epi32(_mm256_add_epi32(parts[2], parts[3]));
        }
        out->d = d;
    }
}

/* MARK: Dot kernels, vector. Quants go in as unsigned bytes; signed formats subtract their
   offset through the activation block's sum (one scalar multiply-add per block).

   Each kernel dots one weight row with T activation rows (consecutive, n / block elements
   apart): T = 1 at decode, T = TILE_TOKENS for prefill's matrix products, where a weight block
   is unpacked once for all T. Always inlined with a constant T, so the token loops unroll and
   the accumulators stay in registers. Q4_0, Q4_1, Q5_0 and Q5_1 keep a kernel each: one template
   for the four, with the layout as constant arguments, measured 30 % slower in prefill. */

#define TILE_TOKENS 4
#define KERNEL static inline __attribute__((always_inline)) void

KERNEL dot_q4_0_tokens(int n, const uint8_t *w, const vlm_q8_32 *a, int T, float *out) {
    const int nb = n / 32;
    __m256 acc[TILE_TOKENS];
    float offset[TILE_TOKENS];
    for (int t = 0; t < T; t++) { acc[t] = _mm256_setzero_ps(); offset[t] = 0.0f; }
    for (int b = 0; b < nb; b++, w += 18) {
        float dw = f16(w);
        __m256i q = nibbles_32(w + 2);
        for (int t = 0; t < T; t++) {
            const vlm_q8_32 *y = a + (size_t)t * nb + b;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * y->d), _mm256_cvtepi32_ps(bytes_dot(q, load_256(y->qs))), acc[t]);
            offset[t] += dw * y->s;
        }
    }
    for (int t = 0; t < T; t++) out[t] = hsum_ps(acc[t]) - 8.0f * offset[t];
}

KERNEL dot_q4_1_tokens(int n, const uint8_t *w, const vlm_q8_32 *a, int T, float *out) {
    const int nb = n / 32;
    __m256 acc[TILE_TOKENS];
    float mins[TILE_TOKENS];
    for (int t = 0; t < T; t++) { acc[t] = _mm256_setzero_ps(); mins[t] = 0.0f; }
    for (int b = 0; b < nb; b++, w += 20) {
        float dw = f16(w), mw = f16(w + 2);
        __m256i q = nibbles_32(w + 4);
        for (int t = 0; t < T; t++) {
            const vlm_q8_32 *y = a + (size_t)t * nb + b;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * y->d), _mm256_cvtepi32_ps(bytes_dot(q, load_256(y->qs))), acc[t]);
            mins[t] += mw * y->s;
        }
    }
    for (int t = 0; t < T; t++) out[t] = hsum_ps(acc[t]) + mins[t];
}

KERNEL dot_q5_0_tokens(int n, const uint8_t *w, const vlm_q8_32 *a, int T, float *out) {
    const int nb = n / 32;
    __m256 acc[TILE_TOKENS];
    float offset[TILE_TOKENS];
    for (int t = 0; t < T; t++) { acc[t] = _mm256_setzero_ps(); offset[t] = 0.0f; }
    for (int b = 0; b < nb; b++, w += 22) {
        float dw = f16(w);
        __m256i q = _mm256_or_si256(nibbles_32(w + 6), fifth_bits(load_u32(w + 2)));
        for (int t = 0; t < T; t++) {
            const vlm_q8_32 *y = a + (size_t)t * nb + b;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * y->d), _mm256_cvtepi32_ps(bytes_dot(q, load_256(y->qs))), acc[t]);
            offset[t] += dw * y->s;
        }
    }
    for (int t = 0; t < T; t++) out[t] = hsum_ps(acc[t]) - 16.0f * offset[t];
}

KERNEL dot_q5_1_tokens(int n, const uint8_t *w, const vlm_q8_32 *a, int T, float *out) {
    const int nb = n / 32;
    __m256 acc[TILE_TOKENS];
    float mins[TILE_TOKENS];
    for (int t = 0; t < T; t++) { acc[t] = _mm256_setzero_ps(); mins[t] = 0.0f; }
    for (int b = 0; b < nb; b++, w += 24) {
        float dw = f16(w), mw = f16(w + 2);
        __m256i q = _mm256_or_si256(nibbles_32(w + 8), fifth_bits(load_u32(w + 4)));
        for (int t = 0; t < T; t++) {
            const vlm_q8_32 *y = a + (size_t)t * nb + b;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * y->d), _mm256_cvtepi32_ps(bytes_dot(q, load_256(y->qs))), acc[t]);
            mins[t] += mw * y->s;
        }
    }
    for (int t = 0; t < T; t++) out[t] = hsum_ps(acc[t]) + mins[t];
}

/* Q8_0 weights are signed: |w| as the unsigned operand, the activation takes w's sign. */
KERNEL dot_q8_0_tokens(int n, const uint8_t *w, const vlm_q8_32 *a, int T, float *out) {
    const int nb = n / 32;
    __m256 acc[TILE_TOKENS];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, w += 34) {
        float dw = f16(w);
        __m256i q = load_256(w + 2), magnitude = _mm256_sign_epi8(q, q);
        for (int t = 0; t < T; t++) {
            const vlm_q8_32 *y = a + (size_t)t * nb + b;
            __m256i p = bytes_dot(magnitude, _mm256_sign_epi8(load_256(y->qs), q));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * y->d), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) out[t] = hsum_ps(acc[t]);
}

/* One token over Q8_0, two blocks per step: a lone accumulator would chain every fmadd (the
   language-model head of small models is Q8_0 and dominates their decode). */
static float dot_q8_0(int n, const uint8_t *w, const vlm_q8_32 *a) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int b = 0;
    for (; b + 2 <= n / 32; b += 2, w += 68, a += 2) {
        __m256i q0 = load_256(w + 2), q1 = load_256(w + 36);
        __m256i p0 = bytes_dot(_mm256_sign_epi8(q0, q0), _mm256_sign_epi8(load_256(a[0].qs), q0));
        __m256i p1 = bytes_dot(_mm256_sign_epi8(q1, q1), _mm256_sign_epi8(load_256(a[1].qs), q1));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(w) * a[0].d), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16(w + 34) * a[1].d), _mm256_cvtepi32_ps(p1), acc1);
    }
    float rest = 0.0f;
    if (b < n / 32) dot_q8_0_tokens(32, w, a, 1, &rest);
    return hsum_ps(_mm256_add_ps(acc0, acc1)) + rest;
}

/* Q4_K and Q5_K: halves d and dmin, 12 bytes of 6-bit sub-block scales and mins, Q5_K's 32 bytes
   of fifth bits (64-element chunk c takes bits 2c and 2c+1), then 32 bytes of nibbles per 64
   elements: low nibbles one sub-block, high nibbles the next. */
KERNEL dot_q4_q5_K_tokens(int n, const uint8_t *w, const vlm_q8_256 *a, int T, float *out, int has_fifth) {
    const int nb = n / 256, quants_at = 16 + 32 * has_fifth, block_bytes = quants_at + 128;
    const __m256i one = _mm256_set1_epi8(1);
    __m256 acc[TILE_TOKENS];
    float mins[TILE_TOKENS];
    for (int t = 0; t < T; t++) { acc[t] = _mm256_setzero_ps(); mins[t] = 0.0f; }
    for (int b = 0; b < nb; b++, w += block_bytes) {
        int sc[8], m[8];
        for (int j = 0; j < 8; j++) scale_min_k4(j, w + 4, &sc[j], &m[j]);
        float dw = f16(w), mw = f16(w + 2);
        /* Sub-block j's min against the two 16-sums it covers: Σ_j m_j·(sums16[2j] + sums16[2j+1]). */
        const __m256i mins16 = _mm256_setr_epi16((short)m[0], (short)m[0], (short)m[1], (short)m[1], (short)m[2], (short)m[2],
                                                 (short)m[3], (short)m[3], (short)m[4], (short)m[4], (short)m[5], (short)m[5],
                                                 (short)m[6], (short)m[6], (short)m[7], (short)m[7]);
        __m256i high = has_fifth ? load_256(w + 16) : _mm256_setzero_si256(); /* shifted right by 2 per chunk */
        __m256i isum[TILE_TOKENS];
        for (int t = 0; t < T; t++) isum[t] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i q = load_256(w + quants_at + 32 * c), lowQ = low_nibbles(q), highQ = high_nibbles(q);
            if (has_fifth) {
                lowQ = _mm256_or_si256(lowQ, _mm256_slli_epi16(_mm256_and_si256(high, one), 4));
                highQ = _mm256_or_si256(highQ, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 1), one), 4));
                high = _mm256_srli_epi16(high, 2);
            }
            for (int t = 0; t < T; t++) {
                const int8_t *y = a[(size_t)t * nb + b].qs + 64 * c;
                isum[t] = _mm256_add_epi32(isum[t], bytes_dot_scaled(lowQ, load_256(y), sc[2 * c], sc[2 * c]));
                isum[t] = _mm256_add_epi32(isum[t], bytes_dot_scaled(highQ, load_256(y + 32), sc[2 * c + 1], sc[2 * c + 1]));
            }
        }
        for (int t = 0; t < T; t++) {
            const vlm_q8_256 *y = a + (size_t)t * nb + b;
            int minSum = hsum_epi32(_mm256_madd_epi16(mins16, _mm256_loadu_si256((const __m256i *)y->sums16)));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * y->d), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            mins[t] += mw * y->d * (float)minSum;
        }
    }
    for (int t = 0; t < T; t++) out[t] = hsum_ps(acc[t]) - mins[t];
}

KERNEL dot_q4_K_tokens(int n, const uint8_t *w, const vlm_q8_256 *a, int T, float *out) { dot_q4_q5_K_tokens(n, w, a, T, out, 0); }
KERNEL dot_q5_K_tokens(int n, const uint8_t *w, const vlm_q8_256 *a, int T, float *out) { dot_q4_q5_K_tokens(n, w, a, T, out, 1); }

/* Q6_K: per 128 elements, 64 low-nibble bytes and 32 bytes of bit pairs; quants go in unbiased
   (0..63) and the bias of 32 comes back as 32·Σ_g sc_g·Σ q_y over the sixteen 16-groups. */
KERNEL dot_q6_K_tokens(int n, const uint8_t *w, const vlm_q8_256 *a, int T, float *out) {
    const int nb = n / 256;
    const __m256i three = _mm256_set1_epi8(3);
    __m256 acc[TILE_TOKENS];
    float bias[TILE_TOKENS];
    for (int t = 0; t < T; t++) { acc[t] = _mm256_setzero_ps(); bias[t] = 0.0f; }
    for (int b = 0; b < nb; b++, w += 210) {
        const int8_t *scales = (const int8_t *)(w + 192);
        __m256i isum[TILE_TOKENS];
        for (int t = 0; t < T; t++) isum[t] = _mm256_setzero_si256();
        for (int half = 0; half < 2; half++) {
            const uint8_t *ql = w + 64 * half, *qh = w + 128 + 32 * half;
            const int8_t *sc = scales + 8 * half;
            __m256i lowA = load_256(ql), lowB = load_256(ql + 32), h = load_256(qh);
            __m256i q0 = _mm256_or_si256(low_nibbles(lowA), _mm256_slli_epi16(_mm256_and_si256(h, three), 4));
            __m256i q1 = _mm256_or_si256(low_nibbles(lowB), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), three), 4));
            __m256i q2 = _mm256_or_si256(high_nibbles(lowA), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), three), 4));
            __m256i q3 = _mm256_or_si256(high_nibbles(lowB), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), three), 4));
            for (int t = 0; t < T; t++) {
                const int8_t *y = a[(size_t)t * nb + b].qs + 128 * half;
                isum[t] = _mm256_add_epi32(isum[t], bytes_dot_scaled(q0, load_256(y), sc[0], sc[1]));
                isum[t] = _mm256_add_epi32(isum[t], bytes_dot_scaled(q1, load_256(y + 32), sc[2], sc[3]));
                isum[t] = _mm256_add_epi32(isum[t], bytes_dot_scaled(q2, load_256(y + 64), sc[4], sc[5]));
                isum[t] = _mm256_add_epi32(isum[t], bytes_dot_scaled(q3, load_256(y + 96), sc[6], sc[7]));
            }
        }
        float dw = f16(w + 208);
        /* Σ_g sc_g · sums16_g: scale g covers elements 16g..16g+15. */
        __m256i wide = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)scales));
        for (int t = 0; t < T; t++) {
            const vlm_q8_256 *y = a + (size_t)t * nb + b;
            float d = dw * y->d;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            bias[t] += d * (float)hsum_epi32(_mm256_madd_epi16(wide, _mm256_loadu_si256((const __m256i *)y->sums16)));
        }
    }
    for (int t = 0; t < T; t++) out[t] = hsum_ps(acc[t]) - 32.0f * bias[t];
}

/* The single-token kernels decode uses. */
#define ONE_TOKEN(name, block) \
    static float dot_##name(int n, const uint8_t *w, const block *a) { float r; dot_##name##_tokens(n, w, a, 1, &r); return r; }
ONE_TOKEN(q4_0, vlm_q8_32)
ONE_TOKEN(q4_1, vlm_q8_32)
ONE_TOKEN(q5_0, vlm_q8_32)
ONE_TOKEN(q5_1, vlm_q8_32)
ONE_TOKEN(q4_K, vlm_q8_256)
ONE_TOKEN(q5_K, vlm_q8_256)
ONE_TOKEN(q6_K, vlm_q8_256)
#undef ONE_TOKEN

float vlm_dot(uint32_t type, int n, const void *row, const void *activations) {
    const uint8_t *w = row;
    switch (type) {
    case TYPE_Q4_0: return dot_q4_0(n, w, activations);
    case TYPE_Q4_1: return dot_q4_1(n, w, activations);
    case TYPE_Q5_0: return dot_q5_0(n, w, activations);
    case TYPE_Q5_1: return dot_q5_1(n, w, activations);
    case TYPE_Q8_0: return dot_q8_0(n, w, activations);
    case TYPE_Q4_K: return dot_q4_K(n, w, activations);
    case TYPE_Q5_K: return dot_q5_K(n, w, activations);
    case TYPE_Q6_K: return dot_q6_K(n, w, activations);
    default: return 0.0f;
    }
}

const char *vlm_dot_instruction_set(void) { return VLM_ISA; }

#else /* no AVX2: the reference kernels are the kernels */

void vlm_quantize_q8_32(const float *x, vlm_q8_32 *out, int n) { vlm_quantize_q8_32_ref(x, out, n); }
void vlm_quantize_q8_256(const float *x, vlm_q8_256 *out, int n) { vlm_quantize_q8_256_ref(x, out, n); }
float vlm_dot(uint32_t type, int n, const void *row, const void *activations) { return vlm_dot_ref(type, n, row, activations); }
const char *vlm_dot_instruction_set(void) { return "scalar"; }

#endif

void vlm_mat_vec_rows(uint32_t type, int n, const void *data, size_t row_bytes,
                      int row_begin, int row_end, const void *activations, float *y) {
    const uint8_t *rows = data;
    /* The switch is hoisted out of the row loop by inlining each case's loop. */
#define ROWS(kernel, block) \
    for (int r = row_begin; r < row_end; r++) y[r] = kernel(n, rows + (size_t)r * row_bytes, (const block *)activations); \
    return;
    switch (type) {
    case TYPE_Q4_0: ROWS(DOT(q4_0), vlm_q8_32)
    case TYPE_Q4_1: ROWS(DOT(q4_1), vlm_q8_32)
    case TYPE_Q5_0: ROWS(DOT(q5_0), vlm_q8_32)
    case TYPE_Q5_1: ROWS(DOT(q5_1), vlm_q8_32)
    case TYPE_Q8_0: ROWS(DOT(q8_0), vlm_q8_32)
    case TYPE_Q4_K: ROWS(DOT(q4_K), vlm_q8_256)
    case TYPE_Q5_K: ROWS(DOT(q5_K), vlm_q8_256)
    case TYPE_Q6_K: ROWS(DOT(q6_K), vlm_q8_256)
    default:
        for (int r = row_begin; r < row_end; r++) y[r] = 0.0f;
    }
#undef ROWS
}

#if defined(__AVX2__)
/* Rows × TILE_TOKENS tokens: the weight row's blocks are unpacked once for the tile. */
static void dot_tile(uint32_t type, int n, const uint8_t *w, const void *a, float *out) {
    switch (type) {
    case TYPE_Q4_0: dot_q4_0_tokens(n, w, a, TILE_TOKENS, out); return;
    case TYPE_Q4_1: dot_q4_1_tokens(n, w, a, TILE_TOKENS, out); return;
    case TYPE_Q5_0: dot_q5_0_tokens(n, w, a, TILE_TOKENS, out); return;
    case TYPE_Q5_1: dot_q5_1_tokens(n, w, a, TILE_TOKENS, out); return;
    case TYPE_Q8_0: dot_q8_0_tokens(n, w, a, TILE_TOKENS, out); return;
    case TYPE_Q4_K: dot_q4_K_tokens(n, w, a, TILE_TOKENS, out); return;
    case TYPE_Q5_K: dot_q5_K_tokens(n, w, a, TILE_TOKENS, out); return;
    case TYPE_Q6_K: dot_q6_K_tokens(n, w, a, TILE_TOKENS, out); return;
    default: for (int t = 0; t < TILE_TOKENS; t++) out[t] = 0.0f;
    }
}
#endif

size_t vlm_activation_row_bytes(uint32_t type, int n) {
    int elements = vlm_activation_block_elements(type);
    if (elements == 0) return 0;
    return (size_t)(n / elements) * (elements == 256 ? sizeof(vlm_q8_256) : sizeof(vlm_q8_32));
}

void vlm_mat_mat_rows(uint32_t type, int n, const void *data, size_t row_bytes, int row_begin, int row_end,
                      const void *activations, int tokens, float *y, size_t ldy) {
    const uint8_t *rows = data, *act = activations;
    size_t token_bytes = vlm_activation_row_bytes(type, n);
    if (token_bytes == 0) return;
    /* Four tokens at a time over every row of the range: the four activation rows stay in L1
       while the weight rows (a range callers keep small enough for L2) stream past them. */
    int t = 0;
#if defined(__AVX2__)
    for (; t + TILE_TOKENS <= tokens; t += TILE_TOKENS) {
        const uint8_t *a = act + (size_t)t * token_bytes;
        for (int r = row_begin; r < row_end; r++) {
            float out[TILE_TOKENS];
            dot_tile(type, n, rows + (size_t)r * row_bytes, a, out);
            for (int i = 0; i < TILE_TOKENS; i++) y[(size_t)(t + i) * ldy + r] = out[i];
        }
    }
#endif
    for (; t < tokens; t++)
        for (int r = row_begin; r < row_end; r++)
            y[(size_t)t * ldy + r] = vlm_dot(type, n, rows + (size_t)r * row_bytes, act + (size_t)t * token_bytes);
}

/* MARK: Rows interleaved eight at a time (Q4_0, Q4_K, Q6_K) */

/* Weights with eight rows interleaved, so one pass of vector instructions dots eight rows with a
   token and the eight sums land in the eight lanes of one register: no horizontal sums, and each
   activation load serves eight rows. Row group g (rows 8g..8g+7) keeps, for each block b, one
   group block at (g · blocks + b) · group_block_bytes. Quant bytes go in 4-byte slices: a 32-byte
   slice holds the same four bytes of the eight rows, row order, so a byte multiply against four
   activation bytes broadcast to every lane dots all eight rows at once.
     - Q4_0 (144 bytes): the eight f16 scales (16 bytes); then slices 0..3 of the 16 quant bytes.
     - Q4_K (1184 bytes, 32 more than stored): d × 8, dmin × 8 (f16); the 6-bit sub-block scales
       unpacked to bytes as pairs, 16 bytes per pair p: row r's scales of sub-blocks 2p and
       2p + 1 at 2r; the mins likewise; then for each 64-element chunk c, slices 0..7 of its 32
       quant bytes (low nibbles sub-block 2c, high nibbles 2c + 1, as stored).
     - Q6_K (1680 bytes): d × 8; the sixteen int8 scales as pairs (16 bytes per pair, as Q4_K's);
       then for each 128-element half, slices 0..7 of its first 32 low-nibble bytes, of the next
       32, and of its 32 bytes of high bit pairs. */

enum { Q4_0_BYTES = 18, Q4_K_BYTES = 144, Q6_K_BYTES = 210 };

/* Copies `bytes` between a row's block and its place in a group block, either way. */
static inline void place(uint8_t *group, uint8_t *row, size_t bytes, int packing) {
    if (packing) memcpy(group, row, bytes); else memcpy(row, group, bytes);
}

/* Each layout moves row r's block between `row` and the group block, in the direction asked
   (packing: row → group). */
static void layout_q4_0(uint8_t *group, uint8_t *row, int r, int packing) {
    place(group + 2 * r, row, 2, packing);
    for (int slice = 0; slice < 4; slice++) place(group + 16 + 32 * slice + 4 * r, row + 2 + 4 * slice, 4, packing);
}

static void layout_q4_K(uint8_t *group, uint8_t *row, int r, int packing) {
    place(group + 2 * r, row, 2, packing);
    place(group + 16 + 2 * r, row + 2, 2, packing);
    uint8_t *scales = group + 32, *mins = group + 96, *table = row + 4;
    if (packing) {
        for (int j = 0; j < 8; j++) {
            int sc, m;
            scale_min_k4(j, table, &sc, &m);
            scales[16 * (j / 2) + 2 * r + j % 2] = (uint8_t)sc;
            mins[16 * (j / 2) + 2 * r + j % 2] = (uint8_t)m;
        }
    } else { /* scale_min_k4 inverted: six bits each, the top two of sub-blocks 4..7 above 0..3 */
        uint8_t sc[8], m[8];
        for (int j = 0; j < 8; j++) { sc[j] = scales[16 * (j / 2) + 2 * r + j % 2]; m[j] = mins[16 * (j / 2) + 2 * r + j % 2]; }
        for (int j = 0; j < 4; j++) {
            table[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
            table[j + 4] = (uint8_t)(m[j] | ((m[j + 4] >> 4) << 6));
            table[j + 8] = (uint8_t)((sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4));
        }
    }
    for (int c = 0; c < 4; c++)
        for (int slice = 0; slice < 8; slice++)
            place(group + 160 + 256 * c + 32 * slice + 4 * r, row + 16 + 32 * c + 4 * slice, 4, packing);
}

static void layout_q6_K(uint8_t *group, uint8_t *row, int r, int packing) {
    place(group + 2 * r, row + 208, 2, packing);
    for (int p = 0; p < 8; p++) place(group + 16 + 16 * p + 2 * r, row + 192 + 2 * p, 2, packing);
    for (int half = 0; half < 2; half++) {
        uint8_t *slices = group + 144 + 768 * half;
        for (int slice = 0; slice < 8; slice++) {
            place(slices + 32 * slice + 4 * r, row + 64 * half + 4 * slice, 4, packing);
            place(slices + 256 + 32 * slice + 4 * r, row + 64 * half + 32 + 4 * slice, 4, packing);
            place(slices + 512 + 32 * slice + 4 * r, row + 128 + 32 * half + 4 * slice, 4, packing);
        }
    }
}

typedef void (*layout_fn)(uint8_t *group, uint8_t *row, int r, int packing);

typedef struct { int elements; size_t block_bytes, group_bytes; layout_fn layout; } interleaving;

static int interleaving_for(uint32_t type, interleaving *out) {
    switch (type) {
    case TYPE_Q4_0: *out = (interleaving){32, Q4_0_BYTES, 8 * Q4_0_BYTES, layout_q4_0}; return 1;
    case TYPE_Q4_K: *out = (interleaving){256, Q4_K_BYTES, 1184, layout_q4_K}; return 1;
    case TYPE_Q6_K: *out = (interleaving){256, Q6_K_BYTES, 8 * Q6_K_BYTES, layout_q6_K}; return 1;
    default: return 0;
    }
}

size_t vlm_interleaved_group_bytes(uint32_t type, int n) {
    interleaving il;
#if defined(__AVX2__)
    if (n > 0 && interleaving_for(type, &il) && n % il.elements == 0) return (size_t)(n / il.elements) * il.group_bytes;
#else
    (void)il; (void)type; (void)n; /* the scalar build reads rows as stored */
#endif
    return 0;
}

void vlm_interleave(uint32_t type, const void *rows, size_t row_bytes, int n, int group_begin, int group_end, void *packed) {
    interleaving il;
    if (!interleaving_for(type, &il)) return;
    const int nb = n / il.elements;
    for (int g = group_begin; g < group_end; g++)
        for (int b = 0; b < nb; b++)
            for (int r = 0; r < 8; r++) {
                /* Packing only reads the row; the layouts take one pointer for both directions. */
                uint8_t *block = (uint8_t *)rows + (size_t)(8 * g + r) * row_bytes + (size_t)b * il.block_bytes;
                il.layout((uint8_t *)packed + ((size_t)g * nb + b) * il.group_bytes, block, r, 1);
            }
}

/* The reference: each row's blocks taken back out of the groups, then vlm_dot_ref per token. */
void vlm_mat_x8_ref(uint32_t type, int n, const void *packed, int group_begin, int group_end,
                    const void *activations, int tokens, float *y, size_t ldy) {
    interleaving il;
    if (!interleaving_for(type, &il)) return;
    const int nb = n / il.elements;
    const size_t token_bytes = vlm_activation_row_bytes(type, n);
    uint8_t *row = malloc((size_t)nb * il.block_bytes);
    if (!row) return;
    for (int g = group_begin; g < group_end; g++)
        for (int r = 0; r < 8; r++) {
            for (int b = 0; b < nb; b++)
                il.layout((uint8_t *)packed + ((size_t)g * nb + b) * il.group_bytes, row + (size_t)b * il.block_bytes, r, 0);
            for (int t = 0; t < tokens; t++)
                y[(size_t)t * ldy + 8 * g + r] = vlm_dot_ref(type, n, row, (const uint8_t *)activations + (size_t)t * token_bytes);
        }
    free(row);
}

#if defined(__AVX2__)
/* Eight rows × T tokens (T ≤ TILE_TOKENS, a constant after inlining), one kernel per type. Each
   slice unpacks once for all T tokens; a token's four activation bytes for the slice's elements
   are broadcast to the eight lanes. Unsigned quants times signed bytes (|q| ≤ 127) add up in
   int16 only as far as they cannot overflow, then widen through one multiply-add that also
   applies the sub-block scales where there are any. */

static inline __m256i broadcast4(const int8_t *p) { int32_t v; memcpy(&v, p, 4); return _mm256_set1_epi32(v); }

/* Lane r of a scale pair register (int16 pairs from 16 bytes at 2r) with its first or second
   scale in both halves: the factor _mm256_madd_epi16 needs to scale a lane's two int16 sums. */
static inline __m256i first_of_pairs(__m256i pairs) {
    return _mm256_shuffle_epi8(pairs, _mm256_setr_epi8(0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13,
                                                       0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13));
}
static inline __m256i second_of_pairs(__m256i pairs) {
    return _mm256_shuffle_epi8(pairs, _mm256_setr_epi8(2, 3, 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15,
                                                       2, 3, 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15));
}

/* The kernels below add byte products lane by lane. With VNNI one instruction adds a lane's
   four products into its int32 sum; with AVX2 they go into the lane's two int16 halves (each
   kernel keeps those within int16 range) and `lane_sums` widens them. A sub-block's scale
   multiplies the sums through `add_scaled` with the scale `lane_scale` picks: int32 lanes with
   VNNI, int16 pairs riding on the widening step without. */
#if defined(VLM_DPBUSD)
#define ADD_BYTE_PRODUCTS(acc, u, s) VLM_DPBUSD(acc, u, s)
static inline __m256i lane_sums(__m256i acc) { return acc; }
static inline __m256i lane_scale(__m256i pairs, int second) {
    return second ? _mm256_srai_epi32(pairs, 16) : _mm256_srai_epi32(_mm256_slli_epi32(pairs, 16), 16);
}
static inline __m256i add_scaled(__m256i isum, __m256i sums, __m256i scale) {
    return _mm256_add_epi32(isum, _mm256_mullo_epi32(sums, scale));
}
#else
#define ADD_BYTE_PRODUCTS(acc, u, s) _mm256_add_epi16(acc, _mm256_maddubs_epi16(u, s))
static inline __m256i lane_sums(__m256i acc) { return _mm256_madd_epi16(acc, _mm256_set1_epi16(1)); }
static inline __m256i lane_scale(__m256i pairs, int second) { return second ? second_of_pairs(pairs) : first_of_pairs(pairs); }
static inline __m256i add_scaled(__m256i isum, __m256i sums, __m256i scale) {
    return _mm256_add_epi32(isum, _mm256_madd_epi16(sums, scale));
}
#endif

/* Q4_0: a pair of products is at most 15 · 127 · 2 = 3810, a block's eight pairs 30480: the
   int16 sums of a whole block fit. The offset of 8 comes off through the activation block's
   sum: d_w · (d_x · Σ q_w q_x − 8 · s_x). */
KERNEL group_tokens_q4_0(int nb, const uint8_t *p, const vlm_q8_32 *a, int T, float *y, size_t ldy) {
    const __m256i low_mask = _mm256_set1_epi8(0x0F);
    __m256 acc[TILE_TOKENS];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, p += 8 * Q4_0_BYTES) {
        __m256i sums[TILE_TOKENS];
        for (int t = 0; t < T; t++) sums[t] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i raw = load_256(p + 16 + 32 * c);
            __m256i lo = _mm256_and_si256(raw, low_mask), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low_mask);
            for (int t = 0; t < T; t++) {
                const int8_t *qs = a[(size_t)t * nb + b].qs;
                sums[t] = ADD_BYTE_PRODUCTS(sums[t], lo, broadcast4(qs + 4 * c));
                sums[t] = ADD_BYTE_PRODUCTS(sums[t], hi, broadcast4(qs + 16 + 4 * c));
            }
        }
        __m256 scales = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        for (int t = 0; t < T; t++) {
            const vlm_q8_32 *x = a + (size_t)t * nb + b;
            __m256 products = _mm256_cvtepi32_ps(lane_sums(sums[t]));
            __m256 v = _mm256_fmsub_ps(_mm256_set1_ps(x->d), products, _mm256_set1_ps(8.0f * x->s));
            acc[t] = _mm256_fmadd_ps(scales, v, acc[t]);
        }
    }
    for (int t = 0; t < T; t++) _mm256_storeu_ps(y + (size_t)t * ldy, acc[t]);
}

/* Q4_K: a 32-element sub-block is eight slices of 3810 at most, 30480 in int16, then × its
   6-bit scale into int32. The mins: Σ_s m_s · Σ x over sub-block s, from the activation's
   16-element sums added in pairs. */
KERNEL group_tokens_q4_K(int nb, const uint8_t *p, const vlm_q8_256 *a, int T, float *y, size_t ldy) {
    const __m256i low_mask = _mm256_set1_epi8(0x0F);
    __m256 acc[TILE_TOKENS];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, p += 1184) {
        __m256i isum[TILE_TOKENS];
        for (int t = 0; t < T; t++) isum[t] = _mm256_setzero_si256();
        /* Sub-block s: the low nibbles (s even) or high nibbles (s odd) of chunk s / 2. One
           sub-block at a time keeps T int16 sums live, not 2T (four tokens fit the registers). */
        for (int s = 0; s < 8; s++) {
            __m256i sums[TILE_TOKENS];
            for (int t = 0; t < T; t++) sums[t] = _mm256_setzero_si256();
            const uint8_t *slices = p + 160 + 256 * (s / 2);
            for (int slice = 0; slice < 8; slice++) {
                __m256i raw = load_256(slices + 32 * slice);
                __m256i q = (s & 1) ? _mm256_and_si256(_mm256_srli_epi16(raw, 4), low_mask) : _mm256_and_si256(raw, low_mask);
                for (int t = 0; t < T; t++)
                    sums[t] = ADD_BYTE_PRODUCTS(sums[t], q, broadcast4(a[(size_t)t * nb + b].qs + 32 * s + 4 * slice));
            }
            __m256i pairs = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(p + 32 + 16 * (s / 2))));
            __m256i scale = lane_scale(pairs, s & 1);
            for (int t = 0; t < T; t++) isum[t] = add_scaled(isum[t], sums[t], scale);
        }
        __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));
        for (int t = 0; t < T; t++) {
            const vlm_q8_256 *x = a + (size_t)t * nb + b;
            /* 32-bit element e of `sub` holds the int16 sums of sub-blocks (2e, 2e + 1) for e = 0, 1
               and (2e − 4, 2e − 3) for e = 4, 5 (hadd works within 128-bit halves). */
            __m256i sixteens = _mm256_loadu_si256((const __m256i *)x->sums16), sub = _mm256_hadd_epi16(sixteens, sixteens);
            __m256i msum = _mm256_setzero_si256();
            static const int element[4] = {0, 1, 4, 5};
            for (int pair = 0; pair < 4; pair++) {
                __m256i mins = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(p + 96 + 16 * pair)));
                __m256i sums = _mm256_permutevar8x32_epi32(sub, _mm256_set1_epi32(element[pair]));
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mins, sums));
            }
            __m256 dx = _mm256_set1_ps(x->d);
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, dx), _mm256_cvtepi32_ps(msum), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) _mm256_storeu_ps(y + (size_t)t * ldy, acc[t]);
}

/* Q6_K: quants go in unbiased (0..63), a pair of products at most 63 · 127 · 2 = 16002, so two
   slices add in int16 before × the 16-element group's scale into int32. The bias of 32 comes
   back as 32 · Σ_g sc_g · (Σ x over group g), in int32 with the products (both stay far below
   2³¹: 16 · 128 · 127 · 63 · 16 and 32 · 16 · 128 · 2032). */
KERNEL group_tokens_q6_K(int nb, const uint8_t *p, const vlm_q8_256 *a, int T, float *y, size_t ldy) {
    const __m256i low_mask = _mm256_set1_epi8(0x0F), three = _mm256_set1_epi8(3);
    __m256 acc[TILE_TOKENS];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, p += 8 * Q6_K_BYTES) {
        __m256i isum[TILE_TOKENS];
        for (int t = 0; t < T; t++) isum[t] = _mm256_setzero_si256();
        for (int half = 0; half < 2; half++) {
            const uint8_t *slices = p + 144 + 768 * half;
            /* Quarter q (elements 32q..32q + 31 of the half): low nibbles of the first 32 bytes
               (q = 0), of the next 32 (q = 1), their high nibbles (q = 2, 3); bits 2q, 2q + 1 of
               the high-bit bytes on top. Its scales are pair 4·half + q. */
            for (int quarter = 0; quarter < 4; quarter++) {
                const uint8_t *nibbles = slices + 256 * (quarter & 1), *high_bits = slices + 512;
                __m256i scales = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 16 + 16 * (4 * half + quarter))));
                for (int t = 0; t < T; t++) {
                    /* The bias term of these two groups, while their scales are at hand. */
                    const vlm_q8_256 *x = a + (size_t)t * nb + b;
                    __m256i sums = broadcast4((const int8_t *)x->sums16 + 4 * (4 * half + quarter));
                    isum[t] = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(_mm256_madd_epi16(scales, sums), 5));
                }
                for (int group = 0; group < 2; group++) {
                    __m256i scale = lane_scale(scales, group);
                    for (int pair = 0; pair < 2; pair++) {
                        __m256i q[2];
                        for (int i = 0; i < 2; i++) {
                            int slice = 4 * group + 2 * pair + i;
                            __m256i raw = load_256(nibbles + 32 * slice);
                            __m256i low = quarter < 2 ? _mm256_and_si256(raw, low_mask)
                                                      : _mm256_and_si256(_mm256_srli_epi16(raw, 4), low_mask);
                            __m256i bits = _mm256_and_si256(_mm256_srli_epi16(load_256(high_bits + 32 * slice), 2 * quarter), three);
                            q[i] = _mm256_or_si256(low, _mm256_slli_epi16(bits, 4));
                        }
                        for (int t = 0; t < T; t++) {
                            const int8_t *qs = a[(size_t)t * nb + b].qs + 128 * half + 32 * quarter + 4 * (4 * group + 2 * pair);
                            __m256i sums = ADD_BYTE_PRODUCTS(ADD_BYTE_PRODUCTS(_mm256_setzero_si256(), q[0], broadcast4(qs)),
                                                             q[1], broadcast4(qs + 4));
                            isum[t] = add_scaled(isum[t], sums, scale);
                        }
                    }
                }
            }
        }
        __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        for (int t = 0; t < T; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(a[(size_t)t * nb + b].d)), _mm256_cvtepi32_ps(isum[t]), acc[t]);
    }
    for (int t = 0; t < T; t++) _mm256_storeu_ps(y + (size_t)t * ldy, acc[t]);
}

void vlm_mat_x8(uint32_t type, int n, const void *packed, int group_begin, int group_end,
                const void *activations, int tokens, float *y, size_t ldy) {
    interleaving il;
    if (!interleaving_for(type, &il)) return;
    const int nb = n / il.elements;
    const size_t token_bytes = vlm_activation_row_bytes(type, n), group_stride = (size_t)nb * il.group_bytes;
    const uint8_t *groups = packed, *act = activations;
    /* Four tokens at a time over the range's groups (which callers keep small enough for L2),
       then the remaining one to three. */
#define GROUPS(kernel, block, T) \
    for (int g = group_begin; g < group_end; g++) \
        kernel(nb, groups + (size_t)g * group_stride, (const block *)(act + (size_t)t * token_bytes), T, y + (size_t)t * ldy + 8 * g, ldy);
#define ALL_TOKENS(kernel, block) { \
    int t = 0; \
    for (; t + TILE_TOKENS <= tokens; t += TILE_TOKENS) GROUPS(kernel, block, TILE_TOKENS) \
    for (; t < tokens; t++) GROUPS(kernel, block, 1) \
    return; }
    switch (type) {
    case TYPE_Q4_0: ALL_TOKENS(group_tokens_q4_0, vlm_q8_32)
    case TYPE_Q4_K: ALL_TOKENS(group_tokens_q4_K, vlm_q8_256)
    case TYPE_Q6_K: ALL_TOKENS(group_tokens_q6_K, vlm_q8_256)
    }
#undef ALL_TOKENS
#undef GROUPS
}

#else

void vlm_mat_x8(uint32_t type, int n, const void *packed, int group_begin, int group_end,
                const void *activations, int tokens, float *y, size_t ldy) {
    vlm_mat_x8_ref(type, n, packed, group_begin, group_end, activations, tokens, y, ldy);
}

#endif
