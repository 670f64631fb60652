// kernels/gemm.hpp — single-precision matrix multiply, BLIS style.
//
//   C := alpha * op(A) * op(B) + beta * C   (+ bias[j] added to every row of C)
//
// op(A) is M x K and op(B) is K x N; C is M x N. Every matrix is row-major
// with an explicit row stride ("leading dimension"):
//   A is stored (M, K) with row stride lda, or (K, M) when trans_a;
//   B is stored (K, N) with row stride ldb, or (N, K) when trans_b;
//   C is stored (M, N) with row stride ldc.
// beta == 0 means "overwrite": C is never read, so NaN or garbage in C
// cannot leak into the result (the BLAS convention).
//
// How it is organised (read top to bottom):
//   1. tile and block sizes, with how they were chosen;
//   2. the micro-kernel: an MR x NR tile of C kept in registers while it
//      walks kc steps of an A sliver and a packed B sliver (one rank-1
//      update per step), and the edge-tile wrapper for ragged borders;
//   3. the packing routines, which copy a panel of op(B) and a block of
//      op(A) into the sliver layouts the micro-kernel reads, taking care of
//      transposes and zero-padding ragged edges;
//   4. gemm_f32_fused: the five BLIS loops around the micro-kernel, with
//      the epilogue (bias, activation) applied as tiles are stored;
//      gemm_f32, the plain BLAS-like form; gemm_f32_part, one thread's
//      share of C;
//   5. gemm_f32_ref: the plain triple loop, the reference for the tests.
//
// The caller owns the packing scratch (gemm_pack_floats(M, N, K) floats per
// thread, 64-byte aligned, from its arena): nothing here allocates.
#pragma once

#include "simd.hpp"
#include "vmath.hpp"  // masked loads and stores of a partial vector

#include <cstddef>
#include <cstring>
#include <type_traits>

