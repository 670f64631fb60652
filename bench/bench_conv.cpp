// bench/bench_conv.cpp — the convolution, max-pooling and batch-norm kernels
// at the layer shapes of examples/lenet_fashion.cpp and
// examples/convnet_fashion.cpp: batch 64, one thread, forward and backward
// timed separately, on synthetic data (no files needed).
//
//   make bench    (or: make build/bench_conv && build/bench_conv
//                  --benchmark_filter=convnet --benchmark_min_time=0.5)
//
// Convolutions (kernels/conv.hpp, conv2d_forward / conv2d_backward, which
// pick im2col + GEMM or the direct depthwise kernel), with bias:
//   convnet_conv1   (64,1,28,28)  -> 32 filters 5x5 pad 2 -> (64,32,28,28)
//   convnet_conv2   (64,32,14,14) -> 64 filters 5x5 pad 2 -> (64,64,14,14)
//   lenet_conv1     (64,1,28,28)  ->  6 filters 5x5 pad 2 -> (64,6,28,28)
//   lenet_conv2     (64,6,14,14)  -> 16 filters 5x5 pad 0 -> (64,16,10,10)
//   depthwise3x3    (64,64,28,28), groups 64, 3x3 pad 1, through the direct
//                   kernel, and the same through the GEMM path's row tiles
//                   (depthwise3x3_gemm), which conv2d_forward now picks
// GFLOP/s counts 2 * N * C_out * OH * OW * (C_in / groups) * KH * KW per
// forward pass (one multiply-add = 2 flops) and twice that per backward pass
// (dx and dw; db is not counted). A network's first convolution needs no dx:
// the *_dw_only backward variants time that case (one forward's flops).
// items_per_second counts samples.
//
// Pooling and normalisation (kernels/pool.hpp, kernels/norm.hpp):
//   maxpool2x2      max pooling 2x2 stride 2 on (64,32,28,28) -> (64,32,14,14),
//                   on uniform input (relu:0) and on the input after a ReLU
//                   (relu:1, half zeros), as both models pool; backward
//                   with relu:1 also masks dy by y > 0 (the ReLU folded in)
//   batchnorm_train training-mode batch norm on (64,32,14,14): statistics,
//                   running averages, y; backward dx, dgamma, dbeta
// bytes_per_second counts the least traffic each pass needs: every input
// read once and every output written once (maxpool: x, y and the int32
// argmax; backward: dy, the argmax, dx; batch norm: x, y; backward: dy, x,
// dx).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <vector>

#include "bench/aligned.hpp"
#include "kernels/conv.hpp"
#include "kernels/norm.hpp"
#include "kernels/pool.hpp"
#include "nn.hpp"

