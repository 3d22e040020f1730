/* C = alpha · op(A)·op(B) + beta · C with A and B rounded to bfloat16 and the products summed
   in Float32: the --bf16 matrix product (see vlm_kernels.h). AVX512-BF16's dot-product
   instruction multiplies 16 pairs of bf16 taken along k and adds them into 16 Float32 lanes:
   twice the multiply-adds of a Float32 FMA per instruction. The fast path is a packed,
   blocked GEMM (B in panels of 32 columns, A in panels of 12 rows, both as pairs along k);
   vlm_gemm_bf16_ref is the plain loop it is tested against. */

#include "vlm_kernels.h"
#include <stdlib.h>
#include <string.h>

/* Round to nearest even, as the hardware conversion does: NaN stays NaN, and denormal
   inputs become ±0 (the instructions treat them as zero). */
static inline uint16_t bf16_from_f32(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40);
    if ((x & 0x7f800000) == 0) return (uint16_t)((x >> 16) & 0x8000);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

static inline float f32_from_bf16(uint16_t h) {
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* op(B)[p][j]. */
static inline float b_at(const float *b, size_t ldb, int trans_b, int p, int j) {
    return trans_b ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j];
}

void vlm_gemm_bf16_ref(int m, int n, int k, float alpha, const float *a, size_t lda, int trans_a, const float *b, size_t ldb,
                       int trans_b, float beta, float *c, size_t ldc) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int p = 0; p < k; p++)
                s += f32_from_bf16(bf16_from_f32(trans_a ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p]))
                   * f32_from_bf16(bf16_from_f32(b_at(b, ldb, trans_b, p, j)));
            float *out = c + (size_t)i * ldc + j;
            *out = alpha * s + (beta == 0.0f ? 0.0f : beta * *out);
        }
}

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

int vlm_gemm_bf16_available(void) { return 1; }

/* Micro-tile MR×NR (24 accumulators), k slices of KC, row blocks of MC, column blocks of NC
   packed at once; the threads take (row block, GROUP panels) pieces of a column block, so a
   prompt of a few hundred rows still spreads evenly. */
enum { MR = 12, NR = 32, KC = 256, MC = 96, NC = 1024, GROUP = 8 };

static inline uint32_t pair(float lo, float hi) { return (uint32_t)bf16_from_f32(lo) | (uint32_t)bf16_from_f32(hi) << 16; }

/* 16 pairs (k, k+1) of 32 consecutive floats. */
static inline __m512i pairs_of_32(const float *x) {
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x));
}

/* B's columns [j0, j0+nc) over all of k as panels of NR columns: panel q, pair p holds NR
   32-bit pairs (B[2p][j], B[2p+1][j]); kp = ceil(k/2) pairs, the missing half and columns zero. */
typedef struct {
    const float *b; size_t ldb; int trans_b, k, kp, j0, nc;
    uint32_t *packed;
} pack_b_job;

