// tests/test_pool_norm.cpp — the pooling kernels (kernels/pool.hpp) and the
// batch-norm kernels (kernels/norm.hpp) against PyTorch's numbers
// (tests/pool_norm_ref_data.inc, written by tests/pool_norm_ref.py with torch
// 1.13), against double-precision references written here, and their
// backward passes against central finite differences of those references.
//
// Tolerances are in eps = FLT_EPSILON = 2^-23 and derived next to each
// check: a float rounding costs at most eps/2 relative; a float sum of k
// terms at most (k - 1) eps/2 times the sum of their magnitudes. Where the
// other side is PyTorch, its roundings are counted too (it computes in float
// with sums in double, in a different order and, for batch norm, as
// x * alpha + beta' rather than (x - mean) * alpha + beta). Max pooling's
// outputs and indices are exact and compared exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/norm.hpp"
#include "kernels/pool.hpp"
#include "nn.hpp"

namespace pool_norm_ref {
struct PoolCase {
    int n, c, h, w, k, s, p, oh, ow;
    const float *x, *dy, *max_y;
    const int32_t* max_idx;
    const float *max_dx, *avg_y, *avg_dx, *avgx_y, *avgx_dx;  // avgx: count_include_pad=False
};
struct BnCase {
    int n, c, l;
    const float *gamma, *beta;           // null: affine=False
    const float *x, *run_mean, *run_var;  // per step: kSteps inputs and statistics after each
    const float *y, *dy, *dx, *dgamma, *dbeta;  // the last step and its backward
    const float *x_eval, *y_eval, *dx_eval, *dgamma_eval, *dbeta_eval;
    bool affine;
};
#include "pool_norm_ref_data.inc"
}  // namespace pool_norm_ref

namespace {

using FVec = std::vector<float>;
using DVec = std::vector<double>;
using IVec = std::vector<int32_t>;

constexpr double kEps = FLT_EPSILON;
constexpr float kGuard = -7777.25f;
constexpr size_t W = (size_t)nn::simd::kWidth;

::testing::AssertionResult near_abs(double got, double want, double tol) {
    if (!std::isnan(got) && std::fabs(got - want) <= tol) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << got << ", want " << want << ", diff " << std::fabs(got - want)
                                         << " > tol " << tol;
}

// n floats with a guard on either side, to catch stray stores.
struct Buf {
    FVec v;
    float* p;
    explicit Buf(size_t n, float fill = 0.0f) : v(n + 2, fill), p(v.data() + 1) { v.front() = v.back() = kGuard; }
    bool guards_ok() const { return v.front() == kGuard && v.back() == kGuard; }
};

// The error of a sum as the vector kernels form it, given the sum of the
// terms' magnitudes: float lanes of at most kSumVectors terms ((kSumVectors
// - 1) eps/2), a horizontal sum of W lanes (log2 W roundings of eps/2), then
// double (negligible); one more eps/2 for rounding the inputs to the lanes.
double lane_rel() { return ((double)nn::simd::kSumVectors + std::log2((double)W) + 1) * kEps / 2; }
double lane_sum_tol(double magnitude) { return lane_rel() * magnitude; }

void fill_uniform(float* x, size_t n, std::mt19937& rng, float lo, float hi) {
    std::uniform_real_distribution<float> u(lo, hi);
    for (size_t i = 0; i < n; ++i) x[i] = u(rng);
}

// =============================================================================
// Pooling references (double), written cell by cell over the whole window,
// padding included, unlike the kernels' clipped loops.
// =============================================================================

struct PoolRef {
    DVec y;
    IVec idx;
};

// Max over the window's real cells; padding is -inf and never wins; the
// first maximum in row-major order wins ties (PyTorch).
PoolRef max_ref(const FVec& x, const nn::PoolGeom& g, int planes) {
    PoolRef r{DVec((size_t)planes * g.oh * g.ow), IVec((size_t)planes * g.oh * g.ow)};
    for (int p = 0; p < planes; ++p)
        for (int oy = 0; oy < g.oh; ++oy)
            for (int ox = 0; ox < g.ow; ++ox) {
                double m = -INFINITY;
                int best = -1;
                for (int i = 0; i < g.kh; ++i)
                    for (int j = 0; j < g.kw; ++j) {
                        const int iy = oy * g.sh - g.ph + i, ix = ox * g.sw - g.pw + j;
                        if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
                        const double v = x[((size_t)p * g.h + iy) * g.w + ix];
                        if (best < 0 || v > m) {
                            m = v;
                            best = iy * g.w + ix;
                        }
                    }
                const size_t o = ((size_t)p * g.oh + oy) * g.ow + ox;
                r.y[o] = m;
                r.idx[o] = best;
            }
    return r;
}

// Window sum over real cells / divisor: with count_include_pad, the cells of
// the window inside the padded input (PyTorch's pool_size); without, the real
// cells.
int divisor_ref(const nn::PoolGeom& g, int oy, int ox, bool cip) {
    int cnt = 0;
    for (int i = 0; i < g.kh; ++i)
        for (int j = 0; j < g.kw; ++j) {
            const int iy = oy * g.sh - g.ph + i, ix = ox * g.sw - g.pw + j;
            const bool real = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
            const bool padded = iy >= -g.ph && iy < g.h + g.ph && ix >= -g.pw && ix < g.w + g.pw;
            cnt += cip ? padded : real;
        }
    return cnt;
}
DVec avg_ref(const DVec& x, const nn::PoolGeom& g, int planes, bool cip) {
    DVec y((size_t)planes * g.oh * g.ow);
    for (int p = 0; p < planes; ++p)
        for (int oy = 0; oy < g.oh; ++oy)
            for (int ox = 0; ox < g.ow; ++ox) {
                double s = 0.0;
                for (int i = 0; i < g.kh; ++i)
                    for (int j = 0; j < g.kw; ++j) {
                        const int iy = oy * g.sh - g.ph + i, ix = ox * g.sw - g.pw + j;
                        if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) s += x[((size_t)p * g.h + iy) * g.w + ix];
                    }
                y[((size_t)p * g.oh + oy) * g.ow + ox] = s / divisor_ref(g, oy, ox, cip);
            }
    return y;
}

// How many windows cover one input cell at most: ceil(k / s) per axis.
int max_cover(const nn::PoolGeom& g) { return ((g.kh + g.sh - 1) / g.sh) * ((g.kw + g.sw - 1) / g.sw); }

nn::PoolGeom geom(int h, int w, int k, int s, int p) {
    nn::PoolGeom g{k, k, s, s, p, p, h, w, -1, -1};
    return g;
}

// =============================================================================
// Geometry
// =============================================================================

TEST(PoolGeom, OutputSizeIsFloorModeAndBadGeometryIsRefused) {
    nn::PoolGeom g = geom(28, 28, 2, 2, 0);
    ASSERT_TRUE(nn::pool2d_geometry(&g));
    EXPECT_EQ(g.oh, 14);
    EXPECT_EQ(g.ow, 14);
    g = geom(5, 7, 3, 2, 1);  // (5 + 2 - 3) / 2 + 1 = 3, (7 + 2 - 3) / 2 + 1 = 4
    ASSERT_TRUE(nn::pool2d_geometry(&g));
    EXPECT_EQ(g.oh, 3);
    EXPECT_EQ(g.ow, 4);
    g = geom(7, 7, 2, 2, 0);  // floor: the last row and column are dropped
    ASSERT_TRUE(nn::pool2d_geometry(&g));
    EXPECT_EQ(g.oh, 3);
    g = geom(1, 1, 2, 1, 1);  // one cell, padded: (1 + 2 - 2) / 1 + 1 = 2
    ASSERT_TRUE(nn::pool2d_geometry(&g));
    EXPECT_EQ(g.oh, 2);
    nn::PoolGeom rect{3, 2, 1, 2, 1, 1, 5, 6, -1, -1};  // rectangular window and stride
    ASSERT_TRUE(nn::pool2d_geometry(&rect));
    EXPECT_EQ(rect.oh, (5 + 2 - 3) / 1 + 1);
    EXPECT_EQ(rect.ow, (6 + 2 - 2) / 2 + 1);

    // Refused, and oh/ow untouched.
    const nn::PoolGeom bad[] = {
        geom(5, 5, 2, 2, 2),  // padding > kernel / 2
        geom(5, 5, 3, 1, 2),  // padding > kernel / 2 (3 / 2 = 1)
        geom(5, 5, 0, 1, 0),  // empty window
        geom(5, 5, 2, 0, 0),  // stride 0
        geom(5, 5, 2, 1, -1),  // negative padding
        geom(1, 5, 3, 1, 0),  // the window does not fit: 1 + 0 < 3
        geom(0, 5, 1, 1, 0),  // empty input
        geom(70000, 70000, 2, 2, 0),  // h * w beyond the int32 indices
    };
    for (nn::PoolGeom b : bad) {
        EXPECT_FALSE(nn::pool2d_geometry(&b)) << b.h << "x" << b.w << " k " << b.kh << " s " << b.sh << " p " << b.ph;
        EXPECT_EQ(b.oh, -1);
    }
}

