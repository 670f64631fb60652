// kernels/optim.hpp — optimizer update kernels: one pass over parameters,
// gradients and optimizer state per step, PyTorch 1.13's update rules.
//
// Every kernel works on n floats at raw pointers (outputs first, the size
// last) and has two bodies:
//   *_ref   the plain loop, written op by op in the order PyTorch's
//           single-tensor optimizer applies its tensor ops (so the same
//           float roundings happen); the scalar build runs only this;
//   plain   the xsimd loop over whole vectors, then the *_ref loop for the
//           tail of fewer than kWidth elements. It uses fma where the
//           reference rounds a product and a sum apart, and multiplies by a
//           constant's reciprocal where the reference divides by it, so the
//           two agree to an ulp or two per operation, not bit for bit.
// Scalar coefficients (1 - beta, lr / bias correction, ...) are formed in
// double and rounded to float once, as PyTorch does with its Python floats.
// Pointers need no alignment; gradients are only read: an L2 term
// (weight_decay * p) is added to a local copy, as PyTorch's grad.add(p).
#pragma once

#include <cmath>
#include <cstddef>

#include "simd.hpp"
#include "vmath.hpp"  // vdiv, vsqrt: exact on NEON too

// GCC 12 warns "__Y may be used uninitialized" inside its own AVX-512
// intrinsics (_mm512_undefined_ps) when sqrt/max are inlined here: a false
// positive in the compiler's header, silenced for these kernels only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace nn {

// ---------------------------------------------------------------------------
// SGD with momentum, dampening, Nesterov and L2 weight decay.
//   d    = g + weight_decay * p                    (when weight_decay != 0)
//   buf  = d                                       (buf != null, first step)
//   buf  = momentum * buf + (1 - dampening) * d    (buf != null, later steps)
//   d    = nesterov ? d + momentum * buf : buf     (buf != null)
//   p   -= lr * d
// buf is null when momentum == 0 (no state).
// ---------------------------------------------------------------------------
inline void sgd_update_f32_ref(float* p, float* buf, const float* g, float lr, float momentum,
                               float dampening, float weight_decay, bool nesterov,
                               bool first_step, size_t n) {
    const float damp = (float)(1.0 - (double)dampening);
    // i: element
    for (size_t i = 0; i < n; ++i) {
        float d = g[i];
        if (weight_decay != 0.0f) d = d + weight_decay * p[i];
        if (buf) {
            if (first_step) {
                buf[i] = d;
            } else {
                buf[i] = buf[i] * momentum;
                buf[i] = buf[i] + damp * d;
            }
            d = nesterov ? d + momentum * buf[i] : buf[i];
        }
        p[i] = p[i] + (-lr) * d;
    }
}

inline void sgd_update_f32(float* p, float* buf, const float* g, float lr, float momentum,
                           float dampening, float weight_decay, bool nesterov, bool first_step,
                           size_t n) {
    size_t i = 0;
#if NN_SIMD
    using simd::vf;
    const size_t W = (size_t)simd::kWidth;
    const vf vwd(weight_decay), vmom(momentum), vdamp((float)(1.0 - (double)dampening));
    const vf vneg_lr(-lr);
    const bool l2 = weight_decay != 0.0f;
    // i: element, one vector at a time
    for (; i + W <= n; i += W) {
        vf p_ = vf::load_unaligned(p + i);
        vf d = vf::load_unaligned(g + i);
        if (l2) d = xsimd::fma(vwd, p_, d);
        if (buf) {
            vf b = first_step ? d : xsimd::fma(vdamp, d, vf::load_unaligned(buf + i) * vmom);
            b.store_unaligned(buf + i);
            d = nesterov ? xsimd::fma(vmom, b, d) : b;
        }
        xsimd::fma(vneg_lr, d, p_).store_unaligned(p + i);
    }
#endif
    // the tail (all of it in the scalar build)
    sgd_update_f32_ref(p + i, buf ? buf + i : nullptr, g + i, lr, momentum, dampening,
                       weight_decay, nesterov, first_step, n - i);
}

