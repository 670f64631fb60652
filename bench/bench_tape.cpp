// bench/bench_tape.cpp — what the tape costs: one training step of the
// Fashion-MNIST MLP (784-128-128-10, ReLU, batch 64, softmax cross-entropy,
// Adam 1e-3) done two ways on the same random data, one thread:
//
//   BM_MlpStep_Layers  Model::train_step over Dense layers (as bench_train)
//   BM_MlpStep_Tape    the same network recorded on a Tape each step:
//                      dense x3 + cross_entropy, backward, Adam, reset(mark)
//
// Both use the same GEMM kernels, so the difference is the tape's own work:
// recording nodes, the reverse walk, carving values and gradients from the
// arena each step. Compare the medians.
//
//   build/bench_tape --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <vector>

#include "nn.hpp"

static const int kBatch = 64, kIn = 784, kHidden = 128, kClasses = 10;

static void check(const nn::Status& st) {
    if (!st) {
        std::fprintf(stderr, "bench_tape: %s\n", st.message());
        std::abort();
    }
}

// The layer path: Model::train_step, the batch gathered once up front.
static void BM_MlpStep_Layers(benchmark::State& state) {
    nn::set_num_threads(1);
    nn::Model model;
    model.set_input(nn::make_shape({kIn}));
    model.add(nn::Dense(kHidden, nn::Act::ReLU));
    model.add(nn::Dense(kHidden, nn::Act::ReLU));
    model.add(nn::Dense(kClasses));
    nn::CompileOptions co;
    co.loss = nn::CrossEntropy();
    co.optimizer = nn::Adam(1e-3f);
    co.max_batch = kBatch;
    check(model.compile(co));
    nn::Rng rng(2);
    for (size_t i = 0; i < model.x_buf.numel(); ++i) model.x_buf.data[i] = rng.uniform();
    for (int r = 0; r < kBatch; ++r) model.y_labels[r] = (int32_t)rng.below(kClasses);
    nn::Target t;
    t.labels = model.y_labels;
    const uint64_t fp = nn::flush_denormals();  // as fit() does
    for (auto _ : state) {
        float loss;
        check(model.train_step(kBatch, t, &loss));
        benchmark::DoNotOptimize(loss);
    }
    nn::restore_denormals(fp);
    state.counters["steps/s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_MlpStep_Layers);

// A Dense layer's leaves, initialised as PyTorch's Linear: U(+-1/sqrt(in)).
static void linear_leaves(nn::Tape& tape, int in, int out, nn::Rng& rng, nn::Var* W, nn::Var* b) {
    std::vector<float> w0((size_t)in * out), b0((size_t)out);
    const float bound = 1.0f / std::sqrt((float)in);
    for (float& v : w0) v = rng.uniform(-bound, bound);
    for (float& v : b0) v = rng.uniform(-bound, bound);
    *W = tape.param(nn::make_shape({out, in}), w0.data(), "weight");
    *b = tape.param(nn::make_shape({out}), b0.data(), "bias");
}

// The tape path: the same step as a graph recorded and freed every time.
static void BM_MlpStep_Tape(benchmark::State& state) {
    nn::set_num_threads(1);
    nn::Tape tape;
    check(tape.reserve(16u << 20));
    nn::Rng rng(2);
    // The batch is a persistent leaf, like the model's x_buf: filled once.
    std::vector<float> x0((size_t)kBatch * kIn);
    for (float& v : x0) v = rng.uniform();
    int32_t labels[kBatch];
    for (int32_t& l : labels) l = (int32_t)rng.below(kClasses);
    nn::Var x = tape.constant(nn::make_shape({kBatch, kIn}), x0.data(), "x");
    nn::Var W1, b1, W2, b2, W3, b3;
    linear_leaves(tape, kIn, kHidden, rng, &W1, &b1);
    linear_leaves(tape, kHidden, kHidden, rng, &W2, &b2);
    linear_leaves(tape, kHidden, kClasses, rng, &W3, &b3);
    nn::Param ps[6] = {nn::as_param(W1, "W1"), nn::as_param(b1, "b1"), nn::as_param(W2, "W2"),
                       nn::as_param(b2, "b2"), nn::as_param(W3, "W3"), nn::as_param(b3, "b3")};
    nn::Optimizer adam;
    check(adam.init(nn::Adam(1e-3f), ps, 6, tape.arena));
    check(tape.error);
    const nn::TapeMark mark = tape.mark();
    size_t step_bytes = 0;
    const uint64_t fp = nn::flush_denormals();  // as the layer path
    for (auto _ : state) {
        adam.zero_grad();
        nn::Var h1 = nn::dense(x, W1, b1, nn::Act::ReLU);
        nn::Var h2 = nn::dense(h1, W2, b2, nn::Act::ReLU);
        nn::Var z = nn::dense(h2, W3, b3);  // logits
        nn::Var loss = nn::cross_entropy(z, labels);
        check(tape.backward(loss));
        adam.step();
        benchmark::DoNotOptimize(loss.item());
        step_bytes = tape.bytes_since(mark);
        tape.reset(mark);
    }
    nn::restore_denormals(fp);
    state.counters["steps/s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["tape_bytes"] = (double)step_bytes;
}
BENCHMARK(BM_MlpStep_Tape);

BENCHMARK_MAIN();
