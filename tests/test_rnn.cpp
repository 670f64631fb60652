// tests/test_rnn.cpp — recurrent layers (RNN tanh/relu, LSTM, GRU), Embedding
// and the time-distributed Dense (issue 5).
//
// Three kinds of evidence:
// - PyTorch's numbers (tests/rnn_ref_data.inc, written by tests/rnn_ref.py
//   with torch 1.13): a fixed 2-layer LSTM, GRU and RNN on a padded batch of
//   unsorted lengths (pack_padded_sequence), outputs, h_n/c_n and every
//   gradient. Both sides compute in float over a few dozen terms; 1e-5
//   relative to max(1, |value|) is ~100 float roundings.
// - A double-precision reference written here (the cell equations of nn.hpp
//   as plain loops) and central differences of it (h = 1e-6), against the
//   layer's float analytic backward (layer_check.hpp: 1e-4 relative to
//   max(1, |value|)); a wrong formula is off by O(1e-2) or more.
// - Properties: truncated BPTT against the reference with the state detached
//   at window boundaries, stateful runs in pieces, gradient clipping,
//   Embedding's sparse gradient, Dense per step, errors naming the layer,
//   and a small training run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "nn.hpp"
#include "tests/layer_check.hpp"

namespace rnn_ref {
struct RefCase {
    const char* name;
    nn::RnnCell cell;
    int n_params;  // floats over all parameters, state_dict order
    const float *x, *params, *r_seq, *r_last, *h0, *c0;
    const float *seq_y, *seq_hn, *seq_cn, *seq_dx, *seq_dparams;      // zero states, loss sum(out * r_seq)
    const float *last_y, *last_hn, *last_cn, *last_dx, *last_dparams;  // h0/c0, loss sum(h_n[-1] * r_last)
};
#include "rnn_ref_data.inc"
}  // namespace rnn_ref

