// tests/test_conv.cpp — kernels/conv.hpp: the im2col + GEMM path, the direct
// depthwise path, the dispatching entry points and the float reference,
// forward and backward, against a double-precision direct convolution
// computed here; that double backward is itself checked against central
// finite differences of the double forward.
//
// Tolerance. Every output is a sum of T float products (plus the bias, or
// the gradient's starting value); a float sum of T terms, in any order and
// any blocking, is within T * u * sum|terms| of the exact sum (the gamma_T
// bound, u = FLT_EPSILON / 2), and each product's own rounding adds at most
// u * |term|. So each element is checked against
//     (T + 2) * FLT_EPSILON * sum|terms|
// (sum|terms| computed in double beside the reference), with T the number of
// terms: C_in/groups * KH * KW (+ bias) forward, C_out/groups * KH * KW for
// dx, N * OH * OW (+ the starting value) for dw and db. A sum whose terms are
// all zero must come out exactly zero. Outputs are surrounded by guard
// values (stray stores fail), y and dx start as NaN (they are written, so no
// NaN may survive) and dw, db start random (they accumulate).
#include <gtest/gtest.h>

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kernels/conv.hpp"
#include "tests/conv_ref.hpp"

namespace {

using nn::Conv2dGeom;
using namespace conv_ref;

constexpr float kGuard = -7777.25f;

// A float buffer with a guard value before and after the n floats it holds.
struct Guarded {
    std::vector<float> buf;
    explicit Guarded(size_t n, float fill) : buf(n + 2, fill) { buf.front() = buf.back() = kGuard; }
    float* data() { return buf.data() + 1; }
    size_t size() const { return buf.size() - 2; }
    bool guards_intact() const { return buf.front() == kGuard && buf.back() == kGuard; }
};

// 64-byte aligned floats for the GEMM packing space (null when n == 0).
struct Aligned {
    float* p = nullptr;
    explicit Aligned(size_t n) {
        if (n) p = static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64));
    }
    ~Aligned() { std::free(p); }
    Aligned(const Aligned&) = delete;
    Aligned& operator=(const Aligned&) = delete;
};

std::string describe(const Conv2dGeom& g, bool bias) {
    char s[256];
    std::snprintf(s, sizeof s, "N%d C%d->%d %dx%d k%dx%d s%d,%d p%d,%d d%d,%d g%d%s", g.N, g.C_in,
                  g.C_out, g.H, g.W, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.groups,
                  bias ? " bias" : "");
    return s;
}

// Gradients of L = sum(y * dy) in double; dw and db start from dw0, db0.
struct ExpectedGrads {
    Expected dx, dw, db;
};
ExpectedGrads backward_d(const Conv2dGeom& g, const std::vector<float>& x, const std::vector<float>& w,
                         const std::vector<float>& dy, const std::vector<float>& dw0,
                         const std::vector<float>& db0) {
    const int cig = g.C_in / g.groups, cog = g.C_out / g.groups;
    ExpectedGrads e;
    e.dx = {std::vector<double>(x_size(g)), std::vector<double>(x_size(g))};
    e.dw = {std::vector<double>(dw0.begin(), dw0.end()), std::vector<double>(dw0.size())};
    e.db = {std::vector<double>(db0.begin(), db0.end()), std::vector<double>(db0.size())};
    for (size_t i = 0; i < dw0.size(); ++i) e.dw.abs[i] = std::fabs(dw0[i]);
    for (size_t i = 0; i < db0.size(); ++i) e.db.abs[i] = std::fabs(db0[i]);
    size_t i = 0;
    for (int n = 0; n < g.N; ++n)
        for (int co = 0; co < g.C_out; ++co)
            for (int oh = 0; oh < g.OH; ++oh)
                for (int ow = 0; ow < g.OW; ++ow, ++i) {
                    const double d = dy[i];
                    e.db.v[co] += d;
                    e.db.abs[co] += std::fabs(d);
                    for (int ci = 0; ci < cig; ++ci)
                        for (int kh = 0; kh < g.KH; ++kh)
                            for (int kw = 0; kw < g.KW; ++kw) {
                                const int ih = oh * g.sh - g.ph + kh * g.dh, iw = ow * g.sw - g.pw + kw * g.dw;
                                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                                const size_t wi = (((size_t)co * cig + ci) * g.KH + kh) * g.KW + kw;
                                const size_t xi = (((size_t)n * g.C_in + co / cog * cig + ci) * g.H + ih) * g.W + iw;
                                e.dw.v[wi] += d * x[xi];
                                e.dw.abs[wi] += std::fabs(d * x[xi]);
                                e.dx.v[xi] += d * w[wi];
                                e.dx.abs[xi] += std::fabs(d * w[wi]);
                            }
                }
    return e;
}

