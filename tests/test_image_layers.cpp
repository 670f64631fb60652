// tests/test_image_layers.cpp — Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool
// and BatchNorm1d/2d as layers: shapes, errors, and forward and backward
// through nn::forward / nn::backward against a double-precision reference
// with central differences (check_layer_against_reference, see the top of
// test_layers.cpp). The kernels themselves are tested to the last bit in
// test_conv.cpp and test_pool_norm.cpp; these tests check what the layer
// adds: the geometry it derives, the buffers it hands the kernels, its
// parameters, initialisation and running statistics.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "nn.hpp"
#include "tests/conv_ref.hpp"
#include "tests/layer_check.hpp"

namespace {

using namespace layer_check;

nn::Layer named(nn::Layer L, const char* name) {
    std::snprintf(L.name, sizeof L.name, "%s", name);
    return L;
}

// --- Conv2D ---------------------------------------------------------------------

struct ConvCase {
    const char* what;
    int C_in, H, W, C_out;
    nn::Size2 k, s, p, d;
    int groups;
    bool bias;
};

// The double definition of the same convolution, on B samples.
RefFn conv_layer_ref(const ConvCase& c, int B) {
    nn::Conv2dGeom g = conv_ref::geom(B, c.C_in, c.H, c.W, c.C_out, c.k.h, c.k.w, c.s.h, c.s.w, c.p.h, c.p.w, c.d.h,
                                      c.d.w, c.groups);
    EXPECT_TRUE(nn::conv2d_geom_init(g));
    const bool bias = c.bias;
    return [g, bias](const DVec& x, const std::vector<DVec>& p, DVec* y) {
        *y = conv_ref::forward_d(g, x, p[0], bias ? p[1].data() : nullptr).v;
    };
}

// N = 2, C = 3 (6 for groups 3), 5x7 images: every feature the issue names,
// both paths of kernels/conv.hpp (im2col + GEMM and direct depthwise) and the
// pointwise shortcut.
const ConvCase kConvCases[] = {
    {"stride 2, padding 1", 3, 5, 7, 4, 3, 2, 1, 1, 1, true},
    {"dilation 2", 3, 5, 7, 4, 3, 1, 2, 2, 1, true},
    {"groups 3", 6, 5, 7, 9, 3, 1, 1, 1, 3, true},
    {"depthwise", 3, 5, 7, 3, 3, 1, 1, 1, 3, true},
    {"depthwise, multiplier 2, 5x5 stride 2", 3, 5, 7, 6, 5, 2, 2, 1, 3, false},
    {"2x3 kernel, stride 1x2, padding 1x0, no bias", 3, 5, 7, 5, {2, 3}, {1, 2}, {1, 0}, 1, 1, false},
    {"1x1 pointwise", 3, 5, 7, 4, 1, 1, 0, 1, 1, true},
    {"dilation 2x1, stride 2x1, groups 3, 6 -> 6", 6, 5, 7, 6, 3, {2, 1}, 1, {2, 1}, 3, true},
};

TEST(Conv2DLayer, ForwardAndGradientsMatchDoubleReference) {
    const int B = 2;
    uint64_t seed = 11;
    for (const ConvCase& c : kConvCases) {
        SCOPED_TRACE(c.what);
        Built b(nn::Conv2D(c.C_in, c.C_out, c.k, c.s, nn::Padding(c.p.h, c.p.w), c.d, c.groups, c.bias),
                nn::make_shape({c.C_in, c.H, c.W}), B, seed);
        ASSERT_TRUE(b.L.built);
        nn::Rng rng(seed++);
        const FVec x = uniform_vec((size_t)B * c.C_in * c.H * c.W, rng, -1.0f, 1.0f);
        check_layer_against_reference(b.L, B, x, conv_layer_ref(c, B), seed);
    }
}

TEST(Conv2DLayer, ShapesParametersAndPyTorchInitialisation) {
    Built b(nn::Conv2D(6, 16, 5), nn::make_shape({6, 14, 14}), 4);
    EXPECT_EQ(b.L.out_shape, nn::make_shape({16, 10, 10}));
    ASSERT_EQ(b.L.n_params, 2);
    EXPECT_EQ(b.L.param_shape[0], nn::make_shape({16, 6, 5, 5}));
    EXPECT_EQ(b.L.param_shape[1], nn::make_shape({16}));
    // U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 6 * 5 * 5 = 150, for both.
    const float bound = 1.0f / std::sqrt(150.0f);
    for (int k = 0; k < 2; ++k) {
        float lo = 1, hi = -1;
        for (size_t i = 0; i < b.L.params[k].numel(); ++i) {
            lo = std::min(lo, b.L.params[k][i]);
            hi = std::max(hi, b.L.params[k][i]);
        }
        EXPECT_GE(lo, -bound);
        EXPECT_LE(hi, bound);
        EXPECT_LT(lo, -0.8f * bound) << "the weights should span the range";
        EXPECT_GT(hi, 0.8f * bound);
    }
    // Grouped: weight [out, in / groups, kh, kw]; fan_in counts one group.
    Built g(nn::Conv2D(0, 8, {3, 5}, 1, 0, 1, 4, false), nn::make_shape({12, 9, 9}), 1);
    EXPECT_EQ(g.L.n_params, 1);
    EXPECT_EQ(g.L.param_shape[0], nn::make_shape({8, 3, 3, 5}));
    EXPECT_EQ(g.L.in_channels, 12);
    EXPECT_EQ(g.L.out_shape, nn::make_shape({8, 7, 5}));
}

TEST(Conv2DLayer, SameAndValidPadding) {
    nn::Shape out;
    // same: d (k - 1) / 2 on each side; output ceil(input / stride).
    ASSERT_TRUE(nn::output_shape(nn::Conv2D(1, 32, 5, 1, nn::Same), nn::make_shape({1, 28, 28}), &out).ok());
    EXPECT_EQ(out, nn::make_shape({32, 28, 28}));
    ASSERT_TRUE(nn::output_shape(nn::Conv2D(3, 4, 3, 2, nn::Same), nn::make_shape({3, 5, 7}), &out).ok());
    EXPECT_EQ(out, nn::make_shape({4, 3, 4}));
    ASSERT_TRUE(nn::output_shape(nn::Conv2D(3, 4, 3, 1, nn::Same, 2), nn::make_shape({3, 5, 7}), &out).ok());
    EXPECT_EQ(out, nn::make_shape({4, 5, 7}));
    ASSERT_TRUE(nn::output_shape(nn::Conv2D(3, 4, {3, 5}, 1, nn::Valid), nn::make_shape({3, 5, 7}), &out).ok());
    EXPECT_EQ(out, nn::make_shape({4, 3, 3}));
    // Same padding's gradients: the case with padding 2 given as numbers.
    const int B = 2;
    Built b(nn::Conv2D(3, 4, 5, 1, nn::Same), nn::make_shape({3, 5, 7}), B, 5);
    nn::Rng rng(3);
    const FVec x = uniform_vec((size_t)B * 3 * 5 * 7, rng, -1.0f, 1.0f);
    const ConvCase c{"same", 3, 5, 7, 4, 5, 1, 2, 1, 1, true};
    check_layer_against_reference(b.L, B, x, conv_layer_ref(c, B), 9);
}

// Each bad configuration: an error naming the layer and the numbers.
TEST(Conv2DLayer, BadConfigurationsNameTheLayer) {
    struct Bad {
        nn::Layer L;
        nn::Shape in;
        const char* needles[3];
    };
    const Bad bad[] = {
        {named(nn::Conv2D(3, 4, 7), "c1"), nn::make_shape({3, 5, 7}), {"\"c1\"", "7x7", "5x7"}},
        {named(nn::Conv2D(3, 4, 3, 1, 0, 3), "c2"), nn::make_shape({3, 5, 7}), {"\"c2\"", "7x7", "larger"}},
        {named(nn::Conv2D(0, 4, 3, 1, 0, 1, 2), "c3"), nn::make_shape({3, 5, 7}), {"\"c3\"", "in_channels 3", "groups 2"}},
        {named(nn::Conv2D(4, 6, 3, 1, 0, 1, 4), "c4"), nn::make_shape({4, 5, 7}), {"\"c4\"", "out_channels 6", "groups 4"}},
        {named(nn::Conv2D(3, 4, 3, 0), "c5"), nn::make_shape({3, 5, 7}), {"\"c5\"", "stride", "0x0"}},
        {named(nn::Conv2D(3, 4, 3, {1, 0}), "c6"), nn::make_shape({3, 5, 7}), {"\"c6\"", "stride", "1x0"}},
        {named(nn::Conv2D(3, 4, 4, 1, nn::Same), "c7"), nn::make_shape({3, 5, 7}), {"\"c7\"", "'same'", "4x4"}},
        {named(nn::Conv2D(2, 4, 3), "c8"), nn::make_shape({3, 5, 7}), {"\"c8\"", "3 channels", "expects 2"}},
        {named(nn::Conv2D(3, 4, 3), "c9"), nn::make_shape({105}), {"\"c9\"", "(105,)", "(channels, height, width)"}},
        {named(nn::Conv2D(3, 0, 3), "c10"), nn::make_shape({3, 5, 7}), {"\"c10\"", "out_channels", "got 0"}},
        {named(nn::Conv2D(3, 4, 3, 1, -1), "c11"), nn::make_shape({3, 5, 7}), {"\"c11\"", "padding", "-1x-1"}},
        {named(nn::Conv2D(3, 4, 3, 1, 0, 0), "c12"), nn::make_shape({3, 5, 7}), {"\"c12\"", "dilation", "0x0"}},
    };
    for (const Bad& b : bad) {
        nn::Shape out;
        nn::Status st = nn::output_shape(b.L, b.in, &out);
        ASSERT_FALSE(st.ok()) << b.L.name;
        for (const char* n : b.needles) EXPECT_TRUE(contains(st, n)) << st.message() << " lacks " << n;
        // build reports the same and leaves the layer and the arena untouched.
        nn::Arena arena;
        ASSERT_TRUE(arena.reserve(1 << 16).ok());
        nn::Layer L = b.L;
        st = nn::build(L, b.in, 2, arena);
        EXPECT_FALSE(st.ok());
        EXPECT_FALSE(L.built);
        EXPECT_EQ(arena.used, 0u);
    }
    // A model reports it at add(), naming the layer.
    nn::Model m;
    m.set_input(nn::make_shape({1, 4, 4}));
    nn::Status st = m.add(nn::Conv2D(1, 2, 5));
    ASSERT_FALSE(st.ok());
    EXPECT_TRUE(contains(st, "conv2d")) << st.message();
}

// A kind with large kernels runs through the code its constructor sets
// (Layer::code), so that programs link only the kernels they use. A layer of
// such a kind made by hand is an error at build naming it, not a crash.
TEST(LayerCode, KindsWithKernelsNeedTheirConstructor) {
    const nn::Layer made[] = {nn::Conv2D(1, 2, 3), nn::MaxPool2D(2),   nn::AvgPool2D(2), nn::GlobalAvgPool(),
                              nn::BatchNorm2d(), nn::LSTM(0, 3),       nn::Embedding(5, 2)};
    for (const nn::Layer& L : made) EXPECT_NE(L.code, nullptr) << L.type_name();
    EXPECT_EQ(nn::Dense(3).code, nullptr);
    EXPECT_NE(nn::Conv2D(1, 2, 3).code, nn::MaxPool2D(2).code);

    nn::Layer by_hand;
    by_hand.kind = nn::LayerKind::MaxPool2D;
    by_hand.kernel = by_hand.stride = 2;
    std::snprintf(by_hand.name, sizeof by_hand.name, "pool_by_hand");
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(1 << 16).ok());
    nn::Status st = nn::build(by_hand, nn::make_shape({1, 4, 4}), 1, arena);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(std::string(st.message()).find("\"pool_by_hand\" (MaxPool2D): made without its constructor"),
              std::string::npos)
        << st.message();
    EXPECT_FALSE(by_hand.built);
}

