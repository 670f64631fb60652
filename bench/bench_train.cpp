// bench/bench_train.cpp — a Dense layer's forward+backward and one whole
// training step of the Fashion-MNIST MLP (784-128-128-10, batch 64, Adam),
// on synthetic data so it needs no files.
//
//   make bench    or    build/bench_train --benchmark_repetitions=5
#include <benchmark/benchmark.h>

#include <cstdlib>

#include "nn.hpp"

static void fill_uniform(float* p, size_t n, nn::Rng& rng) {
    for (size_t i = 0; i < n; ++i) p[i] = rng.uniform(-1.0f, 1.0f);
}

// Dense 784 -> 128 with ReLU, batch 64: forward, then backward with dx.
static void BM_DenseForwardBackward(benchmark::State& state) {
    const int B = 64, in = (int)state.range(0), out = (int)state.range(1);
    nn::Arena arena;
    if (!arena.reserve(16u << 20)) std::abort();
    nn::Layer fc = nn::Dense(in, out, nn::Act::ReLU);
    if (!nn::build(fc, nn::make_shape({in}), B, arena)) std::abort();
    nn::Tensor x, y, dy, dx;
    nn::tensor_alloc(arena, nn::make_shape({B, in}), &x);
    nn::tensor_alloc(arena, nn::make_shape({B, in}), &dx);
    nn::tensor_alloc(arena, nn::make_shape({B, out}), &y);
    nn::tensor_alloc(arena, nn::make_shape({B, out}), &dy);
    nn::Rng rng(1);
    fill_uniform(x.data, x.numel(), rng);
    fill_uniform(dy.data, dy.numel(), rng);
    for (auto _ : state) {
        nn::forward(fc, y, x, nn::Mode::Train);
        nn::backward(fc, dx, dy, x, y);
        benchmark::DoNotOptimize(dx.data[0]);
    }
    // forward, weight gradient, input gradient: 3 GEMMs of 2*B*in*out flops
    state.counters["GFLOP/s"] =
        benchmark::Counter(6.0 * B * in * out, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_DenseForwardBackward)->Args({784, 128})->Args({128, 128})->Args({128, 10});

// One Model::train_step of the MLP; the batch is gathered once up front.
static void BM_MlpTrainStep(benchmark::State& state) {
    const int B = 64;
    nn::Model model;
    model.set_input(nn::make_shape({784}));
    model.add(nn::Dense(128, nn::Act::ReLU));
    model.add(nn::Dense(128, nn::Act::ReLU));
    model.add(nn::Dense(10));
    nn::CompileOptions co;
    co.loss = nn::CrossEntropy();
    co.optimizer = nn::Adam(1e-3f);
    co.max_batch = B;
    if (!model.compile(co)) std::abort();
    nn::Rng rng(2);
    for (size_t i = 0; i < model.x_buf.numel(); ++i) model.x_buf.data[i] = rng.uniform();
    for (int r = 0; r < B; ++r) model.y_labels[r] = (int32_t)rng.below(10);
    nn::Target t;
    t.labels = model.y_labels;
    const uint64_t fp = nn::flush_denormals();  // as fit() does
    for (auto _ : state) {
        float loss;
        if (!model.train_step(B, t, &loss)) std::abort();
        benchmark::DoNotOptimize(loss);
    }
    nn::restore_denormals(fp);
    state.counters["steps/s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_MlpTrainStep);

BENCHMARK_MAIN();