// Every element within (terms + 2) * FLT_EPSILON * sum|terms| (see the top).
// Reports the first few misses; returns how many there were.
int check(const char* what, const std::string& name, const float* got, const Expected& e, double terms) {
    int bad = 0;
    for (size_t i = 0; i < e.v.size(); ++i) {
        const double tol = (terms + 2) * FLT_EPSILON * e.abs[i];
        const double err = std::fabs((double)got[i] - e.v[i]);
        if (!(err <= tol)) {  // NaN fails too
            if (++bad <= 3)
                ADD_FAILURE() << what << " " << name << " [" << i << "]: got " << got[i] << ", want "
                              << e.v[i] << " (error " << err << " > tol " << tol << ")";
        }
    }
    return bad;
}

enum class Path { Gemm, Direct, Dispatch, Ref };
const char* path_name(Path p) {
    return p == Path::Gemm ? "gemm" : p == Path::Direct ? "direct" : p == Path::Dispatch ? "dispatch" : "ref";
}

// Scratch exactly as large as the path asks for (ASan catches overruns).
size_t scratch_floats(Path p, const Conv2dGeom& g) {
    return p == Path::Gemm ? nn::conv2d_gemm_scratch_floats(g)
                           : p == Path::Dispatch ? nn::conv2d_scratch_floats(g) : 0;
}
size_t pack_floats(Path p, const Conv2dGeom& g) {
    return p == Path::Gemm ? nn::conv2d_gemm_pack_floats(g) : p == Path::Dispatch ? nn::conv2d_pack_floats(g) : 0;
}

void run_forward(Path p, const Conv2dGeom& g, float* y, const float* x, const float* w, const float* b) {
    std::vector<float> scratch(scratch_floats(p, g));
    Aligned pack(pack_floats(p, g));
    float* s = scratch.empty() ? nullptr : scratch.data();
    switch (p) {
        case Path::Gemm: nn::conv2d_forward_gemm(y, x, w, b, g, s, pack.p); break;
        case Path::Direct: nn::conv2d_depthwise_forward(y, x, w, b, g); break;
        case Path::Dispatch: nn::conv2d_forward(y, x, w, b, g, s, pack.p); break;
        case Path::Ref: nn::conv2d_forward_ref(y, x, w, b, g); break;
    }
}
void run_backward(Path p, const Conv2dGeom& g, float* dx, float* dw, float* db, const float* dy,
                  const float* x, const float* w) {
    std::vector<float> scratch(scratch_floats(p, g));
    Aligned pack(pack_floats(p, g));
    float* s = scratch.empty() ? nullptr : scratch.data();
    switch (p) {
        case Path::Gemm: nn::conv2d_backward_gemm(dx, dw, db, dy, x, w, g, s, pack.p); break;
        case Path::Direct: nn::conv2d_depthwise_backward(dx, dw, db, dy, x, w, g); break;
        case Path::Dispatch: nn::conv2d_backward(dx, dw, db, dy, x, w, g, s, pack.p); break;
        case Path::Ref: nn::conv2d_backward_ref(dx, dw, db, dy, x, w, g); break;
    }
}

