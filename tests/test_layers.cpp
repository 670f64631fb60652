// tests/test_layers.cpp — layers, losses, activation kernels and the public
// gradient check, each against an independent double-precision reference.
//
// How the gradient tests work: for every layer the test holds its own forward
// pass written in double (reading the layer's float parameters), and takes
// central differences of L = sum(y * r) on that double reference (h = 1e-6:
// truncation ~h^2, rounding ~1e-16 / h, both far below 1e-8). Those numerical
// gradients are compared with the library's float analytic backward. The only
// difference left is float versus double arithmetic over a handful of terms,
// so 1e-4, relative to max(1, |value|), leaves a wide margin while a wrong
// formula (a missing factor, a transposed weight, a lost term) is off by O(1).
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/activation.hpp"
#include "kernels/gemm.hpp"
#include "nn.hpp"
#include "tests/layer_check.hpp"

namespace {

using nn::Act;
using namespace layer_check;

// --- double-precision references ------------------------------------------------

// Activation in place on (rows, cols), in double.
void act_ref(Act act, double slope, DVec& v, size_t rows, size_t cols) {
    switch (act) {
        case Act::None: break;
        case Act::ReLU:
            for (auto& e : v) e = e > 0 ? e : 0.0;
            break;
        case Act::LeakyReLU:
            for (auto& e : v) e = e > 0 ? e : slope * e;
            break;
        case Act::Sigmoid:
            for (auto& e : v) e = 1.0 / (1.0 + std::exp(-e));
            break;
        case Act::Tanh:
            for (auto& e : v) e = std::tanh(e);
            break;
        case Act::Softmax:
            for (size_t r = 0; r < rows; ++r) {
                double* row = v.data() + r * cols;
                double m = row[0];
                for (size_t j = 1; j < cols; ++j) m = std::max(m, row[j]);
                double s = 0;
                for (size_t j = 0; j < cols; ++j) s += std::exp(row[j] - m);
                for (size_t j = 0; j < cols; ++j) row[j] = std::exp(row[j] - m) / s;
            }
            break;
    }
}

// y = f(x; params), all in double.
// Dense: z = x W^T + b, W is (out, in) as in PyTorch, then the activation.
RefFn dense_ref(int in, int out, bool bias, Act act, double slope) {
    return [=](const DVec& x, const std::vector<DVec>& p, DVec* y) {
        const size_t B = x.size() / in;
        y->assign(B * out, 0.0);
        for (size_t b = 0; b < B; ++b)
            for (int j = 0; j < out; ++j) {
                double z = bias ? p[1][j] : 0.0;
                for (int i = 0; i < in; ++i) z += x[b * in + i] * p[0][(size_t)j * in + i];
                (*y)[b * out + j] = z;
            }
        act_ref(act, slope, *y, B, out);
    };
}

// A parameter-free activation over rows of `cols` values.
RefFn act_layer_ref(Act act, double slope, size_t cols) {
    return [=](const DVec& x, const std::vector<DVec>&, DVec* y) {
        *y = x;
        act_ref(act, slope, *y, x.size() / cols, cols);
    };
}

// x for a Dense layer whose pre-activation stays at least `gap` from 0 (so a
// ReLU kink never falls inside the finite-difference step).
FVec dense_input_away_from_kink(const nn::Layer& L, int B, nn::Rng& rng, double gap) {
    const int in = L.in_features, out = L.units;
    for (int attempt = 0; attempt < 1000; ++attempt) {
        FVec x = uniform_vec((size_t)B * in, rng, -1.0f, 1.0f);
        bool ok = true;
        for (int b = 0; b < B && ok; ++b)
            for (int j = 0; j < out && ok; ++j) {
                double z = L.use_bias ? L.params[1].data[j] : 0.0;
                for (int i = 0; i < in; ++i) z += (double)x[(size_t)b * in + i] * L.params[0].data[(size_t)j * in + i];
                ok = std::fabs(z) > gap;
            }
        if (ok) return x;
    }
    ADD_FAILURE() << "no input with every pre-activation away from 0";
    return FVec((size_t)B * in, 0.5f);
}

// =============================================================================
// 1. Gradients against the double reference
// =============================================================================

struct DenseCase {
    Act act;
    float slope;
    const char* name;
};

class LayerGradDense : public ::testing::TestWithParam<DenseCase> {};

TEST_P(LayerGradDense, MatchesDoubleReference) {
    const DenseCase c = GetParam();
    const int B = 3, in = 5, units = 7;
    nn::Layer proto = nn::Dense(in, units, c.act);
    proto.leaky_slope = c.slope;
    Built b(proto, nn::make_shape({in}), /*max_batch=*/4, /*seed=*/11);
    ASSERT_EQ(b.L.n_params, 2);
    nn::Rng rng(101);
    FVec x = dense_input_away_from_kink(b.L, B, rng, 1e-3);
    check_layer_against_reference(b.L, B, x, dense_ref(in, units, true, c.act, c.slope), 202);
}

INSTANTIATE_TEST_SUITE_P(Acts, LayerGradDense,
                         ::testing::Values(DenseCase{Act::None, 0.01f, "None"}, DenseCase{Act::ReLU, 0.01f, "ReLU"},
                                           DenseCase{Act::LeakyReLU, 0.1f, "LeakyReLU"},
                                           DenseCase{Act::Sigmoid, 0.01f, "Sigmoid"},
                                           DenseCase{Act::Tanh, 0.01f, "Tanh"},
                                           DenseCase{Act::Softmax, 0.01f, "Softmax"}),
                         [](const ::testing::TestParamInfo<DenseCase>& i) { return std::string(i.param.name); });

// A batch small against the layer: on AVX-512 the forward is computed as
// y^T = W x^T and stored transposed (kernels/gemm.hpp, 4b). Every activation
// through that path, against the same double reference.
TEST_P(LayerGradDense, TransposedForwardMatchesDoubleReference) {
    const DenseCase c = GetParam();
    const int B = 3, in = 40, units = 37;
#if NN_SIMD && defined(__AVX512F__)
    ASSERT_TRUE(nn::gemm_dense_forward_transposed(B, in, units));
#endif
    nn::Layer proto = nn::Dense(in, units, c.act);
    proto.leaky_slope = c.slope;
    Built b(proto, nn::make_shape({in}), /*max_batch=*/4, /*seed=*/13);
    nn::Rng rng(103);
    FVec x = dense_input_away_from_kink(b.L, B, rng, 1e-3);
    check_layer_against_reference(b.L, B, x, dense_ref(in, units, true, c.act, c.slope), 204);
}

// A long input: on AVX-512 the forward y = x W^T runs in the dot-product
// tiles of kernels/gemm.hpp 3c (gemm_use_dot), with bias, activation and
// softmax applied after them. Every activation, against the double reference.
TEST_P(LayerGradDense, LongInputForwardMatchesDoubleReference) {
    const DenseCase c = GetParam();
    const int B = 3, in = nn::kGemmDotWideK + 17, units = 21;
#if NN_SIMD && defined(__AVX512F__)
    ASSERT_TRUE(nn::gemm_use_dot(false, true, B, units, in));
    ASSERT_FALSE(nn::gemm_dense_forward_transposed(B, in, units));
#endif
    nn::Layer proto = nn::Dense(in, units, c.act);
    proto.leaky_slope = c.slope;
    Built b(proto, nn::make_shape({in}), /*max_batch=*/4, /*seed=*/17);
    nn::Rng rng(107);
    FVec x = dense_input_away_from_kink(b.L, B, rng, 1e-3);
    check_layer_against_reference(b.L, B, x, dense_ref(in, units, true, c.act, c.slope), 208);
}

TEST(LayerGrad, DenseWithoutBias) {
    const int B = 3, in = 5, units = 7;
    Built b(nn::Dense(in, units, Act::Tanh, /*use_bias=*/false), nn::make_shape({in}), 3, 5);
    EXPECT_EQ(b.L.n_params, 1);
    EXPECT_EQ(b.L.param_count(), (size_t)in * units);
    nn::Rng rng(7);
    check_layer_against_reference(b.L, B, uniform_vec((size_t)B * in, rng, -1, 1),
                                  dense_ref(in, units, false, Act::Tanh, 0), 8);
}

TEST(LayerGrad, DenseLargerOddShape) {
    // Sizes past a SIMD width and a GEMM micro-tile, still odd.
    const int B = 13, in = 37, units = 19;
    Built b(nn::Dense(in, units, Act::Sigmoid), nn::make_shape({in}), 16, 3);
    nn::Rng rng(9);
    check_layer_against_reference(b.L, B, uniform_vec((size_t)B * in, rng, -1, 1),
                                  dense_ref(in, units, true, Act::Sigmoid, 0), 10);
}

TEST(LayerGrad, DenseRegularization) {
    const int B = 3, in = 5, units = 7;
    const double l1 = 0.03, l2 = 0.05;
    nn::Layer proto = nn::Dense(in, units, Act::Tanh);
    proto.l1 = (float)l1;
    proto.l2 = (float)l2;
    Built b(proto, nn::make_shape({in}), 3, 21);
    // Keep every weight away from 0, where |w| has its kink.
    float* w = b.L.weight().data;
    for (size_t i = 0; i < b.L.weight().numel(); ++i)
        if (std::fabs(w[i]) < 1e-2f) w[i] = w[i] < 0 ? -0.05f : 0.05f;
    auto penalty = [&](const std::vector<DVec>& p) {
        double s = 0;
        for (double v : p[0]) s += (double)(float)l1 * std::fabs(v) + (double)(float)l2 * v * v;
        return s;  // bias (p[1]) is not regularised
    };
    std::vector<DVec> pd{to_double(w, b.L.weight().numel()), to_double(b.L.bias().data, units)};
    const double reg = penalty(pd);
    EXPECT_NEAR(nn::regularization_loss(b.L), reg, 1e-6 * reg);

    // regularization_backward alone, from zeroed gradients: l1 sign(w) + 2 l2 w.
    nn::zero_grad(b.L);
    nn::regularization_backward(b.L);
    MaxErr e;
    for (size_t i = 0; i < pd[0].size(); ++i) {
        double old = pd[0][i];
        pd[0][i] = old + kFdStep;
        double lp = penalty(pd);
        pd[0][i] = old - kFdStep;
        double lm = penalty(pd);
        pd[0][i] = old;
        e.add(b.L.weight_grad().data[i], (lp - lm) / (2 * kFdStep), 1e-3, i);
    }
    EXPECT_LE(e.worst, kGradTol) << e.where("regularization gradient");
    for (int j = 0; j < units; ++j) EXPECT_EQ(b.L.bias_grad().data[j], 0.0f) << "bias is not regularised";

    // With the data term: backward + regularization_backward = d(sum y r + penalty).
    nn::Rng rng(22);
    check_layer_against_reference(b.L, B, uniform_vec((size_t)B * in, rng, -1, 1),
                                  dense_ref(in, units, true, Act::Tanh, 0), 23, penalty);
}

TEST(LayerGrad, RegularizationOffIsZero) {
    Built b(nn::Dense(5, 7), nn::make_shape({5}), 2);
    EXPECT_EQ(nn::regularization_loss(b.L), 0.0f);
    nn::regularization_backward(b.L);
    for (size_t i = 0; i < b.L.weight_grad().numel(); ++i) ASSERT_EQ(b.L.weight_grad().data[i], 0.0f);
}

struct ActCase {
    Act act;
    float slope;
    const char* name;
};

nn::Layer make_act_layer(const ActCase& c) {
    switch (c.act) {
        case Act::ReLU: return nn::ReLU();
        case Act::LeakyReLU: return nn::LeakyReLU(c.slope);
        case Act::Sigmoid: return nn::Sigmoid();
        case Act::Tanh: return nn::Tanh();
        case Act::Softmax: return nn::Softmax();
        case Act::None: break;
    }
    return nn::Linear();
}

class LayerGradActivation : public ::testing::TestWithParam<ActCase> {};

TEST_P(LayerGradActivation, MatchesDoubleReference) {
    const ActCase c = GetParam();
    const int B = 3, cols = 7;
    Built b(make_act_layer(c), nn::make_shape({cols}), 3);
    EXPECT_EQ(b.L.n_params, 0);
    EXPECT_EQ(b.L.out_shape, nn::make_shape({cols}));
    nn::Rng rng(31);
    FVec x = away_from_zero((size_t)B * cols, rng, 0.01f, 2.5f);
    check_layer_against_reference(b.L, B, x, act_layer_ref(c.act, c.slope, cols), 32);
}

TEST_P(LayerGradActivation, MultiDimSampleKeepsShape) {
    // Elementwise on a (2, 3, 4) sample; softmax runs over the whole sample.
    const ActCase c = GetParam();
    const int B = 3;
    Built b(make_act_layer(c), nn::make_shape({2, 3, 4}), 3);
    EXPECT_EQ(b.L.out_shape, nn::make_shape({2, 3, 4}));
    nn::Rng rng(41);
    FVec x = away_from_zero((size_t)B * 24, rng, 0.01f, 2.5f);
    check_layer_against_reference(b.L, B, x, act_layer_ref(c.act, c.slope, 24), 42);
}

INSTANTIATE_TEST_SUITE_P(Acts, LayerGradActivation,
                         ::testing::Values(ActCase{Act::ReLU, 0, "ReLU"}, ActCase{Act::LeakyReLU, 0.1f, "LeakyReLU"},
                                           ActCase{Act::Sigmoid, 0, "Sigmoid"}, ActCase{Act::Tanh, 0, "Tanh"},
                                           ActCase{Act::Softmax, 0, "Softmax"}, ActCase{Act::None, 0, "Linear"}),
                         [](const ::testing::TestParamInfo<ActCase>& i) { return std::string(i.param.name); });

TEST(LayerGrad, FlattenIsIdentityOnValues) {
    const int B = 3;
    Built b(nn::Flatten(), nn::make_shape({2, 3, 4}), 3);
    EXPECT_EQ(b.L.out_shape, nn::make_shape({24}));
    nn::Rng rng(51);
    FVec x = uniform_vec((size_t)B * 24, rng, -2, 2);
    check_layer_against_reference(b.L, B, x, [](const DVec& xv, const std::vector<DVec>&, DVec* y) { *y = xv; },
                                  52);
    // Exactly: y = x and dx = dy, element for element.
    FVec y(x.size()), dy = uniform_vec(x.size(), rng, -1, 1), dx(x.size(), 9.0f);
    nn::Tensor xt = nn::tensor_view(x.data(), {B, 2, 3, 4}), yt = nn::tensor_view(y.data(), {B, 24});
    ASSERT_TRUE(nn::forward(b.L, yt, xt, nn::Mode::Eval).ok());
    ASSERT_TRUE(nn::backward(b.L, nn::tensor_view(dx.data(), {B, 2, 3, 4}), nn::tensor_view(dy.data(), {B, 24}), xt,
                             yt)
                    .ok());
    EXPECT_EQ(0, std::memcmp(y.data(), x.data(), x.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(dx.data(), dy.data(), x.size() * sizeof(float)));
}

// --- Dropout --------------------------------------------------------------------

TEST(LayerDropout, TrainMaskFixedAfterForward) {
    const int B = 5, n = 40;
    const float p = 0.3f;
    const double keep = 1.0 / (1.0 - (double)p);
    Built b(nn::Dropout(p), nn::make_shape({n}), B, 77);
    nn::Rng rng(78);
    FVec x = away_from_zero((size_t)B * n, rng, 0.1f, 2.0f), y(x.size()), dy = uniform_vec(x.size(), rng, -1, 1),
         dx(x.size(), 1e30f);
    nn::Tensor xt = nn::tensor_view(x.data(), {B, n}), yt = nn::tensor_view(y.data(), {B, n});
    nn::Tensor dxt = nn::tensor_view(dx.data(), {B, n}), dyt = nn::tensor_view(dy.data(), {B, n});
    ASSERT_TRUE(nn::forward(b.L, yt, xt, nn::Mode::Train).ok());
    // The mask read off the output alone: y / x is 0 or 1/(1-p).
    FVec mask(x.size());
    int zeros = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        double m = (double)y[i] / x[i];
        if (y[i] == 0.0f) {
            mask[i] = 0;
            ++zeros;
        } else {
            ASSERT_NEAR(m, keep, 1e-6 * keep) << "element " << i;
            mask[i] = (float)m;
        }
    }
    EXPECT_GT(zeros, 0);
    EXPECT_LT(zeros, (int)x.size());
    // And the layer's own mask holds exactly 0 or 1/(1-p), matching y.
    for (size_t i = 0; i < x.size(); ++i) {
        float m = b.L.mask[i];
        ASSERT_TRUE(m == 0.0f || std::fabs(m - keep) <= 1e-6 * keep) << "mask[" << i << "] = " << m;
        ASSERT_EQ(m == 0.0f, y[i] == 0.0f);
        ASSERT_EQ(y[i], x[i] * m);
    }
    // dx = dy * mask, twice (the mask is not redrawn by backward).
    for (int pass = 0; pass < 2; ++pass) {
        std::fill(dx.begin(), dx.end(), 1e30f);
        ASSERT_TRUE(nn::backward(b.L, dxt, dyt, xt, yt).ok());
        MaxErr e;
        for (size_t i = 0; i < x.size(); ++i) e.add(dx[i], (double)dy[i] * mask[i], 1e-3, i);
        EXPECT_LE(e.worst, 1e-6) << e.where("dropout dx") << " pass " << pass;
        for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(dx[i], dy[i] * b.L.mask[i]);
    }
}

TEST(LayerDropout, ZeroFractionWithinBinomialBound) {
    const int B = 100, n = 1000;
    const double N = (double)B * n;
    for (float p : {0.1f, 0.3f, 0.5f, 0.8f}) {
        Built b(nn::Dropout(p), nn::make_shape({n}), B, 1234);
        FVec x((size_t)N, 1.0f), y((size_t)N), y2((size_t)N);
        nn::Tensor xt = nn::tensor_view(x.data(), {B, n});
        ASSERT_TRUE(nn::forward(b.L, nn::tensor_view(y.data(), {B, n}), xt, nn::Mode::Train).ok());
        size_t zeros = 0;
        for (float v : y) zeros += v == 0.0f;
        const double frac = zeros / N, sigma = std::sqrt((double)p * (1 - p) / N);
        EXPECT_NEAR(frac, (double)p, 5 * sigma) << "p = " << p;  // 5 sigma: ~6e-7 false alarm
        // A second forward draws a fresh mask.
        ASSERT_TRUE(nn::forward(b.L, nn::tensor_view(y2.data(), {B, n}), xt, nn::Mode::Train).ok());
        size_t differ = 0;
        for (size_t i = 0; i < y.size(); ++i) differ += y[i] != y2[i];
        // Two independent masks differ in 2 p (1 - p) of the positions.
        EXPECT_NEAR(differ / N, 2.0 * p * (1 - p), 5 * std::sqrt(2.0 * p * (1 - p) / N)) << "p = " << p;
    }
}

TEST(LayerDropout, EvalIsIdentity) {
    const int B = 3, n = 17;
    Built b(nn::Dropout(0.5f), nn::make_shape({n}), B, 5);
    nn::Rng rng(6);
    FVec x = uniform_vec(B * n, rng, -1, 1), y(x.size()), dy = uniform_vec(x.size(), rng, -1, 1), dx(x.size());
    nn::Tensor xt = nn::tensor_view(x.data(), {B, n}), yt = nn::tensor_view(y.data(), {B, n});
    // A Train forward first: Eval afterwards must not reuse its mask.
    ASSERT_TRUE(nn::forward(b.L, yt, xt, nn::Mode::Train).ok());
    ASSERT_TRUE(nn::forward(b.L, yt, xt, nn::Mode::Eval).ok());
    EXPECT_EQ(0, std::memcmp(y.data(), x.data(), x.size() * sizeof(float)));
    ASSERT_TRUE(nn::backward(b.L, nn::tensor_view(dx.data(), {B, n}), nn::tensor_view(dy.data(), {B, n}), xt, yt).ok());
    EXPECT_EQ(0, std::memcmp(dx.data(), dy.data(), x.size() * sizeof(float)));
}

TEST(LayerDropout, RateZeroTrainIsIdentity) {
    const int B = 2, n = 9;
    Built b(nn::Dropout(0.0f), nn::make_shape({n}), B);
    nn::Rng rng(3);
    FVec x = uniform_vec(B * n, rng, -1, 1), y(x.size());
    ASSERT_TRUE(nn::forward(b.L, nn::tensor_view(y.data(), {B, n}), nn::tensor_view(x.data(), {B, n}), nn::Mode::Train)
                    .ok());
    EXPECT_EQ(0, std::memcmp(y.data(), x.data(), x.size() * sizeof(float)));
}

// =============================================================================
// 2. Backward accumulates into parameters, writes dx
// =============================================================================

TEST(LayerAccum, BackwardTwiceDoublesParamGradsAndWritesDx) {
    const int B = 3, in = 5, units = 7;
    Built b(nn::Dense(in, units, Act::Tanh), nn::make_shape({in}), B, 4);
    nn::Rng rng(5);
    FVec x = uniform_vec(B * in, rng, -1, 1), y(B * units), r = uniform_vec(B * units, rng, -1, 1);
    FVec dx1(B * in, 1e30f), dx2(B * in, -7.0f);
    nn::Tensor xt = nn::tensor_view(x.data(), {B, in}), yt = nn::tensor_view(y.data(), {B, units});
    nn::Tensor rt = nn::tensor_view(r.data(), {B, units});
    ASSERT_TRUE(nn::forward(b.L, yt, xt, nn::Mode::Train).ok());
    nn::zero_grad(b.L);
    ASSERT_TRUE(nn::backward(b.L, nn::tensor_view(dx1.data(), {B, in}), rt, xt, yt).ok());
    FVec gw1(b.L.weight_grad().data, b.L.weight_grad().data + in * units);
    FVec gb1(b.L.bias_grad().data, b.L.bias_grad().data + units);
    double norm = 0;
    for (float g : gw1) norm += std::fabs(g);
    ASSERT_GT(norm, 1e-3) << "gradients are trivially zero";
    ASSERT_TRUE(nn::backward(b.L, nn::tensor_view(dx2.data(), {B, in}), rt, xt, yt).ok());
    for (size_t i = 0; i < gw1.size(); ++i)
        ASSERT_NEAR(b.L.weight_grad().data[i], 2.0f * gw1[i], 1e-6 * std::fabs(gw1[i]) + 1e-7) << "weight " << i;
    for (int j = 0; j < units; ++j)
        ASSERT_NEAR(b.L.bias_grad().data[j], 2.0f * gb1[j], 1e-6 * std::fabs(gb1[j]) + 1e-7) << "bias " << j;
    // dx is written: the second call gives the same dx (not 2x, not garbage+dx).
    for (int i = 0; i < B * in; ++i) {
        ASSERT_LT(std::fabs(dx1[i]), 1e3f) << "dx not written at " << i;
        ASSERT_EQ(dx1[i], dx2[i]) << "dx accumulated at " << i;
    }
    // A backward without dx still accumulates parameter gradients.
    nn::Tensor no_dx;
    no_dx.shape = nn::make_shape({B, in});
    ASSERT_TRUE(nn::backward(b.L, no_dx, rt, xt, yt).ok());
    for (size_t i = 0; i < gw1.size(); ++i)
        ASSERT_NEAR(b.L.weight_grad().data[i], 3.0f * gw1[i], 1e-6 * std::fabs(gw1[i]) + 1e-7) << "weight " << i;
    nn::zero_grad(b.L);
    for (size_t i = 0; i < gw1.size(); ++i) ASSERT_EQ(b.L.weight_grad().data[i], 0.0f);
    for (int j = 0; j < units; ++j) ASSERT_EQ(b.L.bias_grad().data[j], 0.0f);
    // After zero_grad, one backward gives the first gradients again.
    ASSERT_TRUE(nn::backward(b.L, nn::tensor_view(dx2.data(), {B, in}), rt, xt, yt).ok());
    for (size_t i = 0; i < gw1.size(); ++i) ASSERT_EQ(b.L.weight_grad().data[i], gw1[i]);
}

TEST(LayerAccum, ActivationBackwardWritesDx) {
    const int B = 3, n = 11;
    Built b(nn::Sigmoid(), nn::make_shape({n}), B);
    nn::Rng rng(8);
    FVec x = uniform_vec(B * n, rng, -2, 2), y(x.size()), dy = uniform_vec(x.size(), rng, -1, 1);
    FVec dx1(x.size(), 0.0f), dx2(x.size(), 5e5f);
    nn::Tensor xt = nn::tensor_view(x.data(), {B, n}), yt = nn::tensor_view(y.data(), {B, n});
    ASSERT_TRUE(nn::forward(b.L, yt, xt, nn::Mode::Train).ok());
    ASSERT_TRUE(nn::backward(b.L, nn::tensor_view(dx1.data(), {B, n}), nn::tensor_view(dy.data(), {B, n}), xt, yt).ok());
    ASSERT_TRUE(nn::backward(b.L, nn::tensor_view(dx2.data(), {B, n}), nn::tensor_view(dy.data(), {B, n}), xt, yt).ok());
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(dx1[i], dx2[i]) << i;
}

// =============================================================================
// 3. Losses
// =============================================================================

using LossRef = std::function<double(const DVec& p, const DVec& t)>;  // mean loss, in double

// Runs the library's loss on (rows, cols) float p and t, compares the value
// with ref and dL/dp with central differences of ref.
void check_loss(const nn::Loss& loss, int rows, int cols, const FVec& p, const FVec& t, const LossRef& ref,
                const char* what) {
    SCOPED_TRACE(what);
    FVec dp(p.size(), 1e30f);
    FVec pc = p;
    float value = -1;
    nn::Target tg;
    tg.values = t.data();
    nn::Status st = nn::loss_forward_backward(loss, nn::tensor_view(dp.data(), {rows, cols}),
                                              nn::tensor_view(pc.data(), {rows, cols}), tg, &value);
    ASSERT_TRUE(st.ok()) << st.message();
    DVec pd = to_double(p.data(), p.size()), td = to_double(t.data(), t.size());
    const double want = ref(pd, td);
    ASSERT_TRUE(std::isfinite(value));
    EXPECT_NEAR(value, want, 1e-6 * std::max(1.0, std::fabs(want)));
    MaxErr e;
    for (size_t i = 0; i < p.size(); ++i) {
        double old = pd[i];
        pd[i] = old + kFdStep;
        double lp = ref(pd, td);
        pd[i] = old - kFdStep;
        double lm = ref(pd, td);
        pd[i] = old;
        // Gradients of a mean are O(1/n): compare relative to max(|g|, 1e-3).
        e.add(dp[i], (lp - lm) / (2 * kFdStep), 1e-3, i);
    }
    EXPECT_LE(e.worst, kGradTol) << e.where("dL/dpred");
    // Without a gradient tensor the value is the same.
    float value2 = -1;
    nn::Tensor none;
    st = nn::loss_forward_backward(loss, none, nn::tensor_view(pc.data(), {rows, cols}), tg, &value2);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(value, value2);
}

TEST(LossRef, MSE) {
    const int R = 3, C = 5;
    nn::Rng rng(1);
    FVec p = uniform_vec(R * C, rng, -2, 2), t = uniform_vec(R * C, rng, -2, 2);
    check_loss(nn::MSE(), R, C, p, t,
               [](const DVec& a, const DVec& b) {
                   double s = 0;
                   for (size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
                   return s / a.size();
               },
               "mse");
}

TEST(LossRef, MAE) {
    const int R = 3, C = 5;
    nn::Rng rng(2);
    FVec p = uniform_vec(R * C, rng, -2, 2), t(R * C);
    for (int i = 0; i < R * C; ++i) {  // |p - t| >= 0.01: never at the kink
        float d = (rng.uniform() < 0.5f ? -1.0f : 1.0f) * rng.uniform(0.01f, 1.5f);
        t[i] = p[i] - d;
    }
    check_loss(nn::MAE(), R, C, p, t,
               [](const DVec& a, const DVec& b) {
                   double s = 0;
                   for (size_t i = 0; i < a.size(); ++i) s += std::fabs(a[i] - b[i]);
                   return s / a.size();
               },
               "mae");
}

TEST(LossRef, HuberBothSidesOfDelta) {
    const int R = 3, C = 7;
    const double delta = 0.5;
    nn::Rng rng(3);
    FVec p = uniform_vec(R * C, rng, -2, 2), t(R * C);
    int inside = 0, outside = 0;
    for (int i = 0; i < R * C; ++i) {
        // |d| in (0.01, 0.45) or (0.55, 2): both branches, never at |d| = delta.
        float mag = (i % 2) ? rng.uniform(0.01f, 0.45f) : rng.uniform(0.55f, 2.0f);
        float d = (rng.uniform() < 0.5f ? -1.0f : 1.0f) * mag;
        t[i] = p[i] - d;
        double ad = std::fabs((double)p[i] - t[i]);
        inside += ad < delta;
        outside += ad > delta;
    }
    ASSERT_GT(inside, 3);
    ASSERT_GT(outside, 3);
    check_loss(nn::Huber((float)delta), R, C, p, t,
               [delta](const DVec& a, const DVec& b) {
                   double s = 0;
                   for (size_t i = 0; i < a.size(); ++i) {
                       double d = std::fabs(a[i] - b[i]);
                       s += d <= delta ? 0.5 * d * d : delta * (d - 0.5 * delta);
                   }
                   return s / a.size();
               },
               "huber");
}

TEST(LossRef, BinaryCrossEntropy) {
    const int R = 3, C = 5;
    nn::Rng rng(4);
    FVec p = uniform_vec(R * C, rng, 0.05f, 0.95f), t(R * C);
    for (int i = 0; i < R * C; ++i) t[i] = (i % 3 == 0) ? rng.uniform() : (float)(rng.below(2));  // soft and hard
    check_loss(nn::BinaryCrossEntropy(), R, C, p, t,
               [](const DVec& a, const DVec& b) {
                   double s = 0;
                   for (size_t i = 0; i < a.size(); ++i) s -= b[i] * std::log(a[i]) + (1 - b[i]) * std::log(1 - a[i]);
                   return s / a.size();
               },
               "bce");
}

double bce_logits_ref(const DVec& z, const DVec& t) {
    double s = 0;
    for (size_t i = 0; i < z.size(); ++i) {
        // -t log(sigmoid z) - (1 - t) log(1 - sigmoid z), written with log1p
        // of the exponent of the side that cannot overflow.
        double lsp = z[i] >= 0 ? -std::log1p(std::exp(-z[i])) : z[i] - std::log1p(std::exp(z[i]));  // log sigmoid
        double lsn = lsp - z[i];                                                                      // log(1 - sigmoid)
        s -= t[i] * lsp + (1 - t[i]) * lsn;
    }
    return s / z.size();
}

TEST(LossRef, BinaryCrossEntropyWithLogits) {
    const int R = 3, C = 5;
    nn::Rng rng(5);
    FVec z = uniform_vec(R * C, rng, -4, 4), t(R * C);
    for (int i = 0; i < R * C; ++i) t[i] = (i % 4 == 0) ? rng.uniform() : (float)(rng.below(2));
    check_loss(nn::BinaryCrossEntropyWithLogits(), R, C, z, t, bce_logits_ref, "bce-logits");
}

TEST(LossRef, BinaryCrossEntropyWithLogitsExtremeLogits) {
    // z = +-80: the loss tends to z (1 - t) for z -> +inf and -z t for z -> -inf
    // (the log1p(e^-80) ~ 1.8e-35 left over is below float resolution).
    FVec z = {80, -80, 80, -80, 80, -80}, t = {0, 1, 1, 0, 0.25f, 0.75f};
    double want = 0;
    for (size_t i = 0; i < z.size(); ++i) want += z[i] > 0 ? z[i] * (1 - t[i]) : -z[i] * t[i];
    want /= z.size();
    FVec dz(z.size());
    float value = 0;
    nn::Target tg;
    tg.values = t.data();
    ASSERT_TRUE(nn::loss_forward_backward(nn::BinaryCrossEntropyWithLogits(), nn::tensor_view(dz.data(), {2, 3}),
                                          nn::tensor_view(z.data(), {2, 3}), tg, &value)
                    .ok());
    ASSERT_TRUE(std::isfinite(value));
    EXPECT_NEAR(value, want, 1e-6 * want);
    for (size_t i = 0; i < z.size(); ++i) {
        ASSERT_TRUE(std::isfinite(dz[i])) << i;
        const double s = z[i] > 0 ? 1.0 : 0.0;  // sigmoid(+-80) to float precision
        EXPECT_NEAR(dz[i], (s - t[i]) / z.size(), 1e-7) << i;
    }
}

double softmax_xent_ref(const DVec& z, const DVec& t, int rows, int cols) {
    double s = 0;
    for (int r = 0; r < rows; ++r) {
        double m = z[r * cols];
        for (int j = 1; j < cols; ++j) m = std::max(m, z[r * cols + j]);
        double se = 0;
        for (int j = 0; j < cols; ++j) se += std::exp(z[r * cols + j] - m);
        double lse = m + std::log(se);
        for (int j = 0; j < cols; ++j) s -= t[r * cols + j] * (z[r * cols + j] - lse);
    }
    return s / rows;
}

FVec one_hot(const std::vector<int32_t>& labels, int cols) {
    FVec t(labels.size() * cols, 0.0f);
    for (size_t r = 0; r < labels.size(); ++r) t[r * cols + labels[r]] = 1.0f;
    return t;
}

// The loss on integer labels and on the same labels as one-hot rows must
// give the identical value and gradient. Returns the value.
float expect_labels_match_one_hot(const nn::Loss& loss, const FVec& pred, const std::vector<int32_t>& labels,
                                  const FVec& one_hot_rows, int R, int C) {
    FVec d1(R * C), d2(R * C);
    float v1 = 0, v2 = 0;
    nn::Target tl, tv;
    tl.labels = labels.data();
    tv.values = one_hot_rows.data();
    FVec x = pred;
    EXPECT_TRUE(nn::loss_forward_backward(loss, nn::tensor_view(d1.data(), {R, C}), nn::tensor_view(x.data(), {R, C}),
                                          tl, &v1)
                    .ok());
    EXPECT_TRUE(nn::loss_forward_backward(loss, nn::tensor_view(d2.data(), {R, C}), nn::tensor_view(x.data(), {R, C}),
                                          tv, &v2)
                    .ok());
    EXPECT_EQ(v1, v2);
    for (int i = 0; i < R * C; ++i) EXPECT_EQ(d1[i], d2[i]) << i;
    return v1;
}

TEST(LossCE, LabelsAndOneHotAgreeWithReference) {
    const int R = 3, C = 5;
    nn::Rng rng(6);
    FVec z = uniform_vec(R * C, rng, -3, 3);
    std::vector<int32_t> labels = {4, 0, 2};
    FVec t = one_hot(labels, C);
    check_loss(nn::CrossEntropy(), R, C, z, t,
               [&](const DVec& a, const DVec& b) { return softmax_xent_ref(a, b, R, C); }, "cross-entropy one-hot");
    // Labels and one-hot rows: identical value and gradient.
    const float v1 = expect_labels_match_one_hot(nn::CrossEntropy(), z, labels, t, R, C);
    DVec zd = to_double(z.data(), z.size()), td = to_double(t.data(), t.size());
    EXPECT_NEAR(v1, softmax_xent_ref(zd, td, R, C), 1e-6);
}

TEST(LossCE, SoftTargets) {
    const int R = 3, C = 4;
    nn::Rng rng(61);
    FVec z = uniform_vec(R * C, rng, -3, 3), t(R * C);
    for (int r = 0; r < R; ++r) {  // rows of a probability distribution
        float s = 0;
        for (int j = 0; j < C; ++j) s += (t[r * C + j] = rng.uniform(0.1f, 1.0f));
        for (int j = 0; j < C; ++j) t[r * C + j] /= s;
    }
    check_loss(nn::CrossEntropy(), R, C, z, t,
               [&](const DVec& a, const DVec& b) { return softmax_xent_ref(a, b, R, C); }, "cross-entropy soft");
}

TEST(LossCE, HugeLogitsStayFinite) {
    const int R = 3, C = 5;
    FVec z = {1000, -1000, 0, 999, -5,    //
              -1000, 1000, -1000, 1000, 0,  //
              -1000, -1000, -1000, -999, -1000};
    std::vector<int32_t> labels = {1, 1, 3};
    FVec t = one_hot(labels, C);
    DVec zd = to_double(z.data(), z.size()), td = to_double(t.data(), t.size());
    // By hand: row 0: 2000 + log(1 + e^-1); row 1: log 2; row 2: 0 (+3 e^-1 ...)
    const double row0 = 2000 + std::log1p(std::exp(-1.0)), row1 = std::log(2.0),
                 row2 = std::log1p(4 * std::exp(-1.0));
    const double want = (row0 + row1 + row2) / 3;
    EXPECT_NEAR(softmax_xent_ref(zd, td, R, C), want, 1e-9);  // the reference agrees with the hand value
    for (int use_labels = 0; use_labels < 2; ++use_labels) {
        FVec dz(R * C), prob(R * C);
        float value = 0;
        nn::Target tg;
        if (use_labels) tg.labels = labels.data();
        else tg.values = t.data();
        ASSERT_TRUE(nn::loss_forward_backward(nn::CrossEntropy(), nn::tensor_view(dz.data(), {R, C}),
                                              nn::tensor_view(z.data(), {R, C}), tg, &value)
                        .ok());
        ASSERT_TRUE(std::isfinite(value));
        EXPECT_NEAR(value, want, 1e-6 * want);
        float value2 = 0;
        FVec dz2(R * C);
        ASSERT_TRUE(nn::softmax_cross_entropy(nn::tensor_view(dz2.data(), {R, C}), prob.data(),
                                              nn::tensor_view(z.data(), {R, C}), tg, &value2)
                        .ok());
        EXPECT_NEAR(value2, want, 1e-6 * want);
        // softmax of row 0: [1/(1+e^-1), 0, 0, e^-1/(1+e^-1), 0]
        const double s0 = 1 / (1 + std::exp(-1.0));
        const double want_p[R * C] = {s0, 0, 0, 1 - s0, 0, 0, 0.5, 0, 0.5, 0, 0.25 * (1 - 1 / (1 + 4 * std::exp(-1.0))),
                                      0.25 * (1 - 1 / (1 + 4 * std::exp(-1.0))),
                                      0.25 * (1 - 1 / (1 + 4 * std::exp(-1.0))), 1 / (1 + 4 * std::exp(-1.0)),
                                      0.25 * (1 - 1 / (1 + 4 * std::exp(-1.0)))};
        for (int i = 0; i < R * C; ++i) {
            ASSERT_TRUE(std::isfinite(dz[i]) && std::isfinite(prob[i])) << i;
            EXPECT_NEAR(prob[i], want_p[i], 1e-6) << i;
            EXPECT_NEAR(dz[i], (want_p[i] - t[i]) / R, 1e-6) << i;
            EXPECT_EQ(dz[i], dz2[i]) << i;
        }
    }
}

TEST(LossCE, SoftmaxCrossEntropyGivesProbabilitiesAndGradient) {
    const int R = 3, C = 7;
    nn::Rng rng(62);
    FVec z = uniform_vec(R * C, rng, -4, 4);
    std::vector<int32_t> labels = {6, 0, 3};
    FVec dz(R * C, 1e30f), prob(R * C, -1.0f);
    float value = 0;
    nn::Target tg;
    tg.labels = labels.data();
    ASSERT_TRUE(nn::softmax_cross_entropy(nn::tensor_view(dz.data(), {R, C}), prob.data(),
                                          nn::tensor_view(z.data(), {R, C}), tg, &value)
                    .ok());
    DVec sm = to_double(z.data(), z.size());
    act_ref(Act::Softmax, 0, sm, R, C);
    MaxErr ep, ed;
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < C; ++j) {
            const int i = r * C + j;
            ep.add(prob[i], sm[i], 1e-3, i);
            ed.add(dz[i], (sm[i] - (labels[r] == j ? 1.0 : 0.0)) / R, 1e-3, i);
        }
    EXPECT_LE(ep.worst, 1e-5) << ep.where("probabilities");
    EXPECT_LE(ed.worst, 1e-5) << ed.where("dz");
    FVec t = one_hot(labels, C);
    EXPECT_NEAR(value, softmax_xent_ref(to_double(z.data(), z.size()), to_double(t.data(), t.size()), R, C), 1e-6);
    // p may be null.
    float value2 = 0;
    ASSERT_TRUE(nn::softmax_cross_entropy(nn::tensor_view(dz.data(), {R, C}), nullptr,
                                          nn::tensor_view(z.data(), {R, C}), tg, &value2)
                    .ok());
    EXPECT_EQ(value, value2);
}

TEST(LossCE, CategoricalCrossEntropyOnProbabilities) {
    const int R = 3, C = 5;
    nn::Rng rng(7);
    FVec logits = uniform_vec(R * C, rng, -1, 1);
    DVec sm = to_double(logits.data(), logits.size());
    act_ref(Act::Softmax, 0, sm, R, C);
    FVec p(sm.begin(), sm.end());
    std::vector<int32_t> labels = {2, 4, 0};
    FVec t = one_hot(labels, C);
    auto ref = [&](const DVec& a, const DVec& b) {
        double s = 0;
        for (size_t i = 0; i < a.size(); ++i)
            if (b[i] != 0) s -= b[i] * std::log(a[i]);
        return s / R;
    };
    check_loss(nn::CategoricalCrossEntropy(), R, C, p, t, ref, "categorical one-hot");
    // Integer labels: same value and gradient.
    expect_labels_match_one_hot(nn::CategoricalCrossEntropy(), p, labels, t, R, C);
}

TEST(LossCE, HandComputedTinyCases) {
    // p = [1, 2], t = [0, 4] as one sample of two outputs.
    FVec p = {1, 2}, t = {0, 4}, dp(2);
    nn::Target tg;
    tg.values = t.data();
    float v = 0;
    auto run = [&](const nn::Loss& l) {
        dp[0] = dp[1] = 1e30f;
        nn::Status st = nn::loss_forward_backward(l, nn::tensor_view(dp.data(), {1, 2}), nn::tensor_view(p.data(), {1, 2}),
                                                  tg, &v);
        EXPECT_TRUE(st.ok()) << st.message();
    };
    run(nn::MSE());  // (1 + 4) / 2; dp = 2 d / 2 = d
    EXPECT_FLOAT_EQ(v, 2.5f);
    EXPECT_FLOAT_EQ(dp[0], 1.0f);
    EXPECT_FLOAT_EQ(dp[1], -2.0f);
    run(nn::MAE());  // (1 + 2) / 2; dp = sign(d) / 2
    EXPECT_FLOAT_EQ(v, 1.5f);
    EXPECT_FLOAT_EQ(dp[0], 0.5f);
    EXPECT_FLOAT_EQ(dp[1], -0.5f);
    run(nn::Huber(1.0f));  // (0.5 * 1 + 1 * (2 - 0.5)) / 2 = 1; dp = clip(d, 1) / 2
    EXPECT_FLOAT_EQ(v, 1.0f);
    EXPECT_FLOAT_EQ(dp[0], 0.5f);
    EXPECT_FLOAT_EQ(dp[1], -0.5f);
    run(nn::Huber(1.5f));  // (0.5 * 1 + 1.5 * (2 - 0.75)) / 2 = 1.1875; dp = [1/2, -1.5/2]
    EXPECT_FLOAT_EQ(v, 1.1875f);
    EXPECT_FLOAT_EQ(dp[0], 0.5f);
    EXPECT_FLOAT_EQ(dp[1], -0.75f);

    // BCE: p = [0.5, 0.25], t = [1, 0]: (log 2 + log(4/3)) / 2
    FVec bp = {0.5f, 0.25f}, bt = {1, 0};
    tg.values = bt.data();
    ASSERT_TRUE(nn::loss_forward_backward(nn::BinaryCrossEntropy(), nn::tensor_view(dp.data(), {1, 2}),
                                          nn::tensor_view(bp.data(), {1, 2}), tg, &v)
                    .ok());
    EXPECT_NEAR(v, (std::log(2.0) + std::log(4.0 / 3.0)) / 2, 1e-6);
    EXPECT_NEAR(dp[0], -1.0 / 0.5 / 2, 1e-6);         // -t/p / n
    EXPECT_NEAR(dp[1], 1.0 / (1 - 0.25) / 2, 1e-6);   // (1-t)/(1-p) / n

    // Cross-entropy: logits [0, 0] label 0: log 2, dz = [-0.5, 0.5];
    // logits [0, ln 3] label 1: log(4/3), dz = [0.25, -0.25]; mean of both rows.
    FVec z = {0, 0, 0, (float)std::log(3.0)}, dz(4);
    std::vector<int32_t> labels = {0, 1};
    nn::Target tl;
    tl.labels = labels.data();
    ASSERT_TRUE(nn::loss_forward_backward(nn::CrossEntropy(), nn::tensor_view(dz.data(), {2, 2}),
                                          nn::tensor_view(z.data(), {2, 2}), tl, &v)
                    .ok());
    EXPECT_NEAR(v, (std::log(2.0) + std::log(4.0 / 3.0)) / 2, 1e-6);
    EXPECT_NEAR(dz[0], -0.5 / 2, 1e-6);
    EXPECT_NEAR(dz[1], 0.5 / 2, 1e-6);
    EXPECT_NEAR(dz[2], 0.25 / 2, 1e-6);
    EXPECT_NEAR(dz[3], -0.25 / 2, 1e-6);

    // Categorical cross-entropy on probabilities [0.2, 0.8], label 1: -log 0.8
    FVec cp = {0.2f, 0.8f}, cd(2);
    std::vector<int32_t> one = {1};
    tl.labels = one.data();
    ASSERT_TRUE(nn::loss_forward_backward(nn::CategoricalCrossEntropy(), nn::tensor_view(cd.data(), {1, 2}),
                                          nn::tensor_view(cp.data(), {1, 2}), tl, &v)
                    .ok());
    EXPECT_NEAR(v, -std::log(0.8), 1e-6);
    EXPECT_EQ(cd[0], 0.0f);
    EXPECT_NEAR(cd[1], -1 / 0.8, 1e-6);
}

TEST(LossCE, ClampsAtTheEdges) {
    // BCE (PyTorch): log clamped at -100, gradient divides by max(p(1-p), 1e-12).
    FVec p = {0.0f, 1.0f, 0.0f, 1.0f}, t = {1, 0, 0, 1}, dp(4);
    nn::Target tg;
    tg.values = t.data();
    float v = 0;
    ASSERT_TRUE(nn::loss_forward_backward(nn::BinaryCrossEntropy(), nn::tensor_view(dp.data(), {1, 4}),
                                          nn::tensor_view(p.data(), {1, 4}), tg, &v)
                    .ok());
    EXPECT_NEAR(v, (100.0 + 100.0 + 0 + 0) / 4, 1e-4);
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(std::isfinite(dp[i])) << i;
    EXPECT_NEAR(dp[0], -1e12 / 4, 1e12 / 4 * 1e-5);  // (0 - 1) / 1e-12 / n
    EXPECT_NEAR(dp[1], 1e12 / 4, 1e12 / 4 * 1e-5);
    EXPECT_EQ(dp[2], 0.0f);
    EXPECT_EQ(dp[3], 0.0f);

    // Categorical (Keras): p clipped to [1e-7, 1 - 1e-7], zero gradient where clipped.
    FVec cp = {0.0f, 1.0f, 0.5f, 0.5f}, cd(4);
    std::vector<int32_t> labels = {0, 1};
    nn::Target tl;
    tl.labels = labels.data();
    ASSERT_TRUE(nn::loss_forward_backward(nn::CategoricalCrossEntropy(), nn::tensor_view(cd.data(), {2, 2}),
                                          nn::tensor_view(cp.data(), {2, 2}), tl, &v)
                    .ok());
    EXPECT_NEAR(v, (-std::log((double)1e-7f) - std::log(0.5)) / 2, 1e-5);
    EXPECT_EQ(cd[0], 0.0f);
    EXPECT_EQ(cd[1], 0.0f);
    EXPECT_EQ(cd[2], 0.0f);
    EXPECT_NEAR(cd[3], -1 / 0.5 / 2, 1e-6);

    // MAE where p == t: gradient 0 (torch.sign), not +-1/n.
    FVec mp = {1.0f, 2.0f}, mt = {1.0f, 3.0f}, md(2);
    tg.values = mt.data();
    ASSERT_TRUE(nn::loss_forward_backward(nn::MAE(), nn::tensor_view(md.data(), {1, 2}),
                                          nn::tensor_view(mp.data(), {1, 2}), tg, &v)
                    .ok());
    EXPECT_FLOAT_EQ(v, 0.5f);
    EXPECT_EQ(md[0], 0.0f);
    EXPECT_FLOAT_EQ(md[1], -0.5f);
}

TEST(LossErrors, BadLabelsNameTheLabel) {
    const int R = 3, C = 10;
    FVec z(R * C, 0.1f), dz(R * C);
    float v = 0;
    struct Bad {
        int32_t label;
        const char* text;
    };
    for (Bad bad : {Bad{10, "10"}, Bad{-1, "-1"}, Bad{17, "17"}, Bad{-23, "-23"}}) {
        std::vector<int32_t> labels = {1, 2, bad.label};  // the bad one is not first
        nn::Target tl;
        tl.labels = labels.data();
        for (nn::Loss l : {nn::CrossEntropy(), nn::CategoricalCrossEntropy()}) {
            nn::Status st = nn::loss_forward_backward(l, nn::tensor_view(dz.data(), {R, C}),
                                                      nn::tensor_view(z.data(), {R, C}), tl, &v);
            EXPECT_FALSE(st.ok()) << "label " << bad.label;
            EXPECT_TRUE(contains(st, bad.text)) << st.message();
        }
        nn::Status st = nn::softmax_cross_entropy(nn::tensor_view(dz.data(), {R, C}), nullptr,
                                                  nn::tensor_view(z.data(), {R, C}), tl, &v);
        EXPECT_FALSE(st.ok()) << "label " << bad.label;
        EXPECT_TRUE(contains(st, bad.text)) << st.message();
    }
    // The boundary labels 0 and C - 1 are fine.
    std::vector<int32_t> good = {0, 9, 5};
    nn::Target tg;
    tg.labels = good.data();
    nn::Status st = nn::loss_forward_backward(nn::CrossEntropy(), nn::tensor_view(dz.data(), {R, C}),
                                              nn::tensor_view(z.data(), {R, C}), tg, &v);
    EXPECT_TRUE(st.ok()) << st.message();
}

TEST(LossErrors, LabelsForRegressionLossesAreRejected) {
    const int R = 2, C = 3;
    FVec p(R * C, 0.5f), dp(R * C);
    std::vector<int32_t> labels = {0, 1};
    nn::Target tl;
    tl.labels = labels.data();
    float v = 0;
    for (nn::Loss l : {nn::MSE(), nn::MAE(), nn::Huber(), nn::BinaryCrossEntropy(), nn::BinaryCrossEntropyWithLogits()}) {
        nn::Status st = nn::loss_forward_backward(l, nn::tensor_view(dp.data(), {R, C}),
                                                  nn::tensor_view(p.data(), {R, C}), tl, &v);
        EXPECT_FALSE(st.ok()) << nn::loss_name(l.kind);
        EXPECT_TRUE(contains(st, "label")) << st.message();
    }
    nn::Target none;
    nn::Status st = nn::loss_forward_backward(nn::MSE(), nn::tensor_view(dp.data(), {R, C}),
                                              nn::tensor_view(p.data(), {R, C}), none, &v);
    EXPECT_FALSE(st.ok());
}

// =============================================================================
// 4. Activation kernels against their _ref loops
// =============================================================================

const size_t kSizes[] = {1, 3, 17, (size_t)nn::simd::kWidth + 1, 1000};

// Buffers offset by one float from a vector's (aligned) start: misaligned.
struct Misaligned {
    FVec buf;
    float* p;
    explicit Misaligned(size_t n, float fill = 0) : buf(n + 2, fill), p(buf.data() + 1) {}
};

TEST(ActKernel, LeakyReluMatchesRefExactly) {
    nn::Rng rng(1);
    for (size_t n : kSizes)
        for (float slope : {0.0f, 0.01f, 0.2f}) {
            Misaligned x(n), y(n), yr(n), dy(n), dx(n), dxr(n);
            for (size_t i = 0; i < n; ++i) {
                x.p[i] = rng.uniform(-3, 3);
                dy.p[i] = rng.uniform(-1, 1);
            }
            if (n > 2) x.p[1] = 0.0f;  // the boundary itself
            nn::leaky_relu_forward(y.p, x.p, slope, n);
            nn::leaky_relu_forward_ref(yr.p, x.p, slope, n);
            nn::leaky_relu_backward(dx.p, dy.p, y.p, slope, n);
            nn::leaky_relu_backward_ref(dxr.p, dy.p, y.p, slope, n);
            for (size_t i = 0; i < n; ++i) {
                ASSERT_EQ(y.p[i], yr.p[i]) << "n " << n << " i " << i;
                ASSERT_EQ(y.p[i], x.p[i] > 0 ? x.p[i] : slope * x.p[i]);
                ASSERT_EQ(dx.p[i], dxr.p[i]) << "n " << n << " i " << i;
            }
            // Guard floats around the range are untouched.
            ASSERT_EQ(y.buf[0], 0.0f);
            ASSERT_EQ(y.buf[n + 1], 0.0f);
            ASSERT_EQ(dx.buf[n + 1], 0.0f);
        }
}

// |a - ref| <= rel * |ref| + abs
void expect_close_arrays(const float* a, const float* ref, size_t n, double rel, const FVec& abs_tol, const char* what,
                         size_t size) {
    for (size_t i = 0; i < n; ++i) {
        ASSERT_FALSE(std::isnan(a[i])) << what << " n " << size << " i " << i;
        ASSERT_LE(std::fabs((double)a[i] - ref[i]), rel * std::fabs((double)ref[i]) + abs_tol[i])
            << what << " n " << size << " i " << i << ": " << a[i] << " vs " << ref[i];
    }
}

// ReLU: 0 for -inf (not -inf * 0 = NaN), NaN kept, -0 and negatives to 0;
// leaky ReLU keeps slope * x.
TEST(ActKernel, ReluOfSpecialValues) {
    const float x[] = {-INFINITY, NAN, -0.0f, -3.0f, 0.0f, 2.5f, INFINITY, -1e-30f,
                       -INFINITY, NAN, -0.0f, -3.0f, 0.0f, 2.5f, INFINITY, -1e-30f,
                       -INFINITY, NAN};
    const size_t n = sizeof x / sizeof x[0];
    std::vector<float> y(n), l(n);
    nn::leaky_relu_forward(y.data(), x, 0.0f, n);
    nn::leaky_relu_forward(l.data(), x, 0.5f, n);
    for (size_t i = 0; i < n; ++i) {
        if (std::isnan(x[i])) {
            EXPECT_TRUE(std::isnan(y[i])) << i;
            EXPECT_TRUE(std::isnan(l[i])) << i;
        } else {
            EXPECT_EQ(y[i], x[i] > 0 ? x[i] : 0.0f) << i << " x " << x[i];
            EXPECT_EQ(l[i], x[i] > 0 ? x[i] : 0.5f * x[i]) << i;
        }
    }
}

TEST(ActKernel, SigmoidMatchesRef) {
    nn::Rng rng(2);
    for (size_t n : kSizes) {
        Misaligned x(n), y(n), yr(n), dy(n), dx(n), dxr(n);
        for (size_t i = 0; i < n; ++i) {
            x.p[i] = rng.uniform(-8, 8);
            dy.p[i] = rng.uniform(-1, 1);
        }
        nn::sigmoid_forward(y.p, x.p, n);
        nn::sigmoid_forward_ref(yr.p, x.p, n);
        // exp-based: a few ulp apart, 1e-6 relative.
        expect_close_arrays(y.p, yr.p, n, 1e-6, FVec(n, 0.0f), "sigmoid_forward", n);
        // Against double: the ref loop itself is right.
        for (size_t i = 0; i < n; ++i)
            ASSERT_NEAR(yr.p[i], 1 / (1 + std::exp(-(double)x.p[i])), 1e-6 / (1 + std::exp(-(double)x.p[i])));
        nn::sigmoid_backward(dx.p, dy.p, yr.p, n);
        nn::sigmoid_backward_ref(dxr.p, dy.p, yr.p, n);
        // Products only (no cancellation beyond 1 - y, exact for y >= 0.5 by
        // Sterbenz): differences are contraction/rounding order, a few ulp of
        // |dy| y (1 - y).
        expect_close_arrays(dx.p, dxr.p, n, 1e-6, FVec(n, 0.0f), "sigmoid_backward", n);
        ASSERT_EQ(y.buf[n + 1], 0.0f);
        // In place (y aliases x), as the contract allows.
        Misaligned xi = x;
        xi.p = xi.buf.data() + 1;
        nn::sigmoid_forward(xi.p, xi.p, n);
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(xi.p[i], y.p[i]);
    }
}

TEST(ActKernel, SigmoidSaturatesWithoutNaN) {
    const size_t n = 2 * nn::simd::kWidth + 3;  // vector body and scalar tail
    Misaligned x(n), y(n), yr(n);
    for (size_t i = 0; i < n; ++i) x.p[i] = (i % 2) ? -100.0f : 100.0f;
    x.p[n - 1] = -INFINITY;
    x.p[n - 2] = INFINITY;
    nn::sigmoid_forward(y.p, x.p, n);
    nn::sigmoid_forward_ref(yr.p, x.p, n);
    for (size_t i = 0; i < n; ++i) {
        for (float v : {y.p[i], yr.p[i]}) {
            ASSERT_FALSE(std::isnan(v)) << i;
            if (x.p[i] > 0) {
                EXPECT_EQ(v, 1.0f) << i;
            } else {
                EXPECT_GE(v, 0.0f) << i;
                EXPECT_LE(v, 1e-30f) << i;  // e^-100 ~ 3.7e-44: 0 or a denormal
            }
        }
    }
}

TEST(ActKernel, TanhMatchesRef) {
    nn::Rng rng(3);
    for (size_t n : kSizes) {
        Misaligned x(n), y(n), yr(n), dy(n), dx(n), dxr(n);
        for (size_t i = 0; i < n; ++i) {
            x.p[i] = rng.uniform(-5, 5);
            dy.p[i] = rng.uniform(-1, 1);
        }
        if (n > 3) x.p[2] = 1e-5f;  // tiny |x|: tanh x ~ x, relative error matters
        nn::tanh_forward(y.p, x.p, n);
        nn::tanh_forward_ref(yr.p, x.p, n);
        expect_close_arrays(y.p, yr.p, n, 1e-6, FVec(n, 0.0f), "tanh_forward", n);
        nn::tanh_backward(dx.p, dy.p, yr.p, n);
        nn::tanh_backward_ref(dxr.p, dy.p, yr.p, n);
        // 1 - y^2 cancels for |y| near 1: a fused and an unfused evaluation
        // differ by up to ~1 ulp of 1 (FLT_EPSILON) times |dy|, besides the
        // relative rounding of the products.
        FVec abs_tol(n);
        for (size_t i = 0; i < n; ++i) abs_tol[i] = 2 * FLT_EPSILON * std::fabs(dy.p[i]);
        expect_close_arrays(dx.p, dxr.p, n, 1e-6, abs_tol, "tanh_backward", n);
        for (size_t i = 0; i < n; ++i)
            ASSERT_NEAR(dxr.p[i], dy.p[i] * (1.0 - (double)yr.p[i] * yr.p[i]), 1e-6 + 1e-6 * std::fabs(dxr.p[i]));
        ASSERT_EQ(y.buf[n + 1], 0.0f);
    }
}

TEST(ActKernel, SoftmaxMatchesRef) {
    nn::Rng rng(4);
    const size_t rows = 3;
    for (size_t cols : kSizes) {
        const size_t n = rows * cols;
        Misaligned x(n), y(n), yr(n);
        for (size_t i = 0; i < n; ++i) x.p[i] = rng.uniform(-6, 6);
        nn::softmax_forward(y.p, x.p, rows, cols);
        nn::softmax_forward_ref(yr.p, x.p, rows, cols);
        // Each exp is within a few ulp (1e-6 relative); the normalising sums
        // of `cols` positive terms are added in a different order, each
        // within (cols - 1) eps of the exact sum (the gamma_n bound).
        const double rel = 1e-6 + 2.0 * (double)cols * FLT_EPSILON;
        expect_close_arrays(y.p, yr.p, n, rel, FVec(n, 0.0f), "softmax_forward", cols);
        for (size_t r = 0; r < rows; ++r) {
            double s = 0, sr = 0;
            for (size_t j = 0; j < cols; ++j) {
                s += y.p[r * cols + j];
                sr += yr.p[r * cols + j];
            }
            EXPECT_NEAR(s, 1.0, 1e-5) << "cols " << cols;
            EXPECT_NEAR(sr, 1.0, 1e-5) << "cols " << cols;
        }
        ASSERT_EQ(y.buf[n + 1], 0.0f);
        // In place.
        Misaligned xi = x;
        xi.p = xi.buf.data() + 1;
        nn::softmax_forward(xi.p, xi.p, rows, cols);
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(xi.p[i], y.p[i]) << "in place, cols " << cols;
    }
}

TEST(ActKernel, SoftmaxHugeInputs) {
    // Wide enough for the vector body; +-1e4 would overflow a naive exp.
    const size_t cols = 2 * nn::simd::kWidth + 3, rows = 3;
    Misaligned x(rows * cols), y(rows * cols), yr(rows * cols);
    for (size_t j = 0; j < cols; ++j) {
        x.p[j] = (j % 2) ? -1e4f : 0.0f;
        x.p[cols + j] = -1e4f;
        x.p[2 * cols + j] = (j % 3) ? -1e4f : 0.0f;
    }
    x.p[3 * cols - 2] = 1e4f;  // row 2: the maximum only in the scalar tail
    x.p[cols - 1] = 1e4f;      // row 0: one winner at the tail...
    x.p[1] = 1e4f - 1.0f;      // ...and a runner-up in the vector body
    x.p[cols + 2] = -1e4f + 2;  // row 1: all hugely negative, one 2 above the rest
    nn::softmax_forward(y.p, x.p, rows, cols);
    nn::softmax_forward_ref(yr.p, x.p, rows, cols);
    const double top = 1 / (1 + std::exp(-1.0));
    const double e2 = std::exp(2.0), others = (double)(cols - 1);
    for (const Misaligned* out : {&y, &yr}) {
        for (size_t i = 0; i < rows * cols; ++i) ASSERT_TRUE(std::isfinite(out->p[i])) << i;
        for (size_t j = 0; j < cols; ++j) {
            double want0 = j == cols - 1 ? top : (j == 1 ? 1 - top : 0.0);
            double want1 = j == 2 ? e2 / (e2 + others) : 1 / (e2 + others);
            EXPECT_NEAR(out->p[j], want0, 1e-6) << j;
            EXPECT_NEAR(out->p[cols + j], want1, 1e-6) << j;
            EXPECT_EQ(out->p[2 * cols + j], j == cols - 2 ? 1.0f : 0.0f) << j;
        }
    }
}

TEST(ActKernel, SoftmaxBackwardIsJacobianProduct) {
    const size_t rows = 3, cols = 7;
    nn::Rng rng(5);
    FVec x = uniform_vec(rows * cols, rng, -3, 3), y(rows * cols), dy = uniform_vec(rows * cols, rng, -1, 1),
         dx(rows * cols);
    nn::softmax_forward_ref(y.data(), x.data(), rows, cols);
    nn::softmax_backward(dx.data(), dy.data(), y.data(), rows, cols);
    for (size_t r = 0; r < rows; ++r)
        for (size_t j = 0; j < cols; ++j) {
            double g = 0;  // sum_i dy_i * (delta_ij y_i - y_i y_j)
            for (size_t i = 0; i < cols; ++i)
                g += dy[r * cols + i] * ((i == j ? (double)y[r * cols + i] : 0.0) - (double)y[r * cols + i] * y[r * cols + j]);
            EXPECT_NEAR(dx[r * cols + j], g, 1e-6) << r << "," << j;
        }
}

// =============================================================================
// 5. The public gradient_check
// =============================================================================

// y = x * a, a learnable per-feature scale. user points at the factor the
// backward applies to its gradients (1: right, 2: deliberately wrong).
nn::Status scale_declare(nn::Layer& self, const nn::Shape& in) {
    return nn::declare_param(self, "scale", nn::make_shape({(int)in.numel()}));
}
void scale_init(nn::Layer& self, nn::Rng& rng) {
    for (size_t i = 0; i < self.params[0].numel(); ++i) self.params[0].data[i] = rng.uniform(0.5f, 1.5f);
}
void scale_forward(nn::Layer& self, nn::Tensor y, const nn::Tensor& x, nn::Mode) {
    const size_t B = (size_t)x.batch(), F = x.row_size();
    const float* a = self.params[0].data;
    for (size_t b = 0; b < B; ++b)
        for (size_t f = 0; f < F; ++f) y.data[b * F + f] = x.data[b * F + f] * a[f];
}
void scale_backward(nn::Layer& self, nn::Tensor dx, const nn::Tensor& dy, const nn::Tensor& x, const nn::Tensor&) {
    const float k = *(const float*)self.user;
    const size_t B = (size_t)x.batch(), F = x.row_size();
    const float* a = self.params[0].data;
    float* ga = self.grads[0].data;
    for (size_t b = 0; b < B; ++b)
        for (size_t f = 0; f < F; ++f) {
            if (dx.data) dx.data[b * F + f] = k * dy.data[b * F + f] * a[f];
            ga[f] += k * dy.data[b * F + f] * x.data[b * F + f];
        }
}
const nn::CustomLayerOps kScaleOps = {"Scale", nullptr, scale_declare, scale_init, scale_forward, scale_backward};

float kRightFactor = 1.0f, kWrongFactor = 2.0f;

TEST(GradCheckUtil, DenseTanhPasses) {
    const int B = 3, in = 5;
    Built b(nn::Dense(in, 7, Act::Tanh), nn::make_shape({in}), B, 3);
    nn::Arena scratch;
    ASSERT_TRUE(scratch.reserve(1 << 20).ok());
    nn::Rng rng(4);
    FVec x = uniform_vec(B * in, rng, -1, 1);
    nn::GradCheckResult res;
    nn::Status st = nn::gradient_check(b.L, nn::tensor_view(x.data(), {B, in}), scratch, &res);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_TRUE(res.passed) << "max_rel_err " << res.max_rel_err << " at " << res.worst;
    EXPECT_EQ(res.checked, B * in + in * 7 + 7);
    EXPECT_LT(res.max_rel_err, 2e-2);
}

TEST(GradCheckUtil, RestoresGradientsParametersAndInput) {
    const int B = 3, in = 5, units = 7;
    Built b(nn::Dense(in, units, Act::Sigmoid), nn::make_shape({in}), B, 3);
    nn::Arena scratch;
    ASSERT_TRUE(scratch.reserve(1 << 20).ok());
    // Some accumulated gradients the caller wants to keep.
    for (int k = 0; k < b.L.n_params; ++k)
        for (size_t i = 0; i < b.L.grads[k].numel(); ++i) b.L.grads[k].data[i] = 0.125f * (float)i - 1.0f + k;
    std::vector<FVec> grads_before, params_before;
    for (int k = 0; k < b.L.n_params; ++k) {
        grads_before.emplace_back(b.L.grads[k].data, b.L.grads[k].data + b.L.grads[k].numel());
        params_before.emplace_back(b.L.params[k].data, b.L.params[k].data + b.L.params[k].numel());
    }
    nn::Rng rng(4);
    FVec x = uniform_vec(B * in, rng, -1, 1), x_before = x;
    const size_t mark = scratch.mark();
    nn::GradCheckResult res;
    ASSERT_TRUE(nn::gradient_check(b.L, nn::tensor_view(x.data(), {B, in}), scratch, &res).ok());
    EXPECT_TRUE(res.passed);
    EXPECT_EQ(scratch.mark(), mark) << "scratch arena not reset";
    for (int k = 0; k < b.L.n_params; ++k) {
        EXPECT_EQ(0, std::memcmp(grads_before[k].data(), b.L.grads[k].data, grads_before[k].size() * sizeof(float)))
            << "gradients of " << b.L.param_name[k] << " not restored";
        EXPECT_EQ(0, std::memcmp(params_before[k].data(), b.L.params[k].data, params_before[k].size() * sizeof(float)))
            << "parameters of " << b.L.param_name[k] << " changed";
    }
    EXPECT_EQ(0, std::memcmp(x_before.data(), x.data(), x.size() * sizeof(float))) << "input changed";
}

TEST(GradCheckUtil, CorrectCustomLayerPasses) {
    const int B = 3, F = 5;
    Built b(nn::Custom(&kScaleOps, &kRightFactor), nn::make_shape({F}), B, 9);
    ASSERT_EQ(b.L.n_params, 1);
    EXPECT_STREQ(b.L.type_name(), "Scale");
    nn::Arena scratch;
    ASSERT_TRUE(scratch.reserve(1 << 20).ok());
    nn::Rng rng(10);
    FVec x = uniform_vec(B * F, rng, -1, 1);
    nn::GradCheckResult res;
    ASSERT_TRUE(nn::gradient_check(b.L, nn::tensor_view(x.data(), {B, F}), scratch, &res).ok());
    EXPECT_TRUE(res.passed) << "max_rel_err " << res.max_rel_err << " at " << res.worst;
    EXPECT_EQ(res.checked, B * F + F);
    // And against the double reference, independently of gradient_check.
    check_layer_against_reference(b.L, B, x,
                                  [](const DVec& xv, const std::vector<DVec>& p, DVec* y) {
                                      y->resize(xv.size());
                                      for (size_t i = 0; i < xv.size(); ++i) (*y)[i] = xv[i] * p[0][i % F];
                                  },
                                  11);
}

TEST(GradCheckUtil, WrongCustomLayerFails) {
    const int B = 3, F = 5;
    Built b(nn::Custom(&kScaleOps, &kWrongFactor), nn::make_shape({F}), B, 9);
    nn::Arena scratch;
    ASSERT_TRUE(scratch.reserve(1 << 20).ok());
    nn::Rng rng(10);
    FVec x = uniform_vec(B * F, rng, -1, 1);
    nn::GradCheckResult res;
    ASSERT_TRUE(nn::gradient_check(b.L, nn::tensor_view(x.data(), {B, F}), scratch, &res).ok());
    EXPECT_FALSE(res.passed);
    // 2g vs g: the error is |g| itself, about 0.5 relative where |g| >= 1 and
    // |g| absolute elsewhere; with uniform draws some |g| are well above 0.1.
    EXPECT_GT(res.max_rel_err, 0.1);
    EXPECT_GT(res.max_abs_err, 0.1);
}

TEST(GradCheckUtil, UnbuiltLayerIsAnError) {
    nn::Layer L = nn::Dense(5, 7);
    nn::Arena scratch;
    ASSERT_TRUE(scratch.reserve(1 << 16).ok());
    FVec x(15, 0.1f);
    nn::GradCheckResult res;
    nn::Status st = nn::gradient_check(L, nn::tensor_view(x.data(), {3, 5}), scratch, &res);
    EXPECT_FALSE(st.ok());
}

// =============================================================================
// 6. Layer errors
// =============================================================================

TEST(LayerErrors, DenseOnImageWithoutFlatten) {
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(1 << 20).ok());
    nn::Layer L = nn::Dense(10);
    nn::Status st = nn::build(L, nn::make_shape({1, 28, 28}), 4, arena);
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(contains(st, "Flatten")) << st.message();
    EXPECT_FALSE(L.built);
}

