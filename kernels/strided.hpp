// kernels/strided.hpp — loops over up to four dimensions through strides:
// NumPy broadcasting, reductions, transposes, slices and concatenation are
// all one of these loops with the right strides.
//
// Contract shared by every kernel here:
//   n[4]        the index box, outermost first; shapes with fewer dimensions
//               are padded in front with 1s (right-aligned, as NumPy does).
//   s*[4]       element strides of an operand over that box. A stride of 0
//               repeats the operand along that dimension: that is
//               broadcasting when reading, and summing when accumulating.
//   contiguous  an operand without strides walks the box in row-major order.
// Nothing here allocates; outputs never alias inputs.
#pragma once

#include <cstddef>

namespace nn {

constexpr int kStridedDims = 4;

// Row-major strides of a shape padded to 4 dimensions; a dimension of size 1
// gets stride 0 when `zero_ones` (so that it broadcasts).
inline void strided_contiguous(ptrdiff_t s[4], const int n[4], bool zero_ones) {
    ptrdiff_t step = 1;
    for (int d = 3; d >= 0; --d) {
        s[d] = zero_ones && n[d] == 1 ? 0 : step;
        step *= n[d];
    }
}

// dst[sd] = scale * src[ss]   (accumulate: +=) over the box n.
// The reference and the only form: the inner loop runs along dimension 3,
// where strides are usually 1 and the compiler vectorises the copy.
inline void strided_copy(float* dst, const ptrdiff_t sd[4], const float* src, const ptrdiff_t ss[4],
                         const int n[4], float scale, bool accumulate) {
    // loop 0..2: the outer dimensions, one row of dimension 3 each
    for (int i0 = 0; i0 < n[0]; ++i0)
        for (int i1 = 0; i1 < n[1]; ++i1)
            for (int i2 = 0; i2 < n[2]; ++i2) {
                float* d = dst + i0 * sd[0] + i1 * sd[1] + i2 * sd[2];
                const float* s = src + i0 * ss[0] + i1 * ss[1] + i2 * ss[2];
                const ptrdiff_t d3 = sd[3], s3 = ss[3];
                // loop 3: along the row
                if (accumulate)
                    for (int i3 = 0; i3 < n[3]; ++i3) d[i3 * d3] += scale * s[i3 * s3];
                else
                    for (int i3 = 0; i3 < n[3]; ++i3) d[i3 * d3] = scale * s[i3 * s3];
            }
}

// y = f(a[sa], b[sb]) with y contiguous over the box n: a binary operation
// with NumPy broadcasting.
template <class F>
inline void broadcast_binary(float* y, const float* a, const ptrdiff_t sa[4], const float* b,
                             const ptrdiff_t sb[4], const int n[4], F f) {
    for (int i0 = 0; i0 < n[0]; ++i0)
        for (int i1 = 0; i1 < n[1]; ++i1)
            for (int i2 = 0; i2 < n[2]; ++i2) {
                const float* ar = a + i0 * sa[0] + i1 * sa[1] + i2 * sa[2];
                const float* br = b + i0 * sb[0] + i1 * sb[1] + i2 * sb[2];
                const ptrdiff_t a3 = sa[3], b3 = sb[3];
                for (int i3 = 0; i3 < n[3]; ++i3) *y++ = f(ar[i3 * a3], br[i3 * b3]);
            }
}

// g[sg] += f(dy, a[sa], b[sb]) with dy contiguous over the box n: the
// gradient of one operand of a broadcast binary operation, summed over the
// dimensions that operand was repeated along (where sg is 0).
template <class F>
inline void broadcast_binary_grad(float* g, const ptrdiff_t sg[4], const float* dy, const float* a,
                                  const ptrdiff_t sa[4], const float* b, const ptrdiff_t sb[4], const int n[4],
                                  F f) {
    for (int i0 = 0; i0 < n[0]; ++i0)
        for (int i1 = 0; i1 < n[1]; ++i1)
            for (int i2 = 0; i2 < n[2]; ++i2) {
                float* gr = g + i0 * sg[0] + i1 * sg[1] + i2 * sg[2];
                const float* ar = a + i0 * sa[0] + i1 * sa[1] + i2 * sa[2];
                const float* br = b + i0 * sb[0] + i1 * sb[1] + i2 * sb[2];
                const ptrdiff_t g3 = sg[3], a3 = sa[3], b3 = sb[3];
                for (int i3 = 0; i3 < n[3]; ++i3) gr[i3 * g3] += f(*dy++, ar[i3 * a3], br[i3 * b3]);
            }
}

}  // namespace nn