static void pack_b_panel(void *context, int q) {
    const pack_b_job *job = context;
    uint32_t *out = job->packed + (size_t)q * job->kp * NR;
    int cols = job->nc - q * NR < NR ? job->nc - q * NR : NR;
    int j = job->j0 + q * NR;
    if (job->trans_b) {
        /* Column j of op(B) is row j of B: contiguous in k. */
        for (int jj = 0; jj < NR; jj++) {
            if (jj >= cols) { for (int p = 0; p < job->kp; p++) out[p * NR + jj] = 0; continue; }
            const float *row = job->b + (size_t)(j + jj) * job->ldb;
            int p = 0;
            uint32_t tmp[16];
            for (; 2 * p + 32 <= job->k; p += 16) {
                _mm512_storeu_si512(tmp, pairs_of_32(row + 2 * p));
                for (int i = 0; i < 16; i++) out[(p + i) * NR + jj] = tmp[i];
            }
            for (; p < job->kp; p++) out[p * NR + jj] = pair(row[2 * p], 2 * p + 1 < job->k ? row[2 * p + 1] : 0.0f);
        }
        return;
    }
    /* Rows 2p and 2p+1 of B, interleaved. */
    for (int p = 0; p < job->kp; p++) {
        const float *r0 = job->b + (size_t)(2 * p) * job->ldb + j;
        const float *r1 = 2 * p + 1 < job->k ? r0 + job->ldb : NULL;
        uint32_t *o = out + (size_t)p * NR;
        if (cols == NR && r1) {
            for (int h = 0; h < NR; h += 16) {
                __m256i lo = (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r0 + h));
                __m256i hi = (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r1 + h));
                __m256i a = _mm256_unpacklo_epi16(lo, hi), b = _mm256_unpackhi_epi16(lo, hi);
                _mm256_storeu_si256((__m256i *)(o + h), _mm256_permute2x128_si256(a, b, 0x20));
                _mm256_storeu_si256((__m256i *)(o + h + 8), _mm256_permute2x128_si256(a, b, 0x31));
            }
        } else {
            for (int jj = 0; jj < NR; jj++) o[jj] = jj < cols ? pair(r0[jj], r1 ? r1[jj] : 0.0f) : 0;
        }
    }
}

/* rows × NR of C from kp pairs of a packed A micro-panel (MR pairs per p) and B panel (NR per
   p): C = alpha·acc + beta·C, C not read when beta is 0. */
static inline void micro_kernel(int kp, const uint32_t *ap, const uint32_t *bp, float *c, size_t ldc,
                                int rows, int cols, float alpha, float beta) {
    __m512 acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int p = 0; p < kp; p++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + p * NR), b1 = (__m512bh)_mm512_loadu_si512(bp + p * NR + 16);
        const uint32_t *a = ap + p * MR;
        for (int r = 0; r < MR; r++) {
            __m512bh x = (__m512bh)_mm512_set1_epi32((int)a[r]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, b1);
        }
    }
    __mmask16 m0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    __mmask16 m1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < MR; r++) {
        if (r >= rows) break;
        float *o = c + (size_t)r * ldc;
        __m512 y0 = _mm512_mul_ps(va, acc[r][0]), y1 = _mm512_mul_ps(va, acc[r][1]);
        if (beta != 0.0f) {
            y0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, o), y0);
            y1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, o + 16), y1);
        }
        _mm512_mask_storeu_ps(o, m0, y0);
        _mm512_mask_storeu_ps(o + 16, m1, y1);
    }
}

typedef struct {
    const float *a; size_t lda; int trans_a;
    const uint32_t *packed_b;
    int m, k, kp, nc;
    float alpha, beta;
    float *c; size_t ldc;
} compute_job;

/* Rows [i0, i0+MC) and panels [q0, q0+GROUP) of C's current column block: for each KC slice
   of k, pack A's rows into micro-panels, then every B panel against every A micro-panel (the B
   panel's slice stays in L1 while the A micro-panels stream from L2). */