// Forward and backward of path p on g against the double definition.
// Returns the number of bad elements (each also reported).
int check_case(Path p, Conv2dGeom g, bool with_bias, std::mt19937& rng) {
    const std::string name = std::string(path_name(p)) + " " + describe(g, with_bias);
    if (!nn::conv2d_geom_init(g)) {
        ADD_FAILURE() << "rejected: " << name;
        return 1;
    }
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    auto rand_vec = [&](size_t n) {
        std::vector<float> v(n);
        for (float& f : v) f = u(rng);
        return v;
    };
    const std::vector<float> x = rand_vec(x_size(g)), w = rand_vec(w_size(g)), b = rand_vec(g.C_out);
    const std::vector<float> dy = rand_vec(y_size(g)), dw0 = rand_vec(w_size(g)), db0 = rand_vec(g.C_out);
    const float* bias = with_bias ? b.data() : nullptr;
    const int cig = g.C_in / g.groups, cog = g.C_out / g.groups, KK = g.KH * g.KW;
    int bad = 0;

    Guarded y(y_size(g), NAN);
    run_forward(p, g, y.data(), x.data(), w.data(), bias);
    EXPECT_TRUE(y.guards_intact()) << name;
    bad += check("y", name, y.data(), forward_d(g, x, w, bias), cig * KK + 1);

    const ExpectedGrads e = backward_d(g, x, w, dy, dw0, db0);
    Guarded dx(x_size(g), NAN), dw(w_size(g), 0.f), db(g.C_out, 0.f);
    std::copy(dw0.begin(), dw0.end(), dw.data());
    std::copy(db0.begin(), db0.end(), db.data());
    run_backward(p, g, dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data());
    EXPECT_TRUE(dx.guards_intact() && dw.guards_intact() && db.guards_intact()) << name;
    const double per_weight = (double)g.N * g.OH * g.OW + 1;
    bad += check("dx", name, dx.data(), e.dx, (double)cog * KK);
    bad += check("dw", name, dw.data(), e.dw, per_weight);
    bad += check("db", name, db.data(), e.db, per_weight);
    return bad;
}

// The grid: kernels 1x1, 3x3, 5x5 (and 3x5), strides 1 and 2, padding 0, 1,
// 2 and "same" (d (k - 1) / 2), dilation 1 and 2, groups 1, 2 and depthwise
// (multiplier 1 and 2, and C_in = 1), 18 output channels (several GEMM row
// tiles, so the per-row bias must find its row), 2 groups of 12 (the row
// path's dot-product weight gradient), 6 and 8 input channels per group (its
// shifted-row input gradient and weight gradient by positions), sizes 1x1,
// 5x7, 7x5, 28x28, 9x40 (40: two vectors and a partial one on AVX-512),
// batch 1 and 3, bias on
// and off. Geometries PyTorch rejects (kernel larger than the padded input)
// are checked to be rejected and skipped.
struct GridCase {
    Conv2dGeom g;
    bool bias;
};
std::vector<GridCase> grid() {
    const int kernels[][2] = {{1, 1}, {3, 3}, {5, 5}, {3, 5}};
    const int sizes[][2] = {{1, 1}, {5, 7}, {7, 5}, {28, 28}, {9, 40}};
    // {C_in, C_out, groups}; 18 output channels span several GEMM row tiles;
    // 12 per group take the row path's dot-product weight gradient.
    // 8 -> 12 and 2 groups of 6 -> 10 take the row path's shifted-row input
    // gradient (6 or more input channels) and, from 64 taps, its weight
    // gradient by positions.
    const int chans[][3] = {{3, 4, 1}, {4, 6, 2}, {4, 4, 4}, {3, 6, 3}, {1, 3, 1},
                            {2, 18, 1}, {4, 24, 2}, {8, 12, 1}, {12, 20, 2}};
    std::vector<GridCase> out;
    int i = 0;
    for (const auto& k : kernels)
        for (int s = 1; s <= 2; ++s)
            for (int pad = 0; pad < 4; ++pad)  // 3: "same"
                for (int d = 1; d <= 2; ++d)
                    for (const auto& c : chans)
                        for (const auto& hw : sizes) {
                            ++i;
                            // the wide channel counts skip 28x28, which LayerShapes covers,
                            // to keep the qemu runs of the suite short
                            if (c[0] >= 8 && hw[0] == 28) continue;
                            const int ph = pad < 3 ? pad : d * (k[0] - 1) / 2;
                            const int pw = pad < 3 ? pad : d * (k[1] - 1) / 2;
                            Conv2dGeom g = geom(i % 2 ? 3 : 1, c[0], hw[0], hw[1], c[1], k[0], k[1], s, s,
                                                ph, pw, d, d, c[2]);
                            const bool fits = d * (k[0] - 1) + 1 <= hw[0] + 2 * ph &&
                                              d * (k[1] - 1) + 1 <= hw[1] + 2 * pw;
                            Conv2dGeom probe = g;
                            EXPECT_EQ(nn::conv2d_geom_init(probe), fits) << describe(g, false);
                            if (fits) out.push_back({g, i % 3 != 0});
                        }
    return out;
}

