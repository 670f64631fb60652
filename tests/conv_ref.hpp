// tests/conv_ref.hpp — the convolution's definition in double, shared by the
// kernel tests (test_conv.cpp) and the layer tests (test_image_layers.cpp).
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include "kernels/conv.hpp"

namespace conv_ref {

using nn::Conv2dGeom;

inline Conv2dGeom geom(int N, int C_in, int H, int W, int C_out, int KH, int KW, int sh, int sw, int ph,
                int pw, int dh, int dw, int groups) {
    Conv2dGeom g{N, C_in, H, W, C_out, KH, KW, sh, sw, ph, pw, dh, dw, groups, -1, -1};
    return g;
}

inline size_t x_size(const Conv2dGeom& g) { return (size_t)g.N * g.C_in * g.H * g.W; }
inline size_t y_size(const Conv2dGeom& g) { return (size_t)g.N * g.C_out * g.OH * g.OW; }
inline size_t w_size(const Conv2dGeom& g) { return (size_t)g.C_out * (g.C_in / g.groups) * g.KH * g.KW; }

// The definition in double: every output with the sum of its terms' |.|.
struct Expected {
    std::vector<double> v, abs;
};

// T is float for the kernel tests, double for central differences.
template <class T>
Expected forward_d(const Conv2dGeom& g, const std::vector<T>& x, const std::vector<T>& w, const T* bias) {
    const int cig = g.C_in / g.groups, cog = g.C_out / g.groups;
    Expected e{std::vector<double>(y_size(g)), std::vector<double>(y_size(g))};
    size_t i = 0;
    for (int n = 0; n < g.N; ++n)
        for (int co = 0; co < g.C_out; ++co)
            for (int oh = 0; oh < g.OH; ++oh)
                for (int ow = 0; ow < g.OW; ++ow, ++i) {
                    double acc = bias ? bias[co] : 0.0, s = std::fabs(acc);
                    for (int ci = 0; ci < cig; ++ci)
                        for (int kh = 0; kh < g.KH; ++kh)
                            for (int kw = 0; kw < g.KW; ++kw) {
                                const int ih = oh * g.sh - g.ph + kh * g.dh, iw = ow * g.sw - g.pw + kw * g.dw;
                                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
                                const double t =
                                    (double)w[(((size_t)co * cig + ci) * g.KH + kh) * g.KW + kw] *
                                    x[(((size_t)n * g.C_in + co / cog * cig + ci) * g.H + ih) * g.W + iw];
                                acc += t;
                                s += std::fabs(t);
                            }
                    e.v[i] = acc;
                    e.abs[i] = s;
                }
    return e;
}

}  // namespace conv_ref
