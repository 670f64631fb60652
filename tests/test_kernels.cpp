// tests/test_kernels.cpp — the vectorised activation and loss kernels against
// their plain `_ref` loops and against double-precision references, over
// every length 0 .. 3 kWidth + 1 (vector body, tail, both, neither), on
// pointers one float past a vector boundary, with special values mixed in:
// +-88, +-100, +-1e30, +-inf, zeros, p at 0 and 1.
//
// Tolerances are in units of FLT_EPSILON = 2^-23 (eps) relative, or in ulps
// of the double reference (an ulp of a subnormal is 2^-149), and each one is
// derived next to its check from the operations the kernel performs: every
// float rounding costs at most half an ulp, <= eps/2 relative; vexp is
// within 1 ulp (checked below); measured over every 17th or 31st float,
// xsimd's log, log1p and tanh stay within 1.4 ulps, glibc's expf within 0.51
// and tanhf within 2.2 (the bounds below count 1.4, 1 and 3).
// A float sum of k positive terms in one lane carries at most (k - 1) eps/2
// relative error (to first order), a horizontal sum of W lanes log2(W) eps/2
// more; the bounds count a whole eps per addition, which also covers the
// terms' own roundings. Results that round as subnormals get an absolute
// floor of a few 2^-149. No bound was widened to make a test pass; where a
// first derivation missed a term (the subnormal floors), the derivation was
// fixed. Targets whose vector lanes flush subnormals to zero (32-bit NEON,
// nn::simd::kFlushesSubnormals: ARMv7 Advanced SIMD arithmetic always
// does) add an absolute FLT_MIN = 2^-126 to every check, what a flushed
// result (exact value below FLT_MIN, given as 0) or a flushed subnormal
// input can move an element; elsewhere that term is 0.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/activation.hpp"
#include "kernels/convert.hpp"
#include "kernels/loss.hpp"