// =============================================================================
// Pooling against PyTorch
// =============================================================================

TEST(PoolTorch, MaxAvgForwardBackwardMatchPyTorch) {
    using pool_norm_ref::kPoolCases;
    int ties_seen = 0;
    for (const auto& tc : kPoolCases) {
        SCOPED_TRACE(testing::Message() << "case " << tc.n << "x" << tc.c << "x" << tc.h << "x" << tc.w << " k "
                                        << tc.k << " s " << tc.s << " p " << tc.p);
        nn::PoolGeom g = geom(tc.h, tc.w, tc.k, tc.s, tc.p);
        ASSERT_TRUE(nn::pool2d_geometry(&g));
        ASSERT_EQ(g.oh, tc.oh);
        ASSERT_EQ(g.ow, tc.ow);
        const size_t planes = (size_t)tc.n * tc.c, nin = planes * tc.h * tc.w, nout = planes * tc.oh * tc.ow;
        // Max: a maximum and its index are exact; torch's must be equal.
        FVec y(nout), dx(nin, 99.0f);
        IVec idx(nout);
        nn::maxpool2d_forward(y.data(), idx.data(), tc.x, g, tc.n, tc.c);
        for (size_t o = 0; o < nout; ++o) {
            ASSERT_EQ(y[o], tc.max_y[o]) << "output " << o;
            ASSERT_EQ(idx[o], tc.max_idx[o]) << "output " << o;
            // Count windows holding their maximum twice or more (the inputs
            // are quarters), so the tie rule is known to have been compared.
            const size_t p = o / ((size_t)g.oh * g.ow);
            const int oy = (int)(o / g.ow % g.oh), ox = (int)(o % g.ow);
            int hits = 0;
            for (int iy = oy * g.sh - g.ph; iy < oy * g.sh - g.ph + g.kh; ++iy)
                for (int ix = ox * g.sw - g.pw; ix < ox * g.sw - g.pw + g.kw; ++ix)
                    if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) hits += tc.x[(p * g.h + iy) * g.w + ix] == y[o];
            ties_seen += hits > 1;
        }
        // dx: each cell sums at most max_cover dy values (|dy| <= 1.5), in an
        // order that may differ from torch's; each side's additions round
        // within (cover - 1) eps/2 of the sum of magnitudes.
        const double dy_sum_tol = (max_cover(g)) * 1.5 * max_cover(g) * kEps;
        nn::maxpool2d_backward(dx.data(), tc.dy, idx.data(), g, tc.n, tc.c);
        for (size_t i = 0; i < nin; ++i) ASSERT_TRUE(near_abs(dx[i], tc.max_dx[i], dy_sum_tol)) << "max dx " << i;

        // Average, both divisors. The window sum of <= k^2 terms (|x| <= 1.5)
        // rounds within (k^2 - 1) eps/2 * sum|x|, the division eps/2 more;
        // twice that for the two sides.
        for (bool cip : {true, false}) {
            SCOPED_TRACE(cip ? "count_include_pad" : "count_exclude_pad");
            const float* want_y = cip ? tc.avg_y : tc.avgx_y;
            const float* want_dx = cip ? tc.avg_dx : tc.avgx_dx;
            const double tol = (double)tc.k * tc.k * 1.5 * kEps;
            FVec ya(nout), dxa(nin, 99.0f);
            nn::avgpool2d_forward(ya.data(), tc.x, g, cip, tc.n, tc.c);
            for (size_t o = 0; o < nout; ++o) ASSERT_TRUE(near_abs(ya[o], want_y[o], tol)) << "avg y " << o;
            nn::avgpool2d_backward(dxa.data(), tc.dy, g, cip, tc.n, tc.c);
            for (size_t i = 0; i < nin; ++i) ASSERT_TRUE(near_abs(dxa[i], want_dx[i], dy_sum_tol)) << "avg dx " << i;
        }
    }
    EXPECT_GT(ties_seen, 20);  // the tie rule was exercised against torch
}

// =============================================================================
// Max pooling: ties, NaN, -inf, and a sweep against the double reference
// =============================================================================

TEST(PoolMax, TiesPickTheFirstMaximumInRowMajorWindowOrder) {
    // A constant plane: every window's winner is its first real cell.
    for (int p : {0, 1}) {
        nn::PoolGeom g = geom(5, 5, 3, 2, p);
        ASSERT_TRUE(nn::pool2d_geometry(&g));
        FVec x(25, 2.5f), y((size_t)g.oh * g.ow);
        IVec idx(y.size());
        nn::maxpool2d_forward(y.data(), idx.data(), x.data(), g, 1, 1);
        for (int oy = 0; oy < g.oh; ++oy)
            for (int ox = 0; ox < g.ow; ++ox) {
                const int iy = std::max(oy * 2 - p, 0), ix = std::max(ox * 2 - p, 0);
                EXPECT_EQ(idx[(size_t)oy * g.ow + ox], iy * 5 + ix) << "p " << p << " at " << oy << "," << ox;
                EXPECT_EQ(y[(size_t)oy * g.ow + ox], 2.5f);
            }
    }
    // The maximum at (0, 1) and at (1, 0) of one 2x2 window: row-major order
    // meets (0, 1) first. Then at (1, 0) and (1, 1): (1, 0) first.
    nn::PoolGeom g = geom(2, 2, 2, 1, 0);
    ASSERT_TRUE(nn::pool2d_geometry(&g));
    float y;
    int32_t idx;
    const float a[4] = {0.0f, 3.0f, 3.0f, 1.0f};
    nn::maxpool2d_forward(&y, &idx, a, g, 1, 1);
    EXPECT_EQ(idx, 1);
    const float b[4] = {0.0f, 1.0f, 3.0f, 3.0f};
    nn::maxpool2d_forward(&y, &idx, b, g, 1, 1);
    EXPECT_EQ(idx, 2);
    // Backward sends the whole gradient to the winner only.
    float dx[4], dy = 1.5f;
    nn::maxpool2d_backward(dx, &dy, &idx, g, 1, 1);
    EXPECT_EQ(dx[0], 0.0f);
    EXPECT_EQ(dx[1], 0.0f);
    EXPECT_EQ(dx[2], 1.5f);
    EXPECT_EQ(dx[3], 0.0f);
}

TEST(PoolMax, NaNWinsAndAWindowOfMinusInfReportsItsFirstRealCell) {
    nn::PoolGeom g = geom(2, 3, 2, 1, 0);  // two windows: columns 0-1 and 1-2
    ASSERT_TRUE(nn::pool2d_geometry(&g));
    float y[2];
    int32_t idx[2];
    const float x[6] = {1.0f, NAN, 5.0f, 2.0f, 9.0f, 0.0f};
    nn::maxpool2d_forward(y, idx, x, g, 1, 1);
    EXPECT_TRUE(std::isnan(y[0]));  // the NaN propagates, though 9 comes after it
    EXPECT_EQ(idx[0], 1);
    EXPECT_TRUE(std::isnan(y[1]));
    EXPECT_EQ(idx[1], 1);
    const float inf[6] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    nn::PoolGeom gp = geom(2, 3, 2, 1, 1);  // padded: the first window's only real cell is (0, 0)
    ASSERT_TRUE(nn::pool2d_geometry(&gp));
    FVec yp((size_t)gp.oh * gp.ow);
    IVec ip(yp.size());
    nn::maxpool2d_forward(yp.data(), ip.data(), inf, gp, 1, 1);
    EXPECT_EQ(yp[0], -INFINITY);
    EXPECT_EQ(ip[0], 0);
    EXPECT_EQ(ip[(size_t)gp.ow - 1], 2);  // the last window of row 0 covers column 2 and padding
}