void run_grid(Path p, bool depthwise_only) {
    std::mt19937 rng(1234);
    int cases = 0, bad = 0;
    for (const GridCase& c : grid()) {
        if (depthwise_only && c.g.groups != c.g.C_in) continue;
        ++cases;
        bad += check_case(p, c.g, c.bias, rng);
    }
    EXPECT_GT(cases, depthwise_only ? 200 : 500);
    EXPECT_EQ(bad, 0) << "over " << cases << " geometries";
}

TEST(Conv, GemmPathGrid) { run_grid(Path::Gemm, false); }
TEST(Conv, DirectDepthwiseGrid) { run_grid(Path::Direct, true); }
TEST(Conv, DispatchGrid) { run_grid(Path::Dispatch, false); }
TEST(Conv, ReferenceGrid) { run_grid(Path::Ref, false); }

// LeNet-5 and the ConvNet example's layers, through every path that applies.
TEST(Conv, LayerShapes) {
    std::mt19937 rng(99);
    const Conv2dGeom shapes[] = {
        geom(2, 1, 28, 28, 6, 5, 5, 1, 1, 2, 2, 1, 1, 1),    // LeNet conv1
        geom(2, 6, 14, 14, 16, 5, 5, 1, 1, 0, 0, 1, 1, 1),   // LeNet conv2
        geom(2, 1, 28, 28, 32, 5, 5, 1, 1, 2, 2, 1, 1, 1),   // ConvNet conv1
        geom(2, 32, 14, 14, 64, 5, 5, 1, 1, 2, 2, 1, 1, 1),  // ConvNet conv2
        // By positions: 72 channels (4.5 AVX-512 vectors: two groups of
        // vectors, a partial one) and 81 taps (a short last tile of taps)
        geom(2, 9, 7, 9, 72, 3, 3, 1, 1, 1, 1, 1, 1, 1),
        // Direct weight gradient, 8 channels: a block of 6 and one of 2 with
        // 32 vector registers
        geom(2, 2, 9, 11, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1),
    };
    for (const Conv2dGeom& g : shapes) {
        EXPECT_EQ(check_case(Path::Gemm, g, true, rng), 0);
        EXPECT_EQ(check_case(Path::Dispatch, g, true, rng), 0);
        if (g.C_in == g.groups) {
            EXPECT_EQ(check_case(Path::Direct, g, true, rng), 0);
        }
    }
    // The rule at the top of conv.hpp: depthwise with a multiplier of 1 or 2
    // goes direct, without scratch, unless the row path takes it; the layers
    // above and larger multipliers through the GEMM. Stride 1 with at most
    // 1.5 padded columns per output
    // column takes the row path: col over OH x Wp columns, the padded planes
    // with a vector of zeros after them (rounded up to 16 floats) and the
    // output rows, each inside (KH - 1) Wp + KW - 1 zeros before (rounded up
    // to 16) and a vector after the padded plane's extent, as scratch (col
    // rounded up to 16 floats too); otherwise one col matrix over OH x OW.
    // On the row path col (and the GEMM's packing) is needed only by a
    // weight gradient with more than 8 output channels per group and fewer
    // than 64 taps (C_in/g x KH x KW) unless the GEMM has dot-product tiles
    // and at most 16 channels, and by an input gradient with fewer than 6
    // input channels per group. From 8 channels and 64 taps the weight
    // gradient goes by positions instead (dY^T and dW^T in scratch).
    const bool dot = nn::kGemmHasDot;
    const struct {
        Conv2dGeom g;
        bool direct, rows, col, pos;
    } rule[] = {
        {geom(1, 64, 28, 28, 64, 3, 3, 1, 1, 1, 1, 1, 1, 64), false, true, true, false},  // depthwise, stride 1
        {geom(1, 16, 28, 28, 32, 3, 3, 2, 2, 1, 1, 1, 1, 16), true, false, false, false},
        {geom(1, 16, 28, 28, 64, 3, 3, 1, 1, 1, 1, 1, 1, 16), false, true, true, false},   // dx of 1 channel
        {geom(1, 16, 28, 28, 64, 3, 3, 2, 2, 1, 1, 1, 1, 16), false, false, true, false},  // stride 2
        {geom(1, 4, 6, 6, 8, 5, 5, 1, 1, 0, 0, 1, 1, 1), false, false, true, false},        // 6 columns for 2 outputs
        {geom(1, 6, 9, 9, 12, 3, 3, 1, 1, 1, 1, 1, 1, 1), false, true, !dot, false},       // 54 taps, 12 channels
        {shapes[0], false, true, true, false},   // dx of 1 channel
        {shapes[1], false, true, false, true},   // 150 taps, 16 channels, dx of 6
        {shapes[2], false, true, true, false},   // 25 taps, 32 channels
        {shapes[3], false, true, false, true},   // 800 taps, 64 channels
    };
    for (auto r : rule) {
        ASSERT_TRUE(nn::conv2d_geom_init(r.g));
        EXPECT_EQ(nn::conv2d_use_direct(r.g), r.direct) << describe(r.g, false);
        EXPECT_EQ(nn::conv2d_use_rows(r.g), r.rows) << describe(r.g, false);
        const size_t cig = (size_t)(r.g.C_in / r.g.groups), cog = (size_t)(r.g.C_out / r.g.groups);
        const size_t wp = (size_t)r.g.W + 2 * r.g.pw, hp = (size_t)r.g.H + 2 * r.g.ph;
        const size_t cols = (size_t)r.g.OH * (r.rows ? wp : (size_t)r.g.OW);
        const size_t col = cig * r.g.KH * r.g.KW * cols;
        const size_t vec = (size_t)nn::simd::kWidth;
        const size_t planes = (cig * (hp * wp + (size_t)(r.g.KW - 1) * r.g.dw) + vec + 15) / 16 * 16;
        const size_t lead = ((size_t)(r.g.KH - 1) * r.g.dh * wp + (size_t)(r.g.KW - 1) * r.g.dw + 15) / 16 * 16;
        const size_t dy_row = (lead + hp * wp + vec + 15) / 16 * 16;
        const size_t col_rows = r.col ? (col + 15) / 16 * 16 : 0;
        const size_t ldt = (cog + vec - 1) / vec * vec, K = cig * r.g.KH * r.g.KW;
        const size_t pos = r.pos ? ((size_t)r.g.OH * r.g.OW * ldt + 15) / 16 * 16 + (K * ldt + 15) / 16 * 16 : 0;
        const size_t want = r.direct ? 0 : r.rows ? col_rows + planes + cog * dy_row + pos : col;
        EXPECT_EQ(nn::conv2d_scratch_floats(r.g), want) << describe(r.g, false);
        EXPECT_EQ(nn::conv2d_pack_floats(r.g) != 0, !r.direct && r.col) << describe(r.g, false);
    }
}

