// tests/test_gemm.cpp — gemm_f32 against gemm_f32_ref and an independent
// double-precision triple loop, on odd shapes, every transpose combination,
// alpha/beta/bias variants, padded and misaligned operands.
//
// Tolerance: a float dot product of length K carries an error of at most
// about K * eps * sum_p |a_ip * b_pj| (the classic gamma_K bound), so each
// element is checked against (K + 2) * eps * (|alpha| sum_p |a||b| +
// |beta c| + |bias|), with eps = FLT_EPSILON; against the float reference,
// whose own error counts too, the bound is doubled.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <atomic>
#include <random>
#include <vector>

#include "kernels/gemm.hpp"
#include "nn.hpp"

namespace {

// A value no computation produces, written around C to catch stray stores.
constexpr float kSentinel = -7777.25f;

struct Problem {
    int M, N, K;
    bool trans_a, trans_b;
    float alpha, beta;
    bool with_bias;
    bool padded;  // ld = minimum + pad, and every pointer offset by 1 float
    bool relu = false;  // the fused epilogue: r > 0 ? r : slope * r
    float slope = 0.f;
};

float relu_ref(double r, float slope) { return (float)(r > 0 ? r : slope * r); }

// Owns the operands of one Problem laid out as gemm_f32 sees them.
struct Operands {
    int lda, ldb, ldc;
    std::vector<float> a_buf, b_buf, c_buf, bias_buf;
    float *A, *B, *C, *bias;
    size_t c_floats;  // rows * ldc of C, the region gemm may touch (mostly)