namespace nn {

// ---------------------------------------------------------------------------
// 1. Tile and block sizes
// ---------------------------------------------------------------------------
// Register tile MR x NR, NR = NV vectors. The tile of C takes MR * NV
// accumulator registers, plus NV for a row of the B sliver and one for a
// broadcast of A:
//   32 vector registers (AVX-512, aarch64 NEON): 8 x 2 vectors, 16 + 2 + 1
//      (8 x 32 floats on AVX-512, 8 x 8 on NEON);
//   16 vector registers (AVX2, armhf NEON):      6 x 2 vectors, 12 + 2 + 1
//      (6 x 16 floats on AVX2, 6 x 8 on NEON).
// Both keep two FMA pipes busy (>= 12 independent accumulators hide a
// 4-cycle FMA latency) with NV loads + MR broadcasts per MR * NV FMAs.
// MR = 8 also divides the usual batch sizes, so they need no ragged tile.
#if NN_SIMD && (defined(__AVX512F__) || defined(__aarch64__))
constexpr int kGemmMR = 8;  // rows of C per micro-tile
constexpr int kGemmNV = 2;  // vectors of C per micro-tile row
#elif NN_SIMD
constexpr int kGemmMR = 6;
constexpr int kGemmNV = 2;
#else
constexpr int kGemmMR = 4;  // scalar build: a 4 x 4 tile of plain floats
constexpr int kGemmNV = 4;  // (16 accumulators fit any register file)
#endif
constexpr int kGemmNR = kGemmNV * simd::kWidth;  // columns of C per micro-tile

// Cache blocking, in floats, from the data caches of the target family:
//   x86-64: 48 KiB L1d, 1 MiB L2 per core (Zen 4/5, Intel since Ice Lake);
//   ARM:    32 KiB L1d, 512 KiB L2 (Cortex-A53/A72, shared by the cluster).
// A smaller cache than assumed costs some speed, never correctness.
//   KC (depth of a K block): the micro-kernel walks an MR x KC sliver of A
//       and a KC x NR sliver of B together, and the B sliver is reused by
//       every A sliver of the block, so both should fit in L1d:
//       KC = L1d / ((MR + NR) * 4 B), rounded down to a multiple of 64 and
//       clamped to [128, 512]: 256 on AVX-512, 512 on AVX2, NEON and scalar.
//       Longer K blocks mean fewer passes over C; measured on Zen 5, KC = 128
//       is 10-30 % slower at K = 784, 256 to 512 are equal. K itself is cut
//       into equal blocks of at most KC (784 -> 4 x 196, not 3 x 256 + 16).
//   MC (rows of an A block): the MC x KC block is read once per B sliver, so
//       it should stay in half of L2: MC = L2 / 2 / (KC * 4 B), a multiple
//       of MR (512 rows on AVX-512, 252 on AVX2, 126..128 on ARM).
//   NC (columns of a B panel): the KC x NC panel is reused by every A block,
//       so it should stay in L2 (L3 on x86): NC = L2 / (KC * 4 B), a multiple
//       of NR (1024 on AVX-512, 512 on AVX2, 256 on ARM). This also bounds
//       the scratch to about L2 + L2 / 2.
#if defined(__x86_64__) || defined(__i386__)
constexpr int kGemmL1dBytes = 48 * 1024;
constexpr int kGemmL2Bytes = 1024 * 1024;
#else
constexpr int kGemmL1dBytes = 32 * 1024;
constexpr int kGemmL2Bytes = 512 * 1024;
#endif
constexpr int gemm_clamp(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
constexpr int kGemmKC = gemm_clamp(kGemmL1dBytes / ((kGemmMR + kGemmNR) * 4) / 64 * 64, 128, 512);
constexpr int kGemmMC = kGemmL2Bytes / 2 / (kGemmKC * 4) / kGemmMR * kGemmMR;
constexpr int kGemmNC = kGemmL2Bytes / (kGemmKC * 4) / kGemmNR * kGemmNR;

// Depth of the K blocks: K is cut into equal blocks of at most KC
// (784 -> 4 x 196, not 3 x 256 + 16).
inline int gemm_kc_step(int K) {
    const int k_blocks = (K + kGemmKC - 1) / kGemmKC;
    return (K + k_blocks - 1) / k_blocks;
}
inline size_t gemm_round_up(size_t v, size_t m) { return (v + m - 1) / m * m; }

// Floats of packing scratch: one KC x NC panel of op(B) then one MC x KC
// block of op(A), the A block starting on a 64-byte boundary when `pack`
// does. gemm_pack_floats(M, N, K) is what one call of that shape touches;
// gemm_pack_floats() bounds every shape (about 1.5 MB on AVX-512).
inline size_t gemm_pack_b_floats(int N, int K) {
    const int nc = N < kGemmNC ? N : kGemmNC;
    return gemm_round_up((size_t)gemm_kc_step(K) * gemm_round_up((size_t)nc, kGemmNR), 16);
}
inline size_t gemm_pack_floats(int M, int N, int K) {
    if (M <= 0 || N <= 0 || K <= 0) return 0;
    const int mc = M < kGemmMC ? M : kGemmMC;
    return gemm_pack_b_floats(N, K) + gemm_round_up((size_t)mc, kGemmMR) * (size_t)gemm_kc_step(K);
}
inline size_t gemm_pack_floats() { return (size_t)kGemmKC * kGemmNC + (size_t)kGemmMC * kGemmKC; }

// What is applied to C as its tile is stored (the "epilogue"): a bias per
// column with the first K block, then, with the last K block, while the
// tile is still in registers, y = y > 0 ? y : slope * y (ReLU with slope 0,
// leaky ReLU otherwise) when `relu`. Activations that need exp
// (sigmoid, tanh) are applied by the caller of gemm_f32_fused to each tile
// right after it is stored, while it is in L1 (see gemm_f32_fused).
struct GemmEpilogue {
    const float* bias = nullptr;
    bool relu = false;
    float slope = 0.f;
    // Called on every finished tile of C (mr x nr at c, row stride ldc),
    // after the last K block; null for none.
    void (*tile_fn)(float* c, int ldc, int mr, int nr, const void* ctx) = nullptr;
    const void* tile_ctx = nullptr;
};

// ---------------------------------------------------------------------------
// 2. The micro-kernel
// ---------------------------------------------------------------------------
// gemm_f32_ukernel<NV>: an MR x (NV * kWidth) tile; NV = kGemmNV is the main
// kernel (8 x 32 floats on AVX-512: "gemm_f32_ukernel_8x32"), NV = 1 serves
// right edges at most one vector wide. Contract, with NR = kGemmNR:
//
//   acc[i][j]    = sum_{p < kc} a[i*rs_a + p*cs_a] * b[p*NR + j]
//   c[i*ldc + j] = act(alpha * acc[i][j] + beta * c[i*ldc + j] + bias[j])
//                                           (i < MR, j < NV * kWidth)
// act(r) = r > 0 ? r : slope * r when relu (max(r, 0) for slope 0), else r.
// a: an MR x kc sliver of op(A), element (i, p) at a[i*rs_a + p*cs_a]:
//    packed (rs_a = 1, cs_a = MR: kc columns of MR floats) or read in place
//    from a row-major A (rs_a = lda, cs_a = 1).
// b: a kc x NR sliver of op(B), row p at b + p*rs_b: packed (rs_b = NR,
//    zero-padded past the right edge of B) or, for a full sliver of a
//    non-transposed B, read in place (rs_b = ldb).
// c: a tile of C with row stride ldc: ROWS (<= MR, MR by default) rows and
//    the first nr columns are computed and stored (a ragged right edge with
//    masked stores); gemm_f32_edge_tile picks ROWS and NV for a ragged tile.
// beta == 0: c is not read (NaN in C does not leak). bias may be nullptr.
// The epilogue's ReLU in one float, the same formula as the vector lanes.
static inline float gemm_relu(float r, float slope) {
    if (slope == 0.f) return r < 0.f ? 0.f : r;  // relu(-inf) = 0; NaN stays NaN
    return r > 0.f ? r : r * slope;
}

#if NN_SIMD
template <int NV, int ROWS = kGemmMR>
static inline void gemm_f32_ukernel(float* c, int ldc, const float* a, int rs_a, int cs_a,
                                    const float* b, int rs_b, const float* bias, float alpha,
                                    float beta, int kc, bool relu = false, float slope = 0.f,
                                    int nr = NV * simd::kWidth) {
    using simd::vf;
    constexpr int W = simd::kWidth;
    static_assert(ROWS >= 1 && ROWS <= kGemmMR, "a tile has 1 to MR rows");
    vf acc[ROWS][NV];  // the tile of C, in registers
    // M x N: zero the accumulators.
#pragma GCC unroll 8
    for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = vf(0.f);

    // K: one rank-1 update per step, acc += a[:, p] * b[p, :].
    for (int p = 0; p < kc; ++p, a += cs_a, b += rs_b) {
        // N: row p of the B sliver, NV vectors.
        vf bp[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) bp[v] = vf::load_unaligned(b + v * W);
        // M: each row of the tile takes a broadcast of one A value.
#pragma GCC unroll 8
        for (int i = 0; i < ROWS; ++i) {
            const vf ai(a[i * rs_a]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[i][v] = xsimd::fma(ai, bp[v], acc[i][v]);
        }
    }

    // Store, M: rows of the tile; N: NV vectors per row, the last one
    // partial (masked) when nr stops inside it.
    const vf va(alpha), vb(beta), vzero(0.f), vslope(slope);
#pragma GCC unroll 8
    for (int i = 0; i < ROWS; ++i) {
        float* ci = c + (ptrdiff_t)i * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            const int cols = nr - v * W;
            if (cols <= 0) break;
            const bool full = cols >= W;
            vf r = acc[i][v] * va;
            if (beta != 0.f)
                r = xsimd::fma(vb, full ? vf::load_unaligned(ci + v * W) : simd::load_partial(ci + v * W, (size_t)cols, 0.f), r);
            if (bias) r += full ? vf::load_unaligned(bias + v * W) : simd::load_partial(bias + v * W, (size_t)cols, 0.f);
            // max(0, r), in that order: x86 and NEON both return r when r is
            // NaN, so a NaN stays visible to the loss (as in PyTorch).
            if (relu) r = slope == 0.f ? xsimd::max(vzero, r) : xsimd::select(r > vzero, r, r * vslope);
            if (full)
                r.store_unaligned(ci + v * W);
            else
                simd::store_partial(ci + v * W, r, (size_t)cols);
        }
    }
}
#else
// The scalar build: the same contract with kWidth = 1 (NV floats per row).
template <int NV, int ROWS = kGemmMR>
static inline void gemm_f32_ukernel(float* c, int ldc, const float* a, int rs_a, int cs_a,
                                    const float* b, int rs_b, const float* bias, float alpha,
                                    float beta, int kc, bool relu = false, float slope = 0.f,
                                    int nr = NV) {
    float acc[ROWS][NV] = {};
    // K: one rank-1 update per step, acc += a[:, p] * b[p, :].
    for (int p = 0; p < kc; ++p, a += cs_a, b += rs_b)
        // M x N: every accumulator of the tile.
        for (int i = 0; i < ROWS; ++i)
            for (int j = 0; j < NV; ++j) acc[i][j] += a[i * rs_a] * b[j];
    // Store, M: rows of the tile; N: the first nr columns.
    for (int i = 0; i < ROWS; ++i) {
        float* ci = c + (ptrdiff_t)i * ldc;
        for (int j = 0; j < NV && j < nr; ++j) {
            float r = alpha * acc[i][j];
            if (beta != 0.f) r += beta * ci[j];
            if (bias) r += bias[j];
            if (relu) r = gemm_relu(r, slope);
            ci[j] = r;
        }
    }
}
#endif

// The micro-kernel for ROWS = mr rows (mr <= ROWS), chosen at run time.
template <int NV, int ROWS>
static inline void gemm_f32_ukernel_rows(int mr, float* c, int ldc, const float* a, int rs_a, int cs_a,
                                         const float* b, int rs_b, const float* bias, float alpha, float beta,
                                         int kc, bool relu, float slope, int nr) {
    if constexpr (ROWS > 1) {
        if (mr < ROWS) {
            gemm_f32_ukernel_rows<NV, ROWS - 1>(mr, c, ldc, a, rs_a, cs_a, b, rs_b, bias, alpha, beta, kc, relu,
                                                slope, nr);
            return;
        }
    }
    gemm_f32_ukernel<NV, ROWS>(c, ldc, a, rs_a, cs_a, b, rs_b, bias, alpha, beta, kc, relu, slope, nr);
}

// A ragged tile, only mr < MR rows or nr < NR columns of it inside C: the
// micro-kernel with mr rows (never reading A's rows past M) and one vector
// fewer when nr allows, its last vector stored through a mask. C outside
// (M, N) is never read or written.
static inline void gemm_f32_edge_tile(float* c, int ldc, const float* a, int rs_a, int cs_a,
                                      const float* b, int rs_b, const float* bias, float alpha,
                                      float beta, int kc, int mr, int nr, bool relu, float slope) {
    if (nr <= simd::kWidth)
        gemm_f32_ukernel_rows<1, kGemmMR>(mr, c, ldc, a, rs_a, cs_a, b, rs_b, bias, alpha, beta, kc, relu, slope,
                                          nr);
    else
        gemm_f32_ukernel_rows<kGemmNV, kGemmMR>(mr, c, ldc, a, rs_a, cs_a, b, rs_b, bias, alpha, beta, kc, relu,
                                                slope, nr);
}

// ---------------------------------------------------------------------------
// 3. Packing
// ---------------------------------------------------------------------------
// Copy one full row of a B sliver (NR floats). Spelled out with vectors
// because -O2 does not vectorise a copy whose pointers might alias.
static inline void gemm_f32_copy_nr(float* dst, const float* src) {
#if NN_SIMD
    for (int v = 0; v < kGemmNV; ++v)
        simd::vf::load_unaligned(src + v * simd::kWidth).store_unaligned(dst + v * simd::kWidth);
#else
    for (int j = 0; j < kGemmNR; ++j) dst[j] = src[j];
#endif
}

// Zero one row of a B sliver (NR floats), before a ragged edge is copied in.
static inline void gemm_f32_zero_nr(float* dst) {
#if NN_SIMD
    for (int v = 0; v < kGemmNV; ++v) simd::vf(0.f).store_unaligned(dst + v * simd::kWidth);
#else
    for (int j = 0; j < kGemmNR; ++j) dst[j] = 0.f;
#endif
}

// dst[q*ldd + r] = src[r*lds + q] for a 4 x 4 block (q, r < 4). With SIMD,
// four 4-float vectors (xmm on x86, q registers on NEON) and two rounds of
// zips, the classic in-register transpose:
//   rows  a b c d -> zip(a,c) zip(b,d) = a0 b0 c0 d0 ... after round two.
static inline void gemm_f32_transpose_4x4(float* dst, int ldd, const float* src, int lds) {
#if NN_SIMD
    using v4 = xsimd::make_sized_batch_t<float, 4>;  // 4 floats: SSE, AVX*, NEON
    static_assert(!std::is_void<v4>::value, "gemm: no 4-float SIMD batch on this target");
    const v4 a = v4::load_unaligned(src), b = v4::load_unaligned(src + lds);
    const v4 c = v4::load_unaligned(src + 2 * lds), d = v4::load_unaligned(src + 3 * lds);
    const v4 ac_lo = xsimd::zip_lo(a, c), ac_hi = xsimd::zip_hi(a, c);  // a0 c0 a1 c1 | a2 c2 a3 c3
    const v4 bd_lo = xsimd::zip_lo(b, d), bd_hi = xsimd::zip_hi(b, d);  // b0 d0 b1 d1 | b2 d2 b3 d3
    xsimd::zip_lo(ac_lo, bd_lo).store_unaligned(dst);                   // a0 b0 c0 d0
    xsimd::zip_hi(ac_lo, bd_lo).store_unaligned(dst + ldd);             // a1 b1 c1 d1
    xsimd::zip_lo(ac_hi, bd_hi).store_unaligned(dst + 2 * ldd);         // a2 b2 c2 d2
    xsimd::zip_hi(ac_hi, bd_hi).store_unaligned(dst + 3 * ldd);         // a3 b3 c3 d3
#else
    for (int q = 0; q < 4; ++q)
        for (int r = 0; r < 4; ++r) dst[q * ldd + r] = src[r * lds + q];
#endif
}

#if NN_SIMD && defined(__AVX512F__)
// dst[q*ldd + r] = src[r*lds + q] for a 16 x 16 block (q, r < 16), in four
// rounds of 16 shuffles. Rows are r0..r15, each 16 floats in four 128-bit
// lanes; "r5[4L..4L+3]" is lane L of row 5.
//   1. unpack{lo,hi}_ps of rows 2i, 2i+1: pairs (r2i[c], r2i+1[c]);
//   2. unpack{lo,hi}_pd of those: in each lane, the 4 rows of a group of
//      four, at one column: u[g][k] lane L = rows 4g..4g+3 at column 4L+k;
//   3. and 4. shuffle_f32x4 moves lane L of the four groups into one
//      vector: output row 4L+k = lanes L of u[0..3][k].
static inline void gemm_f32_transpose_16x16(float* dst, int ldd, const float* src, int lds) {
    __m512 r[16], t[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + (ptrdiff_t)i * lds);
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {  // 1. rows 2i, 2i+1 interleaved
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) {  // 2. group g: rows 4g..4g+3 per column
        const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
        r[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));  // column 4L
        r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));  // column 4L+1
        r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));  // column 4L+2
        r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));  // column 4L+3
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {  // 3. lanes (0, 2) and (1, 3) of groups 0,1 and 2,3
        t[k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);           // g0L0 g0L2 g1L0 g1L2
        t[4 + k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xdd);       // g0L1 g0L3 g1L1 g1L3
        t[8 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);  // g2L0 g2L2 g3L0 g3L2
        t[12 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xdd);
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {  // 4. output rows k, 4+k, 8+k, 12+k
        _mm512_storeu_ps(dst + (ptrdiff_t)(0 + k) * ldd, _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88));
        _mm512_storeu_ps(dst + (ptrdiff_t)(8 + k) * ldd, _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd));
        _mm512_storeu_ps(dst + (ptrdiff_t)(4 + k) * ldd, _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88));
        _mm512_storeu_ps(dst + (ptrdiff_t)(12 + k) * ldd, _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xdd));
    }
}
#endif

