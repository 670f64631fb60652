// kernels/norm.hpp — batch normalisation over (N, C, L) tensors, with
// PyTorch's semantics.
//
// Layout: x is (N, C, L) row-major and the statistics are per channel c,
// over the M = N * L values x[n, c, l]. BatchNorm1d on (N, C) is L = 1;
// BatchNorm2d on (N, C, H, W) is L = H * W (BatchNorm1d on (N, C, L) is
// itself). Per-channel vectors (gamma, beta, running_mean, running_var,
// mean, inv_std, dgamma, dbeta) have C floats.
//
// Training forward (PyTorch's formulas, eps 1e-5 and momentum 0.1 are the
// caller's to pass):
//   mean    = sum x / M,   var = sum (x - mean)^2 / M   (biased: normalises)
//   inv_std = 1 / sqrt(var + eps)
//   y       = (x - mean) * inv_std * gamma + beta
//   running_mean = (1 - momentum) running_mean + momentum mean
//   running_var  = (1 - momentum) running_var  + momentum var * M / (M - 1)
//                  (the *unbiased* variance, as PyTorch)
// mean and inv_std go to caller memory for backward. gamma, beta may be null
// (affine=False: gamma 1, beta 0); running_mean, running_var may be null
// (track_running_stats=False). M >= 2 is required (PyTorch refuses training
// on one value per channel: the unbiased variance is undefined); with M = 1
// the kernel still normalises (var 0, so y = beta) but leaves running_var as
// it was rather than write inf or NaN into it.
//
// Eval forward uses the running statistics in place of the batch's:
//   y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta.
//
// Training backward, with xhat = (x - mean) inv_std recomputed from x and
// the saved mean and inv_std (so a layer keeps x, not xhat):
//   dbeta  += sum dy,   dgamma += sum dy xhat
//   dx      = gamma inv_std / M * (M dy - sum dy - xhat sum dy xhat)
//           = k (dy - a - (x - mean) b),  k = gamma inv_std,
//             a = sum dy / M,  b = inv_std^2 sum dy (x - mean) / M
// Eval backward (running statistics are constants):
//   dx = dy gamma / sqrt(running_var + eps),   dgamma += sum dy xhat_running,
//   dbeta += sum dy.
// dx is written; dx may be null (no input gradient wanted), and dgamma and
// dbeta accumulate and may be null (affine=False, or frozen parameters).
//
// Numerics. The statistics are sums over a channel: the plain loops sum in
// double; the vector loops sum in float lanes for at most simd::kSumVectors
// vectors at a time and add those partial sums into double, as the loss
// kernels do. The variance is taken about a shift (the float mean of a
// first pass) as var = S2 / M - (S1 / M)^2 with S1 = sum (x - shift),
// S2 = sum (x - shift)^2: exact for any shift, and with the shift at the
// mean, S1 is tiny and nothing cancels, however large the mean is against
// the spread. Outputs are formed from x - mean, not x * scale + shift, for
// the same reason.
//
// Vectorisation: which axis is contiguous decides. With L >= simd::kWidth
// each (n, c) run of L floats is contiguous: the vector loops run along L,
// one channel at a time. With L = 1 ((N, C) input) a channel's values are C
// floats apart, but C neighbouring channels are contiguous: the vector loops
// run along C, kWidth channels at a time, each lane holding one channel's
// sums, rows n one after the other; channels past the last whole vector go
// through the plain loop. Other shapes (1 < L < kWidth: 2x2 or 3x3 planes)
// run the plain loops. The `_ref` functions are the plain loops on their
// own, for the tests.
#pragma once

#include <cmath>
#include <cstddef>

#include "simd.hpp"
#include "vmath.hpp"

