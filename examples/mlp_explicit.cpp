// examples/mlp_explicit.cpp — the explicit style (Krikos, llm.c): no Model.
// We own the arena, call every layer's forward and backward ourselves, zero
// the gradients and step the optimizer by hand.
//
// The network reuses one hidden layer twice, with tied weights:
//     h1 = relu(x W1^T + b1)          fc1: 784 -> 128
//     h2 = relu(h1 W2^T + b2)         fc2: 128 -> 128
//     h3 = relu(h2 W2^T + b2)         fc2 again
//     z  = h3 W3^T + b3               fc3: 128 -> 10, logits
// Backward through fc2 runs twice; because backward *adds* into fc2's
// gradients, they end up as the sum over both uses — manual gradient
// aggregation, with nothing to do but not zeroing in between.
//
//   build/mlp_explicit [--epochs 5] [--batch 64] [--data DIR] [--seed S]
#include <chrono>

#include "common.hpp"

int main(int argc, char** argv) {
    ExampleArgs args = parse_args(argc, argv);
    const int epochs = args.epochs ? args.epochs : 5;
    const int B = args.batch ? args.batch : 64;
    const char* dir = args.data ? args.data : "/usr/share/datasets/fashion-mnist";

    nn::Dataset train, test;
    nn::Status st = nn::load_fashion_mnist(dir, &train, &test);
    if (!st) return fail(st);
    train.scale = test.scale = 1.0f / 255.0f;

    // 1. Size and carve everything once. 8 MB is plenty for this network.
    nn::Arena arena;
    if (!(st = arena.reserve(8u << 20))) return fail(st);
    nn::Layer fc1 = nn::Dense(784, 128, nn::Act::ReLU);
    nn::Layer fc2 = nn::Dense(128, 128, nn::Act::ReLU);
    nn::Layer fc3 = nn::Dense(128, 10);
    std::snprintf(fc1.name, sizeof fc1.name, "fc1");
    std::snprintf(fc2.name, sizeof fc2.name, "fc2");
    std::snprintf(fc3.name, sizeof fc3.name, "fc3");
    const nn::Shape flat = nn::make_shape({784}), hidden = nn::make_shape({128});
    if (!(st = nn::build(fc1, flat, B, arena, args.seed + 1))) return fail(st);
    fc2.pack = fc3.pack = fc1.pack;  // one GEMM packing buffer serves all three
    if (!(st = nn::build(fc2, hidden, B, arena, args.seed + 2))) return fail(st);
    if (!(st = nn::build(fc3, hidden, B, arena, args.seed + 3))) return fail(st);

    // Activations and their gradients, one tensor each.
    nn::Tensor x, h1, h2, h3, z, dz, dh3, dh2, dh1;
    for (nn::Tensor* t : {&h1, &h2, &h3, &dh3, &dh2, &dh1})
        if (!(st = nn::tensor_alloc(arena, nn::make_shape({B, 128}), t))) return fail(st);
    if (!(st = nn::tensor_alloc(arena, nn::make_shape({B, 784}), &x))) return fail(st);
    if (!(st = nn::tensor_alloc(arena, nn::make_shape({B, 10}), &z))) return fail(st);
    if (!(st = nn::tensor_alloc(arena, nn::make_shape({B, 10}), &dz))) return fail(st);
    int32_t* labels = static_cast<int32_t*>(arena.alloc(sizeof(int32_t) * (size_t)B, &st));
    uint32_t* order = static_cast<uint32_t*>(arena.alloc(sizeof(uint32_t) * (size_t)B, &st));
    if (!st) return fail(st);

    // 2. The optimizer sees the parameters of all three layers.
    nn::Param params[6];
    int np = 0;
    for (nn::Layer* L : {&fc1, &fc2, &fc3}) np += nn::layer_params(*L, params + np, 6 - np);
    nn::Optimizer opt;
    if (!(st = opt.init(nn::Adam(1e-3f), params, np, arena))) return fail(st);
    std::printf("explicit MLP with a shared hidden layer: arena %zu bytes used\n", arena.used);

    nn::BatchIterator it;
    if (!(st = it.init(0, train.n, B, true, args.seed, /*drop_last=*/true))) return fail(st);
    StepAllocCounter allocs;
    double seconds = 0;
    const nn::Loss ce = nn::CrossEntropy();
    for (int e = 0; e < epochs; ++e) {
        auto t0 = std::chrono::steady_clock::now();
        it.start_epoch();
        const uint32_t* idx;
        double loss_sum = 0;
        int steps = 0;
        while (it.next(&idx) == B) {
            nn::gather(train, idx, B, x.data, labels, nullptr);
            nn::Target t;
            t.labels = labels;
            // 3. Forward, layer by layer.
            opt.zero_grad();
            nn::forward(fc1, h1, x, nn::Mode::Train);
            nn::forward(fc2, h2, h1, nn::Mode::Train);
            nn::forward(fc2, h3, h2, nn::Mode::Train);
            nn::forward(fc3, z, h3, nn::Mode::Train);
            float loss = 0;
            if (!(st = nn::loss_forward_backward(ce, dz, z, t, &loss))) return fail(st);
            // 4. Backward in reverse; fc2's gradients accumulate over both uses.
            nn::backward(fc3, dh3, dz, h3, z);
            nn::backward(fc2, dh2, dh3, h2, h3);
            nn::backward(fc2, dh1, dh2, h1, h2);
            nn::backward(fc1, nn::Tensor{}, dh1, x, h1);  // no gradient for the pixels
            opt.step();
            loss_sum += loss;
            ++steps;
            StepAllocCounter::on_batch_end(&allocs, e + 1, steps, loss);
        }
        opt.end_epoch();
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("epoch %d/%d: loss %.4f\n", e + 1, epochs, loss_sum / steps);
    }

    // 5. Test accuracy, in eval mode, in batches of B.
    int correct = 0;
    for (size_t s = 0; s + (size_t)B <= test.n; s += (size_t)B) {
        for (int r = 0; r < B; ++r) order[r] = (uint32_t)(s + (size_t)r);
        nn::gather(test, order, B, x.data, labels, nullptr);
        nn::forward(fc1, h1, x, nn::Mode::Eval);
        nn::forward(fc2, h2, h1, nn::Mode::Eval);
        nn::forward(fc2, h3, h2, nn::Mode::Eval);
        nn::forward(fc3, z, h3, nn::Mode::Eval);
        for (int r = 0; r < B; ++r) {
            int best = 0;
            for (int j = 1; j < 10; ++j)
                if (z.data[r * 10 + j] > z.data[r * 10 + best]) best = j;
            correct += best == labels[r];
        }
    }
    const size_t tested = test.n / (size_t)B * (size_t)B;
    const double acc = (double)correct / (double)tested;
    std::printf("test accuracy %.4f on %zu images\n", acc, tested);
    print_result("mlp_explicit", epochs, seconds / epochs, acc, arena.used, allocs.per_step());
    return 0;
}