// The same rules on the unrolled 2x2 stride-2 path (vector lanes, the
// row's partial last vector).
TEST(PoolMax, TwoByTwoPathKeepsTheNaNTieAndMinusInfRules) {
    nn::PoolGeom g = geom(2, 40, 2, 2, 0);
    ASSERT_TRUE(nn::pool2d_geometry(&g));
    FVec x(80, 1.0f);
    auto at = [&](int r, int c) -> float& { return x[(size_t)(r * 40 + c)]; };
    at(0, 3) = NAN, at(1, 2) = 9.0f;                       // window 1: the NaN wins over a later 9
    at(0, 10) = NAN, at(1, 11) = NAN;                      // window 5: the last NaN
    at(0, 34) = at(0, 35) = at(1, 34) = at(1, 35) = -INFINITY;  // window 17: its first cell
    at(0, 36) = 2.0f, at(1, 37) = 2.0f;                    // window 18: a tie, the first wins
    at(1, 39) = 7.0f;                                      // window 19: the last cell
    FVec y(20);
    IVec idx(20, -1);
    nn::maxpool2d_forward(y.data(), idx.data(), x.data(), g, 1, 1);
    EXPECT_TRUE(std::isnan(y[1]));
    EXPECT_EQ(idx[1], 3);
    EXPECT_TRUE(std::isnan(y[5]));
    EXPECT_EQ(idx[5], 51);
    EXPECT_EQ(y[17], -INFINITY);
    EXPECT_EQ(idx[17], 34);
    EXPECT_EQ(y[18], 2.0f);
    EXPECT_EQ(idx[18], 36);
    EXPECT_EQ(y[19], 7.0f);
    EXPECT_EQ(idx[19], 79);
    for (int j : {0, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}) {
        EXPECT_EQ(y[j], 1.0f) << j;
        EXPECT_EQ(idx[j], 2 * j) << j;  // all equal: the window's first cell
    }
}

// Every combination of the sizes, kernels, strides, paddings and
// batches, on continuous values (ties unlikely) and on quarters (ties
// everywhere): y and idx exactly as the reference; dx as the reference
// scatter, within the rounding of its sums.
TEST(PoolMax, SweepMatchesDoubleReference) {
    std::mt19937 rng(7);
    int run = 0;
    for (int h : {1, 3, 5, 7, 28})
        for (int w : {1, 3, 5, 7, 28, 35, 40, 69})
            for (int k : {2, 3})
                for (int s : {1, 2})
                    for (int p : {0, 1})
                        for (int n : {1, 3}) {
                            if ((w != h && w != 3 && h != 3) || (n == 3 && h * w > 100)) continue;  // keep it quick
                            nn::PoolGeom g = geom(h, w, k, s, p);
                            const bool ok = nn::pool2d_geometry(&g);
                            ASSERT_EQ(ok, h + 2 * p >= k && w + 2 * p >= k) << h << "x" << w << " k" << k << " p" << p;
                            if (!ok) continue;
                            SCOPED_TRACE(testing::Message() << h << "x" << w << " k " << k << " s " << s << " p " << p
                                                            << " n " << n);
                            const int c = 2, planes = n * c;
                            const size_t nin = (size_t)planes * h * w, nout = (size_t)planes * g.oh * g.ow;
                            for (bool quarters : {false, true}) {
                                Buf x(nin), dy(nout), y(nout), dx(nin, 99.0f);
                                fill_uniform(x.p, nin, rng, -2.0f, 2.0f);
                                fill_uniform(dy.p, nout, rng, -1.0f, 1.0f);
                                if (quarters)
                                    for (size_t i = 0; i < nin; ++i) x.p[i] = std::round(x.p[i] * 2.0f) / 4.0f;
                                IVec idx(nout + 1, -5);
                                nn::maxpool2d_forward(y.p, idx.data(), x.p, g, n, c);
                                const PoolRef r = max_ref(FVec(x.p, x.p + nin), g, planes);
                                for (size_t o = 0; o < nout; ++o) {
                                    ASSERT_EQ((double)y.p[o], r.y[o]) << o;
                                    ASSERT_EQ(idx[o], r.idx[o]) << o;
                                }
                                ASSERT_EQ(idx[nout], -5);
                                // Plain, then with the ReLU folded in: only outputs > 0 pass dy.
                                for (bool relu : {false, true}) {
                                    std::fill(dx.p, dx.p + nin, 99.0f);
                                    nn::maxpool2d_backward(dx.p, dy.p, idx.data(), g, n, c, relu ? y.p : nullptr);
                                    DVec want(nin, 0.0);
                                    for (size_t o = 0; o < nout; ++o)
                                        if (!relu || y.p[o] > 0.0f)
                                            want[o / ((size_t)g.oh * g.ow) * h * w + r.idx[o]] += dy.p[o];
                                    const double tol = max_cover(g) * max_cover(g) * 1.0 * kEps / 2;  // |dy| <= 1
                                    for (size_t i = 0; i < nin; ++i)
                                        ASSERT_TRUE(near_abs(dx.p[i], want[i], tol)) << i << (relu ? " relu" : "");
                                    ASSERT_TRUE(x.guards_ok() && y.guards_ok() && dx.guards_ok());
                                }
                                ++run;
                            }
                        }
    EXPECT_GT(run, 100);
}

// Loss = sum_o w_o y_o through the double reference, central differences
// per input: max pooling is linear near inputs whose values are at least
// 4 h apart, so the difference quotient is the gradient up to the rounding
// of the loss (~1e-16 / h).
TEST(PoolMax, BackwardMatchesFiniteDifferences) {
    std::mt19937 rng(11);
    for (int p : {0, 1})
        for (int s : {1, 2}) {
            nn::PoolGeom g = geom(5, 7, 3, s, p);
            ASSERT_TRUE(nn::pool2d_geometry(&g));
            const int n = 3, c = 1;
            const size_t nin = (size_t)n * c * 35, nout = (size_t)n * c * g.oh * g.ow;
            FVec x(nin), wy(nout), dx(nin);
            // distinct values 0.01 apart, shuffled: no ties
            for (size_t i = 0; i < nin; ++i) x[i] = 0.01f * (float)i - 0.5f;
            std::shuffle(x.begin(), x.end(), rng);
            fill_uniform(wy.data(), nout, rng, -1.0f, 1.0f);
            FVec y(nout);
            IVec idx(nout);
            nn::maxpool2d_forward(y.data(), idx.data(), x.data(), g, n, c);
            nn::maxpool2d_backward(dx.data(), wy.data(), idx.data(), g, n, c);
            const double hstep = 1e-3;
            auto loss = [&](const FVec& xv) {
                const PoolRef r = max_ref(xv, g, n * c);
                double l = 0.0;
                for (size_t o = 0; o < nout; ++o) l += wy[o] * r.y[o];
                return l;
            };
            for (size_t i = 0; i < nin; ++i) {
                // The perturbed input in float: x +- 2^-10 is exact for |x| < 1.
                FVec xp = x, xm = x;
                xp[i] += (float)hstep;
                xm[i] -= (float)hstep;
                const double fd = (loss(xp) - loss(xm)) / ((double)xp[i] - (double)xm[i]);
                // dx sums <= cover terms |w| <= 1 in float; fd is exact to ~1e-12.
                ASSERT_TRUE(near_abs(dx[i], fd, max_cover(g) * max_cover(g) * kEps + 1e-9)) << "p " << p << " s " << s
                                                                                          << " i " << i;
            }
        }
}

// =============================================================================
// Average pooling
// =============================================================================

