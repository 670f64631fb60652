// kernels/loss.hpp — loss values and their gradients with respect to the
// prediction, in one pass.
//
// Contract for every kernel here: p (the prediction) and t (the target) are
// (rows, cols) row-major; the return value is the mean loss (the reduction
// PyTorch uses by default, summed in double); dp, when not null, receives
// dLoss/dp of that mean (written, not accumulated). Classes come either as
// one-hot/soft rows t or as integer labels (t null); labels are checked by the
// caller. The value does not depend on whether dp is null.
//
// Each loss has a plain `_ref` loop (terms in float or double as written,
// summed in double) and, under NN_SIMD, a vector version: the terms are
// computed and summed in float lanes, at most simd::kSumVectors vectors at a
// time, and those partial sums go into a double total. The elementwise losses
// take their last n % kWidth elements through `*_sum_ref`, the plain loop
// over part of a mean (it returns its sum); the row losses finish each row on
// a partial vector, as rows of 10 classes are shorter than one vector.
// exp is simd::vexp (kernels/vmath.hpp); log and log1p are xsimd's.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "simd.hpp"
#include "vmath.hpp"

namespace nn {

// --- Mean squared error --------------------------------------------------------

// mean((p - t)^2) over all elements; dp = 2 (p - t) / n.
// The plain loop over n elements of a mean over `count`; returns their sum.
inline double mse_sum_ref(float* dp, const float* p, const float* t, size_t n, size_t count) {
    double sum = 0.0;
    const float scale = 2.0f / (float)count;
    for (size_t i = 0; i < n; ++i) {
        float d = p[i] - t[i];
        sum += (double)d * d;
        if (dp) dp[i] = scale * d;
    }
    return sum;
}
inline double mse_loss_ref(float* dp, const float* p, const float* t, size_t n) {
    return mse_sum_ref(dp, p, t, n, n) / (double)n;
}
inline double mse_loss(float* dp, const float* p, const float* t, size_t n) {
    double sum = 0.0;
    size_t i = 0;
#if NN_SIMD
    using simd::vf;
    const size_t W = simd::kWidth;
    const vf scale(2.0f / (float)n);
    vf acc(0.0f);
    for (size_t v = 1; i + W <= n; i += W, ++v) {  // i: elements, one vector per step
        vf d = vf::load_unaligned(p + i) - vf::load_unaligned(t + i);
        acc = xsimd::fma(d, d, acc);
        if (dp) (scale * d).store_unaligned(dp + i);
        if (v % simd::kSumVectors == 0) {  // bound the terms per float lane
            sum += simd::hsum(acc);
            acc = vf(0.0f);
        }
    }
    sum += simd::hsum(acc);
#endif
    sum += mse_sum_ref(dp ? dp + i : nullptr, p + i, t + i, n - i, n);  // the last n % W
    return sum / (double)n;
}

// --- Mean absolute error -------------------------------------------------------

// mean |p - t|; dp = sign(p - t) / n, 0 where p == t (as torch.sign)
inline double mae_sum_ref(float* dp, const float* p, const float* t, size_t n, size_t count) {
    double sum = 0.0;
    const float inv = 1.0f / (float)count;
    for (size_t i = 0; i < n; ++i) {
        float d = p[i] - t[i];
        sum += std::fabs((double)d);
        if (dp) dp[i] = d > 0.0f ? inv : (d < 0.0f ? -inv : 0.0f);
    }
    return sum;
}
inline double mae_loss_ref(float* dp, const float* p, const float* t, size_t n) {
    return mae_sum_ref(dp, p, t, n, n) / (double)n;
}
inline double mae_loss(float* dp, const float* p, const float* t, size_t n) {
    double sum = 0.0;
    size_t i = 0;
#if NN_SIMD
    using simd::vf;
    const size_t W = simd::kWidth;
    const vf zero(0.0f), inv(1.0f / (float)n), ninv(-1.0f / (float)n);
    vf acc(0.0f);
    for (size_t v = 1; i + W <= n; i += W, ++v) {  // i: elements, one vector per step
        vf d = vf::load_unaligned(p + i) - vf::load_unaligned(t + i);
        acc += xsimd::abs(d);
        if (dp) xsimd::select(d > zero, inv, xsimd::select(d < zero, ninv, zero)).store_unaligned(dp + i);
        if (v % simd::kSumVectors == 0) {  // bound the terms per float lane
            sum += simd::hsum(acc);
            acc = vf(0.0f);
        }
    }
    sum += simd::hsum(acc);
#endif
    sum += mae_sum_ref(dp ? dp + i : nullptr, p + i, t + i, n - i, n);  // the last n % W
    return sum / (double)n;
}

// --- Huber ---------------------------------------------------------------------

// Huber with threshold delta: 0.5 d^2 where |d| <= delta, else
// delta (|d| - 0.5 delta); the gradient is d, clipped to [-delta, delta].
inline double huber_sum_ref(float* dp, const float* p, const float* t, float delta, size_t n,
                            size_t count) {
    double sum = 0.0;
    const float inv = 1.0f / (float)count;
    for (size_t i = 0; i < n; ++i) {
        float d = p[i] - t[i];
        float a = std::fabs(d);
        if (a <= delta) {
            sum += 0.5 * (double)d * d;
            if (dp) dp[i] = d * inv;
        } else {
            sum += (double)delta * ((double)a - 0.5 * delta);
            if (dp) dp[i] = (d > 0.0f ? delta : -delta) * inv;
        }
    }
    return sum;
}
inline double huber_loss_ref(float* dp, const float* p, const float* t, float delta, size_t n) {
    return huber_sum_ref(dp, p, t, delta, n, n) / (double)n;
}
inline double huber_loss(float* dp, const float* p, const float* t, float delta, size_t n) {
    double sum = 0.0;
    size_t i = 0;
#if NN_SIMD
    using simd::vf;
    const size_t W = simd::kWidth;
    const vf zero(0.0f), half(0.5f), vdelta(delta), inv(1.0f / (float)n);
    const vf outer_shift(0.5f * delta);  // |d| > delta: delta (|d| - delta / 2)
    vf acc(0.0f);
    for (size_t v = 1; i + W <= n; i += W, ++v) {  // i: elements, one vector per step
        vf d = vf::load_unaligned(p + i) - vf::load_unaligned(t + i);
        vf a = xsimd::abs(d);
        auto inner = a <= vdelta;
        acc += xsimd::select(inner, half * d * d, vdelta * (a - outer_shift));
        if (dp) {
            vf g = xsimd::select(inner, d, xsimd::select(d > zero, vdelta, -vdelta));
            (g * inv).store_unaligned(dp + i);
        }
        if (v % simd::kSumVectors == 0) {  // bound the terms per float lane
            sum += simd::hsum(acc);
            acc = vf(0.0f);
        }
    }
    sum += simd::hsum(acc);
#endif
    sum += huber_sum_ref(dp ? dp + i : nullptr, p + i, t + i, delta, n - i, n);  // the last n % W
    return sum / (double)n;
}

// --- Binary cross-entropy --------------------------------------------------------

// Binary cross-entropy on probabilities, PyTorch's BCELoss: each log is
// clamped at -100 so p = 0 or 1 gives a large finite loss, and the gradient
// divides by max(p (1 - p), 1e-12).
inline double bce_sum_ref(float* dp, const float* p, const float* t, size_t n, size_t count) {
    double sum = 0.0;
    const float inv = 1.0f / (float)count;
    for (size_t i = 0; i < n; ++i) {
        // log(1 - p) as log1p(-p): 1 - p rounds even in double for p < 2^-29.
        double lp = std::log((double)p[i]), lq = std::log1p(-(double)p[i]);
        if (!(lp >= -100.0)) lp = -100.0;
        if (!(lq >= -100.0)) lq = -100.0;
        sum -= (double)t[i] * lp + (1.0 - (double)t[i]) * lq;
        if (dp) {
            float denom = p[i] * (1.0f - p[i]);
            dp[i] = (p[i] - t[i]) / (denom > 1e-12f ? denom : 1e-12f) * inv;
        }
    }
    return sum;
}
inline double bce_loss_ref(float* dp, const float* p, const float* t, size_t n) {
    return bce_sum_ref(dp, p, t, n, n) / (double)n;
}
inline double bce_loss(float* dp, const float* p, const float* t, size_t n) {
    double sum = 0.0;
    size_t i = 0;
#if NN_SIMD
    using simd::vf;
    const size_t W = simd::kWidth;
    const vf one(1.0f), floor_log(-100.0f), tiny(1e-12f), inv(1.0f / (float)n);
    vf acc(0.0f);
    for (size_t v = 1; i + W <= n; i += W, ++v) {  // i: elements, one vector per step
        vf pv = vf::load_unaligned(p + i), tv = vf::load_unaligned(t + i);
        // log(1 - p) as log1p(-p): 1 - p would round away a tiny p.
        vf lp = xsimd::log(pv), lq = xsimd::log1p(-pv);
        lp = xsimd::select(lp >= floor_log, lp, floor_log);  // also -inf and NaN, as the ref
        lq = xsimd::select(lq >= floor_log, lq, floor_log);
        acc -= xsimd::fma(tv, lp, (one - tv) * lq);
        if (dp) {
            vf denom = pv * (one - pv);
            (simd::vdiv(pv - tv, xsimd::select(denom > tiny, denom, tiny)) * inv).store_unaligned(dp + i);
        }
        if (v % simd::kSumVectors == 0) {  // bound the terms per float lane
            sum += simd::hsum(acc);
            acc = vf(0.0f);
        }
    }
    sum += simd::hsum(acc);
#endif
    sum += bce_sum_ref(dp ? dp + i : nullptr, p + i, t + i, n - i, n);  // the last n % W
    return sum / (double)n;
}

// Binary cross-entropy on logits z, stable for any z:
// loss = max(z, 0) - z t + log(1 + e^-|z|);  dz = (sigmoid(z) - t) / n
inline double bce_logits_sum_ref(float* dz, const float* z, const float* t, size_t n, size_t count) {
    double sum = 0.0;
    const float inv = 1.0f / (float)count;
    for (size_t i = 0; i < n; ++i) {
        double zi = z[i];
        sum += (zi > 0.0 ? zi : 0.0) - zi * t[i] + std::log1p(std::exp(-std::fabs(zi)));
        if (dz) {
            float e = std::exp(-std::fabs(z[i]));
            float s = z[i] >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
            dz[i] = (s - t[i]) * inv;
        }
    }
    return sum;
}
inline double bce_logits_loss_ref(float* dz, const float* z, const float* t, size_t n) {
    return bce_logits_sum_ref(dz, z, t, n, n) / (double)n;
}
inline double bce_logits_loss(float* dz, const float* z, const float* t, size_t n) {
    double sum = 0.0;
    size_t i = 0;
#if NN_SIMD
    using simd::vf;
    const size_t W = simd::kWidth;
    const vf zero(0.0f), one(1.0f), inv(1.0f / (float)n);
    vf acc(0.0f);
    for (size_t v = 1; i + W <= n; i += W, ++v) {  // i: elements, one vector per step
        vf zv = vf::load_unaligned(z + i), tv = vf::load_unaligned(t + i);
        vf e = simd::vexp(-xsimd::abs(zv));
        // max(z, 0) - z t as z (1 - t) or -z t: in float, z - z t would
        // cancel for t near 1; both forms are >= 0 for t in [0, 1].
        vf lin = xsimd::select(zv > zero, zv * (one - tv), -zv * tv);
        acc += lin + xsimd::log1p(e);
        if (dz) {
            vf r = simd::vdiv(one, one + e);
            vf s = xsimd::select(zv >= zero, r, e * r);  // sigmoid(z), as sigmoid_forward
            ((s - tv) * inv).store_unaligned(dz + i);
        }
        if (v % simd::kSumVectors == 0) {  // bound the terms per float lane
            sum += simd::hsum(acc);
            acc = vf(0.0f);
        }
    }
    sum += simd::hsum(acc);
#endif
    sum += bce_logits_sum_ref(dz ? dz + i : nullptr, z + i, t + i, n - i, n);  // the last n % W
    return sum / (double)n;
}

// --- Softmax cross-entropy on logits -------------------------------------------

// Softmax cross-entropy on logits z, (rows, cols), the log-sum-exp way.
// With m the row's max and d_j = z_j - m (rounded to float, <= 0):
// loss_r = logsumexp(z_r) * sum_j t_rj - sum_j t_rj z_rj
//        = log1p(s) * tsum - sum_j t_rj d_j,   s = sum_j e^d_j - 1
// dz_r   = (softmax(z_r) * tsum - t_r) / rows,  tsum = sum_j t_rj
// s leaves out the e^0 = 1 of the maximum (it sums e^d over d < 0, and
// counts the ties at d = 0), so a confident row's tiny loss keeps its digits
// (log of 1 + 1e-13 in double keeps ~3, of a float 1 + 1e-9 none), and
// nothing cancels: both terms are >= 0 for t >= 0; t = 0 skips its d, so a
// -inf logit off the target gives no 0 * -inf.
// Targets are rows t, or labels (t null). `prob`, when not null, receives
// softmax(z) (what a fused Softmax layer outputs).
inline double softmax_xent_loss_ref(float* dz, float* prob, const float* z, const float* t,
                                    const int32_t* labels, size_t rows, size_t cols) {
    double sum = 0.0;
    const float inv_rows = 1.0f / (float)rows;
    for (size_t r = 0; r < rows; ++r) {  // r: one sample; j: its classes
        const float* zr = z + r * cols;
        float m = zr[0];
        for (size_t j = 1; j < cols; ++j) m = zr[j] > m ? zr[j] : m;
        double small = 0.0, top = 0.0;  // e^d for d < 0; for d = 0 (a count of 1s)
        for (size_t j = 0; j < cols; ++j) {
            const float d = zr[j] - m;
            if (d < 0.0f) small += std::exp((double)d);
            else top += std::exp((double)d);  // 1, or NaN from a NaN logit
        }
        const double s = small + (top - 1.0);
        const float inv_se = (float)(1.0 / (1.0 + s));
        double tsum = 1.0, td = 0.0;
        if (t) {
            tsum = 0.0;
            for (size_t j = 0; j < cols; ++j) {
                const float tj = t[r * cols + j];
                tsum += tj;
                if (tj != 0.0f) td += (double)tj * (zr[j] - m);
            }
        } else {
            td = zr[labels[r]] - m;
        }
        sum += std::log1p(s) * tsum - td;
        for (size_t j = 0; j < cols; ++j) {
            float pj = std::exp(zr[j] - m) * inv_se;
            if (prob) prob[r * cols + j] = pj;
            if (dz) {
                float tj = t ? t[r * cols + j] : (labels[r] == (int32_t)j ? 1.0f : 0.0f);
                dz[r * cols + j] = (pj * (float)tsum - tj) * inv_rows;
            }
        }
    }
    return sum / (double)rows;
}

// The vector version: the same sums in float lanes (at most kSumVectors
// vectors at a time, then into double); the log1p runs on a vector of the s
// of kWidth rows at a time. Labels become the one-hot row they stand for (1
// where the column index equals the label), so labels and one-hot rows give
// identical results.
inline double softmax_xent_loss(float* dz, float* prob, const float* z, const float* t,
                                const int32_t* labels, size_t rows, size_t cols) {
#if NN_SIMD
    using simd::vf;
    const size_t W = simd::kWidth, full = cols - cols % W, rest = cols % W;
    const vf zero(0.0f), one(1.0f), inv_rows(1.0f / (float)rows), lane = simd::lane_index();
    double sum = 0.0;
    alignas(64) float blk_s[simd::kWidth] = {};  // s of the rows waiting for the log1p
    double blk_tsum[simd::kWidth], blk_td[simd::kWidth];
    size_t nb = 0;                               // rows waiting
    for (size_t r = 0; r < rows; ++r) {          // r: one sample; j: its classes by W
        const float* zr = z + r * cols;
        const float* tr = t ? t + r * cols : nullptr;
        const vf label(t ? -1.0f : (float)labels[r]);  // exact below 2^24 classes
        // e waits for the gradient pass in prob or dz (the last, partial vector in a register).
        float* er = prob ? prob + r * cols : (dz ? dz + r * cols : nullptr);
        // m: the row's max; the partial vector is padded with -inf, whose exp is 0.
        const vf zt = rest ? simd::load_partial(zr + full, rest, -INFINITY) : vf(-INFINITY);
        vf vm = zt;
        for (size_t j = 0; j < full; j += W) vm = xsimd::max(vm, vf::load_unaligned(zr + j));
        const vf m(simd::hmax(vm));
        // Sums of e below the max, of e at the max (ties: a count), of t and of t d.
        vf a_small(0.0f), a_top(0.0f), a_t(0.0f), a_td(0.0f);
        double s_small = 0.0, s_top = 0.0, tsum = 0.0, td = 0.0;
        for (size_t j = 0, v = 1; j < full; j += W, ++v) {
            vf d = vf::load_unaligned(zr + j) - m;
            vf e = simd::vexp(d);
            if (er) e.store_unaligned(er + j);
            auto below = d < zero;
            a_small += xsimd::select(below, e, zero);
            a_top += xsimd::select(below, zero, e);
            vf tv = tr ? vf::load_unaligned(tr + j)
                       : xsimd::select(lane + vf((float)j) == label, one, zero);
            a_t += tv;
            a_td += xsimd::select(tv != zero, tv * d, zero);  // 0 t, not 0 * -inf
            if (v % simd::kSumVectors == 0) {
                s_small += simd::hsum(a_small);
                s_top += simd::hsum(a_top);
                tsum += simd::hsum(a_t);
                td += simd::hsum(a_td);
                a_small = a_top = a_t = a_td = zero;
            }
        }
        vf et(0.0f), tt(0.0f);
        if (rest) {
            vf d = zt - m;
            et = simd::vexp(d);
            auto below = d < zero;
            a_small += xsimd::select(below, et, zero);
            a_top += xsimd::select(below, zero, et);
            tt = tr ? simd::load_partial(tr + full, rest, 0.0f)
                    : xsimd::select(lane + vf((float)full) == label, one, zero);
            a_t += tt;
            a_td += xsimd::select(tt != zero, tt * d, zero);
        }
        s_small += simd::hsum(a_small);
        s_top += simd::hsum(a_top);
        tsum += simd::hsum(a_t);
        td += simd::hsum(a_td);
        const double s = s_small + (s_top - 1.0);  // s_top >= 1: the max itself
        // Probabilities p = e / (1 + s) and dz = (p tsum - t) / rows.
        const vf inv_se((float)(1.0 / (1.0 + s))), vtsum((float)tsum);
        if (er) {
            for (size_t j = 0; j < full; j += W) {
                vf pj = vf::load_unaligned(er + j) * inv_se;
                if (prob) pj.store_unaligned(prob + r * cols + j);
                if (dz) {
                    vf tv = tr ? vf::load_unaligned(tr + j)
                               : xsimd::select(lane + vf((float)j) == label, one, zero);
                    ((pj * vtsum - tv) * inv_rows).store_unaligned(dz + r * cols + j);
                }
            }
        }
        if (rest) {
            vf pt = et * inv_se;
            if (prob) simd::store_partial(prob + r * cols + full, pt, rest);
            if (dz) simd::store_partial(dz + r * cols + full, (pt * vtsum - tt) * inv_rows, rest);
        }
        // The loss, once kWidth rows (or the last rows) have their s.
        blk_s[nb] = (float)s;
        blk_tsum[nb] = tsum;
        blk_td[nb] = td;
        if (++nb == W || r + 1 == rows) {
            alignas(64) float l1p[simd::kWidth];
            xsimd::log1p(vf::load_aligned(blk_s)).store_aligned(l1p);
            for (size_t k = 0; k < nb; ++k) sum += (double)l1p[k] * blk_tsum[k] - blk_td[k];  // k: rows of the block
            nb = 0;
        }
    }
    return sum / (double)rows;
#else
    return softmax_xent_loss_ref(dz, prob, z, t, labels, rows, cols);
#endif
}

// --- Categorical cross-entropy on probabilities -----------------------------------

// Categorical cross-entropy on probabilities (Keras): p clipped to
// [1e-7, 1 - 1e-7]; loss_r = -sum_j t_rj log p_rj; dp = -t / p / rows
// (zero where p was clipped, as the clip's gradient is zero there).
inline double categorical_xent_loss_ref(float* dp, const float* p, const float* t,
                                        const int32_t* labels, size_t rows, size_t cols) {
    const float lo = 1e-7f, hi = 1.0f - 1e-7f;
    double sum = 0.0;
    const float inv_rows = 1.0f / (float)rows;
    for (size_t r = 0; r < rows; ++r) {
        for (size_t j = 0; j < cols; ++j) {
            float tj = t ? t[r * cols + j] : (labels[r] == (int32_t)j ? 1.0f : 0.0f);
            float pj = p[r * cols + j];
            bool clipped = !(pj >= lo && pj <= hi);
            float pc = pj < lo ? lo : (pj > hi ? hi : pj);
            if (tj != 0.0f) sum -= (double)tj * std::log((double)pc);
            if (dp) dp[r * cols + j] = clipped ? 0.0f : -tj / pc * inv_rows;
        }
    }
    return sum / (double)rows;
}

#if NN_SIMD
// One vector of categorical_xent_loss: adds -t log(clip(p)) to acc, returns
// dp (labels arrive as their one-hot t).
inline simd::vf categorical_xent_step(simd::vf& acc, const simd::vf& pv, const simd::vf& tv,
                                      const simd::vf& inv_rows) {
    using simd::vf;
    const vf lo(1e-7f), hi(1.0f - 1e-7f), zero(0.0f);
    auto clipped = !((pv >= lo) & (pv <= hi));
    vf pc = xsimd::select(pv < lo, lo, xsimd::select(pv > hi, hi, pv));  // NaN stays NaN, as the ref
    acc -= xsimd::select(tv != zero, tv * xsimd::log(pc), zero);
    return xsimd::select(clipped, zero, simd::vdiv(-tv, pc) * inv_rows);
}
#endif

inline double categorical_xent_loss(float* dp, const float* p, const float* t,
                                    const int32_t* labels, size_t rows, size_t cols) {
#if NN_SIMD
    using simd::vf;
    const size_t W = simd::kWidth, full = cols - cols % W, rest = cols % W;
    const vf one(1.0f), zero(0.0f), inv_rows(1.0f / (float)rows), lane = simd::lane_index();
    double sum = 0.0;
    for (size_t r = 0; r < rows; ++r) {  // r: one sample; j: its classes by W
        const float* pr = p + r * cols;
        const float* tr = t ? t + r * cols : nullptr;
        float* dr = dp ? dp + r * cols : nullptr;
        const vf label(t ? -1.0f : (float)labels[r]);  // exact below 2^24 classes
        vf acc(0.0f);
        for (size_t j = 0, v = 1; j < full; j += W, ++v) {
            vf tv = tr ? vf::load_unaligned(tr + j) : xsimd::select(lane + vf((float)j) == label, one, zero);
            vf g = categorical_xent_step(acc, vf::load_unaligned(pr + j), tv, inv_rows);
            if (dr) g.store_unaligned(dr + j);
            if (v % simd::kSumVectors == 0) {  // bound the terms per float lane
                sum += simd::hsum(acc);
                acc = zero;
            }
        }
        if (rest) {  // the partial vector: p padded with 1/2 and t with 0 add nothing
            vf tv = tr ? simd::load_partial(tr + full, rest, 0.0f)
                       : xsimd::select(lane + vf((float)full) == label, one, zero);
            vf g = categorical_xent_step(acc, simd::load_partial(pr + full, rest, 0.5f), tv, inv_rows);
            if (dr) simd::store_partial(dr + full, g, rest);
        }
        sum += simd::hsum(acc);
    }
    return sum / (double)rows;
#else
    return categorical_xent_loss_ref(dp, p, t, labels, rows, cols);
#endif
}

}  // namespace nn
