// kernels/conv.hpp — 2-D convolution (cross-correlation, as PyTorch's Conv2d).
//
//   y[n, co, oh, ow] = bias[co] + sum_{ci < C_in/groups, kh < KH, kw < KW}
//       w[co, ci, kh, kw] * x[n, gi * C_in/groups + ci, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]
//   with gi = co / (C_out/groups) the group of co, and x = 0 outside the image
//   (zero padding).
//
// Layouts follow PyTorch: x is (N, C_in, H, W), y is (N, C_out, OH, OW),
// w is (C_out, C_in/groups, KH, KW), bias is (C_out) or null. Conv2dGeom holds
// the numbers; conv2d_geom_init fills OH, OW and rejects what PyTorch rejects.
//
// Gradients (conv2d_backward): dw and db *accumulate* (+=), as every parameter
// gradient in nn; dx is *written* (zeroed, then summed into), as layers write
// input gradients. Any of dx, dw, db may be null: that part is skipped.
//
// Two algorithms, one contract:
//   1. im2col + GEMM (conv2d_forward_gemm / conv2d_backward_gemm), for any
//      geometry. Per sample and group, the receptive fields are unrolled into
//      col, (K = C_in/groups * KH * KW) x (P = OH * OW), in caller scratch, and
//        Y[g]   (C_out/g x P) =  W[g] (C_out/g x K) * col              forward
//        dW[g] (C_out/g x K) += dY[g] (C_out/g x P) * col^T            backward
//        dcol   (K x P)       =  W[g]^T * dY[g], then col2im into dx   backward
//      This orientation makes Y[g] the NCHW output slab itself (no transpose)
//      and lets the GEMM read W and col in place. The GEMM's bias is per
//      *column*, the convolution's per *row* (channel): it is added by the
//      GEMM epilogue's tile_fn (conv_add_row_bias), to each finished tile
//      while it is still in L1, instead of an extra pass over Y. A 1x1
//      convolution with stride 1 and no padding needs no im2col: col is the
//      input slab itself (and dx the dcol), so it takes no scratch.
//   1b. the row path, inside 1 (conv2d_use_rows): stride 1 with at most 1.5x
//      as many padded columns Wp as output columns OW. Each input plane is
//      padded once, and col's row (c, kh, kw) becomes one contiguous run of
//      OH * Wp floats of it (the 1b section below says why); Y is computed over
//      OH x Wp columns and the OW valid ones copied out. The weight gradient
//      is summed directly from the padded planes for at most
//      kConvRowsDirectDw output channels per group (conv_rows_dw); above,
//      from kConvDwtMinK taps by output positions (1d); with fewer taps, up
//      to kConvRowsDotDw channels on AVX-512 by the GEMM's dot-product tiles
//      reading the planes in place (conv_rows_dw_dot), else by im2col and
//      dW += dY' col^T.
//   1c. shifted rows, inside 1b: as col's rows are runs of the padded
//      planes, the forward product W col and the input gradient (a full
//      correlation of dY' with the flipped kernel) read those runs in place,
//      in register tiles of their own (conv_shift_tile): no col, no packing,
//      no col2im. The forward pass always; the input gradient from
//      kConvShiftDxMinRows input channels per group, below which dcol =
//      W^T dY' by the GEMM and col2im stay.
//   1d. the weight gradient by positions, inside 1b: dW^T = col dY^T over
//      the valid output positions, col's entries broadcast from the padded
//      planes, register tiles of taps x output channels summed over a whole
//      sample without horizontal sums (conv_dwt_tile).
//   2. direct depthwise (conv2d_depthwise_forward / _backward), when every
//      group has one input channel (groups == C_in, C_out = multiplier * C_in;
//      C_in = 1 counts). A GEMM with M = multiplier rows (usually 1) and
//      K = KH * KW runs at a fraction of its peak, and im2col writes KH * KW
//      copies of the input for it. The direct kernel reads the input in place
//      and is vectorised along the output width (stride 1): a block of 4
//      output rows x one vector of columns stays in registers over all KH * KW
//      taps (4 independent FMA chains, one broadcast of the weight per tap).
//      Rows with taps in the padding run one at a time over their inside taps
//      only; columns with taps in the padding are summed one value at a time
//      with bounds checks (conv_dw_point). With sw > 1, and in the plain
//      build, every column takes the plain loop (still no im2col: depthwise
//      3x3 stride 2 is 6.3 ms direct vs 6.7 ms GEMM below). At stride 1 the
//      row path (1b) is faster, and takes depthwise layers too.
//
// Which path conv2d_forward / conv2d_backward take (conv2d_use_direct): the
// direct kernel when groups == C_in, C_out <= 2 * C_in (depthwise with a
// channel multiplier of 1 or 2) and the stride is not 1 (or the padded rows
// are too wide for the row path); every other convolution, stride-1
// depthwise included, the GEMM path (1, with 1b-1d at stride 1). Measured
// with -O2 -march=native on this AVX-512 machine (1 thread, batch 32, best
// of 7, ms per batch, forward + backward), on 2026-11-22 with the shifted
// rows (1c) and the weight gradient by positions (1d):
//     depthwise 64 ch, 3x3 pad 1, 28x28:          direct  6.91, GEMM 4.94
//     depthwise 64 ch, 3x3 stride 2 pad 1, 28x28: direct  6.29, GEMM 6.73
//     depthwise 32 ch, 5x5 pad 2, 14x14:          direct  4.08, GEMM 1.76
//     16 -> 32 (multiplier 2), 3x3 pad 1, 28x28:  direct  3.14, GEMM 1.18
//     16 -> 64 (multiplier 4), 3x3 pad 1, 28x28:  direct  6.47, GEMM 1.68
//     16 -> 64 (multiplier 4), 5x5 pad 2, 28x28:  direct 18.65, GEMM 3.64
//      1 ->  6, 5x5 pad 2, 28x28 (LeNet conv1):    direct  1.67, GEMM 0.22
//      1 -> 32, 5x5 pad 2, 28x28 (ConvNet conv1):  direct  9.08, GEMM 0.91
// At stride 1 the row path's tiles reuse each loaded input run across 8
// output channels (or 8 rows of the sum), the direct kernel across one;
// at stride 2 there is no row path, and im2col + GEMM loses to the direct
// kernel, which reads the input in place. (Before the shifted rows, the
// direct kernel won every depthwise row above: 6.9 vs 18.2 ms at 3x3.)
//
// Scratch: conv2d_scratch_floats(g) floats for col (0 for the direct path and
// pointwise convolutions) and conv2d_pack_floats(g) floats of GEMM packing
// space, 64-byte aligned (the largest gemm_pack_floats of the three GEMM
// shapes). Nothing here allocates.
//
// conv2d_forward_ref / conv2d_backward_ref are the plain 7-loop definitions,
// the reference for the tests.
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "gemm.hpp"
#include "simd.hpp"
#include "vmath.hpp"