// --- Pooling --------------------------------------------------------------------

struct PoolCase {
    int C, H, W;
    nn::Size2 k, s, p;
};

// Max or average over the window's cells inside the image; for average,
// divided by the window's cells inside the padded image (count_include_pad)
// or by its real cells.
RefFn pool_ref(const PoolCase& c, bool max, bool count_include_pad) {
    const int OH = (c.H + 2 * c.p.h - c.k.h) / c.s.h + 1, OW = (c.W + 2 * c.p.w - c.k.w) / c.s.w + 1;
    return [=](const DVec& x, const std::vector<DVec>&, DVec* y) {
        const size_t planes = x.size() / ((size_t)c.H * c.W);
        y->assign(planes * OH * OW, 0.0);
        for (size_t q = 0; q < planes; ++q)
            for (int oh = 0; oh < OH; ++oh)
                for (int ow = 0; ow < OW; ++ow) {
                    double acc = max ? -INFINITY : 0.0;
                    int real = 0, padded = 0;
                    for (int i = 0; i < c.k.h; ++i)
                        for (int j = 0; j < c.k.w; ++j) {
                            const int ih = oh * c.s.h - c.p.h + i, iw = ow * c.s.w - c.p.w + j;
                            if (ih < c.H + c.p.h && iw < c.W + c.p.w) ++padded;
                            if (ih < 0 || ih >= c.H || iw < 0 || iw >= c.W) continue;
                            const double v = x[(q * c.H + ih) * c.W + iw];
                            acc = max ? std::max(acc, v) : acc + v;
                            ++real;
                        }
                    (*y)[(q * OH + oh) * OW + ow] = max ? acc : acc / (count_include_pad ? padded : real);
                }
    };
}

