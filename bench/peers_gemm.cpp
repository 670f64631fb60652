// bench/peers_gemm.cpp — nn::gemm_f32 against OpenBLAS cblas_sgemm, both on
// one thread, timed side by side in the same process.
//
//   g++ -std=c++17 -O2 -march=native -I. bench/peers_gemm.cpp -o peers_gemm -lopenblas
//   (`make bench-peers` builds and runs it through bench/peers.sh.)
//
// For every shape, once: both sides compute C from the same A and B, and the
// two results must agree within a rounding bound (see check_same), else the
// program stops with exit status 1. Then ROUNDS rounds, each timing one
// batch of calls of each side back to back (the side that goes first swaps
// every round, so neither always runs on a warmer cache or clock); a batch
// is as many calls as take at least kMinBatchSeconds. Each side's score is
// the median GFLOP/s of its rounds, and one line is printed per shape:
//
//   RATIO work=gemm_<M>x<N>x<K>[_tA|_tB] ours=<GFLOP/s> peer=openblas
//         peer_value=<GFLOP/s> unit=GFLOP/s ratio=<ours / peer>
//
// ratio > 1 means nn is faster. Options: --rounds R (7), --min-ms T (50).
//
// Shapes (M, N, K), those of the MLP's Dense layers at batch 64 plus squares:
//   64 x 128 x 784, B transposed   forward          Y  = X W^T, W is (128, 784)
//   128 x 784 x 64, A transposed   weight gradient  dW = dY^T X
//   64 x 784 x 128                 input gradient   dX = dY W
//   64 x 10 x 128,  B transposed   the output layer's forward
//   256, 512, 1024 squares, no transpose.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/aligned.hpp"
#include "kernels/gemm.hpp"

namespace {

struct Shape {
    int M, N, K;
    bool trans_a, trans_b;
};

const Shape kShapes[] = {
    {64, 128, 784, false, true},  {128, 784, 64, true, false}, {64, 784, 128, false, false},
    {64, 10, 128, false, true},   {256, 256, 256, false, false}, {512, 512, 512, false, false},
    {1024, 1024, 1024, false, false},
};

double kMinBatchSeconds = 0.050;

double now() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

// The name of a shape in the RATIO line: gemm_64x128x784_tB.
std::string work_name(const Shape& s) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "gemm_%dx%dx%d%s%s", s.M, s.N, s.K, s.trans_a ? "_tA" : "",
                  s.trans_b ? "_tB" : "");
    return buf;
}

// A, B and one C per side, each with the smallest leading dimension its
// storage allows; A and B hold values in [-0.5, 0.5) from a fixed LCG.
struct Problem {
    Shape s;
    int lda, ldb, ldc;
    FloatBuf A, B, C_nn, C_blas;
    float* pack = nullptr;

    explicit Problem(const Shape& sh)
        : s(sh), lda(sh.trans_a ? sh.M : sh.K), ldb(sh.trans_b ? sh.K : sh.N), ldc(sh.N),
          A((size_t)sh.M * sh.K), B((size_t)sh.K * sh.N), C_nn((size_t)sh.M * sh.N),
          C_blas((size_t)sh.M * sh.N) {
        uint32_t state = 2024u + (uint32_t)(sh.M * 31 + sh.N * 7 + sh.K);
        auto next = [&state] {
            state = state * 1103515245u + 12345u;
            return (float)(state >> 9) / 8388608.f - 0.5f;  // 23 random bits
        };
        for (float& v : A) v = next();
        for (float& v : B) v = next();
        // gemm_f32 takes its packing scratch from the caller, 64-byte aligned
        // (aligned_alloc wants the size rounded up to a multiple of 64).
        const size_t bytes = (nn::gemm_pack_floats() * sizeof(float) + 63) / 64 * 64;
        pack = static_cast<float*>(std::aligned_alloc(64, bytes));
        if (!pack) {
            std::fprintf(stderr, "peers_gemm: out of memory for the packing scratch\n");
            std::exit(1);
        }
    }
    ~Problem() { std::free(pack); }
    Problem(const Problem&) = delete;
    Problem& operator=(const Problem&) = delete;

    void run_nn() {
        nn::gemm_f32(C_nn.data(), ldc, A.data(), lda, s.trans_a, B.data(), ldb, s.trans_b, nullptr,
                     1.f, 0.f, pack, s.M, s.N, s.K);
    }
    void run_blas() {
        cblas_sgemm(CblasRowMajor, s.trans_a ? CblasTrans : CblasNoTrans,
                    s.trans_b ? CblasTrans : CblasNoTrans, s.M, s.N, s.K, 1.f, A.data(), lda,
                    B.data(), ldb, 0.f, C_blas.data(), ldc);
    }

    // op(A)[i][p] and op(B)[p][j], whichever way they are stored.
    float a(int i, int p) const {
        return s.trans_a ? A[(size_t)p * lda + i] : A[(size_t)i * lda + p];
    }
    float b(int p, int j) const {
        return s.trans_b ? B[(size_t)j * ldb + p] : B[(size_t)p * ldb + j];
    }
};

