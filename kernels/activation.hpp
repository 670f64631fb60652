// kernels/activation.hpp — elementwise activations and row softmax.
//
// Forward kernels write y = f(x) (y may alias x: every kernel reads an
// element before writing it). Backward kernels write dx = dy * f'(.) from
// the *output* y, so a layer need not keep its input: relu' = (y > 0),
// sigmoid' = y (1 - y), tanh' = 1 - y^2. Leaky ReLU with slope >= 0 also
// reads its sign from y. Activation gradients are written, not accumulated:
// the buffers they go to are fresh each step; only parameter gradients
// accumulate.
//
// Each kernel has a plain loop; under NN_SIMD the same loop runs on vectors
// of simd::kWidth floats with a scalar tail (row kernels finish each row on
// a partial vector instead, as rows of 10 classes are shorter than one
// AVX-512 vector). The `_ref` functions are the plain loops on their own,
// for the tests. exp is simd::vexp (kernels/vmath.hpp: right over the whole
// float range, unlike xsimd 8.1's); tanh is xsimd's, measured within 1.4 ulp
// over all floats.
#pragma once

#include <cmath>
#include <cstddef>

#include "simd.hpp"
#include "vmath.hpp"

namespace nn {

// --- ReLU and leaky ReLU ----------------------------------------------------

// y[i] = x[i] > 0 ? x[i] : slope * x[i]; slope 0 (ReLU) gives 0 there, also
// for -inf (where slope * x would be NaN), and keeps a NaN x. So ReLU is
// monotone and commutes with max, which lets the model fuse it into the max
// pooling after it (nn_impl.cpp).
inline float leaky_relu_scalar(float x, float slope) {
    if (x > 0.0f) return x;
    if (slope == 0.0f) return x != x ? x : 0.0f;
    return slope * x;
}
inline void leaky_relu_forward_ref(float* y, const float* x, float slope, size_t n) {
    for (size_t i = 0; i < n; ++i) y[i] = leaky_relu_scalar(x[i], slope);
}
inline void leaky_relu_forward(float* y, const float* x, float slope, size_t n) {
    size_t i = 0;
#if NN_SIMD
    const simd::vf zero(0.0f), s(slope);
    for (; i + simd::kWidth <= n; i += simd::kWidth) {  // i: elements, one vector per step
        simd::vf v = simd::vf::load_unaligned(x + i);
        if (slope == 0.0f)  // !(v <= 0): positive or NaN
            xsimd::select(!(v <= zero), v, zero).store_unaligned(y + i);
        else
            xsimd::select(v > zero, v, v * s).store_unaligned(y + i);
    }
#endif
    leaky_relu_forward_ref(y + i, x + i, slope, n - i);
}

// dx[i] = dy[i] * (y[i] > 0 ? 1 : slope), valid for slope >= 0
inline void leaky_relu_backward_ref(float* dx, const float* dy, const float* y, float slope,
                                    size_t n) {
    for (size_t i = 0; i < n; ++i) dx[i] = y[i] > 0.0f ? dy[i] : slope * dy[i];
}
inline void leaky_relu_backward(float* dx, const float* dy, const float* y, float slope,
                                size_t n) {
    size_t i = 0;
#if NN_SIMD
    const simd::vf zero(0.0f), s(slope);
    for (; i + simd::kWidth <= n; i += simd::kWidth) {
        simd::vf g = simd::vf::load_unaligned(dy + i);
        simd::vf v = simd::vf::load_unaligned(y + i);
        xsimd::select(v > zero, g, g * s).store_unaligned(dx + i);
    }
#endif
    leaky_relu_backward_ref(dx + i, dy + i, y + i, slope, n - i);
}

// --- Sigmoid -----------------------------------------------------------------

// y = 1 / (1 + e^-x), computed from e^-|x| so neither branch overflows.
inline float sigmoid_scalar(float x) {
    float e = std::exp(-std::fabs(x));
    return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}
inline void sigmoid_forward_ref(float* y, const float* x, size_t n) {
    for (size_t i = 0; i < n; ++i) y[i] = sigmoid_scalar(x[i]);
}
inline void sigmoid_forward(float* y, const float* x, size_t n) {
    size_t i = 0;
#if NN_SIMD
    const simd::vf one(1.0f), zero(0.0f);
    for (; i + simd::kWidth <= n; i += simd::kWidth) {
        simd::vf v = simd::vf::load_unaligned(x + i);
        simd::vf e = simd::vexp(-xsimd::abs(v));
        simd::vf r = simd::vdiv(one, one + e);
        xsimd::select(v >= zero, r, e * r).store_unaligned(y + i);
    }
#endif
    sigmoid_forward_ref(y + i, x + i, n - i);
}

// dx = dy * y * (1 - y)
inline void sigmoid_backward_ref(float* dx, const float* dy, const float* y, size_t n) {
    for (size_t i = 0; i < n; ++i) dx[i] = dy[i] * y[i] * (1.0f - y[i]);
}
inline void sigmoid_backward(float* dx, const float* dy, const float* y, size_t n) {
    size_t i = 0;
#if NN_SIMD
    const simd::vf one(1.0f);
    for (; i + simd::kWidth <= n; i += simd::kWidth) {
        simd::vf v = simd::vf::load_unaligned(y + i);
        (simd::vf::load_unaligned(dy + i) * v * (one - v)).store_unaligned(dx + i);
    }
#endif
    sigmoid_backward_ref(dx + i, dy + i, y + i, n - i);
}

// --- Tanh --------------------------------------------------------------------

inline void tanh_forward_ref(float* y, const float* x, size_t n) {
    for (size_t i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
}
inline void tanh_forward(float* y, const float* x, size_t n) {
    size_t i = 0;
#if NN_SIMD
    for (; i + simd::kWidth <= n; i += simd::kWidth)
        xsimd::tanh(simd::vf::load_unaligned(x + i)).store_unaligned(y + i);
#endif
    tanh_forward_ref(y + i, x + i, n - i);
}

// dx = dy * (1 - y^2)
inline void tanh_backward_ref(float* dx, const float* dy, const float* y, size_t n) {
    for (size_t i = 0; i < n; ++i) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
}
inline void tanh_backward(float* dx, const float* dy, const float* y, size_t n) {
    size_t i = 0;
#if NN_SIMD
    const simd::vf one(1.0f);
    for (; i + simd::kWidth <= n; i += simd::kWidth) {
        simd::vf v = simd::vf::load_unaligned(y + i);
        (simd::vf::load_unaligned(dy + i) * (one - v * v)).store_unaligned(dx + i);
    }
#endif
    tanh_backward_ref(dx + i, dy + i, y + i, n - i);
}

// --- Softmax over the last dimension ----------------------------------------

// x, y are (rows, cols); y[r] = exp(x[r] - max x[r]) / sum. y may alias x.
inline void softmax_forward_ref(float* y, const float* x, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; ++r) {  // r: one row (sample) at a time
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        float m = xr[0];
        for (size_t j = 1; j < cols; ++j) m = xr[j] > m ? xr[j] : m;
        float sum = 0.0f;
        for (size_t j = 0; j < cols; ++j) {
            yr[j] = std::exp(xr[j] - m);
            sum += yr[j];
        }
        float inv = 1.0f / sum;
        for (size_t j = 0; j < cols; ++j) yr[j] *= inv;
    }
}
inline void softmax_forward(float* y, const float* x, size_t rows, size_t cols) {
#if NN_SIMD
    using simd::vf;
    const size_t W = simd::kWidth, full = cols - cols % W, rest = cols % W;
    for (size_t r = 0; r < rows; ++r) {  // r: one row at a time
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        // The partial last vector is padded with -inf: it cannot win the max
        // and its exp is 0 (unless the whole row is -inf: NaN, as the ref).
        const vf xt = rest ? simd::load_partial(xr + full, rest, -INFINITY) : vf(-INFINITY);
        vf vm = xt;
        for (size_t j = 0; j < full; j += W) vm = xsimd::max(vm, vf::load_unaligned(xr + j));  // j: columns by W
        const vf m(simd::hmax(vm));
        // Exponentials into y (x is read first, so y may alias x), summed.
        vf vsum(0.0f);
        for (size_t j = 0; j < full; j += W) {
            vf e = simd::vexp(vf::load_unaligned(xr + j) - m);
            e.store_unaligned(yr + j);
            vsum += e;
        }
        const vf et = simd::vexp(xt - m);
        const vf inv(1.0f / simd::hsum(vsum + et));
        for (size_t j = 0; j < full; j += W) (vf::load_unaligned(yr + j) * inv).store_unaligned(yr + j);
        if (rest) simd::store_partial(yr + full, et * inv, rest);
    }
#else
    softmax_forward_ref(y, x, rows, cols);
#endif
}

// The full Jacobian-vector product of softmax, row by row:
// dx_j = sum_i dy_i * dy_i/dx_j = y_j * (dy_j - sum_i dy_i y_i)
inline void softmax_backward_ref(float* dx, const float* dy, const float* y, size_t rows,
                                 size_t cols) {
    for (size_t r = 0; r < rows; ++r) {
        const float* g = dy + r * cols;
        const float* p = y + r * cols;
        float* d = dx + r * cols;
        float dot = 0.0f;
        for (size_t j = 0; j < cols; ++j) dot += g[j] * p[j];
        for (size_t j = 0; j < cols; ++j) d[j] = p[j] * (g[j] - dot);
    }
}
inline void softmax_backward(float* dx, const float* dy, const float* y, size_t rows,
                             size_t cols) {
#if NN_SIMD
    using simd::vf;
    const size_t W = simd::kWidth, full = cols - cols % W, rest = cols % W;
    for (size_t r = 0; r < rows; ++r) {  // r: one row at a time; j: columns by W
        const float* g = dy + r * cols;
        const float* p = y + r * cols;
        float* d = dx + r * cols;
        // The partial last vector is padded with 0: it adds nothing to the dot.
        const vf gt = rest ? simd::load_partial(g + full, rest, 0.0f) : vf(0.0f);
        const vf pt = rest ? simd::load_partial(p + full, rest, 0.0f) : vf(0.0f);
        vf vdot = gt * pt;
        for (size_t j = 0; j < full; j += W)
            vdot = xsimd::fma(vf::load_unaligned(g + j), vf::load_unaligned(p + j), vdot);
        const vf dot(simd::hsum(vdot));
        for (size_t j = 0; j < full; j += W) {
            vf pj = vf::load_unaligned(p + j);
            (pj * (vf::load_unaligned(g + j) - dot)).store_unaligned(d + j);
        }
        if (rest) simd::store_partial(d + full, pt * (gt - dot), rest);
    }
#else
    softmax_backward_ref(dx, dy, y, rows, cols);
#endif
}

// --- Bias and column sums ----------------------------------------------------

// db[j] += sum_r dz[r, j]; dz is (rows, cols)
inline void column_sum_accumulate_ref(float* db, const float* dz, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; ++r) {  // r: rows; j: columns
        const float* z = dz + r * cols;
        for (size_t j = 0; j < cols; ++j) db[j] += z[j];
    }
}
// The same additions in the same order as the ref, so the result is identical.
inline void column_sum_accumulate(float* db, const float* dz, size_t rows, size_t cols) {
#if NN_SIMD
    const size_t W = simd::kWidth;
    for (size_t r = 0; r < rows; ++r) {  // r: rows; j: columns by W, then the rest
        const float* z = dz + r * cols;
        size_t j = 0;
        for (; j + W <= cols; j += W)
            (simd::vf::load_unaligned(db + j) + simd::vf::load_unaligned(z + j)).store_unaligned(db + j);
        for (; j < cols; ++j) db[j] += z[j];
    }
#else
    column_sum_accumulate_ref(db, dz, rows, cols);
#endif
}

// --- Elementwise helpers -----------------------------------------------------

// y = x * m, elementwise (dropout's mask holds 0 or 1/(1-p)); y may alias x.
inline void multiply_ref(float* y, const float* x, const float* m, size_t n) {
    for (size_t i = 0; i < n; ++i) y[i] = x[i] * m[i];
}
inline void multiply(float* y, const float* x, const float* m, size_t n) {
    size_t i = 0;
#if NN_SIMD
    for (; i + simd::kWidth <= n; i += simd::kWidth)  // i: elements, one vector per step
        (simd::vf::load_unaligned(x + i) * simd::vf::load_unaligned(m + i)).store_unaligned(y + i);
#endif
    multiply_ref(y + i, x + i, m + i, n - i);
}

}  // namespace nn
