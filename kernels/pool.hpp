// kernels/pool.hpp — 2-D max and average pooling and global average pooling
// over NCHW tensors, with PyTorch's semantics (floor-mode output size,
// dilation 1).
//
// Geometry: a PoolGeom holds the window (kh, kw), the stride (sh, sw), the
// padding on each side (ph, pw) and the input plane (h, w);
// pool2d_geometry fills in the output plane
//     oh = (h + 2 ph - kh) / sh + 1,   ow = (w + 2 pw - kw) / sw + 1
// (integer division: floor mode, PyTorch's default ceil_mode=False) and
// returns false, without touching oh and ow, when PyTorch would refuse the
// numbers, so the layer can report them. Every kernel below requires a
// geometry it accepted.
//
// Max pooling pads with -inf: padded cells never win. PyTorch requires
// ph <= kh / 2 and pw <= kw / 2, which keeps at least one real cell in
// every window (a window starts at -ph > -kh or later, so it ends past row
// 0, and at h + ph - kh < h or earlier, so it starts before row h).
// Each output also gets the index of the winning cell inside its input
// plane, iy * w + ix, as an int32 (what torch's return_indices gives), so
// backward scatters dy there. The scan runs over the window row by row and
// takes a cell when it is strictly greater than the maximum so far, or NaN:
// on ties the first cell in row-major window order wins; a NaN in the window
// wins (the last NaN, if several), so NaN propagates; a window of -inf
// reports its first real cell. That is PyTorch's CPU kernel's rule.
//
// Average pooling (PyTorch's divisor_override=None): each output is the sum
// of the window's real cells divided by
//   count_include_pad = true (PyTorch's default): the number of cells of the
//       window that lie inside the *padded* input [-ph, h + ph) x [-pw, w + pw),
//       padding cells included. In floor mode no window reaches past the
//       padded input (the last starts at (oh - 1) sh - ph <= h + ph - kh), so
//       the divisor is always kh * kw; the clipping is kept as PyTorch
//       writes it so the rule stays right if ceil mode is added.
//   count_include_pad = false: the number of real cells in the window.
//
// Backward kernels write dx (zero it, then add each output's share), since
// windows overlap when the stride is smaller than the window.
//
// The pooling windows are a few strided cells, so max and average pooling
// are plain loops (bounds clipped once per output, not tested per cell),
// except the 2x2 stride-2 max pooling most CNNs use, which runs on vectors
// both ways (maxpool2x2_plane, maxpool2x2_backward_plane; the general loop
// stays for every other window). Global average pooling sums whole
// planes, and is vectorised beside its `_ref` loop.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "simd.hpp"
#include "vmath.hpp"