static void compute_piece(void *context, int chunk) {
    const compute_job *job = context;
    int groups = (job->nc + GROUP * NR - 1) / (GROUP * NR);
    int i0 = chunk / groups * MC, mc = job->m - i0 < MC ? job->m - i0 : MC;
    int q0 = chunk % groups * GROUP, q1 = (job->nc + NR - 1) / NR;
    if (q1 > q0 + GROUP) q1 = q0 + GROUP;
    int panels = (mc + MR - 1) / MR;
    _Alignas(64) uint32_t ap[MC / MR][KC / 2][MR];
    for (int p0 = 0; p0 < job->kp; p0 += KC / 2) {
        int kpc = job->kp - p0 < KC / 2 ? job->kp - p0 : KC / 2;
        if (job->trans_a) {
            /* A stored [k, m]: a micro-panel's MR rows are contiguous in each of A's rows 2p, 2p+1. */
            for (int s = 0; s < panels; s++)
                for (int p = 0; p < kpc; p++) {
                    int kk = 2 * (p0 + p), first = i0 + s * MR;
                    const float *r0 = job->a + (size_t)kk * job->lda + first, *r1 = kk + 1 < job->k ? r0 + job->lda : NULL;
                    for (int r = 0; r < MR; r++)
                        ap[s][p][r] = first + r < job->m ? pair(r0[r], r1 ? r1[r] : 0.0f) : 0;
                }
        } else
        for (int s = 0; s < panels; s++)
            for (int r = 0; r < MR; r++) {
                int i = i0 + s * MR + r;
                if (i >= job->m) { for (int p = 0; p < kpc; p++) ap[s][p][r] = 0; continue; }
                const float *row = job->a + (size_t)i * job->lda;
                int p = 0;
                if (2 * (p0 + kpc) <= job->k) {
                    uint32_t tmp[16];
                    for (; p + 16 <= kpc; p += 16) {
                        _mm512_storeu_si512(tmp, pairs_of_32(row + 2 * (p0 + p)));
                        for (int t = 0; t < 16; t++) ap[s][p + t][r] = tmp[t];
                    }
                }
                for (; p < kpc; p++) {
                    int kk = 2 * (p0 + p);
                    ap[s][p][r] = pair(row[kk], kk + 1 < job->k ? row[kk + 1] : 0.0f);
                }
            }
        float beta = p0 == 0 ? job->beta : 1.0f;
        for (int q = q0; q < q1; q++) {
            const uint32_t *bp = job->packed_b + ((size_t)q * job->kp + p0) * NR;
            int cols = job->nc - q * NR < NR ? job->nc - q * NR : NR;
            for (int s = 0; s < panels; s++) {
                int rows = mc - s * MR < MR ? mc - s * MR : MR;
                micro_kernel(kpc, &ap[s][0][0], bp, job->c + (size_t)(i0 + s * MR) * job->ldc + q * NR, job->ldc,
                             rows, cols, job->alpha, beta);
            }
        }
    }
}

int vlm_gemm_bf16(int m, int n, int k, float alpha, const float *a, size_t lda, int trans_a, const float *b, size_t ldb,
                  int trans_b, float beta, float *c, size_t ldc, int threads) {
    if (m <= 0 || n <= 0) return 0;
    if (k <= 0) {  /* nothing to sum: C = beta·C */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) c[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[(size_t)i * ldc + j];
        return 0;
    }
    int kp = (k + 1) / 2;
    int ncmax = n < NC ? n : NC;
    uint32_t *packed = aligned_alloc(64, ((size_t)kp * ((ncmax + NR - 1) / NR) * NR * 4 + 63) / 64 * 64);
    if (!packed) return -1;
    for (int j0 = 0; j0 < n; j0 += NC) {
        int nc = n - j0 < NC ? n - j0 : NC;
        pack_b_job pb = { b, ldb, trans_b, k, kp, j0, nc, packed };
        vlm_parallel_run((nc + NR - 1) / NR, threads, pack_b_panel, &pb);
        compute_job job = { a, lda, trans_a, packed, m, k, kp, nc, alpha, beta, c + j0, ldc };
        int groups = (nc + GROUP * NR - 1) / (GROUP * NR);
        vlm_parallel_run((m + MC - 1) / MC * groups, threads, compute_piece, &job);
    }
    free(packed);
    return 0;
}

#else

int vlm_gemm_bf16_available(void) { return 0; }

int vlm_gemm_bf16(int m, int n, int k, float alpha, const float *a, size_t lda, int trans_a, const float *b, size_t ldb,
                  int trans_b, float beta, float *c, size_t ldc, int threads) {
    (void)threads;
    vlm_gemm_bf16_ref(m, n, k, alpha, a, lda, trans_a, b, ldb, trans_b, beta, c, ldc);
    return 0;
}

#endif