// The double backward above against central differences of the double
// forward, and the float kernels against those. L = sum(y * r) is linear in
// each of x, w and bias, so a central difference is exact but for double
// rounding (~1e-16 * sum|terms| / h): the float kernels' own bound plus 1e-9
// covers it.
TEST(Conv, FiniteDifferences) {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const Conv2dGeom shapes[] = {
        geom(2, 2, 5, 6, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1),  // 3x3 "same"
        geom(1, 4, 7, 5, 4, 3, 2, 2, 1, 1, 0, 2, 1, 4),  // depthwise, strided, dilated
        geom(2, 4, 6, 6, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2),  // grouped 1x1 with padding
    };
    for (Conv2dGeom g : shapes) {
        ASSERT_TRUE(nn::conv2d_geom_init(g));
        std::vector<float> x(x_size(g)), w(w_size(g)), b(g.C_out), r(y_size(g));
        for (auto* v : {&x, &w, &b, &r})
            for (float& f : *v) f = u(rng);
        auto loss = [&](const std::vector<float>& xx, const std::vector<float>& ww, const std::vector<float>& bb) {
            const Expected y = forward_d(g, xx, ww, bb.data());
            double L = 0;
            for (size_t i = 0; i < y.v.size(); ++i) L += y.v[i] * r[i];
            return L;
        };
        // Divided by the step the float values actually took (keep +- h
        // rounds when |keep| < h), which keeps the quotient exact.
        const float h = 1.f / 64;
        auto fd = [&](std::vector<float>& v, size_t i) {
            const float keep = v[i], up = keep + h, down = keep - h;
            v[i] = up;
            const double lp = loss(x, w, b);
            v[i] = down;
            const double lm = loss(x, w, b);
            v[i] = keep;
            return (lp - lm) / ((double)up - (double)down);
        };
        const std::vector<float> zero_w(w.size(), 0.f), zero_b(b.size(), 0.f);
        const ExpectedGrads e = backward_d(g, x, w, r, zero_w, zero_b);
        const std::string name = describe(g, true);
        for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(fd(x, i), e.dx.v[i], 1e-9) << "dx " << name;
        for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(fd(w, i), e.dw.v[i], 1e-9) << "dw " << name;
        for (size_t i = 0; i < b.size(); ++i) EXPECT_NEAR(fd(b, i), e.db.v[i], 1e-9) << "db " << name;
        // The float kernels against the same differences.
        for (Path p : {Path::Gemm, Path::Direct, Path::Ref}) {
            if (p == Path::Direct && g.groups != g.C_in) continue;
            std::vector<float> dx(x.size()), dw(w.size(), 0.f), db(b.size(), 0.f);
            run_backward(p, g, dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data());
            for (size_t i = 0; i < x.size(); ++i)
                EXPECT_NEAR(dx[i], fd(x, i), (g.C_out / g.groups * g.KH * g.KW + 2) * FLT_EPSILON * e.dx.abs[i] + 1e-9)
                    << path_name(p) << " dx " << name;
            for (size_t i = 0; i < w.size(); ++i)
                EXPECT_NEAR(dw[i], fd(w, i), (g.N * g.OH * g.OW + 2) * FLT_EPSILON * e.dw.abs[i] + 1e-9)
                    << path_name(p) << " dw " << name;
            for (size_t i = 0; i < b.size(); ++i)
                EXPECT_NEAR(db[i], fd(b, i), (g.N * g.OH * g.OW + 2) * FLT_EPSILON * e.db.abs[i] + 1e-9)
                    << path_name(p) << " db " << name;
        }
    }
}

