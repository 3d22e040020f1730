#ifndef VLM_KERNELS_H
#define VLM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Decode-time dot products of ggml-encoded weight rows with activations quantized to 8 bits,
   the way ggml computes them: integer sums inside each block, one float multiply per block.

   The activation row is quantized once per mat-vec into one of two block layouts (the weight
   type decides which, see vlm_activation_block_elements):
     - 32 elements for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: a scale and d * Σ qs, which folds the
       offset of Q4_0/Q5_0 and the min of Q4_1/Q5_1 into one multiply per block;
     - 256 elements for Q4_K, Q5_K, Q6_K: a scale and the sum of every 16 quants, which folds
       the K-quants' sub-block mins (and Q6_K's bias of 32) the same way.
   Quants are round-to-nearest-even of x * 127 / max|x| in [-127, 127], so every signed
   byte product fits the unsigned-by-signed byte multiplies of the vector paths.

   Each kernel comes twice: `_ref` is a plain scalar transcription that the tests trust, the
   other is the vector version for this machine (chosen at compile time: AVX-512 VNNI or
   AVX-VNNI `vpdpbusd`, else AVX2 `vpmaddubsw`, else the reference itself). */

typedef struct {
    float d;          /* x ≈ d * qs */
    float s;          /* d * Σ qs: the block's sum as the quants represent it */
    int8_t qs[32];
} vlm_q8_32;

typedef struct {
    float d;
    int8_t qs[256];
    int16_t sums16[16]; /* Σ qs over each 16 elements */
} vlm_q8_256;

/* Elements per activation block for weight `ggml_type` (32 or 256), 0 when the type has no
   integer kernel. Bytes per block: sizeof(vlm_q8_32) or sizeof(vlm_q8_256). */
int vlm_activation_block_elements(uint32_t ggml_type);

/* x: `n` floats, n a multiple of 32 (of 256 for the _256 forms); out: n / 32 (n / 256) blocks. */
void vlm_quantize_q8_32(const float *x, vlm_q8_32 *out, int n);
void vlm_quantize_q8_32_ref(const float *x, vlm_q8_32 *out, int n);
void vlm_quantize_q8_256(const float *x, vlm_q8_256 *out, int n);
void vlm_quantize_q8_256_ref(const float *x, vlm_q8_256 *out, int n);

/* One row of `n` elements of `ggml_type` dotted with its quantized activations. Returns 0
   for a type without an integer kernel (callers check vlm_activation_block_elements). */
float vlm_dot(uint32_t ggml_type, int n, const void *row, const void *activations);
float vlm_dot_ref(uint32_t ggml_type, int n, const void *row, const void *activations);

/* y[r] = vlm_dot(row r) for r in [row_begin, row_end): one call per thread's share of rows. */
void vlm_mat_vec_rows(uint32_t ggml_type, int n, const void *data, size_t row_bytes,
                      int row_begin, int row_end, const void *activations, float *y);

/* Bytes of one token's quantized activations for a row of `n` elements of `ggml_type`. */
size_t vlm_activation_row_bytes(uint32_t ggml_type, int n);

/* Prefill's product: y[t·ldy + r] = vlm_dot(row r, token t's activations) for r in
   [row_begin, row_end) and t < tokens; the activations are `tokens` consecutive rows of
   vlm_activation_row_bytes each. The vector path dots each weight row with four tokens at
   once (tests hold it to vlm_dot_ref per pair). */
void vlm_mat_mat_rows(uint32_t ggml_type, int n, const void *data, size_t row_bytes, int row_begin, int row_end,
                      const void *activations, int tokens, float *y, size_t ldy);

/* Q4_0, Q4_K and Q6_K rows interleaved eight at a time (layouts in quant_dot.c), so one pass dots
   eight rows with a token into the eight lanes of a register. vlm_interleaved_group_bytes: bytes
   of one group of eight rows of `n` elements, 0 for a type (or a build without AVX2) that keeps
   its rows as stored. vlm_interleave packs row groups [group_begin, group_end) (rows 8g..8g+7 of
   `rows`) into `packed`, which holds the whole matrix. vlm_mat_x8 is vlm_mat_mat_rows over the
   packed rows of those groups (y[t·ldy + r], tokens ≥ 1); vlm_mat_x8_ref takes each row back out
   of its group and calls vlm_dot_ref. */
size_t vlm_interleaved_group_bytes(uint32_t ggml_type, int n);
void vlm_interleave(uint32_t ggml_type, const void *rows, size_t row_bytes, int n, int group_begin, int group_end, void *packed);
void vlm_mat_x8(uint32_t ggml_type, int n, const void *packed, int group_begin, int group_end,
                const void *activations, int tokens, float *y, size_t ldy);
void vlm_mat_x8_ref(uint32_t ggml_type, int n, const void *packed, int group_begin, int group_end,
                    const void *activations, int tokens, float *y, size_t ldy);

/* Which vector path this build uses: "avx512vnni", "avxvnni", "avx2" or "scalar". */
const char *vlm_dot_instruction_set(void);

/* Decode attention of one query head (attention.c). scores[j] = scale · q·k_j for the `total`
   cached keys k_j = keys + j·stride (`hd` numbers each); out = Σ_j p[j] · v_j likewise. For a
   Float32 cache (_f32) and an IEEE half one (_f16). */
void vlm_attention_scores_f32(const float *q, const float *keys, size_t stride, int total, int hd,
                              float scale, float *scores);
void vlm_attention_mix_f32(const float *p, const float *values, size_t stride, int total, int hd, float *out);
void vlm_attention_scores_f16(const float *q, const uint16_t *keys, size_t stride, int total, int hd,
                              float scale, float *scores);
void vlm_attention_mix_f16(const float *p, const uint16_t *values, size_t stride, int total, int hd, float *out);

/* IEEE half from Float32, rounding to nearest even, and back (attention.c). */
void vlm_f16_from_f32(const float *x, uint16_t *y, size_t n);
void vlm_f32_from_f16(const uint16_t *x, float *y, size_t n);

/* C = alpha · op(A)·op(B) + beta · C (row-major; op(A) [m, k], stored [k, m] with trans_a;
   op(B) [k, n], stored [n, k] with trans_b) with A and B rounded to bfloat16 and the products
   summed in Float32 (gemm_bf16.c): the --bf16 matrix product, on up to `threads` threads of the
   pool. C is not read when beta is 0. Returns 0, or -1 when its packing buffer cannot be
   allocated. Without AVX512-BF16 it runs vlm_gemm_bf16_ref, the plain loop (and
   vlm_gemm_bf16_available() is 0). */
int vlm_gemm_bf16(int m, int n, int k, float alpha, const float *a, size_t lda, int trans_a, const float *b, size_t ldb,
                  int trans_b, float beta, float *c, size_t ldc, int threads);
void vlm_gemm_bf16_ref(int m, int n, int k, float alpha, const float *a, size_t lda, int trans_a, const float *b, size_t ldb,
                       int trans_b, float beta, float *c, size_t ldc);
int vlm_gemm_bf16_available(void);

/* Fork-join over a persistent pool of threads (thread_pool.c): calls fn(context, c) once for
   every c in [0, chunks), spread over up to `threads` threads (the caller is one of them), and
   returns when all are done. Nested or concurrent calls run their chunks on the caller. */
typedef void (*vlm_chunk_fn)(void *context, int chunk);
void vlm_parallel_run(int chunks, int threads, vlm_chunk_fn fn, void *context);

#endif