namespace nn {

// The geometry of a 2-D pooling over (h, w) planes. Plain data: set the
// first eight fields, then call pool2d_geometry for oh and ow.
struct PoolGeom {
    int kh, kw;  // window rows, columns
    int sh, sw;  // stride rows, columns
    int ph, pw;  // padding on each side: rows above and below, columns left and right
    int h, w;    // input plane
    int oh, ow;  // output plane, set by pool2d_geometry
};

// Fills g->oh, g->ow and returns true when the geometry is one PyTorch
// accepts: window and stride >= 1, 0 <= padding <= window / 2, input plane
// >= 1 and at least one window that fits the padded input (h + 2 ph >= kh),
// and h * w small enough for the int32 argmax indices.
inline bool pool2d_geometry(PoolGeom* g) {
    if (g->kh < 1 || g->kw < 1 || g->sh < 1 || g->sw < 1) return false;
    if (g->ph < 0 || g->pw < 0 || g->ph > g->kh / 2 || g->pw > g->kw / 2) return false;
    if (g->h < 1 || g->w < 1 || (int64_t)g->h * g->w > INT32_MAX) return false;
    const int64_t ph = (int64_t)g->h + 2 * (int64_t)g->ph - g->kh;  // room the window slides over
    const int64_t pw = (int64_t)g->w + 2 * (int64_t)g->pw - g->kw;
    if (ph < 0 || pw < 0) return false;
    g->oh = (int)(ph / g->sh + 1);
    g->ow = (int)(pw / g->sw + 1);
    return true;
}

// --- Max pooling ---------------------------------------------------------------

// One step of the scan: v at cell i replaces the maximum m when strictly
// greater, or NaN. Written as selects, not a branch: on real data the
// comparison is a coin toss, and a mispredicted branch per cell cost more
// than the rest of the loop (9 ms vs 1 ms for (64, 32, 28, 28)).
static inline void maxpool_take(float& m, int32_t& best, float v, int32_t i) {
    const bool take = v > m || v != v;
    m = take ? v : m;
    best = take ? i : best;
}

#if NN_SIMD
// Vector step of maxpool_take on every lane: code holds which of the window's
// cells (0..3) won.
static inline void maxpool_take_v(simd::vf& m, simd::vf& code, const simd::vf& v, float cell) {
    // !(v == v), not v != v: xsimd's != is the ordered compare, false on NaN.
    const auto take = (v > m) || !(v == v);
    m = xsimd::select(take, v, m);
    code = xsimd::select(take, simd::vf(cell), code);
}
#endif

// The 2x2 window with stride 2 and no padding (LeNet's and most CNNs'
// pooling): the four cells in row-major order, unrolled. The vector loop
// takes the window at *every* column c of a vector (cells c, c + 1 of both
// rows, by loads at c and c + 1) and keeps the even lanes, the real windows:
// half the comparisons are wasted, but no lane shuffle is needed (xsimd 8.1
// has no two-register deinterleave) and nothing branches.
inline void maxpool2x2_plane(float* yp, int32_t* ip, const float* xp, const PoolGeom& g) {
    for (int oy = 0; oy < g.oh; ++oy) {  // oy: output rows
        const float* r0 = xp + (ptrdiff_t)(2 * oy) * g.w;
        const float* r1 = r0 + g.w;
        const int32_t i0 = 2 * oy * g.w;
        int ox = 0;
#if NN_SIMD && defined(__AVX512F__)
        // AVX-512 splits even and odd columns with one two-register permute
        // each, so 32 input columns give 16 outputs with no wasted lanes.
        const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
        const __m512i lane2 = even;  // 2 k: lane k's first column
        for (; ox < g.ow; ox += 16) {  // ox: output columns by 16
            const int c = 2 * ox, n = g.w - c;  // columns left from c
            const int outs = g.ow - ox < 16 ? g.ow - ox : 16;
            const __mmask16 lo = (__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1);
            const __mmask16 hi = (__mmask16)(n >= 32 ? 0xffff : n <= 16 ? 0 : (1u << (n - 16)) - 1);
            const __m512 ninf = _mm512_set1_ps(-INFINITY);
            const __m512 a0 = _mm512_mask_loadu_ps(ninf, lo, r0 + c), a1 = _mm512_mask_loadu_ps(ninf, hi, r0 + c + 16);
            const __m512 b0 = _mm512_mask_loadu_ps(ninf, lo, r1 + c), b1 = _mm512_mask_loadu_ps(ninf, hi, r1 + c + 16);
            simd::vf m = _mm512_permutex2var_ps(a0, even, a1), code(0.0f);
            maxpool_take_v(m, code, simd::vf(_mm512_permutex2var_ps(a0, odd, a1)), 1.0f);
            maxpool_take_v(m, code, simd::vf(_mm512_permutex2var_ps(b0, even, b1)), 2.0f);
            maxpool_take_v(m, code, simd::vf(_mm512_permutex2var_ps(b0, odd, b1)), 3.0f);
            const __m512i cell = _mm512_cvttps_epi32(code);
            const __m512i idx = _mm512_add_epi32(
                _mm512_add_epi32(_mm512_set1_epi32(i0 + c), lane2),
                _mm512_add_epi32(_mm512_and_si512(cell, _mm512_set1_epi32(1)),
                                 _mm512_mullo_epi32(_mm512_srli_epi32(cell, 1), _mm512_set1_epi32(g.w))));
            const __mmask16 out = (__mmask16)(outs == 16 ? 0xffff : (1u << outs) - 1);
            _mm512_mask_storeu_ps(yp + oy * g.ow + ox, out, m);
            _mm512_mask_storeu_epi32(ip + oy * g.ow + ox, out, idx);
        }
#elif NN_SIMD
        constexpr int W = simd::kWidth;
        for (; ox < g.ow; ox += W / 2) {  // ox: output columns by W / 2
            const int c = 2 * ox, n = g.w - c;  // n >= 2: columns left from c
            simd::vf a, b, cc, d;
            if (n > W) {
                a = simd::vf::load_unaligned(r0 + c), b = simd::vf::load_unaligned(r0 + c + 1);
                cc = simd::vf::load_unaligned(r1 + c), d = simd::vf::load_unaligned(r1 + c + 1);
            } else {  // the row's end: lanes past it hold -inf (never read, never win)
                const size_t n0 = (size_t)(n < W ? n : W), n1 = (size_t)(n - 1);
                a = n0 < (size_t)W ? simd::load_partial(r0 + c, n0, -INFINITY) : simd::vf::load_unaligned(r0 + c);
                cc = n0 < (size_t)W ? simd::load_partial(r1 + c, n0, -INFINITY) : simd::vf::load_unaligned(r1 + c);
                b = simd::load_partial(r0 + c + 1, n1, -INFINITY);
                d = simd::load_partial(r1 + c + 1, n1, -INFINITY);
            }
            simd::vf m = a, code(0.0f);
            maxpool_take_v(m, code, b, 1.0f);
            maxpool_take_v(m, code, cc, 2.0f);
            maxpool_take_v(m, code, d, 3.0f);
            alignas(64) float mv[W], cv[W];
            m.store_aligned(mv);
            code.store_aligned(cv);
            const int outs = g.ow - ox < W / 2 ? g.ow - ox : W / 2;
            for (int k = 0; k < outs; ++k) {  // k: outputs of the vector (its even lanes)
                const int cell = (int)cv[2 * k];
                yp[oy * g.ow + ox + k] = mv[2 * k];
                ip[oy * g.ow + ox + k] = i0 + c + 2 * k + (cell & 1) + (cell >> 1) * g.w;
            }
        }
#endif
        for (; ox < g.ow; ++ox) {  // ox: the remaining output columns
            const int c = 2 * ox;
            float m = r0[c];
            int32_t best = i0 + c;
            maxpool_take(m, best, r0[c + 1], i0 + c + 1);
            maxpool_take(m, best, r1[c], i0 + g.w + c);
            maxpool_take(m, best, r1[c + 1], i0 + g.w + c + 1);
            yp[oy * g.ow + ox] = m;
            ip[oy * g.ow + ox] = best;
        }
    }
}

// x is (N, C, h, w); y and idx are (N, C, oh, ow). y = the window's maximum,
// idx = its cell iy * w + ix in the input plane (the rule in the header).
inline void maxpool2d_forward(float* y, int32_t* idx, const float* x, const PoolGeom& g, size_t N,
                              size_t C) {
    const size_t in_plane = (size_t)g.h * g.w, out_plane = (size_t)g.oh * g.ow;
    const bool two_by_two = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0;
    for (size_t p = 0; p < N * C; ++p) {  // p: (n, c) planes
        const float* xp = x + p * in_plane;
        float* yp = y + p * out_plane;
        int32_t* ip = idx + p * out_plane;
        if (two_by_two) {
            maxpool2x2_plane(yp, ip, xp, g);
            continue;
        }
        for (int oy = 0; oy < g.oh; ++oy) {  // oy: output rows
            // The window's rows clipped to the input: padded rows hold -inf
            // and cannot win, so they are skipped.
            const int y0 = oy * g.sh - g.ph, y1 = y0 + g.kh;
            const int ya = y0 < 0 ? 0 : y0, yb = y1 > g.h ? g.h : y1;
            for (int ox = 0; ox < g.ow; ++ox) {  // ox: output columns
                const int x0 = ox * g.sw - g.pw, x1 = x0 + g.kw;
                const int xa = x0 < 0 ? 0 : x0, xb = x1 > g.w ? g.w : x1;
                float m = -INFINITY;
                int32_t best = ya * g.w + xa;  // a window of -inf reports its first real cell
                for (int iy = ya; iy < yb; ++iy)      // iy: window rows
                    for (int ix = xa; ix < xb; ++ix)  // ix: window columns
                        maxpool_take(m, best, xp[iy * g.w + ix], iy * g.w + ix);
                yp[oy * g.ow + ox] = m;
                ip[oy * g.ow + ox] = best;
            }
        }
    }
}

// The gradient reaching output o: dy, or 0 where the fused ReLU cut it.
static inline float maxpool_grad(const float* dyp, const float* yp, int o) {
    return yp && !(yp[o] > 0.0f) ? 0.0f : dyp[o];
}

#if NN_SIMD && !defined(__AVX512F__)
// dst[0 .. 2 W) = a0 b0 a1 b1 ... (int32 lanes holding float bits). xsimd
// 8.1's AVX zip_lo / zip_hi interleave within each 128-bit half, as the
// unpack instructions do, so AVX puts the halves in order itself.
static inline void maxpool_store_interleaved(float* dst, const xsimd::batch<int32_t>& a,
                                             const xsimd::batch<int32_t>& b) {
#if defined(__AVX__)
    const __m256 lo = _mm256_unpacklo_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b));
    const __m256 hi = _mm256_unpackhi_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b));
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
#else
    xsimd::bitwise_cast<simd::vf>(xsimd::zip_lo(a, b)).store_unaligned(dst);
    xsimd::bitwise_cast<simd::vf>(xsimd::zip_hi(a, b)).store_unaligned(dst + simd::kWidth);