namespace {

// Uniform values in [-0.5, 0.5), the same sequence on every run.
void fill(float* p, size_t n, unsigned seed) {
    unsigned x = seed;
    for (size_t i = 0; i < n; ++i) {
        x = x * 1664525u + 1013904223u;
        p[i] = (float)((x >> 8) & 0xffff) / 65536.f - 0.5f;
    }
}

// A buffer of n floats (at least 16, so an unused scratch is still a real
// pointer), 64-byte aligned as arena memory is.
FloatBuf buf(size_t n, unsigned seed = 0) {
    FloatBuf b(n < 16 ? 16 : n, 0.f);
    if (seed) fill(b.data(), n, seed);
    return b;
}

struct ConvCase {
    int N, C_in, H, W, C_out, K, pad, groups;
    bool force_gemm;    // take the GEMM path even where conv2d_forward would go direct
    bool force_direct;  // take the direct depthwise kernel even where conv2d_forward would not
};

// Everything one convolution needs: operands, gradients, scratch.
struct ConvBufs {
    nn::Conv2dGeom g;
    FloatBuf x, w, bias, y, dy, dx, dw, db, scratch, pack;
    explicit ConvBufs(const ConvCase& c) {
        g = nn::Conv2dGeom{c.N, c.C_in, c.H, c.W, c.C_out, c.K, c.K, 1, 1, c.pad, c.pad, 1, 1, c.groups, 0, 0};
        if (!nn::conv2d_geom_init(g)) std::abort();
        const size_t xn = (size_t)g.N * g.C_in * g.H * g.W, yn = (size_t)g.N * g.C_out * g.OH * g.OW;
        const size_t wn = (size_t)g.C_out * (g.C_in / g.groups) * g.KH * g.KW;
        x = buf(xn, 1);
        w = buf(wn, 2);
        bias = buf((size_t)g.C_out, 3);
        y = buf(yn);
        dy = buf(yn, 4);
        dx = buf(xn);
        dw = buf(wn);
        db = buf((size_t)g.C_out);
        scratch = buf(c.force_gemm ? nn::conv2d_gemm_scratch_floats(g) : nn::conv2d_scratch_floats(g));
        pack = buf(c.force_gemm ? nn::conv2d_gemm_pack_floats(g) : nn::conv2d_pack_floats(g));
    }
    double forward_flops() const {
        return 2.0 * g.N * g.C_out * g.OH * g.OW * (double)(g.C_in / g.groups) * g.KH * g.KW;
    }
};

void set_conv_counters(benchmark::State& state, const ConvBufs& b, double flops) {
    state.counters["GFLOP/s"] =
        benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
    state.SetItemsProcessed((int64_t)state.iterations() * b.g.N);
}

void BM_conv_forward(benchmark::State& state, ConvCase c) {
    ConvBufs b(c);
    for (auto _ : state) {
        if (c.force_gemm)
            nn::conv2d_forward_gemm(b.y.data(), b.x.data(), b.w.data(), b.bias.data(), b.g, b.scratch.data(),
                                    b.pack.data());
        else if (c.force_direct)
            nn::conv2d_depthwise_forward(b.y.data(), b.x.data(), b.w.data(), b.bias.data(), b.g);
        else
            nn::conv2d_forward(b.y.data(), b.x.data(), b.w.data(), b.bias.data(), b.g, b.scratch.data(),
                               b.pack.data());
        benchmark::DoNotOptimize(b.y.data());
        benchmark::ClobberMemory();
    }
    set_conv_counters(state, b, b.forward_flops());
}

// dx, dw and db (with_dx), or dw and db only (a first layer).
void conv_backward(benchmark::State& state, ConvCase c, bool with_dx) {
    ConvBufs b(c);
    float* dx = with_dx ? b.dx.data() : nullptr;
    for (auto _ : state) {
        if (c.force_gemm)
            nn::conv2d_backward_gemm(dx, b.dw.data(), b.db.data(), b.dy.data(), b.x.data(), b.w.data(), b.g,
                                     b.scratch.data(), b.pack.data());
        else if (c.force_direct)
            nn::conv2d_depthwise_backward(dx, b.dw.data(), b.db.data(), b.dy.data(), b.x.data(), b.w.data(), b.g);
        else
            nn::conv2d_backward(dx, b.dw.data(), b.db.data(), b.dy.data(), b.x.data(), b.w.data(), b.g,
                                b.scratch.data(), b.pack.data());
        benchmark::DoNotOptimize(b.dw.data());
        benchmark::DoNotOptimize(b.dx.data());
        benchmark::ClobberMemory();
    }
    set_conv_counters(state, b, (with_dx ? 2.0 : 1.0) * b.forward_flops());
}
void BM_conv_backward(benchmark::State& state, ConvCase c) { conv_backward(state, c, true); }
void BM_conv_backward_dw_only(benchmark::State& state, ConvCase c) { conv_backward(state, c, false); }

// {N, C_in, H, W, C_out, K, pad, groups, force_gemm, force_direct}
const ConvCase kConvnetConv1{64, 1, 28, 28, 32, 5, 2, 1, false, false};
const ConvCase kConvnetConv2{64, 32, 14, 14, 64, 5, 2, 1, false, false};
const ConvCase kLenetConv1{64, 1, 28, 28, 6, 5, 2, 1, false, false};
const ConvCase kLenetConv2{64, 6, 14, 14, 16, 5, 0, 1, false, false};
const ConvCase kDepthwise{64, 64, 28, 28, 64, 3, 1, 64, false, true};
const ConvCase kDepthwiseGemm{64, 64, 28, 28, 64, 3, 1, 64, true, false};

BENCHMARK_CAPTURE(BM_conv_forward, convnet_conv1, kConvnetConv1);
BENCHMARK_CAPTURE(BM_conv_backward, convnet_conv1, kConvnetConv1);
BENCHMARK_CAPTURE(BM_conv_backward_dw_only, convnet_conv1, kConvnetConv1);
BENCHMARK_CAPTURE(BM_conv_forward, convnet_conv2, kConvnetConv2);
BENCHMARK_CAPTURE(BM_conv_backward, convnet_conv2, kConvnetConv2);
BENCHMARK_CAPTURE(BM_conv_forward, lenet_conv1, kLenetConv1);
BENCHMARK_CAPTURE(BM_conv_backward, lenet_conv1, kLenetConv1);
BENCHMARK_CAPTURE(BM_conv_backward_dw_only, lenet_conv1, kLenetConv1);
BENCHMARK_CAPTURE(BM_conv_forward, lenet_conv2, kLenetConv2);
BENCHMARK_CAPTURE(BM_conv_backward, lenet_conv2, kLenetConv2);
BENCHMARK_CAPTURE(BM_conv_backward_dw_only, lenet_conv2, kLenetConv2);
BENCHMARK_CAPTURE(BM_conv_forward, depthwise3x3, kDepthwise);
BENCHMARK_CAPTURE(BM_conv_backward, depthwise3x3, kDepthwise);
BENCHMARK_CAPTURE(BM_conv_forward, depthwise3x3_gemm, kDepthwiseGemm);
BENCHMARK_CAPTURE(BM_conv_backward, depthwise3x3_gemm, kDepthwiseGemm);

// --- Max pooling 2x2 stride 2 on (64, 32, 28, 28) ------------------------------
struct PoolBufs {
    static constexpr size_t N = 64, C = 32;
    nn::PoolGeom g{2, 2, 2, 2, 0, 0, 28, 28, 0, 0};
    FloatBuf x, y, dy, dx;
    std::vector<int32_t> idx;
    // relu: x = max(0, uniform) as after the ReLU both models put before
    // each pooling (half the cells 0, so the window scan's branches are
    // less predictable than on all-distinct values)
    explicit PoolBufs(bool relu) {
        if (!nn::pool2d_geometry(&g)) std::abort();
        x = buf(N * C * g.h * g.w, 5);
        if (relu)
            for (float& v : x) v = v > 0.f ? v : 0.f;
        dx = buf(N * C * g.h * g.w);
        y = buf(N * C * g.oh * g.ow);
        dy = buf(N * C * g.oh * g.ow, 6);
        idx.assign(N * C * g.oh * g.ow, 0);
    }
    size_t in() const { return N * C * g.h * g.w; }
    size_t out() const { return N * C * g.oh * g.ow; }
};

// Argument 0: uniform input; 1: the input after a ReLU.
void BM_maxpool2x2_forward(benchmark::State& state) {
    PoolBufs b(state.range(0) != 0);
    for (auto _ : state) {
        nn::maxpool2d_forward(b.y.data(), b.idx.data(), b.x.data(), b.g, b.N, b.C);
        benchmark::DoNotOptimize(b.y.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed((int64_t)state.iterations() * (int64_t)b.N);
    state.SetBytesProcessed((int64_t)state.iterations() *
                            (int64_t)(b.in() * sizeof(float) + b.out() * (sizeof(float) + sizeof(int32_t))));
}
BENCHMARK(BM_maxpool2x2_forward)->ArgName("relu")->Arg(0)->Arg(1);

void BM_maxpool2x2_backward(benchmark::State& state) {
    PoolBufs b(state.range(0) != 0);
    nn::maxpool2d_forward(b.y.data(), b.idx.data(), b.x.data(), b.g, b.N, b.C);  // real argmax indices
    for (auto _ : state) {
        // relu: with the ReLU folded in, as the models run it
        nn::maxpool2d_backward(b.dx.data(), b.dy.data(), b.idx.data(), b.g, b.N, b.C,
                               state.range(0) ? b.y.data() : nullptr);
        benchmark::DoNotOptimize(b.dx.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed((int64_t)state.iterations() * (int64_t)b.N);
    state.SetBytesProcessed((int64_t)state.iterations() *
                            (int64_t)(b.out() * (sizeof(float) + sizeof(int32_t)) + b.in() * sizeof(float)));
}
BENCHMARK(BM_maxpool2x2_backward)->ArgName("relu")->Arg(0)->Arg(1);

// --- Batch norm, training mode, on (64, 32, 14, 14) ----------------------------
struct NormBufs {
    static constexpr size_t N = 64, C = 32, L = 14 * 14;
    FloatBuf x, y, dy, dx, gamma, beta, dgamma, dbeta, mean, inv_std, run_mean, run_var;
    NormBufs()
        : x(buf(N * C * L, 7)), y(buf(N * C * L)), dy(buf(N * C * L, 8)), dx(buf(N * C * L)),
          gamma(buf(C, 9)), beta(buf(C, 10)), dgamma(buf(C)), dbeta(buf(C)), mean(buf(C)), inv_std(buf(C)),
          run_mean(buf(C)), run_var(buf(C)) {
        for (size_t c = 0; c < C; ++c) run_var[c] = 1.f;
    }
    void forward() {
        nn::batchnorm_forward_train(y.data(), mean.data(), inv_std.data(), run_mean.data(), run_var.data(), x.data(),
                                    gamma.data(), beta.data(), 0.1f, 1e-5f, N, C, L);
    }
};

void BM_batchnorm_train_forward(benchmark::State& state) {
    NormBufs b;
    for (auto _ : state) {
        b.forward();
        benchmark::DoNotOptimize(b.y.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed((int64_t)state.iterations() * (int64_t)b.N);
    state.SetBytesProcessed((int64_t)state.iterations() * (int64_t)(2 * b.N * b.C * b.L * sizeof(float)));
}
BENCHMARK(BM_batchnorm_train_forward);

void BM_batchnorm_train_backward(benchmark::State& state) {
    NormBufs b;
    b.forward();  // the batch's mean and inv_std
    for (auto _ : state) {
        nn::batchnorm_backward_train(b.dx.data(), b.dgamma.data(), b.dbeta.data(), b.dy.data(), b.x.data(),
                                     b.mean.data(), b.inv_std.data(), b.gamma.data(), b.N, b.C, b.L);
        benchmark::DoNotOptimize(b.dx.data());
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed((int64_t)state.iterations() * (int64_t)b.N);
    state.SetBytesProcessed((int64_t)state.iterations() * (int64_t)(3 * b.N * b.C * b.L * sizeof(float)));
}
BENCHMARK(BM_batchnorm_train_backward);

}  // namespace

BENCHMARK_MAIN();