TEST(PoolAvg, DivisorIsTheWindowInsideThePaddedInputOrTheRealCells) {
    for (int h : {1, 3, 5, 7})
        for (int k : {2, 3})
            for (int s : {1, 2})
                for (int p : {0, 1}) {
                    nn::PoolGeom g = geom(h, 5, k, s, p);
                    if (!nn::pool2d_geometry(&g)) continue;
                    for (int oy = 0; oy < g.oh; ++oy)
                        for (int ox = 0; ox < g.ow; ++ox) {
                            const int y0 = oy * s - p, x0 = ox * s - p;
                            // Floor mode: no window reaches past the padded input, so
                            // with count_include_pad the divisor is always k * k.
                            EXPECT_EQ(nn::avgpool2d_divisor(g, y0, x0, true), k * k);
                            EXPECT_EQ(nn::avgpool2d_divisor(g, y0, x0, true), divisor_ref(g, oy, ox, true));
                            EXPECT_EQ(nn::avgpool2d_divisor(g, y0, x0, false), divisor_ref(g, oy, ox, false));
                        }
                }
    // A window reaching past the padded input (as ceil mode would make): the
    // padded bound clips it, as in PyTorch's pool_size.
    nn::PoolGeom g = geom(4, 4, 3, 2, 1);
    ASSERT_TRUE(nn::pool2d_geometry(&g));
    EXPECT_EQ(nn::avgpool2d_divisor(g, 3, 3, true), 2 * 2);  // rows 3, 4 of [-1, 5)
    EXPECT_EQ(nn::avgpool2d_divisor(g, 3, 3, false), 1);     // only cell (3, 3) is real
}

TEST(PoolAvg, SweepMatchesDoubleReference) {
    std::mt19937 rng(8);
    int run = 0;
    for (int h : {1, 3, 5, 7, 28})
        for (int w : {1, 3, 5, 7, 28})
            for (int k : {2, 3})
                for (int s : {1, 2})
                    for (int p : {0, 1})
                        for (int n : {1, 3})
                            for (bool cip : {true, false}) {
                                if ((w != h && w != 3 && h != 3) || (n == 3 && h * w > 100)) continue;
                                nn::PoolGeom g = geom(h, w, k, s, p);
                                if (!nn::pool2d_geometry(&g)) continue;
                                SCOPED_TRACE(testing::Message() << h << "x" << w << " k " << k << " s " << s << " p "
                                                                << p << " n " << n << " cip " << cip);
                                const int c = 2, planes = n * c;
                                const size_t nin = (size_t)planes * h * w, nout = (size_t)planes * g.oh * g.ow;
                                Buf x(nin), dy(nout), y(nout), dx(nin, 99.0f);
                                fill_uniform(x.p, nin, rng, -2.0f, 2.0f);
                                fill_uniform(dy.p, nout, rng, -1.0f, 1.0f);
                                nn::avgpool2d_forward(y.p, x.p, g, cip, n, c);
                                const DVec want = avg_ref(DVec(x.p, x.p + nin), g, planes, cip);
                                // <= k^2 terms of |x| <= 2: the float sum within
                                // (k^2 - 1) eps/2 * 2 k^2, the division eps/2 |y|.
                                const double tol_y = (k * k) * (k * k) * kEps + kEps;
                                for (size_t o = 0; o < nout; ++o) ASSERT_TRUE(near_abs(y.p[o], want[o], tol_y)) << o;
                                // dx: the adjoint, sum over covering windows of dy / divisor.
                                nn::avgpool2d_backward(dx.p, dy.p, g, cip, n, c);
                                DVec wdx(nin, 0.0);
                                for (int pl = 0; pl < planes; ++pl)
                                    for (int oy = 0; oy < g.oh; ++oy)
                                        for (int ox = 0; ox < g.ow; ++ox) {
                                            const double share = dy.p[((size_t)pl * g.oh + oy) * g.ow + ox] /
                                                                 (double)divisor_ref(g, oy, ox, cip);
                                            for (int i = 0; i < k; ++i)
                                                for (int j = 0; j < k; ++j) {
                                                    const int iy = oy * s - p + i, ix = ox * s - p + j;
                                                    if (iy >= 0 && iy < h && ix >= 0 && ix < w)
                                                        wdx[((size_t)pl * h + iy) * w + ix] += share;
                                                }
                                        }
                                // each share rounds once (eps/2, |share| <= 1), then <= cover
                                // of them are summed: cover * cover * eps/2 covers both.
                                const double tol_dx = max_cover(g) * max_cover(g) * kEps;
                                for (size_t i = 0; i < nin; ++i) ASSERT_TRUE(near_abs(dx.p[i], wdx[i], tol_dx)) << i;
                                ASSERT_TRUE(x.guards_ok() && y.guards_ok() && dx.guards_ok());
                                ++run;
                            }
    EXPECT_GT(run, 100);
}

TEST(PoolAvg, BackwardMatchesFiniteDifferences) {
    std::mt19937 rng(12);
    for (bool cip : {true, false})
        for (int p : {0, 1}) {
            nn::PoolGeom g = geom(5, 3, 3, 2, p);
            ASSERT_TRUE(nn::pool2d_geometry(&g));
            const int n = 3, c = 2;
            const size_t nin = (size_t)n * c * 15, nout = (size_t)n * c * g.oh * g.ow;
            DVec x(nin);
            FVec wy(nout), dx(nin);
            for (auto& v : x) v = std::uniform_real_distribution<double>(-1.0, 1.0)(rng);
            fill_uniform(wy.data(), nout, rng, -1.0f, 1.0f);
            nn::avgpool2d_backward(dx.data(), wy.data(), g, cip, n, c);
            auto loss = [&](const DVec& xv) {
                const DVec y = avg_ref(xv, g, n * c, cip);
                double l = 0.0;
                for (size_t o = 0; o < nout; ++o) l += wy[o] * y[o];
                return l;
            };
            for (size_t i = 0; i < nin; ++i) {
                DVec xp = x, xm = x;
                xp[i] += 1e-4;
                xm[i] -= 1e-4;
                const double fd = (loss(xp) - loss(xm)) / 2e-4;  // linear: exact to ~1e-12
                ASSERT_TRUE(near_abs(dx[i], fd, max_cover(g) * max_cover(g) * kEps + 1e-9)) << cip << " " << p << " " << i;
            }
        }
}

// =============================================================================
// Global average pooling
// =============================================================================

TEST(PoolGlobalAvg, MatchesDoubleAndRefOverPlaneSizes) {
    std::mt19937 rng(9);
    // 784 = 28 x 28 runs past kSumVectors vectors per lane; 1, 9, 25, 49 are
    // shorter than or not multiples of a vector.
    for (size_t L : {(size_t)1, (size_t)9, (size_t)25, (size_t)49, 3 * W + 1, (size_t)784, (size_t)5000})
        for (size_t n : {(size_t)1, (size_t)3}) {
            const size_t c = 3;
            Buf x(n * c * L), y(n * c), yr(n * c), dy(n * c), dx(n * c * L), dxr(n * c * L);
            fill_uniform(x.p, n * c * L, rng, -1.0f, 3.0f);
            fill_uniform(dy.p, n * c, rng, -1.0f, 1.0f);
            nn::global_avgpool_forward(y.p, x.p, n, c, L);
            nn::global_avgpool_forward_ref(yr.p, x.p, n, c, L);
            for (size_t pl = 0; pl < n * c; ++pl) {
                double s = 0.0, sa = 0.0;
                for (size_t i = 0; i < L; ++i) {
                    s += x.p[pl * L + i];
                    sa += std::fabs(x.p[pl * L + i]);
                }
                // Float lanes hold <= kSumVectors terms (error (16 - 1) eps/2
                // of the magnitudes), the horizontal sum log2 W roundings more,
                // then double; the result rounds once (eps/2 |y|).
                const double tol = lane_sum_tol(sa / (double)L) + kEps / 2 * std::fabs(s / (double)L);
                ASSERT_TRUE(near_abs(y.p[pl], s / (double)L, tol)) << "L " << L << " plane " << pl;
                ASSERT_TRUE(near_abs(yr.p[pl], s / (double)L, kEps / 2 * std::fabs(s / (double)L) + 1e-12));
            }
            nn::global_avgpool_backward(dx.p, dy.p, n, c, L);
            nn::global_avgpool_backward_ref(dxr.p, dy.p, n, c, L);
            for (size_t i = 0; i < n * c * L; ++i) {
                ASSERT_EQ(dx.p[i], dxr.p[i]);
                ASSERT_TRUE(near_abs(dx.p[i], dy.p[i / L] / (double)L, kEps / 2 * std::fabs(dy.p[i / L] / (double)L)));
            }
            ASSERT_TRUE(y.guards_ok() && dx.guards_ok());
        }
}