// Pack the kc x nc panel of op(B) starting at (p0, j0) into NR-wide slivers:
//   dst[(j / NR) * kc * NR + p * NR + j % NR] = op(B)(p0 + p, j0 + j)
// with columns j >= nc of the last sliver set to zero.
static inline void gemm_f32_pack_b(float* dst, const float* B, int ldb, bool trans_b, int p0,
                                   int j0, int kc, int nc) {
    constexpr int NR = kGemmNR;
    // N: one sliver of NR columns per step.
    for (int j = 0; j < nc; j += NR, dst += (ptrdiff_t)kc * NR) {
        const int nr = nc - j < NR ? nc - j : NR;
        if (!trans_b) {
            // op(B)(p, j) = B[p*ldb + j]: each row of the sliver is contiguous.
            const float* src = B + (ptrdiff_t)p0 * ldb + j0 + j;
            // K: one sliver row per step.
            for (int p = 0; p < kc; ++p, src += ldb) {
                float* d = dst + p * NR;
                if (nr == NR) {
                    gemm_f32_copy_nr(d, src);
                } else {
                    gemm_f32_zero_nr(d);
                    for (int jj = 0; jj < nr; ++jj) d[jj] = src[jj];
                }
            }
        } else {
            // op(B)(p, j) = B[j*ldb + p]: column j of the sliver is row j of
            // B. Transpose blocks of rows of B: 16 x 16 with AVX-512, then
            // 4 x 4, then single elements.
            const float* src = B + (ptrdiff_t)(j0 + j) * ldb + p0;
            // K: a ragged sliver starts as zeros (the padding right of nr).
            if (nr < NR)
                for (int p = 0; p < kc; ++p) gemm_f32_zero_nr(dst + p * NR);
            int jj = 0;
#if NN_SIMD && defined(__AVX512F__)
            // N: 16 sliver columns (rows of B) per step.
            for (; jj + 16 <= nr; jj += 16) {
                const float* s0 = src + (ptrdiff_t)jj * ldb;
                int p = 0;
                // K: 16 sliver rows per step.
                for (; p + 16 <= kc; p += 16) gemm_f32_transpose_16x16(dst + p * NR + jj, NR, s0 + p, ldb);
                // K: the last kc % 16 sliver rows, 4 x 4 blocks then singles.
                for (int q = 0; q < 16; q += 4) {
                    int pp = p;
                    for (; pp + 4 <= kc; pp += 4)
                        gemm_f32_transpose_4x4(dst + pp * NR + jj + q, NR, s0 + (ptrdiff_t)q * ldb + pp, ldb);
                    for (; pp < kc; ++pp)
                        for (int r = q; r < q + 4; ++r) dst[pp * NR + jj + r] = s0[(ptrdiff_t)r * ldb + pp];
                }
            }
#endif
            // N: 4 sliver columns (rows of B) per step.
            for (; jj + 4 <= nr; jj += 4) {
                const float* s0 = src + (ptrdiff_t)jj * ldb;
                const float *s1 = s0 + ldb, *s2 = s1 + ldb, *s3 = s2 + ldb;
                int p = 0;
                // K: 4 sliver rows per step.
                for (; p + 4 <= kc; p += 4)
                    gemm_f32_transpose_4x4(dst + p * NR + jj, NR, s0 + p, ldb);
                // K: the last kc % 4 sliver rows.
                for (; p < kc; ++p) {
                    float* d = dst + p * NR + jj;
                    d[0] = s0[p];
                    d[1] = s1[p];
                    d[2] = s2[p];
                    d[3] = s3[p];
                }
            }
            // N: the last nr % 4 columns one by one.
            for (; jj < nr; ++jj) {
                const float* s = src + (ptrdiff_t)jj * ldb;
                for (int p = 0; p < kc; ++p) dst[p * NR + jj] = s[p];
            }
        }
    }
}

