// examples/autograd_circles.cpp — Neograd's README program on the tape: two
// concentric circles (sklearn's make_circles: 1000 points, noise 0.05,
// factor 0.8), a 2-10-1 network, binary cross-entropy and plain gradient
// descent at 0.15 for 1000 full-batch iterations.
//
//     h = relu(x W1^T + b1)      W1 (10, 2), b1 (10)
//     p = sigmoid(h W2^T + b2)   W2 (1, 10), b2 (1): the probability of the inner circle
//     loss = BCE(p, y)           the mean over the 750 training points
//
// Each iteration records the graph on the tape, differentiates it, steps
// the optimizer and frees the graph by resetting one mark: no allocation.
// Samples are rows, (750, 2), as in PyTorch; Neograd's README feeds the
// transpose, (2, 750), to layers that compute W x + b: the same numbers.
//
// 1000 steps of plain gradient descent do not finish training (the loss is
// still falling), so the initial weights show in the result. Neograd's
// Linear draws weights from N(0, 1) and starts biases at 0 (the default,
// --init neograd); PyTorch's draws both from U(-1/sqrt(in), 1/sqrt(in))
// (--init pytorch), smaller first-layer weights that start slower.
// Measured test accuracy over --seed 0..9:
//                 1000 steps        2000 steps
//     neograd     0.924 - 0.972     0.948 - 0.980
//     pytorch     0.796 - 0.968     0.924 - 0.988
//
//   build/autograd_circles [--init neograd|pytorch] [--steps ITERATIONS (1000)] [--seed S]
//                          [--verbose 0|1]
// --epochs N means the same as --steps N: every iteration sees the whole
// training set, so an iteration is an epoch.
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "common.hpp"

// A Linear layer's leaves; weight is (out, in), as dense wants.
//   neograd: weight N(0, 1), bias 0 (Neograd's nn.Linear)
//   pytorch: weight and bias U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's nn.Linear)
static void linear_params(nn::Tape& tape, int in, int out, bool pytorch_init, nn::Rng& rng, const char* wname,
                          const char* bname, nn::Var* W, nn::Var* b) {
    const float bound = 1.0f / std::sqrt((float)in);
    std::vector<float> w0((size_t)out * in), b0((size_t)out, 0.0f);  // setup: the heap is fine here
    for (float& v : w0) v = pytorch_init ? rng.uniform(-bound, bound) : rng.normal();
    if (pytorch_init)
        for (float& v : b0) v = rng.uniform(-bound, bound);
    *W = tape.param(nn::make_shape({out, in}), w0.data(), wname);  // copied into the tape
    *b = tape.param(nn::make_shape({out}), b0.data(), bname);
}

// Fraction of d classified right (p > 0.5 means the inner circle), with a
// forward pass that records nothing; the tape is reset to `m` afterwards.
static nn::Status accuracy(nn::Tape& tape, const nn::TapeMark& m, const nn::Dataset& d, const nn::Var& W1,
                           const nn::Var& b1, const nn::Var& W2, const nn::Var& b2, double* out) {
    nn::NoGrad no_grad(tape);
    nn::Var x = tape.constant(nn::make_shape({(int)d.n, 2}), d.f32.data(), "x");
    nn::Var p = nn::dense(nn::dense(x, W1, b1, nn::Act::ReLU), W2, b2, nn::Act::Sigmoid);
    nn::Status st = tape.error;  // read it before reset() clears it
    int correct = 0;
    if (p.ok())
        for (size_t i = 0; i < d.n; ++i) correct += (p.value()[i] > 0.5f) == (d.labels[i] == 1);
    tape.reset(m);
    *out = (double)correct / (double)d.n;
    return st;
}

