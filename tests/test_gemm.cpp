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
#include <random>
#include <vector>

#include "kernels/gemm.hpp"

namespace {

// A value no computation produces, written around C to catch stray stores.
constexpr float kSentinel = -7777.25f;

struct Problem {
    int M, N, K;
    bool trans_a, trans_b;
    float alpha, beta;
    bool with_bias;
    bool padded;  // ld = minimum + pad, and every pointer offset by 1 float
};

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
            (*want)[(size_t)i * p.N + j] = p.alpha * acc + p.beta * c0 + bj;
            (*scale)[(size_t)i * p.N + j] =
                std::fabs(p.alpha) * mag + std::fabs(p.beta * c0) + std::fabs(bj);
        }
}

std::string describe(const Problem& p) {
    char s[200];
    snprintf(s, sizeof s, "M=%d N=%d K=%d trans_a=%d trans_b=%d alpha=%g beta=%g bias=%d padded=%d",
             p.M, p.N, p.K, p.trans_a, p.trans_b, p.alpha, p.beta, p.with_bias, p.padded);
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
    // gemm_pack_floats() promises.
    const size_t np = nn::gemm_pack_floats();
    static std::vector<float> pack_buf(np + 16 + 1);
    float* pack = pack_buf.data();
    while ((uintptr_t)pack % 64) ++pack;
    pack[np] = kSentinel;

    nn::gemm_f32(o.C, o.ldc, o.A, o.lda, p.trans_a, o.B, o.ldb, p.trans_b, o.bias, p.alpha,
                 p.beta, pack, p.M, p.N, p.K);
    nn::gemm_f32_ref(C_ref, o.ldc, o.A, o.lda, p.trans_a, o.B, o.ldb, p.trans_b, o.bias, p.alpha,
                     p.beta, p.M, p.N, p.K);

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
        ADD_FAILURE() << describe(p) << ": gemm wrote past gemm_pack_floats() of scratch";
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

}  // namespace