// ---------------------------------------------------------------------------
// Adagrad. clr = lr / (1 + (t - 1) * lr_decay) is formed by the caller.
//   d    = g + weight_decay * p                    (when weight_decay != 0)
//   sum += d * d
//   p   -= clr * d / (sqrt(sum) + eps)
// ---------------------------------------------------------------------------
inline void adagrad_update_f32_ref(float* p, float* sum, const float* g, float clr, float eps,
                                   float weight_decay, size_t n) {
    // i: element
    for (size_t i = 0; i < n; ++i) {
        float d = g[i];
        if (weight_decay != 0.0f) d = d + weight_decay * p[i];
        sum[i] = sum[i] + d * d;
        float std_ = std::sqrt(sum[i]) + eps;
        p[i] = p[i] + ((-clr) * d) / std_;
    }
}

inline void adagrad_update_f32(float* p, float* sum, const float* g, float clr, float eps,
                               float weight_decay, size_t n) {
    size_t i = 0;
#if NN_SIMD
    using simd::vf;
    const size_t W = (size_t)simd::kWidth;
    const vf vwd(weight_decay), veps(eps), vneg_clr(-clr);
    const bool l2 = weight_decay != 0.0f;
    // i: element, one vector at a time
    for (; i + W <= n; i += W) {
        vf p_ = vf::load_unaligned(p + i);
        vf d = vf::load_unaligned(g + i);
        if (l2) d = xsimd::fma(vwd, p_, d);
        vf s = xsimd::fma(d, d, vf::load_unaligned(sum + i));
        s.store_unaligned(sum + i);
        vf std_ = simd::vsqrt(s) + veps;
        (p_ + simd::vdiv(vneg_clr * d, std_)).store_unaligned(p + i);
    }
#endif
    adagrad_update_f32_ref(p + i, sum + i, g + i, clr, eps, weight_decay, n - i);
}

// ---------------------------------------------------------------------------
// RMSprop, plain or centered, with or without momentum.
//   d    = g + weight_decay * p                    (when weight_decay != 0)
//   sq   = alpha * sq + (1 - alpha) * d * d
//   ga   = alpha * ga + (1 - alpha) * d            (centered: ga != null)
//   avg  = sqrt(sq - ga * ga) + eps                (centered)
//        = sqrt(sq) + eps                          (otherwise)
//   buf  = momentum * buf + d / avg;  p -= lr * buf   (buf != null, momentum > 0)
//   p   -= lr * d / avg                               (otherwise)
// ---------------------------------------------------------------------------
inline void rmsprop_update_f32_ref(float* p, float* sq, float* ga, float* buf, const float* g,
                                   float lr, float alpha, float eps, float weight_decay,
                                   float momentum, size_t n) {
    const float one_minus_alpha = (float)(1.0 - (double)alpha);
    // i: element
    for (size_t i = 0; i < n; ++i) {
        float d = g[i];
        if (weight_decay != 0.0f) d = d + weight_decay * p[i];
        sq[i] = sq[i] * alpha;
        sq[i] = sq[i] + (one_minus_alpha * d) * d;
        float avg;
        if (ga) {
            ga[i] = ga[i] * alpha;
            ga[i] = ga[i] + one_minus_alpha * d;
            avg = std::sqrt(sq[i] + (-ga[i]) * ga[i]);
        } else {
            avg = std::sqrt(sq[i]);
        }
        avg = avg + eps;
        if (buf) {
            buf[i] = buf[i] * momentum;
            buf[i] = buf[i] + d / avg;
            p[i] = p[i] + (-lr) * buf[i];
        } else {
            p[i] = p[i] + ((-lr) * d) / avg;
        }
    }
}