// Pack rows [i0, i0 + mc) x columns [p0, p0 + kc) of op(A) into MR-tall
// slivers:
//   dst[(i / MR) * kc * MR + p * MR + i % MR] = op(A)(i0 + i, p0 + p)
// with rows i >= mc of the last sliver set to zero.
static inline void gemm_f32_pack_a(float* dst, const float* A, int lda, bool trans_a, int i0,
                                   int p0, int mc, int kc) {
    constexpr int MR = kGemmMR;
    // M: one sliver of MR rows per step.
    for (int i = 0; i < mc; i += MR, dst += (ptrdiff_t)kc * MR) {
        const int mr = mc - i < MR ? mc - i : MR;
        if (trans_a) {
            // op(A)(i, p) = A[p*lda + i]: each column of the sliver is contiguous.
            const float* src = A + (ptrdiff_t)p0 * lda + i0 + i;
            // K: one sliver column per step.
            for (int p = 0; p < kc; ++p, src += lda) {
                float* d = dst + p * MR;
                if (mr == MR) {
                    // One move of MR floats (GCC -O2 leaves the loop scalar).
                    std::memcpy(d, src, sizeof(float) * MR);
                } else {
                    for (int ii = 0; ii < mr; ++ii) d[ii] = src[ii];
                    for (int ii = mr; ii < MR; ++ii) d[ii] = 0.f;
                }
            }
        } else {
            // op(A)(i, p) = A[i*lda + p]: gather one float from each row.
            const float* src = A + (ptrdiff_t)(i0 + i) * lda + p0;
            // K: one sliver column per step.
            for (int p = 0; p < kc; ++p) {
                float* d = dst + p * MR;
                for (int ii = 0; ii < mr; ++ii) d[ii] = src[(ptrdiff_t)ii * lda + p];
                for (int ii = mr; ii < MR; ++ii) d[ii] = 0.f;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 3b. Narrow C: at most one vector of columns
// ---------------------------------------------------------------------------
// A classifier layer has 10 outputs: C is M x 10, less than one AVX-512
// vector wide. The main tile (MR x 2 vectors) would compute 64 columns for
// 10 and go through the stack for every tile. Here a tile is MR rows x 1
// vector instead, each row summed in two chains (even and odd steps of K,
// so 2 x MR independent FMAs cover their latency), and rows are loaded and
// stored with masks (simd::load_partial / store_partial), so only the N
// valid lanes touch C. A is read in place (not transposed), B packed as
// usual.
//
// gemm_f32_ukernel_narrow<ROWS>: contract, for i < ROWS, j < nr <= kWidth,
//   acc[i][j] = sum_{p < kc, p even} a[i*rs_a + p] * b[p*rs_b + j]
//             + sum_{p < kc, p odd}  a[i*rs_a + p] * b[p*rs_b + j]
//   c[i*ldc + j] = act(alpha * acc[i][j] + beta * c[i*ldc + j] + bias[j])
// beta == 0: c is not read. A row's sums are its own chains of FMAs in p
// order, so its result does not depend on which tile it falls in.
constexpr int kGemmNarrowMR = kGemmMR;

inline bool gemm_use_narrow(bool trans_a, int N) {
#if NN_SIMD
    return !trans_a && N <= simd::kWidth && N < kGemmNR;
#else
    (void)trans_a, (void)N;
    return false;
#endif
}

#if NN_SIMD
template <int ROWS>
static inline void gemm_f32_ukernel_narrow(float* c, int ldc, const float* a, int rs_a,
                                           const float* b, int rs_b, int nr, const float* bias,
                                           float alpha, float beta, int kc, bool relu,
                                           float slope) {
    using simd::vf;
    // Two chains per row, even and odd p: 2 x ROWS independent FMAs cover
    // the FMA latency with only ROWS row pointers (x86 has 16 registers to
    // address 16 rows of A, and spills them).
    vf acc[ROWS], odd[ROWS];
#pragma GCC unroll 16
    for (int i = 0; i < ROWS; ++i) acc[i] = odd[i] = vf(0.f);
    int p = 0;
    // K: two rank-1 updates per step, columns p and p + 1 of A against rows
    // p and p + 1 of B.
    for (; p + 2 <= kc; p += 2, a += 2, b += 2 * rs_b) {
        const vf b0 = vf::load_unaligned(b), b1 = vf::load_unaligned(b + rs_b);
#pragma GCC unroll 16
        for (int i = 0; i < ROWS; ++i) {
            acc[i] = xsimd::fma(vf(a[(ptrdiff_t)i * rs_a]), b0, acc[i]);
            odd[i] = xsimd::fma(vf(a[(ptrdiff_t)i * rs_a + 1]), b1, odd[i]);
        }
    }
    if (p < kc) {  // K: an odd last column
        const vf b0 = vf::load_unaligned(b);
#pragma GCC unroll 16
        for (int i = 0; i < ROWS; ++i) acc[i] = xsimd::fma(vf(a[(ptrdiff_t)i * rs_a]), b0, acc[i]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < ROWS; ++i) acc[i] += odd[i];
    // Store, M: rows of the tile, the nr valid lanes only.
    const vf va(alpha), vb(beta), vzero(0.f), vslope(slope);
    const vf vbias = bias ? simd::load_partial(bias, (size_t)nr, 0.f) : vzero;
#pragma GCC unroll 16
    for (int i = 0; i < ROWS; ++i) {
        float* ci = c + (ptrdiff_t)i * ldc;
        vf r = acc[i] * va;
        if (beta != 0.f) r = xsimd::fma(vb, simd::load_partial(ci, (size_t)nr, 0.f), r);
        r += vbias;
        if (relu) r = slope == 0.f ? xsimd::max(vzero, r) : xsimd::select(r > vzero, r, r * vslope);
        simd::store_partial(ci, r, (size_t)nr);
    }
}
#endif

// C (M x N, N <= kWidth) with A not transposed: loop 4 over K blocks (B
// packed as one zero-padded sliver), loop 1 over rows in kGemmNarrowMR
// tiles, then single rows for the remainder.
inline void gemm_f32_narrow(float* C, int ldc, const float* A, int lda, const float* B, int ldb,
                            bool trans_b, const GemmEpilogue& ep, float alpha, float beta,
                            float* pack, int M, int N, int K) {
#if NN_SIMD
    const int kc_step = gemm_kc_step(K);
    // Loop 4, K: blocks of kc_step; beta and bias with the first, the
    // activation with the last.
    for (int pc = 0; pc < K; pc += kc_step) {
        const int kc = K - pc < kc_step ? K - pc : kc_step;
        const float beta_k = pc == 0 ? beta : 1.f;
        const float* bias_k = pc == 0 ? ep.bias : nullptr;
        const bool relu_k = pc + kc == K && ep.relu;
        gemm_f32_pack_b(pack, B, ldb, trans_b, pc, 0, kc, N);
        const float* a = A + pc;
        int i = 0;
        // Loop 1, M: tiles of kGemmNarrowMR rows, then single rows.
        for (; i + kGemmNarrowMR <= M; i += kGemmNarrowMR)
            gemm_f32_ukernel_narrow<kGemmNarrowMR>(C + (ptrdiff_t)i * ldc, ldc, a + (ptrdiff_t)i * lda, lda,
                                                   pack, kGemmNR, N, bias_k, alpha, beta_k, kc, relu_k,
                                                   ep.slope);
        for (; i < M; ++i)
            gemm_f32_ukernel_narrow<1>(C + (ptrdiff_t)i * ldc, ldc, a + (ptrdiff_t)i * lda, lda, pack,
                                       kGemmNR, N, bias_k, alpha, beta_k, kc, relu_k, ep.slope);
    }
    if (ep.tile_fn) ep.tile_fn(C, ldc, M, N, ep.tile_ctx);
#else
    (void)C, (void)ldc, (void)A, (void)lda, (void)B, (void)ldb, (void)trans_b, (void)ep;
    (void)alpha, (void)beta, (void)pack, (void)M, (void)N, (void)K;
#endif
}

// ---------------------------------------------------------------------------
// 3c. C = A B^T as dot products along K (AVX-512): narrow C, or long K
// ---------------------------------------------------------------------------
// The classifier's forward, C (M x 10) = X (M x K) * W^T with W (10 x K): both
// operands are rows contiguous along K, and on the path of 3b each FMA
// fills only 10 of 16 lanes and needs a broadcast. Here the lanes run along
// K instead: a tile of 4 rows of A x S <= 5 rows of B keeps 4 * S vector
// sums, each FMA a full vector; nothing is packed. At the end the sums are
// folded into vectors (gemm_dot_reduce16: 16 dot products in 30 shuffles
// and 15 adds; gemm_dot_reduce4 for a fifth column), whose 128-bit lane i is
// row i of the tile. The fold is a fixed cost per element of C, so this
// path pays off for narrow C (64 x 10 x 128 runs at 1.05x OpenBLAS here,
// against 0.53x on the path of 3b), and for wider C when K is long enough
// to hide the fold and A fits in L2: the MLP's 784 -> 128 forward,
// y = x W^T, then needs neither a packed W^T nor a transposed store (see
// gemm_use_dot below).
//
// gemm_f32_dot_tile<S>: contract, for i < mr <= 4, j < S <= 5,
//   acc[j][i]     = sum_{p < K} a[i*lda + p] * b[j*ldb + p], summed as 16
//                   lane chains (p mod 16) over the vectors of K (K >= 16,
//                   its tail zero-padded), then folded as gemm_dot_reduce16
//                   (columns 0..3) and gemm_dot_reduce4 (column 4);
//   c[i*ldc + j]  = act(alpha * acc[j][i] + beta * c[i*ldc + j] + bias[j]).
// Rows past mr repeat row mr - 1 and are not stored. beta == 0: c is not
// read. Every element is summed in the same order wherever its tile falls,
// so results do not depend on M's split between threads.
#if NN_SIMD && defined(__AVX512F__)
constexpr bool kGemmHasDot = true;

// out lane m (128-bit), element q = sum of the 16 lanes of acc[4q + m].
static inline __m512 gemm_dot_reduce16(const __m512* acc) {
    __m512 r[8], s[4];
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q)  // halves: [a0+a2, a1+a3, b0+b2, b1+b3] in 128-bit lanes
        r[q] = _mm512_add_ps(_mm512_shuffle_f32x4(acc[2 * q], acc[2 * q + 1], 0x44),
                             _mm512_shuffle_f32x4(acc[2 * q], acc[2 * q + 1], 0xEE));
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q)  // quarters: lane m holds 4 partial sums of acc[4q + m]
        s[q] = _mm512_add_ps(_mm512_shuffle_f32x4(r[2 * q], r[2 * q + 1], 0x88),
                             _mm512_shuffle_f32x4(r[2 * q], r[2 * q + 1], 0xDD));
    // Within each lane, a 4 x 4 transpose-and-add of s[0..3].
    const __m512 p01 = _mm512_add_ps(_mm512_unpacklo_ps(s[0], s[1]), _mm512_unpackhi_ps(s[0], s[1]));
    const __m512 p23 = _mm512_add_ps(_mm512_unpacklo_ps(s[2], s[3]), _mm512_unpackhi_ps(s[2], s[3]));
    const __m512d d01 = _mm512_castps_pd(p01), d23 = _mm512_castps_pd(p23);
    return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(d01, d23)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(d01, d23)));
}

// Every element of out lane m (128-bit) = sum of the 16 lanes of acc[m], m < 4.
static inline __m512 gemm_dot_reduce4(const __m512* acc) {
    const __m512 r0 = _mm512_add_ps(_mm512_shuffle_f32x4(acc[0], acc[1], 0x44), _mm512_shuffle_f32x4(acc[0], acc[1], 0xEE));
    const __m512 r1 = _mm512_add_ps(_mm512_shuffle_f32x4(acc[2], acc[3], 0x44), _mm512_shuffle_f32x4(acc[2], acc[3], 0xEE));
    __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(r0, r1, 0x88), _mm512_shuffle_f32x4(r0, r1, 0xDD));
    s = _mm512_add_ps(s, _mm512_permute_ps(s, 0x4E));     // [2 3 0 1] within each lane
    return _mm512_add_ps(s, _mm512_permute_ps(s, 0xB1));  // [1 0 3 2]
}

