// examples/mlp_fashion.cpp — the Keras style: a sequential MLP trained on
// Fashion-MNIST with fit(), then evaluated on the test set.
//
//   build/mlp_fashion [--epochs 10] [--batch 64] [--data /usr/share/datasets/fashion-mnist]
#include "common.hpp"

int main(int argc, char** argv) {
    ExampleArgs args = parse_args(argc, argv, /*accepts_init=*/true);
    const int epochs = args.epochs ? args.epochs : 10;
    const int batch = args.batch ? args.batch : 64;
    const char* dir = args.data ? args.data : "/usr/share/datasets/fashion-mnist";

    nn::Dataset train, test;
    nn::Status st = nn::load_fashion_mnist(dir, &train, &test);
    if (!st) return fail(st);
    train.scale = test.scale = 1.0f / 255.0f;  // pixels/255, converted per batch
    std::printf("Fashion-MNIST: %zu training and %zu test images from %s (simd: %s)\n", train.n, test.n, dir,
                nn::simd_arch());

    nn::Model model;
    model.set_input(train.sample);  // (1, 28, 28)
    model.add(nn::Flatten());
    model.add(nn::Dense(128, nn::Act::ReLU));
    model.add(nn::Dense(128, nn::Act::ReLU));
    model.add(nn::Dense(10));  // logits; CrossEntropy applies a stable softmax
    nn::CompileOptions co;
    co.loss = nn::CrossEntropy();
    co.optimizer = nn::Adam(1e-3f);
    co.max_batch = batch;
    co.seed = args.seed;
    apply_init(model, args);
    if (!(st = model.compile(co))) return fail(st);
    model.summary();

    nn::FitOptions fo;
    fo.epochs = epochs;
    fo.batch_size = batch;
    fo.seed = args.seed;
    fo.verbose = args.verbose;
    StepAllocCounter allocs;
    allocs.attach(fo);
    if (!(st = model.fit(train, fo))) return fail(st);

    nn::EvalResult r;
    if (!(st = model.evaluate(test, &r))) return fail(st);
    std::printf("test loss %.4f, test accuracy %.4f\n", r.loss, r.metric);
    print_result("mlp_fashion", epochs, mean_epoch_seconds(model.history), r.metric, model.arena_needed,
                 allocs.per_step());
    return 0;
}