inline void rmsprop_update_f32(float* p, float* sq, float* ga, float* buf, const float* g,
                               float lr, float alpha, float eps, float weight_decay,
                               float momentum, size_t n) {
    size_t i = 0;
#if NN_SIMD
    using simd::vf;
    const size_t W = (size_t)simd::kWidth;
    const vf vwd(weight_decay), valpha(alpha), vc((float)(1.0 - (double)alpha));
    const vf veps(eps), vmom(momentum), vneg_lr(-lr);
    const bool l2 = weight_decay != 0.0f;
    // i: element, one vector at a time
    for (; i + W <= n; i += W) {
        vf p_ = vf::load_unaligned(p + i);
        vf d = vf::load_unaligned(g + i);
        if (l2) d = xsimd::fma(vwd, p_, d);
        vf s = xsimd::fma(vc * d, d, vf::load_unaligned(sq + i) * valpha);
        s.store_unaligned(sq + i);
        vf avg;
        if (ga) {
            vf a = xsimd::fma(vc, d, vf::load_unaligned(ga + i) * valpha);
            a.store_unaligned(ga + i);
            avg = simd::vsqrt(xsimd::fnma(a, a, s));  // sqrt(s - a*a)
        } else {
            avg = simd::vsqrt(s);
        }
        avg = avg + veps;
        if (buf) {
            vf b = vf::load_unaligned(buf + i) * vmom + simd::vdiv(d, avg);
            b.store_unaligned(buf + i);
            xsimd::fma(vneg_lr, b, p_).store_unaligned(p + i);
        } else {
            (p_ + simd::vdiv(vneg_lr * d, avg)).store_unaligned(p + i);
        }
    }
#endif
    rmsprop_update_f32_ref(p + i, sq + i, ga ? ga + i : nullptr, buf ? buf + i : nullptr, g + i,
                           lr, alpha, eps, weight_decay, momentum, n - i);
}

// ---------------------------------------------------------------------------
// Adam and AdamW (decoupled == true), with or without AMSGrad.
// bias_correction1 = 1 - beta1^t and bias_correction2 = 1 - beta2^t, in double.
//   d    = g + weight_decay * p            (Adam: L2, when weight_decay != 0)
//   p    = p * (1 - lr * weight_decay)     (AdamW: decoupled decay, first)
//   m    = beta1 * m + (1 - beta1) * d
//   v    = beta2 * v + (1 - beta2) * d * d
//   vmax = max(vmax, v)                    (AMSGrad: vmax != null)
//   p   -= (lr / bias_correction1) * m / (sqrt(vmax or v) / sqrt(bias_correction2) + eps)
// ---------------------------------------------------------------------------
struct AdamCoefs {
    float l2 = 0;          // weight decay added to the gradient (Adam)
    float keep = 1;        // 1 - lr * weight_decay (AdamW)
    bool l2_on = false, decay_on = false;
    float c1 = 0, c2 = 0;  // 1 - beta1, 1 - beta2
    float neg_step = 0;    // -lr / bias_correction1
    float bc2_sqrt = 1;    // sqrt(bias_correction2)
    float inv_bc2_sqrt = 1;  // 1 / sqrt(bias_correction2), for the vector loop
};

inline AdamCoefs adam_coefs(float lr, float beta1, float beta2, float weight_decay,
                            bool decoupled, double bias_correction1, double bias_correction2) {
    AdamCoefs k;
    k.l2_on = !decoupled && weight_decay != 0.0f;
    k.l2 = weight_decay;
    k.decay_on = decoupled;
    k.keep = (float)(1.0 - (double)lr * (double)weight_decay);
    k.c1 = (float)(1.0 - (double)beta1);
    k.c2 = (float)(1.0 - (double)beta2);
    k.neg_step = (float)(-((double)lr / bias_correction1));
    k.bc2_sqrt = (float)std::sqrt(bias_correction2);
    k.inv_bc2_sqrt = (float)(1.0 / std::sqrt(bias_correction2));
    return k;
}

inline void adam_update_f32_ref(float* p, float* m, float* v, float* vmax, const float* g,
                                float lr, float beta1, float beta2, float eps,
                                float weight_decay, bool decoupled, double bias_correction1,
                                double bias_correction2, size_t n) {
    const AdamCoefs k =
        adam_coefs(lr, beta1, beta2, weight_decay, decoupled, bias_correction1, bias_correction2);
    // i: element
    for (size_t i = 0; i < n; ++i) {
        float d = g[i];
        if (k.l2_on) d = d + k.l2 * p[i];
        if (k.decay_on) p[i] = p[i] * k.keep;
        m[i] = m[i] * beta1;
        m[i] = m[i] + k.c1 * d;
        v[i] = v[i] * beta2;
        v[i] = v[i] + (k.c2 * d) * d;
        float s = v[i];
        if (vmax) {
            vmax[i] = vmax[i] > v[i] ? vmax[i] : v[i];
            s = vmax[i];
        }
        float denom = std::sqrt(s) / k.bc2_sqrt + eps;
        p[i] = p[i] + (k.neg_step * m[i]) / denom;
    }
}

