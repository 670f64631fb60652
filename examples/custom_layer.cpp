// examples/custom_layer.cpp — a layer kind of your own, inside the Model.
//
// PReLU (He et al. 2015): y = x where x > 0, a_f * x elsewhere, with one
// learnable slope a_f per feature. It declares its parameter, initialises
// it, and supplies forward and backward; the model then trains it with the
// rest, shows it in summary(), and nn::gradient_check verifies it.
//
//   build/custom_layer [--epochs 60] [--batch 32] [--seed 0]
#include "common.hpp"

// The layer's parameter is params[0], its gradient grads[0]: shape (features).
static nn::Status prelu_declare(nn::Layer& self, const nn::Shape& in) {
    return nn::declare_param(self, "weight", nn::make_shape({(int)in.numel()}));
}

static void prelu_init(nn::Layer& self, nn::Rng&) {
    for (size_t f = 0; f < self.params[0].numel(); ++f) self.params[0].data[f] = 0.25f;  // PyTorch's default
}

// x, y are (B, F)
static void prelu_forward(nn::Layer& self, nn::Tensor y, const nn::Tensor& x, nn::Mode) {
    const float* a = self.params[0].data;
    const size_t F = x.row_size();
    for (int b = 0; b < x.batch(); ++b)
        for (size_t f = 0; f < F; ++f) {
            const float v = x.data[b * F + f];
            y.data[b * F + f] = v > 0.0f ? v : a[f] * v;
        }
}

// dx = dy * (x > 0 ? 1 : a);  da_f += sum_b dy * x over x <= 0
static void prelu_backward(nn::Layer& self, nn::Tensor dx, const nn::Tensor& dy, const nn::Tensor& x,
                           const nn::Tensor&) {
    const float* a = self.params[0].data;
    float* da = self.grads[0].data;
    const size_t F = x.row_size();
    for (int b = 0; b < x.batch(); ++b)
        for (size_t f = 0; f < F; ++f) {
            const float v = x.data[b * F + f], g = dy.data[b * F + f];
            if (dx.data) dx.data[b * F + f] = v > 0.0f ? g : a[f] * g;
            if (v <= 0.0f) da[f] += g * v;
        }
}

static const nn::CustomLayerOps kPReLU = [] {
    nn::CustomLayerOps ops;
    ops.type_name = "PReLU";
    ops.declare = prelu_declare;
    ops.init = prelu_init;
    ops.forward = prelu_forward;
    ops.backward = prelu_backward;
    return ops;  // output_shape left null: same shape as the input
}();

int main(int argc, char** argv) {
    ExampleArgs args = parse_args(argc, argv);
    const int epochs = args.epochs ? args.epochs : 60;
    const int batch = args.batch ? args.batch : 32;

    // First, check the layer's gradients against central differences.
    nn::Arena scratch;
    nn::Status st = scratch.reserve(1 << 20);
    if (!st) return fail(st);
    nn::Layer probe = nn::Custom(&kPReLU);
    std::snprintf(probe.name, sizeof probe.name, "prelu_probe");
    if (!(st = nn::build(probe, nn::make_shape({6}), 4, scratch))) return fail(st);
    nn::Tensor x;
    if (!(st = nn::tensor_alloc(scratch, nn::make_shape({4, 6}), &x))) return fail(st);
    nn::Rng rng(3);
    for (size_t i = 0; i < x.numel(); ++i) x.data[i] = rng.uniform(-1.0f, 1.0f);
    nn::GradCheckResult gc;
    if (!(st = nn::gradient_check(probe, x, scratch, &gc))) return fail(st);
    std::printf("gradient check of PReLU: %s (max error %.2e over %d values)\n", gc.passed ? "passed" : "FAILED",
                gc.max_rel_err, gc.checked);
    if (!gc.passed) return 1;

    // Then train a model that uses it, on the spirals.
    nn::Dataset train, test;
    nn::make_spirals(&train, 300, 3, 0.2f, args.seed + 11);
    if (!(st = nn::split(train, 0.25f, &test))) return fail(st);
    nn::Model model;
    model.set_input(train.sample);
    model.add(nn::Dense(64));
    model.add(nn::Custom(&kPReLU));
    model.add(nn::Dense(64));
    model.add(nn::Custom(&kPReLU));
    model.add(nn::Dense(train.num_classes));
    nn::CompileOptions co;
    co.loss = nn::CrossEntropy();
    co.optimizer = nn::Adam(1e-2f);
    co.max_batch = batch;
    co.seed = args.seed;
    if (!(st = model.compile(co))) return fail(st);
    model.summary();
    nn::FitOptions fo;
    fo.epochs = epochs;
    fo.batch_size = batch;
    fo.seed = args.seed;
    fo.verbose = args.verbose == 1 ? 2 : args.verbose;
    StepAllocCounter allocs;
    allocs.attach(fo);
    if (!(st = model.fit(train, fo))) return fail(st);
    nn::EvalResult r;
    if (!(st = model.evaluate(test, &r))) return fail(st);
    const nn::Layer& p = model.layer(1);
    std::printf("learned PReLU slopes of layer \"%s\": %.3f %.3f %.3f ...\n", p.name, p.params[0].data[0],
                p.params[0].data[1], p.params[0].data[2]);
    print_result("custom_layer", epochs, mean_epoch_seconds(model.history), r.metric, model.arena_needed,
                 allocs.per_step());
    return 0;
}