TEST(PoolLayers, OverlappingWindowsMatchDoubleReference) {
    const int B = 2;
    const PoolCase cases[] = {
        {3, 5, 7, 3, 2, 1},        // overlapping, padded
        {3, 5, 7, 2, 2, 0},        // LeNet's 2x2
        {2, 6, 5, {3, 2}, {1, 2}, {1, 0}},
    };
    uint64_t seed = 21;
    for (const PoolCase& c : cases) {
        for (int kind = 0; kind < 3; ++kind) {
            SCOPED_TRACE(testing::Message() << "kind " << kind << " kernel " << c.k.h << "x" << c.k.w);
            const bool max = kind == 0, include_pad = kind == 1;
            nn::Layer L = max ? nn::MaxPool2D(c.k, c.s, c.p) : nn::AvgPool2D(c.k, c.s, c.p, include_pad);
            Built b(L, nn::make_shape({c.C, c.H, c.W}), B);
            ASSERT_TRUE(b.L.built);
            nn::Rng rng(seed++);
            // Distinct values at least 0.01 apart: no ties inside the
            // finite-difference step for max pooling.
            const size_t n = (size_t)B * c.C * c.H * c.W;
            FVec x(n);
            for (size_t i = 0; i < n; ++i) x[i] = 0.01f * (float)i - 0.005f * (float)n;
            for (size_t i = n - 1; i > 0; --i) std::swap(x[i], x[rng.below((uint32_t)i + 1)]);
            check_layer_against_reference(b.L, B, x, pool_ref(c, max, include_pad), seed);
        }
    }
}