// Null gradients are skipped, and the others come out exactly as in the full
// call (same kernels, same order).
TEST(Conv, NullGradientsAreSkipped) {
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (Path p : {Path::Gemm, Path::Direct}) {
        // One sample: the second call's dw + dw is then exactly 2 dw (with two,
        // (s1 + s2 + s1) + s2 may round differently).
        Conv2dGeom g = geom(1, 3, 9, 8, 6, 3, 3, 1, 1, 1, 1, 1, 1, 3);
        ASSERT_TRUE(nn::conv2d_geom_init(g));
        std::vector<float> x(x_size(g)), w(w_size(g)), dy(y_size(g));
        for (auto* v : {&x, &w, &dy})
            for (float& f : *v) f = u(rng);
        std::vector<float> dx(x.size()), dw(w.size(), 0.f), db(g.C_out, 0.f);
        run_backward(p, g, dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data());
        std::vector<float> dx1(x.size(), NAN), dw1(w.size(), 0.f), db1(g.C_out, 0.f);
        run_backward(p, g, dx1.data(), nullptr, nullptr, dy.data(), x.data(), w.data());
        run_backward(p, g, nullptr, dw1.data(), nullptr, dy.data(), x.data(), w.data());
        run_backward(p, g, nullptr, nullptr, db1.data(), dy.data(), x.data(), w.data());
        EXPECT_EQ(dx, dx1) << path_name(p);
        EXPECT_EQ(dw, dw1) << path_name(p);
        EXPECT_EQ(db, db1) << path_name(p);
        // A second call adds the same gradients again: dw and db accumulate.
        run_backward(p, g, dx1.data(), dw1.data(), db1.data(), dy.data(), x.data(), w.data());
        for (size_t i = 0; i < dw.size(); ++i) EXPECT_EQ(dw1[i], 2 * dw[i]);
        for (size_t i = 0; i < db.size(); ++i) EXPECT_EQ(db1[i], 2 * db[i]);
        EXPECT_EQ(dx, dx1) << path_name(p) << ": dx is written, not accumulated";
    }
}