namespace nn {

// ---------------------------------------------------------------------------
// Geometry
// ---------------------------------------------------------------------------
// Fill every field but OH, OW and call conv2d_geom_init, which computes them.
struct Conv2dGeom {
    int N, C_in, H, W;  // input (N, C_in, H, W)
    int C_out, KH, KW;  // weights (C_out, C_in / groups, KH, KW)
    int sh, sw;         // stride
    int ph, pw;         // zero padding on each side
    int dh, dw;         // dilation (1: taps side by side)
    int groups;         // C_in and C_out are divisible by groups
    int OH, OW;         // output (N, C_out, OH, OW), set by conv2d_geom_init
};

// OH = (H + 2 ph - dh (KH - 1) - 1) / sh + 1 and likewise OW, as PyTorch.
// Returns false (OH = OW = 0) when a size, stride or dilation is < 1, a
// padding < 0, a channel count is not divisible by groups, the dilated
// kernel is larger than the padded input, or a per-sample size (input,
// output, weights, col) does not fit in an int (the GEMM's dimensions are
// ints). The caller reports the numbers.
inline bool conv2d_geom_init(Conv2dGeom& g) {
    g.OH = g.OW = 0;
    if (g.N < 1 || g.C_in < 1 || g.H < 1 || g.W < 1 || g.C_out < 1 || g.KH < 1 || g.KW < 1) return false;
    if (g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1 || g.ph < 0 || g.pw < 0 || g.groups < 1) return false;
    if (g.C_in % g.groups != 0 || g.C_out % g.groups != 0) return false;
    const long long eff_h = (long long)g.dh * (g.KH - 1) + 1, eff_w = (long long)g.dw * (g.KW - 1) + 1;
    const long long span_h = (long long)g.H + 2LL * g.ph, span_w = (long long)g.W + 2LL * g.pw;
    if (eff_h > span_h || eff_w > span_w) return false;
    const long long oh = (span_h - eff_h) / g.sh + 1, ow = (span_w - eff_w) / g.sw + 1;
    const long long k = (long long)(g.C_in / g.groups) * g.KH * g.KW;
    const long long in = (long long)g.C_in * g.H * g.W, out = (long long)g.C_out * oh * ow;
    // Each factor is < 2^31, so every product of two fits in 63 bits; check
    // the running product before the third factor.
    if (oh * ow > INT_MAX || k > INT_MAX || in > INT_MAX || out > INT_MAX) return false;
    if (k * oh * ow > INT_MAX || (long long)g.C_out * k > INT_MAX) return false;
    if ((in > out ? in : out) > (long long)(PTRDIFF_MAX / (ptrdiff_t)sizeof(float)) / g.N) return false;
    g.OH = (int)oh;
    g.OW = (int)ow;
    return true;
}

// The path conv2d_forward / conv2d_backward take; see the top of this file.
inline bool conv2d_is_depthwise(const Conv2dGeom& g) { return g.groups == g.C_in; }
inline bool conv2d_use_rows(const Conv2dGeom& g);
inline bool conv2d_use_direct(const Conv2dGeom& g) {
    return conv2d_is_depthwise(g) && g.C_out <= 2 * g.C_in && !conv2d_use_rows(g);
}
// A 1x1 convolution, stride 1, no padding: col would be a copy of the input.
inline bool conv2d_is_pointwise(const Conv2dGeom& g) {
    return g.KH == 1 && g.KW == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
}

// Whether the GEMM path unrolls whole padded rows (1b in the header): stride
// 1, not pointwise, and at most half again as many columns as outputs.
inline bool conv2d_use_rows(const Conv2dGeom& g) {
    if (g.sh != 1 || g.sw != 1 || conv2d_is_pointwise(g)) return false;
    const long long wp = (long long)g.W + 2LL * g.pw;
    return 2 * wp <= 3LL * g.OW;
}
// The row path's padded plane: Hp x Wp, plus (KW - 1) dw zeros after it (the
// last tap's run reads that far past the last row; see 1b).
inline size_t conv_rows_plane(const Conv2dGeom& g) {
    return (size_t)(g.H + 2 * g.ph) * (size_t)(g.W + 2 * g.pw) + (size_t)(g.KW - 1) * g.dw;
}
// Columns of the GEMMs: P = OH * OW, or OH * Wp on the row path.
inline int conv_gemm_cols(const Conv2dGeom& g) {
    return g.OH * (conv2d_use_rows(g) ? g.W + 2 * g.pw : g.OW);
}
// The row path's padded planes (C_in/g of them), then kWidth zeros: the
// shifted-row tiles (1c) read whole vectors, up to kWidth - 1 floats past
// the last plane.
inline size_t conv_rows_xpad_floats(const Conv2dGeom& g) {
    return gemm_round_up((size_t)(g.C_in / g.groups) * conv_rows_plane(g) + simd::kWidth, 16);
}
// dY' on the row path, one row of conv_rows_dy_stride floats per output
// channel: conv_rows_dy_lead zeros, the OH * Wp floats of dY' (zeros in the
// dropped columns), then zeros again. The input gradient of 1c reads dY' at
// shifts down to -((KH - 1) dh Wp + (KW - 1) dw) and whole vectors past the
// last padded row. The lead is rounded up to 16 floats, so that dY' rows
// start 64-byte aligned for the weight gradient's loads.
inline int conv_rows_dy_lead(const Conv2dGeom& g) {
    return (int)gemm_round_up((size_t)((g.KH - 1) * g.dh * (g.W + 2 * g.pw) + (g.KW - 1) * g.dw), 16);
}
inline int conv_rows_dy_stride(const Conv2dGeom& g) {
    const int hp_wp = (g.H + 2 * g.ph) * (g.W + 2 * g.pw);
    return (int)gemm_round_up((size_t)conv_rows_dy_lead(g) + hp_wp + simd::kWidth, 16);
}

// Which of the row path's products still go through col and the GEMM: the
// weight gradient for more output channels than its direct and dot-product
// kernels take (1b), the input gradient for fewer input channels than the
// shifted rows take (1c). Defined beside those kernels.
inline bool conv_rows_dw_uses_col(const Conv2dGeom& g);
inline bool conv_rows_shift_dx(const Conv2dGeom& g);

// The weight gradient by positions (1d): dY^T (OH OW x ldt) and dW^T (K x
// ldt), ldt = C_out/g rounded up to a vector; each rounded up to 16 floats.
inline bool conv_rows_dw_by_positions(const Conv2dGeom& g);
inline int conv_dwt_ld(const Conv2dGeom& g);
inline size_t conv_rows_dwt_floats(const Conv2dGeom& g) {
    if (!conv_rows_dw_by_positions(g)) return 0;
    const size_t ld = (size_t)conv_dwt_ld(g), K = (size_t)(g.C_in / g.groups) * g.KH * g.KW;
    return gemm_round_up((size_t)g.OH * g.OW * ld, 16) + gemm_round_up(K * ld, 16);
}

// The row path's col, when one of them runs, rounded up to 16 floats.
inline size_t conv_rows_col_floats(const Conv2dGeom& g) {
    if (!conv_rows_dw_uses_col(g) && conv_rows_shift_dx(g)) return 0;
    return gemm_round_up((size_t)(g.C_in / g.groups) * g.KH * g.KW * (size_t)conv_gemm_cols(g), 16);
}

// Scratch of the GEMM path: one col matrix (K x P), reused for dcol; the row
// path adds the padded input (C_in/g planes, reused for dx) and the output
// rows (C_out/g rows of conv_rows_dy_stride, Y' or dY'), each part starting
// on 16 floats, and needs col only for the products above.
inline size_t conv2d_gemm_scratch_floats(const Conv2dGeom& g) {
    if (conv2d_is_pointwise(g)) return 0;
    const size_t cig = (size_t)(g.C_in / g.groups), cog = (size_t)(g.C_out / g.groups);
    const size_t cols = (size_t)conv_gemm_cols(g), col = cig * g.KH * g.KW * cols;
    if (!conv2d_use_rows(g)) return col;
    return conv_rows_col_floats(g) + conv_rows_xpad_floats(g) + cog * (size_t)conv_rows_dy_stride(g) +
           conv_rows_dwt_floats(g);
}
// dY^T and dW^T of 1d in the row path's scratch: after col, xpad and dY'.
inline float* conv_rows_dyt(float* scratch, const Conv2dGeom& g) {
    return scratch + conv_rows_col_floats(g) + conv_rows_xpad_floats(g) +
           (size_t)(g.C_out / g.groups) * conv_rows_dy_stride(g);
}
inline float* conv_rows_dwt(float* scratch, const Conv2dGeom& g) {
    return conv_rows_dyt(scratch, g) + gemm_round_up((size_t)g.OH * g.OW * conv_dwt_ld(g), 16);
}
// Packing of the GEMM path: forward (C_out/g x P x K), dW (C_out/g x K x P)
// and dcol (K x P x C_out/g), the largest; on the row path only the GEMMs
// it runs.
inline size_t conv2d_gemm_pack_floats(const Conv2dGeom& g) {
    const int cog = g.C_out / g.groups, k = (g.C_in / g.groups) * g.KH * g.KW, p = conv_gemm_cols(g);
    const bool rows = conv2d_use_rows(g);
    size_t m = rows ? 0 : gemm_pack_floats(cog, p, k);
    const size_t dw = !rows || conv_rows_dw_uses_col(g) ? gemm_pack_floats(cog, k, p) : 0;
    const size_t dcol = !rows || !conv_rows_shift_dx(g) ? gemm_pack_floats(k, p, cog) : 0;
    if (dw > m) m = dw;
    if (dcol > m) m = dcol;
    return m;
}
inline size_t conv2d_scratch_floats(const Conv2dGeom& g) {
    return conv2d_use_direct(g) ? 0 : conv2d_gemm_scratch_floats(g);
}
inline size_t conv2d_pack_floats(const Conv2dGeom& g) {
    return conv2d_use_direct(g) ? 0 : conv2d_gemm_pack_floats(g);
}

// ---------------------------------------------------------------------------
// Helpers: tap ranges, sums
// ---------------------------------------------------------------------------
// floor(a / b) and ceil(a / b) for b > 0 and any sign of a.
inline int conv_floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int conv_ceil_div(int a, int b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

// Outputs o in [lo, hi) whose input i = o * stride + off lies in [0, in):
// one tap's valid outputs along one axis (off = k * dilation - pad).
struct ConvRange {
    int lo, hi;
};
inline ConvRange conv_tap_range(int off, int stride, int in, int out) {
    int lo = conv_ceil_div(-off, stride), hi = conv_floor_div(in - 1 - off, stride) + 1;
    if (lo < 0) lo = 0;
    if (lo > out) lo = out;
    if (hi > out) hi = out;
    if (hi < lo) hi = lo;
    return {lo, hi};
}

// sum of x[0 .. n): float lanes for at most simd::kSumVectors vectors, then
// into a double (each lane adds at most 16 terms before that).
inline double conv_sum_f32(const float* x, int n) {
    double total = 0.0;
    int i = 0;
#if NN_SIMD
    const int chunk = (int)simd::kSumVectors * simd::kWidth;
    // i: chunks of kSumVectors vectors, each summed in lanes then added to total.
    for (; i + simd::kWidth <= n;) {
        const int end = n - i < chunk ? i + (n - i) / simd::kWidth * simd::kWidth : i + chunk;
        simd::vf acc(0.f);
        for (; i < end; i += simd::kWidth) acc += simd::vf::load_unaligned(x + i);
        total += simd::hsum(acc);
    }
#endif
    for (; i < n; ++i) total += x[i];  // the tail (all of x in the plain build)
    return total;
}

// The GEMM epilogue's per-row bias: tile_fn gets a finished mr x nr tile of
// C at c; its first row is (c - c0) / ldc, as the tile's column offset is
// below ldc.
struct ConvRowBias {
    const float* c0;    // C(0, 0)
    const float* bias;  // one per row of C
};
inline void conv_add_row_bias(float* c, int ldc, int mr, int nr, const void* ctx) {
    const ConvRowBias* rb = static_cast<const ConvRowBias*>(ctx);
    const int i0 = (int)((c - rb->c0) / ldc);
    // M: rows of the tile, each its own channel's bias.
    for (int i = 0; i < mr; ++i) {
        float* ci = c + (ptrdiff_t)i * ldc;
        const float b = rb->bias[i0 + i];
        int j = 0;
#if NN_SIMD
        const simd::vf vb(b);
        for (; j + simd::kWidth <= nr; j += simd::kWidth)  // N: one vector per step
            (simd::vf::load_unaligned(ci + j) + vb).store_unaligned(ci + j);
#endif
        for (; j < nr; ++j) ci[j] += b;  // N: the tail
    }
}

// ---------------------------------------------------------------------------
// 1. im2col + GEMM
// ---------------------------------------------------------------------------

// out[0 .. n) = in[0 .. n): rows of col are short (one output row, 10 to 30
// floats), where a call to memcpy costs more than the copy.
inline void conv_copy_run(float* out, const float* in, int n) {
    int j = 0;
#if NN_SIMD
    for (; j + simd::kWidth <= n; j += simd::kWidth)  // one vector per step
        simd::vf::load_unaligned(in + j).store_unaligned(out + j);
    if (j < n) {
        simd::store_partial(out + j, simd::load_partial(in + j, (size_t)(n - j), 0.f), (size_t)(n - j));
        return;
    }
#endif
    for (; j < n; ++j) out[j] = in[j];
}

// out[0 .. n) += in[0 .. n), col2im's runs.
inline void conv_add_run(float* out, const float* in, int n) {
    int j = 0;
#if NN_SIMD
    for (; j + simd::kWidth <= n; j += simd::kWidth)  // one vector per step
        (simd::vf::load_unaligned(out + j) + simd::vf::load_unaligned(in + j)).store_unaligned(out + j);
    if (j < n) {
        const size_t r = (size_t)(n - j);
        simd::store_partial(out + j, simd::load_partial(out + j, r, 0.f) + simd::load_partial(in + j, r, 0.f), r);
        return;
    }
#endif
    for (; j < n; ++j) out[j] += in[j];
}
// x is one sample's group slab (C_in/groups, H, W); col is
// (C_in/groups * KH * KW, OH * OW): row (c, kh, kw), column (oh, ow) holds
// x[c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw], 0 in the padding.
inline void conv2d_im2col(float* col, const float* x, const Conv2dGeom& g) {
    const int cig = g.C_in / g.groups, P = g.OH * g.OW;
    float* row = col;
    // C, KH, KW: one row of col per (channel, tap).
    for (int c = 0; c < cig; ++c) {
        const float* xc = x + (ptrdiff_t)c * g.H * g.W;
        for (int kh = 0; kh < g.KH; ++kh) {
            const ConvRange rh = conv_tap_range(kh * g.dh - g.ph, g.sh, g.H, g.OH);
            for (int kw = 0; kw < g.KW; ++kw, row += P) {
                const int off_w = kw * g.dw - g.pw;
                const ConvRange rw = conv_tap_range(off_w, g.sw, g.W, g.OW);
                // OH: output rows; those whose input row is padding are zeros.
                for (int oh = 0; oh < g.OH; ++oh) {
                    float* out = row + (ptrdiff_t)oh * g.OW;
                    if (oh < rh.lo || oh >= rh.hi || rw.lo == rw.hi) {
                        std::memset(out, 0, sizeof(float) * g.OW);
                        continue;
                    }
                    const float* xr = xc + (ptrdiff_t)(oh * g.sh + kh * g.dh - g.ph) * g.W;
                    // OW: left padding, the valid run, right padding.
                    for (int ow = 0; ow < rw.lo; ++ow) out[ow] = 0.f;
                    if (g.sw == 1)
                        conv_copy_run(out + rw.lo, xr + rw.lo + off_w, rw.hi - rw.lo);
                    else
                        for (int ow = rw.lo; ow < rw.hi; ++ow) out[ow] = xr[ow * g.sw + off_w];
                    for (int ow = rw.hi; ow < g.OW; ++ow) out[ow] = 0.f;
                }
            }
        }
    }
}

// The adjoint of im2col: dx (C_in/groups, H, W) += every entry of dcol at the
// input position it was copied from (padding entries are dropped).
inline void conv2d_col2im(float* dx, const float* dcol, const Conv2dGeom& g) {
    const int cig = g.C_in / g.groups, P = g.OH * g.OW;
    const float* row = dcol;
    // C, KH, KW: one row of dcol per (channel, tap).
    for (int c = 0; c < cig; ++c) {
        float* dxc = dx + (ptrdiff_t)c * g.H * g.W;
        for (int kh = 0; kh < g.KH; ++kh) {
            const ConvRange rh = conv_tap_range(kh * g.dh - g.ph, g.sh, g.H, g.OH);
            for (int kw = 0; kw < g.KW; ++kw, row += P) {
                const int off_w = kw * g.dw - g.pw;
                const ConvRange rw = conv_tap_range(off_w, g.sw, g.W, g.OW);
                // OH, OW: only the valid runs reach dx.
                for (int oh = rh.lo; oh < rh.hi; ++oh) {
                    const float* in = row + (ptrdiff_t)oh * g.OW;
                    float* dr = dxc + (ptrdiff_t)(oh * g.sh + kh * g.dh - g.ph) * g.W + off_w;
                    if (g.sw == 1)
                        conv_add_run(dr + rw.lo, in + rw.lo, rw.hi - rw.lo);
                    else
                        for (int ow = rw.lo; ow < rw.hi; ++ow) dr[ow * g.sw] += in[ow];
                }
            }
        }
    }
}

// --- 1b. The row path (stride 1) -----------------------------------------------
// Pad the input once, to planes of Hp x Wp; then output (oh, j) of tap
// (kh, kw) reads xpad[(oh + kh dh) Wp + j + kw dw]: for a fixed tap, as
// (oh, j) runs over OH x Wp in row-major order, the source runs through xpad
// contiguously from kh dh Wp + kw dw. So col's row (c, kh, kw) is one copy of
// OH * Wp floats, not OH copies of OW (for LeNet's 10x10 outputs the short
// copies cost more than the GEMM), and 1c reads that run in place without
// copying it at all. Columns j >= OW are computed and dropped:
// Y' (C_out/g x OH * Wp) is copied to y row by row; in backward dY' holds
// zeros there, so they add nothing to dW or dx. Up to Wp / OW more GEMM work
// (LeNet's conv2: 14 / 10), hence the 1.5 limit of conv2d_use_rows.

// xpad (cig planes of conv_rows_plane) = x's cig planes inside zero padding.
// The kWidth floats after the last plane are zeroed too (1c reads them).
inline void conv_rows_pad(float* xpad, const float* x, int cig, const Conv2dGeom& g) {
    const int wp = g.W + 2 * g.pw;
    const size_t plane = conv_rows_plane(g);
    std::memset(xpad, 0, sizeof(float) * (plane * (size_t)cig + simd::kWidth));
    for (int c = 0; c < cig; ++c)         // C: planes
        for (int h = 0; h < g.H; ++h)      // H: rows, each a run of W
            conv_copy_run(xpad + c * plane + (size_t)(h + g.ph) * wp + g.pw, x + ((ptrdiff_t)c * g.H + h) * g.W, g.W);
}

// col (K x OH * Wp): row (c, kh, kw) is xpad[c] from kh dh Wp + kw dw on.
inline void conv_rows_im2col(float* col, const float* xpad, int cig, const Conv2dGeom& g) {
    const int wp = g.W + 2 * g.pw, n = g.OH * wp;
    const size_t plane = conv_rows_plane(g);
    for (int c = 0; c < cig; ++c)              // C, KH, KW: one row of col per (channel, tap)
        for (int kh = 0; kh < g.KH; ++kh)
            for (int kw = 0; kw < g.KW; ++kw, col += n)
                conv_copy_run(col, xpad + c * plane + (size_t)kh * g.dh * wp + (size_t)kw * g.dw, n);
}

// --- 1c. Shifted rows: products with col, reading the padded planes --------------
// On the row path, col's row (c, kh, kw) is the run of xpad[c] starting at
// kh dh Wp + kw dw (1b): a product with col can read those runs in place
// instead of copying them into col and then into the GEMM's packed panels
// (LeNet's conv2 forward, batch 64: 310 -> 216 us without the copies).
// One tile, ROWS x NV vectors of C, is
//   C[i, j] = bias[i] + sum_{c < nc, kh < KH, kw < KW}
//             a[i lda + c a_c + kh KW + kw] * src[c s_c + kh s_h + kw s_w + j]
// for i < ROWS and j < nr (nr <= NV * kWidth; the last vector is stored
// through a mask). The same tile serves
//   the forward pass: a = W[g] (lda = K, a_c = KH KW), src = xpad
//       (s_c = plane, s_h = dh Wp, s_w = dw), rows = output channels;
//   the input gradient: a = W[g] read as W^T (rows = input channels,
//       lda = KH KW, a_c = C_in/g KH KW), src = dY' inside its zeros (s_c =
//       conv_rows_dy_stride, s_h = -dh Wp, s_w = -dw): the full correlation
//       of dY' with the flipped kernel, dxpad[c, p] = sum W dY'[co, p - shift].
// Contract: src is readable for whole vectors, up to kWidth - 1 floats past
// the last column that matters (the zeros after xpad and inside dY'). c is
// written, never read; bias may be null. Accumulators: ROWS * NV vectors
// (8 x 3 with 32 registers, 6 x 2 with 16), plus NV loads of src and one
// broadcast of a per step: NV + ROWS loads per ROWS * NV multiply-adds.
#if NN_SIMD && (defined(__AVX512F__) || defined(__aarch64__))
constexpr int kConvShiftMR = 8, kConvShiftNV = 3;
#elif NN_SIMD
constexpr int kConvShiftMR = 6, kConvShiftNV = 2;
#else
constexpr int kConvShiftMR = 4, kConvShiftNV = 4;  // plain floats, as the GEMM's scalar tile
#endif

template <int ROWS, int NV>
static inline void conv_shift_tile(float* c, int ldc, const float* a, int lda, int a_c, const float* src,
                                   int s_c, int s_h, int s_w, int nc, int KH, int KW, const float* bias, int nr) {
#if NN_SIMD
    using simd::vf;
    constexpr int W = simd::kWidth;
    vf acc[ROWS][NV];
#pragma GCC unroll 8
    for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = vf(0.f);
    for (int ci = 0; ci < nc; ++ci, a += a_c, src += s_c)  // C: channels of the sum
        for (int kh = 0; kh < KH; ++kh) {                  // KH: kernel rows
            const float* ak = a + kh * KW;
            const float* sk = src + (ptrdiff_t)kh * s_h;
            for (int kw = 0; kw < KW; ++kw) {  // KW: one rank-1 update per tap
                const float* b = sk + (ptrdiff_t)kw * s_w;
                vf bv[NV];
#pragma GCC unroll 4
                for (int v = 0; v < NV; ++v) bv[v] = vf::load_unaligned(b + v * W);
#pragma GCC unroll 8
                for (int i = 0; i < ROWS; ++i) {
                    const vf ai(ak[(ptrdiff_t)i * lda + kw]);
#pragma GCC unroll 4
                    for (int v = 0; v < NV; ++v) acc[i][v] = xsimd::fma(ai, bv[v], acc[i][v]);
                }
            }
        }
#pragma GCC unroll 8
    for (int i = 0; i < ROWS; ++i) {  // M, N: store rows, the last vector through a mask
        float* ci = c + (ptrdiff_t)i * ldc;
        const vf bi(bias ? bias[i] : 0.f);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            const int cols = nr - v * W;
            if (cols >= W)
                (acc[i][v] + bi).store_unaligned(ci + v * W);
            else if (cols > 0)
                simd::store_partial(ci + v * W, acc[i][v] + bi, (size_t)cols);
        }
    }
#else
    float acc[ROWS][NV] = {};
    const int nj = nr < NV ? nr : NV;  // columns: src is read no further than the vector builds do
    for (int ci = 0; ci < nc; ++ci, a += a_c, src += s_c)  // C, KH, KW: the taps of the sum
        for (int kh = 0; kh < KH; ++kh)
            for (int kw = 0; kw < KW; ++kw) {
                const float* b = src + (ptrdiff_t)kh * s_h + (ptrdiff_t)kw * s_w;
                for (int i = 0; i < ROWS; ++i)  // M x N: the tile
                    for (int j = 0; j < nj; ++j) acc[i][j] += a[(ptrdiff_t)i * lda + kh * KW + kw] * b[j];
            }
    for (int i = 0; i < ROWS; ++i)
        for (int j = 0; j < nj; ++j) c[(ptrdiff_t)i * ldc + j] = acc[i][j] + (bias ? bias[i] : 0.f);
#endif
}

// The tile for rows <= ROWS and nv <= NV vectors, chosen at run time.
template <int ROWS, int NV>
static inline void conv_shift_pick(int rows, int nv, float* c, int ldc, const float* a, int lda, int a_c,
                                   const float* src, int s_c, int s_h, int s_w, int nc, int KH, int KW,
                                   const float* bias, int nr) {
    if constexpr (ROWS > 1)
        if (rows < ROWS)
            return conv_shift_pick<ROWS - 1, NV>(rows, nv, c, ldc, a, lda, a_c, src, s_c, s_h, s_w, nc, KH, KW,
                                                 bias, nr);
    if constexpr (NV > 1)
        if (nv < NV)
            return conv_shift_pick<ROWS, NV - 1>(rows, nv, c, ldc, a, lda, a_c, src, s_c, s_h, s_w, nc, KH, KW,
                                                 bias, nr);
    conv_shift_tile<ROWS, NV>(c, ldc, a, lda, a_c, src, s_c, s_h, s_w, nc, KH, KW, bias, nr);
}

// For the input gradient: column j of C lies in row (j + first) / Wp of the
// padded plane, and kernel row kh reads dY' row (that row - kh dh), which
// holds only zeros outside [0, OH). A column block skips the kernel rows
// that read nothing but zeros for all of its columns (LeNet's conv2: 12 %
// of the multiply-adds).
struct ConvShiftRows {
    int wp, first;  // row length of C's columns; C's column 0 is column `first` of the plane
    int OH, dh;     // dY' rows, kernel row dilation
};

// C (M x ncols, row stride ldc) = the tiles above over all of it: column
// blocks outside, so a block's runs of src stay in L1 for every row block.
// rows: null, or the kernel rows to skip as above.
inline void conv_shift_product(float* c, int ldc, const float* a, int lda, int a_c, const float* src, int s_c,
                               int s_h, int s_w, int nc, int KH, int KW, const float* bias, int M, int ncols,
                               const ConvShiftRows* rows = nullptr) {
    constexpr int W = simd::kWidth, NR = kConvShiftNV * W;
    for (int j = 0; j < ncols; j += NR) {  // N: blocks of NV vectors
        const int nr = ncols - j < NR ? ncols - j : NR, nv = (nr + W - 1) / W;
        int kh0 = 0, kh1 = KH;  // kernel rows [kh0, kh1) of this block
        if (rows) {
            const int y0 = (rows->first + j) / rows->wp, y1 = (rows->first + j + nr - 1) / rows->wp;
            const int lo = conv_ceil_div(y0 - rows->OH + 1, rows->dh), hi = conv_floor_div(y1, rows->dh) + 1;
            kh0 = lo > 0 ? lo : 0;
            kh1 = hi < KH ? hi : KH;
            if (kh1 < kh0) kh1 = kh0;  // no row reaches dY': the block is 0
        }
        for (int i = 0; i < M; i += kConvShiftMR) {  // M: blocks of MR rows
            const int m = M - i < kConvShiftMR ? M - i : kConvShiftMR;
            conv_shift_pick<kConvShiftMR, kConvShiftNV>(
                m, nv, c + (ptrdiff_t)i * ldc + j, ldc, a + (ptrdiff_t)i * lda + kh0 * KW, lda, a_c,
                src + j + (ptrdiff_t)kh0 * s_h, s_c, s_h, s_w, nc, kh1 - kh0, KW, bias ? bias + i : nullptr, nr);
        }
    }
}

// The input gradient takes the shifted rows for at least this many input
// channels per group, the rows of its tiles; with fewer, each step's NV
// loads feed too few multiply-adds, and dcol = W^T dY' by the GEMM, then
// col2im, is faster. Measured (1 thread, batch 64, best of 7, backward
// ms, GEMM -> shifted rows), 32 x 32 inputs, 3x3 pad 1 to 32 channels:
//   AVX-512: 3 channels 2.50 -> 2.84, 4: 3.10 -> 3.68, 6: 4.19 -> 3.79,
//            8: 5.42 -> 4.51; LeNet's conv2 (6 -> 16, 5x5) 0.73 -> 0.60;
//   AVX2:    3 channels 3.47 -> 4.43, 4: 4.45 -> 4.35, 6: 6.38 -> 5.75.
// The forward pass always takes them: faster at every shape measured, from
// 16 -> 3 channels (2.49 -> 1.14 ms) to 256 -> 256 on 8 x 8 (30.0 -> 28.6)
// and ConvNet's conv2 (9.3 -> 7.5).
constexpr int kConvShiftDxMinRows = 6;
inline bool conv_rows_shift_dx(const Conv2dGeom& g) { return g.C_in / g.groups >= kConvShiftDxMinRows; }

// The forward pass of one sample and group on the row path. scratch holds
// col (unused here), then xpad, then Y'.
inline void conv_rows_forward(float* yg, const float* xg, const float* wg, const float* bias, int cig, int cog,
                              const Conv2dGeom& g, float* scratch) {
    const int K = cig * g.KH * g.KW, wp = g.W + 2 * g.pw, n = g.OH * wp;
    float* xpad = scratch + conv_rows_col_floats(g);
    float* yrows = xpad + conv_rows_xpad_floats(g);
    conv_rows_pad(xpad, xg, cig, g);
    // Y' (cog x OH * Wp) = bias + W[g] (cog x K) * col (K x OH * Wp), col's
    // rows read in place from xpad (1c)
    conv_shift_product(yrows, n, wg, K, g.KH * g.KW, xpad, (int)conv_rows_plane(g), g.dh * wp, g.dw, cig, g.KH, g.KW,
                       bias, cog, n);
    for (int co = 0; co < cog; ++co)        // C_out: channels
        for (int oh = 0; oh < g.OH; ++oh)    // OH: rows, keeping the first OW of Wp columns
            conv_copy_run(yg + ((ptrdiff_t)co * g.OH + oh) * g.OW, yrows + (ptrdiff_t)co * n + (ptrdiff_t)oh * wp,
                          g.OW);
}

// Up to this many output channels per group, dW is summed directly
// (conv_rows_dw); above, by im2col and the GEMM. The GEMM packs col^T, K x n
// floats, for 2 * C_out/g flops per packed float: with few output channels
// the packing dominates. Measured (1 thread, batch 64, dW only): LeNet conv1
// (6 channels) 0.51 ms GEMM vs 0.27 ms direct; ConvNet conv1 (32) 1.04 vs
// 1.5; LeNet conv2 (16) and ConvNet conv2 (64) 2-3x slower direct, where
// each short sum's horizontal add costs as much as its FMAs.
constexpr int kConvRowsDirectDw = 8;

// dW's share of one sample and group on the row path, without col:
//   dW[co, c, kh, kw] += sum_{j < n} dY'[co, j] xpad[c, kh dh Wp + kw dw + j],
// a correlation of each output row with a shifted input plane. As a GEMM
// (dY' times col^T) it would pack col^T, a strided copy as large as col, for
// an output of only C_out/g x K; here the shifted plane is read in place.
// Blocks of CO output channels x T taps keep CO * T vector sums in registers
// (6 x 4 with 32 vector registers: 24 accumulators, 10 loads per 24 FMAs;
// 4 x 4 with 16); each sum runs over n floats in lanes, then goes into dW.
// LeNet's conv1 (6 channels), dW only, batch 64: 4 x 4 blocks, as a 4 and a
// 2, 152 us; one 6 x 4 block, 142 us.
#if NN_SIMD && (defined(__AVX512F__) || defined(__aarch64__))
constexpr int kConvRowsDwCO = 6;
#else
constexpr int kConvRowsDwCO = 4;
#endif
template <int CO, int T>
static inline void conv_rows_dw_block(float* dw, int ldw, const float* dy, int ldy, const float* xs,
                                      const int* off, int n) {
    float sums[CO][T];
#if NN_SIMD
    using simd::vf;
    constexpr int W = simd::kWidth;
    vf acc[CO][T];
#pragma GCC unroll 6
    for (int a = 0; a < CO; ++a)
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) acc[a][t] = vf(0.f);
    int j = 0;
    for (; j + W <= n; j += W) {  // n: one vector of columns per step
        vf d[CO];
#pragma GCC unroll 6
        for (int a = 0; a < CO; ++a) {
            d[a] = vf::load_unaligned(dy + (ptrdiff_t)a * ldy + j);
            simd::keep_in_register(d[a]);  // one load for T FMAs, not T
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
            vf xv = vf::load_unaligned(xs + off[t] + j);
            simd::keep_in_register(xv);
#pragma GCC unroll 6
            for (int a = 0; a < CO; ++a) acc[a][t] = xsimd::fma(d[a], xv, acc[a][t]);
        }
    }
    if (j < n) {  // the last, partial vector: dY' lanes past n are 0
        const size_t r = (size_t)(n - j);
        vf d[CO];
#pragma GCC unroll 6
        for (int a = 0; a < CO; ++a) d[a] = simd::load_partial(dy + (ptrdiff_t)a * ldy + j, r, 0.f);
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
            const vf xv = simd::load_partial(xs + off[t] + j, r, 0.f);
#pragma GCC unroll 6
            for (int a = 0; a < CO; ++a) acc[a][t] = xsimd::fma(d[a], xv, acc[a][t]);
        }
    }
    for (int a = 0; a < CO; ++a)
        for (int t = 0; t < T; ++t) sums[a][t] = simd::hsum(acc[a][t]);