// Ties: the first cell of the window in row-major order takes the gradient
// (PyTorch's rule); with overlapping windows a cell can collect several.
TEST(PoolLayers, MaxPoolTiesGoToTheFirstCellOfEachWindow) {
    const PoolCase c{1, 5, 5, 3, 2, 1};
    Built b(nn::MaxPool2D(c.k, c.s, c.p), nn::make_shape({1, 5, 5}), 1);
    FVec x(25, 0.5f), y(9), dy(9), dx(25, 123.0f);
    for (int i = 0; i < 9; ++i) dy[i] = (float)(i + 1);
    nn::Tensor xt = nn::tensor_view(x.data(), {1, 1, 5, 5}), yt = nn::tensor_view(y.data(), {1, 1, 3, 3});
    ASSERT_TRUE(nn::forward(b.L, yt, xt, nn::Mode::Train).ok());
    ASSERT_TRUE(nn::backward(b.L, nn::tensor_view(dx.data(), {1, 1, 5, 5}), nn::tensor_view(dy.data(), {1, 1, 3, 3}),
                             xt, yt)
                    .ok());
    std::vector<double> want(25, 0.0);
    for (int oh = 0; oh < 3; ++oh)
        for (int ow = 0; ow < 3; ++ow) {
            const int ih = std::max(0, oh * 2 - 1), iw = std::max(0, ow * 2 - 1);  // first real cell
            want[ih * 5 + iw] += dy[oh * 3 + ow];
            EXPECT_EQ(b.L.indices[oh * 3 + ow], ih * 5 + iw);
            EXPECT_EQ(y[oh * 3 + ow], 0.5f);
        }
    for (int i = 0; i < 25; ++i) EXPECT_EQ(dx[i], want[i]) << "dx " << i;
}