namespace {

using FVec = std::vector<float>;

constexpr double kEps = FLT_EPSILON;
constexpr size_t W = (size_t)nn::simd::kWidth;
constexpr size_t kMaxLen = 3 * W + 1;
constexpr float kGuard = -7777.25f;  // around every output, to catch stray stores
const float kInf = INFINITY;

// What flushing subnormals to zero can cost an element (see the top).
const double kFlushFloor = nn::simd::kFlushesSubnormals ? (double)FLT_MIN : 0.0;

// log2(W): the roundings of a horizontal sum.
double log2w() { return std::log2((double)W); }

// Float lanes hold at most min(ceil(n / W), kSumVectors) terms each.
double lane_terms(size_t n) {
    size_t k = (n + W - 1) / W;
    return (double)(k < nn::simd::kSumVectors ? k : nn::simd::kSumVectors);
}

double ulp(double x) {
    x = std::fabs(x);
    if (x < FLT_MIN) return std::ldexp(1.0, -149);
    return std::ldexp(1.0, std::ilogb(x) - 23);
}

// got within `ulps` ulps of want; NaN and inf must match exactly.
::testing::AssertionResult near_ulps(float got, double want, double ulps) {
    if (std::isnan(want) || std::isinf(want)) {
        if ((std::isnan(want) && std::isnan(got)) || (double)got == want) return ::testing::AssertionSuccess();
    } else if (std::isfinite(got) && std::fabs((double)got - want) <= ulps * ulp(want) + kFlushFloor) {
        return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure() << "got " << got << ", want " << want << " (" << ulps << " ulps allowed, "
                                         << std::fabs((double)got - want) / ulp(want) << " off)";
}

// |got - want| <= k eps |want| + floor, and got is not NaN: k roundings of
// a product chain, each <= eps/2 relative, allow k/2 (plus the inputs'
// errors); floor covers results that round as subnormals (2^-149 steps).
::testing::AssertionResult near_rel(float got, double want, double k, double floor = std::ldexp(1.0, -148)) {
    if (std::isinf(want) && (double)got == want) return ::testing::AssertionSuccess();
    if (!std::isnan(got) && std::fabs((double)got - want) <= k * kEps * std::fabs(want) + floor + kFlushFloor)
        return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << got << ", want " << want << " (" << k << " eps allowed, "
                                         << std::fabs((double)got - want) / (kEps * std::fabs(want)) << " off)";
}

// |got - want| <= tol, and got is not NaN.
::testing::AssertionResult near_abs(double got, double want, double tol) {
    if (!std::isnan(got) && std::fabs(got - want) <= tol + kFlushFloor) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << got << ", want " << want << ", diff " << std::fabs(got - want)
                                         << " > tol " << tol;
}

// n floats one past a vector boundary (std::vector's block is 16-byte
// aligned at least, so p is misaligned for every vector width), with a
// guard float on either side.
struct Buf {
    FVec v;
    float* p;
    explicit Buf(size_t n) : v(n + 2, kGuard), p(v.data() + 1) {}
    bool guards_ok() const { return v.front() == kGuard && v.back() == kGuard; }
};

// Fills x[0..n) with uniform values in [lo, hi), every third one replaced by
// the next of `special` (starting at an offset that moves with n, so each
// special value lands in the vector body for some n and in the tail for
// others).
void fill(float* x, size_t n, std::mt19937& rng, float lo, float hi, const FVec& special = {}) {
    std::uniform_real_distribution<float> u(lo, hi);
    for (size_t i = 0; i < n; ++i) {
        x[i] = u(rng);
        if (!special.empty() && i % 3 == 0) x[i] = special[(i / 3 + n) % special.size()];
    }
}

// =============================================================================
// vexp
// =============================================================================

#if NN_SIMD
// e^x rounded to float: inf where the float overflows.
double exp_want(float x) {
    const double e = std::exp((double)x);
    return std::isinf((float)e) ? INFINITY : e;
}

float vexp1(float x) {  // one lane
    alignas(64) float lanes[nn::simd::kWidth];
    nn::simd::vexp(nn::simd::vf(x)).store_aligned(lanes);
    return lanes[0];
}

// Bound: 0.5 ulp for the last product's rounding, < 0.1 ulp for the dropped
// Taylor terms and ~1e-9 for the reduction, and the Horner steps' roundings
// (each fma rounds once, |r| <= 0.35 shrinks the earlier ones): 1 ulp with
// FMA (measured 0.92 over every 7th float); 1.5 allows for targets
// where xsimd::fma is a multiply and an add (measured 1.2 with SSE4.2).
TEST(VMath, ExpWithinAnUlpOverTheWholeRange) {
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(-110.0f, 95.0f);
    for (int i = 0; i < 200000; ++i) {
        float x = u(rng);
        ASSERT_TRUE(near_ulps(vexp1(x), exp_want(x), 1.5)) << "x = " << x;
    }
    // Small arguments, where the result sits next to 1.
    for (float x = -1e-3f; x < 1e-3f; x += 1.37e-6f) ASSERT_TRUE(near_ulps(vexp1(x), std::exp((double)x), 1.5)) << x;
}

TEST(VMath, ExpOverflowsAndUnderflowsWhereStdExpDoes) {
    // e^x is finite up to ln(FLT_MAX) = 88.72284; xsimd 8.1 gives inf from 88.3763.
    float last_finite = 88.7f;
    while (!std::isinf(exp_want(std::nextafter(last_finite, 100.0f)))) last_finite = std::nextafter(last_finite, 100.0f);
    const float first_inf = std::nextafter(last_finite, 100.0f);
    ASSERT_GT(last_finite, 88.72f);
    EXPECT_TRUE(near_ulps(vexp1(last_finite), exp_want(last_finite), 1.5));
    EXPECT_TRUE(near_ulps(vexp1(88.5f), std::exp(88.5), 1.5));  // xsimd 8.1: inf
    EXPECT_EQ(vexp1(first_inf), kInf);
    // Gradual underflow: subnormal results, the smallest one, then 0
    // (xsimd 8.1 flushes everything below -87.68 to 0).
    if (nn::simd::kFlushesSubnormals) {  // 32-bit NEON: every subnormal result is 0
        for (float x : {-88.0f, -100.0f, -103.27893f}) EXPECT_EQ(vexp1(x), 0.0f) << x;
        EXPECT_GT(vexp1(-87.33f), 0.0f);  // e^-87.33 > FLT_MIN stays
    } else {
        EXPECT_TRUE(near_ulps(vexp1(-88.0f), std::exp(-88.0), 1.5));
        EXPECT_GT(vexp1(-88.0f), 0.0f);
        EXPECT_TRUE(near_ulps(vexp1(-100.0f), std::exp(-100.0), 1.5));
        EXPECT_EQ(vexp1(-103.27893f), std::ldexp(1.0f, -149));  // e^x rounds to the smallest subnormal
    }
    EXPECT_EQ(vexp1(-104.0f), 0.0f);
    for (float x : {-kInf, -1e30f, -200.0f}) EXPECT_EQ(vexp1(x), 0.0f) << x;
    for (float x : {kInf, 1e30f, 89.0f, 200.0f}) EXPECT_EQ(vexp1(x), kInf) << x;
    EXPECT_EQ(vexp1(0.0f), 1.0f);
    EXPECT_EQ(vexp1(-0.0f), 1.0f);
    EXPECT_TRUE(std::isnan(vexp1(NAN)));
}
#endif

// =============================================================================
// Elementwise activations, every length
// =============================================================================

// Inputs that stress exp-based kernels, and their neighbours in the tail.
const FVec kActSpecial = {88.0f, -88.0f, 100.0f, -100.0f, 1e30f, -1e30f, kInf, -kInf,
                          0.0f,  -0.0f,  1e-30f, -20.0f,  20.0f,  88.73f, -103.0f};

double sigmoid_d(double x) {
    if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
    double e = std::exp(x);
    return e / (1.0 + e);
}

TEST(ActKernels, SigmoidEveryLengthMatchesRefAndDouble) {
    std::mt19937 rng(2);
    for (size_t n = 0; n <= kMaxLen; ++n) {
        Buf x(n), y(n), yr(n), yi(n);
        fill(x.p, n, rng, -30.0f, 30.0f, kActSpecial);
        nn::sigmoid_forward(y.p, x.p, n);
        nn::sigmoid_forward_ref(yr.p, x.p, n);
        for (size_t i = 0; i < n; ++i) yi.p[i] = x.p[i];
        nn::sigmoid_forward(yi.p, yi.p, n);  // y may alias x
        for (size_t i = 0; i < n; ++i) {
            // e = exp(-|x|) (vexp 1 ulp, expf 0.51: <= eps), then 1 + e, the
            // division and e * r round once each (eps/2), and e's error
            // reaches 1 / (1 + e) halved: <= 3 eps from the exact value; 3.5
            // allowed, so vector and ref are within 7 eps of each other.
            const double want = sigmoid_d((double)x.p[i]);
            ASSERT_TRUE(near_rel(y.p[i], want, 3.5)) << "n " << n << " x " << x.p[i];
            ASSERT_TRUE(near_rel(yr.p[i], want, 3.5)) << "ref, n " << n << " x " << x.p[i];
            ASSERT_TRUE(near_rel(y.p[i], yr.p[i], 7)) << "n " << n << " x " << x.p[i];
            ASSERT_EQ(yi.p[i], y.p[i]) << "in place, n " << n;
            ASSERT_GE(y.p[i], 0.0f);
            ASSERT_LE(y.p[i], 1.0f);
        }
        ASSERT_TRUE(y.guards_ok() && yr.guards_ok() && yi.guards_ok()) << n;
    }
}

TEST(ActKernels, SigmoidExtremes) {
    const size_t n = 2 * W + 3;  // body and tail
    const float xs[] = {-kInf, -1e30f, -100.0f, -88.0f, 88.0f, 100.0f, 1e30f, kInf};
    for (float v : xs) {
        Buf x(n), y(n);
        for (size_t i = 0; i < n; ++i) x.p[i] = v;
        nn::sigmoid_forward(y.p, x.p, n);
        for (size_t i = 0; i < n; ++i) {
            ASSERT_FALSE(std::isnan(y.p[i])) << v;
            if (v > 0) {
                ASSERT_EQ(y.p[i], 1.0f) << v;
            } else {
                ASSERT_TRUE(near_rel(y.p[i], sigmoid_d(v), 3.5)) << v;  // sigmoid(-100) = 3.7e-44: a subnormal
            }
        }
    }
}

TEST(ActKernels, TanhEveryLengthMatchesRefAndDouble) {
    std::mt19937 rng(3);
    for (size_t n = 0; n <= kMaxLen; ++n) {
        Buf x(n), y(n), yr(n), yi(n);
        fill(x.p, n, rng, -10.0f, 10.0f, kActSpecial);
        if (n > 2) x.p[1] = 3e-39f;  // a subnormal input: tanh x = x
        nn::tanh_forward(y.p, x.p, n);
        nn::tanh_forward_ref(yr.p, x.p, n);
        for (size_t i = 0; i < n; ++i) yi.p[i] = x.p[i];
        nn::tanh_forward(yi.p, yi.p, n);  // y may alias x
        for (size_t i = 0; i < n; ++i) {
            // xsimd::tanh within 1.4 ulps (the scalar build runs tanhf:
            // within 2.2), tanhf within 2.2: 3 ulps each, 6 apart.
            const double want = std::tanh((double)x.p[i]);
            ASSERT_TRUE(near_ulps(y.p[i], want, 3)) << "n " << n << " x " << x.p[i];
            ASSERT_TRUE(near_ulps(yr.p[i], want, 3)) << "ref, n " << n << " x " << x.p[i];
            ASSERT_TRUE(near_ulps(y.p[i], yr.p[i], 6)) << "n " << n << " x " << x.p[i];
            ASSERT_EQ(yi.p[i], y.p[i]) << "in place, n " << n;
        }
        ASSERT_TRUE(y.guards_ok() && yr.guards_ok() && yi.guards_ok()) << n;
    }
    Buf x(W + 1), y(W + 1);
    for (size_t i = 0; i <= W; ++i) x.p[i] = (i % 2) ? kInf : -kInf;
    nn::tanh_forward(y.p, x.p, W + 1);
    for (size_t i = 0; i <= W; ++i) EXPECT_EQ(y.p[i], (i % 2) ? 1.0f : -1.0f) << i;
}

TEST(ActKernels, BackwardsAndLeakyReluEveryLengthMatchRef) {
    std::mt19937 rng(4);
    for (size_t n = 0; n <= kMaxLen; ++n) {
        Buf x(n), y(n), dy(n), a(n), b(n);
        fill(x.p, n, rng, -3.0f, 3.0f, {0.0f, -0.0f});
        fill(dy.p, n, rng, -1.0f, 1.0f);
        for (float slope : {0.0f, 0.1f}) {
            // One multiply and a select: no rounding differs, the results are identical.
            nn::leaky_relu_forward(a.p, x.p, slope, n);
            nn::leaky_relu_forward_ref(y.p, x.p, slope, n);
            for (size_t i = 0; i < n; ++i) ASSERT_EQ(a.p[i], y.p[i]) << "leaky fwd n " << n;
            nn::leaky_relu_backward(a.p, dy.p, y.p, slope, n);
            nn::leaky_relu_backward_ref(b.p, dy.p, y.p, slope, n);
            for (size_t i = 0; i < n; ++i) ASSERT_EQ(a.p[i], b.p[i]) << "leaky bwd n " << n;
        }
        // sigmoid': dy y (1 - y), the same three operations in the same order.
        nn::sigmoid_forward_ref(y.p, x.p, n);
        nn::sigmoid_backward(a.p, dy.p, y.p, n);
        nn::sigmoid_backward_ref(b.p, dy.p, y.p, n);
        for (size_t i = 0; i < n; ++i) {
            ASSERT_EQ(a.p[i], b.p[i]) << "sigmoid bwd n " << n;
            const double yd = y.p[i];
            ASSERT_TRUE(near_rel(a.p[i], dy.p[i] * yd * (1 - yd), 1.5)) << "sigmoid bwd n " << n;  // 3 roundings
        }
        // tanh': dy (1 - y^2). Unfused, y^2 rounds by <= eps/2 (of 1 at
        // most, times |dy|), 1 - y^2 and the product by eps/2 of the result
        // each; fused, less. Bounded by 2 eps |dy| + 2 eps |result|.
        nn::tanh_forward_ref(y.p, x.p, n);
        nn::tanh_backward(a.p, dy.p, y.p, n);
        nn::tanh_backward_ref(b.p, dy.p, y.p, n);
        for (size_t i = 0; i < n; ++i) {
            const double yd = y.p[i], want = dy.p[i] * (1 - yd * yd);
            const double tol = 2 * kEps * std::fabs(dy.p[i]) + 2 * kEps * std::fabs(want);
            ASSERT_TRUE(near_abs(a.p[i], b.p[i], 2 * tol)) << "tanh bwd n " << n;
            ASSERT_TRUE(near_abs(a.p[i], want, tol)) << "tanh bwd n " << n;
        }
        ASSERT_TRUE(a.guards_ok() && b.guards_ok()) << n;
    }
}

TEST(ActKernels, MultiplyEveryLengthMatchesRefExactly) {
    std::mt19937 rng(5);
    for (size_t n = 0; n <= kMaxLen; ++n) {
        Buf x(n), m(n), y(n), yr(n);
        fill(x.p, n, rng, -5.0f, 5.0f, {0.0f, 1e30f, -1e-30f});
        for (size_t i = 0; i < n; ++i) m.p[i] = (i % 4 == 1) ? 0.0f : 1.25f;  // a dropout mask
        nn::multiply(y.p, x.p, m.p, n);
        nn::multiply_ref(yr.p, x.p, m.p, n);
        for (size_t i = 0; i < n; ++i) {
            // One correctly rounded product: the float of the exact double product.
            ASSERT_EQ(y.p[i], yr.p[i]) << n;
            ASSERT_EQ(y.p[i], (float)((double)x.p[i] * m.p[i])) << n;
        }
        nn::multiply(x.p, x.p, m.p, n);  // y may alias x
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(x.p[i], yr.p[i]) << "in place, n " << n;
        ASSERT_TRUE(y.guards_ok() && x.guards_ok()) << n;
    }
}

// Bytes to floats (nn::gather's per-batch conversion), from a byte pointer
// one past a 16-byte boundary, every byte value 0..255 among the inputs.
// x * scale rounds once: the float of the exact product, in both bodies.
// The normalised form (x * scale - mean) * inv_std rounds the product (or
// not, when contracted into an fma), the difference and the last product,
// each by at most half an ulp of its exact value: the bound below adds the
// first two, carried through * inv_std, and the third.
TEST(ConvertKernels, BytesToFloatsEveryLengthMatchesRefAndDouble) {
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (size_t n = 0; n <= kMaxLen + W; ++n) {
        std::vector<uint8_t> bytes(n + 1);
        const uint8_t* src = bytes.data() + 1;
        for (size_t i = 0; i < n; ++i) bytes[i + 1] = (uint8_t)((i * 37 + n * 101) % 256);
        if (n > 0) bytes[1] = 255;
        if (n > 1) bytes[n] = 0;
        Buf mean(n), inv_std(n), y(n), yr(n);
        for (size_t i = 0; i < n; ++i) mean.p[i] = 0.5f * u(rng), inv_std.p[i] = 1.0f + 3.0f * std::fabs(u(rng));
        for (float scale : {1.0f / 255.0f, 0.5f, -3.0f}) {
            nn::convert_f32(y.p, src, scale, nullptr, nullptr, n);
            nn::convert_f32_ref(yr.p, src, scale, nullptr, nullptr, n);
            for (size_t i = 0; i < n; ++i) {
                ASSERT_EQ(y.p[i], (float)((double)src[i] * scale)) << "n " << n << " i " << i;
                ASSERT_EQ(yr.p[i], y.p[i]) << "n " << n << " i " << i;
            }
            nn::convert_f32(y.p, src, scale, mean.p, inv_std.p, n);
            nn::convert_f32_ref(yr.p, src, scale, mean.p, inv_std.p, n);
            // Floats of the same values take the same operations: equal results.
            FVec as_float(src, src + n), yf(n);
            nn::convert_f32(yf.data(), as_float.data(), scale, mean.p, inv_std.p, n);
            for (size_t i = 0; i < n; ++i) ASSERT_EQ(yf[i], y.p[i]) << "float source, n " << n << " i " << i;
            for (size_t i = 0; i < n; ++i) {
                const double prod = (double)src[i] * scale, diff = prod - mean.p[i];
                const double want = diff * inv_std.p[i];
                const double tol = 0.5 * (ulp(prod) + ulp(diff)) * inv_std.p[i] + 0.5 * ulp(want);
                ASSERT_TRUE(near_abs(y.p[i], want, tol)) << "n " << n << " i " << i << " byte " << (int)src[i];
                ASSERT_TRUE(near_abs(yr.p[i], want, tol)) << "ref, n " << n << " i " << i;
            }
            ASSERT_TRUE(y.guards_ok() && yr.guards_ok()) << n;
        }
    }
}

TEST(ActKernels, ColumnSumAccumulateEveryWidthMatchesRefExactly) {
    std::mt19937 rng(6);
    const size_t rows = 5;
    for (size_t cols = 0; cols <= kMaxLen; ++cols) {
        Buf dz(rows * cols), db(cols), dbr(cols);
        fill(dz.p, rows * cols, rng, -2.0f, 2.0f);
        fill(db.p, cols, rng, -1.0f, 1.0f);  // accumulates onto what is there
        for (size_t j = 0; j < cols; ++j) dbr.p[j] = db.p[j];
        const FVec before(db.p, db.p + cols);
        nn::column_sum_accumulate(db.p, dz.p, rows, cols);
        nn::column_sum_accumulate_ref(dbr.p, dz.p, rows, cols);
        for (size_t j = 0; j < cols; ++j) {
            ASSERT_EQ(db.p[j], dbr.p[j]) << "cols " << cols;  // the same additions in the same order
            double want = before[j], mag = std::fabs(before[j]);
            for (size_t r = 0; r < rows; ++r) {
                want += dz.p[r * cols + j];
                mag += std::fabs(dz.p[r * cols + j]);
            }
            ASSERT_TRUE(near_abs(db.p[j], want, rows * kEps * mag)) << "cols " << cols;  // rows additions
        }
        ASSERT_TRUE(db.guards_ok()) << cols;
    }
}

// =============================================================================
// Softmax, every row width
// =============================================================================

// Row r of a (rows, cols) input: 0 random, 1 with huge and infinite entries,
// 2 all equal. d_j = x_j - m is rounded to float in every implementation
// (the same IEEE subtraction), so the double references below take those d
// as given and check the arithmetic that follows.
void softmax_inputs(float* x, size_t rows, size_t cols, std::mt19937& rng) {
    fill(x, cols, rng, -15.0f, 15.0f);
    if (rows > 1) fill(x + cols, cols, rng, -50.0f, 50.0f, {1e30f, -1e30f, 88.0f, -kInf, 100.0f, -100.0f, -1e30f});
    for (size_t r = 2; r < rows; ++r)
        for (size_t j = 0; j < cols; ++j) x[r * cols + j] = 7.5f;
}

TEST(ActKernels, SoftmaxEveryWidthMatchesRefAndDouble) {
    std::mt19937 rng(7);
    const size_t rows = 3;
    for (size_t cols = 0; cols <= kMaxLen; ++cols) {
        const size_t n = rows * cols;
        Buf x(n), y(n), yr(n), yi(n);
        softmax_inputs(x.p, rows, cols, rng);
        nn::softmax_forward(y.p, x.p, rows, cols);
        for (size_t i = 0; i < n; ++i) yi.p[i] = x.p[i];
        nn::softmax_forward(yi.p, yi.p, rows, cols);  // y may alias x
        if (cols > 0) nn::softmax_forward_ref(yr.p, x.p, rows, cols);  // the ref reads x[0] even then
        for (size_t r = 0; r < rows && cols > 0; ++r) {
            const float* xr = x.p + r * cols;
            float m = xr[0];
            for (size_t j = 1; j < cols; ++j) m = xr[j] > m ? xr[j] : m;
            double se = 0;
            for (size_t j = 0; j < cols; ++j) se += std::exp((double)(xr[j] - m));
            for (size_t j = 0; j < cols; ++j) {
                const size_t i = r * cols + j;
                const double want = std::exp((double)(xr[j] - m)) / se;
                // e_j (1 ulp), the sum of cols terms (<= cols eps, with each
                // term's own error), 1 / sum and the product (0.5 ulp each):
                // < (cols + 3) eps relative; the ref (0.51-ulp expf) alike.
                // Subnormal p carry an absolute 2^-149 per rounding.
                const double tol = (cols + 4) * kEps * want + std::ldexp(1.0, -147);
                ASSERT_TRUE(near_abs(y.p[i], want, tol)) << "cols " << cols << " row " << r << " j " << j;
                ASSERT_TRUE(near_abs(yr.p[i], want, tol)) << "ref, cols " << cols << " row " << r << " j " << j;
                ASSERT_EQ(yi.p[i], y.p[i]) << "in place, cols " << cols;
            }
        }
        if (rows > 2 && cols > 0) {  // the equal row: 1/cols up to the sum's and the two last roundings
            for (size_t j = 0; j < cols; ++j) ASSERT_TRUE(near_rel(y.p[2 * cols + j], 1.0 / cols, cols + 1)) << cols;
        }
        ASSERT_TRUE(y.guards_ok() && yr.guards_ok() && yi.guards_ok()) << cols;
    }
}

TEST(ActKernels, SoftmaxHugeRowsGiveNoNaN) {
    const size_t cols = 2 * W + 3;  // body and tail
    const float bigs[] = {1e30f, -1e30f, FLT_MAX, -FLT_MAX, 100.0f, -100.0f};
    for (float big : bigs)
        for (size_t at : {(size_t)1, cols - 1}) {  // the winner in the body, then in the tail
            Buf x(cols), y(cols);
            for (size_t j = 0; j < cols; ++j) x.p[j] = (j % 3 == 0) ? -kInf : -big;
            if (big < 0) x.p[0] = -FLT_MAX;  // a finite row max far below
            x.p[at] = big;
            nn::softmax_forward(y.p, x.p, 1, cols);
            double total = 0;
            for (size_t j = 0; j < cols; ++j) {
                ASSERT_FALSE(std::isnan(y.p[j])) << big << " " << j;
                total += y.p[j];
            }
            EXPECT_NEAR(total, 1.0, (cols + 4) * kEps) << big;
            if (big > 0) {
                EXPECT_EQ(y.p[at], 1.0f) << big;  // e^(-2 big) = 0 for the rest
            }
            for (size_t j = 0; j < cols; j += 3) {
                if (j != at) {
                    EXPECT_EQ(y.p[j], 0.0f) << "exp(-inf) " << big;
                }
            }
        }
}

TEST(ActKernels, SoftmaxBackwardEveryWidthMatchesRefAndDouble) {
    std::mt19937 rng(8);
    const size_t rows = 3;
    for (size_t cols = 0; cols <= kMaxLen; ++cols) {
        const size_t n = rows * cols;
        Buf x(n), y(n), dy(n), dx(n), dxr(n);
        softmax_inputs(x.p, rows, cols, rng);
        fill(dy.p, n, rng, -1.0f, 1.0f);
        nn::softmax_forward(y.p, x.p, rows, cols);
        nn::softmax_backward(dx.p, dy.p, y.p, rows, cols);
        nn::softmax_backward_ref(dxr.p, dy.p, y.p, rows, cols);
        for (size_t r = 0; r < rows; ++r) {
            const float* g = dy.p + r * cols;
            const float* p = y.p + r * cols;
            double dot = 0, mag = 0;
            for (size_t j = 0; j < cols; ++j) {
                dot += (double)g[j] * p[j];
                mag += std::fabs((double)g[j] * p[j]);
            }
            for (size_t j = 0; j < cols; ++j) {
                // The float dot of cols products is off by <= (cols + 1) eps
                // sum |g p| (+ log2 W for the lanes); g - dot and the product
                // round once each.
                const double want = p[j] * (g[j] - dot);
                const double tol = p[j] * ((cols + 2 + log2w()) * kEps * mag + kEps * std::fabs(g[j] - dot)) +
                                   kEps * std::fabs(want) + std::ldexp(1.0, -148);
                ASSERT_TRUE(near_abs(dx.p[r * cols + j], want, tol)) << "cols " << cols << " row " << r;
                ASSERT_TRUE(near_abs(dxr.p[r * cols + j], want, tol)) << "ref, cols " << cols << " row " << r;
            }
        }
        ASSERT_TRUE(dx.guards_ok() && dxr.guards_ok()) << cols;
    }
}

// =============================================================================
// Elementwise losses, every length
// =============================================================================

// One elementwise loss: the kernel, its ref, and a double reference of one
// term (loss_i and dloss_i/dp_i before the 1/n of the mean).
struct FlatLoss {
    const char* name;
    double (*kernel)(float*, const float*, const float*, size_t);
    double (*ref)(float*, const float*, const float*, size_t);
    void (*term)(double p, double t, double* loss, double* grad);
    float plo, phi, tlo, thi;  // input ranges
    FVec p_special, t_special;
    double term_eps;      // rounding of one float term, in eps relative (see each)
    bool exact_gradient;  // the kernel's gradient repeats the ref's float operations
    double grad_eps;      // gradient against the double reference, eps relative
};

const float kDelta = 0.75f;
double huber_loss_delta(float* dp, const float* p, const float* t, size_t n) {
    return nn::huber_loss(dp, p, t, kDelta, n);
}
double huber_loss_delta_ref(float* dp, const float* p, const float* t, size_t n) {
    return nn::huber_loss_ref(dp, p, t, kDelta, n);
}

std::vector<FlatLoss> flat_losses() {
    std::vector<FlatLoss> v;
    // d = p - t rounds (0.5), d^2 is fused into the sum: 1.5 eps. dp = (2/n) d: 3 roundings.
    v.push_back({"mse", nn::mse_loss, nn::mse_loss_ref,
                 [](double p, double t, double* l, double* g) { *l = (p - t) * (p - t), *g = 2 * (p - t); },
                 -3, 3, -3, 3, {0.0f, 1e10f, -1e-20f}, {0.0f, 1e10f}, 1.5, true, 1.5});
    // |d|: 0.5 eps. dp = +-1/n, rounded once; 0 at d = 0 (t = p below).
    v.push_back({"mae", nn::mae_loss, nn::mae_loss_ref,
                 [](double p, double t, double* l, double* g) {
                     *l = std::fabs(p - t), *g = p > t ? 1.0 : (p < t ? -1.0 : 0.0);
                 },
                 -3, 3, -3, 3, {0.0f, 1e10f}, {0.0f}, 0.5, true, 0.5});
    // Inside: d (0.5), 0.5 d d (1): 2 eps; outside: d, |d| - delta/2, the
    // product: 1.5 eps. dp = d (1/n) or +-delta (1/n): 3 roundings.
    v.push_back({"huber", huber_loss_delta, huber_loss_delta_ref,
                 [](double p, double t, double* l, double* g) {
                     double d = p - t, a = std::fabs(d);
                     *l = a <= kDelta ? 0.5 * d * d : kDelta * (a - 0.5 * kDelta);
                     *g = a <= kDelta ? d : (d > 0 ? kDelta : -kDelta);
                 },
                 -2, 2, -2, 2, {0.0f, kDelta, -kDelta, 1e10f}, {0.0f}, 2, true, 1.5});
    // log, log1p (1.4 ulps each), 1 - t, two products and the fma: ~3.5
    // eps of a term whose two parts have one sign. dp: 1 - p, p (1 - p),
    // p - t, the division, 1/n and the product: 6 roundings, 3 eps.
    v.push_back({"bce", nn::bce_loss, nn::bce_loss_ref,
                 [](double p, double t, double* l, double* g) {
                     double lp = p > 0 ? std::log(p) : -INFINITY, lq = p < 1 ? std::log1p(-p) : -INFINITY;
                     lp = lp >= -100 ? lp : -100, lq = lq >= -100 ? lq : -100;
                     *l = -(t * lp + (1 - t) * lq);
                     double den = (double)(float)p * (1 - (double)(float)p);
                     *g = (p - t) / (den > 1e-12 ? den : 1e-12);
                 },
                 0.001f, 0.999f, 0, 1, {0.0f, 1.0f, 1e-30f, 1e-10f, 0.99999994f, 0.5f}, {0.0f, 1.0f, 0.5f}, 3.5,
                 true, 3});
    // z (1 - t) or -z t (1 eps), log1p(e) with e from vexp (1 + 1.4 ulps),
    // the sum: ~3 eps. dz = (sigmoid z - t) / n: sigmoid within 2.5 ulps,
    // the subtraction may cancel, so this one is checked in absolute terms.
    v.push_back({"bce_logits", nn::bce_logits_loss, nn::bce_logits_loss_ref,
                 [](double z, double t, double* l, double* g) {
                     *l = (z > 0 ? z * (1 - t) : -z * t) + std::log1p(std::exp(-std::fabs(z)));
                     *g = sigmoid_d(z) - t;
                 },
                 -20, 20, 0, 1, {88.0f, -88.0f, 100.0f, -100.0f, 1e30f, -1e30f, 0.0f}, {0.0f, 1.0f, 0.25f}, 3,
                 false, 0});
    return v;
}

void check_flat_loss(const FlatLoss& L, size_t n, std::mt19937& rng) {
    SCOPED_TRACE(::testing::Message() << L.name << ", n " << n);
    Buf p(n), t(n), dp(n), dpr(n);
    fill(p.p, n, rng, L.plo, L.phi, L.p_special);
    fill(t.p, n, rng, L.tlo, L.thi, L.t_special);
    if (n > 4 && p.p[4] >= L.tlo && p.p[4] <= L.thi) t.p[4] = p.p[4];  // d = 0: mae's sign is 0 there
    const double v = L.kernel(dp.p, p.p, t.p, n);
    const double vr = L.ref(dpr.p, p.p, t.p, n);
    ASSERT_TRUE(p.guards_ok() && dp.guards_ok() && dpr.guards_ok());
    if (n == 0) {  // the mean of nothing
        EXPECT_TRUE(std::isnan(v) && std::isnan(vr));
        return;
    }
    ASSERT_EQ(v, L.kernel(nullptr, p.p, t.p, n)) << "the value must not depend on dp";
    double want = 0, mag = 0;
    for (size_t i = 0; i < n; ++i) {
        double l, g;
        L.term(p.p[i], t.p[i], &l, &g);
        want += l;
        mag += std::fabs(l);
        const double gw = g / (double)n;
        if (L.exact_gradient) {
            ASSERT_EQ(dp.p[i], dpr.p[i]) << "i " << i << " p " << p.p[i] << " t " << t.p[i];
            ASSERT_TRUE(near_rel(dp.p[i], gw, L.grad_eps)) << "i " << i << " p " << p.p[i] << " t " << t.p[i];
        } else {
            // sigmoid(z) within 3 ulps (2.5 rounded up) of the exact, 1 ulp of 1 at most, then - t and / n: 2 eps.
            // Subnormal results add 2^-148 (the sigmoid's and the last rounding).
            const double tol = (3 * kEps * sigmoid_d(p.p[i]) + 2 * kEps * std::fabs(g)) / (double)n + std::ldexp(1.0, -148);
            ASSERT_TRUE(near_abs(dp.p[i], gw, tol)) << "i " << i << " z " << p.p[i] << " t " << t.p[i];
            ASSERT_TRUE(near_abs(dpr.p[i], gw, tol)) << "ref, i " << i << " z " << p.p[i] << " t " << t.p[i];
        }
    }
    want /= (double)n;
    mag /= (double)n;
    // Terms within term_eps eps each; float lanes add lane_terms(n) of them,
    // the horizontal sum log2 W more roundings; the ref's terms are double.
    const double tol = (L.term_eps + lane_terms(n) + log2w() + 1) * kEps * mag;
    EXPECT_TRUE(near_abs(v, want, tol)) << "value";
    EXPECT_TRUE(near_abs(vr, want, tol)) << "ref value";
}

TEST(LossKernels, ElementwiseLossesEveryLengthMatchRefAndDouble) {
    std::mt19937 rng(9);
    for (const FlatLoss& L : flat_losses())
        for (size_t n = 0; n <= kMaxLen; ++n) check_flat_loss(L, n, rng);
}

TEST(LossKernels, ElementwiseLossesLongSumsStayAccurate) {
    // Past kSumVectors vectors the float lanes hand their sums to the double
    // total; the bound above then uses kSumVectors terms per lane.
    std::mt19937 rng(10);
    for (const FlatLoss& L : flat_losses()) check_flat_loss(L, 40 * W + 5, rng);
}

TEST(LossKernels, BceAtTheEdges) {
    // p = 0 or 1: logs clamped at -100 (PyTorch); a tiny p keeps log(1 - p)
    // = -p (log1p), not 0, so a target-0 loss of 1e-10 is not lost.
    const size_t n = 2 * W + 1;
    Buf p(n), t(n), dp(n);
    for (size_t i = 0; i < n; ++i) {
        p.p[i] = (i % 2) ? 1e-10f : 0.0f;
        t.p[i] = 0.0f;
    }
    double v = nn::bce_loss(dp.p, p.p, t.p, n);
    double want = 0;  // -log(1 - p) = p + p^2/2...: 1e-10 or 0 per element
    for (size_t i = 0; i < n; ++i) want += -std::log1p(-(double)p.p[i]);
    want /= n;
    EXPECT_TRUE(near_abs(v, want, 4 * kEps * want));
    for (size_t i = 0; i < n; ++i) ASSERT_TRUE(std::isfinite(dp.p[i])) << i;
    // Targets 1 at p = 0: each term is the clamp, 100.
    for (size_t i = 0; i < n; ++i) p.p[i] = 0.0f, t.p[i] = 1.0f;
    EXPECT_EQ(nn::bce_loss(dp.p, p.p, t.p, n), 100.0);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(dp.p[i], (0.0f - 1.0f) / 1e-12f * (1.0f / (float)n)) << i;
}

TEST(LossKernels, BceLogitsHugeLogitsStayFinite) {
    const size_t n = 2 * W + 3;
    Buf z(n), t(n), dz(n);
    double want = 0;
    for (size_t i = 0; i < n; ++i) {
        z.p[i] = (i % 2) ? 1e30f : -1e30f;
        t.p[i] = (i % 3) * 0.5f;
        want += z.p[i] > 0 ? (double)z.p[i] * (1 - t.p[i]) : -(double)z.p[i] * t.p[i];
    }
    want /= n;
    const double v = nn::bce_logits_loss(dz.p, z.p, t.p, n);
    EXPECT_TRUE(near_abs(v, want, (3 + lane_terms(n) + log2w()) * kEps * want));
    // sigmoid(+-1e30) is exactly 1 or 0 (e^-1e30 = 0).
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(dz.p[i], ((z.p[i] > 0 ? 1.0f : 0.0f) - t.p[i]) * (1.0f / (float)n)) << i;
}

TEST(LossKernels, BceLogitsTargetsNearOneKeepTheirDigits) {
    // z (1 - t) + log1p(e^-z) ~ 0.004 for z ~ 40, t = 0.9999: written as
    // max(z, 0) - z t, the float z t (ulp 3.8e-6) would cost ~1e-3 of it;
    // 1 - t is exact for t >= 1/2, so z (1 - t) rounds once.
    const size_t n = 2 * W + 3;
    Buf z(n), t(n);
    double want = 0;
    for (size_t i = 0; i < n; ++i) {
        z.p[i] = 40.0f + 0.37f * (float)i;
        t.p[i] = (i % 2) ? 0.9999f : 1.0f - std::ldexp(1.0f, -20);
        want += (double)z.p[i] * (1 - (double)t.p[i]) + std::log1p(std::exp(-(double)z.p[i]));
    }
    want /= n;
    const double v = nn::bce_logits_loss(nullptr, z.p, t.p, n);
    EXPECT_TRUE(near_abs(v, want, (3 + lane_terms(n) + log2w() + 1) * kEps * want));
}

// =============================================================================
// Softmax cross-entropy and categorical cross-entropy, every row width
// =============================================================================

struct XentCase {
    FVec z, t;
    std::vector<int32_t> labels;
};

// rows = 2 W + 1 (the log1p runs on W rows at a time: one full block, a
// partial one); row kinds cycle: random, huge and infinite logits, a
// confident row (tiny loss), soft targets. Labels and one-hot rows agree.
XentCase xent_case(size_t rows, size_t cols, std::mt19937& rng) {
    XentCase c;
    c.z.resize(rows * cols);
    c.t.assign(rows * cols, 0.0f);
    c.labels.resize(rows);
    for (size_t r = 0; r < rows; ++r) {
        float* zr = c.z.data() + r * cols;
        const int32_t label = (int32_t)(rng() % cols);
        c.labels[r] = label;
        switch (r % 4) {
            case 0: fill(zr, cols, rng, -8.0f, 8.0f); break;
            case 1:
                fill(zr, cols, rng, -30.0f, 30.0f, {1e30f, -1e30f, -kInf, 100.0f, -100.0f, 88.0f, -88.0f});
                if (zr[label] == -kInf) zr[label] = -1e30f;  // a finite loss: -inf only off the label
                break;
            case 2:  // confident: the label leads by 30, loss ~ (cols - 1) e^-30
                fill(zr, cols, rng, -0.5f, 0.5f);
                zr[label] = 30.0f;
                break;
            case 3: fill(zr, cols, rng, -4.0f, 4.0f); break;
        }
        c.t[r * cols + label] = 1.0f;
    }
    return c;
}

// Soft targets for the rows with r % 4 == 3 (a distribution over the row).
FVec soft_targets(const XentCase& c, size_t rows, size_t cols, std::mt19937& rng) {
    FVec t = c.t;
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (size_t r = 3; r < rows; r += 4) {
        float s = 0;
        for (size_t j = 0; j < cols; ++j) s += (t[r * cols + j] = u(rng));
        for (size_t j = 0; j < cols; ++j) t[r * cols + j] /= s;
    }
    return t;
}

TEST(LossKernels, SoftmaxXentEveryWidthMatchesRefAndDouble) {
    std::mt19937 rng(11);
    const size_t rows = 2 * W + 1;
    for (size_t cols = 1; cols <= kMaxLen; ++cols) {
        const size_t n = rows * cols;
        XentCase c = xent_case(rows, cols, rng);
        const FVec soft = soft_targets(c, rows, cols, rng);
        Buf z(n);
        for (size_t i = 0; i < n; ++i) z.p[i] = c.z[i];
        for (int mode = 0; mode < 3; ++mode) {  // labels, one-hot rows, soft rows
            SCOPED_TRACE(::testing::Message() << "cols " << cols
                                              << (mode == 0 ? " labels" : mode == 1 ? " one-hot" : " soft"));
            Buf tb(n);
            for (size_t i = 0; i < n; ++i) tb.p[i] = mode == 1 ? c.t[i] : soft[i];
            const float* t = mode == 0 ? nullptr : tb.p;
            const int32_t* labels = mode == 0 ? c.labels.data() : nullptr;
            Buf dz(n), prob(n), dz2(n), dzr(n), probr(n);
            const double v = nn::softmax_xent_loss(dz.p, prob.p, z.p, t, labels, rows, cols);
            const double vr = nn::softmax_xent_loss_ref(dzr.p, probr.p, z.p, t, labels, rows, cols);
            ASSERT_TRUE(dz.guards_ok() && prob.guards_ok() && dzr.guards_ok() && probr.guards_ok());
            ASSERT_TRUE(std::isfinite(v)) << v;
            // The value depends on neither output; dz alone is the same dz.
            ASSERT_EQ(v, nn::softmax_xent_loss(nullptr, nullptr, z.p, t, labels, rows, cols));
            ASSERT_EQ(v, nn::softmax_xent_loss(dz2.p, nullptr, z.p, t, labels, rows, cols));
            for (size_t i = 0; i < n; ++i) ASSERT_EQ(dz2.p[i], dz.p[i]) << "without prob, i " << i;
            // Double reference from the float d_j = z_j - m (every version rounds it the same).
            double want = 0;
            for (size_t r = 0; r < rows; ++r) {
                const float* zr = z.p + r * cols;
                const float* tr = t ? t + r * cols : nullptr;
                float m = zr[0];
                for (size_t j = 1; j < cols; ++j) m = zr[j] > m ? zr[j] : m;
                double se = 0, tsum = 0, td = 0;
                for (size_t j = 0; j < cols; ++j) {
                    const double d = (double)(zr[j] - m), tj = tr ? tr[j] : (labels[r] == (int32_t)j ? 1.0 : 0.0);
                    se += std::exp(d);
                    tsum += tj;
                    if (tj != 0) td += tj * d;
                }
                want += std::log(se) * tsum - td;  // both parts >= 0
                for (size_t j = 0; j < cols; ++j) {
                    const size_t i = r * cols + j;
                    const double tj = tr ? tr[j] : (labels[r] == (int32_t)j ? 1.0 : 0.0);
                    const double pw = std::exp((double)(zr[j] - m)) / se, gw = (pw * tsum - tj) / rows;
                    // p = e_j / (1 + s): e_j (1 ulp), s summed in float lanes
                    // (lane_terms(cols) terms, log2 W more in the horizontal
                    // sum, each term's own eps), 1 / (1 + s) and the product:
                    // (lane_terms + log2 W + 4) eps, plus subnormal rounding.
                    // dz = (p tsum - t) / rows may cancel: p's error times
                    // tsum, two roundings of the parts, then the scaling.
                    const double ptol = (lane_terms(cols) + log2w() + 4) * kEps * pw + std::ldexp(1.0, -147);
                    const double gtol = (ptol * tsum + 2 * kEps * (pw * tsum + tj)) / rows + 2 * kEps * std::fabs(gw) +
                                        std::ldexp(1.0, -148);
                    ASSERT_TRUE(near_abs(prob.p[i], pw, ptol)) << "row " << r << " j " << j;
                    ASSERT_TRUE(near_abs(dz.p[i], gw, gtol)) << "row " << r << " j " << j;
                    // The ref's p: expf (0.51 ulp), the float of 1/se and the
                    // product (eps/2 each), s in double: < 2 eps.
                    const double rptol = 2 * kEps * pw + std::ldexp(1.0, -147);
                    const double rgtol = (rptol * tsum + 2 * kEps * (pw * tsum + tj)) / rows + 2 * kEps * std::fabs(gw) +
                                         std::ldexp(1.0, -148);
                    ASSERT_TRUE(near_abs(probr.p[i], pw, rptol)) << "ref, row " << r << " j " << j;
                    ASSERT_TRUE(near_abs(dzr.p[i], gw, rgtol)) << "ref, row " << r << " j " << j;
                }
            }
            want /= rows;
            // Per row, log1p(s) (s as above, then 1.4 ulps) times tsum, less
            // t d: tsum and t d are float lane sums too (soft targets), so
            // 2 (lane_terms + log2 W) + 3 eps of the row's loss, all >= 0.
            const double tol = (2 * (lane_terms(cols) + log2w()) + 3) * kEps * want;
            EXPECT_TRUE(near_abs(v, want, tol)) << "value";
            EXPECT_TRUE(near_abs(vr, want, tol)) << "ref value";
        }
        // Labels and their one-hot rows: identical value, gradient and probabilities.
        Buf d1(n), d2(n), p1(n), p2(n);
        const double v1 = nn::softmax_xent_loss(d1.p, p1.p, z.p, nullptr, c.labels.data(), rows, cols);
        const double v2 = nn::softmax_xent_loss(d2.p, p2.p, z.p, c.t.data(), nullptr, rows, cols);
        ASSERT_EQ(v1, v2) << "cols " << cols;
        for (size_t i = 0; i < n; ++i) {
            ASSERT_EQ(d1.p[i], d2.p[i]) << "cols " << cols << " i " << i;
            ASSERT_EQ(p1.p[i], p2.p[i]) << "cols " << cols << " i " << i;
        }
    }
}

TEST(LossKernels, SoftmaxXentConfidentRowKeepsItsDigits) {
    // Loss log(1 + (cols - 1) e^-30) ~ 9.4e-14 (cols - 1): log of a float
    // sum 1 + 1e-13 would give 0; log1p of the sum without the max's 1 keeps
    // the relative accuracy (s: lane sums and vexp, log1p: 1.4 ulps).
    for (size_t cols : {(size_t)2, W + 3, 3 * W + 1}) {
        const size_t rows = 2;
        FVec z(rows * cols, 0.0f), dz(rows * cols);
        std::vector<int32_t> labels = {0, (int32_t)(cols - 1)};
        z[0] = 30.0f;
        z[rows * cols - 1] = 30.0f;
        const double v = nn::softmax_xent_loss(dz.data(), nullptr, z.data(), nullptr, labels.data(), rows, cols);
        const double want = std::log1p((double)(cols - 1) * std::exp(-30.0));
        EXPECT_GT(v, 0.0);
        EXPECT_TRUE(near_abs(v, want, (lane_terms(cols) + log2w() + 3) * kEps * want)) << cols;
        // The ref: the same log1p form in double.
        const double vr = nn::softmax_xent_loss_ref(dz.data(), nullptr, z.data(), nullptr, labels.data(), rows, cols);
        EXPECT_TRUE(near_abs(vr, want, 4 * kEps * want)) << cols;
    }
}

TEST(LossKernels, CategoricalXentEveryWidthMatchesRefAndDouble) {
    std::mt19937 rng(12);
    const size_t rows = 5;
    const float lo = 1e-7f, hi = 1.0f - 1e-7f;
    for (size_t cols = 1; cols <= kMaxLen; ++cols) {
        const size_t n = rows * cols;
        XentCase c = xent_case(rows, cols, rng);
        const FVec soft = soft_targets(c, rows, cols, rng);
        Buf p(n);
        // Probabilities with the clip's edges: 0, 1, tiny, exactly lo and hi.
        fill(p.p, n, rng, 0.01f, 0.99f, {0.0f, 1.0f, 1e-30f, lo, hi, 0.5f, 0.999f});
        for (size_t r = 0; r < rows; ++r) p.p[r * cols + c.labels[r]] = (r % 2) ? 0.0f : 0.75f;  // clipped or not
        for (int mode = 0; mode < 3; ++mode) {
            SCOPED_TRACE(::testing::Message() << "cols " << cols << (mode == 0 ? " labels" : mode == 1 ? " one-hot" : " soft"));
            const float* t = mode == 0 ? nullptr : (mode == 1 ? c.t.data() : soft.data());
            const int32_t* labels = mode == 0 ? c.labels.data() : nullptr;
            Buf dp(n), dpr(n);
            const double v = nn::categorical_xent_loss(dp.p, p.p, t, labels, rows, cols);
            const double vr = nn::categorical_xent_loss_ref(dpr.p, p.p, t, labels, rows, cols);
            ASSERT_TRUE(dp.guards_ok());
            ASSERT_EQ(v, nn::categorical_xent_loss(nullptr, p.p, t, labels, rows, cols));
            double want = 0;
            for (size_t r = 0; r < rows; ++r)
                for (size_t j = 0; j < cols; ++j) {
                    const size_t i = r * cols + j;
                    const double tj = t ? t[i] : (labels[r] == (int32_t)j ? 1.0 : 0.0);
                    const float pj = p.p[i];
                    const double pc = pj < lo ? lo : (pj > hi ? hi : pj);
                    if (tj != 0) want -= tj * std::log(pc);
                    // The same float operations as the ref: -t / pc * (1 / rows).
                    ASSERT_EQ(dp.p[i], dpr.p[i]) << "i " << i;
                    const bool clipped = !(pj >= lo && pj <= hi);
                    ASSERT_TRUE(near_rel(dp.p[i], clipped ? 0.0 : -tj / pc / rows, 1.5)) << "i " << i;  // 3 roundings
                }
            want /= rows;
            // Terms -t log(pc): log 1.4 ulps and the product, same sign: 2.5 eps.
            const double tol = (2.5 + lane_terms(cols) + log2w() + 1) * kEps * want;
            EXPECT_TRUE(near_abs(v, want, tol)) << "value";
            EXPECT_TRUE(near_abs(vr, want, tol)) << "ref value";
        }
        // Labels and their one-hot rows: identical.
        Buf d1(n), d2(n);
        ASSERT_EQ(nn::categorical_xent_loss(d1.p, p.p, nullptr, c.labels.data(), rows, cols),
                  nn::categorical_xent_loss(d2.p, p.p, c.t.data(), nullptr, rows, cols));
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(d1.p[i], d2.p[i]) << i;
    }
}

}  // namespace