#else
    for (int a = 0; a < CO; ++a)
        for (int t = 0; t < T; ++t) {
            float acc = 0.f;
            for (int j = 0; j < n; ++j) acc += dy[(ptrdiff_t)a * ldy + j] * xs[off[t] + j];
            sums[a][t] = acc;
        }
#endif
    for (int a = 0; a < CO; ++a)
        for (int t = 0; t < T; ++t) dw[(ptrdiff_t)a * ldw + t] += sums[a][t];
}

template <int CO, int T>
static inline void conv_rows_dw_pick(int co_n, int t_n, float* dw, int ldw, const float* dy, int ldy,
                                     const float* xs, const int* off, int n) {
    if constexpr (CO > 1)
        if (co_n < CO) return conv_rows_dw_pick<CO - 1, T>(co_n, t_n, dw, ldw, dy, ldy, xs, off, n);
    if constexpr (T > 1)
        if (t_n < T) return conv_rows_dw_pick<CO, T - 1>(co_n, t_n, dw, ldw, dy, ldy, xs, off, n);
    conv_rows_dw_block<CO, T>(dw, ldw, dy, ldy, xs, off, n);
}

// dwg (cog x cig * KH * KW) += the correlations above; dyrows is dY'
// (cog rows of n, row stride ldy, zero past OW in each row), xpad the
// padded planes.
inline void conv_rows_dw(float* dwg, const float* dyrows, int ldy, const float* xpad, int cig, int cog,
                         const Conv2dGeom& g) {
    const int wp = g.W + 2 * g.pw, n = g.OH * wp, taps = g.KH * g.KW, K = cig * taps;
    const size_t plane = conv_rows_plane(g);
    int off[4];
    for (int c = 0; c < cig; ++c)                       // C: input planes
        for (int t0 = 0; t0 < taps; t0 += 4) {          // taps by 4
            const int tn = taps - t0 < 4 ? taps - t0 : 4;
            for (int t = 0; t < tn; ++t) off[t] = (t0 + t) / g.KW * g.dh * wp + (t0 + t) % g.KW * g.dw;
            for (int co = 0; co < cog; co += kConvRowsDwCO) {  // C_out by kConvRowsDwCO
                const int cn = cog - co < kConvRowsDwCO ? cog - co : kConvRowsDwCO;
                conv_rows_dw_pick<kConvRowsDwCO, 4>(cn, tn, dwg + (ptrdiff_t)co * K + c * taps + t0, K,
                                                    dyrows + (ptrdiff_t)co * ldy, ldy, xpad + c * plane, off, n);
            }
        }
}