#endif
}
#endif

// One plane's dx (h x w) for the 2x2 window, stride 2, no padding. Rows and
// columns past 2 oh and 2 ow (odd h or w, floor mode) belong to no window: 0.
inline void maxpool2x2_backward_plane(float* dxp, const float* dyp, const int32_t* ip, const float* yp,
                                      const PoolGeom& g) {
    for (int oy = 0; oy < g.oh; ++oy) {  // oy: output rows, each two rows of dx
        float* r0 = dxp + (ptrdiff_t)(2 * oy) * g.w;
        float* r1 = r0 + g.w;
        const int32_t i0 = 2 * oy * g.w;  // the index of r0[0]
        const int o0 = oy * g.ow;
        int ox = 0;
#if NN_SIMD && defined(__AVX512F__)
        // Per 16 outputs: the four cells' gradients by comparing each index
        // with its window's four cells, then one two-register permute per 16
        // floats of dx interleaves the left and right cells of each row.
        const __m512i lane2 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
        const __m512i one = _mm512_set1_epi32(1), below = _mm512_set1_epi32(g.w), below1 = _mm512_set1_epi32(g.w + 1);
        for (; ox < g.ow; ox += 16) {  // ox: output columns by 16
            const int outs = g.ow - ox < 16 ? g.ow - ox : 16, cols = 2 * outs;
            const __mmask16 m = (__mmask16)(outs == 16 ? 0xffff : (1u << outs) - 1);
            const __mmask16 m_lo = (__mmask16)(cols >= 16 ? 0xffff : (1u << cols) - 1);
            const __mmask16 m_hi = (__mmask16)(cols >= 32 ? 0xffff : cols <= 16 ? 0 : (1u << (cols - 16)) - 1);
            __m512 grad = _mm512_maskz_loadu_ps(m, dyp + o0 + ox);
            if (yp) grad = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(m, yp + o0 + ox),
                                                                  _mm512_setzero_ps(), _CMP_GT_OQ), grad);
            const __m512i cell = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(m, ip + o0 + ox),
                                                  _mm512_add_epi32(_mm512_set1_epi32(i0 + 2 * ox), lane2));
            const __m512 tl = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(cell, _mm512_setzero_si512()), grad);
            const __m512 tr = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(cell, one), grad);
            const __m512 bl = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(cell, below), grad);
            const __m512 br = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(cell, below1), grad);
            _mm512_mask_storeu_ps(r0 + 2 * ox, m_lo, _mm512_permutex2var_ps(tl, lo, tr));
            _mm512_mask_storeu_ps(r0 + 2 * ox + 16, m_hi, _mm512_permutex2var_ps(tl, hi, tr));
            _mm512_mask_storeu_ps(r1 + 2 * ox, m_lo, _mm512_permutex2var_ps(bl, lo, br));
            _mm512_mask_storeu_ps(r1 + 2 * ox + 16, m_hi, _mm512_permutex2var_ps(bl, hi, br));
        }