template <int S>
__attribute__((always_inline)) static inline void gemm_f32_dot_tile(float* c, int ldc, const float* a, int lda, int mr, const float* b, int ldb,
                                     const float* bias, float alpha, float beta, int K, bool relu, float slope) {
    constexpr int W = 16;
    const float* ar[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) ar[i] = a + (ptrdiff_t)(i < mr ? i : mr - 1) * lda;
    constexpr int NA = S > 4 ? 4 * S : 16;  // accumulators; tiles under 4 columns zero-fill to 16
    __m512 acc[NA];
#pragma GCC unroll 20
    for (int t = 4 * S; t < NA; ++t) acc[t] = _mm512_setzero_ps();
    {  // K: the first vector (K >= 16) starts the sums
        __m512 av[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) av[i] = _mm512_loadu_ps(ar[i]);
#pragma GCC unroll 5
        for (int j = 0; j < S; ++j) {
            const __m512 bv = _mm512_loadu_ps(b + (ptrdiff_t)j * ldb);
#pragma GCC unroll 4
            for (int i = 0; i < 4; ++i) acc[4 * j + i] = _mm512_mul_ps(av[i], bv);
        }
    }
    int p = W;
    // K: one vector of every row per step.
    for (; p + W <= K; p += W) {
        // One load per row of A and of B, not one per FMA: GCC would fold
        // the loads of whichever side it did not keep into each FMA (up to
        // 25 loads per 20 FMAs; see simd::keep_in_register).
        __m512 av[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
            av[i] = _mm512_loadu_ps(ar[i] + p);
            __asm__("" : "+v"(av[i]));
        }
        __m512 bv[S];
#pragma GCC unroll 5
        for (int j = 0; j < S; ++j) {
            bv[j] = _mm512_loadu_ps(b + (ptrdiff_t)j * ldb + p);
            __asm__("" : "+v"(bv[j]));
        }
#pragma GCC unroll 5
        for (int j = 0; j < S; ++j)
#pragma GCC unroll 4
            for (int i = 0; i < 4; ++i) acc[4 * j + i] = _mm512_fmadd_ps(av[i], bv[j], acc[4 * j + i]);
    }
    if (p < K) {  // K: the tail, zeros past K
        const __mmask16 km = (__mmask16)((1u << (K - p)) - 1u);
        __m512 av[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) av[i] = _mm512_maskz_loadu_ps(km, ar[i] + p);
#pragma GCC unroll 5
        for (int j = 0; j < S; ++j) {
            const __m512 bv = _mm512_maskz_loadu_ps(km, b + (ptrdiff_t)j * ldb + p);
#pragma GCC unroll 4
            for (int i = 0; i < 4; ++i) acc[4 * j + i] = _mm512_fmadd_ps(av[i], bv, acc[4 * j + i]);
        }
    }
    // Lane i of r: row i of the tile, columns 0..3 (the first S valid);
    // a fifth column (S = 5) in every element of lane i of r4.
    __m512 r = _mm512_mul_ps(gemm_dot_reduce16(acc), _mm512_set1_ps(alpha));
    __m512 r4 = _mm512_setzero_ps();
    if constexpr (S > 4) r4 = _mm512_mul_ps(gemm_dot_reduce4(acc + 16), _mm512_set1_ps(alpha));
    constexpr int S4 = S < 4 ? S : 4;
    const __mmask8 sm = (__mmask8)((1u << S4) - 1u);
    if (beta != 0.f) {
        __m512 cv = _mm512_setzero_ps(), c4 = _mm512_setzero_ps();
        cv = _mm512_insertf32x4(cv, _mm_maskz_loadu_ps(sm, c), 0);
        if (mr > 1) cv = _mm512_insertf32x4(cv, _mm_maskz_loadu_ps(sm, c + ldc), 1);
        if (mr > 2) cv = _mm512_insertf32x4(cv, _mm_maskz_loadu_ps(sm, c + 2 * (ptrdiff_t)ldc), 2);
        if (mr > 3) cv = _mm512_insertf32x4(cv, _mm_maskz_loadu_ps(sm, c + 3 * (ptrdiff_t)ldc), 3);
        r = _mm512_fmadd_ps(_mm512_set1_ps(beta), cv, r);
        if constexpr (S > 4) {
            c4 = _mm512_insertf32x4(c4, _mm_set1_ps(c[4]), 0);
            if (mr > 1) c4 = _mm512_insertf32x4(c4, _mm_set1_ps(c[ldc + 4]), 1);
            if (mr > 2) c4 = _mm512_insertf32x4(c4, _mm_set1_ps(c[2 * (ptrdiff_t)ldc + 4]), 2);
            if (mr > 3) c4 = _mm512_insertf32x4(c4, _mm_set1_ps(c[3 * (ptrdiff_t)ldc + 4]), 3);
            r4 = _mm512_fmadd_ps(_mm512_set1_ps(beta), c4, r4);
        }
    }
    if (bias) {
        r = _mm512_add_ps(r, _mm512_broadcast_f32x4(_mm_maskz_loadu_ps(sm, bias)));
        if constexpr (S > 4) r4 = _mm512_add_ps(r4, _mm512_set1_ps(bias[4]));
    }
    if (relu) {
        const __m512 zero = _mm512_setzero_ps(), vs = _mm512_set1_ps(slope);
        // max(0, r) keeps a NaN, as the other kernels' epilogues do.
        if (slope == 0.f) {
            r = _mm512_max_ps(zero, r);
            r4 = _mm512_max_ps(zero, r4);
        } else {
            r = _mm512_mask_mul_ps(r, _mm512_cmp_ps_mask(r, zero, _CMP_LE_OQ), r, vs);
            r4 = _mm512_mask_mul_ps(r4, _mm512_cmp_ps_mask(r4, zero, _CMP_LE_OQ), r4, vs);
        }
    }
    // Store, M: the 4-float lane of each row inside C, then column 4.
    _mm_mask_storeu_ps(c, sm, _mm512_extractf32x4_ps(r, 0));
    if (mr > 1) _mm_mask_storeu_ps(c + ldc, sm, _mm512_extractf32x4_ps(r, 1));
    if (mr > 2) _mm_mask_storeu_ps(c + 2 * (ptrdiff_t)ldc, sm, _mm512_extractf32x4_ps(r, 2));
    if (mr > 3) _mm_mask_storeu_ps(c + 3 * (ptrdiff_t)ldc, sm, _mm512_extractf32x4_ps(r, 3));
    if constexpr (S > 4) {
        _mm_store_ss(c + 4, _mm512_extractf32x4_ps(r4, 0));
        if (mr > 1) _mm_store_ss(c + ldc + 4, _mm512_extractf32x4_ps(r4, 1));
        if (mr > 2) _mm_store_ss(c + 2 * (ptrdiff_t)ldc + 4, _mm512_extractf32x4_ps(r4, 2));
        if (mr > 3) _mm_store_ss(c + 3 * (ptrdiff_t)ldc + 4, _mm512_extractf32x4_ps(r4, 3));
    }
}
#else
constexpr bool kGemmHasDot = false;
#endif