// dW's share as above, for more output channels, on AVX-512: per (channel,
// kernel row), col's KW rows are KW runs of xpad dw floats apart, so that
// block of dW (cog x KW, row stride K) is a narrow dY' B^T whose B rows
// overlap, which the dot-product tiles of gemm.hpp (3c) read in place:
// neither col nor its transpose is written. Each tile folds its sums once
// per sample, so this pays for few channels only; measured (build/bench_conv,
// batch 64, medians of 3, alternating with the im2col build): LeNet conv2,
// 16 channels, dW 410 -> 320 us and the whole backward 840 -> 750 us;
// ConvNet conv2, 64 channels, backward 18.8 -> 19.5 ms, so it keeps the GEMM.
constexpr int kConvRowsDotDw = 16;

inline bool conv_rows_dw_dot_ok(int cog, const Conv2dGeom& g) {
    const int n = g.OH * (g.W + 2 * g.pw);
    return cog > kConvRowsDirectDw && cog <= kConvRowsDotDw && gemm_use_dot_narrow(false, true, g.KW, n);
}
inline bool conv_rows_dw_uses_col(const Conv2dGeom& g) {
    const int cog = g.C_out / g.groups;
    return cog > kConvRowsDirectDw && !conv_rows_dw_by_positions(g) && !conv_rows_dw_dot_ok(cog, g);
}

