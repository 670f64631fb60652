// examples/cifar_cnn.cpp — a small convolutional network with batch
// normalisation on CIFAR-10, Keras style.
//
//   build/cifar_cnn --data DIR [--epochs 10] [--batch 64] [--threads T] [--steps N]
//
// DIR holds CIFAR-10's binary version (cifar-10-batches-bin: data_batch_1.bin
// .. data_batch_5.bin and test_batch.bin, from https://www.cs.toronto.edu/~kriz/
// cifar.html). Without --data the example says so and exits.
//
//   (3, 32, 32) -> [Conv2D 3x3 same, BatchNorm2d, ReLU] x 2 (32 ch) -> MaxPool 2
//               -> [Conv2D 3x3 same, BatchNorm2d, ReLU] x 2 (64 ch) -> MaxPool 2
//               -> Conv2D 3x3 same 128, BatchNorm2d, ReLU -> GlobalAvgPool
//               -> Dropout 0.3 -> Dense 10 (logits)
// The convolutions before a BatchNorm have no bias: the norm's beta is one.
#include "common.hpp"

static void conv_bn_relu(nn::Model& m, int out) {
    m.add(nn::Conv2D(0, out, 3, 1, nn::Same, 1, 1, /*bias=*/false));
    m.add(nn::BatchNorm2d());
    m.add(nn::ReLU());
}

int main(int argc, char** argv) {
    ExampleArgs args = parse_args(argc, argv, /*accepts_init=*/true);
    if (!args.data) {
        std::printf("cifar_cnn: give the CIFAR-10 binary files' directory with --data DIR "
                    "(data_batch_1.bin .. data_batch_5.bin, test_batch.bin); nothing to do without it\n");
        return 0;
    }
    const int epochs = args.epochs ? args.epochs : 10;
    const int batch = args.batch ? args.batch : 64;

    nn::Dataset train, test;
    nn::Status st = nn::load_cifar10(args.data, &train, &test);
    if (!st) return fail(st);
    // Pixels / 255, then each channel to mean 0 and variance 1 over the
    // training set (the same numbers for the test set).
    train.scale = test.scale = 1.0f / 255.0f;
    nn::fit_channel_normalization(train, train);
    nn::fit_channel_normalization(test, train);
    std::printf("CIFAR-10: %zu training and %zu test images from %s (simd: %s)\n", train.n, test.n, args.data,
                nn::simd_arch());

    nn::Model model;
    model.set_input(train.sample);  // (3, 32, 32)
    conv_bn_relu(model, 32);
    conv_bn_relu(model, 32);
    model.add(nn::MaxPool2D(2));
    conv_bn_relu(model, 64);
    conv_bn_relu(model, 64);
    model.add(nn::MaxPool2D(2));
    conv_bn_relu(model, 128);
    model.add(nn::GlobalAvgPool());
    model.add(nn::Dropout(0.3f));
    model.add(nn::Dense(10));
    return fit_and_report(model, train, test, args, "cifar_cnn", epochs, batch);
}