int main(int argc, char** argv) {
    // --init is this example's own flag; take it out before the common ones.
    bool pytorch_init = false;
    int kept = 1;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--init") != 0) {
            argv[kept++] = argv[i];
            continue;
        }
        const char* v = i + 1 < argc ? argv[++i] : "";
        if (std::strcmp(v, "neograd") != 0 && std::strcmp(v, "pytorch") != 0) {
            std::fprintf(stderr, "%s: --init takes neograd or pytorch, got '%s'\n", argv[0], v);
            return 2;
        }
        pytorch_init = v[0] == 'p';
    }
    argc = kept;
    ExampleArgs args = parse_args(argc, argv);
    const long iters = args.steps ? args.steps : args.epochs ? args.epochs : 1000;
    const float lr = 0.15f;

    // 1. Data: 1000 points, shuffled; the last quarter is the test set.
    nn::Dataset train, test;
    nn::make_circles(&train, 1000, 0.05f, 0.8f, args.seed + 100);
    nn::Status st = nn::split(train, 0.25f, &test);
    if (!st) return fail(st);
    const int n_train = (int)train.n, n_test = (int)test.n;
    // BCE wants float targets shaped like the prediction: (N, 1).
    std::vector<float> y_train(train.labels.begin(), train.labels.end());
    std::printf("circles: %d training and %d test points; 2-10-1 network, %s initialisation\n", n_train,
                n_test, pytorch_init ? "PyTorch's" : "Neograd's");

    // 2. The tape's arena: leaves first, then one iteration's graph (about
    //    150 KB here). 4 MB leaves room for the test pass too.
    nn::Tape tape;
    if (!(st = tape.reserve(4u << 20))) return fail(st);
    nn::Var x = tape.constant(nn::make_shape({n_train, 2}), train.f32.data(), "x_train");
    nn::Var y = tape.constant(nn::make_shape({n_train, 1}), y_train.data(), "y_train");
    nn::Rng rng(args.seed + 1);
    nn::Var W1, b1, W2, b2;
    linear_params(tape, 2, 10, pytorch_init, rng, "W1", "b1", &W1, &b1);
    linear_params(tape, 10, 1, pytorch_init, rng, "W2", "b2", &W2, &b2);

    // 3. Gradient descent (SGD without momentum) on all four leaves.
    nn::Param params[4] = {nn::as_param(W1, "W1"), nn::as_param(b1, "b1"), nn::as_param(W2, "W2"),
                           nn::as_param(b2, "b2")};
    nn::Optimizer gd;
    if (!(st = gd.init(nn::SGD(lr), params, 4, tape.arena))) return fail(st);
    if (!tape.error.ok()) return fail(tape.error);
    const nn::TapeMark step = tape.mark();  // everything after it is one iteration

    // 4. Train: forward records, backward differentiates, reset frees.
    const nn::Loss bce = nn::BinaryCrossEntropy();
    size_t step_bytes = 0;
    long long allocs_after_first = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (long it = 0; it < iters; ++it) {
        gd.zero_grad();
        nn::Var h = nn::dense(x, W1, b1, nn::Act::ReLU);     // (750, 10)
        nn::Var p = nn::dense(h, W2, b2, nn::Act::Sigmoid);  // (750, 1)
        nn::Var loss = nn::loss(bce, p, y);
        if (!(st = tape.backward(loss))) return fail(st);
        gd.step();
        if (args.verbose && it % 50 == 0)
            std::printf("iter %ld/%ld\nloss: %.6f\n\n", it + 1, iters, loss.item());  // as the README
        step_bytes = tape.bytes_since(step);
        tape.reset(step);
        if (it == 0) allocs_after_first = heap_allocs();
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double allocs_per_step =
        iters > 1 ? (double)(heap_allocs() - allocs_after_first) / (double)(iters - 1) : 0.0;

    // 5. Accuracy at threshold 0.5.
    double acc = 0, train_acc = 0;
    if (!(st = accuracy(tape, step, test, W1, b1, W2, b2, &acc))) return fail(st);
    if (!(st = accuracy(tape, step, train, W1, b1, W2, b2, &train_acc))) return fail(st);
    std::printf("train accuracy %.4f, test accuracy %.4f; %ld iterations in %.3f s (%.1f us each)\n", train_acc,
                acc, iters, seconds, 1e6 * seconds / (double)iters);
    std::printf("tape: %zu bytes per iteration, %zu bytes at most\n", step_bytes, tape.arena.peak);
    std::printf("RESULT example=autograd_circles init=%s iterations=%ld test_acc=%.4f train_acc=%.4f train_seconds=%.3f "
                "tape_bytes_per_step=%zu heap_allocs_per_step=%g\n",
                pytorch_init ? "pytorch" : "neograd", iters, acc, train_acc, seconds, step_bytes, allocs_per_step);
    return 0;
}
