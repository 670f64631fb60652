// firmware_model — makes the small model examples/firmware_infer.cpp runs:
// a 16-8-3 MLP trained briefly on three seeded clusters, saved as a model
// file that nn-export turns into examples/firmware_mlp.hpp.
//
//     firmware_model out.safetensors
//     nn-export out.safetensors examples/firmware_mlp.hpp --name firmware_mlp
//
// Class k's cluster is centred on center(k, j) = sin(0.7 (k + 1) (j + 1))
// for features j = 0..15, with N(0, 0.5^2) noise; firmware_infer.cpp feeds
// the three centres (and mixes of them) to the exported model. Seeded: the
// same build gives the same file.
#include <cmath>
#include <cstdio>

#include "nn.hpp"

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s out.safetensors\n", argv[0]);
        return 2;
    }
    constexpr int kFeatures = 16, kHidden = 8, kClasses = 3, kPerClass = 200;
    nn::Dataset d;
    d.sample = nn::make_shape({kFeatures});
    d.num_classes = kClasses;
    nn::Rng rng(2024);
    for (int i = 0; i < kPerClass; ++i)
        for (int k = 0; k < kClasses; ++k) {
            for (int j = 0; j < kFeatures; ++j)
                d.f32.push_back(std::sin(0.7f * (float)((k + 1) * (j + 1))) + 0.5f * rng.normal());
            d.labels.push_back(k);
        }
    d.n = d.labels.size();

    nn::Model m;
    m.set_input(nn::make_shape({kFeatures}));
    m.add(nn::Dense(kFeatures, kHidden, nn::Act::ReLU));
    m.add(nn::Dense(kHidden, kClasses));  // logits
    nn::CompileOptions co;
    co.loss = nn::CrossEntropy();
    co.optimizer = nn::Adam(1e-2f);
    co.max_batch = 32;
    co.seed = 7;
    nn::Status st = m.compile(co);
    nn::FitOptions fo;
    fo.epochs = 20;
    fo.batch_size = 32;
    fo.seed = 1;
    fo.verbose = 0;
    if (st) st = m.fit(d, fo);
    nn::EvalResult r;
    if (st) st = m.evaluate(d, &r);
    if (st) st = nn::save(m, argv[1]);
    if (!st) {
        std::fprintf(stderr, "firmware_model: %s\n", st.message());
        return 1;
    }
    std::printf("firmware_model: %s, 16-8-3 MLP, training accuracy %.4f, loss %.4f\n", argv[1], r.metric, r.loss);
    return 0;
}