#elif NN_SIMD
        // Whole vectors of outputs; the rest by the loop after. Selects
        // work on the float bits as int32 lanes.
        using vi = xsimd::batch<int32_t>;
        constexpr int W = simd::kWidth;
        alignas(64) int32_t lane2_a[W];
        for (int k = 0; k < W; ++k) lane2_a[k] = 2 * k;
        const vi lane2 = vi::load_aligned(lane2_a), zero(0);
        for (; ox + W <= g.ow; ox += W) {  // ox: output columns by W
            vi grad = xsimd::bitwise_cast<vi>(simd::vf::load_unaligned(dyp + o0 + ox));
            if (yp) {
                const vi pass = xsimd::bitwise_cast<vi>(
                    xsimd::select(simd::vf::load_unaligned(yp + o0 + ox) > simd::vf(0.0f), simd::vf(1.0f), simd::vf(0.0f)));
                grad = xsimd::select(pass != zero, grad, zero);
            }
            const vi cell = vi::load_unaligned(ip + o0 + ox) - (vi(i0 + 2 * ox) + lane2);
            const vi tl = xsimd::select(cell == zero, grad, zero), tr = xsimd::select(cell == vi(1), grad, zero);
            const vi bl = xsimd::select(cell == vi(g.w), grad, zero), br = xsimd::select(cell == vi(g.w + 1), grad, zero);
            maxpool_store_interleaved(r0 + 2 * ox, tl, tr);
            maxpool_store_interleaved(r1 + 2 * ox, bl, br);
        }