// =============================================================================
// Batch norm: double references with PyTorch's formulas
// =============================================================================

constexpr float kBnEps = 1e-5f, kMomentum = 0.1f;

// Per-channel batch statistics in double: mean and biased variance.
struct BnStats {
    DVec mean, var;
};
template <class T>
BnStats bn_stats_ref(const T* x, size_t N, size_t C, size_t L) {
    BnStats st{DVec(C, 0.0), DVec(C, 0.0)};
    for (size_t c = 0; c < C; ++c) {
        double s = 0.0;
        for (size_t n = 0; n < N; ++n)
            for (size_t l = 0; l < L; ++l) s += x[(n * C + c) * L + l];
        st.mean[c] = s / (double)(N * L);
        double v = 0.0;
        for (size_t n = 0; n < N; ++n)
            for (size_t l = 0; l < L; ++l) {
                const double d = x[(n * C + c) * L + l] - st.mean[c];
                v += d * d;
            }
        st.var[c] = v / (double)(N * L);
    }
    return st;
}
double gam(const float* g, size_t c) { return g ? g[c] : 1.0; }
double bet(const float* b, size_t c) { return b ? b[c] : 0.0; }
DVec params(const float* p, size_t C, double dflt) {
    DVec v(C, dflt);
    if (p)
        for (size_t c = 0; c < C; ++c) v[c] = p[c];
    return v;
}

// y = (x - mean) / sqrt(var + eps) * gamma + beta, all in double.
template <class T>
DVec bn_y_ref(const T* x, const DVec& mean, const DVec& var, const DVec& gamma, const DVec& beta, size_t N,
              size_t C, size_t L) {
    DVec y(N * C * L);
    for (size_t n = 0; n < N; ++n)
        for (size_t c = 0; c < C; ++c)
            for (size_t l = 0; l < L; ++l) {
                const size_t i = (n * C + c) * L + l;
                y[i] = (x[i] - mean[c]) / std::sqrt(var[c] + (double)kBnEps) * gamma[c] + beta[c];
            }
    return y;
}

// The backward in double, by the formulas in kernels/norm.hpp (st holds the
// batch statistics in training, the running ones in eval).
struct BnGrads {
    DVec dx, dgamma, dbeta;
};
BnGrads bn_backward_ref(const float* dy, const float* x, const BnStats& st, const float* gamma, size_t N, size_t C,
                        size_t L, bool train) {
    BnGrads g{DVec(N * C * L), DVec(C, 0.0), DVec(C, 0.0)};
    const double M = (double)(N * L);
    for (size_t c = 0; c < C; ++c) {
        const double is = 1.0 / std::sqrt(st.var[c] + (double)kBnEps);
        double sdy = 0.0, sdyx = 0.0;
        for (size_t n = 0; n < N; ++n)
            for (size_t l = 0; l < L; ++l) {
                const size_t i = (n * C + c) * L + l;
                sdy += dy[i];
                sdyx += dy[i] * (x[i] - st.mean[c]) * is;
            }
        g.dbeta[c] = sdy;
        g.dgamma[c] = sdyx;
        for (size_t n = 0; n < N; ++n)
            for (size_t l = 0; l < L; ++l) {
                const size_t i = (n * C + c) * L + l;
                const double xhat = (x[i] - st.mean[c]) * is;
                g.dx[i] = train ? gam(gamma, c) * is / M * (M * dy[i] - sdy - xhat * sdyx) : dy[i] * gam(gamma, c) * is;
            }
    }
    return g;
}

// Tolerances. y = (x - mean) k + b, k = gamma inv_std: the subtraction,
// product and sum round once each (eps/2 of |x - mean| k and of |y|); the
// float mean is off by eps/2 |mean|; inv_std carries half the variance
// sum's relative error (var_rel) plus its own rounding. PyTorch forms
// x * alpha + beta', whose roundings are eps/2 of |x| k <= (|x - mean| +
// |mean|) k and of |beta'| <= |mean| k + |b|. 4 eps per term covers a side.
double tol_y(double xm, double mean, double k, double b, double y, double var_rel) {
    return std::fabs(k) * (std::fabs(xm) * (4 * kEps + var_rel) + 4 * kEps * std::fabs(mean)) +
           4 * kEps * (std::fabs(b) + std::fabs(y));
}

// Magnitudes of a channel's backward sums: sum |dy|, sum |dy (x - mean)|.
struct Mags {
    double dy = 0.0, dyd = 0.0, sdy = 0.0, sdyd = 0.0;  // and the signed sums
};
Mags mags(const float* dy, const float* x, double mean, size_t N, size_t C, size_t L, size_t c) {
    Mags m;
    for (size_t n = 0; n < N; ++n)
        for (size_t l = 0; l < L; ++l) {
            const size_t i = (n * C + c) * L + l;
            m.dy += std::fabs(dy[i]);
            m.dyd += std::fabs(dy[i] * (x[i] - mean));
            m.sdy += dy[i];
            m.sdyd += dy[i] * (x[i] - mean);
        }
    return m;
}
// dgamma = inv_std * sum dy (x - mean): the lane sum's error, the float
// mean's eps/2 |mean| in every term, inv_std's relative error and the +=.
double tol_dgamma(const Mags& m, double is, double mean, double want, double var_rel) {
    return is * (lane_sum_tol(m.dyd) + kEps * m.dy * std::fabs(mean)) + (var_rel + 2 * kEps) * std::fabs(want) + kEps;
}
// dx = k (dy - a - (x - mean) b), a = sum dy / M, b = is^2 sum dy (x - mean)
// / M: a and b carry the sums' errors / M (b also inv_std's, twice), x -
// mean the float mean's error d = eps/2 |mean|, and each of the four
// operations rounds once; k carries inv_std's relative error. The float
// mean also moves b, by is^2 d a, which (x - mean) multiplies.
double tol_dx(double dy, double xm, double mean, double k, double is, const Mags& m, double M, double want) {
    const double a = m.sdy / M, b = is * is * m.sdyd / M;
    return std::fabs(k) * (4 * kEps * (std::fabs(dy) + std::fabs(a) + (std::fabs(xm) + std::fabs(mean)) * std::fabs(b)) +
                           kEps * std::fabs(mean) * std::fabs(xm) * is * is * std::fabs(a) +
                           lane_sum_tol(m.dy) / M + std::fabs(xm) * is * is * lane_sum_tol(m.dyd) / M +
                           2 * lane_rel() * std::fabs(xm * b)) +
           (lane_rel() + kEps) * std::fabs(want);
}

using FwdTrain = void (*)(float*, float*, float*, float*, float*, const float*, const float*, const float*, float,
                          float, size_t, size_t, size_t);
using BwdTrain = void (*)(float*, float*, float*, const float*, const float*, const float*, const float*,
                          const float*, size_t, size_t, size_t);