TEST(PoolLayers, GlobalAvgPoolMatchesDoubleReference) {
    const int B = 3, C = 4, H = 5, W = 7;
    Built b(nn::GlobalAvgPool(), nn::make_shape({C, H, W}), B);
    EXPECT_EQ(b.L.out_shape, nn::make_shape({C}));
    nn::Rng rng(4);
    const FVec x = uniform_vec((size_t)B * C * H * W, rng, -2.0f, 2.0f);
    check_layer_against_reference(b.L, B, x, [](const DVec& xv, const std::vector<DVec>&, DVec* y) {
        y->assign(xv.size() / 35, 0.0);
        for (size_t i = 0; i < xv.size(); ++i) (*y)[i / 35] += xv[i] / 35.0;
    }, 5);
}

TEST(PoolLayers, BadConfigurationsNameTheLayer) {
    nn::Shape out;
    nn::Status st = nn::output_shape(named(nn::MaxPool2D(2, {0, 1}), "p1"), nn::make_shape({1, 4, 4}), &out);
    EXPECT_TRUE(contains(st, "\"p1\"") && contains(st, "stride") && contains(st, "0x1")) << st.message();
    st = nn::output_shape(named(nn::AvgPool2D(3, 1, 2), "p2"), nn::make_shape({1, 4, 4}), &out);
    EXPECT_TRUE(contains(st, "\"p2\"") && contains(st, "padding 2x2") && contains(st, "3x3")) << st.message();
    st = nn::output_shape(named(nn::MaxPool2D(5), "p3"), nn::make_shape({1, 4, 4}), &out);
    EXPECT_TRUE(contains(st, "\"p3\"") && contains(st, "5x5") && contains(st, "4x4")) << st.message();
    st = nn::output_shape(named(nn::GlobalAvgPool(), "g"), nn::make_shape({16}), &out);
    EXPECT_TRUE(contains(st, "\"g\"") && contains(st, "(16,)")) << st.message();
    // stride 0 (the default) is the window.
    ASSERT_TRUE(nn::output_shape(nn::MaxPool2D(2), nn::make_shape({1, 5, 4}), &out).ok());
    EXPECT_EQ(out, nn::make_shape({1, 2, 2}));
}

// --- BatchNorm ------------------------------------------------------------------

