// kernels/rnn.hpp — the cells of recurrent layers: one time step of RNN,
// LSTM and GRU, forward and backward, between the GEMMs that nn_impl.cpp
// runs around them.
//
// Layout (why it is transposed): every sequence buffer is feature-major,
// a (rows, T*B) matrix whose column t*B + b is step t of sample b. Then
//   - the input projection of all steps is one GEMM, G = W_ih X;
//   - the recurrent GEMM of step t, G[:, t] += W_hh h_{t-1}, reads W_hh in
//     place (the GEMM's A operand needs no packing) and packs only the
//     small (hidden, B) block of h;
//   - the weight gradients are one GEMM each over all steps;
//   - here, each gate row of a step is B contiguous floats.
// Each kernel below works on one step: G points at column t*B of a gate
// matrix with row stride ld (= T*B), state blocks likewise.
//
// Gate rows follow PyTorch: RNN [a], LSTM [i f g o], GRU [r z n], each H rows.
// keep[b] is 0 for a sample whose sequence has ended before this step, else
// 1 (null: every sample runs): an ended sample's state is carried unchanged
// and it gets no gradient (PyTorch's packed sequences).
#pragma once

#include <cmath>
#include <cstddef>

#include "activation.hpp"
#include "simd.hpp"

namespace nn {

// --- Row helpers -------------------------------------------------------------------

// sum of x[0..n), for the bias gradients (a row of dG over all steps).
inline float row_sum_f32_ref(const float* x, size_t n) {
    float s = 0.0f;
    for (size_t i = 0; i < n; ++i) s += x[i];
    return s;
}
inline float row_sum_f32(const float* x, size_t n) {
    size_t i = 0;
    float s = 0.0f;
#if NN_SIMD
    using simd::vf;
    const size_t W = (size_t)simd::kWidth;
    vf a0(0.0f), a1(0.0f), a2(0.0f), a3(0.0f);  // four chains: an add's latency is hidden
    // i: four vectors at a time
    for (; i + 4 * W <= n; i += 4 * W) {
        a0 += vf::load_unaligned(x + i);
        a1 += vf::load_unaligned(x + i + W);
        a2 += vf::load_unaligned(x + i + 2 * W);
        a3 += vf::load_unaligned(x + i + 3 * W);
    }
    s = simd::hsum((a0 + a1) + (a2 + a3));
#endif
    return s + row_sum_f32_ref(x + i, n - i);
}

// y[0..n) += v.
inline void add_scalar_f32(float* y, float v, size_t n) {
    size_t i = 0;
#if NN_SIMD
    using simd::vf;
    const size_t W = (size_t)simd::kWidth;
    const vf vv(v);
    for (; i + W <= n; i += W) (vf::load_unaligned(y + i) + vv).store_unaligned(y + i);
#endif
    for (; i < n; ++i) y[i] += v;
}

// y[0..n) += x[0..n).
inline void add_rows_f32(float* y, const float* x, size_t n) {
    size_t i = 0;
#if NN_SIMD
    using simd::vf;
    const size_t W = (size_t)simd::kWidth;
    for (; i + W <= n; i += W) (vf::load_unaligned(y + i) + vf::load_unaligned(x + i)).store_unaligned(y + i);
#endif
    for (; i < n; ++i) y[i] += x[i];
}

// --- Forward ----------------------------------------------------------------------

// RNN, one step. g holds W_ih x + W_hh h_prev + both biases (H rows); on
// return h = act(g) for valid samples, h_prev for the others.
inline void rnn_cell_forward(float* h, size_t ldh, const float* g, size_t ldg, const float* h_prev,
                             size_t ldp, bool relu, const float* keep, int H, int B) {
    for (int j = 0; j < H; ++j) {  // loop over hidden units, a row of B samples each
        float* hr = h + (size_t)j * ldh;
        const float* gr = g + (size_t)j * ldg;
        if (relu) leaky_relu_forward(hr, gr, 0.0f, (size_t)B);
        else tanh_forward(hr, gr, (size_t)B);
        if (keep)
            for (int b = 0; b < B; ++b)
                if (keep[b] == 0.0f) hr[b] = h_prev ? h_prev[(size_t)j * ldp + b] : 0.0f;
    }
}

// LSTM, one step. G (4H rows) holds the pre-activations; on return it holds
// the activated gates i, f, g, o (backward needs them), and
//   c = f c_prev + i g,  h = o tanh(c)
// for valid samples (the others keep c_prev, h_prev). c_prev/h_prev null: 0.
inline void lstm_cell_forward(float* h, float* c, size_t lds, float* G, size_t ldg, const float* h_prev,
                              const float* c_prev, size_t ldp, const float* keep, int H, int B) {
    // The gate nonlinearities, a row at a time: sigmoid on i, f and o, tanh on g.
    for (int r = 0; r < 4 * H; ++r) {
        float* gr = G + (size_t)r * ldg;
        if (r >= 2 * H && r < 3 * H) tanh_forward(gr, gr, (size_t)B);
        else sigmoid_forward(gr, gr, (size_t)B);
    }
    for (int j = 0; j < H; ++j) {  // loop over hidden units
        const float* ig = G + (size_t)j * ldg;
        const float* fg = G + (size_t)(H + j) * ldg;
        const float* gg = G + (size_t)(2 * H + j) * ldg;
        const float* og = G + (size_t)(3 * H + j) * ldg;
        float* cr = c + (size_t)j * lds;
        float* hr = h + (size_t)j * lds;
        const float* cp = c_prev ? c_prev + (size_t)j * ldp : nullptr;
        const float* hp = h_prev ? h_prev + (size_t)j * ldp : nullptr;
        for (int b = 0; b < B; ++b) cr[b] = fg[b] * (cp ? cp[b] : 0.0f) + ig[b] * gg[b];
        tanh_forward(hr, cr, (size_t)B);
        for (int b = 0; b < B; ++b) hr[b] *= og[b];
        if (keep)
            for (int b = 0; b < B; ++b)
                if (keep[b] == 0.0f) {
                    cr[b] = cp ? cp[b] : 0.0f;
                    hr[b] = hp ? hp[b] : 0.0f;
                }
    }
}

// GRU, one step. G (3H rows) holds W_ih x + b_ih; gh (3H rows, stride ldh_)
// holds W_hh h_prev + b_hh. On return G holds r, z, n and hn keeps gh's n
// rows (W_hn h_prev + b_hn, which backward needs):
//   r = s(G_r + gh_r), z = s(G_z + gh_z), n = tanh(G_n + r gh_n),
//   h = (1 - z) n + z h_prev.
inline void gru_cell_forward(float* h, size_t lds, float* G, size_t ldg, const float* gh, size_t ldgh, float* hn,
                             const float* h_prev, size_t ldp, const float* keep, int H, int B) {
    for (int r = 0; r < 2 * H; ++r) {  // r and z rows
        float* gr = G + (size_t)r * ldg;
        const float* hr = gh + (size_t)r * ldgh;
        for (int b = 0; b < B; ++b) gr[b] += hr[b];
        sigmoid_forward(gr, gr, (size_t)B);
    }
    for (int j = 0; j < H; ++j) {  // loop over hidden units
        const float* rg = G + (size_t)j * ldg;
        const float* zg = G + (size_t)(H + j) * ldg;
        float* ng = G + (size_t)(2 * H + j) * ldg;
        const float* ghn = gh + (size_t)(2 * H + j) * ldgh;
        float* hnr = hn + (size_t)j * lds;
        float* hr = h + (size_t)j * lds;
        const float* hp = h_prev ? h_prev + (size_t)j * ldp : nullptr;
        for (int b = 0; b < B; ++b) {
            hnr[b] = ghn[b];
            ng[b] += rg[b] * ghn[b];
        }
        tanh_forward(ng, ng, (size_t)B);
        for (int b = 0; b < B; ++b) {
            const float p = hp ? hp[b] : 0.0f;
            const float k = keep ? keep[b] : 1.0f;
            hr[b] = k * ((1.0f - zg[b]) * ng[b] + zg[b] * p) + (1.0f - k) * p;
        }
    }
}

// --- Backward ---------------------------------------------------------------------
// Each takes dh (H x B, contiguous): dL/dh of this step, everything from
// above and from step t+1 already summed in. It writes the gradients of the
// gate pre-activations (dG; for GRU also dGh, the part that meets W_hh)
// and leaves in dh (and dc) what flows to step t-1 other than through W_hh:
// 0 for RNN and LSTM (dh), dh z for GRU. keep[b] is 1 for a running sample
// and 0 for an ended one (null: all run): an ended sample's dG is 0 and its
// dh and dc pass through unchanged, as its state did. Written as blends, not
// branches, so that the loops over b vectorise.

// RNN: da = dh act'(a), from the output h.
inline void rnn_cell_backward(float* dG, size_t ldg, float* dh, const float* h, size_t ldh, bool relu,
                              const float* keep, int H, int B) {
    for (int j = 0; j < H; ++j) {  // loop over hidden units, a row of B samples each
        float* dg = dG + (size_t)j * ldg;
        float* d = dh + (size_t)j * B;
        const float* hr = h + (size_t)j * ldh;
        for (int b = 0; b < B; ++b) {
            const float da = relu ? (hr[b] > 0.0f ? d[b] : 0.0f) : d[b] * (1.0f - hr[b] * hr[b]);
            const float k = keep ? keep[b] : 1.0f;
            dg[b] = k * da;
            d[b] = (1.0f - k) * d[b];
        }
    }
}

// LSTM: with tc = tanh(c),
//   do = dh tc,  dc += dh o (1 - tc^2),  di = dc g,  dg = dc i,  df = dc c_prev,
//   then dc <- dc f for step t-1; each through its gate's derivative.
// tc is B floats of scratch.
inline void lstm_cell_backward(float* dG, size_t ldg, float* dh, float* dc, const float* G, const float* c,
                               size_t lds, const float* c_prev, size_t ldp, const float* keep, float* tc, int H,
                               int B) {
    for (int j = 0; j < H; ++j) {  // loop over hidden units
        const float* ig = G + (size_t)j * ldg;
        const float* fg = G + (size_t)(H + j) * ldg;
        const float* gg = G + (size_t)(2 * H + j) * ldg;
        const float* og = G + (size_t)(3 * H + j) * ldg;
        float* di = dG + (size_t)j * ldg;
        float* df = dG + (size_t)(H + j) * ldg;
        float* dg = dG + (size_t)(2 * H + j) * ldg;
        float* dO = dG + (size_t)(3 * H + j) * ldg;
        const float* cp = c_prev ? c_prev + (size_t)j * ldp : nullptr;
        float* dhr = dh + (size_t)j * B;
        float* dcr = dc + (size_t)j * B;
        tanh_forward(tc, c + (size_t)j * lds, (size_t)B);
        int b = 0;
#if NN_SIMD
        using simd::vf;
        const int W = simd::kWidth;
        const vf one(1.0f);
        // b: a vector of samples; the same formulas as the plain loop below
        for (; b + W <= B; b += W) {
            const vf i = vf::load_unaligned(ig + b), f = vf::load_unaligned(fg + b);
            const vf g = vf::load_unaligned(gg + b), o = vf::load_unaligned(og + b);
            const vf t = vf::load_unaligned(tc + b), k = keep ? vf::load_unaligned(keep + b) : one;
            const vf dhv = vf::load_unaligned(dhr + b), dcv = vf::load_unaligned(dcr + b);
            const vf cpv = cp ? vf::load_unaligned(cp + b) : vf(0.0f);
            const vf dct = dcv + dhv * o * (one - t * t);
            (k * dhv * t * o * (one - o)).store_unaligned(dO + b);
            (k * dct * g * i * (one - i)).store_unaligned(di + b);
            (k * dct * i * (one - g * g)).store_unaligned(dg + b);
            (k * dct * cpv * f * (one - f)).store_unaligned(df + b);
            (k * (dct * f) + (one - k) * dcv).store_unaligned(dcr + b);
            ((one - k) * dhv).store_unaligned(dhr + b);
        }
#endif
        // b: the samples left, one at a time (all of them in a scalar build)
        for (; b < B; ++b) {
            const float i = ig[b], f = fg[b], g = gg[b], o = og[b], t = tc[b];
            const float k = keep ? keep[b] : 1.0f;
            const float dct = dcr[b] + dhr[b] * o * (1.0f - t * t);
            dO[b] = k * dhr[b] * t * o * (1.0f - o);
            di[b] = k * dct * g * i * (1.0f - i);
            dg[b] = k * dct * i * (1.0f - g * g);
            df[b] = k * dct * (cp ? cp[b] : 0.0f) * f * (1.0f - f);
            dcr[b] = k * (dct * f) + (1.0f - k) * dcr[b];
            dhr[b] = (1.0f - k) * dhr[b];
        }
    }
}

// GRU: h = (1 - z) n + z h_prev, n = tanh(x_n + r hn):
//   dn = dh (1 - z) (1 - n^2),  dr = dn hn r (1 - r),  dz = dh (h_prev - n) z (1 - z),
//   dGx = [dr, dz, dn],  dGh = [dr, dz, dn r],  dh <- dh z.
inline void gru_cell_backward(float* dGx, float* dGh, size_t ldg, float* dh, const float* G, const float* hn,
                              size_t lds, const float* h_prev, size_t ldp, const float* keep, int H, int B) {
    for (int j = 0; j < H; ++j) {  // loop over hidden units
        const float* rg = G + (size_t)j * ldg;
        const float* zg = G + (size_t)(H + j) * ldg;
        const float* ng = G + (size_t)(2 * H + j) * ldg;
        const float* hnr = hn + (size_t)j * lds;
        const float* hp = h_prev ? h_prev + (size_t)j * ldp : nullptr;
        float* dxr = dGx + (size_t)j * ldg;
        float* dxz = dGx + (size_t)(H + j) * ldg;
        float* dxn = dGx + (size_t)(2 * H + j) * ldg;
        float* dhr_ = dGh + (size_t)j * ldg;
        float* dhz = dGh + (size_t)(H + j) * ldg;
        float* dhn = dGh + (size_t)(2 * H + j) * ldg;
        float* d = dh + (size_t)j * B;
        for (int b = 0; b < B; ++b) {
            const float r = rg[b], z = zg[b], n = ng[b], p = hp ? hp[b] : 0.0f;
            const float k = keep ? keep[b] : 1.0f;
            const float dn = k * d[b] * (1.0f - z) * (1.0f - n * n);
            const float dr = dn * hnr[b] * r * (1.0f - r);
            const float dz = k * d[b] * (p - n) * z * (1.0f - z);
            dxr[b] = dhr_[b] = dr;
            dxz[b] = dhz[b] = dz;
            dxn[b] = dn;
            dhn[b] = dn * r;
            d[b] = k * (d[b] * z) + (1.0f - k) * d[b];
        }
    }
}

}  // namespace nn