// Three training steps of one shape through the kernels under test and the
// double reference: y, mean, inv_std and the running statistics each step,
// then the backward of the last (dgamma, dbeta pre-filled: they must add).
void check_bn_train(FwdTrain fwd, BwdTrain bwd, size_t N, size_t C, size_t L, bool affine, std::mt19937& rng) {
    SCOPED_TRACE(testing::Message() << "N " << N << " C " << C << " L " << L << " affine " << affine);
    const size_t n = N * C * L;
    const double M = (double)(N * L);
    FVec gamma(C), beta(C);
    fill_uniform(gamma.data(), C, rng, 0.5f, 1.5f);
    fill_uniform(beta.data(), C, rng, -0.5f, 0.5f);
    const float* g = affine ? gamma.data() : nullptr;
    const float* b = affine ? beta.data() : nullptr;
    const DVec gd = params(g, C, 1.0), bd = params(b, C, 0.0);
    Buf rm(C, 0.0f), rv(C, 1.0f), mean(C), inv_std(C), y(n);
    DVec rm_ref(C, 0.0), rv_ref(C, 1.0);
    FVec x(n);
    BnStats st;
    for (int step = 0; step < 3; ++step) {
        // Channels with their own offset and spread; channel 0 far from 0
        // (mean 300, spread 1) to check nothing cancels.
        for (size_t s = 0; s < N; ++s)
            for (size_t c = 0; c < C; ++c) {
                const float off = c == 0 ? 300.0f : (float)c * 0.7f - 1.0f, sc = 0.5f + 0.3f * (float)(c % 4);
                fill_uniform(x.data() + (s * C + c) * L, L, rng, off - sc, off + sc);
            }
        fwd(y.p, mean.p, inv_std.p, rm.p, rv.p, x.data(), g, b, kMomentum, kBnEps, N, C, L);
        st = bn_stats_ref(x.data(), N, C, L);
        const DVec want = bn_y_ref(x.data(), st.mean, st.var, gd, bd, N, C, L);
        for (size_t c = 0; c < C; ++c) {
            double sa = 0.0;  // sum |x - mean|: the magnitude of the deviation sum
            for (size_t s = 0; s < N; ++s)
                for (size_t l = 0; l < L; ++l) sa += std::fabs(x[(s * C + c) * L + l] - st.mean[c]);
            // mean: the deviation sum's error / M, then one rounding.
            ASSERT_TRUE(near_abs(mean.p[c], st.mean[c], lane_sum_tol(sa) / M + kEps / 2 * std::fabs(st.mean[c])))
                << "mean c " << c << " step " << step;
            // inv_std: the variance's relative error (halved by the root),
            // the shift's rounding in it, and one rounding.
            const double is = 1.0 / std::sqrt(st.var[c] + (double)kBnEps);
            ASSERT_TRUE(near_abs(inv_std.p[c], is, (lane_rel() + kEps) * is)) << "inv_std c " << c;
            rm_ref[c] = (1.0 - 0.1) * rm_ref[c] + 0.1 * st.mean[c];
            rv_ref[c] = (1.0 - 0.1) * rv_ref[c] + 0.1 * st.var[c] * M / (M - 1.0);  // unbiased
            // Each step rounds the stored value (eps/2; momentum 0.1f is
            // 1.5e-8 relative off 0.1), and the step's mean and variance
            // bring their errors above, times 0.1: (s + 1) times that.
            const double tol_rm =
                (step + 1) * (kEps * std::fabs(rm_ref[c]) + 0.1 * (lane_sum_tol(sa) / M + kEps * std::fabs(st.mean[c])));
            ASSERT_TRUE(near_abs(rm.p[c], rm_ref[c], tol_rm)) << "running_mean c " << c << " step " << step;
            ASSERT_TRUE(near_abs(rv.p[c], rv_ref[c], (step + 1) * (kEps + lane_rel()) * std::fabs(rv_ref[c])))
                << "running_var c " << c << " step " << step;
        }
        for (size_t i = 0; i < n; ++i) {
            const size_t c = i / L % C;
            const double k = gd[c] / std::sqrt(st.var[c] + (double)kBnEps);
            ASSERT_TRUE(near_abs(y.p[i], want[i], tol_y(x[i] - st.mean[c], st.mean[c], k, bd[c], want[i], lane_rel())))
                << "y " << i << " step " << step;
        }
        ASSERT_TRUE(rm.guards_ok() && rv.guards_ok() && mean.guards_ok() && inv_std.guards_ok() && y.guards_ok());
    }
    // Backward through the last step.
    FVec dy(n);
    fill_uniform(dy.data(), n, rng, -1.0f, 1.0f);
    Buf dx(n, 99.0f), dgamma(C, 0.5f), dbeta(C, -0.25f);
    bwd(dx.p, affine ? dgamma.p : nullptr, affine ? dbeta.p : nullptr, dy.data(), x.data(), mean.p, inv_std.p, g, N,
        C, L);
    const BnGrads want = bn_backward_ref(dy.data(), x.data(), st, g, N, C, L, true);
    for (size_t c = 0; c < C; ++c) {
        const double is = 1.0 / std::sqrt(st.var[c] + (double)kBnEps), k = gd[c] * is;
        const Mags m = mags(dy.data(), x.data(), st.mean[c], N, C, L, c);
        if (affine) {
            ASSERT_TRUE(near_abs(dgamma.p[c], 0.5 + want.dgamma[c], tol_dgamma(m, is, st.mean[c], want.dgamma[c], lane_rel())))
                << "dgamma c " << c;
            ASSERT_TRUE(near_abs(dbeta.p[c], -0.25 + want.dbeta[c], lane_sum_tol(m.dy) + kEps)) << "dbeta c " << c;
        } else {
            ASSERT_EQ(dgamma.p[c], 0.5f);  // untouched
        }
        for (size_t s = 0; s < N; ++s)
            for (size_t l = 0; l < L; ++l) {
                const size_t i = (s * C + c) * L + l;
                ASSERT_TRUE(near_abs(dx.p[i], want.dx[i],
                                     tol_dx(dy[i], x[i] - st.mean[c], st.mean[c], k, is, m, M, want.dx[i])))
                    << "dx " << i;
            }
    }
    ASSERT_TRUE(dx.guards_ok() && dgamma.guards_ok() && dbeta.guards_ok());
}

// Shapes for every path: L = 1 along C (C below, at and past a vector, N
// past kSumVectors rows), L >= kWidth along L (runs past kSumVectors
// vectors), 1 < L < kWidth (plain loops), N = 1 with L > 1.
TEST(BatchNorm, TrainingMatchesDoubleReferenceOverEveryPath) {
    struct Shape {
        size_t N, C, L;
    };
    const Shape shapes[] = {{3, 5, 1}, {2, W, 1},  {5, 2 * W + 3, 1}, {70, W + 1, 1},    {3, 4, 25}, {1, 3, 49},
                            {2, 3, 9}, {1, 2, 5},  {2, 2, 784},       {3, 2, W},         {1, 1, 3 * W + 1},
                            {4, 3, 4}};
    std::mt19937 rng(21);
    for (const Shape& s : shapes)
        for (bool affine : {true, false}) {
            check_bn_train(nn::batchnorm_forward_train, nn::batchnorm_backward_train, s.N, s.C, s.L, affine, rng);
            check_bn_train(nn::batchnorm_forward_train_ref, nn::batchnorm_backward_train_ref, s.N, s.C, s.L, affine,
                           rng);
            if (HasFatalFailure()) return;
        }
}

// Eval mode: y from the running statistics, and its backward (dx = dy k,
// the parameter gradients about the running statistics), vector and ref.
TEST(BatchNorm, EvalMatchesDoubleReference) {
    std::mt19937 rng(22);
    for (size_t L : {(size_t)1, (size_t)9, (size_t)50})
        for (size_t C : {(size_t)3, 2 * W + 1})
            for (int impl = 0; impl < 2; ++impl) {
                SCOPED_TRACE(testing::Message() << "C " << C << " L " << L << " impl " << impl);
                const size_t N = 4, n = N * C * L;
                FVec x(n), dy(n), gamma(C), beta(C), rm(C), rv(C), inv_std(C);
                fill_uniform(x.data(), n, rng, -3.0f, 5.0f);
                fill_uniform(dy.data(), n, rng, -1.0f, 1.0f);
                fill_uniform(gamma.data(), C, rng, 0.5f, 1.5f);
                fill_uniform(beta.data(), C, rng, -0.5f, 0.5f);
                fill_uniform(rm.data(), C, rng, -1.0f, 2.0f);
                fill_uniform(rv.data(), C, rng, 0.1f, 4.0f);
                Buf y(n), dx(n, 99.0f), dg(C, 0.0f), db(C, 0.0f);
                (impl ? nn::batchnorm_forward_eval_ref : nn::batchnorm_forward_eval)(
                    y.p, x.data(), gamma.data(), beta.data(), rm.data(), rv.data(), kBnEps, N, C, L);
                (impl ? nn::batchnorm_backward_eval_ref : nn::batchnorm_backward_eval)(
                    dx.p, dg.p, db.p, inv_std.data(), dy.data(), x.data(), rm.data(), rv.data(), gamma.data(), kBnEps,
                    N, C, L);
                const BnStats st{DVec(rm.begin(), rm.end()), DVec(rv.begin(), rv.end())};
                const DVec want =
                    bn_y_ref(x.data(), st.mean, st.var, params(gamma.data(), C, 1), params(beta.data(), C, 0), N, C, L);
                const BnGrads wg = bn_backward_ref(dy.data(), x.data(), st, gamma.data(), N, C, L, false);
                for (size_t i = 0; i < n; ++i) {
                    const size_t c = i / L % C;
                    const double k = gamma[c] / std::sqrt(rv[c] + (double)kBnEps);
                    ASSERT_TRUE(near_abs(y.p[i], want[i], tol_y(x[i] - rm[c], rm[c], k, beta[c], want[i], 0.0))) << i;
                    // dy k: inv_std, k and the product round once each.
                    ASSERT_TRUE(near_abs(dx.p[i], wg.dx[i], 2 * kEps * std::fabs(wg.dx[i]))) << i;
                }
                for (size_t c = 0; c < C; ++c) {
                    const Mags m = mags(dy.data(), x.data(), rm[c], N, C, L, c);
                    const double is = 1.0 / std::sqrt(rv[c] + (double)kBnEps);
                    ASSERT_TRUE(near_abs(dg.p[c], wg.dgamma[c], tol_dgamma(m, is, rm[c], wg.dgamma[c], 0.0))) << c;
                    ASSERT_TRUE(near_abs(db.p[c], wg.dbeta[c], lane_sum_tol(m.dy))) << c;
                }
                ASSERT_TRUE(y.guards_ok() && dx.guards_ok() && dg.guards_ok() && db.guards_ok());
            }
}

