// examples/convnet_fashion.cpp — the network of TensorFlow's Fashion-MNIST
// benchmark (listed there at 0.916 test accuracy), Keras style.
//
//   build/convnet_fashion [--epochs 5] [--batch 64] [--threads T] [--steps N]
//                         [--data /usr/share/datasets/fashion-mnist]
//
//   (1, 28, 28) -> Conv2D 5x5 1->32 same  -> ReLU -> MaxPool 2 -> (32, 14, 14)
//               -> Conv2D 5x5 32->64 same -> ReLU -> MaxPool 2 -> (64, 7, 7)
//               -> Flatten (3136) -> Dense 1024 ReLU -> Dropout 0.4
//               -> Dense 10 (logits)
// `--epochs 1 --steps 100` is the timing run bench/peers.sh compares with
// PyTorch.
#include "common.hpp"

int main(int argc, char** argv) {
    ExampleArgs args = parse_args(argc, argv, /*accepts_init=*/true);
    const int epochs = args.epochs ? args.epochs : 5;
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
    model.add(nn::Conv2D(1, 32, 5, 1, nn::Same));
    model.add(nn::ReLU());
    model.add(nn::MaxPool2D(2));
    model.add(nn::Conv2D(32, 64, 5, 1, nn::Same));
    model.add(nn::ReLU());
    model.add(nn::MaxPool2D(2));
    model.add(nn::Flatten());
    model.add(nn::Dense(1024, nn::Act::ReLU));
    model.add(nn::Dropout(0.4f));
    model.add(nn::Dense(10));
    return fit_and_report(model, train, test, args, "convnet_fashion", epochs, batch);
}