inline void adam_update_f32(float* p, float* m, float* v, float* vmax, const float* g, float lr,
                            float beta1, float beta2, float eps, float weight_decay,
                            bool decoupled, double bias_correction1, double bias_correction2,
                            size_t n) {
    size_t i = 0;
#if NN_SIMD
    using simd::vf;
    const size_t W = (size_t)simd::kWidth;
    const AdamCoefs k =
        adam_coefs(lr, beta1, beta2, weight_decay, decoupled, bias_correction1, bias_correction2);
    const vf vl2(k.l2), vkeep(k.keep), vb1(beta1), vb2(beta2), vc1(k.c1), vc2(k.c2);
    const vf vneg_step(k.neg_step), vinv_bc2(k.inv_bc2_sqrt), veps(eps);
    // i: element, one vector at a time
    for (; i + W <= n; i += W) {
        vf p_ = vf::load_unaligned(p + i);
        vf d = vf::load_unaligned(g + i);
        if (k.l2_on) d = xsimd::fma(vl2, p_, d);
        if (k.decay_on) p_ = p_ * vkeep;
        vf m_ = xsimd::fma(vc1, d, vf::load_unaligned(m + i) * vb1);
        vf v_ = xsimd::fma(vc2 * d, d, vf::load_unaligned(v + i) * vb2);
        m_.store_unaligned(m + i);
        v_.store_unaligned(v + i);
        if (vmax) {
            v_ = xsimd::max(vf::load_unaligned(vmax + i), v_);
            v_.store_unaligned(vmax + i);
        }
        // Multiplying by 1/sqrt(bias_correction2) instead of dividing by it
        // (within an ulp of the reference) leaves two operations per vector
        // for the divide/sqrt unit instead of three; with the data in cache
        // that unit is what limits this loop (AVX-512, 118,272 parameters:
        // 23.1 -> 20.2 us).
        vf denom = xsimd::fma(simd::vsqrt(v_), vinv_bc2, veps);
        (p_ + simd::vdiv(vneg_step * m_, denom)).store_unaligned(p + i);
    }
#endif
    adam_update_f32_ref(p + i, m + i, v + i, vmax ? vmax + i : nullptr, g + i, lr, beta1, beta2,
                        eps, weight_decay, decoupled, bias_correction1, bias_correction2, n - i);
}

// ---------------------------------------------------------------------------
// Sum of squares of x[0..n), for the global gradient norm used by clipping.
//   return sum_i x[i]^2
// The reference accumulates in double. The vector loop sums blocks of
// 8 vectors per lane in float, then adds each block's total into a double,
// so rounding error stays at a few ulps for any n.
// ---------------------------------------------------------------------------
inline double sum_squares_f32_ref(const float* x, size_t n) {
    double s = 0.0;
    // i: element
    for (size_t i = 0; i < n; ++i) s += (double)x[i] * (double)x[i];
    return s;
}

inline double sum_squares_f32(const float* x, size_t n) {
    size_t i = 0;
    double s = 0.0;
#if NN_SIMD
    using simd::vf;
    const size_t W = (size_t)simd::kWidth;
    const size_t block = 8 * W;
    // i: block of 8 vectors
    for (; i + block <= n; i += block) {
        vf acc(0.0f);
        // j: vector within the block
        for (size_t j = 0; j < block; j += W) {
            vf a = vf::load_unaligned(x + i + j);
            acc = xsimd::fma(a, a, acc);
        }
        s += (double)simd::hsum(acc);
    }
#endif
    return s + sum_squares_f32_ref(x + i, n - i);
}

// ---------------------------------------------------------------------------
// x *= s, for gradient clipping.
// ---------------------------------------------------------------------------
inline void scale_f32_ref(float* x, float s, size_t n) {
    // i: element
    for (size_t i = 0; i < n; ++i) x[i] = x[i] * s;
}

inline void scale_f32(float* x, float s, size_t n) {
    size_t i = 0;
#if NN_SIMD
    using simd::vf;
    const size_t W = (size_t)simd::kWidth;
    const vf vs(s);
    // i: element, one vector at a time
    for (; i + W <= n; i += W) (vf::load_unaligned(x + i) * vs).store_unaligned(x + i);
#endif
    scale_f32_ref(x + i, s, n - i);
}

}  // namespace nn

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