// Both results against each other. Two float sums of the same K products
// each lie within about K * eps * sum_p |a_ip * b_pj| of the exact value (the
// worst case of any summation order), so they differ by at most twice that.
// A wrong result (a lost K block, a shifted tile) misses by a sizeable
// fraction of sum |a * b| and is far outside the bound.
void check_same(const Problem& pr) {
    const Shape& s = pr.s;
    const double eps = 5.96e-8;  // 2^-24, float rounding
    double worst = 0;            // largest |difference| / bound seen
    for (int i = 0; i < s.M; ++i) {
        for (int j = 0; j < s.N; ++j) {
            double abs_dot = 0;
            for (int p = 0; p < s.K; ++p) abs_dot += std::fabs((double)pr.a(i, p) * pr.b(p, j));
            const double bound = 2.0 * s.K * eps * abs_dot + 1e-30;
            const double c_nn = pr.C_nn[(size_t)i * pr.ldc + j];
            const double c_blas = pr.C_blas[(size_t)i * pr.ldc + j];
            const double diff = std::fabs(c_nn - c_blas);
            if (!(diff <= bound)) {  // also catches a NaN on either side
                std::fprintf(stderr,
                             "peers_gemm: %s: nn and OpenBLAS disagree at C[%d][%d]: nn %.9g, "
                             "OpenBLAS %.9g, |difference| %.3g > bound %.3g\n",
                             work_name(s).c_str(), i, j, c_nn, c_blas, diff, bound);
                std::exit(1);
            }
            worst = std::max(worst, diff / bound);
        }
    }
    std::printf("# %s: results agree (largest difference %.1f%% of the rounding bound)\n",
                work_name(s).c_str(), 100.0 * worst);
}

// Calls f n times and returns the seconds taken.
template <class F>
double time_calls(F&& f, long n) {
    const double t0 = now();
    for (long r = 0; r < n; ++r) f();
    return now() - t0;
}

// How many calls of f take at least kMinBatchSeconds (found by doubling).
template <class F>
long calls_per_batch(F&& f) {
    long n = 1;
    for (;;) {
        const double t = time_calls(f, n);
        if (t >= kMinBatchSeconds || n >= (1L << 30)) return n;
        // Scale to the target from this try, aiming 20% past it so that the
        // next try usually lands; at least one more call, at most 100x more.
        const double want = t > 0 ? 1.2 * kMinBatchSeconds / t * (double)n : 100.0 * (double)n;
        n = std::max(n + 1, (long)std::ceil(std::min(want, 100.0 * (double)n)));
    }
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t h = v.size() / 2;
    return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

void usage(const char* prog) {
    std::fprintf(stderr, "usage: %s [--rounds R] [--min-ms T]\n", prog);
}

}  // namespace

int main(int argc, char** argv) {
    int rounds = 7;
    for (int i = 1; i < argc; ++i) {
        const char* f = argv[i];
        const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
        char* end = nullptr;
        if (!std::strcmp(f, "--rounds") && v) {
            rounds = (int)std::strtol(v, &end, 10);
            if (*end || rounds < 1) {
                std::fprintf(stderr, "%s: --rounds takes a whole number >= 1, got '%s'\n", argv[0], v);
                return 2;
            }
            ++i;
        } else if (!std::strcmp(f, "--min-ms") && v) {
            const double ms = std::strtod(v, &end);
            if (*end || !(ms > 0)) {
                std::fprintf(stderr, "%s: --min-ms takes a number > 0, got '%s'\n", argv[0], v);
                return 2;
            }
            kMinBatchSeconds = ms * 1e-3;
            ++i;
        } else {
            usage(argv[0]);
            return !std::strcmp(f, "--help") || !std::strcmp(f, "-h") ? 0 : 2;
        }
    }

    openblas_set_num_threads(1);  // nn's gemm_f32 is single-threaded; so is the peer
    std::printf("# peers_gemm: one thread each, %d rounds of >= %.0f ms per side, median GFLOP/s\n",
                rounds, kMinBatchSeconds * 1e3);
    std::printf("# nn: simd %s, micro-tile %dx%d; OpenBLAS: %s\n", nn::simd::arch_name(), nn::kGemmMR,
                nn::kGemmNR, openblas_get_config());
    std::fflush(stdout);

    double checksum = 0;  // read back from C, so no call can be optimised away
    for (const Shape& s : kShapes) {
        Problem pr(s);
        pr.run_nn();
        pr.run_blas();
        check_same(pr);

        auto side_nn = [&pr] { pr.run_nn(); };
        auto side_blas = [&pr] { pr.run_blas(); };
        const long n_nn = calls_per_batch(side_nn);
        const long n_blas = calls_per_batch(side_blas);
        const double flop = 2.0 * s.M * s.N * s.K;

        std::vector<double> g_nn, g_blas;
        for (int r = 0; r < rounds; ++r) {
            double t_nn, t_blas;
            if (r % 2 == 0) {
                t_nn = time_calls(side_nn, n_nn);
                t_blas = time_calls(side_blas, n_blas);
            } else {
                t_blas = time_calls(side_blas, n_blas);
                t_nn = time_calls(side_nn, n_nn);
            }
            g_nn.push_back(flop * (double)n_nn / t_nn * 1e-9);
            g_blas.push_back(flop * (double)n_blas / t_blas * 1e-9);
        }
        checksum += (double)pr.C_nn[0] + (double)pr.C_blas.back();

        const double ours = median(g_nn), peer = median(g_blas);
        // unit=GFLOP/s: more is better, so ratio = ours / peer (> 1: nn is faster).
        std::printf("RATIO work=%s ours=%.2f peer=openblas peer_value=%.2f unit=GFLOP/s ratio=%.3f\n",
                    work_name(s).c_str(), ours, peer, ours / peer);
        std::fflush(stdout);
    }
    std::printf("# checksum %.6g\n", checksum);
    return 0;
}