namespace {

using nn::RnnCell;
using namespace layer_check;

constexpr float kSentinel = -7777.25f;

int gates(RnnCell c) { return c == RnnCell::LSTM ? 4 : (c == RnnCell::GRU ? 3 : 1); }

const char* cell_name(RnnCell c) {
    switch (c) {
        case RnnCell::RnnTanh: return "RnnTanh";
        case RnnCell::RnnReLU: return "RnnReLU";
        case RnnCell::LSTM: return "LSTM";
        case RnnCell::GRU: return "GRU";
    }
    return "?";
}

nn::Layer make_rnn(RnnCell c, int in, int hidden, int layers, bool seq) {
    switch (c) {
        case RnnCell::RnnTanh: return nn::RNN(in, hidden, layers, seq, nn::Act::Tanh);
        case RnnCell::RnnReLU: return nn::RNN(in, hidden, layers, seq, nn::Act::ReLU);
        case RnnCell::LSTM: return nn::LSTM(in, hidden, layers, seq);
        case RnnCell::GRU: return nn::GRU(in, hidden, layers, seq);
    }
    return nn::LSTM(in, hidden, layers, seq);
}

// The largest |got - want| / max(1, |want|) must stay within tol.
void expect_close(const float* got, const float* want, size_t n, double tol, const std::string& what) {
    MaxErr e;
    for (size_t i = 0; i < n; ++i) e.add(got[i], want[i], 1.0, i);
    EXPECT_LE(e.worst, tol) << e.where(what.c_str());
}
void expect_close(const float* got, const DVec& want, double tol, const std::string& what) {
    MaxErr e;
    for (size_t i = 0; i < want.size(); ++i) e.add(got[i], want[i], 1.0, i);
    EXPECT_LE(e.worst, tol) << e.where(what.c_str());
}

size_t total_param_floats(const nn::Layer& L) {
    size_t n = 0;
    for (int k = 0; k < L.n_params; ++k) n += L.params[k].numel();
    return n;
}

// ============================================================================
// The double-precision reference: PyTorch's equations (nn.hpp, RnnCell),
// batch-first, stacked layers, per-sample lengths, initial states, and
// truncated BPTT by detaching the state at window boundaries.
// ============================================================================
struct RnnSpec {
    RnnCell cell = RnnCell::LSTM;
    int B = 1, T = 1, F = 1, H = 1, NL = 1;
    bool seq = true;
    std::vector<int32_t> lengths;  // empty: every sample has T steps
    DVec h0, c0;                   // (NL, B, H); empty: zeros
    int window = 0;                // bptt_window
};

// States entering each step, (NL, T, B, H).
struct StateLog {
    DVec h, c;
};

struct RefOut {
    DVec y;       // (B, T, H) with zeros at padded steps, or (B, H)
    DVec hn, cn;  // (NL, B, H)
    double min_abs_pre = INFINITY;  // RnnReLU: closest pre-activation to the kink
};

double sigm(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// frozen (with s.window > 0): at every step t > 0 with t % window == 0 the
// state entering step t is read from *frozen, recorded by a run at the base
// point, instead of the running state. Its value is the same there, but it
// no longer depends on the input or the parameters: central differences of
// this function are the truncated gradient (the gradient does not cross from
// step t into step t - 1). record: store the states entering every step.
void rnn_ref(const RnnSpec& s, const DVec& x, const std::vector<DVec>& p, RefOut* out, const StateLog* frozen,
             StateLog* record) {
    const int B = s.B, T = s.T, H = s.H, NL = s.NL, G = gates(s.cell);
    const size_t GH = (size_t)G * H;
    DVec in = x, cur((size_t)B * T * H);
    int in_f = s.F;
    out->hn.assign((size_t)NL * B * H, 0.0);
    out->cn.assign((size_t)NL * B * H, 0.0);
    out->min_abs_pre = INFINITY;
    if (record) {
        record->h.assign((size_t)NL * T * B * H, 0.0);
        record->c.assign((size_t)NL * T * B * H, 0.0);
    }
    DVec h(H), c(H), ax(GH), ah(GH);
    for (int l = 0; l < NL; ++l) {
        const DVec &Wih = p[4 * l], &Whh = p[4 * l + 1], &bih = p[4 * l + 2], &bhh = p[4 * l + 3];
        std::fill(cur.begin(), cur.end(), 0.0);
        for (int b = 0; b < B; ++b) {
            const int len = s.lengths.empty() ? T : s.lengths[b];
            const size_t s0 = ((size_t)l * B + b) * H;
            for (int j = 0; j < H; ++j) {
                h[j] = s.h0.empty() ? 0.0 : s.h0[s0 + j];
                c[j] = s.c0.empty() ? 0.0 : s.c0[s0 + j];
            }
            for (int t = 0; t < len; ++t) {
                const size_t si = (((size_t)l * T + t) * B + b) * H;
                if (record)
                    for (int j = 0; j < H; ++j) {
                        record->h[si + j] = h[j];
                        record->c[si + j] = c[j];
                    }
                if (frozen && s.window > 0 && t > 0 && t % s.window == 0)
                    for (int j = 0; j < H; ++j) {
                        h[j] = frozen->h[si + j];
                        c[j] = frozen->c[si + j];
                    }
                const double* xt = &in[((size_t)b * T + t) * in_f];
                for (size_t g = 0; g < GH; ++g) {
                    double a = bih[g], r = bhh[g];
                    for (int i = 0; i < in_f; ++i) a += Wih[g * in_f + i] * xt[i];
                    for (int k = 0; k < H; ++k) r += Whh[g * H + k] * h[k];
                    ax[g] = a;
                    ah[g] = r;
                }
                for (int j = 0; j < H; ++j) {
                    switch (s.cell) {
                        case RnnCell::RnnTanh: h[j] = std::tanh(ax[j] + ah[j]); break;
                        case RnnCell::RnnReLU: {
                            const double a = ax[j] + ah[j];
                            out->min_abs_pre = std::min(out->min_abs_pre, std::fabs(a));
                            h[j] = a > 0 ? a : 0.0;
                            break;
                        }
                        case RnnCell::LSTM: {
                            const double ig = sigm(ax[j] + ah[j]);
                            const double fg = sigm(ax[H + j] + ah[H + j]);
                            const double gg = std::tanh(ax[2 * H + j] + ah[2 * H + j]);
                            const double og = sigm(ax[3 * H + j] + ah[3 * H + j]);
                            c[j] = fg * c[j] + ig * gg;
                            h[j] = og * std::tanh(c[j]);
                            break;
                        }
                        case RnnCell::GRU: {
                            const double r = sigm(ax[j] + ah[j]);
                            const double z = sigm(ax[H + j] + ah[H + j]);
                            const double n = std::tanh(ax[2 * H + j] + r * ah[2 * H + j]);
                            h[j] = (1.0 - z) * n + z * h[j];
                            break;
                        }
                    }
                }
                for (int j = 0; j < H; ++j) cur[((size_t)b * T + t) * H + j] = h[j];
            }
            for (int j = 0; j < H; ++j) {
                out->hn[s0 + j] = h[j];
                out->cn[s0 + j] = s.cell == RnnCell::LSTM ? c[j] : 0.0;
            }
        }
        in = cur;
        in_f = H;
    }
    if (s.seq) {
        out->y = cur;
    } else {
        out->y.assign((size_t)B * H, 0.0);
        for (int b = 0; b < B; ++b)
            for (int j = 0; j < H; ++j) out->y[(size_t)b * H + j] = out->hn[((size_t)(NL - 1) * B + b) * H + j];
    }
}

std::vector<DVec> layer_params_double(const nn::Layer& L) {
    std::vector<DVec> pd;
    for (int k = 0; k < L.n_params; ++k) pd.push_back(to_double(L.params[k].data, L.params[k].numel()));
    return pd;
}

// ============================================================================
// 0. The layer's parameters are PyTorch's, by name and shape.
// ============================================================================
TEST(Rnn, ParamNamesAndShapesArePyTorchs) {
    const RnnCell cells[] = {RnnCell::RnnTanh, RnnCell::RnnReLU, RnnCell::LSTM, RnnCell::GRU};
    for (RnnCell c : cells) {
        SCOPED_TRACE(cell_name(c));
        Built b(make_rnn(c, 4, 7, 3, true), nn::make_shape({5, 4}), 2);
        ASSERT_TRUE(b.L.built);
        ASSERT_EQ(b.L.n_params, 12);
        const int gh = gates(c) * 7;
        for (int k = 0; k < 3; ++k) {
            const int in = k == 0 ? 4 : 7;
            char nm[32];
            std::snprintf(nm, sizeof nm, "weight_ih_l%d", k);
            EXPECT_STREQ(b.L.param_name[4 * k], nm);
            EXPECT_EQ(b.L.param_shape[4 * k], nn::make_shape({gh, in}));
            std::snprintf(nm, sizeof nm, "weight_hh_l%d", k);
            EXPECT_STREQ(b.L.param_name[4 * k + 1], nm);
            EXPECT_EQ(b.L.param_shape[4 * k + 1], nn::make_shape({gh, 7}));
            std::snprintf(nm, sizeof nm, "bias_ih_l%d", k);
            EXPECT_STREQ(b.L.param_name[4 * k + 2], nm);
            EXPECT_EQ(b.L.param_shape[4 * k + 2], nn::make_shape({gh}));
            std::snprintf(nm, sizeof nm, "bias_hh_l%d", k);
            EXPECT_STREQ(b.L.param_name[4 * k + 3], nm);
            EXPECT_EQ(b.L.param_shape[4 * k + 3], nn::make_shape({gh}));
        }
        // PyTorch's initialisation: U(-1/sqrt(hidden), 1/sqrt(hidden)).
        const float bound = 1.0f / std::sqrt(7.0f);
        float lo = 1e30f, hi = -1e30f;
        for (int k = 0; k < b.L.n_params; ++k)
            for (size_t i = 0; i < b.L.params[k].numel(); ++i) {
                lo = std::min(lo, b.L.params[k].data[i]);
                hi = std::max(hi, b.L.params[k].data[i]);
            }
        EXPECT_GE(lo, -bound);
        EXPECT_LE(hi, bound);
        EXPECT_LT(lo, -0.8f * bound) << "spread over the whole range";
        EXPECT_GT(hi, 0.8f * bound);
        EXPECT_EQ(b.L.out_shape, nn::make_shape({5, 7}));
    }
    Built last(nn::GRU(4, 6, 1, false), nn::make_shape({5, 4}), 2);
    EXPECT_EQ(last.L.out_shape, nn::make_shape({6}));
}

// ============================================================================
// 1. PyTorch's numbers.
// ============================================================================
void load_ref_params(nn::Layer& L, const rnn_ref::RefCase& c) {
    ASSERT_EQ(total_param_floats(L), (size_t)c.n_params);
    size_t at = 0;
    for (int k = 0; k < L.n_params; ++k) {
        std::memcpy(L.params[k].data, c.params + at, L.params[k].numel() * sizeof(float));
        at += L.params[k].numel();
    }
}

void expect_grads_close(const nn::Layer& L, const float* want, double tol) {
    size_t at = 0;
    for (int k = 0; k < L.n_params; ++k) {
        expect_close(L.grads[k].data, want + at, L.params[k].numel(), tol, std::string("grad ") + L.param_name[k]);
        at += L.params[k].numel();
    }
}

constexpr double kTorchTol = 1e-5;

TEST(Rnn, MatchesPyTorchPackedSequences) {
    using namespace rnn_ref;
    const int B = kBatch, T = kSteps, F = kInput, H = kHidden, NL = kLayers;
    for (const RefCase& c : kRefCases) {
        SCOPED_TRACE(c.name);
        // max_batch above the batch: states and outputs are (.., B, ..) of the batch run.
        Built b(make_rnn(c.cell, F, H, NL, true), nn::make_shape({T, F}), B + 2);
        ASSERT_TRUE(b.L.built);
        load_ref_params(b.L, c);
        if (HasFatalFailure()) return;
        b.L.lengths = kLengths;
        FVec x(c.x, c.x + B * T * F), y((size_t)B * T * H, kSentinel), dx(x.size(), kSentinel);
        FVec dy(c.r_seq, c.r_seq + (size_t)B * T * H);
        const nn::Tensor xt = nn::tensor_view(x.data(), {B, T, F});
        const nn::Tensor yt = nn::tensor_view(y.data(), {B, T, H});
        nn::Status st = nn::forward(b.L, yt, xt, nn::Mode::Train);
        ASSERT_TRUE(st.ok()) << st.message();
        expect_close(y.data(), c.seq_y, y.size(), kTorchTol, "output");
        expect_close(b.L.hn, c.seq_hn, (size_t)NL * B * H, kTorchTol, "h_n");
        if (c.seq_cn) expect_close(b.L.cn, c.seq_cn, (size_t)NL * B * H, kTorchTol, "c_n");
        // Padded steps output exactly 0.
        for (int bb = 0; bb < B; ++bb)
            for (int t = kLengths[bb]; t < T; ++t)
                for (int j = 0; j < H; ++j) EXPECT_EQ(y[((size_t)bb * T + t) * H + j], 0.0f) << bb << "," << t;
        nn::zero_grad(b.L);
        st = nn::backward(b.L, nn::tensor_view(dx.data(), {B, T, F}), nn::tensor_view(dy.data(), {B, T, H}), xt, yt);
        ASSERT_TRUE(st.ok()) << st.message();
        expect_close(dx.data(), c.seq_dx, dx.size(), kTorchTol, "dx");
        expect_grads_close(b.L, c.seq_dparams, kTorchTol);
    }
}

TEST(Rnn, MatchesPyTorchLastStateWithInitialState) {
    using namespace rnn_ref;
    const int B = kBatch, T = kSteps, F = kInput, H = kHidden, NL = kLayers;
    for (const RefCase& c : kRefCases) {
        SCOPED_TRACE(c.name);
        Built b(make_rnn(c.cell, F, H, NL, false), nn::make_shape({T, F}), B + 1);
        ASSERT_TRUE(b.L.built);
        load_ref_params(b.L, c);
        if (HasFatalFailure()) return;
        b.L.lengths = kLengths;
        b.L.h0 = c.h0;
        b.L.c0 = c.c0;
        FVec x(c.x, c.x + B * T * F), y((size_t)B * H, kSentinel), dx(x.size(), kSentinel);
        FVec dy(c.r_last, c.r_last + (size_t)B * H);
        const nn::Tensor xt = nn::tensor_view(x.data(), {B, T, F});
        const nn::Tensor yt = nn::tensor_view(y.data(), {B, H});
        nn::Status st = nn::forward(b.L, yt, xt, nn::Mode::Train);
        ASSERT_TRUE(st.ok()) << st.message();
        expect_close(y.data(), c.last_y, y.size(), kTorchTol, "output (last state)");
        expect_close(b.L.hn, c.last_hn, (size_t)NL * B * H, kTorchTol, "h_n");
        if (c.last_cn) expect_close(b.L.cn, c.last_cn, (size_t)NL * B * H, kTorchTol, "c_n");
        nn::zero_grad(b.L);
        st = nn::backward(b.L, nn::tensor_view(dx.data(), {B, T, F}), nn::tensor_view(dy.data(), {B, H}), xt, yt);
        ASSERT_TRUE(st.ok()) << st.message();
        expect_close(dx.data(), c.last_dx, dx.size(), kTorchTol, "dx");
        expect_grads_close(b.L, c.last_dparams, kTorchTol);
    }
}

// The double reference of this file agrees with PyTorch too (so a gradient
// check failure below is the layer's, not the reference's).
TEST(Rnn, DoubleReferenceMatchesPyTorch) {
    using namespace rnn_ref;
    for (const RefCase& c : kRefCases) {
        SCOPED_TRACE(c.name);
        Built b(make_rnn(c.cell, kInput, kHidden, kLayers, true), nn::make_shape({kSteps, kInput}), kBatch);
        ASSERT_TRUE(b.L.built);
        load_ref_params(b.L, c);  // only for the parameter shapes
        if (HasFatalFailure()) return;
        const std::vector<DVec> pd = layer_params_double(b.L);
        RnnSpec s;
        s.cell = c.cell;
        s.B = kBatch, s.T = kSteps, s.F = kInput, s.H = kHidden, s.NL = kLayers;
        s.lengths.assign(kLengths, kLengths + kBatch);
        const size_t nst = (size_t)kLayers * kBatch * kHidden;
        RefOut o;
        rnn_ref(s, to_double(c.x, (size_t)kBatch * kSteps * kInput), pd, &o, nullptr, nullptr);
        MaxErr ey, eh;
        for (size_t i = 0; i < o.y.size(); ++i) ey.add(o.y[i], c.seq_y[i], 1.0, i);
        for (size_t i = 0; i < nst; ++i) eh.add(o.hn[i], c.seq_hn[i], 1.0, i);
        EXPECT_LE(ey.worst, 1e-6) << ey.where("reference output");
        EXPECT_LE(eh.worst, 1e-6) << eh.where("reference h_n");
        s.seq = false;
        s.h0 = to_double(c.h0, nst);
        if (c.c0) s.c0 = to_double(c.c0, nst);
        rnn_ref(s, to_double(c.x, (size_t)kBatch * kSteps * kInput), pd, &o, nullptr, nullptr);
        MaxErr el, ec;
        for (size_t i = 0; i < o.y.size(); ++i) el.add(o.y[i], c.last_y[i], 1.0, i);
        if (c.last_cn)
            for (size_t i = 0; i < nst; ++i) ec.add(o.cn[i], c.last_cn[i], 1.0, i);
        EXPECT_LE(el.worst, 1e-6) << el.where("reference last state");
        EXPECT_LE(ec.worst, 1e-6) << ec.where("reference c_n");
    }
}

// ============================================================================
// 2, 3. Gradient checks against the double reference: T = 5, batch 3,
// input 4, hidden 7, 2 layers, lengths {5, 2, 4}.
// ============================================================================
struct GradCase {
    RnnCell cell;
    bool seq;
    bool with_h0;
    int window;
    int max_batch;
    bool full_lengths = false;  // every sample T steps (lengths null), instead of {5, 2, 4}
    int batch = 3;              // more than a vector's width runs the kernels' vector loops
};

void grad_check_case(const GradCase& g, uint64_t seed) {
    const int B = g.batch, T = 5, F = 4, H = 7, NL = 2;
    // {5, 2, 4}, then every length from 1 to T in turn.
    static const int32_t first[3] = {5, 2, 4};
    std::vector<int32_t> len_buf((size_t)B);
    for (int b = 0; b < B; ++b) len_buf[(size_t)b] = b < 3 ? first[b] : (int32_t)(1 + (2 * b) % T);
    const int32_t* lens = len_buf.data();
    SCOPED_TRACE(std::string(cell_name(g.cell)) + (g.seq ? " sequences" : " last state") +
                 (g.with_h0 ? ", h0/c0 given" : "") + ", bptt_window " + std::to_string(g.window) +
                 (g.full_lengths ? ", no lengths" : ", lengths {5, 2, 4}"));
    Built b(make_rnn(g.cell, F, H, NL, g.seq), nn::make_shape({T, F}), g.max_batch, seed);
    ASSERT_TRUE(b.L.built);
    b.L.lengths = g.full_lengths ? nullptr : lens;
    b.L.bptt_window = g.window;
    nn::Rng rng(seed * 7 + 3);
    const FVec x = uniform_vec((size_t)B * T * F, rng, -1.0f, 1.0f);
    RnnSpec s;
    s.cell = g.cell;
    s.B = B, s.T = T, s.F = F, s.H = H, s.NL = NL;
    s.seq = g.seq;
    if (!g.full_lengths) s.lengths.assign(lens, lens + B);
    s.window = g.window;
    FVec h0, c0;
    if (g.with_h0) {
        h0 = uniform_vec((size_t)NL * B * H, rng, -0.8f, 0.8f);
        b.L.h0 = h0.data();
        s.h0 = to_double(h0.data(), h0.size());
        if (g.cell == RnnCell::LSTM) {
            c0 = uniform_vec((size_t)NL * B * H, rng, -1.5f, 1.5f);
            b.L.c0 = c0.data();
            s.c0 = to_double(c0.data(), c0.size());
        }
    }
    // The base point: the states at the window boundaries, and the kink guard.
    StateLog frozen;
    RefOut base;
    rnn_ref(s, to_double(x.data(), x.size()), layer_params_double(b.L), &base, nullptr, &frozen);
    if (g.cell == RnnCell::RnnReLU) {
        ASSERT_GT(base.min_abs_pre, 1e-4) << "a ReLU pre-activation sits at the kink: central differences "
                                             "would be meaningless; pick another seed";
    }
    const StateLog* fz = g.window > 0 ? &frozen : nullptr;
    RefFn ref = [&](const DVec& xv, const std::vector<DVec>& pv, DVec* y) {
        RefOut o;
        rnn_ref(s, xv, pv, &o, fz, nullptr);
        *y = o.y;
    };
    check_layer_against_reference(b.L, B, x, ref, seed);
    // The final states of that forward pass.
    expect_close(b.L.hn, base.hn, 1e-5, "h_n");
    if (g.cell == RnnCell::LSTM) expect_close(b.L.cn, base.cn, 1e-5, "c_n");
}

const RnnCell kAllCells[] = {RnnCell::LSTM, RnnCell::GRU, RnnCell::RnnTanh, RnnCell::RnnReLU};

TEST(RnnGrad, SequencesAllCells) {
    for (RnnCell c : kAllCells) grad_check_case({c, true, false, 0, 3}, 21 + (int)c);
    grad_check_case({RnnCell::GRU, true, false, 0, 3, true}, 29);
}

// Batch 17: one AVX-512 vector and a sample left over (two AVX2 or NEON
// vectors and one), so the cells' vector loops, their masks and their
// scalar tails all run, against the same double reference.
TEST(RnnGrad, BatchOfSeventeenRunsTheVectorLoops) {
    for (RnnCell c : kAllCells) {
        GradCase g{c, true, false, 0, 17};
        g.batch = 17;
        grad_check_case(g, 61 + (int)c);
        g.seq = false;
        g.with_h0 = true;
        grad_check_case(g, 83 + (int)c);
    }
}

TEST(RnnGrad, LastStateAllCells) {
    for (RnnCell c : kAllCells) grad_check_case({c, false, false, 0, 3}, 31 + (int)c);
}

TEST(RnnGrad, InitialStatesGivenAllCells) {
    // max_batch 4 > batch 3: h0/c0 are (layers, batch, hidden) of the batch run.
    for (RnnCell c : kAllCells) {
        grad_check_case({c, true, true, 0, 4}, 41 + (int)c);
        grad_check_case({c, false, true, 0, 4}, 51 + (int)c);
    }
}

TEST(RnnGrad, TruncatedBpttMatchesDetachedReference) {
    for (RnnCell c : kAllCells) grad_check_case({c, true, false, 2, 3}, 61 + (int)c);
    grad_check_case({RnnCell::RnnTanh, true, true, 1, 3}, 73);  // window 1: no recurrent gradient at all
    grad_check_case({RnnCell::LSTM, true, true, 3, 3}, 74);     // chunks [0, 3), [3, 5)
}

// The last state of a sample that ends before the last window: its gradient
// enters at the sample's last valid step, and flows back within that step's
// window (nothing of the padded steps after it is in the graph).
TEST(RnnGrad, TruncatedBpttLastStateOfShortSamples) {
    grad_check_case({RnnCell::LSTM, false, false, 2, 3, true}, 81);  // without lengths: the plain case
    grad_check_case({RnnCell::GRU, false, false, 2, 3, true}, 82);
    grad_check_case({RnnCell::LSTM, false, false, 2, 3}, 83);  // lengths {5, 2, 4}
    grad_check_case({RnnCell::GRU, false, false, 2, 3}, 84);
    grad_check_case({RnnCell::RnnTanh, false, true, 2, 3}, 85);
}

// One forward and backward with the given window; grads concatenated.
void run_window(nn::Layer& L, int window, const FVec& x, const FVec& r, int B, FVec* y, FVec* dx, FVec* grads) {
    L.bptt_window = window;
    const int T = L.in_shape.dim[0], F = L.in_shape.dim[1];
    y->assign((size_t)B * L.out_shape.numel(), kSentinel);
    dx->assign(x.size(), kSentinel);
    FVec xc = x, rc = r;
    const nn::Tensor xt = nn::tensor_view(xc.data(), {B, T, F});
    const nn::Tensor yt = nn::tensor_view(y->data(), nn::batched(L.out_shape, B));
    nn::zero_grad(L);
    nn::Status st = nn::forward(L, yt, xt, nn::Mode::Train);
    ASSERT_TRUE(st.ok()) << st.message();
    st = nn::backward(L, nn::tensor_view(dx->data(), {B, T, F}), nn::tensor_view(rc.data(), yt.shape), xt, yt);
    ASSERT_TRUE(st.ok()) << st.message();
    grads->clear();
    for (int k = 0; k < L.n_params; ++k) grads->insert(grads->end(), L.grads[k].data, L.grads[k].data + L.grads[k].numel());
}

double max_abs_diff(const FVec& a, const FVec& b) {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, (double)std::fabs(a[i] - b[i]));
    return m;
}

TEST(RnnGrad, TruncationChangesGradientsNotOutputs) {
    const int B = 3, T = 5, F = 4, H = 7;
    static const int32_t lens[3] = {5, 2, 4};
    for (RnnCell c : {RnnCell::LSTM, RnnCell::GRU, RnnCell::RnnTanh}) {
        SCOPED_TRACE(cell_name(c));
        Built b(make_rnn(c, F, H, 2, true), nn::make_shape({T, F}), B, 5);
        ASSERT_TRUE(b.L.built);
        b.L.lengths = lens;
        nn::Rng rng(17);
        const FVec x = uniform_vec((size_t)B * T * F, rng, -1.0f, 1.0f);
        const FVec r = uniform_vec((size_t)B * T * H, rng, -1.0f, 1.0f);
        FVec y0, dx0, g0, y2, dx2, g2, y5, dx5, g5;
        run_window(b.L, 0, x, r, B, &y0, &dx0, &g0);
        run_window(b.L, 2, x, r, B, &y2, &dx2, &g2);
        run_window(b.L, T, x, r, B, &y5, &dx5, &g5);
        if (HasFatalFailure()) return;
        EXPECT_EQ(y0, y2) << "truncation changes only the backward pass";
        EXPECT_GT(max_abs_diff(g0, g2), 1e-3) << "window 2 must cut gradient paths";
        EXPECT_GT(max_abs_diff(dx0, dx2), 1e-3) << "window 2 must cut gradient paths into early inputs";
        // A window as long as the sequence cuts nothing.
        EXPECT_LE(max_abs_diff(g0, g5), 1e-6);
        EXPECT_LE(max_abs_diff(dx0, dx5), 1e-6);
        // The last step's input is in the last window: its gradient is unchanged.
        for (int f = 0; f < F; ++f) {
            const size_t i = ((size_t)0 * T + 4) * F + f;  // sample 0 (length 5), step 4
            EXPECT_NEAR(dx0[i], dx2[i], 1e-6) << "feature " << f;
        }
    }
}

// ============================================================================
// 4. Stateful: two halves with the final state handed on = one whole run.
// ============================================================================
void copy_params(nn::Layer& to, const nn::Layer& from) {
    ASSERT_EQ(to.n_params, from.n_params);
    for (int k = 0; k < from.n_params; ++k) {
        ASSERT_EQ(to.params[k].numel(), from.params[k].numel());
        std::memcpy(to.params[k].data, from.params[k].data, from.params[k].numel() * sizeof(float));
    }
}

// x (B, T, F) -> steps [t0, t0 + n) as (B, n, F).
FVec steps_of(const FVec& x, int B, int T, int F, int t0, int n) {
    FVec out((size_t)B * n * F);
    for (int b = 0; b < B; ++b)
        std::memcpy(&out[(size_t)b * n * F], &x[((size_t)b * T + t0) * F], (size_t)n * F * sizeof(float));
    return out;
}

void stateful_case(RnnCell c, bool alias) {
    SCOPED_TRACE(std::string(cell_name(c)) + (alias ? ", h0 = hn (the same buffer)" : ", h0 = a copy of hn"));
    const int B = 2, T = 6, F = 3, H = 5, NL = 2, TH = T / 2;
    const bool has_c = c == RnnCell::LSTM;
    const size_t nst = (size_t)NL * B * H;
    Built whole(make_rnn(c, F, H, NL, true), nn::make_shape({T, F}), B, 3);
    Built half(make_rnn(c, F, H, NL, true), nn::make_shape({TH, F}), B, 4);
    ASSERT_TRUE(whole.L.built && half.L.built);
    copy_params(half.L, whole.L);
    if (::testing::Test::HasFatalFailure()) return;
    nn::Rng rng(99);
    FVec x = uniform_vec((size_t)B * T * F, rng, -1.5f, 1.5f);
    FVec h0 = uniform_vec(nst, rng, -0.5f, 0.5f), c0 = uniform_vec(nst, rng, -0.5f, 0.5f);
    FVec y((size_t)B * T * H, kSentinel);
    whole.L.h0 = h0.data();
    whole.L.c0 = has_c ? c0.data() : nullptr;
    nn::Status st = nn::forward(whole.L, nn::tensor_view(y.data(), {B, T, H}), nn::tensor_view(x.data(), {B, T, F}),
                                nn::Mode::Eval);
    ASSERT_TRUE(st.ok()) << st.message();

    FVec x1 = steps_of(x, B, T, F, 0, TH), x2 = steps_of(x, B, T, F, TH, TH);
    FVec y1((size_t)B * TH * H, kSentinel), y2((size_t)B * TH * H, kSentinel);
    half.L.h0 = h0.data();
    half.L.c0 = has_c ? c0.data() : nullptr;
    st = nn::forward(half.L, nn::tensor_view(y1.data(), {B, TH, H}), nn::tensor_view(x1.data(), {B, TH, F}),
                     nn::Mode::Eval);
    ASSERT_TRUE(st.ok()) << st.message();
    FVec hv(half.L.hn, half.L.hn + nst), cv;
    if (has_c) cv.assign(half.L.cn, half.L.cn + nst);
    if (alias) {
        half.L.h0 = half.L.hn;
        half.L.c0 = has_c ? half.L.cn : nullptr;
    } else {
        half.L.h0 = hv.data();
        half.L.c0 = has_c ? cv.data() : nullptr;
    }
    st = nn::forward(half.L, nn::tensor_view(y2.data(), {B, TH, H}), nn::tensor_view(x2.data(), {B, TH, F}),
                     nn::Mode::Eval);
    ASSERT_TRUE(st.ok()) << st.message();
    const FVec yw1 = steps_of(y, B, T, H, 0, TH), yw2 = steps_of(y, B, T, H, TH, TH);
    expect_close(y1.data(), yw1.data(), y1.size(), 1e-5, "first half");
    expect_close(y2.data(), yw2.data(), y2.size(), 1e-5, "second half");
    expect_close(half.L.hn, whole.L.hn, nst, 1e-5, "h_n");
    if (has_c) expect_close(half.L.cn, whole.L.cn, nst, 1e-5, "c_n");

    // Without the state handed on, the second half differs: the check above means something.
    half.L.h0 = nullptr;
    half.L.c0 = nullptr;
    st = nn::forward(half.L, nn::tensor_view(y2.data(), {B, TH, H}), nn::tensor_view(x2.data(), {B, TH, F}),
                     nn::Mode::Eval);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_GT(max_abs_diff(y2, yw2), 1e-3);
}

TEST(Rnn, StatefulHalvesEqualWholeSequence) {
    for (RnnCell c : kAllCells) stateful_case(c, false);
}

TEST(Rnn, StatefulFinalStateHandedBackAsInitialState) {
    for (RnnCell c : kAllCells) stateful_case(c, true);
}

// ============================================================================
// 5. Gradient clipping over an LSTM's parameters.
// ============================================================================
TEST(RnnGrad, ClipNormScalesGlobalNormOfLstmGradients) {
    const int B = 3, T = 5, F = 4, H = 7;
    static const int32_t lens[3] = {5, 2, 4};
    Built b(nn::LSTM(F, H, 2, true), nn::make_shape({T, F}), B, 8);
    ASSERT_TRUE(b.L.built);
    b.L.lengths = lens;
    nn::Rng rng(5);
    FVec x = uniform_vec((size_t)B * T * F, rng, -1.0f, 1.0f), r = uniform_vec((size_t)B * T * H, rng, -1.0f, 1.0f);
    FVec y, dx, g;
    run_window(b.L, 0, x, r, B, &y, &dx, &g);
    if (HasFatalFailure()) return;
    nn::Param ps[16];
    const int n = nn::layer_params(b.L, ps, 16);
    ASSERT_EQ(n, 8);
    double ss = 0;
    for (float v : g) ss += (double)v * v;
    const double norm = std::sqrt(ss);
    ASSERT_GT(norm, 0.1);
    FVec p0;
    for (int k = 0; k < b.L.n_params; ++k) p0.insert(p0.end(), b.L.params[k].data, b.L.params[k].data + b.L.params[k].numel());

    for (double clip : {0.25 * norm, 4.0 * norm}) {
        SCOPED_TRACE("clip_norm " + std::to_string(clip) + ", gradient norm " + std::to_string(norm));
        // Restore parameters and gradients.
        size_t at = 0;
        for (int k = 0; k < b.L.n_params; ++k) {
            const size_t m = b.L.params[k].numel();
            std::memcpy(b.L.params[k].data, &p0[at], m * sizeof(float));
            std::memcpy(b.L.grads[k].data, &g[at], m * sizeof(float));
            at += m;
        }
        nn::Arena oa;
        ASSERT_TRUE(oa.reserve(1 << 16).ok());
        nn::OptimConfig cfg = nn::SGD(1.0f);
        cfg.clip_norm = (float)clip;
        nn::Optimizer opt;
        nn::Status st = opt.init(cfg, ps, n, oa);
        ASSERT_TRUE(st.ok()) << st.message();
        opt.step();
        EXPECT_NEAR(opt.last_grad_norm, norm, 1e-5 * norm);
        // torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), at most 1.
        const double coef = std::min(1.0, clip / (norm + 1e-6));
        double us = 0;
        MaxErr e;
        at = 0;
        for (int k = 0; k < b.L.n_params; ++k)
            for (size_t i = 0; i < b.L.params[k].numel(); ++i, ++at) {
                const double upd = (double)p0[at] - b.L.params[k].data[i];
                us += upd * upd;
                e.add(b.L.params[k].data[i], (double)p0[at] - coef * g[at], 1.0, at);
            }
        EXPECT_LE(e.worst, 2e-6) << e.where("parameter after the clipped SGD step (lr 1)");
        EXPECT_NEAR(std::sqrt(us), std::min(clip, norm), 1e-4 * std::min(clip, norm))
            << "the norm of the step is the clipped gradient norm";
    }
}

// ============================================================================
// 6. Embedding.
// ============================================================================
constexpr int kV = 7, kD = 5, kET = 4, kEB = 3;
// Row 4 is never used; row 3 four times, row 1 twice in one sample.
const float kIds[kEB * kET] = {3, 0, 6, 3, 1, 1, 5, 2, 6, 0, 3, 3};

TEST(Embedding, ForwardGathersRows) {
    Built b(nn::Embedding(kV, kD), nn::make_shape({kET}), kEB, 3);
    ASSERT_TRUE(b.L.built);
    EXPECT_EQ(b.L.out_shape, nn::make_shape({kET, kD}));
    ASSERT_EQ(b.L.n_params, 1);
    EXPECT_EQ(b.L.param_shape[0], nn::make_shape({kV, kD}));
    float wmax = 0;
    for (size_t i = 0; i < b.L.params[0].numel(); ++i) wmax = std::max(wmax, std::fabs(b.L.params[0].data[i]));
    EXPECT_GT(wmax, 1.0f) << "N(0, 1) as PyTorch, not a small uniform";
    FVec x(kIds, kIds + kEB * kET), y((size_t)kEB * kET * kD, kSentinel);
    nn::Status st = nn::forward(b.L, nn::tensor_view(y.data(), {kEB, kET, kD}), nn::tensor_view(x.data(), {kEB, kET}),
                                nn::Mode::Train);
    ASSERT_TRUE(st.ok()) << st.message();
    for (int i = 0; i < kEB * kET; ++i)
        for (int d = 0; d < kD; ++d)
            EXPECT_EQ(y[(size_t)i * kD + d], b.L.params[0].data[(size_t)kIds[i] * kD + d]) << "token " << i << ", dim " << d;
    // A smaller batch than max_batch.
    FVec y2((size_t)kET * kD, kSentinel);
    st = nn::forward(b.L, nn::tensor_view(y2.data(), {1, kET, kD}), nn::tensor_view(x.data() + kET, {1, kET}),
                     nn::Mode::Eval);
    ASSERT_TRUE(st.ok()) << st.message();
    for (int d = 0; d < kD; ++d) EXPECT_EQ(y2[d], b.L.params[0].data[1 * kD + d]);
}

TEST(Embedding, BackwardAddsOnlyToUsedRows) {
    Built b(nn::Embedding(kV, kD), nn::make_shape({kET}), kEB, 3);
    ASSERT_TRUE(b.L.built);
    const FVec w0(b.L.params[0].data, b.L.params[0].data + kV * kD);
    FVec x(kIds, kIds + kEB * kET), y((size_t)kEB * kET * kD);
    nn::Rng rng(4);
    FVec dy = uniform_vec(y.size(), rng, -1.0f, 1.0f), dx(x.size(), kSentinel);
    const nn::Tensor xt = nn::tensor_view(x.data(), {kEB, kET}), yt = nn::tensor_view(y.data(), {kEB, kET, kD});
    nn::Status st = nn::forward(b.L, yt, xt, nn::Mode::Train);
    ASSERT_TRUE(st.ok()) << st.message();
    nn::zero_grad(b.L);
    // dx is ignored (ids have no gradient): a buffer may be passed, or none.
    st = nn::backward(b.L, nn::tensor_view(dx.data(), {kEB, kET}), nn::tensor_view(dy.data(), yt.shape), xt, yt);
    ASSERT_TRUE(st.ok()) << st.message();
    DVec want((size_t)kV * kD, 0.0);
    for (int i = 0; i < kEB * kET; ++i)
        for (int d = 0; d < kD; ++d) want[(size_t)kIds[i] * kD + d] += dy[(size_t)i * kD + d];
    const float* g = b.L.grads[0].data;
    expect_close(g, want, 1e-6, "weight gradient");
    for (int d = 0; d < kD; ++d) EXPECT_EQ(g[4 * kD + d], 0.0f) << "unused row 4 stays exactly 0";
    // Row 1 is used twice in sample 1 (steps 0 and 1): both contributions.
    for (int d = 0; d < kD; ++d)
        EXPECT_NEAR(g[1 * kD + d], (double)dy[(size_t)4 * kD + d] + dy[(size_t)5 * kD + d], 1e-6);
    // Accumulates (+=) across calls; passing no dx works too.
    st = nn::backward(b.L, nn::Tensor{}, nn::tensor_view(dy.data(), yt.shape), xt, yt);
    ASSERT_TRUE(st.ok()) << st.message();
    for (auto& v : want) v *= 2;
    expect_close(g, want, 1e-6, "weight gradient after a second backward");
    for (int d = 0; d < kD; ++d) EXPECT_EQ(g[4 * kD + d], 0.0f);
    for (int i = 0; i < kV * kD; ++i) EXPECT_EQ(b.L.params[0].data[i], w0[(size_t)i]) << "backward leaves weights";
}

TEST(Embedding, GradientCheckAgainstDoubleReference) {
    Built b(nn::Embedding(kV, kD), nn::make_shape({kET}), kEB, 9);
    ASSERT_TRUE(b.L.built);
    FVec x(kIds, kIds + kEB * kET), y((size_t)kEB * kET * kD, kSentinel);
    nn::Rng rng(6);
    const FVec r = uniform_vec(y.size(), rng, -1.0f, 1.0f);
    FVec rc = r;
    const nn::Tensor xt = nn::tensor_view(x.data(), {kEB, kET}), yt = nn::tensor_view(y.data(), {kEB, kET, kD});
    nn::zero_grad(b.L);
    nn::Status st = nn::forward(b.L, yt, xt, nn::Mode::Train);
    ASSERT_TRUE(st.ok()) << st.message();
    st = nn::backward(b.L, nn::Tensor{}, nn::tensor_view(rc.data(), yt.shape), xt, yt);
    ASSERT_TRUE(st.ok()) << st.message();
    // y = W[ids] in double; L = sum(y * r); central differences over W.
    DVec w = to_double(b.L.params[0].data, (size_t)kV * kD);
    auto loss = [&](const DVec& wv) {
        double s = 0;
        for (int i = 0; i < kEB * kET; ++i)
            for (int d = 0; d < kD; ++d) s += wv[(size_t)kIds[i] * kD + d] * r[(size_t)i * kD + d];
        return s;
    };
    MaxErr e;
    for (size_t i = 0; i < w.size(); ++i) {
        const double old = w[i];
        w[i] = old + kFdStep;
        const double lp = loss(w);
        w[i] = old - kFdStep;
        const double lm = loss(w);
        w[i] = old;
        e.add(b.L.grads[0].data[i], (lp - lm) / (2 * kFdStep), 1.0, i);
    }
    EXPECT_LE(e.worst, kGradTol) << e.where("weight");
}

// ============================================================================
// 7. Dense on (T, in) samples: the same Dense on every step.
// ============================================================================
TEST(Rnn, TimeDistributedDenseEqualsDensePerStep) {
    const int B = 3, T = 4, IN = 6, U = 5;
    Built td(nn::Dense(IN, U, nn::Act::Tanh), nn::make_shape({T, IN}), B, 1);
    Built one(nn::Dense(IN, U, nn::Act::Tanh), nn::make_shape({IN}), B, 2);
    ASSERT_TRUE(td.L.built && one.L.built);
    EXPECT_EQ(td.L.out_shape, nn::make_shape({T, U}));
    EXPECT_EQ(td.L.param_shape[0], nn::make_shape({U, IN}));
    copy_params(one.L, td.L);
    if (HasFatalFailure()) return;
    nn::Rng rng(12);
    FVec x = uniform_vec((size_t)B * T * IN, rng, -1.5f, 1.5f), dy = uniform_vec((size_t)B * T * U, rng, -1.0f, 1.0f);
    FVec y((size_t)B * T * U, kSentinel), dx(x.size(), kSentinel);
    const nn::Tensor xt = nn::tensor_view(x.data(), {B, T, IN}), yt = nn::tensor_view(y.data(), {B, T, U});
    nn::zero_grad(td.L);
    nn::Status st = nn::forward(td.L, yt, xt, nn::Mode::Train);
    ASSERT_TRUE(st.ok()) << st.message();
    st = nn::backward(td.L, nn::tensor_view(dx.data(), {B, T, IN}), nn::tensor_view(dy.data(), {B, T, U}), xt, yt);
    ASSERT_TRUE(st.ok()) << st.message();
    nn::zero_grad(one.L);
    for (int t = 0; t < T; ++t) {
        SCOPED_TRACE("step " + std::to_string(t));
        FVec xs = steps_of(x, B, T, IN, t, 1), dys = steps_of(dy, B, T, U, t, 1);
        FVec ys((size_t)B * U, kSentinel), dxs(xs.size(), kSentinel);
        const nn::Tensor xst = nn::tensor_view(xs.data(), {B, IN}), yst = nn::tensor_view(ys.data(), {B, U});
        st = nn::forward(one.L, yst, xst, nn::Mode::Train);
        ASSERT_TRUE(st.ok()) << st.message();
        st = nn::backward(one.L, nn::tensor_view(dxs.data(), {B, IN}), nn::tensor_view(dys.data(), {B, U}), xst, yst);
        ASSERT_TRUE(st.ok()) << st.message();
        const FVec yw = steps_of(y, B, T, U, t, 1), dxw = steps_of(dx, B, T, IN, t, 1);
        expect_close(yw.data(), ys.data(), ys.size(), 1e-5, "output");
        expect_close(dxw.data(), dxs.data(), dxs.size(), 1e-5, "dx");
    }
    // The per-step layer accumulated the sum over steps.
    for (int k = 0; k < td.L.n_params; ++k)
        expect_close(td.L.grads[k].data, one.L.grads[k].data, td.L.params[k].numel(), 1e-5,
                     std::string("grad ") + td.L.param_name[k]);
    // And against the double reference with central differences.
    RefFn ref = [&](const DVec& xv, const std::vector<DVec>& p, DVec* yv) {
        const size_t rows = xv.size() / IN;
        yv->assign(rows * U, 0.0);
        for (size_t r = 0; r < rows; ++r)
            for (int j = 0; j < U; ++j) {
                double z = p[1][j];
                for (int i = 0; i < IN; ++i) z += xv[r * IN + i] * p[0][(size_t)j * IN + i];
                (*yv)[r * U + j] = std::tanh(z);
            }
    };
    check_layer_against_reference(td.L, B, x, ref, 77);
}

// ============================================================================
// 8. Errors name the layer and lose nothing.
// ============================================================================
nn::Layer named(nn::Layer L, const char* name) {
    std::snprintf(L.name, sizeof L.name, "%s", name);
    return L;
}

TEST(RnnErrors, EmbeddingIdOutsideVocabulary) {
    Built b(named(nn::Embedding(kV, kD), "tok_embed"), nn::make_shape({kET}), kEB, 3);
    ASSERT_TRUE(b.L.built);
    const FVec w0(b.L.params[0].data, b.L.params[0].data + kV * kD);
    const float bad_ids[] = {(float)kV, 100.0f, -1.0f, 2.5f, -0.5f, 1e30f, NAN, INFINITY};
    for (float bad : bad_ids) {
        SCOPED_TRACE("id " + std::to_string(bad));
        FVec x(kIds, kIds + kEB * kET), y((size_t)kEB * kET * kD, kSentinel);
        x[(size_t)2 * kET + 3] = bad;  // sample 2, step 3
        nn::Status st = nn::forward(b.L, nn::tensor_view(y.data(), {kEB, kET, kD}),
                                    nn::tensor_view(x.data(), {kEB, kET}), nn::Mode::Train);
        EXPECT_FALSE(st.ok());
        EXPECT_TRUE(contains(st, "tok_embed")) << st.message();
        size_t touched = 0;
        for (float v : y) touched += v != kSentinel;
        EXPECT_EQ(touched, 0u) << "outputs written before the error: " << st.message();
    }
    for (int i = 0; i < kV * kD; ++i) ASSERT_EQ(b.L.params[0].data[i], w0[(size_t)i]);
    // Still usable with valid ids; the largest id is valid.
    FVec x(kIds, kIds + kEB * kET), y((size_t)kEB * kET * kD, kSentinel);
    x[0] = (float)(kV - 1);
    nn::Status st = nn::forward(b.L, nn::tensor_view(y.data(), {kEB, kET, kD}), nn::tensor_view(x.data(), {kEB, kET}),
                                nn::Mode::Train);
    EXPECT_TRUE(st.ok()) << st.message();
}

TEST(RnnErrors, LengthZeroOrBeyondSteps) {
    const int B = 3, T = 5, F = 4, H = 7, NL = 2;
    for (RnnCell c : kAllCells)
        for (bool seq : {true, false}) {
            SCOPED_TRACE(std::string(cell_name(c)) + (seq ? " sequences" : " last state"));
            Built b(named(make_rnn(c, F, H, NL, seq), "enc_rnn"), nn::make_shape({T, F}), B, 2);
            ASSERT_TRUE(b.L.built);
            const size_t nst = (size_t)NL * B * H;
            nn::Rng rng(3);
            FVec x = uniform_vec((size_t)B * T * F, rng, -1.0f, 1.0f);
            const int32_t bad[][3] = {{5, 6, 4}, {5, 0, 4}, {-1, 2, 4}, {5, 2, 1000}};
            for (const auto& lens : bad) {
                SCOPED_TRACE("lengths {" + std::to_string(lens[0]) + ", " + std::to_string(lens[1]) + ", " +
                             std::to_string(lens[2]) + "}");
                b.L.lengths = lens;
                FVec y((size_t)B * b.L.out_shape.numel(), kSentinel);
                std::fill(b.L.hn, b.L.hn + nst, kSentinel);
                if (b.L.cn) std::fill(b.L.cn, b.L.cn + nst, kSentinel);
                nn::Status st = nn::forward(b.L, nn::tensor_view(y.data(), nn::batched(b.L.out_shape, B)),
                                            nn::tensor_view(x.data(), {B, T, F}), nn::Mode::Train);
                EXPECT_FALSE(st.ok());
                EXPECT_TRUE(contains(st, "enc_rnn")) << st.message();
                size_t touched = 0;
                for (float v : y) touched += v != kSentinel;
                for (size_t i = 0; i < nst; ++i) touched += b.L.hn[i] != kSentinel;
                if (b.L.cn)
                    for (size_t i = 0; i < nst; ++i) touched += b.L.cn[i] != kSentinel;
                EXPECT_EQ(touched, 0u) << "outputs or final states written before the error: " << st.message();
            }
            // Still usable with valid lengths (T itself and 1 are valid).
            static const int32_t good[3] = {5, 1, 3};
            b.L.lengths = good;
            FVec y((size_t)B * b.L.out_shape.numel(), kSentinel);
            nn::Status st = nn::forward(b.L, nn::tensor_view(y.data(), nn::batched(b.L.out_shape, B)),
                                        nn::tensor_view(x.data(), {B, T, F}), nn::Mode::Train);
            EXPECT_TRUE(st.ok()) << st.message();
        }
}

TEST(RnnErrors, BuildRejectsWrongInputShapes) {
    struct Case {
        nn::Layer L;
        nn::Shape in;
        const char* what;
    };
    const Case cases[] = {
        {named(nn::GRU(3, 4), "dec_gru"), nn::make_shape({5, 6}), "6 features per step, layer takes 3"},
        {named(nn::LSTM(3, 4, 2), "dec_lstm"), nn::make_shape({5, 2}), "2 features per step, layer takes 3"},
        {named(nn::RNN(3, 4), "dec_rnn"), nn::make_shape({5}), "samples not (steps, features)"},
        {named(nn::LSTM(3, 4), "dec_lstm3d"), nn::make_shape({5, 3, 1}), "samples not (steps, features)"},
        {named(nn::Embedding(7, 4), "dec_embed"), nn::make_shape({5, 2}), "ids not (steps)"},
        {named(nn::Dense(6, 4), "dec_dense"), nn::make_shape({5, 7}), "7 features per step, Dense takes 6"},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.what);
        nn::Arena a;
        ASSERT_TRUE(a.reserve(1 << 22).ok());
        nn::Layer L = c.L;
        nn::Status st = nn::build(L, c.in, 2, a);
        EXPECT_FALSE(st.ok());
        EXPECT_TRUE(contains(st, c.L.name)) << st.message();
        EXPECT_FALSE(L.built);
        EXPECT_EQ(L.n_params, 0) << "the layer is left as it was";
    }
}