// Training batch norm in double: per channel over (B, plane).
RefFn batchnorm_train_ref(int C, size_t plane, double eps, bool affine) {
    return [=](const DVec& x, const std::vector<DVec>& p, DVec* y) {
        const size_t B = x.size() / (C * plane);
        y->assign(x.size(), 0.0);
        for (int c = 0; c < C; ++c) {
            double m = 0, v = 0;
            for (size_t n = 0; n < B; ++n)
                for (size_t l = 0; l < plane; ++l) m += x[(n * C + c) * plane + l];
            m /= (double)(B * plane);
            for (size_t n = 0; n < B; ++n)
                for (size_t l = 0; l < plane; ++l) v += std::pow(x[(n * C + c) * plane + l] - m, 2);
            v /= (double)(B * plane);
            const double g = affine ? p[0][c] : 1.0, b = affine ? p[1][c] : 0.0;
            for (size_t n = 0; n < B; ++n)
                for (size_t l = 0; l < plane; ++l) {
                    const size_t i = (n * C + c) * plane + l;
                    (*y)[i] = (x[i] - m) / std::sqrt(v + eps) * g + b;
                }
        }
    };
}

void randomise_affine(nn::Layer& L, nn::Rng& rng) {
    for (int k = 0; k < 2; ++k)
        for (size_t i = 0; i < L.params[k].numel(); ++i) L.params[k][i] = rng.uniform(0.5f, 1.5f) * (k ? 0.3f : 1.0f);
}

TEST(BatchNormLayer, TrainingForwardAndGradientsMatchDoubleReference) {
    nn::Rng rng(8);
    {  // BatchNorm2d on (4, 3, 5), batch 3
        Built b(nn::BatchNorm2d(4), nn::make_shape({4, 3, 5}), 3);
        randomise_affine(b.L, rng);
        const FVec x = uniform_vec(3 * 60, rng, -2.0f, 3.0f);
        check_layer_against_reference(b.L, 3, x, batchnorm_train_ref(4, 15, 1e-5, true), 2);
    }
    {  // BatchNorm1d on (C) features, batch 5, 19 features (vector lanes and a tail)
        Built b(nn::BatchNorm1d(0, 1e-3f), nn::make_shape({19}), 5);
        randomise_affine(b.L, rng);
        const FVec x = uniform_vec(5 * 19, rng, -1.0f, 1.0f);
        check_layer_against_reference(b.L, 5, x, batchnorm_train_ref(19, 1, 1e-3, true), 3);
    }
    {  // BatchNorm1d on (C, L) without affine parameters: buffers only
        Built b(nn::BatchNorm1d(3, 1e-5f, 0.1f, false), nn::make_shape({3, 8}), 2);
        ASSERT_EQ(b.L.n_params, 2);
        EXPECT_TRUE(b.L.buffer[0] && b.L.buffer[1]);
        const FVec x = uniform_vec(2 * 24, rng, -1.0f, 1.0f);
        check_layer_against_reference(b.L, 2, x, batchnorm_train_ref(3, 8, 1e-5, false), 4);
    }
}