TEST(LayerErrors, DenseFeatureMismatchNamesBothNumbers) {
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(1 << 20).ok());
    nn::Layer L = nn::Dense(5, 7);
    nn::Status st = nn::build(L, nn::make_shape({6}), 4, arena);
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(contains(st, "6")) << st.message();
    EXPECT_TRUE(contains(st, "5")) << st.message();
    EXPECT_FALSE(L.built);
    EXPECT_EQ(L.in_features, 5);
}

TEST(LayerErrors, BatchAboveMaxBatch) {
    // One past the limit; 7 and 6 appear nowhere else in the message.
    const int in = 5, units = 3, max_batch = 6, B = 7;
    Built b(nn::Dense(in, units), nn::make_shape({in}), max_batch);
    FVec x(B * in, 0.1f), y(B * units), dx(B * in);
    nn::Status st = nn::forward(b.L, nn::tensor_view(y.data(), {B, units}), nn::tensor_view(x.data(), {B, in}),
                                nn::Mode::Eval);
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(contains(st, "7")) << st.message();
    EXPECT_TRUE(contains(st, "6")) << st.message();
    st = nn::backward(b.L, nn::tensor_view(dx.data(), {B, in}), nn::tensor_view(y.data(), {B, units}),
                      nn::tensor_view(x.data(), {B, in}), nn::tensor_view(y.data(), {B, units}));
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(contains(st, "7")) << st.message();
    // At max_batch exactly it runs.
    st = nn::forward(b.L, nn::tensor_view(y.data(), {max_batch, units}), nn::tensor_view(x.data(), {max_batch, in}),
                     nn::Mode::Eval);
    EXPECT_TRUE(st.ok()) << st.message();
}