inline void conv_rows_dw_dot(float* dwg, const float* dyrows, int ldy, const float* xpad, int cig, int cog,
                             const Conv2dGeom& g) {
    const int wp = g.W + 2 * g.pw, n = g.OH * wp, taps = g.KH * g.KW, K = cig * taps;
    const size_t plane = conv_rows_plane(g);
    const GemmEpilogue ep;
    for (int c = 0; c < cig; ++c)         // C: input planes
        for (int kh = 0; kh < g.KH; ++kh)  // KH: one GEMM per kernel row, its KW taps as columns
            gemm_f32_dot(dwg + c * taps + kh * g.KW, K, dyrows, ldy, xpad + c * plane + (size_t)kh * g.dh * wp, g.dw, ep,
                         1.f, 1.f, cog, g.KW, n);
}

// --- 1d. The weight gradient by output positions --------------------------------
// dW[g] (cog x K) += dY (cog x P) col^T, P = OH x OW, is summed here as its
// transpose, dW^T (K x cog) += col (K x P) dY^T (P x cog), over the valid
// positions only (the row path's dropped columns are skipped, not summed as
// zeros), with col's entries read in place from xpad:
//   col[t, (oh, ow)] = xpad[off_t + oh Wp + ow],
//   off_t = c plane + kh dh Wp + kw dw for tap t = (c, kh, kw).
// A tile holds MR taps x NV vectors of output channels in registers over
// all P positions of a sample: per position NV loads of dY^T's row and MR
// broadcasts of col, for MR x NV multiply-adds, and no horizontal sums
// (the dot-product form, dY' rows against col rows, folded every sum each
// sample). dY^T is one transposed copy of dY per sample (P x ldt, ldt =
// cog rounded up to a vector, zeros past cog); the tiles add into dW^T
// (K x ldt) in scratch, which conv2d_backward_gemm folds into dW once per
// call. Measured (build/bench_conv, batch 64, weight gradient only): LeNet
// conv2 (16 channels) and ConvNet conv1 (32) and conv2 (64); see
// conv_rows_dw_by_positions.
#if NN_SIMD && (defined(__AVX512F__) || defined(__aarch64__))
constexpr int kConvDwtMaxNV = 4;  // 24 accumulators at most (6 x 4)
#elif NN_SIMD
constexpr int kConvDwtMaxNV = 2;  // 8 (4 x 2)
#else
constexpr int kConvDwtMaxNV = 4;  // plain floats
#endif
// Taps per tile for nv vectors of channels.
constexpr int conv_dwt_mr(int nv) { return kConvDwtMaxNV == 4 ? (nv <= 2 ? 8 : 6) : (nv == 1 ? 8 : 4); }

template <int MR, int NV>
static inline void conv_dwt_tile(float* dwt, int ldt, int mr, const float* xs, const int* off, const float* dyt,
                                 int OH, int OW, int wp) {
#if NN_SIMD
    using simd::vf;
    constexpr int W = simd::kWidth;
    vf acc[MR][NV];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = vf(0.f);
    const float* dk = dyt;
    for (int oh = 0; oh < OH; ++oh) {  // OH, OW: output positions
        const float* xr = xs + (ptrdiff_t)oh * wp;
        for (int ow = 0; ow < OW; ++ow, dk += ldt) {
            vf dv[NV];
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                dv[v] = vf::load_unaligned(dk + v * W);
                simd::keep_in_register(dv[v]);
            }
#pragma GCC unroll 8
            for (int i = 0; i < MR; ++i) {  // MR taps: one broadcast each
                vf xi(xr[off[i] + ow]);
                if (NV > 1) simd::keep_in_register(xi);
#pragma GCC unroll 4
                for (int v = 0; v < NV; ++v) acc[i][v] = xsimd::fma(xi, dv[v], acc[i][v]);
            }
        }
    }
    for (int i = 0; i < mr; ++i)  // M, N: add the tile's first mr taps into dW^T
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            float* p = dwt + (ptrdiff_t)i * ldt + v * W;
            (vf::load_unaligned(p) + acc[i][v]).store_unaligned(p);
        }
#else
    float acc[MR][NV] = {};
    const float* dk = dyt;
    for (int oh = 0; oh < OH; ++oh)  // OH, OW: output positions
        for (int ow = 0; ow < OW; ++ow, dk += ldt)
            for (int i = 0; i < MR; ++i)  // M x N: the tile
                for (int v = 0; v < NV; ++v) acc[i][v] += xs[(ptrdiff_t)oh * wp + off[i] + ow] * dk[v];
    for (int i = 0; i < mr; ++i)
        for (int v = 0; v < NV; ++v) dwt[(ptrdiff_t)i * ldt + v] += acc[i][v];
#endif
}

// dY^T for the tiles: dyt (P x ldt) = dy (cog x P) transposed, zeros in the
// columns cog .. ldt.
inline void conv_dy_transpose(float* dyt, int ldt, const float* dy, int cog, int P) {
    int c = 0;
#if NN_SIMD && defined(__AVX512F__)
    for (; c + 16 <= cog; c += 16) {  // C_out by 16: 16 x 16 blocks, then the last positions one by one
        int p = 0;
        for (; p + 16 <= P; p += 16) gemm_f32_transpose_16x16(dyt + (ptrdiff_t)p * ldt + c, ldt, dy + (ptrdiff_t)c * P + p, P);
        for (; p < P; ++p)
            for (int k = 0; k < 16; ++k) dyt[(ptrdiff_t)p * ldt + c + k] = dy[(ptrdiff_t)(c + k) * P + p];
    }
#elif NN_SIMD
    for (; c + 4 <= cog; c += 4) {  // C_out by 4: 4 x 4 blocks
        int p = 0;
        for (; p + 4 <= P; p += 4) gemm_f32_transpose_4x4(dyt + (ptrdiff_t)p * ldt + c, ldt, dy + (ptrdiff_t)c * P + p, P);
        for (; p < P; ++p)
            for (int k = 0; k < 4; ++k) dyt[(ptrdiff_t)p * ldt + c + k] = dy[(ptrdiff_t)(c + k) * P + p];
    }
#endif
    for (; c < cog; ++c)  // the last channels
        for (int p = 0; p < P; ++p) dyt[(ptrdiff_t)p * ldt + c] = dy[(ptrdiff_t)c * P + p];
    if (ldt > cog)
        for (int p = 0; p < P; ++p)  // P: zero lanes past cog
            for (int k = cog; k < ldt; ++k) dyt[(ptrdiff_t)p * ldt + k] = 0.f;
}