// Running statistics: momentum 0.1 towards the batch mean and the unbiased
// batch variance, starting from 0 and 1; eval normalises with them.
TEST(BatchNormLayer, RunningStatisticsAndEvalMode) {
    const int B = 4, C = 2;
    const size_t plane = 6;
    Built b(nn::BatchNorm2d(), nn::make_shape({C, 2, 3}), B);
    ASSERT_EQ(b.L.n_params, 4);
    EXPECT_STREQ(b.L.param_name[2], "running_mean");
    EXPECT_STREQ(b.L.param_name[3], "running_var");
    for (int c = 0; c < C; ++c) {
        EXPECT_EQ(b.L.params[0][c], 1.0f);
        EXPECT_EQ(b.L.params[1][c], 0.0f);
        EXPECT_EQ(b.L.params[2][c], 0.0f);
        EXPECT_EQ(b.L.params[3][c], 1.0f);
    }
    EXPECT_EQ(b.L.grads[2].data, nullptr);
    nn::Rng rng(6);
    double rm[C] = {0, 0}, rv[C] = {1, 1};
    FVec y((size_t)B * C * plane);
    for (int step = 0; step < 3; ++step) {
        FVec x = uniform_vec(y.size(), rng, -1.0f + step, 2.0f + 2 * step);
        ASSERT_TRUE(nn::forward(b.L, nn::tensor_view(y.data(), {B, C, 2, 3}), nn::tensor_view(x.data(), {B, C, 2, 3}),
                                nn::Mode::Train)
                        .ok());
        for (int c = 0; c < C; ++c) {
            double m = 0, v = 0;
            for (int n = 0; n < B; ++n)
                for (size_t l = 0; l < plane; ++l) m += x[(n * C + c) * plane + l];
            m /= B * plane;
            for (int n = 0; n < B; ++n)
                for (size_t l = 0; l < plane; ++l) v += std::pow(x[(n * C + c) * plane + l] - m, 2);
            v /= B * plane - 1;
            rm[c] = 0.9 * rm[c] + 0.1 * m;
            rv[c] = 0.9 * rv[c] + 0.1 * v;
            EXPECT_NEAR(b.L.params[2][c], rm[c], 1e-6 * (1 + std::fabs(rm[c]))) << "step " << step;
            EXPECT_NEAR(b.L.params[3][c], rv[c], 1e-6 * (1 + rv[c])) << "step " << step;
        }
    }
    // Eval: y = (x - running_mean) / sqrt(running_var + eps) gamma + beta,
    // and its gradients (linear in x) by the float gradient check.
    randomise_affine(b.L, rng);
    FVec x = uniform_vec(y.size(), rng, -1.0f, 1.0f);
    ASSERT_TRUE(nn::forward(b.L, nn::tensor_view(y.data(), {B, C, 2, 3}), nn::tensor_view(x.data(), {B, C, 2, 3}),
                            nn::Mode::Eval)
                    .ok());
    for (size_t i = 0; i < y.size(); ++i) {
        const size_t c = i / plane % C;
        const double want = (x[i] - rm[c]) / std::sqrt(rv[c] + 1e-5) * b.L.params[0][c] + b.L.params[1][c];
        EXPECT_NEAR(y[i], want, 1e-5 * (1 + std::fabs(want))) << i;
    }
    const float before = b.L.params[2][0];
    nn::Arena scratch;
    ASSERT_TRUE(scratch.reserve(1 << 20).ok());
    nn::GradCheckResult r;
    ASSERT_TRUE(nn::gradient_check(b.L, nn::tensor_view(x.data(), {B, C, 2, 3}), scratch, &r).ok());
    EXPECT_TRUE(r.passed) << r.worst << " " << r.max_rel_err;
    ASSERT_TRUE(nn::gradient_check(b.L, nn::tensor_view(x.data(), {B, C, 2, 3}), scratch, &r, 1e-2f, 2e-2, 64,
                                   nn::Mode::Train)
                    .ok());
    EXPECT_TRUE(r.passed) << r.worst << " " << r.max_rel_err;
    EXPECT_EQ(b.L.params[2][0], before) << "gradient_check puts the running statistics back";
}