// The training backward against central differences of the double forward
// (batch statistics recomputed from the perturbed input), loss = sum w y.
// With h = 1e-4 on inputs of size ~1 the truncation error (h^2 f''' / 6,
// ~1e-8 relative) and the rounding (1e-16 / h) are far below the float
// kernel's error: the bound is that error, 64 eps of the gradient's scale
// (k |w| + |a| + |xhat| |b|, with |xhat| <= sqrt(M)).
TEST(BatchNorm, BackwardMatchesFiniteDifferences) {
    struct Shape {
        size_t N, C, L;
    };
    const Shape shapes[] = {{3, 2, 5}, {4, 3, 1}, {1, 2, 6}, {2, 1, W + 3}, {6, W + 2, 1}};
    std::mt19937 rng(23);
    for (const Shape& s : shapes)
        for (int impl = 0; impl < 2; ++impl) {
            const size_t N = s.N, C = s.C, L = s.L, n = N * C * L;
            SCOPED_TRACE(testing::Message() << "N " << N << " C " << C << " L " << L << " impl " << impl);
            FVec x(n), w(n), gamma(C), beta(C), mean(C), inv_std(C), y(n), dx(n), dg(C, 0.0f), db(C, 0.0f);
            fill_uniform(x.data(), n, rng, -1.0f, 2.0f);
            fill_uniform(w.data(), n, rng, -1.0f, 1.0f);
            fill_uniform(gamma.data(), C, rng, 0.5f, 1.5f);
            fill_uniform(beta.data(), C, rng, -0.5f, 0.5f);
            (impl ? nn::batchnorm_forward_train_ref : nn::batchnorm_forward_train)(
                y.data(), mean.data(), inv_std.data(), nullptr, nullptr, x.data(), gamma.data(), beta.data(),
                kMomentum, kBnEps, N, C, L);
            (impl ? nn::batchnorm_backward_train_ref : nn::batchnorm_backward_train)(
                dx.data(), dg.data(), db.data(), w.data(), x.data(), mean.data(), inv_std.data(), gamma.data(), N, C,
                L);
            DVec xd(x.begin(), x.end()), gd(gamma.begin(), gamma.end()), bd(beta.begin(), beta.end());
            auto loss = [&]() {
                const BnStats st = bn_stats_ref(xd.data(), N, C, L);
                const DVec yv = bn_y_ref(xd.data(), st.mean, st.var, gd, bd, N, C, L);
                double l = 0.0;
                for (size_t i = 0; i < n; ++i) l += w[i] * yv[i];
                return l;
            };
            const double h = 1e-4;
            auto fd = [&](double& v) {
                const double v0 = v;
                v = v0 + h;
                const double lp = loss();
                v = v0 - h;
                const double lm = loss();
                v = v0;
                return (lp - lm) / (2 * h);
            };
            const BnStats st = bn_stats_ref(x.data(), N, C, L);
            const double M = (double)(N * L);
            for (size_t i = 0; i < n; ++i) {
                const size_t c = i / L % C;
                const double is = 1.0 / std::sqrt(st.var[c] + (double)kBnEps);
                const double scale = gamma[c] * is * (1.0 + 1.0 + std::sqrt(M) * std::sqrt(M));
                ASSERT_TRUE(near_abs(dx[i], fd(xd[i]), 64 * kEps * scale)) << "dx " << i;
            }
            for (size_t c = 0; c < C; ++c) {  // sums of M terms |w xhat| <= sqrt(M), |w| <= 1
                ASSERT_TRUE(near_abs(dg[c], fd(gd[c]), 64 * kEps * M * std::sqrt(M))) << "dgamma " << c;
                ASSERT_TRUE(near_abs(db[c], fd(bd[c]), 64 * kEps * M)) << "dbeta " << c;
            }
        }
}

// No running statistics (track_running_stats=False) is allowed; with one
// value per channel (M = 1, which PyTorch refuses in training) y = beta and
// running_var keeps its value instead of turning inf or NaN.
TEST(BatchNorm, NullRunningStatsAndOneValuePerChannel) {
    const float x[3] = {1.0f, -2.0f, 7.0f}, gamma[3] = {2.0f, 2.0f, 2.0f}, beta[3] = {0.5f, -1.0f, 3.0f};
    float y[3], mean[3], inv_std[3], rm[3] = {1.0f, 1.0f, 1.0f}, rv[3] = {2.0f, 2.0f, 2.0f};
    nn::batchnorm_forward_train(y, mean, inv_std, nullptr, nullptr, x, gamma, beta, kMomentum, kBnEps, 1, 3, 1);
    for (int c = 0; c < 3; ++c) EXPECT_EQ(y[c], beta[c]);
    nn::batchnorm_forward_train(y, mean, inv_std, rm, rv, x, gamma, beta, kMomentum, kBnEps, 1, 3, 1);
    for (int c = 0; c < 3; ++c) {
        EXPECT_EQ(y[c], beta[c]);
        EXPECT_EQ(mean[c], x[c]);
        EXPECT_EQ(rv[c], 2.0f);
        EXPECT_FLOAT_EQ(rm[c], 0.9f * 1.0f + 0.1f * x[c]);
    }
}

// =============================================================================
// Batch norm against PyTorch
// =============================================================================