// Whether the row path's weight gradient goes by positions: above
// kConvRowsDirectDw output channels per group, with at least kConvDwtMinK
// taps (C_in/g x KH x KW). With few taps the transposed copy of dY, P x
// C_out/g floats per sample, costs more than the K multiply-adds each of
// its floats takes part in; there the dot-product tiles or im2col and the
// GEMM stay. Measured (build/bench_conv, batch 64, weight gradient only,
// the path before -> by positions): LeNet conv2 (150 taps, 16 channels)
// 295 -> 240 us; ConvNet conv2 (800 taps, 64 channels) whole backward 16.4
// -> 13.3 ms; ConvNet conv1 (25 taps, 32 channels) 736 -> 790 us.
constexpr int kConvDwtMinK = 64;
inline bool conv_rows_dw_by_positions(const Conv2dGeom& g) {
    return g.C_out / g.groups > kConvRowsDirectDw && (g.C_in / g.groups) * g.KH * g.KW >= kConvDwtMinK;
}
// dW^T's row stride: output channels per group rounded up to a vector.
inline int conv_dwt_ld(const Conv2dGeom& g) {
    return (int)gemm_round_up((size_t)(g.C_out / g.groups), (size_t)simd::kWidth);
}

// dwt (K x ldt) += col dY^T for one sample and group: dyt as above, xpad
// the padded planes.
inline void conv_rows_dw_positions(float* dwt, int ldt, const float* dyt, const float* xpad, int cig,
                                   const Conv2dGeom& g) {
    constexpr int W = simd::kWidth;
    const int wp = g.W + 2 * g.pw, taps = g.KH * g.KW, K = cig * taps, nvt = ldt / W;
    const int plane = (int)conv_rows_plane(g);
    int off[8];
    for (int v0 = 0; v0 < nvt; v0 += kConvDwtMaxNV) {  // C_out: up to kConvDwtMaxNV vectors at a time
        const int nv = nvt - v0 < kConvDwtMaxNV ? nvt - v0 : kConvDwtMaxNV, mr_max = conv_dwt_mr(nv);
        for (int t0 = 0; t0 < K; t0 += mr_max) {  // K: taps by MR; a short last tile repeats its last tap
            const int mr = K - t0 < mr_max ? K - t0 : mr_max;
            for (int i = 0; i < mr_max; ++i) {
                const int t = t0 + (i < mr ? i : mr - 1), c = t / taps, r = t % taps;
                off[i] = c * plane + r / g.KW * g.dh * wp + r % g.KW * g.dw;
            }
            float* d = dwt + (ptrdiff_t)t0 * ldt + v0 * W;
            const float* dy = dyt + v0 * W;
            switch (nv) {
                case 1: conv_dwt_tile<conv_dwt_mr(1), 1>(d, ldt, mr, xpad, off, dy, g.OH, g.OW, wp); break;
                case 2: conv_dwt_tile<conv_dwt_mr(2), 2>(d, ldt, mr, xpad, off, dy, g.OH, g.OW, wp); break;
#if !NN_SIMD || defined(__AVX512F__) || defined(__aarch64__)
                case 3: conv_dwt_tile<conv_dwt_mr(3), 3>(d, ldt, mr, xpad, off, dy, g.OH, g.OW, wp); break;
                default: conv_dwt_tile<conv_dwt_mr(4), 4>(d, ldt, mr, xpad, off, dy, g.OH, g.OW, wp); break;
#endif
            }
        }
    }
}

// The backward pass of one sample and group on the row path (dw += ...,
// dx = ...; either may be null). By positions (1d) the weight gradient goes
// into dW^T in scratch, not into dwg: the caller folds it (see
// conv2d_backward_gemm).
inline void conv_rows_backward(float* dxg, float* dwg, const float* dyg, const float* xg, const float* wg, int cig,
                               int cog, const Conv2dGeom& g, float* scratch, float* pack) {
    const int K = cig * g.KH * g.KW, wp = g.W + 2 * g.pw, n = g.OH * wp;
    const int lead = conv_rows_dy_lead(g), ldy = conv_rows_dy_stride(g);
    const size_t plane = conv_rows_plane(g);
    float* col = scratch;  // when a product below needs it
    float* xpad = col + conv_rows_col_floats(g);
    float* dyext = xpad + conv_rows_xpad_floats(g);
    float* dyrows = dyext + lead;  // dY' row co at dyrows + co * ldy
    // dY' (cog x OH * Wp): dY's rows, zeros in the dropped columns, and
    // around each row when the input gradient reads it shifted (1c).
    const bool shift_dx = dxg && conv_rows_shift_dx(g);
    for (int co = 0; co < cog; ++co) {
        float* e = dyext + (ptrdiff_t)co * ldy;
        if (shift_dx) std::memset(e, 0, sizeof(float) * (size_t)lead);
        for (int oh = 0; oh < g.OH; ++oh) {  // OH: rows of dY
            float* r = e + lead + (ptrdiff_t)oh * wp;
            conv_copy_run(r, dyg + ((ptrdiff_t)co * g.OH + oh) * g.OW, g.OW);
            for (int j = g.OW; j < wp; ++j) r[j] = 0.f;
        }
        if (shift_dx) std::memset(e + lead + n, 0, sizeof(float) * (size_t)(ldy - lead - n));
    }
    if (dwg) {  // dW[g] (cog x K) += dY' (cog x n) * col^T (n x K)
        conv_rows_pad(xpad, xg, cig, g);
        if (cog <= kConvRowsDirectDw) {
            conv_rows_dw(dwg, dyrows, ldy, xpad, cig, cog, g);
        } else if (conv_rows_dw_by_positions(g)) {  // into dW^T in scratch (1d)
            float* dyt = conv_rows_dyt(scratch, g);
            const int ldt = conv_dwt_ld(g);
            conv_dy_transpose(dyt, ldt, dyg, cog, g.OH * g.OW);
            conv_rows_dw_positions(conv_rows_dwt(scratch, g), ldt, dyt, xpad, cig, g);
        } else if (!conv_rows_dw_uses_col(g)) {
            conv_rows_dw_dot(dwg, dyrows, ldy, xpad, cig, cog, g);
        } else {
            conv_rows_im2col(col, xpad, cig, g);
            gemm_f32(dwg, K, dyrows, ldy, false, col, n, true, nullptr, 1.f, 1.f, pack, cog, K, n);
        }
    }
    if (!dxg) return;
    const int first = g.ph * wp, cols = g.H * wp;  // dxpad's rows that hold dx: ph .. ph + H
    if (shift_dx) {  // dx straight from dY' (1c), no dcol
        // Without padding, dxpad's rows ph .. ph + H are dx's plane: write
        // dx directly.
        const bool direct = g.ph == 0 && g.pw == 0;
        float* out = direct ? dxg : xpad + first;
        const ConvShiftRows live{wp, first, g.OH, g.dh};
        conv_shift_product(out, direct ? g.H * g.W : (int)plane, wg, g.KH * g.KW, K, dyrows + first, ldy,
                           -g.dh * wp, -g.dw, cog, g.KH, g.KW, nullptr, cig, cols, &live);
        if (direct) return;
    } else {  // dcol (K x n) = W[g]^T dY', added back along the runs it came from
        gemm_f32(col, n, wg, K, true, dyrows, ldy, false, nullptr, 1.f, 0.f, pack, K, n, cog);
        std::memset(xpad, 0, sizeof(float) * plane * (size_t)cig);
        const float* row = col;
        for (int c = 0; c < cig; ++c)  // C, KH, KW: one row of dcol per (channel, tap)
            for (int kh = 0; kh < g.KH; ++kh)
                for (int kw = 0; kw < g.KW; ++kw, row += n)
                    conv_add_run(xpad + c * plane + (size_t)kh * g.dh * wp + (size_t)kw * g.dw, row, n);
    }
    for (int c = 0; c < cig; ++c)  // C, H: dx's rows out of the padded planes
        for (int h = 0; h < g.H; ++h)
            conv_copy_run(dxg + ((ptrdiff_t)c * g.H + h) * g.W, xpad + c * plane + (size_t)(h + g.ph) * wp + g.pw,
                          g.W);
}

// y is (N, C_out, OH, OW), x (N, C_in, H, W), w (C_out, C_in/groups, KH, KW),
// bias (C_out) or null. scratch: conv2d_gemm_scratch_floats(g) floats;
// pack: conv2d_gemm_pack_floats(g) floats, 64-byte aligned. y is written.
inline void conv2d_forward_gemm(float* y, const float* x, const float* w, const float* bias,
                                const Conv2dGeom& g, float* scratch, float* pack) {
    const int cig = g.C_in / g.groups, cog = g.C_out / g.groups;
    const int K = cig * g.KH * g.KW, P = g.OH * g.OW, HW = g.H * g.W;
    const bool pointwise = conv2d_is_pointwise(g), rows = conv2d_use_rows(g);
    // N: samples; groups: one GEMM each.
    for (int n = 0; n < g.N; ++n) {
        for (int gi = 0; gi < g.groups; ++gi) {
            const float* xg = x + ((ptrdiff_t)n * g.C_in + (ptrdiff_t)gi * cig) * HW;
            float* yg = y + ((ptrdiff_t)n * g.C_out + (ptrdiff_t)gi * cog) * P;
            const float* wg = w + (ptrdiff_t)gi * cog * K;
            if (rows) {
                conv_rows_forward(yg, xg, wg, bias ? bias + (ptrdiff_t)gi * cog : nullptr, cig, cog, g, scratch);
                continue;
            }
            const float* col = xg;  // pointwise: the input slab is col, (C_in/g) x (H*W)
            if (!pointwise) {
                conv2d_im2col(scratch, xg, g);
                col = scratch;
            }
            ConvRowBias rb{yg, bias ? bias + (ptrdiff_t)gi * cog : nullptr};
            GemmEpilogue ep;
            if (bias) {
                ep.tile_fn = conv_add_row_bias;
                ep.tile_ctx = &rb;
            }
            // Y[g] (cog x P) = W[g] (cog x K) * col (K x P)
            gemm_f32_fused(yg, P, wg, K, false, col, P, false, ep, 1.f, 0.f, pack, cog, P, K);
        }
    }
}