TEST(BatchNormLayer, OneValuePerChannelAndBadShapesAreErrors) {
    Built b(named(nn::BatchNorm1d(3), "bn"), nn::make_shape({3}), 4);
    FVec x(3, 1.0f), y(3);
    nn::Status st = nn::forward(b.L, nn::tensor_view(y.data(), {1, 3}), nn::tensor_view(x.data(), {1, 3}), nn::Mode::Train);
    ASSERT_FALSE(st.ok());
    EXPECT_TRUE(contains(st, "\"bn\"") && contains(st, "more than one value")) << st.message();
    EXPECT_EQ(b.L.params[2][0], 0.0f) << "running statistics untouched";
    EXPECT_TRUE(nn::forward(b.L, nn::tensor_view(y.data(), {1, 3}), nn::tensor_view(x.data(), {1, 3}), nn::Mode::Eval).ok());
    nn::Shape out;
    st = nn::output_shape(named(nn::BatchNorm2d(), "bn2"), nn::make_shape({3, 8}), &out);
    EXPECT_TRUE(contains(st, "\"bn2\"") && contains(st, "(3, 8)")) << st.message();
    st = nn::output_shape(named(nn::BatchNorm1d(4), "bn3"), nn::make_shape({3, 8}), &out);
    EXPECT_TRUE(contains(st, "\"bn3\"") && contains(st, "num_features 4")) << st.message();
    st = nn::output_shape(named(nn::BatchNorm1d(0, 0.0f), "bn4"), nn::make_shape({3}), &out);
    EXPECT_TRUE(contains(st, "\"bn4\"") && contains(st, "eps")) << st.message();
}

// --- In a model -----------------------------------------------------------------

TEST(ImageModel, RunningStatisticsAreNonTrainableAndTheOptimizerSkipsThem) {
    nn::Model m;
    m.set_input(nn::make_shape({1, 8, 8}));
    m.add(nn::Conv2D(1, 4, 3, 1, 1, 1, 1, false));
    m.add(nn::BatchNorm2d(4));
    m.add(nn::ReLU());
    m.add(nn::MaxPool2D(2));
    m.add(nn::GlobalAvgPool());
    m.add(nn::Dense(3));
    ASSERT_TRUE(m.error.ok()) << m.error.message();
    // conv 4*1*3*3 = 36, bn 4 + 4 trainable and 4 + 4 running, dense 4*3 + 3.
    EXPECT_EQ(m.param_count(false), 36u + 16u + 15u);
    EXPECT_EQ(m.param_count(true), 36u + 8u + 15u);
    char buf[4096] = {0};
    FILE* f = fmemopen(buf, sizeof buf - 1, "w");
    ASSERT_NE(f, nullptr);
    m.summary(f);
    std::fclose(f);
    EXPECT_NE(std::strstr(buf, "Non-trainable params: 8"), nullptr) << buf;
    EXPECT_NE(std::strstr(buf, "(None, 4, 4, 4)"), nullptr) << buf;

    nn::CompileOptions co;
    co.loss = nn::CrossEntropy();
    co.optimizer = nn::Adam(0.1f);
    co.max_batch = 4;
    ASSERT_TRUE(m.compile(co).ok());
    nn::Param ps[16];
    const int n = m.n_params(ps, 16);
    int frozen = 0;
    for (int i = 0; i < n; ++i) frozen += !ps[i].trainable;
    EXPECT_EQ(frozen, 2);
    // One step: every trainable tensor moves, the running statistics move by
    // exactly the momentum rule (Adam with lr 0.1 would move them by ~0.1).
    nn::Rng rng(2);
    for (size_t i = 0; i < m.x_buf.numel(); ++i) m.x_buf[i] = rng.uniform(-1, 1);
    int32_t labels[4] = {0, 1, 2, 1};
    nn::Target t;
    t.labels = labels;
    nn::Layer& bn = m.layer(1);
    std::vector<float> w0(m.layer(0).params[0].data, m.layer(0).params[0].data + 36);
    float loss = 0;
    ASSERT_TRUE(m.train_step(4, t, &loss).ok());
    EXPECT_TRUE(std::isfinite(loss));
    EXPECT_NE(std::memcmp(w0.data(), m.layer(0).params[0].data, 36 * sizeof(float)), 0);
    for (int c = 0; c < 4; ++c) {
        EXPECT_NEAR(bn.params[2][c], 0.1 * m.layer(1).scratch[c], 1e-6);  // 0.9 * 0 + 0.1 * batch mean
        EXPECT_GT(bn.params[3][c], 0.0f);
    }
}

}  // namespace