#endif
        for (; ox < g.ow; ++ox) {  // ox: the remaining output columns
            const float d = maxpool_grad(dyp, yp, o0 + ox);
            const int32_t cell = ip[o0 + ox] - (i0 + 2 * ox);
            r0[2 * ox] = cell == 0 ? d : 0.0f;
            r0[2 * ox + 1] = cell == 1 ? d : 0.0f;
            r1[2 * ox] = cell == g.w ? d : 0.0f;
            r1[2 * ox + 1] = cell == g.w + 1 ? d : 0.0f;
        }
        if (g.w > 2 * g.ow) r0[g.w - 1] = r1[g.w - 1] = 0.0f;  // odd w: the last column
    }
    if (g.h > 2 * g.oh)  // odd h: the last row
        for (int x = 0; x < g.w; ++x) dxp[(ptrdiff_t)(g.h - 1) * g.w + x] = 0.0f;
}

// dy and idx are (N, C, oh, ow); dx is (N, C, h, w), written: each dy goes
// to the cell its output took the maximum from (summed where overlapping
// windows chose the same cell).
// relu_y: null, or the outputs of a max pooling whose ReLU was applied after
// the maximum (relu(max x) = max relu(x)): then only outputs > 0 pass their
// gradient, which is the ReLU's backward folded into this one.
//
// The 2x2 stride-2 window without padding (maxpool2x2_backward_plane) writes
// each cell once instead: windows do not overlap, so cell (2 oy + a, 2 ox + b)
// is dy[oy, ox] where idx names it and 0 elsewhere. The general loop below
// zeroes the plane, then adds into one cell per output through its index; on
// LeNet's (64, 6, 28, 28) that read-modify-write, one scalar per output, took
// about 116 us per batch of 64, the direct writes on vectors 38 us; with
// ConvNet's (64, 32, 28, 28) and the ReLU folded in, 465 -> 175 us
// (build/bench_conv, maxpool2x2_backward/relu:1).
inline void maxpool2d_backward(float* dx, const float* dy, const int32_t* idx, const PoolGeom& g,
                               size_t N, size_t C, const float* relu_y = nullptr) {
    const size_t in_plane = (size_t)g.h * g.w, out_plane = (size_t)g.oh * g.ow;
    const bool two_by_two = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0;
    for (size_t p = 0; p < N * C; ++p) {  // p: (n, c) planes
        float* dxp = dx + p * in_plane;
        const float* dyp = dy + p * out_plane;
        const int32_t* ip = idx + p * out_plane;
        if (two_by_two) {
            maxpool2x2_backward_plane(dxp, dyp, ip, relu_y ? relu_y + p * out_plane : nullptr, g);
            continue;
        }
        for (size_t i = 0; i < in_plane; ++i) dxp[i] = 0.0f;
        if (relu_y) {
            const float* yp = relu_y + p * out_plane;
            for (size_t o = 0; o < out_plane; ++o)  // o: outputs of the plane
                dxp[ip[o]] += yp[o] > 0.0f ? dyp[o] : 0.0f;
        } else {
            for (size_t o = 0; o < out_plane; ++o) dxp[ip[o]] += dyp[o];  // o: outputs of the plane
        }
    }
}