TEST(Conv, GeometryOutputSize) {
    struct {
        Conv2dGeom g;
        int OH, OW;
    } cases[] = {
        {geom(1, 1, 28, 28, 6, 5, 5, 1, 1, 2, 2, 1, 1, 1), 28, 28},
        {geom(1, 6, 14, 14, 16, 5, 5, 1, 1, 0, 0, 1, 1, 1), 10, 10},
        {geom(1, 3, 7, 8, 3, 3, 3, 2, 2, 1, 1, 1, 1, 3), 4, 4},      // (7+2-3)/2+1, (8+2-3)/2+1
        {geom(1, 2, 5, 9, 4, 3, 3, 1, 3, 0, 2, 2, 1, 2), 1, 4},      // (9+4-3)/3+1: dilated rows, strided columns
        {geom(4, 8, 1, 1, 8, 1, 1, 1, 1, 0, 0, 1, 1, 8), 1, 1},
        {geom(1, 1, 1, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1), 1, 1},      // all padding but the centre
        {geom(1, 1, 4, 4, 1, 1, 1, 1, 1, 3, 3, 1, 1, 1), 10, 10},    // padding wider than the kernel
    };
    for (auto& c : cases) {
        ASSERT_TRUE(nn::conv2d_geom_init(c.g)) << describe(c.g, false);
        EXPECT_EQ(c.g.OH, c.OH) << describe(c.g, false);
        EXPECT_EQ(c.g.OW, c.OW) << describe(c.g, false);
    }
    // Padding wider than the kernel: outputs that see only zeros are bias.
    std::mt19937 rng(3);
    EXPECT_EQ(check_case(Path::Gemm, cases[6].g, true, rng), 0);
    EXPECT_EQ(check_case(Path::Direct, cases[6].g, true, rng), 0);
}

TEST(Conv, InvalidGeometryIsRejected) {
    const Conv2dGeom ok = geom(2, 4, 8, 8, 6, 3, 3, 1, 1, 1, 1, 1, 1, 2);
    Conv2dGeom probe = ok;
    ASSERT_TRUE(nn::conv2d_geom_init(probe));
    // Each one field off from `ok`.
    std::vector<std::pair<const char*, Conv2dGeom>> bad;
    auto with = [&](const char* what, int Conv2dGeom::*field, int v) {
        Conv2dGeom g = ok;
        g.*field = v;
        bad.push_back({what, g});
    };
    with("N = 0", &Conv2dGeom::N, 0);
    with("C_in = 0", &Conv2dGeom::C_in, 0);
    with("H = 0", &Conv2dGeom::H, 0);
    with("W = -1", &Conv2dGeom::W, -1);
    with("C_out = 0", &Conv2dGeom::C_out, 0);
    with("KH = 0", &Conv2dGeom::KH, 0);
    with("KW = 0", &Conv2dGeom::KW, 0);
    with("sh = 0", &Conv2dGeom::sh, 0);
    with("sw = -2", &Conv2dGeom::sw, -2);
    with("ph = -1", &Conv2dGeom::ph, -1);
    with("pw = -1", &Conv2dGeom::pw, -1);
    with("dh = 0", &Conv2dGeom::dh, 0);
    with("dw = 0", &Conv2dGeom::dw, 0);
    with("groups = 0", &Conv2dGeom::groups, 0);
    with("C_in % groups", &Conv2dGeom::groups, 3);      // 4 % 3
    with("C_out % groups", &Conv2dGeom::groups, 4);     // 6 % 4
    with("kernel > padded H", &Conv2dGeom::KH, 11);     // 11 > 8 + 2
    with("dilated > padded W", &Conv2dGeom::dw, 5);     // 5 * 2 + 1 > 10
    with("H too large", &Conv2dGeom::H, 1 << 30);       // C_in * H * W > INT_MAX
    // Per-sample sizes fit in an int, but N of them overflow a byte offset.
    Conv2dGeom huge = geom(INT_MAX, 1, 46340, 46340, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1);
    bad.push_back({"N * sample bytes > PTRDIFF_MAX", huge});
    for (auto& b : bad) {
        b.second.OH = b.second.OW = 123;
        EXPECT_FALSE(nn::conv2d_geom_init(b.second)) << b.first;
        EXPECT_EQ(b.second.OH, 0) << b.first;
        EXPECT_EQ(b.second.OW, 0) << b.first;
    }
}

}  // namespace
