// bench/bench_rnn.cpp — what a recurrent layer costs: one LSTM training step,
// one thread, on fixed random data (no files).
//
//   LSTM(64 -> 128), one layer, batch 32, 50 steps, batch-first,
//   return_sequences, h0 = c0 = 0
//   loss  MSE (mean over all 32*50*128 outputs) against a fixed target
//
//   BM_LstmTrainStep       zero_grad, forward (Train), loss and its gradient,
//                          backward (parameter gradients only: the input
//                          takes none), Adam 1e-3 step. The same work as
//                          bench/torch_lstm.py: bench/peers.sh runs the two
//                          side by side (section lstm) and prints the RATIO.
//   BM_LstmForwardBackward the same without the optimizer step
//   BM_LstmForward         forward alone, in Eval mode (inference)
//
//   build/bench_rnn --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>

#include "nn.hpp"

static const int kBatch = 32, kSteps = 50, kInput = 64, kHidden = 128;

static void check(const nn::Status& st) {
    if (!st) {
        std::fprintf(stderr, "bench_rnn: %s\n", st.message());
        std::abort();
    }
}

// The layer, its input, output, output gradient, target and Adam, carved
// from one arena.
struct LstmBench {
    nn::Arena arena;
    nn::Layer lstm;
    nn::Tensor x, y, dy, target;
    nn::Param params[4];
    nn::Optimizer adam;
    nn::Tensor y2, dy2;  // (B*T, H) views for the loss

    LstmBench() {
        nn::set_num_threads(1);
        check(arena.reserve(64u << 20));
        lstm = nn::LSTM(kInput, kHidden, 1, /*return_sequences=*/true);
        check(nn::build(lstm, nn::make_shape({kSteps, kInput}), kBatch, arena, /*seed=*/1));
        check(nn::tensor_alloc(arena, nn::make_shape({kBatch, kSteps, kInput}), &x));
        check(nn::tensor_alloc(arena, nn::make_shape({kBatch, kSteps, kHidden}), &y));
        check(nn::tensor_alloc(arena, nn::make_shape({kBatch, kSteps, kHidden}), &dy));
        check(nn::tensor_alloc(arena, nn::make_shape({kBatch, kSteps, kHidden}), &target));
        nn::Rng rng(2);
        for (size_t i = 0; i < x.numel(); ++i) x.data[i] = rng.uniform(-1.0f, 1.0f);
        for (size_t i = 0; i < target.numel(); ++i) target.data[i] = rng.uniform(-1.0f, 1.0f);
        const int n = nn::layer_params(lstm, params, 4);
        check(adam.init(nn::Adam(1e-3f), params, n, arena));
        y2 = y.reshape({kBatch * kSteps, kHidden});
        dy2 = dy.reshape({kBatch * kSteps, kHidden});
    }

    float forward_backward() {
        nn::Target t;
        t.values = target.data;
        float loss = 0;
        adam.zero_grad();
        check(nn::forward(lstm, y, x, nn::Mode::Train));
        check(nn::loss_forward_backward(nn::MSE(), dy2, y2, t, &loss));
        check(nn::backward(lstm, nn::Tensor{}, dy, x, y));  // no dx, as x.requires_grad=False
        return loss;
    }
};

static void BM_LstmTrainStep(benchmark::State& state) {
    LstmBench b;
    const uint64_t fp = nn::flush_denormals();  // as fit() does
    for (auto _ : state) {
        float loss = b.forward_backward();
        b.adam.step();
        benchmark::DoNotOptimize(loss);
    }
    nn::restore_denormals(fp);
    state.counters["steps/s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_LstmTrainStep)->Unit(benchmark::kMillisecond);

static void BM_LstmForwardBackward(benchmark::State& state) {
    LstmBench b;
    const uint64_t fp = nn::flush_denormals();
    for (auto _ : state) {
        float loss = b.forward_backward();
        benchmark::DoNotOptimize(loss);
    }
    nn::restore_denormals(fp);
}
BENCHMARK(BM_LstmForwardBackward)->Unit(benchmark::kMillisecond);

static void BM_LstmForward(benchmark::State& state) {
    LstmBench b;
    const uint64_t fp = nn::flush_denormals();
    for (auto _ : state) {
        check(nn::forward(b.lstm, b.y, b.x, nn::Mode::Eval));
        benchmark::DoNotOptimize(b.y.data[0]);
    }
    nn::restore_denormals(fp);
    // 4 gates: x W_ih^T (B*T x 4H x in) and h W_hh^T (B*T x 4H x H), 2 flops per MAC
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * kBatch * kSteps * 4 * kHidden * (kInput + kHidden),
                                                   benchmark::Counter::kIsIterationInvariantRate,
                                                   benchmark::Counter::kIs1000);
}
BENCHMARK(BM_LstmForward)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
