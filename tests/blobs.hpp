// tests/blobs.hpp — a small synthetic classification set the tests share.
#pragma once

#include <cmath>
#include <cstdint>

#include "nn.hpp"

// Gaussian blobs, one per class, centred at 3 * e_c (or, with fewer features
// than classes, at radius 3 on a circle in the first two features): linearly
// separable for spread 0.5. Labels cycle 0, 1, ..., classes-1.
inline nn::Dataset make_blobs(int n, int features, int classes, float spread, uint64_t seed) {
    nn::Dataset d;
    nn::Rng rng(seed);
    d.n = (size_t)n;
    d.sample = nn::make_shape({features});
    d.num_classes = classes;
    d.f32.resize((size_t)n * features);
    d.labels.resize((size_t)n);
    for (int i = 0; i < n; ++i) {
        const int c = i % classes;
        d.labels[(size_t)i] = c;
        for (int f = 0; f < features; ++f) {
            float centre = f == c ? 3.0f : 0.0f;
            if (features < classes) {
                const double a = 6.283185307179586 * c / classes;
                centre = f == 0 ? (float)(3 * std::cos(a)) : f == 1 ? (float)(3 * std::sin(a)) : 0.0f;
            }
            d.f32[(size_t)i * features + f] = centre + spread * rng.normal();
        }
    }
    return d;
}