// Whether C = A * B^T (both read along K) takes the dot-product tiles:
// a narrow C, and K long enough to fill a vector ...
inline bool gemm_use_dot_narrow(bool trans_a, bool trans_b, int N, int K) {
    return kGemmHasDot && !trans_a && trans_b && N <= 16 && N < kGemmNR && K >= 16;
}
// ... or a wider C when K is long enough to repay each element's final
// fold and A fits in half of L2 (it is read again for every 5 rows of B).
// That skips packing B^T and, for the Dense forward, the transposed store.
// Measured on Zen 5 (GFLOP/s, packed -> dot tiles): 64x128x784 199 -> 216,
// 64x120x400 188 -> 213, 32x128x784 180 -> 209, 128x128x784 214 -> 223;
// packing stays ahead at 64x128x256 (207 vs 199) and 256x256x1024 (217 vs
// 208, A is 1 MB).
constexpr int kGemmDotWideK = 384;
inline bool gemm_use_dot(bool trans_a, bool trans_b, int M, int N, int K) {
    if (gemm_use_dot_narrow(trans_a, trans_b, N, K)) return true;
    return kGemmHasDot && !trans_a && trans_b && K >= kGemmDotWideK &&
           (long long)M * K * (long long)sizeof(float) <= kGemmL2Bytes / 2;
}

// C (M x N) = A (M x K) * B^T, B stored (N x K): loop 2 over columns
// in tiles of 5 or 4, loop 1 over rows in tiles of 4, K whole inside the tile.
inline void gemm_f32_dot(float* C, int ldc, const float* A, int lda, const float* B, int ldb,
                         const GemmEpilogue& ep, float alpha, float beta, int M, int N, int K) {
#if NN_SIMD && defined(__AVX512F__)
    // Loop 2, N: 5 columns of C (rows of B) per step, 4 when 4 or 8 are
    // left (N = 10: 5 + 5; 16: 5 + 5 + 4 + 2).
    for (int j = 0, nr; j < N; j += nr) {
        const int left = N - j;
        nr = left == 4 || left == 8 ? 4 : (left < 5 ? left : 5);
        const float* b = B + (ptrdiff_t)j * ldb;
        const float* bias = ep.bias ? ep.bias + j : nullptr;
        // Loop 1, M: 4 rows of C (rows of A) per step.
        for (int i = 0; i < M; i += 4) {
            const int mr = M - i < 4 ? M - i : 4;
            float* c = C + (ptrdiff_t)i * ldc + j;
            const float* a = A + (ptrdiff_t)i * lda;
            switch (nr) {
                case 5: gemm_f32_dot_tile<5>(c, ldc, a, lda, mr, b, ldb, bias, alpha, beta, K, ep.relu, ep.slope); break;
                case 4: gemm_f32_dot_tile<4>(c, ldc, a, lda, mr, b, ldb, bias, alpha, beta, K, ep.relu, ep.slope); break;
                case 3: gemm_f32_dot_tile<3>(c, ldc, a, lda, mr, b, ldb, bias, alpha, beta, K, ep.relu, ep.slope); break;
                case 2: gemm_f32_dot_tile<2>(c, ldc, a, lda, mr, b, ldb, bias, alpha, beta, K, ep.relu, ep.slope); break;
                default: gemm_f32_dot_tile<1>(c, ldc, a, lda, mr, b, ldb, bias, alpha, beta, K, ep.relu, ep.slope);
            }
        }
    }
    if (ep.tile_fn) ep.tile_fn(C, ldc, M, N, ep.tile_ctx);
#else
    (void)C, (void)ldc, (void)A, (void)lda, (void)B, (void)ldb, (void)ep;
    (void)alpha, (void)beta, (void)M, (void)N, (void)K;
#endif
}