TEST(RnnErrors, ForwardRejectsWrongFeatureCount) {
    const int B = 2, T = 5, F = 4, H = 3;
    Built b(named(nn::LSTM(F, H), "enc_lstm"), nn::make_shape({T, F}), B);
    ASSERT_TRUE(b.L.built);
    FVec x((size_t)B * T * (F + 1), 0.5f), y((size_t)B * T * H, kSentinel);
    nn::Status st = nn::forward(b.L, nn::tensor_view(y.data(), {B, T, H}), nn::tensor_view(x.data(), {B, T, F + 1}),
                                nn::Mode::Train);
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(contains(st, "enc_lstm")) << st.message();
    for (float v : y) ASSERT_EQ(v, kSentinel);
}

// ============================================================================
// 9. Training: Embedding -> LSTM -> Dense per step learns to echo the
// previous token (the first step's target is token 0).
// ============================================================================
TEST(Rnn, LstmLearnsToEchoPreviousToken) {
    const int V = 6, D = 8, H = 24, B = 16, T = 10, steps = 300;
    nn::Arena a;
    ASSERT_TRUE(a.reserve(1 << 24).ok());
    nn::Layer emb = nn::Embedding(V, D), lstm = nn::LSTM(D, H, 1, true), fc = nn::Dense(H, V);
    nn::Status st = nn::build(emb, nn::make_shape({T}), B, a, 1);
    if (st) st = nn::build(lstm, nn::make_shape({T, D}), B, a, 2);
    if (st) st = nn::build(fc, nn::make_shape({T, H}), B, a, 3);
    ASSERT_TRUE(st.ok()) << st.message();
    nn::Param ps[32];
    int n = nn::layer_params(emb, ps, 32);
    n += nn::layer_params(lstm, ps + n, 32 - n);
    n += nn::layer_params(fc, ps + n, 32 - n);
    nn::Optimizer opt;
    st = opt.init(nn::Adam(1e-2f), ps, n, a);
    ASSERT_TRUE(st.ok()) << st.message();
    FVec ids((size_t)B * T), e((size_t)B * T * D), h((size_t)B * T * H), z((size_t)B * T * V), dz(z.size()),
        dh(h.size()), de(e.size());
    std::vector<int32_t> labels((size_t)B * T);
    const nn::Tensor it = nn::tensor_view(ids.data(), {B, T}), et = nn::tensor_view(e.data(), {B, T, D}),
                     ht = nn::tensor_view(h.data(), {B, T, H}), zt = nn::tensor_view(z.data(), {B, T, V}),
                     dzt = nn::tensor_view(dz.data(), {B, T, V}), dht = nn::tensor_view(dh.data(), {B, T, H}),
                     det = nn::tensor_view(de.data(), {B, T, D});
    nn::Target tg;
    tg.labels = labels.data();
    nn::Rng rng(2024);
    double first = 0, last = 0;
    for (int s = 0; s < steps; ++s) {
        for (int b = 0; b < B; ++b)
            for (int t = 0; t < T; ++t) {
                const uint32_t tok = rng.below(V);
                ids[(size_t)b * T + t] = (float)tok;
                labels[(size_t)b * T + t] = t == 0 ? 0 : (int32_t)ids[(size_t)b * T + t - 1];
            }
        float loss = 0;
        st = nn::forward(emb, et, it, nn::Mode::Train);
        if (st) st = nn::forward(lstm, ht, et, nn::Mode::Train);
        if (st) st = nn::forward(fc, zt, ht, nn::Mode::Train);
        if (st) st = nn::softmax_cross_entropy(dzt.reshape({B * T, V}), nullptr, zt.reshape({B * T, V}), tg, &loss);
        opt.zero_grad();
        if (st) st = nn::backward(fc, dht, dzt, ht, zt);
        if (st) st = nn::backward(lstm, det, dht, et, ht);
        if (st) st = nn::backward(emb, nn::Tensor{}, det, it, et);
        ASSERT_TRUE(st.ok()) << "step " << s << ": " << st.message();
        opt.step();
        if (s < 10) first += loss / 10;
        if (s >= steps - 10) last += loss / 10;
    }
    EXPECT_LT(last, 0.5 * first) << "loss over the first 10 steps " << first << ", over the last 10 " << last;
}

}  // namespace
