// tests/layer_check.hpp — what the layer tests share: a layer's forward and
// backward against a double-precision reference and central differences of
// it (see the top of test_layers.cpp), and small helpers.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "nn.hpp"

namespace layer_check {

using DVec = std::vector<double>;
using FVec = std::vector<float>;

constexpr double kFdStep = 1e-6;   // central-difference step on the double reference
constexpr double kGradTol = 1e-4;  // float analytic vs double numerical, relative to max(1,|v|)

// The largest |a - ref| / max(floor, |ref|) over a tensor, and where it was.
struct MaxErr {
    double worst = 0;
    size_t at = 0;
    double a = 0, ref = 0;
    bool nan = false;
    void add(double value, double reference, double floor, size_t i) {
        if (std::isnan(value) || std::isnan(reference)) {
            nan = true;
            worst = INFINITY;
            at = i;
            return;
        }
        double scale = std::fabs(reference) > floor ? std::fabs(reference) : floor;
        double e = std::fabs(value - reference) / scale;
        if (e > worst) {
            worst = e;
            at = i;
            a = value;
            ref = reference;
        }
    }
    std::string where(const char* what) const {
        char buf[200];
        std::snprintf(buf, sizeof buf, "%s: worst at [%zu]: got %.9g, reference %.9g%s", what, at, a, ref,
                      nan ? " (NaN seen)" : "");
        return buf;
    }
};

inline FVec uniform_vec(size_t n, nn::Rng& rng, float lo, float hi) {
    FVec v(n);
    for (auto& e : v) e = rng.uniform(lo, hi);
    return v;
}

// Values with lo <= |v| < hi and a random sign: away from the ReLU kink.
inline FVec away_from_zero(size_t n, nn::Rng& rng, float lo, float hi) {
    FVec v(n);
    for (auto& e : v) e = (rng.uniform() < 0.5f ? -1.0f : 1.0f) * rng.uniform(lo, hi);
    return v;
}

inline DVec to_double(const float* p, size_t n) { return DVec(p, p + n); }

inline bool contains(const nn::Status& st, const char* needle) { return std::strstr(st.message(), needle) != nullptr; }

// y = f(x; params), all in double.
using RefFn = std::function<void(const DVec& x, const std::vector<DVec>& params, DVec* y)>;

// Optional extra term of the loss that depends on the parameters only (the
// L1/L2 penalty); the library side then also calls regularization_backward.
using PenaltyFn = std::function<double(const std::vector<DVec>& params)>;

// Builds nothing: L must be built. Runs forward (Train) and backward on x with
// a random upstream gradient r, then compares y, dx and every parameter
// gradient with the double reference and its central differences.
inline void check_layer_against_reference(nn::Layer& L, int B, const FVec& x_in, const RefFn& ref, uint64_t seed,
                                   const PenaltyFn& penalty = nullptr) {
    ASSERT_TRUE(L.built);
    const size_t n_in = (size_t)B * L.in_shape.numel(), n_out = (size_t)B * L.out_shape.numel();
    ASSERT_EQ(x_in.size(), n_in);
    FVec x = x_in, y(n_out, -12345.0f), dx(n_in, 1e30f);
    nn::Rng rng(seed);
    FVec r = uniform_vec(n_out, rng, -1.0f, 1.0f);
    nn::Tensor xt = nn::tensor_view(x.data(), nn::batched(L.in_shape, B));
    nn::Tensor yt = nn::tensor_view(y.data(), nn::batched(L.out_shape, B));
    nn::Tensor dxt = nn::tensor_view(dx.data(), nn::batched(L.in_shape, B));
    nn::Tensor rt = nn::tensor_view(r.data(), nn::batched(L.out_shape, B));

    nn::zero_grad(L);
    nn::Status st = nn::forward(L, yt, xt, nn::Mode::Train);
    ASSERT_TRUE(st.ok()) << st.message();
    st = nn::backward(L, dxt, rt, xt, yt);
    ASSERT_TRUE(st.ok()) << st.message();
    if (penalty) nn::regularization_backward(L);

    // The reference reads the layer's float parameters and input.
    DVec xd = to_double(x.data(), n_in);
    std::vector<DVec> pd;
    for (int k = 0; k < L.n_params; ++k) pd.push_back(to_double(L.params[k].data, L.params[k].numel()));
    DVec yd;
    ref(xd, pd, &yd);
    ASSERT_EQ(yd.size(), n_out);
    MaxErr ey;
    for (size_t i = 0; i < n_out; ++i) ey.add(y[i], yd[i], 1.0, i);
    EXPECT_LE(ey.worst, 1e-5) << ey.where("forward output y");

    auto probe = [&](const DVec& xv, const std::vector<DVec>& pv) {
        DVec yv;
        ref(xv, pv, &yv);
        double s = 0;
        for (size_t i = 0; i < n_out; ++i) s += yv[i] * r[i];
        if (penalty) s += penalty(pv);
        return s;
    };
    MaxErr edx;
    for (size_t i = 0; i < n_in; ++i) {
        const double old = xd[i];
        xd[i] = old + kFdStep;
        const double lp = probe(xd, pd);
        xd[i] = old - kFdStep;
        const double lm = probe(xd, pd);
        xd[i] = old;
        edx.add(dx[i], (lp - lm) / (2 * kFdStep), 1.0, i);
    }
    EXPECT_LE(edx.worst, kGradTol) << edx.where("dx");
    for (int k = 0; k < L.n_params; ++k) {
        if (L.buffer[k]) continue;  // running statistics: no gradient
        MaxErr ep;
        for (size_t i = 0; i < pd[k].size(); ++i) {
            const double old = pd[k][i];
            pd[k][i] = old + kFdStep;
            const double lp = probe(xd, pd);
            pd[k][i] = old - kFdStep;
            const double lm = probe(xd, pd);
            pd[k][i] = old;
            ep.add(L.grads[k].data[i], (lp - lm) / (2 * kFdStep), 1.0, i);
        }
        EXPECT_LE(ep.worst, kGradTol) << ep.where(L.param_name[k]);
    }
}

struct Built {
    nn::Arena arena;
    nn::Layer L;
    Built(nn::Layer layer, const nn::Shape& in, int max_batch, uint64_t seed = 1) : L(layer) {
        nn::Status st = arena.reserve(1 << 22);
        EXPECT_TRUE(st.ok()) << st.message();
        st = nn::build(L, in, max_batch, arena, seed);
        EXPECT_TRUE(st.ok()) << st.message();
    }
};

}  // namespace layer_check