// ---------------------------------------------------------------------------
// 4. gemm_f32: the five loops
// ---------------------------------------------------------------------------
// C is (M, N), op(A) is (M, K), op(B) is (K, N); see the top of this file.
// pack: gemm_pack_floats(M, N, K) floats of scratch, 64-byte aligned.
//
// alpha is applied to every K block's partial product as it is stored; beta
// and the bias only with the first K block (pc == 0), later K blocks
// accumulate into C with beta = 1; the activation only with the last.
//
// When A is not transposed, its full MR-row slivers are read in place: the
// rows of A are already contiguous along K, and the micro-kernel takes the
// strides of its A sliver. That saves the packing pass that dominates the
// small MLP shapes. Only a ragged last sliver is packed, so that its zero
// padding keeps the kernel inside A.
//
// narrow_ok = false keeps C off the paths of 3b and 3c: gemm_f32_part
// passes it for a thread's share of a C that takes neither itself, so that
// a last share of a few columns goes through the same edge tiles as in the
// one-thread run (those paths sum in another order).
inline void gemm_f32_fused(float* C, int ldc, const float* A, int lda, bool trans_a,
                           const float* B, int ldb, bool trans_b, const GemmEpilogue& ep,
                           float alpha, float beta, float* pack, int M, int N, int K,
                           bool narrow_ok = true) {
    constexpr int MR = kGemmMR, NR = kGemmNR;
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {  // op(A) * op(B) is empty: C = act(beta * C + bias), row by row.
        for (int i = 0; i < M; ++i) {
            float* ci = C + (ptrdiff_t)i * ldc;
            for (int j = 0; j < N; ++j) {
                float r = beta != 0.f ? beta * ci[j] : 0.f;
                if (ep.bias) r += ep.bias[j];
                ci[j] = ep.relu ? gemm_relu(r, ep.slope) : r;
            }
        }
        if (ep.tile_fn) ep.tile_fn(C, ldc, M, N, ep.tile_ctx);
        return;
    }
    if (narrow_ok && gemm_use_dot(trans_a, trans_b, M, N, K)) {  // C = A B^T in dot tiles: see 3c
        gemm_f32_dot(C, ldc, A, lda, B, ldb, ep, alpha, beta, M, N, K);
        return;
    }
    if (narrow_ok && gemm_use_narrow(trans_a, N)) {  // a narrow C: see 3b
        gemm_f32_narrow(C, ldc, A, lda, B, ldb, trans_b, ep, alpha, beta, pack, M, N, K);
        return;
    }
    const int kc_step = gemm_kc_step(K);
    float* pack_b = pack;                                    // kc x nc panel of op(B)
    float* pack_a = pack + (ptrdiff_t)gemm_pack_b_floats(N, K);  // mc x kc block of op(A)

    // Loop 5, N: panels of NC columns of C and op(B).
    for (int jc = 0; jc < N; jc += kGemmNC) {
        const int nc = N - jc < kGemmNC ? N - jc : kGemmNC;
        // Loop 4, K: blocks of kc_step; pack op(B)(pc.., jc..) as NR-wide slivers.
        for (int pc = 0; pc < K; pc += kc_step) {
            const int kc = K - pc < kc_step ? K - pc : kc_step;
            const float beta_k = pc == 0 ? beta : 1.f;
            const float* bias_k = pc == 0 && ep.bias ? ep.bias + jc : nullptr;
            const bool last_k = pc + kc == K;
            const bool relu_k = last_k && ep.relu;
            // A non-transposed B has its sliver rows contiguous already: read
            // full slivers in place and pack only a ragged last one (for its
            // zero padding). Not when a sliver's rows span more than 512 KB:
            // one page per row, and the TLB misses cost more than packing
            // (1024 x 1024: -11 % in place, while 64 x 784 x 128 gains 20 %).
            const bool b_in_place_ok = !trans_b && (size_t)kc * (size_t)ldb * sizeof(float) <= (512u << 10);
            const int nc_in_place = b_in_place_ok ? nc / NR * NR : 0;
            if (nc_in_place < nc)
                gemm_f32_pack_b(pack_b + (ptrdiff_t)nc_in_place * kc, B, ldb, trans_b, pc,
                                jc + nc_in_place, kc, nc - nc_in_place);
            // Loop 3, M: blocks of MC rows; pack op(A)(ic.., pc..) as MR-tall
            // slivers (only the ragged last sliver when A is read in place).
            for (int ic = 0; ic < M; ic += kGemmMC) {
                const int mc = M - ic < kGemmMC ? M - ic : kGemmMC;
                const int mc_in_place = trans_a ? 0 : mc / MR * MR;
                if (mc_in_place < mc)
                    gemm_f32_pack_a(pack_a + (ptrdiff_t)mc_in_place * kc, A, lda, trans_a,
                                    ic + mc_in_place, pc, mc - mc_in_place, kc);
                // Loop 2, N: one packed B sliver of NR columns per step.
                for (int jr = 0; jr < nc; jr += NR) {
                    const int nr = nc - jr < NR ? nc - jr : NR;
                    const bool b_in_place = jr < nc_in_place;
                    const float* b = b_in_place ? B + (ptrdiff_t)pc * ldb + jc + jr
                                                : pack_b + (ptrdiff_t)jr * kc;
                    const int rs_b = b_in_place ? ldb : NR;
                    const float* bias_r = bias_k ? bias_k + jr : nullptr;
                    // Loop 1, M: one A sliver of MR rows per step.
                    for (int ir = 0; ir < mc; ir += MR) {
                        const int mr = mc - ir < MR ? mc - ir : MR;
                        const bool in_place = ir < mc_in_place;
                        const float* a = in_place ? A + (ptrdiff_t)(ic + ir) * lda + pc
                                                  : pack_a + (ptrdiff_t)ir * kc;
                        const int rs_a = in_place ? lda : 1, cs_a = in_place ? 1 : MR;
                        float* c = C + (ptrdiff_t)(ic + ir) * ldc + jc + jr;
                        if (mr == MR && nr == NR)
                            gemm_f32_ukernel<kGemmNV>(c, ldc, a, rs_a, cs_a, b, rs_b, bias_r,
                                                      alpha, beta_k, kc, relu_k, ep.slope);
                        else
                            gemm_f32_edge_tile(c, ldc, a, rs_a, cs_a, b, rs_b, bias_r, alpha,
                                               beta_k, kc, mr, nr, relu_k, ep.slope);
                        // The finished tile is in L1: apply the rest of the epilogue now.
                        if (last_k && ep.tile_fn) ep.tile_fn(c, ldc, mr, nr, ep.tile_ctx);
                    }
                }
            }
        }
    }
}

// The plain BLAS-like form: C := alpha op(A) op(B) + beta C (+ bias).
inline void gemm_f32(float* C, int ldc, const float* A, int lda, bool trans_a, const float* B,
                     int ldb, bool trans_b, const float* bias, float alpha, float beta, float* pack,
                     int M, int N, int K) {
    GemmEpilogue ep;
    ep.bias = bias;
    gemm_f32_fused(C, ldc, A, lda, trans_a, B, ldb, trans_b, ep, alpha, beta, pack, M, N, K);
}

// ---------------------------------------------------------------------------
// Threads: the share of C that thread ith of nth computes
// ---------------------------------------------------------------------------
// C is cut into nth blocks along N, in whole NR-wide slivers, when N has at
// least nth slivers, else along M in whole MR-tall slivers; K is never split,
// so no two threads write the same element and no reduction is needed. The
// cuts fall on tile boundaries of the one-thread run, so every element goes
// through the same tile, the same K blocks and the same operations:
// the result is bit-for-bit that of one thread. Each thread needs its own
// `pack` (gemm_pack_floats(M, N, K) floats bounds any share).
struct GemmShare {
    int i0, i1, j0, j1;  // rows [i0, i1) and columns [j0, j1) of C
};
// Rows are cut on multiples of MR (the narrow path of 3b computes every row
// the same way wherever it is cut).
constexpr int kGemmRowCut = kGemmMR;

inline GemmShare gemm_share(int ith, int nth, int M, int N) {
    const int n_slivers = (N + kGemmNR - 1) / kGemmNR;
    const int m_slivers = (M + kGemmRowCut - 1) / kGemmRowCut;
    GemmShare s{0, M, 0, N};
    if (n_slivers >= nth) {
        s.j0 = (int)((long long)n_slivers * ith / nth) * kGemmNR;
        s.j1 = (int)((long long)n_slivers * (ith + 1) / nth) * kGemmNR;
        if (s.j1 > N) s.j1 = N;
    } else {
        s.i0 = (int)((long long)m_slivers * ith / nth) * kGemmRowCut;
        s.i1 = (int)((long long)m_slivers * (ith + 1) / nth) * kGemmRowCut;
        if (s.i1 > M) s.i1 = M;
        if (s.i0 > M) s.i0 = M;
    }
    return s;
}