// The bounds are check_bn_train's, doubled for PyTorch's own roundings.
TEST(BatchNormTorch, TrainingStepsEvalAndGradientsMatchPyTorch) {
    using pool_norm_ref::kBnCases;
    using pool_norm_ref::kSteps;
    for (const auto& tc : kBnCases)
        for (int impl = 0; impl < 2; ++impl) {
            const size_t N = tc.n, C = tc.c, L = tc.l, n = N * C * L;
            const double M = (double)(N * L);
            SCOPED_TRACE(testing::Message() << "N " << N << " C " << C << " L " << L << " impl " << impl);
            FVec rm(C, 0.0f), rv(C, 1.0f), mean(C), inv_std(C), y(n);
            const float* x = nullptr;
            for (int step = 0; step < kSteps; ++step) {
                x = tc.x + step * n;
                (impl ? nn::batchnorm_forward_train_ref : nn::batchnorm_forward_train)(
                    y.data(), mean.data(), inv_std.data(), rm.data(), rv.data(), x, tc.gamma, tc.beta, kMomentum,
                    kBnEps, N, C, L);
                for (size_t c = 0; c < C; ++c) {
                    const double wm = tc.run_mean[step * C + c], wv = tc.run_var[step * C + c];
                    ASSERT_TRUE(near_abs(rm[c], wm, 2 * (step + 1) * (kEps + lane_rel()) * (std::fabs(wm) + std::fabs(mean[c]))))
                        << "running_mean c " << c << " step " << step;
                    ASSERT_TRUE(near_abs(rv[c], wv, 2 * (step + 1) * (kEps + lane_rel()) * std::fabs(wv)))
                        << "running_var c " << c << " step " << step;
                }
            }
            const BnStats st = bn_stats_ref(x, N, C, L);
            for (size_t i = 0; i < n; ++i) {
                const size_t c = i / L % C;
                const double k = gam(tc.gamma, c) / std::sqrt(st.var[c] + (double)kBnEps);
                ASSERT_TRUE(near_abs(y[i], tc.y[i],
                                     2 * tol_y(x[i] - st.mean[c], st.mean[c], k, bet(tc.beta, c), tc.y[i], lane_rel())))
                    << "y " << i;
            }
            FVec dx(n), dg(C, 0.0f), db(C, 0.0f);
            (impl ? nn::batchnorm_backward_train_ref : nn::batchnorm_backward_train)(
                dx.data(), tc.affine ? dg.data() : nullptr, tc.affine ? db.data() : nullptr, tc.dy, x, mean.data(),
                inv_std.data(), tc.gamma, N, C, L);
            for (size_t c = 0; c < C; ++c) {
                const double is = 1.0 / std::sqrt(st.var[c] + (double)kBnEps), k = gam(tc.gamma, c) * is;
                const Mags m = mags(tc.dy, x, st.mean[c], N, C, L, c);
                if (tc.affine) {
                    ASSERT_TRUE(near_abs(dg[c], tc.dgamma[c], 2 * tol_dgamma(m, is, st.mean[c], tc.dgamma[c], lane_rel())))
                        << "dgamma c " << c;
                    ASSERT_TRUE(near_abs(db[c], tc.dbeta[c], 2 * lane_sum_tol(m.dy))) << "dbeta c " << c;
                }
                for (size_t s = 0; s < N; ++s)
                    for (size_t l = 0; l < L; ++l) {
                        const size_t i = (s * C + c) * L + l;
                        ASSERT_TRUE(near_abs(dx[i], tc.dx[i],
                                             2 * tol_dx(tc.dy[i], x[i] - st.mean[c], st.mean[c], k, is, m, M, tc.dx[i])))
                            << "dx " << i;
                    }
            }
            // Eval, with PyTorch's running statistics after the last step.
            const float* trm = tc.run_mean + (kSteps - 1) * C;
            const float* trv = tc.run_var + (kSteps - 1) * C;
            FVec ye(n), dxe(n), dge(C, 0.0f), dbe(C, 0.0f), scratch(C);
            (impl ? nn::batchnorm_forward_eval_ref : nn::batchnorm_forward_eval)(ye.data(), tc.x_eval, tc.gamma,
                                                                                 tc.beta, trm, trv, kBnEps, N, C, L);
            (impl ? nn::batchnorm_backward_eval_ref : nn::batchnorm_backward_eval)(
                dxe.data(), tc.affine ? dge.data() : nullptr, tc.affine ? dbe.data() : nullptr, scratch.data(), tc.dy,
                tc.x_eval, trm, trv, tc.gamma, kBnEps, N, C, L);
            for (size_t i = 0; i < n; ++i) {
                const size_t c = i / L % C;
                const double k = gam(tc.gamma, c) / std::sqrt((double)trv[c] + kBnEps);
                ASSERT_TRUE(near_abs(ye[i], tc.y_eval[i],
                                     2 * tol_y(tc.x_eval[i] - trm[c], trm[c], k, bet(tc.beta, c), tc.y_eval[i], 0.0)))
                    << "eval y " << i;
                ASSERT_TRUE(near_abs(dxe[i], tc.dx_eval[i], 4 * kEps * std::fabs(tc.dx_eval[i]))) << "eval dx " << i;
            }
            if (tc.affine)
                for (size_t c = 0; c < C; ++c) {
                    const Mags m = mags(tc.dy, tc.x_eval, trm[c], N, C, L, c);
                    const double is = 1.0 / std::sqrt((double)trv[c] + kBnEps);
                    ASSERT_TRUE(near_abs(dge[c], tc.dgamma_eval[c], 2 * tol_dgamma(m, is, trm[c], tc.dgamma_eval[c], 0.0)))
                        << "eval dgamma c " << c;
                    ASSERT_TRUE(near_abs(dbe[c], tc.dbeta_eval[c], 2 * lane_sum_tol(m.dy))) << "eval dbeta c " << c;
                }
        }
}


// The BatchNorm1d / BatchNorm2d layers on PyTorch's cases: the running
// statistics after each step match PyTorch's (same bound as above), and the
// layer's outputs and gradients are bit for bit those of the kernels checked
// above, fed the layer's own buffers.
TEST(BatchNormTorch, TheLayerMatchesPyTorchAndTheKernels) {
    using pool_norm_ref::kBnCases;
    using pool_norm_ref::kSteps;
    for (const auto& tc : kBnCases)
        for (int dims = 1; dims <= (tc.l > 1 ? 2 : 1); ++dims) {
            const int N = tc.n, C = tc.c, L = tc.l;
            const size_t n = (size_t)N * C * L;
            SCOPED_TRACE(testing::Message() << "N " << N << " C " << C << " L " << L << " BatchNorm" << dims << "d");
            const nn::Shape in = dims == 2 ? nn::make_shape({C, 1, L}) : L > 1 ? nn::make_shape({C, L}) : nn::make_shape({C});
            nn::Layer layer = dims == 2 ? nn::BatchNorm2d(C, kBnEps, kMomentum, tc.affine)
                                        : nn::BatchNorm1d(C, kBnEps, kMomentum, tc.affine);
            nn::Arena arena;
            ASSERT_TRUE(arena.reserve(1 << 20).ok());
            ASSERT_TRUE(nn::build(layer, in, N, arena).ok());
            if (tc.affine)
                for (int c = 0; c < C; ++c) layer.params[0][c] = tc.gamma[c], layer.params[1][c] = tc.beta[c];
            const int r = tc.affine ? 2 : 0;
            FVec rm(C, 0.0f), rv(C, 1.0f), mean(C), inv_std(C), y(n), yk(n);
            const nn::Shape bs = nn::batched(in, N);
            for (int step = 0; step < kSteps; ++step) {
                const float* x = tc.x + step * n;
                ASSERT_TRUE(nn::forward(layer, nn::tensor_view(y.data(), bs), nn::tensor_view(const_cast<float*>(x), bs),
                                        nn::Mode::Train)
                                .ok());
                nn::batchnorm_forward_train(yk.data(), mean.data(), inv_std.data(), rm.data(), rv.data(), x, tc.gamma,
                                            tc.beta, kMomentum, kBnEps, N, C, L);
                for (int c = 0; c < C; ++c) {
                    const double wm = tc.run_mean[step * C + c], wv = tc.run_var[step * C + c];
                    ASSERT_TRUE(near_abs(layer.params[r][c], wm,
                                         2 * (step + 1) * (kEps + lane_rel()) * (std::fabs(wm) + std::fabs(mean[c]))))
                        << "running_mean c " << c << " step " << step;
                    ASSERT_TRUE(near_abs(layer.params[r + 1][c], wv, 2 * (step + 1) * (kEps + lane_rel()) * std::fabs(wv)))
                        << "running_var c " << c << " step " << step;
                    ASSERT_EQ(layer.params[r][c], rm[c]);
                    ASSERT_EQ(layer.params[r + 1][c], rv[c]);
                }
                ASSERT_EQ(y, yk);
            }
            FVec dx(n), dxk(n), dg(C, 0.0f), db(C, 0.0f);
            const float* x = tc.x + (kSteps - 1) * n;
            nn::zero_grad(layer);
            ASSERT_TRUE(nn::backward(layer, nn::tensor_view(dx.data(), bs), nn::tensor_view(const_cast<float*>(tc.dy), bs),
                                     nn::tensor_view(const_cast<float*>(x), bs), nn::tensor_view(y.data(), bs))
                            .ok());
            nn::batchnorm_backward_train(dxk.data(), tc.affine ? dg.data() : nullptr, tc.affine ? db.data() : nullptr,
                                         tc.dy, x, mean.data(), inv_std.data(), tc.gamma, N, C, L);
            EXPECT_EQ(dx, dxk);
            if (tc.affine)
                for (int c = 0; c < C; ++c) {
                    EXPECT_EQ(layer.grads[0][c], dg[c]);
                    EXPECT_EQ(layer.grads[1][c], db[c]);
                }
        }
}

}  // namespace