    explicit Operands(const Problem& p, std::mt19937& rng) {
        const int off = p.padded ? 1 : 0;
        const int a_rows = p.trans_a ? p.K : p.M, a_cols = p.trans_a ? p.M : p.K;
        const int b_rows = p.trans_b ? p.N : p.K, b_cols = p.trans_b ? p.K : p.N;
        lda = a_cols + (p.padded ? 5 : 0);
        ldb = b_cols + (p.padded ? 3 : 0);
        ldc = p.N + (p.padded ? 7 : 0);
        std::uniform_real_distribution<float> u(-1.f, 1.f);
        a_buf.assign((size_t)a_rows * lda + off + 1, 0.f);
        b_buf.assign((size_t)b_rows * ldb + off + 1, 0.f);
        // C: one guard float before, rows of ldc, one guard float after.
        c_floats = (size_t)p.M * ldc;
        c_buf.assign(c_floats + off + 2, kSentinel);
        bias_buf.assign((size_t)p.N + off, 0.f);
        A = a_buf.data() + off;
        B = b_buf.data() + off;
        C = c_buf.data() + off + 1;
        bias = p.with_bias ? bias_buf.data() + off : nullptr;
        for (int i = 0; i < a_rows; ++i)
            for (int j = 0; j < a_cols; ++j) A[(size_t)i * lda + j] = u(rng);
        for (int i = 0; i < b_rows; ++i)
            for (int j = 0; j < b_cols; ++j) B[(size_t)i * ldb + j] = u(rng);
        for (int j = 0; j < p.N; ++j) bias_buf[off + j] = u(rng);
        // beta == 0: C starts as NaN, which must not reach the result.
        for (int i = 0; i < p.M; ++i)
            for (int j = 0; j < p.N; ++j)
                C[(size_t)i * ldc + j] = p.beta == 0.f ? NAN : u(rng);
    }
    float a(const Problem& p, int i, int k) const {
        return p.trans_a ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
    }
    float b(const Problem& p, int k, int j) const {
        return p.trans_b ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
    }
};

// The independent check: C in double, plus the error scale of each element.
void reference_double(const Problem& p, const Operands& o, std::vector<double>* want,
                      std::vector<double>* scale) {
    want->assign((size_t)p.M * p.N, 0.0);
    scale->assign((size_t)p.M * p.N, 0.0);
    // op(A) row by row and op(B) column by column, in double.
    std::vector<double> a((size_t)p.M * p.K), bt((size_t)p.N * p.K);
    for (int i = 0; i < p.M; ++i)
        for (int k = 0; k < p.K; ++k) a[(size_t)i * p.K + k] = o.a(p, i, k);
    for (int j = 0; j < p.N; ++j)
        for (int k = 0; k < p.K; ++k) bt[(size_t)j * p.K + k] = o.b(p, k, j);
    for (int i = 0; i < p.M; ++i)
        for (int j = 0; j < p.N; ++j) {
            double acc = 0, mag = 0;
            for (int k = 0; k < p.K; ++k) {
                const double t = a[(size_t)i * p.K + k] * bt[(size_t)j * p.K + k];
                acc += t;
                mag += std::fabs(t);
            }
            const double c0 = p.beta == 0.f ? 0.0 : (double)o.C[(size_t)i * o.ldc + j];
            const double bj = o.bias ? (double)o.bias[j] : 0.0;
            const double r = p.alpha * acc + p.beta * c0 + bj;
            (*want)[(size_t)i * p.N + j] = p.relu ? (r > 0 ? r : p.slope * r) : r;
            (*scale)[(size_t)i * p.N + j] =
                std::fabs(p.alpha) * mag + std::fabs(p.beta * c0) + std::fabs(bj);
        }
}

std::string describe(const Problem& p) {
    char s[200];
    snprintf(s, sizeof s,
             "M=%d N=%d K=%d trans_a=%d trans_b=%d alpha=%g beta=%g bias=%d padded=%d relu=%d slope=%g",
             p.M, p.N, p.K, p.trans_a, p.trans_b, p.alpha, p.beta, p.with_bias, p.padded, p.relu,
             p.slope);
    return s;
}

// Runs gemm_f32 and gemm_f32_ref on copies of the same operands and checks
// both against the double loop, plus the guards around C and the scratch.
// Returns false at the first failure (already reported).
bool check(const Problem& p, std::mt19937& rng) {
    Operands o(p, rng);
    std::vector<double> want, scale;
    reference_double(p, o, &want, &scale);
    std::vector<float> c_ref = o.c_buf;
    float* C_ref = c_ref.data() + (o.C - o.c_buf.data());

    // Scratch, 64-byte aligned, with a guard float past the end that
    // gemm_pack_floats(M, N, K) promises for this shape.
    const size_t np = nn::gemm_pack_floats(p.M, p.N, p.K);
    EXPECT_LE(np, nn::gemm_pack_floats());
    static std::vector<float> pack_buf(nn::gemm_pack_floats() + 16 + 1);
    float* pack = pack_buf.data();
    while ((uintptr_t)pack % 64) ++pack;
    pack[np] = kSentinel;

    nn::GemmEpilogue ep;
    ep.bias = o.bias;
    ep.relu = p.relu;
    ep.slope = p.slope;
    nn::gemm_f32_fused(o.C, o.ldc, o.A, o.lda, p.trans_a, o.B, o.ldb, p.trans_b, ep, p.alpha,
                       p.beta, pack, p.M, p.N, p.K);
    nn::gemm_f32_ref(C_ref, o.ldc, o.A, o.lda, p.trans_a, o.B, o.ldb, p.trans_b, o.bias, p.alpha,
                     p.beta, p.M, p.N, p.K);
    if (p.relu)
        for (int i = 0; i < p.M; ++i)
            for (int j = 0; j < p.N; ++j) {
                float& r = C_ref[(size_t)i * o.ldc + j];
                r = relu_ref(r, p.slope);
            }

    const double eps = (double)(p.K + 2) * FLT_EPSILON;
    for (int i = 0; i < p.M; ++i)
        for (int j = 0; j < p.N; ++j) {
            const size_t e = (size_t)i * p.N + j;
            const double got = o.C[(size_t)i * o.ldc + j];
            const double ref = C_ref[(size_t)i * o.ldc + j];
            const double tol = eps * scale[e] + 1e-30;
            if (std::isnan(got) || std::fabs(got - want[e]) > tol) {
                ADD_FAILURE() << describe(p) << ": C(" << i << ", " << j << ") = " << got
                              << ", double reference " << want[e] << ", tolerance " << tol;
                return false;
            }
            if (std::fabs(got - ref) > 2 * tol) {
                ADD_FAILURE() << describe(p) << ": C(" << i << ", " << j << ") = " << got
                              << ", gemm_f32_ref " << ref << ", tolerance " << 2 * tol;
                return false;
            }
        }
    // Nothing outside the M x N tile of C was written: the padding columns
    // of every row, the float before C and the float after its last row.
    const float* c0 = o.C - 1;
    if (c0[0] != kSentinel) {
        ADD_FAILURE() << describe(p) << ": the float before C was overwritten";
        return false;
    }
    for (int i = 0; i < p.M; ++i)
        for (int j = p.N; j < o.ldc; ++j)
            if (o.C[(size_t)i * o.ldc + j] != kSentinel) {
                ADD_FAILURE() << describe(p) << ": padding C(" << i << ", " << j
                              << ") was overwritten";
                return false;
            }
    if (o.C[o.c_floats] != kSentinel) {
        ADD_FAILURE() << describe(p) << ": the float after C was overwritten";
        return false;
    }
    if (pack[np] != kSentinel) {
        ADD_FAILURE() << describe(p) << ": gemm wrote past gemm_pack_floats(M, N, K) = " << np
                      << " floats of scratch";
        return false;
    }
    return true;
}

// Every combination of transposes, alpha, beta, bias and layout for one shape.
bool check_all_variants(int M, int N, int K, std::mt19937& rng) {
    for (int t = 0; t < 4; ++t)
        for (float alpha : {1.f, 0.5f})
            for (float beta : {0.f, 1.f, -0.5f})
                for (bool with_bias : {false, true})
                    for (bool padded : {false, true}) {
                        const Problem p{M, N, K, (t & 1) != 0, (t & 2) != 0, alpha, beta,
                                        with_bias, padded};
                        if (!check(p, rng)) return false;
                    }
    return true;
}

TEST(Gemm, OddShapesAllVariants) {
    std::mt19937 rng(42);
    const int sizes[] = {1, 3, 17, nn::simd::kWidth + 1, 64, 100};
    for (int M : sizes)
        for (int N : sizes)
            for (int K : sizes)
                if (!check_all_variants(M, N, K, rng)) return;
}

// Shapes larger than the block sizes, so that every one of the five loops
// takes more than one step, with a ragged last block in each dimension.
TEST(Gemm, LargerThanBlocks) {
    std::mt19937 rng(7);
    const int shapes[][3] = {
        {300, 600, 700},
        {nn::kGemmMC + 13, nn::kGemmNC + 37, 2 * nn::kGemmKC + 5},
    };
    for (const auto& s : shapes)
        for (int t = 0; t < 4; ++t) {
            // All four transposes; the scalars, bias and layout alternate.
            const bool ta = (t & 1) != 0, tb = (t & 2) != 0, odd = ta != tb;
            const Problem p{s[0], s[1], s[2], ta, tb, odd ? 0.5f : 1.f, odd ? -0.5f : 0.f,
                            odd, odd};
            if (!check(p, rng)) return;
        }
}

// The MLP shapes the benchmarks time, with the layouts the layers use.
TEST(Gemm, MlpShapes) {
    std::mt19937 rng(3);
    const Problem cases[] = {
        {64, 128, 784, false, true, 1.f, 0.f, true, false},   // forward X W^T + b
        {128, 784, 64, true, false, 1.f, 1.f, false, false},  // dW += dY^T X
        {64, 784, 128, false, false, 1.f, 0.f, false, false}, // dX = dY W
        {64, 10, 128, false, true, 1.f, 0.f, true, false},    // output layer
    };
    for (const Problem& p : cases)
        if (!check(p, rng)) return;
}

// K == 0: op(A) op(B) is empty, so C = beta C + bias (and beta = 0 wipes NaN).
TEST(Gemm, EmptyK) {
    std::mt19937 rng(5);
    for (float beta : {0.f, 1.f, -0.5f})
        for (bool with_bias : {false, true}) {
            const Problem p{5, 7, 0, false, false, 1.f, beta, with_bias, true};
            if (!check(p, rng)) return;
        }
}

// M == 0 or N == 0: nothing is read or written.
TEST(Gemm, EmptyMOrN) {
    std::vector<float> pack(nn::gemm_pack_floats());
    float c = kSentinel, a = 1.f, b = 1.f;
    nn::gemm_f32(&c, 1, &a, 1, false, &b, 1, false, nullptr, 1.f, 0.f, pack.data(), 0, 1, 1);
    nn::gemm_f32(&c, 1, &a, 1, false, &b, 1, false, nullptr, 1.f, 0.f, pack.data(), 1, 0, 1);
    EXPECT_EQ(c, kSentinel);
}

// Every remainder of the register tile: M in 1..2MR+1 and N in 1..2NR+1,
// so each ragged-row and ragged-column count is met once as the only tile
// and once after full tiles, for every transpose combination.
TEST(Gemm, EveryTileRemainder) {
    std::mt19937 rng(11);
    const int MR = nn::kGemmMR, NR = nn::kGemmNR;
    for (int t = 0; t < 4; ++t)
        for (int K : {1, 7})
            for (int M = 1; M <= 2 * MR + 1; ++M)
                for (int N = 1; N <= 2 * NR + 1; ++N) {
                    // beta, bias and layout vary with the shape so all meet.
                    const bool odd = ((M + N + t) & 1) != 0;
                    const Problem p{M, N, K, (t & 1) != 0, (t & 2) != 0, 1.f, odd ? 0.f : 0.5f,
                                    odd, (M + N) % 3 == 0};
                    if (!check(p, rng)) return;
                }
}

// Each block size crossed on its own (one below, at, one above, and two
// blocks plus one), the other dimensions small and ragged.
TEST(Gemm, AcrossEachBlockBoundary) {
    std::mt19937 rng(13);
    const int MC = nn::kGemmMC, NC = nn::kGemmNC, KC = nn::kGemmKC;
    std::vector<Problem> cases;
    for (int d : {-1, 0, 1}) {
        cases.push_back({MC + d, 19, 21, d < 0, false, 1.f, 0.f, true, d == 0});
        cases.push_back({13, NC + d, 21, false, d > 0, 1.f, 1.f, false, d != 0});
        cases.push_back({13, 19, KC + d, d == 0, d != 0, 0.5f, -0.5f, true, false});
    }
    cases.push_back({13, 19, 2 * KC + 1, true, true, 1.f, 0.f, true, true});
    // B read in place (not transposed, rows close enough): across N panels,
    // and across K blocks, each with a ragged last sliver.
    cases.push_back({40, NC + 45, 100, false, false, 1.f, 0.5f, true, false});
    cases.push_back({21, 700, 2 * KC + 5, true, false, 1.f, 1.f, false, true});
    cases.push_back({2 * MC + 1, 5, 3, false, false, 1.f, 0.f, false, false});
    for (const Problem& p : cases)
        if (!check(p, rng)) return;
}

// C = A B^T of one shape, its alpha, beta (0: NaN in C), bias, (leaky)
// ReLU and padding picked from the shape, so that a sweep over shapes
// covers every combination.
Problem transposed_b_variant(int M, int N, int K) {
    const int v = N + M + K;
    Problem p{M, N, K, false, true, v % 2 ? 0.5f : 1.f, v % 3 == 0 ? 0.f : (v % 3 == 1 ? 1.f : -0.5f),
              v % 2 == 0, v % 5 < 2};
    p.relu = v % 4 != 0;
    p.slope = v % 4 == 3 ? 0.1f : 0.f;
    return p;
}

// C = A B^T with at most 16 columns: the dot-product tiles of 3c on
// AVX-512 (the path of 3b elsewhere). Every column count (tiles of 5, 4 and
// the rest), row counts around the 4-row tile, K at, around and well past
// one vector, each with beta 0 (NaN in C), beta != 0, bias, ReLU and leaky
// ReLU, packed and padded operands.
TEST(Gemm, NarrowTransposedBEveryColumnCount) {
    std::mt19937 rng(23);
    for (int N = 1; N <= 16; ++N)
        for (int M : {1, 3, 4, 5, 9, 64})
            for (int K : {16, 17, 31, 128, 300}) {
                if (!check(transposed_b_variant(M, N, K), rng)) return;
            }
}

// Wider C = A B^T with a long K, which takes the dot-product tiles of 3c
// on AVX-512 (gemm_use_dot; elsewhere the packed path, checked the same
// way): ragged row and column tiles, K around a vector multiple, alpha,
// beta (NaN planted in C for beta = 0), bias and (leaky) ReLU, padded C.
TEST(Gemm, WideTransposedBLongK) {
    std::mt19937 rng(29);
    for (int N : {17, 21, 37, 128})
        for (int M : {1, 3, 5, 64})
            for (int K : {nn::kGemmDotWideK, nn::kGemmDotWideK + 1, 400, 784}) {
                if (nn::kGemmHasDot) {
                    EXPECT_TRUE(nn::gemm_use_dot(false, true, M, N, K)) << M << "x" << N << "x" << K;
                }
                if (!check(transposed_b_variant(M, N, K), rng)) return;
            }
    // Past half of L2 for A, or a short K: the packed path.
    EXPECT_FALSE(nn::gemm_use_dot(false, true, 256, 256, 1024));
    EXPECT_FALSE(nn::gemm_use_dot(false, true, 64, 128, 256));
    EXPECT_FALSE(nn::gemm_use_dot(true, true, 64, 128, 784));
}

// The same path with NaN and -inf inputs: ReLU keeps NaN and maps -inf to 0.
TEST(Gemm, NarrowTransposedBReluSpecialValues) {
    const int M = 6, N = 10, K = 20;
    std::vector<float> A((size_t)M * K, 1.f), B((size_t)N * K, 1.f), C((size_t)M * N, 0.f);
    std::vector<float> pack(nn::gemm_pack_floats(M, N, K));
    A[0] = NAN;                          // row 0 of C: NaN
    A[(size_t)(M - 1) * K] = -INFINITY;  // last row of C: -inf before the ReLU
    for (float slope : {0.f, 0.25f}) {
        nn::GemmEpilogue ep;
        ep.relu = true;
        ep.slope = slope;
        nn::gemm_f32_fused(C.data(), N, A.data(), K, false, B.data(), K, true, ep, 1.f, 0.f, pack.data(), M, N, K);
        for (int j = 0; j < N; ++j) {
            EXPECT_TRUE(std::isnan(C[j])) << "column " << j;
            if (slope == 0.f)
                EXPECT_EQ(C[(size_t)(M - 1) * N + j], 0.f) << "column " << j;
            else
                EXPECT_EQ(C[(size_t)(M - 1) * N + j], -INFINITY) << "column " << j;
            EXPECT_EQ(C[(size_t)N + j], 20.f) << "column " << j;
        }
    }
}

// The fused ReLU / leaky ReLU epilogue on full and ragged tiles, with K
// split into several blocks so that it must be applied only after the last.
TEST(Gemm, ReluEpilogue) {
    std::mt19937 rng(17);
    const int shapes[][3] = {{64, 128, 784}, {17, 45, 3}, {9, 33, 2 * nn::kGemmKC + 3}, {1, 1, 1}};
    for (const auto& sh : shapes)
        for (float slope : {0.f, 0.1f})
            for (int t = 0; t < 4; ++t) {
                Problem p{sh[0], sh[1], sh[2], (t & 1) != 0, (t & 2) != 0, 1.f, t == 3 ? 1.f : 0.f,
                          true, t == 2};
                p.relu = true;
                p.slope = slope;
                if (!check(p, rng)) return;
            }
}

// ReLU of NaN stays NaN (so a diverging fit is seen), of -inf is 0.
TEST(Gemm, ReluEpilogueSpecialValues) {
    const int M = nn::kGemmMR + 1, N = nn::kGemmNR + 1, K = 3;  // full and edge tiles
    std::vector<float> A((size_t)M * K, 1.f), B((size_t)K * N, 1.f), C((size_t)M * N, 0.f);
    std::vector<float> pack(nn::gemm_pack_floats(M, N, K));
    A[0] = NAN;                          // row 0 of C: NaN
    A[(size_t)(M - 1) * K] = -INFINITY;  // last row of C: -inf before the ReLU
    nn::GemmEpilogue ep;
    ep.relu = true;
    nn::gemm_f32_fused(C.data(), N, A.data(), K, false, B.data(), N, false, ep, 1.f, 0.f,
                       pack.data(), M, N, K);
    for (int j = 0; j < N; ++j) {
        EXPECT_TRUE(std::isnan(C[j])) << "column " << j;
        EXPECT_EQ(C[(size_t)(M - 1) * N + j], 0.f) << "column " << j;
        EXPECT_EQ(C[(size_t)N + j], 3.f) << "column " << j;
    }
}

// y = act(ct^T + bias), the store behind a Dense forward computed as
// y^T = W x^T: against its plain loop on sizes around the 16 x 16 blocks,
// padded leading dimensions, with and without bias, ReLU and leaky ReLU;
// NaN passes through the ReLU. Nothing outside rows x cols of y is written.
TEST(Gemm, TransposedStoreMatchesReference) {
    std::mt19937 rng(29);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (int rows : {1, 3, 15, 16, 17, 64})
        for (int cols : {1, 3, 16, 17, 33, 128})
            for (int variant = 0; variant < 4; ++variant) {
                const bool with_bias = variant != 1, relu = variant >= 2;
                const float slope = variant == 3 ? 0.1f : 0.f;
                const int ldct = rows + 3, ldy = cols + 5;
                std::vector<float> ct((size_t)cols * ldct), bias(cols);
                for (float& v : ct) v = u(rng);
                for (float& v : bias) v = u(rng);
                ct[0] = NAN;
                std::vector<float> y((size_t)rows * ldy, kSentinel), y_ref = y;
                nn::transpose_bias_act_f32(y.data(), ldy, ct.data(), ldct, with_bias ? bias.data() : nullptr,
                                           rows, cols, relu, slope);
                nn::transpose_bias_act_f32_ref(y_ref.data(), ldy, ct.data(), ldct,
                                               with_bias ? bias.data() : nullptr, rows, cols, relu, slope);
                for (int r = 0; r < rows; ++r)
                    for (int o = 0; o < ldy; ++o) {
                        const float got = y[(size_t)r * ldy + o], want = y_ref[(size_t)r * ldy + o];
                        if (o >= cols) {
                            ASSERT_EQ(got, kSentinel) << "padding written at row " << r << ", column " << o;
                            continue;
                        }
                        float v = ct[(size_t)o * ldct + r] + (with_bias ? bias[o] : 0.f);
                        if (relu) v = v > 0.f ? v : (slope == 0.f ? (v < 0.f ? 0.f : v) : v * slope);
                        if (std::isnan(v)) {
                            ASSERT_TRUE(std::isnan(got) && std::isnan(want)) << r << ", " << o;
                            continue;
                        }
                        ASSERT_EQ(got, v) << "rows " << rows << " cols " << cols << " variant " << variant << " at "
                                          << r << ", " << o;
                        ASSERT_EQ(want, v) << "reference at " << r << ", " << o;
                    }
            }
}

// The tile hook sees every element of C exactly once, after the last K
// block: adding 1000 in it shifts the whole result by exactly 1000.
TEST(Gemm, TileEpilogueCoversEachElementOnce) {
    const int M = 2 * nn::kGemmMR + 3, N = 2 * nn::kGemmNR + 5, K = nn::kGemmKC + 9;
    std::mt19937 rng(19);
    std::uniform_int_distribution<int> u(-4, 4);  // small integers: sums are exact
    std::vector<float> A((size_t)M * K), B((size_t)K * N), C((size_t)M * N), R((size_t)M * N);
    for (float& v : A) v = (float)u(rng);
    for (float& v : B) v = (float)u(rng);
    std::vector<float> pack(nn::gemm_pack_floats(M, N, K));
    nn::GemmEpilogue ep;
    ep.tile_fn = [](float* c, int ldc, int mr, int nr, const void*) {
        for (int i = 0; i < mr; ++i)
            for (int j = 0; j < nr; ++j) c[(ptrdiff_t)i * ldc + j] += 1000.f;
    };
    nn::gemm_f32_fused(C.data(), N, A.data(), K, false, B.data(), N, false, ep, 1.f, 0.f,
                       pack.data(), M, N, K);
    nn::gemm_f32_ref(R.data(), N, A.data(), K, false, B.data(), N, false, nullptr, 1.f, 0.f, M,
                     N, K);
    for (size_t e = 0; e < C.size(); ++e) ASSERT_EQ(C[e], R[e] + 1000.f) << "element " << e;
}

// Threads: the shares of C tile it exactly, and computing it in shares (in
// sequence, and on the thread pool) gives bit-for-bit the one-thread result.
TEST(Gemm, ThreadSharesMatchOneThreadBitForBit) {
    std::mt19937 rng(23);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const Problem shapes[] = {
        {64, 128, 784, false, true, 1.f, 0.f, true, false},   // forward, split along N
        {128, 784, 64, true, false, 1.f, 1.f, false, false},  // weight gradient
        {64, 784, 128, false, false, 1.f, 0.f, false, false}, // input gradient
        {37, 10, 50, false, true, 1.f, 0.5f, true, false},    // one sliver on x86: split along M
        // Two slivers, the last a few columns: a share narrow enough for 3b,
        // which must still go through the one-thread run's edge tile.
        {37, nn::kGemmNR + 3, 50, false, true, 1.f, 0.5f, true, false},
        {45, 9, 70, false, true, 1.f, 0.f, true, false},      // narrow C (one vector or less)
        {nn::kGemmMR * 3 + 1, nn::kGemmNR * 2 + 3, 300, true, true, 0.5f, 0.f, true, false},
    };
    for (const Problem& p : shapes)
        for (int nth = 1; nth <= 5; ++nth) {
            Operands o(p, rng);
            for (float& v : o.c_buf) v = u(rng);  // beta != 0 reads it
            std::vector<float> one = o.c_buf, seq = o.c_buf, pool = o.c_buf;
            const size_t stride = (nn::gemm_pack_floats(p.M, p.N, p.K) + 15) / 16 * 16;
            std::vector<float> pack_buf(stride * (size_t)nth + 16);
            float* pack = pack_buf.data();
            while ((uintptr_t)pack % 64) ++pack;
            nn::GemmEpilogue ep;
            ep.bias = o.bias;
            ep.relu = p.with_bias;
            const ptrdiff_t c_off = o.C - o.c_buf.data();
            nn::gemm_f32_fused(one.data() + c_off, o.ldc, o.A, o.lda, p.trans_a, o.B, o.ldb,
                               p.trans_b, ep, p.alpha, p.beta, pack, p.M, p.N, p.K);
            // Every element in exactly one share.
            std::vector<int> owner((size_t)p.M * p.N, 0);
            for (int ith = 0; ith < nth; ++ith) {
                const nn::GemmShare sh = nn::gemm_share(ith, nth, p.M, p.N);
                for (int i = sh.i0; i < sh.i1; ++i)
                    for (int j = sh.j0; j < sh.j1; ++j) ++owner[(size_t)i * p.N + j];
                nn::gemm_f32_part(ith, nth, seq.data() + c_off, o.ldc, o.A, o.lda, p.trans_a, o.B,
                                  o.ldb, p.trans_b, ep, p.alpha, p.beta, pack + stride * ith, p.M,
                                  p.N, p.K);
            }
            for (size_t e = 0; e < owner.size(); ++e)
                ASSERT_EQ(owner[e], 1) << describe(p) << " nth=" << nth << " element " << e;
            ASSERT_EQ(0, std::memcmp(one.data(), seq.data(), one.size() * sizeof(float)))
                << describe(p) << ": " << nth << " shares in sequence differ from one thread";
            struct Job {
                const Problem* p;
                const Operands* o;
                float* C;
                float* pack;
                size_t stride;
                nn::GemmEpilogue ep;
            } job{&p, &o, pool.data() + c_off, pack, stride, ep};
            nn::parallel_for(nth, [](void* ctx, int ith, int n) {
                const Job& j = *static_cast<const Job*>(ctx);
                nn::gemm_f32_part(ith, n, j.C, j.o->ldc, j.o->A, j.o->lda, j.p->trans_a, j.o->B,
                                  j.o->ldb, j.p->trans_b, j.ep, j.p->alpha, j.p->beta,
                                  j.pack + j.stride * ith, j.p->M, j.p->N, j.p->K);
            }, &job);
            ASSERT_EQ(0, std::memcmp(one.data(), pool.data(), one.size() * sizeof(float)))
                << describe(p) << ": " << nth << " pool threads differ from one thread";
        }
}

// Jobs of changing width back to back: a worker left out of one job must not
// run the next one twice (each share counted exactly once per job).
TEST(ThreadPool, ChangingWidthRunsEachShareOnce) {
    const int widths[] = {2, 5, 3, 8, 2, 1, 7, 4};
    std::atomic<int> hits[8];
    for (auto& h : hits) h = 0;
    int expect[8] = {0};
    for (int rep = 0; rep < 300; ++rep) {
        const int nth = widths[rep % 8];
        nn::parallel_for(nth, [](void* ctx, int ith, int n) {
            auto* h = static_cast<std::atomic<int>*>(ctx);
            if (ith < n) h[ith].fetch_add(1);
        }, hits);
        for (int i = 0; i < nth; ++i) ++expect[i];
    }
    for (int i = 0; i < 8; ++i) EXPECT_EQ(hits[i].load(), expect[i]) << "ith " << i;
}

// The pool runs each (ith, nth) exactly once per job, job after job.
TEST(ThreadPool, EachShareRunsOncePerJob) {
    for (int nth : {1, 2, 3, 8}) {
        std::atomic<int> hits[8];
        for (auto& h : hits) h = 0;
        for (int rep = 0; rep < 200; ++rep)
            nn::parallel_for(nth, [](void* ctx, int ith, int n) {
                auto* h = static_cast<std::atomic<int>*>(ctx);
                if (ith < n) h[ith].fetch_add(1);
            }, hits);
        for (int i = 0; i < 8; ++i) EXPECT_EQ(hits[i].load(), i < nth ? 200 : 0) << "nth " << nth << " ith " << i;
    }
}

}  // namespace
