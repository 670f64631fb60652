// examples/lenet_fashion.cpp — LeNet-5 (with ReLU and max pooling, as it is
// trained today) on Fashion-MNIST, Keras style.
//
//   build/lenet_fashion [--epochs 3] [--batch 64] [--threads T] [--steps N]
//                       [--data /usr/share/datasets/fashion-mnist]
//
//   (1, 28, 28) -> Conv2D 5x5 1->6 pad 2 -> ReLU -> MaxPool 2
//               -> Conv2D 5x5 6->16     -> ReLU -> MaxPool 2 -> (16, 5, 5)
//               -> Flatten (400, in C, H, W order as PyTorch) -> Dense 120 ReLU
//               -> Dense 84 ReLU -> Dense 10 (logits)
#include "common.hpp"

int main(int argc, char** argv) {
    ExampleArgs args = parse_args(argc, argv, /*accepts_init=*/true);
    const int epochs = args.epochs ? args.epochs : 3;
    const int batch = args.batch ? args.batch : 64;
    const char* dir = args.data ? args.data : "/usr/share/datasets/fashion-mnist";

    nn::Dataset train, test;
    nn::Status st = nn::load_fashion_mnist(dir, &train, &test);
    if (!st) return fail(st);
    train.scale = test.scale = 1.0f / 255.0f;
    std::printf("Fashion-MNIST: %zu training and %zu test images from %s (simd: %s)\n", train.n, test.n, dir,
                nn::simd_arch());

    nn::Model model;
    model.set_input(train.sample);  // (1, 28, 28)
    model.add(nn::Conv2D(1, 6, 5, /*stride=*/1, /*padding=*/2));
    model.add(nn::ReLU());
    model.add(nn::MaxPool2D(2));
    model.add(nn::Conv2D(6, 16, 5));
    model.add(nn::ReLU());
    model.add(nn::MaxPool2D(2));
    model.add(nn::Flatten());
    model.add(nn::Dense(120, nn::Act::ReLU));
    model.add(nn::Dense(84, nn::Act::ReLU));
    model.add(nn::Dense(10));
    return fit_and_report(model, train, test, args, "lenet_fashion", epochs, batch);
}