namespace nn {
namespace bn_detail {

inline float at_or(const float* p, size_t c, float dflt) { return p ? p[c] : dflt; }

// 1 / sqrt(var + eps), in double and rounded once.
inline float inv_std_of(double var, float eps) { return (float)(1.0 / std::sqrt(var + (double)eps)); }

// Channel c's mean, inv_std and running statistics from the deviation sums
// s1 = sum (x - shift) and s2 = sum (x - shift)^2 over its M values.
inline void finish_stats(float* mean, float* inv_std, float* running_mean, float* running_var, size_t c,
                         double shift, double s1, double s2, size_t M, float momentum, float eps) {
    const double m = (double)M, d = s1 / m, mu = shift + d;
    double var = s2 / m - d * d;  // biased; rounding may leave it a hair below 0
    if (var < 0.0) var = 0.0;
    mean[c] = (float)mu;
    inv_std[c] = inv_std_of(var, eps);
    const double mom = momentum;
    if (running_mean) running_mean[c] = (float)((1.0 - mom) * running_mean[c] + mom * mu);
    if (running_var && M > 1) running_var[c] = (float)((1.0 - mom) * running_var[c] + mom * var * m / (m - 1.0));
}

// --- The plain loops, over channels [c0, c1) ----------------------------------------

inline void forward_train_channels(float* y, float* mean, float* inv_std, float* running_mean,
                                   float* running_var, const float* x, const float* gamma, const float* beta,
                                   float momentum, float eps, size_t N, size_t C, size_t L, size_t c0,
                                   size_t c1) {
    const size_t M = N * L;
    for (size_t c = c0; c < c1; ++c) {  // c: channels; n: samples; l: positions
        double s = 0.0;
        for (size_t n = 0; n < N; ++n)
            for (size_t l = 0; l < L; ++l) s += x[(n * C + c) * L + l];
        const double mu = s / (double)M;
        double s1 = 0.0, s2 = 0.0;  // about the double mean: s1 stays ~0
        for (size_t n = 0; n < N; ++n)
            for (size_t l = 0; l < L; ++l) {
                const double d = x[(n * C + c) * L + l] - mu;
                s1 += d;
                s2 += d * d;
            }
        finish_stats(mean, inv_std, running_mean, running_var, c, mu, s1, s2, M, momentum, eps);
        const float m = mean[c], k = at_or(gamma, c, 1.0f) * inv_std[c], b = at_or(beta, c, 0.0f);
        for (size_t n = 0; n < N; ++n)
            for (size_t l = 0; l < L; ++l) {
                const size_t i = (n * C + c) * L + l;
                y[i] = (x[i] - m) * k + b;
            }
    }
}

inline void forward_eval_channels(float* y, const float* x, const float* gamma, const float* beta,
                                  const float* running_mean, const float* running_var, float eps, size_t N,
                                  size_t C, size_t L, size_t c0, size_t c1) {
    for (size_t c = c0; c < c1; ++c) {  // c: channels; n: samples; l: positions
        const float m = running_mean[c], b = at_or(beta, c, 0.0f);
        const float k = at_or(gamma, c, 1.0f) * inv_std_of(running_var[c], eps);
        for (size_t n = 0; n < N; ++n)
            for (size_t l = 0; l < L; ++l) {
                const size_t i = (n * C + c) * L + l;
                y[i] = (x[i] - m) * k + b;
            }
    }
}

// Backward about (mean, inv_std); `train` adds the terms through the batch
// statistics (a, b), eval mode leaves them out.
inline void backward_channels(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                              const float* mean, const float* inv_std, const float* gamma, bool train,
                              size_t N, size_t C, size_t L, size_t c0, size_t c1) {
    const size_t M = N * L;
    for (size_t c = c0; c < c1; ++c) {  // c: channels; n: samples; l: positions
        const float m = mean[c], is = inv_std[c], k = at_or(gamma, c, 1.0f) * is;
        double sdy = 0.0, sdyd = 0.0;  // sum dy, sum dy (x - mean)
        if (train || dgamma || dbeta)
            for (size_t n = 0; n < N; ++n)
                for (size_t l = 0; l < L; ++l) {
                    const size_t i = (n * C + c) * L + l;
                    sdy += dy[i];
                    sdyd += (double)dy[i] * (x[i] - m);
                }
        if (dbeta) dbeta[c] += (float)sdy;
        if (dgamma) dgamma[c] += (float)(sdyd * is);
        const float a = train ? (float)(sdy / (double)M) : 0.0f;
        const float b = train ? (float)(sdyd * is * is / (double)M) : 0.0f;
        if (dx)
            for (size_t n = 0; n < N; ++n)
                for (size_t l = 0; l < L; ++l) {
                    const size_t i = (n * C + c) * L + l;
                    dx[i] = k * (dy[i] - a - (x[i] - m) * b);
                }
    }
}

#if NN_SIMD
using simd::vf;
constexpr size_t W = simd::kWidth;

// --- Along L: one contiguous run of n floats at a time --------------------------------

// sum x[0..n)
inline double run_sum(const float* x, size_t n) {
    double s = 0.0;
    vf acc(0.0f);
    size_t i = 0;
    for (size_t v = 1; i + W <= n; i += W, ++v) {  // i: positions, one vector per step
        acc += vf::load_unaligned(x + i);
        if (v % simd::kSumVectors == 0) {  // bound the terms per float lane
            s += simd::hsum(acc);
            acc = vf(0.0f);
        }
    }
    s += simd::hsum(acc);
    for (; i < n; ++i) s += x[i];  // the last n % W
    return s;
}

// s1 += sum (x - shift), s2 += sum (x - shift)^2
inline void run_dev_sums(double* s1, double* s2, const float* x, float shift, size_t n) {
    const vf sh(shift);
    vf a1(0.0f), a2(0.0f);
    size_t i = 0;
    for (size_t v = 1; i + W <= n; i += W, ++v) {  // i: positions, one vector per step
        const vf d = vf::load_unaligned(x + i) - sh;
        a1 += d;
        a2 = xsimd::fma(d, d, a2);
        if (v % simd::kSumVectors == 0) {
            *s1 += simd::hsum(a1);
            *s2 += simd::hsum(a2);
            a1 = a2 = vf(0.0f);
        }
    }
    *s1 += simd::hsum(a1);
    *s2 += simd::hsum(a2);
    for (; i < n; ++i) {
        const double d = x[i] - shift;
        *s1 += d;
        *s2 += d * d;
    }
}

// sdy += sum dy, sdyd += sum dy (x - m)
inline void run_grad_sums(double* sdy, double* sdyd, const float* dy, const float* x, float m, size_t n) {
    const vf mv(m);
    vf a1(0.0f), a2(0.0f);
    size_t i = 0;
    for (size_t v = 1; i + W <= n; i += W, ++v) {  // i: positions, one vector per step
        const vf g = vf::load_unaligned(dy + i);
        a1 += g;
        a2 = xsimd::fma(g, vf::load_unaligned(x + i) - mv, a2);
        if (v % simd::kSumVectors == 0) {
            *sdy += simd::hsum(a1);
            *sdyd += simd::hsum(a2);
            a1 = a2 = vf(0.0f);
        }
    }
    *sdy += simd::hsum(a1);
    *sdyd += simd::hsum(a2);
    for (; i < n; ++i) {
        *sdy += dy[i];
        *sdyd += (double)dy[i] * (x[i] - m);
    }
}

// y = (x - m) k + b
inline void run_affine(float* y, const float* x, float m, float k, float b, size_t n) {
    const vf mv(m), kv(k), bv(b);
    size_t i = 0;
    for (; i + W <= n; i += W)  // i: positions, one vector per step
        xsimd::fma(vf::load_unaligned(x + i) - mv, kv, bv).store_unaligned(y + i);
    for (; i < n; ++i) y[i] = (x[i] - m) * k + b;
}

// dx = k (dy - a - (x - m) b)
inline void run_dx(float* dx, const float* dy, const float* x, float m, float k, float a, float b, size_t n) {
    const vf mv(m), kv(k), av(a), bv(b);
    size_t i = 0;
    for (; i + W <= n; i += W)  // i: positions, one vector per step
        (kv * xsimd::fnma(vf::load_unaligned(x + i) - mv, bv, vf::load_unaligned(dy + i) - av))
            .store_unaligned(dx + i);
    for (; i < n; ++i) dx[i] = k * (dy[i] - a - (x[i] - m) * b);
}

// --- Along C (L = 1): kWidth channels at a time, one lane per channel ------------------

// t[k] += lane k of v
inline void add_lanes(double* t, const vf& v) {
    alignas(64) float b[W];
    v.store_aligned(b);
    for (size_t k = 0; k < W; ++k) t[k] += b[k];  // k: lanes (channels)
}
inline vf param_or(const float* p, size_t c, float dflt) { return p ? vf::load_unaligned(p + c) : vf(dflt); }

// Statistics and y for channels [c, c + W) of x (N, C).
inline void forward_train_block(float* y, float* mean, float* inv_std, float* running_mean, float* running_var,
                                const float* x, const float* gamma, const float* beta, float momentum,
                                float eps, size_t N, size_t C, size_t c) {
    double t[W] = {}, s1[W] = {}, s2[W] = {};
    vf acc(0.0f);
    for (size_t n = 0; n < N; ++n) {  // n: rows (samples); each lane sums its channel
        acc += vf::load_unaligned(x + n * C + c);
        if ((n + 1) % simd::kSumVectors == 0) {  // bound the terms per float lane
            add_lanes(t, acc);
            acc = vf(0.0f);
        }
    }
    add_lanes(t, acc);
    alignas(64) float shift[W];
    for (size_t k = 0; k < W; ++k) shift[k] = (float)(t[k] / (double)N);  // k: lanes
    const vf sh = vf::load_aligned(shift);
    vf a1(0.0f), a2(0.0f);
    for (size_t n = 0; n < N; ++n) {  // n: rows
        const vf d = vf::load_unaligned(x + n * C + c) - sh;
        a1 += d;
        a2 = xsimd::fma(d, d, a2);
        if ((n + 1) % simd::kSumVectors == 0) {
            add_lanes(s1, a1);
            add_lanes(s2, a2);
            a1 = a2 = vf(0.0f);
        }
    }
    add_lanes(s1, a1);
    add_lanes(s2, a2);
    for (size_t k = 0; k < W; ++k)  // k: lanes (channels c + k)
        finish_stats(mean, inv_std, running_mean, running_var, c + k, shift[k], s1[k], s2[k], N, momentum, eps);
    const vf mv = vf::load_unaligned(mean + c);
    const vf kv = param_or(gamma, c, 1.0f) * vf::load_unaligned(inv_std + c), bv = param_or(beta, c, 0.0f);
    for (size_t n = 0; n < N; ++n)  // n: rows
        xsimd::fma(vf::load_unaligned(x + n * C + c) - mv, kv, bv).store_unaligned(y + n * C + c);
}

// Backward for channels [c, c + W) of (N, C), as backward_channels.
inline void backward_block(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                           const float* mean, const float* inv_std, const float* gamma, bool train, size_t N,
                           size_t C, size_t c) {
    const vf mv = vf::load_unaligned(mean + c), isv = vf::load_unaligned(inv_std + c);
    const vf kv = param_or(gamma, c, 1.0f) * isv;
    vf av(0.0f), bv(0.0f);
    if (train || dgamma || dbeta) {
        double sdy[W] = {}, sdyd[W] = {};
        vf a1(0.0f), a2(0.0f);
        for (size_t n = 0; n < N; ++n) {  // n: rows; each lane sums its channel
            const vf g = vf::load_unaligned(dy + n * C + c);
            a1 += g;
            a2 = xsimd::fma(g, vf::load_unaligned(x + n * C + c) - mv, a2);
            if ((n + 1) % simd::kSumVectors == 0) {
                add_lanes(sdy, a1);
                add_lanes(sdyd, a2);
                a1 = a2 = vf(0.0f);
            }
        }
        add_lanes(sdy, a1);
        add_lanes(sdyd, a2);
        alignas(64) float a[W], b[W];
        for (size_t k = 0; k < W; ++k) {  // k: lanes (channels c + k)
            const double is = inv_std[c + k];
            if (dbeta) dbeta[c + k] += (float)sdy[k];
            if (dgamma) dgamma[c + k] += (float)(sdyd[k] * is);
            a[k] = (float)(sdy[k] / (double)N);
            b[k] = (float)(sdyd[k] * is * is / (double)N);
        }
        if (train) {
            av = vf::load_aligned(a);
            bv = vf::load_aligned(b);
        }
    }
    for (size_t n = 0; dx && n < N; ++n) {  // n: rows
        const vf g = vf::load_unaligned(dy + n * C + c), d = vf::load_unaligned(x + n * C + c) - mv;
        (kv * xsimd::fnma(d, bv, g - av)).store_unaligned(dx + n * C + c);
    }
}
#endif  // NN_SIMD

// Backward in either mode: vector paths by shape (header), plain loop otherwise.
inline void backward_any(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                         const float* mean, const float* inv_std, const float* gamma, bool train, size_t N,
                         size_t C, size_t L) {
#if NN_SIMD
    if (L >= W) {
        const size_t M = N * L;
        for (size_t c = 0; c < C; ++c) {  // c: channels; n: samples, each a run of L
            const float m = mean[c], is = inv_std[c], k = at_or(gamma, c, 1.0f) * is;
            double sdy = 0.0, sdyd = 0.0;
            if (train || dgamma || dbeta)
                for (size_t n = 0; n < N; ++n) run_grad_sums(&sdy, &sdyd, dy + (n * C + c) * L, x + (n * C + c) * L, m, L);
            if (dbeta) dbeta[c] += (float)sdy;
            if (dgamma) dgamma[c] += (float)(sdyd * is);
            const float a = train ? (float)(sdy / (double)M) : 0.0f;
            const float b = train ? (float)(sdyd * is * is / (double)M) : 0.0f;
            for (size_t n = 0; dx && n < N; ++n) {
                const size_t o = (n * C + c) * L;
                run_dx(dx + o, dy + o, x + o, m, k, a, b, L);
            }
        }
        return;
    }
    if (L == 1) {
        size_t c = 0;
        for (; c + W <= C; c += W) backward_block(dx, dgamma, dbeta, dy, x, mean, inv_std, gamma, train, N, C, c);  // c: channels by W
        backward_channels(dx, dgamma, dbeta, dy, x, mean, inv_std, gamma, train, N, C, 1, c, C);  // the last C % W
        return;
    }
#endif
    backward_channels(dx, dgamma, dbeta, dy, x, mean, inv_std, gamma, train, N, C, L, 0, C);
}

}  // namespace bn_detail

// --- Training forward ---------------------------------------------------------------

// x, y are (N, C, L); gamma, beta, running_mean, running_var are (C) or
// null; mean, inv_std (C) receive the batch statistics for backward.
inline void batchnorm_forward_train_ref(float* y, float* mean, float* inv_std, float* running_mean,
                                        float* running_var, const float* x, const float* gamma,
                                        const float* beta, float momentum, float eps, size_t N, size_t C,
                                        size_t L) {
    bn_detail::forward_train_channels(y, mean, inv_std, running_mean, running_var, x, gamma, beta, momentum, eps,
                                      N, C, L, 0, C);
}
inline void batchnorm_forward_train(float* y, float* mean, float* inv_std, float* running_mean,
                                    float* running_var, const float* x, const float* gamma, const float* beta,
                                    float momentum, float eps, size_t N, size_t C, size_t L) {
#if NN_SIMD
    using namespace bn_detail;
    if (L >= W) {  // along L
        const size_t M = N * L;
        for (size_t c = 0; c < C; ++c) {  // c: channels; n: samples, each a run of L
            double s = 0.0;
            for (size_t n = 0; n < N; ++n) s += run_sum(x + (n * C + c) * L, L);
            const float shift = (float)(s / (double)M);
            double s1 = 0.0, s2 = 0.0;
            for (size_t n = 0; n < N; ++n) run_dev_sums(&s1, &s2, x + (n * C + c) * L, shift, L);
            finish_stats(mean, inv_std, running_mean, running_var, c, shift, s1, s2, M, momentum, eps);
            const float m = mean[c], k = at_or(gamma, c, 1.0f) * inv_std[c], b = at_or(beta, c, 0.0f);
            for (size_t n = 0; n < N; ++n) run_affine(y + (n * C + c) * L, x + (n * C + c) * L, m, k, b, L);
        }
        return;
    }
    if (L == 1) {  // along C
        size_t c = 0;
        for (; c + W <= C; c += W)  // c: channels by W
            forward_train_block(y, mean, inv_std, running_mean, running_var, x, gamma, beta, momentum, eps, N, C, c);
        forward_train_channels(y, mean, inv_std, running_mean, running_var, x, gamma, beta, momentum, eps, N, C, 1,
                               c, C);  // the last C % W
        return;
    }
#endif
    batchnorm_forward_train_ref(y, mean, inv_std, running_mean, running_var, x, gamma, beta, momentum, eps, N, C,
                                L);
}

// --- Eval forward ---------------------------------------------------------------------

// x, y are (N, C, L); running_mean, running_var are (C); gamma, beta (C) or null.
inline void batchnorm_forward_eval_ref(float* y, const float* x, const float* gamma, const float* beta,
                                       const float* running_mean, const float* running_var, float eps, size_t N,
                                       size_t C, size_t L) {
    bn_detail::forward_eval_channels(y, x, gamma, beta, running_mean, running_var, eps, N, C, L, 0, C);
}
inline void batchnorm_forward_eval(float* y, const float* x, const float* gamma, const float* beta,
                                   const float* running_mean, const float* running_var, float eps, size_t N,
                                   size_t C, size_t L) {
#if NN_SIMD
    using namespace bn_detail;
    if (L >= W) {  // along L
        for (size_t c = 0; c < C; ++c) {  // c: channels; n: samples
            const float k = at_or(gamma, c, 1.0f) * inv_std_of(running_var[c], eps);
            for (size_t n = 0; n < N; ++n)
                run_affine(y + (n * C + c) * L, x + (n * C + c) * L, running_mean[c], k, at_or(beta, c, 0.0f), L);
        }
        return;
    }
    if (L == 1) {  // along C
        size_t c = 0;
        for (; c + W <= C; c += W) {  // c: channels by W
            alignas(64) float is[W];
            for (size_t k = 0; k < W; ++k) is[k] = inv_std_of(running_var[c + k], eps);  // k: lanes
            const vf mv = vf::load_unaligned(running_mean + c), bv = param_or(beta, c, 0.0f);
            const vf kv = param_or(gamma, c, 1.0f) * vf::load_aligned(is);
            for (size_t n = 0; n < N; ++n)  // n: rows
                xsimd::fma(vf::load_unaligned(x + n * C + c) - mv, kv, bv).store_unaligned(y + n * C + c);
        }
        forward_eval_channels(y, x, gamma, beta, running_mean, running_var, eps, N, C, 1, c, C);  // the last C % W
        return;
    }
#endif
    batchnorm_forward_eval_ref(y, x, gamma, beta, running_mean, running_var, eps, N, C, L);
}

// --- Training backward ----------------------------------------------------------------

// dy, x, dx are (N, C, L); mean, inv_std (C) are what the training forward
// saved; gamma (C) or null; dgamma, dbeta (C) accumulate, or are null.
inline void batchnorm_backward_train_ref(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                                         const float* mean, const float* inv_std, const float* gamma, size_t N,
                                         size_t C, size_t L) {
    bn_detail::backward_channels(dx, dgamma, dbeta, dy, x, mean, inv_std, gamma, true, N, C, L, 0, C);
}
inline void batchnorm_backward_train(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                                     const float* mean, const float* inv_std, const float* gamma, size_t N,
                                     size_t C, size_t L) {
    bn_detail::backward_any(dx, dgamma, dbeta, dy, x, mean, inv_std, gamma, true, N, C, L);
}

// --- Eval backward --------------------------------------------------------------------

// As the training backward, about the running statistics. inv_std (C) is
// scratch from the caller: it receives 1 / sqrt(running_var + eps).
inline void batchnorm_backward_eval_ref(float* dx, float* dgamma, float* dbeta, float* inv_std, const float* dy,
                                        const float* x, const float* running_mean, const float* running_var,
                                        const float* gamma, float eps, size_t N, size_t C, size_t L) {
    for (size_t c = 0; c < C; ++c) inv_std[c] = bn_detail::inv_std_of(running_var[c], eps);  // c: channels
    bn_detail::backward_channels(dx, dgamma, dbeta, dy, x, running_mean, inv_std, gamma, false, N, C, L, 0, C);
}
inline void batchnorm_backward_eval(float* dx, float* dgamma, float* dbeta, float* inv_std, const float* dy,
                                    const float* x, const float* running_mean, const float* running_var,
                                    const float* gamma, float eps, size_t N, size_t C, size_t L) {
    for (size_t c = 0; c < C; ++c) inv_std[c] = bn_detail::inv_std_of(running_var[c], eps);  // c: channels
    bn_detail::backward_any(dx, dgamma, dbeta, dy, x, running_mean, inv_std, gamma, false, N, C, L);
}

}  // namespace nn
