// bench/bench_gemm.cpp — gemm_f32 on the shapes the MLP runs, plus squares.
//
//   make bench    (or: g++ -std=c++17 -O2 -march=native -I. bench/bench_gemm.cpp
//                  build/nn_impl.o -o bench_gemm -lbenchmark -lpthread -lz)
//   With -DNN_BENCH_OPENBLAS (and -lopenblas) cblas_sgemm, on one thread,
//   is timed on the same shapes and printed beside each of ours.
//
// Shapes (M, N, K), for a Dense layer with batch 64:
//   64 x 128 x 784, B transposed   forward   Y = X W^T, W is (128, 784)
//   128 x 784 x 64, A transposed   weight gradient dW = dY^T X
//   64 x 784 x 128, no transpose   input gradient  dX = dY W
//   64 x 10 x 128,  B transposed   the output layer's forward
//   256, 512, 1024 squares, no transpose.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <vector>

#include "bench/aligned.hpp"
#include "kernels/gemm.hpp"
#include "nn.hpp"

#ifdef NN_BENCH_OPENBLAS
#include <cblas.h>
#endif

namespace {

struct Shape {
    int M, N, K;
    bool trans_a, trans_b;
};

// One operand set per benchmark: A, B, C with the minimum leading dimensions.
struct Operands {
    FloatBuf A, B, C;
    int lda, ldb, ldc;
    explicit Operands(const Shape& s)
        : A((size_t)s.M * s.K), B((size_t)s.K * s.N), C((size_t)s.M * s.N),
          lda(s.trans_a ? s.M : s.K), ldb(s.trans_b ? s.K : s.N), ldc(s.N) {
        unsigned x = 12345;
        auto rnd = [&x] {
            x = x * 1664525u + 1013904223u;
            return (float)((x >> 8) & 0xffff) / 65536.f - 0.5f;
        };
        for (float& v : A) v = rnd();
        for (float& v : B) v = rnd();
        for (float& v : C) v = rnd();
    }
};

void set_counters(benchmark::State& state, const Shape& s) {
    state.counters["GFLOP/s"] =
        benchmark::Counter(2.0 * s.M * s.N * s.K * 1e-9,
                           benchmark::Counter::kIsIterationInvariantRate,
                           benchmark::Counter::kIs1000);
}

void BM_nn_gemm(benchmark::State& state, Shape s) {
    Operands o(s);
    // The packing scratch comes from the caller; here one aligned block.
    const size_t pack_bytes = nn::gemm_pack_floats() * sizeof(float);  // a multiple of 64
    float* pack = static_cast<float*>(std::aligned_alloc(64, pack_bytes));
    for (auto _ : state) {
        nn::gemm_f32(o.C.data(), o.ldc, o.A.data(), o.lda, s.trans_a, o.B.data(), o.ldb,
                     s.trans_b, nullptr, 1.f, 0.f, pack, s.M, s.N, s.K);
        benchmark::DoNotOptimize(o.C.data());
        benchmark::ClobberMemory();
    }
    std::free(pack);
    set_counters(state, s);
}

// The same on `threads` threads of nn's pool, C split by gemm_share.
struct ThreadedGemm {
    const Shape* s;
    Operands* o;
    float* pack;
    size_t stride;
};
void BM_nn_gemm_threads(benchmark::State& state, Shape s) {
    const int threads = (int)state.range(0);
    Operands o(s);
    const size_t stride = (nn::gemm_pack_floats(s.M, s.N, s.K) + 15) / 16 * 16;
    float* pack = static_cast<float*>(std::aligned_alloc(64, stride * threads * sizeof(float)));
    nn::start_threads();
    ThreadedGemm job{&s, &o, pack, stride};
    for (auto _ : state) {
        nn::parallel_for(threads, [](void* ctx, int ith, int nth) {
            const ThreadedGemm& j = *static_cast<const ThreadedGemm*>(ctx);
            nn::GemmEpilogue ep;
            nn::gemm_f32_part(ith, nth, j.o->C.data(), j.o->ldc, j.o->A.data(), j.o->lda,
                              j.s->trans_a, j.o->B.data(), j.o->ldb, j.s->trans_b, ep, 1.f, 0.f,
                              j.pack + j.stride * ith, j.s->M, j.s->N, j.s->K);
        }, &job);
        benchmark::DoNotOptimize(o.C.data());
        benchmark::ClobberMemory();
    }
    std::free(pack);
    set_counters(state, s);
}

#ifdef NN_BENCH_OPENBLAS
void BM_openblas_sgemm(benchmark::State& state, Shape s) {
    Operands o(s);
    openblas_set_num_threads(1);
    for (auto _ : state) {
        cblas_sgemm(CblasRowMajor, s.trans_a ? CblasTrans : CblasNoTrans,
                    s.trans_b ? CblasTrans : CblasNoTrans, s.M, s.N, s.K, 1.f, o.A.data(),
                    o.lda, o.B.data(), o.ldb, 0.f, o.C.data(), o.ldc);
        benchmark::DoNotOptimize(o.C.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, s);
}
#define NN_BENCH_SHAPE(name, ...)                                        \
    BENCHMARK_CAPTURE(BM_nn_gemm, name, Shape{__VA_ARGS__});             \
    BENCHMARK_CAPTURE(BM_openblas_sgemm, name, Shape{__VA_ARGS__})
#else
#define NN_BENCH_SHAPE(name, ...) BENCHMARK_CAPTURE(BM_nn_gemm, name, Shape{__VA_ARGS__})
#endif

// (M, N, K, trans_a, trans_b)
NN_BENCH_SHAPE(dense_fwd_64x128x784_tB, 64, 128, 784, false, true);
NN_BENCH_SHAPE(dense_dW_128x784x64_tA, 128, 784, 64, true, false);
NN_BENCH_SHAPE(dense_dX_64x784x128, 64, 784, 128, false, false);
NN_BENCH_SHAPE(dense_out_64x10x128_tB, 64, 10, 128, false, true);
NN_BENCH_SHAPE(dot_probe_64x8x4096_tB, 64, 8, 4096, false, true);
NN_BENCH_SHAPE(dot_probe_64x16x4096, 64, 16, 4096, false, false);
NN_BENCH_SHAPE(square_256, 256, 256, 256, false, false);
NN_BENCH_SHAPE(square_512, 512, 512, 512, false, false);
NN_BENCH_SHAPE(square_1024, 1024, 1024, 1024, false, false);

// Threads 1 and 2 (the thread count is the benchmark argument).
BENCHMARK_CAPTURE(BM_nn_gemm_threads, square_512, Shape{512, 512, 512, false, false})->Arg(1)->Arg(2)->UseRealTime();
BENCHMARK_CAPTURE(BM_nn_gemm_threads, dense_fwd_64x128x784_tB, Shape{64, 128, 784, false, true})
    ->Arg(1)->Arg(2)->UseRealTime();
BENCHMARK_CAPTURE(BM_nn_gemm_threads, dense_dW_128x784x64_tA, Shape{128, 784, 64, true, false})
    ->Arg(1)->Arg(2)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