// --- Average pooling -------------------------------------------------------------

// The divisor of the window starting at (y0, x0) (padded coordinates may be
// negative): the rule in the header.
inline int avgpool2d_divisor(const PoolGeom& g, int y0, int x0, bool count_include_pad) {
    int y1 = y0 + g.kh, x1 = x0 + g.kw;
    if (count_include_pad) {  // clipped to the padded input
        const int yend = g.h + g.ph, xend = g.w + g.pw;
        return ((y1 < yend ? y1 : yend) - y0) * ((x1 < xend ? x1 : xend) - x0);
    }
    const int ya = y0 < 0 ? 0 : y0, xa = x0 < 0 ? 0 : x0;  // clipped to the real input
    y1 = y1 > g.h ? g.h : y1;
    x1 = x1 > g.w ? g.w : x1;
    return (y1 - ya) * (x1 - xa);
}

// x is (N, C, h, w); y is (N, C, oh, ow) = window sum / divisor, the sum
// in float over at most kh * kw terms (as PyTorch's CPU kernel).
inline void avgpool2d_forward(float* y, const float* x, const PoolGeom& g, bool count_include_pad,
                              size_t N, size_t C) {
    const size_t in_plane = (size_t)g.h * g.w, out_plane = (size_t)g.oh * g.ow;
    for (size_t p = 0; p < N * C; ++p) {  // p: (n, c) planes
        const float* xp = x + p * in_plane;
        float* yp = y + p * out_plane;
        for (int oy = 0; oy < g.oh; ++oy) {  // oy: output rows
            const int y0 = oy * g.sh - g.ph, y1 = y0 + g.kh;
            const int ya = y0 < 0 ? 0 : y0, yb = y1 > g.h ? g.h : y1;
            for (int ox = 0; ox < g.ow; ++ox) {  // ox: output columns
                const int x0 = ox * g.sw - g.pw, x1 = x0 + g.kw;
                const int xa = x0 < 0 ? 0 : x0, xb = x1 > g.w ? g.w : x1;
                float s = 0.0f;  // padding cells add 0
                for (int iy = ya; iy < yb; ++iy)                        // iy: window rows
                    for (int ix = xa; ix < xb; ++ix) s += xp[iy * g.w + ix];  // ix: window columns
                yp[oy * g.ow + ox] = s / (float)avgpool2d_divisor(g, y0, x0, count_include_pad);
            }
        }
    }
}

