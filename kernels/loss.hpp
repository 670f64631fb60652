// kernels/loss.hpp — loss values and their gradients with respect to the
// prediction, in one pass.
//
// Contract for every kernel here: p (the prediction) and t (the target) are
// (rows, cols) row-major; the return value is the mean loss (the reduction
// PyTorch uses by default, summed in double); dp, when not null, receives
// dLoss/dp of that mean (written, not accumulated). Classes come either as
// one-hot/soft rows t or as integer labels (t null); labels are checked by the
// caller.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace nn {

// mean((p - t)^2) over all elements; dp = 2 (p - t) / n
inline double mse_loss(float* dp, const float* p, const float* t, size_t n) {
    double sum = 0.0;
    const float scale = 2.0f / (float)n;
    for (size_t i = 0; i < n; ++i) {
        float d = p[i] - t[i];
        sum += (double)d * d;
        if (dp) dp[i] = scale * d;
    }
    return sum / (double)n;
}

// mean |p - t|; dp = sign(p - t) / n, 0 where p == t (as torch.sign)
inline double mae_loss(float* dp, const float* p, const float* t, size_t n) {
    double sum = 0.0;
    const float inv = 1.0f / (float)n;
    for (size_t i = 0; i < n; ++i) {
        float d = p[i] - t[i];
        sum += std::fabs((double)d);
        if (dp) dp[i] = d > 0.0f ? inv : (d < 0.0f ? -inv : 0.0f);
    }
    return sum / (double)n;
}

// Huber with threshold delta: 0.5 d^2 where |d| <= delta, else
// delta (|d| - 0.5 delta); the gradient is d, clipped to [-delta, delta].
inline double huber_loss(float* dp, const float* p, const float* t, float delta, size_t n) {
    double sum = 0.0;
    const float inv = 1.0f / (float)n;
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
    return sum / (double)n;
}

// Binary cross-entropy on probabilities, PyTorch's BCELoss: each log is
// clamped at -100 so p = 0 or 1 gives a large finite loss, and the gradient
// divides by max(p (1 - p), 1e-12).
inline double bce_loss(float* dp, const float* p, const float* t, size_t n) {
    double sum = 0.0;
    const float inv = 1.0f / (float)n;
    for (size_t i = 0; i < n; ++i) {
        double lp = std::log((double)p[i]), lq = std::log(1.0 - (double)p[i]);
        if (!(lp >= -100.0)) lp = -100.0;
        if (!(lq >= -100.0)) lq = -100.0;
        sum -= (double)t[i] * lp + (1.0 - (double)t[i]) * lq;
        if (dp) {
            float denom = p[i] * (1.0f - p[i]);
            dp[i] = (p[i] - t[i]) / (denom > 1e-12f ? denom : 1e-12f) * inv;
        }
    }
    return sum / (double)n;
}

// Binary cross-entropy on logits z, stable for any z:
// loss = max(z, 0) - z t + log(1 + e^-|z|);  dz = (sigmoid(z) - t) / n
inline double bce_logits_loss(float* dz, const float* z, const float* t, size_t n) {
    double sum = 0.0;
    const float inv = 1.0f / (float)n;
    for (size_t i = 0; i < n; ++i) {
        double zi = z[i];
        sum += (zi > 0.0 ? zi : 0.0) - zi * t[i] + std::log1p(std::exp(-std::fabs(zi)));
        if (dz) {
            float e = std::exp(-std::fabs(z[i]));
            float s = z[i] >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
            dz[i] = (s - t[i]) * inv;
        }
    }
    return sum / (double)n;
}

// Softmax cross-entropy on logits z, (rows, cols), the log-sum-exp way:
// loss_r = logsumexp(z_r) * sum_j t_rj - sum_j t_rj z_rj
// dz_r   = (softmax(z_r) * sum_j t_rj - t_r) / rows
// Targets are rows t, or labels (t null). `prob`, when not null, receives
// softmax(z) (what a fused Softmax layer outputs).
inline double softmax_xent_loss(float* dz, float* prob, const float* z, const float* t,
                                const int32_t* labels, size_t rows, size_t cols) {
    double sum = 0.0;
    const float inv_rows = 1.0f / (float)rows;
    for (size_t r = 0; r < rows; ++r) {  // r: one sample; j: its classes
        const float* zr = z + r * cols;
        float m = zr[0];
        for (size_t j = 1; j < cols; ++j) m = zr[j] > m ? zr[j] : m;
        double se = 0.0;
        for (size_t j = 0; j < cols; ++j) se += std::exp((double)(zr[j] - m));
        const double lse = (double)m + std::log(se);
        const float inv_se = (float)(1.0 / se);
        double tsum = 1.0, tz = 0.0;
        if (t) {
            tsum = 0.0;
            for (size_t j = 0; j < cols; ++j) {
                tsum += t[r * cols + j];
                tz += (double)t[r * cols + j] * zr[j];
            }
        } else {
            tz = zr[labels[r]];
        }
        sum += lse * tsum - tz;
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

// Categorical cross-entropy on probabilities (Keras): p clipped to
// [1e-7, 1 - 1e-7]; loss_r = -sum_j t_rj log p_rj; dp = -t / p / rows
// (zero where p was clipped, as the clip's gradient is zero there).
inline double categorical_xent_loss(float* dp, const float* p, const float* t,
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

}  // namespace nn