TEST(LayerErrors, DropoutRateOutOfRange) {
    for (float rate : {1.0f, -0.1f, 1.5f}) {
        nn::Arena arena;
        ASSERT_TRUE(arena.reserve(1 << 16).ok());
        nn::Layer L = nn::Dropout(rate);
        nn::Status st = nn::build(L, nn::make_shape({8}), 2, arena);
        EXPECT_FALSE(st.ok()) << "rate " << rate;
        EXPECT_TRUE(contains(st, "rate")) << st.message();
    }
}

TEST(LayerErrors, NegativeLeakySlope) {
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(1 << 16).ok());
    nn::Layer L = nn::LeakyReLU(-0.1f);
    nn::Status st = nn::build(L, nn::make_shape({8}), 2, arena);
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(contains(st, "slope")) << st.message();
}

TEST(LayerErrors, ForwardWithWrongInputWidth) {
    Built b(nn::Dense(5, 7), nn::make_shape({5}), 4);
    FVec x(3 * 6, 0.1f), y(3 * 7);
    nn::Status st = nn::forward(b.L, nn::tensor_view(y.data(), {3, 7}), nn::tensor_view(x.data(), {3, 6}),
                                nn::Mode::Eval);
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(contains(st, "6")) << st.message();
}

}  // namespace
