// examples/autograd_nnkit.cpp — NNKit's README program on the tape: one
// ReLU layer fitted to a single input, with Adam on W only.
//
//     x = [1, 2]            input, shape (1, 2)
//     target = [0, 0, 1]    shape (1, 3)
//     op1 = x W             W (2, 3), optimised
//     op2 = op1 + b         b (3), fixed: not handed to the optimizer
//     op3 = relu(op2)
//     loss = L2(op3, target), until loss < 0.01
//
// The loss is NNKit's L2Loss: 0.5 * mean((op3 - target)^2) over the three
// outputs (nnkit/loss.py). The plain sum of squares is 6 times that; it is
// printed at the end too.
//
// Initial values: NNKit's rand2 draws U(-l, l), l = sqrt(3 / mean(dims)).
// With that, the third unit (the one that must reach 1) starts with a
// negative pre-activation half the time (105 of seeds 0..199 here); ReLU
// then passes no gradient to its column of W, b is fixed, and NNKit's loop
// never ends: the loss stays at 0.5 * 1/3. Because x is positive, drawing W
// and b from U(0, 1) instead starts every unit active, so every unit gets a
// gradient and the loop converges for any seed (5 to 21 iterations over
// seeds 0..30). The iteration cap turns "never" into a clear failure.
//
// Adam is PyTorch's (with bias correction) at NNKit's rate, 0.1.
//
//   build/autograd_nnkit [--seed S] [--steps MAX_ITERATIONS (10000)] [--verbose 0|1]
#include "common.hpp"

int main(int argc, char** argv) {
    ExampleArgs args = parse_args(argc, argv);
    const long max_iters = args.steps ? args.steps : 10000;

    // 1. One arena for everything: leaves, optimizer state, each step's graph.
    nn::Tape tape;
    nn::Status st = tape.reserve(1u << 20);
    if (!st) return fail(st);

    // 2. Persistent leaves, made before the mark so reset() keeps them.
    const float x0[2] = {1, 2};
    const float t0[3] = {0, 0, 1};
    float w0[6], b0[3];
    nn::Rng rng(args.seed);
    for (float& v : w0) v = rng.uniform();  // U(0, 1): see the note on top
    for (float& v : b0) v = rng.uniform();
    nn::Var x = tape.constant(nn::make_shape({1, 2}), x0, "x");
    nn::Var target = tape.constant(nn::make_shape({1, 3}), t0, "target");
    nn::Var W = tape.param(nn::make_shape({2, 3}), w0, "W");
    nn::Var b = tape.param(nn::make_shape({3}), b0, "b");  // takes gradients, never stepped

    // 3. Adam on W only, as NNKit's `nn.Adam([W])` (its rate is 0.1).
    nn::Param pw = nn::as_param(W, "W");
    nn::Optimizer adam;
    if (!(st = adam.init(nn::Adam(0.1f), &pw, 1, tape.arena))) return fail(st);
    if (!tape.error.ok()) return fail(tape.error);

    // Everything recorded after this mark is one step's graph.
    const nn::TapeMark step = tape.mark();
    std::printf("NNKit's example: x (1, 2), W (2, 3), b (3), Adam(0.1) on W only\n");

    long iters = 0;
    float loss_value = 1e30f;
    size_t step_bytes = 0;
    long long allocs_after_first = 0;
    while (loss_value >= 0.01f && iters < max_iters) {
        // Forward: each operation runs now and records itself on the tape.
        nn::Var op1 = nn::matmul(x, W);              // (1, 3)
        nn::Var op2 = op1 + b;                       // b broadcasts over the row
        nn::Var op3 = nn::relu(op2);
        nn::Var loss = 0.5f * nn::mean(nn::square(op3 - target));  // NNKit's L2Loss

        // Backward and update. zero_grad first: gradients accumulate.
        adam.zero_grad();
        if (!(st = tape.backward(loss))) return fail(st);
        adam.step();
        loss_value = loss.item();  // the loss before this step's update, as NNKit's loop
        ++iters;
        if (args.verbose)  // it takes a handful of iterations: print them all
            std::printf("iteration %4ld: loss %.6f  op3 = [%.4f %.4f %.4f]\n", iters, loss_value,
                        op3.value()[0], op3.value()[1], op3.value()[2]);

        step_bytes = tape.bytes_since(step);
        tape.reset(step);  // the whole graph is freed at once; W and b stay
        if (iters == 1) allocs_after_first = heap_allocs();
    }
    const long long allocs = heap_allocs() - allocs_after_first;
    const double allocs_per_step = iters > 1 ? (double)allocs / (double)(iters - 1) : 0.0;
    const bool converged = loss_value < 0.01f;

    // One more forward pass, recording nothing, to show where W ended up.
    float sum_sq = 0, out[3];
    {
        nn::NoGrad no_grad(tape);
        nn::Var y = nn::relu(nn::matmul(x, W) + b);
        if (!tape.error.ok()) return fail(tape.error);
        for (int j = 0; j < 3; ++j) {
            out[j] = y.value()[j];
            sum_sq += (out[j] - t0[j]) * (out[j] - t0[j]);
        }
        tape.reset(step);
    }
    std::printf("%s after %ld iterations: loss %.6f at the last forward pass\n",
                converged ? "converged" : "did NOT converge", iters, loss_value);
    std::printf("after the last update: relu(x W + b) = [%.4f %.4f %.4f], target [0 0 1],\n"
                "  loss %.6f, sum of squares %.6f\n", out[0], out[1], out[2], sum_sq / 6.0f, sum_sq);
    const float* wv = W.value().data;
    std::printf("W = [[%.4f %.4f %.4f], [%.4f %.4f %.4f]]\n", wv[0], wv[1], wv[2], wv[3], wv[4], wv[5]);
    bool b_same = true;
    for (int j = 0; j < 3; ++j) b_same = b_same && b.value()[j] == b0[j];
    std::printf("b = [%.4f %.4f %.4f] (%s: not handed to the optimizer)\n", b.value()[0], b.value()[1],
                b.value()[2], b_same ? "unchanged" : "CHANGED");
    std::printf("tape: %zu bytes per step, %zu bytes used in all\n", step_bytes, tape.arena.peak);
    std::printf("RESULT example=autograd_nnkit iterations=%ld final_loss=%.6f converged=%d b_unchanged=%d "
                "tape_bytes_per_step=%zu heap_allocs_per_step=%g\n",
                iters, loss_value, converged ? 1 : 0, b_same ? 1 : 0, step_bytes, allocs_per_step);
    if (!converged) {
        std::fprintf(stderr, "error: loss %.6f still >= 0.01 after %ld iterations (the cap)\n", loss_value, iters);
        return 1;
    }
    return b_same ? 0 : 1;
}