// Most threads worth using on (M, N, K): one per share of at least a few
// hundred thousand flops (below that, waking a thread costs more than it
// saves), and no more than there are slivers to share.
inline int gemm_useful_threads(int M, int N, int K, int max_threads) {
    const double flops = 2.0 * M * N * K;
    int t = (int)(flops / 4.0e5);
    const int n_slivers = (N + kGemmNR - 1) / kGemmNR;
    const int m_slivers = (M + kGemmRowCut - 1) / kGemmRowCut;
    const int most = n_slivers > m_slivers ? n_slivers : m_slivers;
    if (t > most) t = most;
    if (t > max_threads) t = max_threads;
    return t < 1 ? 1 : t;
}

// Thread ith of nth: gemm_f32_fused on its share of C. `pack` is this
// thread's own scratch. A share takes the narrow path only when the whole C
// does: cut along N, the last share can be one vector wide or less (NEON: N
// = 10 is two 8-column slivers, 8 + 2) while the one-thread run computes
// those columns in an edge tile.
inline void gemm_f32_part(int ith, int nth, float* C, int ldc, const float* A, int lda,
                          bool trans_a, const float* B, int ldb, bool trans_b,
                          const GemmEpilogue& ep, float alpha, float beta, float* pack, int M,
                          int N, int K) {
    const GemmShare s = gemm_share(ith, nth, M, N);
    if (s.i0 >= s.i1 || s.j0 >= s.j1) return;
    const float* a = trans_a ? A + s.i0 : A + (ptrdiff_t)s.i0 * lda;
    const float* b = trans_b ? B + (ptrdiff_t)s.j0 * ldb : B + s.j0;
    GemmEpilogue e = ep;
    if (e.bias) e.bias += s.j0;
    gemm_f32_fused(C + (ptrdiff_t)s.i0 * ldc + s.j0, ldc, a, lda, trans_a, b, ldb, trans_b, e,
                   alpha, beta, pack, s.i1 - s.i0, s.j1 - s.j0, K,
                   gemm_use_narrow(trans_a, N) || gemm_use_dot(trans_a, trans_b, M, N, K));
}

// ---------------------------------------------------------------------------
// 4b. The transposed store: y = act(ct^T + bias)
// ---------------------------------------------------------------------------
// A Dense forward y = x W^T packs W^T (out x in floats, transposed) on every
// call. When the batch is small against the layer (rows * (in + out) <
// out * in: the ConvNet's 3136 -> 1024 layer at batch 64; layers whose
// input fits the dot-product tiles of 3c take those instead), it is cheaper to compute
// ct = y^T = W x^T, which reads W in place and packs only x^T, and then to
// transpose ct (out x rows) into y (rows x out) here, adding the bias and
// the (leaky) ReLU on the way.
//
//   y[r*ldy + o] = act(ct[o*ldct + r] + bias[o])   r < rows, o < cols;
//   act(v) = v > 0 ? v : slope * v when relu (max(v, 0) for slope 0).
// bias may be null. y and ct must not overlap.
inline void transpose_bias_act_f32_ref(float* y, int ldy, const float* ct, int ldct, const float* bias, int rows,
                                       int cols, bool relu, float slope) {
    // R: rows of y; O: its columns, ct's rows.
    for (int r = 0; r < rows; ++r)
        for (int o = 0; o < cols; ++o) {
            float v = ct[(ptrdiff_t)o * ldct + r];
            if (bias) v += bias[o];
            y[(ptrdiff_t)r * ldy + o] = relu ? gemm_relu(v, slope) : v;
        }
}

inline void transpose_bias_act_f32(float* y, int ldy, const float* ct, int ldct, const float* bias, int rows,
                                   int cols, bool relu, float slope) {
#if NN_SIMD && defined(__AVX512F__)
    // Blocks of 16 x 16 through registers, then the ragged right and bottom
    // strips one float at a time.
    const int rows16 = rows / 16 * 16, cols16 = cols / 16 * 16;
    for (int o = 0; o < cols16; o += 16)      // O: 16 rows of ct
        for (int r = 0; r < rows16; r += 16)  // R: 16 columns of ct
            gemm_f32_transpose_16x16(y + (ptrdiff_t)r * ldy + o, ldy, ct + (ptrdiff_t)o * ldct + r, ldct);
    for (int r = 0; r < rows; ++r) {
        float* yr = y + (ptrdiff_t)r * ldy;
        for (int o = r < rows16 ? cols16 : 0; o < cols; ++o) yr[o] = ct[(ptrdiff_t)o * ldct + r];
    }
    // The bias and activation along each row of y, while it is in L1.
    using simd::vf;
    constexpr int W = simd::kWidth;
    const vf vzero(0.f), vslope(slope);
    for (int r = 0; r < rows; ++r) {  // R: rows of y
        float* yr = y + (ptrdiff_t)r * ldy;
        int o = 0;
        for (; o + W <= cols; o += W) {  // O: one vector per step
            vf v = vf::load_unaligned(yr + o);
            if (bias) v += vf::load_unaligned(bias + o);
            if (relu) v = slope == 0.f ? xsimd::max(vzero, v) : xsimd::select(v > vzero, v, v * vslope);
            v.store_unaligned(yr + o);
        }
        for (; o < cols; ++o) {
            float v = yr[o];
            if (bias) v += bias[o];
            yr[o] = relu ? gemm_relu(v, slope) : v;
        }
    }
#else
    transpose_bias_act_f32_ref(y, ldy, ct, ldct, bias, rows, cols, relu, slope);
#endif
}

// Whether a Dense forward of `rows` samples takes ct = W x^T and the
// transposed store (see 4b): only where a transposed B would be packed (not
// the narrow paths of 3b and 3c), and where x^T plus the store move fewer
// floats than W^T.
// Measured on AVX-512 only (the 16 x 16 transposes); other targets keep
// y = x W^T.
inline bool gemm_dense_forward_transposed(int rows, int in, int out) {
#if NN_SIMD && defined(__AVX512F__)
    if (gemm_use_dot(false, true, rows, out, in) || gemm_use_narrow(false, out)) return false;
    return (long long)rows * (in + out) < (long long)out * in;
#else
    (void)rows, (void)in, (void)out;
    return false;
#endif
}

// Scratch floats of that path: the GEMM's packing, then ct (64-byte aligned).
inline size_t gemm_dense_forward_transposed_floats(int rows, int in, int out) {
    return gemm_round_up(gemm_pack_floats(out, rows, in), 16) + (size_t)out * (size_t)rows;
}

// ---------------------------------------------------------------------------
// 5. The reference: the plain triple loop, same contract as gemm_f32.
// ---------------------------------------------------------------------------
inline void gemm_f32_ref(float* C, int ldc, const float* A, int lda, bool trans_a, const float* B,
                         int ldb, bool trans_b, const float* bias, float alpha, float beta, int M,
                         int N, int K) {
    // M: rows of C.
    for (int i = 0; i < M; ++i) {
        // N: columns of C.
        for (int j = 0; j < N; ++j) {
            float acc = 0.f;
            // K: the dot product of row i of op(A) and column j of op(B).
            for (int p = 0; p < K; ++p) {
                const float a = trans_a ? A[(ptrdiff_t)p * lda + i] : A[(ptrdiff_t)i * lda + p];
                const float b = trans_b ? B[(ptrdiff_t)j * ldb + p] : B[(ptrdiff_t)p * ldb + j];
                acc += a * b;
            }
            float& c = C[(ptrdiff_t)i * ldc + j];
            float r = alpha * acc;
            if (beta != 0.f) r += beta * c;
            if (bias) r += bias[j];
            c = r;
        }
    }
}

}  // namespace nn