// dy is (N, C, oh, ow); dx is (N, C, h, w), written: every real cell of a
// window gets dy / divisor of that window, summed over the windows that
// cover it (padding cells' shares are dropped).
inline void avgpool2d_backward(float* dx, const float* dy, const PoolGeom& g, bool count_include_pad,
                               size_t N, size_t C) {
    const size_t in_plane = (size_t)g.h * g.w, out_plane = (size_t)g.oh * g.ow;
    for (size_t p = 0; p < N * C; ++p) {  // p: (n, c) planes
        float* dxp = dx + p * in_plane;
        const float* dyp = dy + p * out_plane;
        for (size_t i = 0; i < in_plane; ++i) dxp[i] = 0.0f;
        for (int oy = 0; oy < g.oh; ++oy) {  // oy: output rows
            const int y0 = oy * g.sh - g.ph, y1 = y0 + g.kh;
            const int ya = y0 < 0 ? 0 : y0, yb = y1 > g.h ? g.h : y1;
            for (int ox = 0; ox < g.ow; ++ox) {  // ox: output columns
                const int x0 = ox * g.sw - g.pw, x1 = x0 + g.kw;
                const int xa = x0 < 0 ? 0 : x0, xb = x1 > g.w ? g.w : x1;
                const float share = dyp[oy * g.ow + ox] / (float)avgpool2d_divisor(g, y0, x0, count_include_pad);
                for (int iy = ya; iy < yb; ++iy)                             // iy: window rows
                    for (int ix = xa; ix < xb; ++ix) dxp[iy * g.w + ix] += share;  // ix: window columns
            }
        }
    }
}

// --- Global average pooling ----------------------------------------------------

// x is (N, C, L) with L = h * w; y is (N, C) = the mean of each plane,
// summed in double.
inline void global_avgpool_forward_ref(float* y, const float* x, size_t N, size_t C, size_t L) {
    for (size_t p = 0; p < N * C; ++p) {  // p: (n, c) planes; i: cells of the plane
        const float* xp = x + p * L;
        double s = 0.0;
        for (size_t i = 0; i < L; ++i) s += xp[i];
        y[p] = (float)(s / (double)L);
    }
}
// The same mean, summed in float lanes for at most simd::kSumVectors
// vectors at a time, those partial sums and the tail in double.
inline void global_avgpool_forward(float* y, const float* x, size_t N, size_t C, size_t L) {
#if NN_SIMD
    using simd::vf;
    const size_t W = simd::kWidth;
    for (size_t p = 0; p < N * C; ++p) {  // p: (n, c) planes
        const float* xp = x + p * L;
        double s = 0.0;
        vf acc(0.0f);
        size_t i = 0;
        for (size_t v = 1; i + W <= L; i += W, ++v) {  // i: cells, one vector per step
            acc += vf::load_unaligned(xp + i);
            if (v % simd::kSumVectors == 0) {  // bound the terms per float lane
                s += simd::hsum(acc);
                acc = vf(0.0f);
            }
        }
        s += simd::hsum(acc);
        for (; i < L; ++i) s += xp[i];  // the last L % W
        y[p] = (float)(s / (double)L);
    }
#else
    global_avgpool_forward_ref(y, x, N, C, L);
#endif
}

// dy is (N, C); dx is (N, C, L), written: every cell of plane p gets dy[p] / L.
inline void global_avgpool_backward_ref(float* dx, const float* dy, size_t N, size_t C, size_t L) {
    for (size_t p = 0; p < N * C; ++p) {  // p: (n, c) planes; i: cells
        const float g = dy[p] / (float)L;
        for (size_t i = 0; i < L; ++i) dx[p * L + i] = g;
    }
}
inline void global_avgpool_backward(float* dx, const float* dy, size_t N, size_t C, size_t L) {
#if NN_SIMD
    const size_t W = simd::kWidth;
    for (size_t p = 0; p < N * C; ++p) {  // p: (n, c) planes
        const float g = dy[p] / (float)L;
        const simd::vf gv(g);
        float* d = dx + p * L;
        size_t i = 0;
        for (; i + W <= L; i += W) gv.store_unaligned(d + i);  // i: cells, one vector per step
        for (; i < L; ++i) d[i] = g;
    }
#else
    global_avgpool_backward_ref(dx, dy, N, C, L);
#endif
}

}  // namespace nn