// dy is (N, C_out, OH, OW); x and w as in the forward pass. dw (like w) and
// db (C_out) accumulate, dx (like x) is written; null ones are skipped.
// scratch and pack as conv2d_forward_gemm.
inline void conv2d_backward_gemm(float* dx, float* dw, float* db, const float* dy, const float* x,
                                 const float* w, const Conv2dGeom& g, float* scratch, float* pack) {
    const int cig = g.C_in / g.groups, cog = g.C_out / g.groups;
    const int K = cig * g.KH * g.KW, P = g.OH * g.OW, HW = g.H * g.W;
    const bool pointwise = conv2d_is_pointwise(g), rows = conv2d_use_rows(g);
    // The row path's weight gradient by positions sums dW^T in scratch over
    // the group's samples, then adds it to dW (1d).
    const bool by_positions = rows && dw && conv_rows_dw_by_positions(g);
    const int ldt = by_positions ? conv_dwt_ld(g) : 0;
    float* dwt = by_positions ? conv_rows_dwt(scratch, g) : nullptr;
    // Groups; N: samples; the three products of each.
    for (int gi = 0; gi < g.groups; ++gi) {
        if (by_positions) std::memset(dwt, 0, sizeof(float) * (size_t)K * ldt);
        for (int n = 0; n < g.N; ++n) {
            const float* xg = x + ((ptrdiff_t)n * g.C_in + (ptrdiff_t)gi * cig) * HW;
            const float* dyg = dy + ((ptrdiff_t)n * g.C_out + (ptrdiff_t)gi * cog) * P;
            const float* wg = w + (ptrdiff_t)gi * cog * K;
            if (db)  // db[co] += sum of dY's row co
                for (int co = 0; co < cog; ++co)
                    db[gi * cog + co] += (float)conv_sum_f32(dyg + (ptrdiff_t)co * P, P);
            if (rows) {
                conv_rows_backward(dx ? dx + ((ptrdiff_t)n * g.C_in + (ptrdiff_t)gi * cig) * HW : nullptr,
                                   dw ? dw + (ptrdiff_t)gi * cog * K : nullptr, dyg, xg, wg, cig, cog, g, scratch, pack);
                continue;
            }
            if (dw) {  // dW[g] (cog x K) += dY[g] (cog x P) * col^T (P x K)
                const float* col = xg;
                if (!pointwise) {
                    conv2d_im2col(scratch, xg, g);
                    col = scratch;
                }
                gemm_f32(dw + (ptrdiff_t)gi * cog * K, K, dyg, P, false, col, P, true, nullptr, 1.f,
                         1.f, pack, cog, K, P);
            }
            if (dx) {  // dcol (K x P) = W[g]^T (K x cog) * dY[g] (cog x P), then col2im
                float* dxg = dx + ((ptrdiff_t)n * g.C_in + (ptrdiff_t)gi * cig) * HW;
                if (pointwise) {  // dcol is dx's slab: write it directly
                    gemm_f32(dxg, HW, wg, K, true, dyg, P, false, nullptr, 1.f, 0.f, pack, K, P, cog);
                } else {  // col is no longer needed: dcol reuses its scratch
                    gemm_f32(scratch, P, wg, K, true, dyg, P, false, nullptr, 1.f, 0.f, pack, K, P, cog);
                    std::memset(dxg, 0, sizeof(float) * (size_t)cig * HW);
                    conv2d_col2im(dxg, scratch, g);
                }
            }
        }
        if (by_positions) {  // dW[g] (cog x K) += dW^T
            float* dwg = dw + (ptrdiff_t)gi * cog * K;
            for (int co = 0; co < cog; ++co)  // C_out, K: a transposed add, once per call
                for (int t = 0; t < K; ++t) dwg[(ptrdiff_t)co * K + t] += dwt[(ptrdiff_t)t * ldt + co];
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Direct depthwise (groups == C_in, C_out = mult * C_in)
// ---------------------------------------------------------------------------
// Output channel co reads input channel co / mult through its own KH x KW
// filter w[co]. The plane kernels below work on one (co, ci) pair: xc is
// (H, W), wc (KH, KW), yc / dyc (OH, OW).

// One output value with bounds checks: the padding edges, and the plain path.
inline float conv_dw_point(const float* xc, const float* wc, float b, const Conv2dGeom& g, int oh,
                           int ow) {
    float acc = b;
    // KH, KW: the taps that land inside the image.
    for (int kh = 0; kh < g.KH; ++kh) {
        const int ih = oh * g.sh - g.ph + kh * g.dh;
        if (ih < 0 || ih >= g.H) continue;
        const float* xr = xc + (ptrdiff_t)ih * g.W;
        const float* wr = wc + kh * g.KW;
        for (int kw = 0; kw < g.KW; ++kw) {
            const int iw = ow * g.sw - g.pw + kw * g.dw;
            if (iw >= 0 && iw < g.W) acc += wr[kw] * xr[iw];
        }
    }
    return acc;
}

#if NN_SIMD
// R output rows (oh, oh + 1, ...) x one vector of columns starting at ow,
// all of whose taps kh in [kh0, kh1), kw < KW are inside the image
// (n = kWidth lanes when FULL, else the first n). The R accumulators are
// independent FMA chains; each tap's weight is broadcast once for all R.
template <int R, bool FULL>
static inline void conv_dw_rows_vec(float* yc, const float* xc, const float* wc, float b,
                                    const Conv2dGeom& g, int oh, int ow, int kh0, int kh1, int n) {
    using simd::vf;
    vf acc[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r] = vf(b);
    const ptrdiff_t row_step = (ptrdiff_t)g.sh * g.W;  // input rows between output rows
    // KH: input row of output row oh for tap kh (inside the image by contract).
    for (int kh = kh0; kh < kh1; ++kh) {
        const float* xk = xc + (ptrdiff_t)(oh * g.sh - g.ph + kh * g.dh) * g.W + (ow - g.pw);
        const float* wk = wc + kh * g.KW;
        // KW: one broadcast weight, R vectors of inputs.
        for (int kw = 0; kw < g.KW; ++kw) {
            const vf wv(wk[kw]);
            const float* xkw = xk + kw * g.dw;
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
                const vf xv = FULL ? vf::load_unaligned(xkw + r * row_step)
                                   : simd::load_partial(xkw + r * row_step, (size_t)n, 0.f);
                acc[r] = xsimd::fma(wv, xv, acc[r]);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
        float* yr = yc + (ptrdiff_t)(oh + r) * g.OW + ow;
        if (FULL)
            acc[r].store_unaligned(yr);
        else
            simd::store_partial(yr, acc[r], (size_t)n);
    }
}

// R rows from oh, columns [lo, hi) (all taps of kh in [kh0, kh1) inside).
template <int R>
static inline void conv_dw_rows_span(float* yc, const float* xc, const float* wc, float b,
                                     const Conv2dGeom& g, int oh, int lo, int hi, int kh0, int kh1) {
    int ow = lo;
    // OW: one vector of columns per step, then a partial one.
    for (; ow + simd::kWidth <= hi; ow += simd::kWidth)
        conv_dw_rows_vec<R, true>(yc, xc, wc, b, g, oh, ow, kh0, kh1, simd::kWidth);
    if (ow < hi) conv_dw_rows_vec<R, false>(yc, xc, wc, b, g, oh, ow, kh0, kh1, hi - ow);
}
#endif

// One plane: yc (OH, OW) = bias + xc (H, W) correlated with wc (KH, KW).
inline void conv_dw_plane_forward(float* yc, const float* xc, const float* wc, float b,
                                  const Conv2dGeom& g) {
    // Interior: outputs all of whose taps are inside the image. Tap ranges
    // shrink from the first tap's lower bound to the last tap's upper bound.
    const ConvRange rh0 = conv_tap_range(-g.ph, g.sh, g.H, g.OH);
    const ConvRange rh1 = conv_tap_range((g.KH - 1) * g.dh - g.ph, g.sh, g.H, g.OH);
    const ConvRange rw0 = conv_tap_range(-g.pw, g.sw, g.W, g.OW);
    const ConvRange rw1 = conv_tap_range((g.KW - 1) * g.dw - g.pw, g.sw, g.W, g.OW);
    const int oh_lo = rh0.lo, oh_hi = rh1.hi > oh_lo ? rh1.hi : oh_lo;
    const int ow_lo = rw0.lo, ow_hi = rw1.hi > ow_lo ? rw1.hi : ow_lo;
    // OH: one output row per step (four in the vector interior).
    for (int oh = 0; oh < g.OH;) {
        float* yr = yc + (ptrdiff_t)oh * g.OW;
#if NN_SIMD
        if (g.sw == 1 && ow_lo < ow_hi) {
            // The taps kh inside the image for this row: all in the interior.
            const ConvRange kr = conv_tap_range(oh * g.sh - g.ph, g.dh, g.H, g.KH);
            const int rows = oh >= oh_lo && oh + 4 <= oh_hi ? 4 : 1;
            // OW: bounds-checked edges, vector interior.
            for (int r = 0; r < rows; ++r) {
                float* y2 = yr + (ptrdiff_t)r * g.OW;
                for (int ow = 0; ow < ow_lo; ++ow) y2[ow] = conv_dw_point(xc, wc, b, g, oh + r, ow);
                for (int ow = ow_hi; ow < g.OW; ++ow) y2[ow] = conv_dw_point(xc, wc, b, g, oh + r, ow);
            }
            if (rows == 4)
                conv_dw_rows_span<4>(yc, xc, wc, b, g, oh, ow_lo, ow_hi, 0, g.KH);
            else
                conv_dw_rows_span<1>(yc, xc, wc, b, g, oh, ow_lo, ow_hi, kr.lo, kr.hi);
            oh += rows;
            continue;
        }
#endif
        // The plain row: interior rows and columns without bounds checks.
        if (oh >= oh_lo && oh < oh_hi) {
            for (int ow = 0; ow < ow_lo; ++ow) yr[ow] = conv_dw_point(xc, wc, b, g, oh, ow);
            for (int ow = ow_lo; ow < ow_hi; ++ow) {  // OW: interior columns
                float acc = b;
                for (int kh = 0; kh < g.KH; ++kh) {  // KH, KW: every tap
                    const float* xr = xc + (ptrdiff_t)(oh * g.sh - g.ph + kh * g.dh) * g.W +
                                      (ow * g.sw - g.pw);
                    const float* wr = wc + kh * g.KW;
                    for (int kw = 0; kw < g.KW; ++kw) acc += wr[kw] * xr[kw * g.dw];
                }
                yr[ow] = acc;
            }
            for (int ow = ow_hi; ow < g.OW; ++ow) yr[ow] = conv_dw_point(xc, wc, b, g, oh, ow);
        } else {
            for (int ow = 0; ow < g.OW; ++ow) yr[ow] = conv_dw_point(xc, wc, b, g, oh, ow);
        }
        ++oh;
    }
}

// y, x, w, bias as conv2d_forward_gemm; requires groups == C_in. y is written.
inline void conv2d_depthwise_forward(float* y, const float* x, const float* w, const float* bias,
                                     const Conv2dGeom& g) {
    const int mult = g.C_out / g.C_in, P = g.OH * g.OW, HW = g.H * g.W, KK = g.KH * g.KW;
    // N, C_out: one plane per (sample, output channel).
    for (int n = 0; n < g.N; ++n)
        for (int co = 0; co < g.C_out; ++co)
            conv_dw_plane_forward(y + ((ptrdiff_t)n * g.C_out + co) * P,
                                  x + ((ptrdiff_t)n * g.C_in + co / mult) * HW,
                                  w + (ptrdiff_t)co * KK, bias ? bias[co] : 0.f, g);
}

// sum over outputs (oh, ow) whose tap (kh, kw) is inside the image of
// dyc[oh, ow] * xc[oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]: dW of one tap.
inline float conv_dw_tap_dot(const float* dyc, const float* xc, const Conv2dGeom& g, int kh, int kw) {
    const int off_h = kh * g.dh - g.ph, off_w = kw * g.dw - g.pw;
    const ConvRange rh = conv_tap_range(off_h, g.sh, g.H, g.OH);
    const ConvRange rw = conv_tap_range(off_w, g.sw, g.W, g.OW);
    float acc = 0.f;
#if NN_SIMD
    if (g.sw == 1) {
        using simd::vf;
        vf a0(0.f), a1(0.f);  // two chains: alternate vectors of a row
        // OH: rows whose input row is inside; OW: the valid run in vectors.
        for (int oh = rh.lo; oh < rh.hi; ++oh) {
            const float* d = dyc + (ptrdiff_t)oh * g.OW;
            const float* xr = xc + (ptrdiff_t)(oh * g.sh + off_h) * g.W + off_w;
            int ow = rw.lo;
            for (; ow + 2 * simd::kWidth <= rw.hi; ow += 2 * simd::kWidth) {
                a0 = xsimd::fma(vf::load_unaligned(d + ow), vf::load_unaligned(xr + ow), a0);
                a1 = xsimd::fma(vf::load_unaligned(d + ow + simd::kWidth),
                                vf::load_unaligned(xr + ow + simd::kWidth), a1);
            }
            for (; ow + simd::kWidth <= rw.hi; ow += simd::kWidth)
                a0 = xsimd::fma(vf::load_unaligned(d + ow), vf::load_unaligned(xr + ow), a0);
            if (ow < rw.hi) {
                const size_t m = (size_t)(rw.hi - ow);
                a1 = xsimd::fma(simd::load_partial(d + ow, m, 0.f), simd::load_partial(xr + ow, m, 0.f), a1);
            }
        }
        return simd::hsum(a0 + a1);
    }
#endif
    // OH, OW: the plain loop over the valid outputs.
    for (int oh = rh.lo; oh < rh.hi; ++oh) {
        const float* d = dyc + (ptrdiff_t)oh * g.OW;
        const float* xr = xc + (ptrdiff_t)(oh * g.sh + off_h) * g.W + off_w;
        for (int ow = rw.lo; ow < rw.hi; ++ow) acc += d[ow] * xr[ow * g.sw];
    }
    return acc;
}

// dxc[oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] += wt * dyc[oh, ow] over the
// outputs whose tap (kh, kw) is inside the image: dx of one tap.
inline void conv_dw_tap_axpy(float* dxc, float wt, const float* dyc, const Conv2dGeom& g, int kh, int kw) {
    const int off_h = kh * g.dh - g.ph, off_w = kw * g.dw - g.pw;
    const ConvRange rh = conv_tap_range(off_h, g.sh, g.H, g.OH);
    const ConvRange rw = conv_tap_range(off_w, g.sw, g.W, g.OW);
    // OH: rows whose input row is inside; OW: the valid run.
    for (int oh = rh.lo; oh < rh.hi; ++oh) {
        const float* d = dyc + (ptrdiff_t)oh * g.OW;
        float* xr = dxc + (ptrdiff_t)(oh * g.sh + off_h) * g.W + off_w;
        int ow = rw.lo;
#if NN_SIMD
        if (g.sw == 1) {
            using simd::vf;
            const vf wv(wt);
            for (; ow + simd::kWidth <= rw.hi; ow += simd::kWidth)
                xsimd::fma(wv, vf::load_unaligned(d + ow), vf::load_unaligned(xr + ow))
                    .store_unaligned(xr + ow);
            if (ow < rw.hi) {
                const size_t m = (size_t)(rw.hi - ow);
                simd::store_partial(xr + ow, xsimd::fma(wv, simd::load_partial(d + ow, m, 0.f),
                                                        simd::load_partial(xr + ow, m, 0.f)), m);
                ow = rw.hi;
            }
        }
#endif
        for (; ow < rw.hi; ++ow) xr[ow * g.sw] += wt * d[ow];
    }
}

// As conv2d_backward_gemm (dw, db accumulate, dx is written, null ones are
// skipped); requires groups == C_in.
inline void conv2d_depthwise_backward(float* dx, float* dw, float* db, const float* dy,
                                      const float* x, const float* w, const Conv2dGeom& g) {
    const int mult = g.C_out / g.C_in, P = g.OH * g.OW, HW = g.H * g.W, KK = g.KH * g.KW;
    // N: samples.
    for (int n = 0; n < g.N; ++n) {
        if (dx) std::memset(dx + (ptrdiff_t)n * g.C_in * HW, 0, sizeof(float) * (size_t)g.C_in * HW);
        // C_out: one plane of dy; its input channel is co / mult.
        for (int co = 0; co < g.C_out; ++co) {
            const float* dyc = dy + ((ptrdiff_t)n * g.C_out + co) * P;
            const ptrdiff_t xoff = ((ptrdiff_t)n * g.C_in + co / mult) * HW;
            if (db) db[co] += (float)conv_sum_f32(dyc, P);
            // KH, KW: one tap per step.
            for (int kh = 0; kh < g.KH; ++kh) {
                for (int kw = 0; kw < g.KW; ++kw) {
                    const ptrdiff_t t = (ptrdiff_t)co * KK + kh * g.KW + kw;
                    if (dw) dw[t] += conv_dw_tap_dot(dyc, x + xoff, g, kh, kw);
                    if (dx) conv_dw_tap_axpy(dx + xoff, w[t], dyc, g, kh, kw);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The entry points: the path of conv2d_use_direct
// ---------------------------------------------------------------------------
// scratch: conv2d_scratch_floats(g) floats; pack: conv2d_pack_floats(g)
// floats, 64-byte aligned (both may be null when those are 0).
inline void conv2d_forward(float* y, const float* x, const float* w, const float* bias,
                           const Conv2dGeom& g, float* scratch, float* pack) {
    if (conv2d_use_direct(g))
        conv2d_depthwise_forward(y, x, w, bias, g);
    else
        conv2d_forward_gemm(y, x, w, bias, g, scratch, pack);
}
inline void conv2d_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                            const float* w, const Conv2dGeom& g, float* scratch, float* pack) {
    if (conv2d_use_direct(g))
        conv2d_depthwise_backward(dx, dw, db, dy, x, w, g);
    else
        conv2d_backward_gemm(dx, dw, db, dy, x, w, g, scratch, pack);
}

// ---------------------------------------------------------------------------
// The reference: the plain 7-loop definition, in float
// ---------------------------------------------------------------------------
inline void conv2d_forward_ref(float* y, const float* x, const float* w, const float* bias,
                               const Conv2dGeom& g) {
    const int cig = g.C_in / g.groups, cog = g.C_out / g.groups;
    for (int n = 0; n < g.N; ++n)                  // N: samples
        for (int co = 0; co < g.C_out; ++co)       // C_out: output channels
            for (int oh = 0; oh < g.OH; ++oh)      // OH: output rows
                for (int ow = 0; ow < g.OW; ++ow) {  // OW: output columns
                    float acc = bias ? bias[co] : 0.f;
                    const int c0 = co / cog * cig;  // the group's first input channel
                    for (int ci = 0; ci < cig; ++ci)          // C_in / groups
                        for (int kh = 0; kh < g.KH; ++kh)     // KH
                            for (int kw = 0; kw < g.KW; ++kw) {  // KW
                                const int ih = oh * g.sh - g.ph + kh * g.dh;
                                const int iw = ow * g.sw - g.pw + kw * g.dw;
                                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                                acc += w[(((ptrdiff_t)co * cig + ci) * g.KH + kh) * g.KW + kw] *
                                       x[(((ptrdiff_t)n * g.C_in + c0 + ci) * g.H + ih) * g.W + iw];
                            }
                    y[(((ptrdiff_t)n * g.C_out + co) * g.OH + oh) * g.OW + ow] = acc;
                }
}

// dx is written (zeroed first), dw and db accumulate; null ones are skipped.
inline void conv2d_backward_ref(float* dx, float* dw, float* db, const float* dy, const float* x,
                                const float* w, const Conv2dGeom& g) {
    const int cig = g.C_in / g.groups, cog = g.C_out / g.groups;
    if (dx) std::memset(dx, 0, sizeof(float) * (size_t)g.N * g.C_in * g.H * g.W);
    for (int n = 0; n < g.N; ++n)                  // N: samples
        for (int co = 0; co < g.C_out; ++co)       // C_out: output channels
            for (int oh = 0; oh < g.OH; ++oh)      // OH: output rows
                for (int ow = 0; ow < g.OW; ++ow) {  // OW: output columns
                    const float d = dy[(((ptrdiff_t)n * g.C_out + co) * g.OH + oh) * g.OW + ow];
                    if (db) db[co] += d;
                    const int c0 = co / cog * cig;
                    for (int ci = 0; ci < cig; ++ci)          // C_in / groups
                        for (int kh = 0; kh < g.KH; ++kh)     // KH
                            for (int kw = 0; kw < g.KW; ++kw) {  // KW
                                const int ih = oh * g.sh - g.ph + kh * g.dh;
                                const int iw = ow * g.sw - g.pw + kw * g.dw;
                                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                                const ptrdiff_t wi = (((ptrdiff_t)co * cig + ci) * g.KH + kh) * g.KW + kw;
                                const ptrdiff_t xi =
                                    (((ptrdiff_t)n * g.C_in + c0 + ci) * g.H + ih) * g.W + iw;
                                if (dw) dw[wi] += d * x[xi];
                                if (dx) dx[xi] += d * w[wi];
                            }
                }
}

}  // namespace nn
