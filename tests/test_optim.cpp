// Optimizers: trajectories against PyTorch 1.13 (tests/optim_ref_data.inc,
// produced by tests/optim_ref.py), schedules, decay, clipping, frozen
// parameters, the xsimd kernels against their reference loops, validation
// and arena handling.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/optim.hpp"
#include "nn.hpp"

#include "optim_ref_data.inc"

namespace {

using optim_ref::kEpochs;
using optim_ref::kN0;
using optim_ref::kN1;
using optim_ref::kSteps;

// |got - want| <= rtol * |want| + atol. The parameters are O(0.1..1), so
// atol only matters for values that pass through zero.
constexpr double kRtol = 1e-6;
constexpr double kAtol = 1e-7;

::testing::AssertionResult close(double got, double want, double rtol = kRtol,
                                 double atol = kAtol) {
    if (std::fabs(got - want) <= rtol * std::fabs(want) + atol) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << got << ", want " << want << " (diff "
                                         << (got - want) << ")";
}

// Two parameters like the reference's, each replicated `rep` times so the
// vector loop runs (5 * rep and 7 * rep floats); rep = 1 is the reference.
struct TwoParams {
    int rep;
    std::vector<float> v0, v1, g0, g1;
    nn::Param ps[2];
    explicit TwoParams(int rep_) : rep(rep_) {
        v0.resize((size_t)kN0 * rep);
        v1.resize((size_t)kN1 * rep);
        g0.resize(v0.size());
        g1.resize(v1.size());
        for (int r = 0; r < rep; ++r) {
            std::memcpy(&v0[(size_t)r * kN0], optim_ref::kInit0, sizeof optim_ref::kInit0);
            std::memcpy(&v1[(size_t)r * kN1], optim_ref::kInit1, sizeof optim_ref::kInit1);
        }
        ps[0].name = "p0";
        ps[0].value = v0.data();
        ps[0].grad = g0.data();
        ps[0].size = v0.size();
        ps[1].name = "p1";
        ps[1].value = v1.data();
        ps[1].grad = g1.data();
        ps[1].size = v1.size();
    }
    void set_grads(int step) {
        for (int r = 0; r < rep; ++r) {
            std::memcpy(&g0[(size_t)r * kN0], optim_ref::kGrad0[step], sizeof optim_ref::kGrad0[step]);
            std::memcpy(&g1[(size_t)r * kN1], optim_ref::kGrad1[step], sizeof optim_ref::kGrad1[step]);
        }
    }
};

// Runs a reference case on replicated parameters and checks every step.
void run_reference_case(const optim_ref::Case& c, int rep) {
    SCOPED_TRACE(std::string(c.name) + " rep=" + std::to_string(rep));
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(1 << 16).ok());
    TwoParams tp(rep);
    nn::Optimizer opt;
    nn::Status st = opt.init(c.cfg, tp.ps, 2, arena);
    ASSERT_TRUE(st.ok()) << st.message();
    // The optimizer works on its own copy of the Param list.
    for (int s = 0; s < kSteps; ++s) {
        SCOPED_TRACE("step " + std::to_string(s + 1));
        tp.set_grads(s);
        opt.step();
        if (c.epoch_per_step) opt.end_epoch();
        if (c.cfg.clip_norm > 0) {
            EXPECT_TRUE(close(opt.last_grad_norm, c.grad_norm[s]));
        }
        for (int r = 0; r < rep; ++r) {
            for (int i = 0; i < kN0; ++i)
                EXPECT_TRUE(close(tp.v0[(size_t)r * kN0 + i], c.after0[s][i])) << "p0[" << i << "]";
            for (int i = 0; i < kN1; ++i)
                EXPECT_TRUE(close(tp.v1[(size_t)r * kN1 + i], c.after1[s][i])) << "p1[" << i << "]";
        }
    }
    EXPECT_EQ(opt.steps, kSteps);
}

constexpr int kNumCases = (int)(sizeof optim_ref::kCases / sizeof optim_ref::kCases[0]);

std::string case_name(const ::testing::TestParamInfo<int>& info) {
    std::string s = optim_ref::kCases[info.param].name;
    for (char& ch : s)
        if (!std::isalnum((unsigned char)ch)) ch = '_';
    return s;
}

class OptimReference : public ::testing::TestWithParam<int> {};

TEST_P(OptimReference, MatchesPyTorchTrajectory) {
    run_reference_case(optim_ref::kCases[GetParam()], 1);
}

INSTANTIATE_TEST_SUITE_P(Torch, OptimReference, ::testing::Range(0, kNumCases), case_name);

// The same trajectories with each parameter replicated so the vector loop
// and its tail both run. Clipping's global norm changes with replication,
// so the clipping cases are left to the suite above.
class OptimReferenceVectorised : public ::testing::TestWithParam<int> {};

TEST_P(OptimReferenceVectorised, MatchesPyTorchTrajectory) {
    run_reference_case(optim_ref::kCases[GetParam()], 2 * nn::simd::kWidth + 1);
}

std::vector<int> unclipped_cases() {
    std::vector<int> idx;
    for (int i = 0; i < kNumCases; ++i)
        if (optim_ref::kCases[i].cfg.clip_norm == 0.0f) idx.push_back(i);
    return idx;
}

INSTANTIATE_TEST_SUITE_P(Torch, OptimReferenceVectorised, ::testing::ValuesIn(unclipped_cases()),
                         case_name);

const optim_ref::Case& find_case(const char* name) {
    for (const auto& c : optim_ref::kCases)
        if (std::strcmp(c.name, name) == 0) return c;
    ADD_FAILURE() << "no reference case " << name;
    return optim_ref::kCases[0];
}

// --- Schedules and decay ---------------------------------------------------

TEST(OptimSchedule, MatchesTorchSchedulers) {
    for (const auto& sc : optim_ref::kSchedules) {
        SCOPED_TRACE(sc.name);
        nn::OptimConfig c = nn::SGD(0.1f);
        c.schedule = sc.schedule;
        c.step_size = sc.step_size;
        c.gamma = sc.gamma;
        c.t_max = sc.t_max;
        c.eta_min = sc.eta_min;
        nn::Arena arena;
        ASSERT_TRUE(arena.reserve(4096).ok());
        float v = 0, g = 0;
        nn::Param p;
        p.value = &v;
        p.grad = &g;
        p.size = 1;
        nn::Optimizer opt;
        ASSERT_TRUE(opt.init(c, &p, 1, arena).ok());
        for (int e = 0; e < kEpochs; ++e) {
            EXPECT_TRUE(close(opt.current_lr(), sc.lr[e], kRtol, 1e-9)) << "epoch " << e;
            opt.step();  // steps do not move a per-epoch schedule
            EXPECT_TRUE(close(opt.current_lr(), sc.lr[e], kRtol, 1e-9)) << "epoch " << e;
            opt.end_epoch();
        }
    }
}

TEST(OptimSchedule, TimeDecayDividesByOnePlusDecayTimesSteps) {
    // SGD on one weight with gradient 1: p_{t+1} = p_t - lr / (1 + decay * t).
    nn::OptimConfig c = nn::SGD(0.1f);
    c.decay = 0.5f;
    c.schedule = nn::Schedule::Step;
    c.step_size = 2;
    c.gamma = 0.5f;
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(4096).ok());
    float v = 1.0f, g = 1.0f;
    nn::Param p;
    p.value = &v;
    p.grad = &g;
    p.size = 1;
    nn::Optimizer opt;
    ASSERT_TRUE(opt.init(c, &p, 1, arena).ok());
    double want_p = 1.0;
    for (int t = 0; t < 6; ++t) {
        const int epoch = t / 2;  // two steps per epoch
        double lr = 0.1f * std::pow(0.5, epoch / 2) / (1.0 + 0.5 * t);
        EXPECT_TRUE(close(opt.current_lr(), lr)) << "step " << t;
        opt.step();
        want_p -= (double)(float)lr;
        EXPECT_TRUE(close(v, want_p)) << "step " << t;
        if (t % 2 == 1) opt.end_epoch();
    }
}

TEST(OptimSchedule, AdagradLrDecayStacksOnTimeDecay) {
    nn::OptimConfig c = nn::Adagrad(0.1f, 0.1f);
    c.decay = 0.5f;
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(4096).ok());
    float v = 1.0f, g = 0;
    nn::Param p;
    p.value = &v;
    p.grad = &g;
    p.size = 1;
    nn::Optimizer opt;
    ASSERT_TRUE(opt.init(c, &p, 1, arena).ok());
    double want_p = 1.0, sum = 0;
    for (int t = 1; t <= 6; ++t) {
        g = 0.3f * (float)t - 1.0f;
        double lr = 0.1f / (1.0 + 0.5 * (t - 1));
        double clr = lr / (1.0 + (t - 1) * (double)0.1f);
        sum += (double)g * g;
        want_p -= clr * g / (std::sqrt(sum) + 1e-10);
        opt.step();
        EXPECT_TRUE(close(v, want_p)) << "step " << t;
    }
}

// --- Clipping --------------------------------------------------------------

TEST(OptimClip, MatchesClipGradNorm) {
    for (const auto& cc : optim_ref::kClips) {
        SCOPED_TRACE("max_norm " + std::to_string(cc.max_norm));
        // lr 0: step() clips the gradients and leaves the parameters alone.
        nn::OptimConfig c = nn::SGD(0.0f);
        c.clip_norm = cc.max_norm;
        nn::Arena arena;
        ASSERT_TRUE(arena.reserve(4096).ok());
        TwoParams tp(1);
        tp.set_grads(0);
        nn::Optimizer opt;
        ASSERT_TRUE(opt.init(c, tp.ps, 2, arena).ok());
        opt.step();
        EXPECT_TRUE(close(opt.last_grad_norm, cc.total));
        for (int i = 0; i < kN0; ++i) {
            EXPECT_TRUE(close(tp.g0[i], cc.grad0[i])) << "g0[" << i << "]";
            EXPECT_EQ(tp.v0[i], optim_ref::kInit0[i]);
        }
        for (int i = 0; i < kN1; ++i) EXPECT_TRUE(close(tp.g1[i], cc.grad1[i])) << "g1[" << i << "]";
    }
}

TEST(OptimClip, SkipsFrozenParamsAndKeepsNonFiniteGradients) {
    nn::OptimConfig c = nn::SGD(0.0f);
    c.clip_norm = 1.0f;
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(4096).ok());
    TwoParams tp(1);
    tp.set_grads(0);
    tp.ps[1].trainable = false;
    nn::Optimizer opt;
    ASSERT_TRUE(opt.init(c, tp.ps, 2, arena).ok());
    opt.step();
    double ss = 0;
    for (int i = 0; i < kN0; ++i) ss += (double)optim_ref::kGrad0[0][i] * optim_ref::kGrad0[0][i];
    EXPECT_TRUE(close(opt.last_grad_norm, std::sqrt(ss)));  // p1 not counted
    for (int i = 0; i < kN1; ++i) EXPECT_EQ(tp.g1[i], optim_ref::kGrad1[0][i]);  // nor scaled
    for (int i = 0; i < kN0; ++i)
        EXPECT_TRUE(close(tp.g0[i], optim_ref::kGrad0[0][i] * (1.0 / (std::sqrt(ss) + 1e-6))));

    // A NaN gradient: the norm is NaN and nothing is scaled.
    tp.set_grads(0);
    tp.g0[1] = NAN;
    opt.step();
    EXPECT_TRUE(std::isnan(opt.last_grad_norm));
    for (int i = 0; i < kN0; ++i) {
        if (i != 1) {
            EXPECT_EQ(tp.g0[i], optim_ref::kGrad0[0][i]);
        }
    }
}

// --- Frozen parameters -----------------------------------------------------

TEST(OptimFrozen, FrozenParamIsUntouchedAndOthersFollowTorch) {
    const optim_ref::Case& ref = find_case("adam_lr0.1");
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(8192).ok());
    TwoParams tp(1);
    tp.ps[1].trainable = false;
    nn::Optimizer opt;
    ASSERT_TRUE(opt.init(ref.cfg, tp.ps, 2, arena).ok());
    for (int s = 0; s < kSteps; ++s) {
        tp.set_grads(s);
        opt.step();
        for (int i = 0; i < kN0; ++i) EXPECT_TRUE(close(tp.v0[i], ref.after0[s][i]));
        for (int i = 0; i < kN1; ++i) {
            EXPECT_EQ(tp.v1[i], optim_ref::kInit1[i]);
            EXPECT_EQ(tp.g1[i], optim_ref::kGrad1[s][i]);
        }
    }
    EXPECT_EQ(opt.param_steps[0], kSteps);
    EXPECT_EQ(opt.param_steps[1], 0);
    // Adam state of the frozen parameter stayed zero.
    for (int i = 0; i < kN1; ++i) EXPECT_EQ(opt.state[1 * nn::Optimizer::kStateSlots + 0][i], 0.0f);
}

TEST(OptimFrozen, UnfrozenParamStartsItsOwnStepCount) {
    // Like PyTorch's per-parameter state["step"]: a parameter unfrozen after
    // three steps gets the bias correction of its own first step.
    nn::OptimConfig c = nn::Adam(0.1f);
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(8192).ok());
    TwoParams tp(1);
    tp.ps[1].trainable = false;
    nn::Optimizer opt;
    ASSERT_TRUE(opt.init(c, tp.ps, 2, arena).ok());

    std::vector<float> alone(optim_ref::kInit1, optim_ref::kInit1 + kN1), alone_g(kN1);
    nn::Param pa;
    pa.value = alone.data();
    pa.grad = alone_g.data();
    pa.size = kN1;
    nn::Optimizer fresh;
    ASSERT_TRUE(fresh.init(c, &pa, 1, arena).ok());
    for (int s = 0; s < kSteps; ++s) {
        if (s == 3) opt.params[1].trainable = true;
        tp.set_grads(s);
        opt.step();
        if (s >= 3) {
            std::memcpy(alone_g.data(), optim_ref::kGrad1[s], sizeof optim_ref::kGrad1[s]);
            fresh.step();
        }
    }
    for (int i = 0; i < kN1; ++i) EXPECT_EQ(tp.v1[i], alone[i]);
    EXPECT_EQ(opt.param_steps[1], 3);
}

TEST(OptimFrozen, ZeroGradClearsEveryParam) {
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(8192).ok());
    TwoParams tp(1);
    tp.set_grads(0);
    tp.ps[1].trainable = false;
    nn::Optimizer opt;
    ASSERT_TRUE(opt.init(nn::SGD(0.1f, 0.9f), tp.ps, 2, arena).ok());
    opt.zero_grad();
    for (float g : tp.g0) EXPECT_EQ(g, 0.0f);
    for (float g : tp.g1) EXPECT_EQ(g, 0.0f);
}

// --- Kernels: vector loop against the reference loop -----------------------

struct Buf {
    std::vector<float> store;
    float* p;
    // n floats starting `offset` floats into the storage (misaligned when 1).
    Buf(size_t n, size_t offset) : store(n + offset + 1), p(store.data() + offset) {}
};

void fill(float* x, size_t n, nn::Rng& rng, float lo, float hi) {
    for (size_t i = 0; i < n; ++i) x[i] = rng.uniform(lo, hi);
}

::testing::AssertionResult arrays_close(const float* got, const float* want, size_t n,
                                        const char* what) {
    for (size_t i = 0; i < n; ++i) {
        auto r = close(got[i], want[i], 1e-6, 1e-7);
        if (!r) return r << " " << what << "[" << i << "] of " << n;
    }
    return ::testing::AssertionSuccess();
}

std::vector<size_t> kernel_sizes() {
    return {1, 3, 17, (size_t)nn::simd::kWidth + 1, 1000};
}

TEST(OptimKernels, SgdMatchesReference) {
    struct Cfg { bool buf, first, nesterov; float momentum, dampening, wd; };
    const Cfg cfgs[] = {{false, false, false, 0, 0, 0},       {false, false, false, 0, 0, 0.01f},
                        {true, true, false, 0.9f, 0, 0},      {true, false, false, 0.9f, 0.1f, 0},
                        {true, false, true, 0.9f, 0, 0.01f}};
    for (size_t n : kernel_sizes())
        for (size_t off : {0, 1})
            for (const Cfg& k : cfgs) {
                SCOPED_TRACE("n=" + std::to_string(n) + " offset=" + std::to_string(off));
                nn::Rng rng(n * 7 + off);
                Buf p(n, off), b(n, off), g(n, off), p2(n, off), b2(n, off);
                fill(p.p, n, rng, -1, 1);
                fill(b.p, n, rng, -1, 1);
                fill(g.p, n, rng, -1, 1);
                std::memcpy(p2.p, p.p, n * 4);
                std::memcpy(b2.p, b.p, n * 4);
                nn::sgd_update_f32(p.p, k.buf ? b.p : nullptr, g.p, 0.1f, k.momentum, k.dampening,
                                   k.wd, k.nesterov, k.first, n);
                nn::sgd_update_f32_ref(p2.p, k.buf ? b2.p : nullptr, g.p, 0.1f, k.momentum,
                                       k.dampening, k.wd, k.nesterov, k.first, n);
                EXPECT_TRUE(arrays_close(p.p, p2.p, n, "p"));
                EXPECT_TRUE(arrays_close(b.p, b2.p, n, "buf"));
                EXPECT_EQ(p.store.back(), 0.0f);  // nothing written past n
            }
}

TEST(OptimKernels, AdagradMatchesReference) {
    for (size_t n : kernel_sizes())
        for (size_t off : {0, 1})
            for (float wd : {0.0f, 0.01f}) {
                SCOPED_TRACE("n=" + std::to_string(n) + " offset=" + std::to_string(off));
                nn::Rng rng(n * 11 + off);
                Buf p(n, off), s(n, off), g(n, off), p2(n, off), s2(n, off);
                fill(p.p, n, rng, -1, 1);
                fill(s.p, n, rng, 0, 1);
                fill(g.p, n, rng, -1, 1);
                std::memcpy(p2.p, p.p, n * 4);
                std::memcpy(s2.p, s.p, n * 4);
                nn::adagrad_update_f32(p.p, s.p, g.p, 0.05f, 1e-10f, wd, n);
                nn::adagrad_update_f32_ref(p2.p, s2.p, g.p, 0.05f, 1e-10f, wd, n);
                EXPECT_TRUE(arrays_close(p.p, p2.p, n, "p"));
                EXPECT_TRUE(arrays_close(s.p, s2.p, n, "sum"));
            }
}

TEST(OptimKernels, RmspropMatchesReference) {
    struct Cfg { bool centered, mom; float wd; };
    const Cfg cfgs[] = {{false, false, 0}, {true, false, 0}, {false, true, 0}, {true, true, 0.01f}};
    for (size_t n : kernel_sizes())
        for (size_t off : {0, 1})
            for (const Cfg& k : cfgs) {
                SCOPED_TRACE("n=" + std::to_string(n) + " offset=" + std::to_string(off));
                nn::Rng rng(n * 13 + off);
                Buf p(n, off), sq(n, off), ga(n, off), b(n, off), g(n, off);
                fill(p.p, n, rng, -1, 1);
                fill(sq.p, n, rng, 0.1f, 1);
                for (size_t i = 0; i < n; ++i) ga.p[i] = rng.uniform(-0.5f, 0.5f) * std::sqrt(sq.p[i]);
                fill(b.p, n, rng, -1, 1);
                fill(g.p, n, rng, -1, 1);
                Buf p2 = p, sq2 = sq, ga2 = ga, b2 = b;
                p2.p = p2.store.data() + off;
                sq2.p = sq2.store.data() + off;
                ga2.p = ga2.store.data() + off;
                b2.p = b2.store.data() + off;
                nn::rmsprop_update_f32(p.p, sq.p, k.centered ? ga.p : nullptr, k.mom ? b.p : nullptr,
                                       g.p, 0.01f, 0.99f, 1e-8f, k.wd, 0.5f, n);
                nn::rmsprop_update_f32_ref(p2.p, sq2.p, k.centered ? ga2.p : nullptr,
                                           k.mom ? b2.p : nullptr, g.p, 0.01f, 0.99f, 1e-8f, k.wd,
                                           0.5f, n);
                EXPECT_TRUE(arrays_close(p.p, p2.p, n, "p"));
                EXPECT_TRUE(arrays_close(sq.p, sq2.p, n, "sq"));
                EXPECT_TRUE(arrays_close(ga.p, ga2.p, n, "ga"));
                EXPECT_TRUE(arrays_close(b.p, b2.p, n, "buf"));
            }
}

TEST(OptimKernels, AdamMatchesReference) {
    struct Cfg { bool amsgrad, decoupled; float wd; };
    const Cfg cfgs[] = {{false, false, 0}, {true, false, 0.01f}, {false, true, 0.01f}, {true, true, 0.01f}};
    for (size_t n : kernel_sizes())
        for (size_t off : {0, 1})
            for (const Cfg& k : cfgs) {
                SCOPED_TRACE("n=" + std::to_string(n) + " offset=" + std::to_string(off));
                nn::Rng rng(n * 17 + off);
                Buf p(n, off), m(n, off), v(n, off), vm(n, off), g(n, off);
                fill(p.p, n, rng, -1, 1);
                fill(m.p, n, rng, -0.1f, 0.1f);
                fill(v.p, n, rng, 0, 0.01f);
                fill(vm.p, n, rng, 0, 0.01f);
                fill(g.p, n, rng, -1, 1);
                Buf p2 = p, m2 = m, v2 = v, vm2 = vm;
                p2.p = p2.store.data() + off;
                m2.p = m2.store.data() + off;
                v2.p = v2.store.data() + off;
                vm2.p = vm2.store.data() + off;
                const double bc1 = 1 - std::pow(0.9, 3), bc2 = 1 - std::pow(0.999, 3);
                nn::adam_update_f32(p.p, m.p, v.p, k.amsgrad ? vm.p : nullptr, g.p, 0.1f, 0.9f,
                                    0.999f, 1e-8f, k.wd, k.decoupled, bc1, bc2, n);
                nn::adam_update_f32_ref(p2.p, m2.p, v2.p, k.amsgrad ? vm2.p : nullptr, g.p, 0.1f,
                                        0.9f, 0.999f, 1e-8f, k.wd, k.decoupled, bc1, bc2, n);
                EXPECT_TRUE(arrays_close(p.p, p2.p, n, "p"));
                EXPECT_TRUE(arrays_close(m.p, m2.p, n, "m"));
                EXPECT_TRUE(arrays_close(v.p, v2.p, n, "v"));
                EXPECT_TRUE(arrays_close(vm.p, vm2.p, n, "vmax"));
            }
}

TEST(OptimKernels, SumSquaresAndScaleMatchReference) {
    for (size_t n : kernel_sizes())
        for (size_t off : {0, 1}) {
            SCOPED_TRACE("n=" + std::to_string(n) + " offset=" + std::to_string(off));
            nn::Rng rng(n * 19 + off);
            Buf x(n, off), y(n, off);
            fill(x.p, n, rng, -2, 2);
            std::memcpy(y.p, x.p, n * 4);
            double exact = 0;
            for (size_t i = 0; i < n; ++i) exact += (double)x.p[i] * x.p[i];
            EXPECT_TRUE(close(nn::sum_squares_f32_ref(x.p, n), exact, 1e-12, 0));
            EXPECT_TRUE(close(nn::sum_squares_f32(x.p, n), exact, 1e-6, 0));
            nn::scale_f32(x.p, 0.37f, n);
            nn::scale_f32_ref(y.p, 0.37f, n);
            for (size_t i = 0; i < n; ++i) ASSERT_EQ(x.p[i], y.p[i]) << i;
            EXPECT_EQ(x.store.back(), 0.0f);
        }
}

// --- Validation ------------------------------------------------------------

TEST(OptimValidate, DefaultsAreValidAndMatchPyTorch) {
    for (const nn::OptimConfig& c : {nn::SGD(), nn::Adagrad(), nn::RMSprop(), nn::Adam(), nn::AdamW()})
        EXPECT_TRUE(nn::validate(c).ok()) << nn::validate(c).message();
    EXPECT_EQ(nn::SGD().lr, 0.01f);
    EXPECT_EQ(nn::Adagrad().eps, 1e-10f);
    EXPECT_EQ(nn::RMSprop().alpha, 0.99f);
    EXPECT_EQ(nn::Adam().beta2, 0.999f);
    EXPECT_EQ(nn::AdamW().weight_decay, 1e-2f);
    EXPECT_EQ(nn::AdamW().kind, nn::OptKind::AdamW);
    EXPECT_STREQ(nn::optimizer_name(nn::OptKind::RMSprop), "RMSprop");
    nn::OptimConfig zero_eps = nn::Adam(1e-3f, 0.9f, 0.999f, 0.0f);
    EXPECT_TRUE(nn::validate(zero_eps).ok());  // PyTorch allows eps = 0
    nn::OptimConfig zero_beta = nn::Adam(1e-3f, 0.0f, 0.0f);
    EXPECT_TRUE(nn::validate(zero_beta).ok());
}

TEST(OptimValidate, BadSettingsNameTheField) {
    struct Bad { const char* field; nn::OptimConfig c; };
    auto with = [](nn::OptimConfig c, void (*f)(nn::OptimConfig&)) { f(c); return c; };
    const Bad bad[] = {
        {"lr", nn::SGD(-0.1f)},
        {"lr", nn::Adam(NAN)},
        {"lr", nn::Adam(INFINITY)},
        {"momentum", nn::SGD(0.1f, -0.5f)},
        {"momentum", nn::RMSprop(0.01f, 0.99f, 1e-8f, 0.0f, -1.0f)},
        {"nesterov", nn::SGD(0.1f, 0.0f, true)},
        {"dampening", nn::SGD(0.1f, 0.9f, true, 0.0f, 0.1f)},
        {"weight_decay", nn::AdamW(1e-3f, 0.9f, 0.999f, 1e-8f, -0.01f)},
        {"eps", nn::Adam(1e-3f, 0.9f, 0.999f, -1e-8f)},
        {"eps", nn::Adagrad(0.01f, 0.0f, 0.0f, 0.0f, -1.0f)},
        {"beta1", nn::Adam(1e-3f, 1.0f)},
        {"beta1", nn::Adam(1e-3f, -0.1f)},
        {"beta2", nn::Adam(1e-3f, 0.9f, 1.5f)},
        {"alpha", nn::RMSprop(0.01f, -0.5f)},
        {"lr_decay", nn::Adagrad(0.01f, -0.1f)},
        {"initial_accumulator_value", nn::Adagrad(0.01f, 0.0f, 0.0f, -1.0f)},
        {"decay", with(nn::SGD(), [](nn::OptimConfig& c) { c.decay = -1; })},
        {"clip_norm", with(nn::SGD(), [](nn::OptimConfig& c) { c.clip_norm = -1; })},
        {"clip_norm", with(nn::SGD(), [](nn::OptimConfig& c) { c.clip_norm = NAN; })},
        {"step_size", with(nn::SGD(), [](nn::OptimConfig& c) {
             c.schedule = nn::Schedule::Step;
             c.step_size = 0;
         })},
        {"t_max", with(nn::SGD(), [](nn::OptimConfig& c) {
             c.schedule = nn::Schedule::Cosine;
             c.t_max = 0;
         })},
        {"gamma", with(nn::SGD(), [](nn::OptimConfig& c) {
             c.schedule = nn::Schedule::Exponential;
             c.gamma = 0;
         })},
        {"eta_min", with(nn::SGD(), [](nn::OptimConfig& c) {
             c.schedule = nn::Schedule::Cosine;
             c.eta_min = -1;
         })},
    };
    for (const Bad& b : bad) {
        nn::Status st = nn::validate(b.c);
        ASSERT_FALSE(st.ok()) << b.field;
        EXPECT_NE(std::strstr(st.message(), b.field), nullptr)
            << "field " << b.field << " missing from: " << st.message();
        EXPECT_NE(std::strstr(st.message(), nn::optimizer_name(b.c.kind)), nullptr) << st.message();
        // init refuses it with the same message and carves nothing.
        nn::Arena arena;
        ASSERT_TRUE(arena.reserve(1024).ok());
        float v = 0, g = 0;
        nn::Param p;
        p.value = &v;
        p.grad = &g;
        p.size = 1;
        nn::Optimizer opt;
        nn::Status st2 = opt.init(b.c, &p, 1, arena);
        EXPECT_STREQ(st2.message(), st.message());
        EXPECT_EQ(arena.used, 0u);
        EXPECT_EQ(opt.params, nullptr);
    }
    EXPECT_STREQ(nn::validate(nn::SGD(0.1f, 0.0f, true)).message(),
                 "optimizer SGD: nesterov=true needs momentum > 0 (got momentum=0) and "
                 "dampening=0 (got dampening=0)");
    EXPECT_STREQ(nn::validate(nn::SGD(-0.5f)).message(),
                 "optimizer SGD: lr=-0.5 must be >= 0 and finite");
}

TEST(OptimInit, RejectsParamsWithoutBuffers) {
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(4096).ok());
    float v[3] = {0, 0, 0};
    nn::Param p;
    p.name = "weight";
    p.value = v;
    p.size = 3;  // no grad
    nn::Optimizer opt;
    nn::Status st = opt.init(nn::Adam(), &p, 1, arena);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(std::strstr(st.message(), "weight"), nullptr) << st.message();
    EXPECT_NE(std::strstr(st.message(), "gradient"), nullptr) << st.message();
    p.trainable = false;  // frozen: no gradient needed
    EXPECT_TRUE(opt.init(nn::Adam(), &p, 1, arena).ok());
}

// --- Arena handling --------------------------------------------------------

// Which state slots each configuration carves.
TEST(OptimInit, CarvesOnlyTheStateItNeeds) {
    struct Want { nn::OptimConfig c; bool slot[3]; };
    auto centered_mom = nn::RMSprop(0.01f, 0.99f, 1e-8f, 0.0f, 0.5f, true);
    const Want wants[] = {
        {nn::SGD(0.1f), {false, false, false}},
        {nn::SGD(0.1f, 0.9f), {true, false, false}},
        {nn::Adagrad(), {true, false, false}},
        {nn::RMSprop(), {true, false, false}},
        {centered_mom, {true, true, true}},
        {nn::Adam(), {true, true, false}},
        {nn::Adam(1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, true), {true, true, true}},
        {nn::AdamW(), {true, true, false}},
    };
    for (const Want& w : wants) {
        SCOPED_TRACE(nn::optimizer_name(w.c.kind));
        nn::Arena arena;
        ASSERT_TRUE(arena.reserve(1 << 16).ok());
        TwoParams tp(1);
        nn::Optimizer opt;
        ASSERT_TRUE(opt.init(w.c, tp.ps, 2, arena).ok());
        for (int i = 0; i < 2; ++i)
            for (int s = 0; s < 3; ++s) {
                float* buf = opt.state[i * nn::Optimizer::kStateSlots + s];
                EXPECT_EQ(buf != nullptr, w.slot[s]) << "param " << i << " slot " << s;
                if (buf) {
                    for (size_t j = 0; j < tp.ps[i].size; ++j) ASSERT_EQ(buf[j], 0.0f);
                }
            }
    }
    // Adagrad's sum starts at initial_accumulator_value.
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(1 << 16).ok());
    TwoParams tp(1);
    nn::Optimizer opt;
    ASSERT_TRUE(opt.init(nn::Adagrad(0.01f, 0.0f, 0.0f, 0.25f), tp.ps, 2, arena).ok());
    for (int j = 0; j < kN1; ++j) EXPECT_EQ(opt.state[1 * nn::Optimizer::kStateSlots][j], 0.25f);
}

TEST(OptimInit, MeasuringDryRunCountsExactlyWhatInitCarves) {
    TwoParams tp(3);
    nn::OptimConfig c = nn::Adam(0.1f, 0.9f, 0.999f, 1e-8f, 0.0f, true);
    nn::Arena measure;
    measure.begin_measure();
    nn::Optimizer dry;
    ASSERT_TRUE(dry.init(c, tp.ps, 2, measure).ok());
    EXPECT_GT(measure.used, 0u);
    EXPECT_EQ(dry.params, nullptr);
    dry.step();  // a dry-run optimizer does nothing
    dry.zero_grad();

    nn::Arena exact;
    ASSERT_TRUE(exact.reserve(measure.used).ok());
    nn::Optimizer opt;
    nn::Status st = opt.init(c, tp.ps, 2, exact);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(exact.used, measure.used);
}

TEST(OptimInit, TooSmallArenaFailsAndLeavesOptimizerAsItWas) {
    TwoParams tp(40);
    nn::Arena big;
    ASSERT_TRUE(big.reserve(1 << 16).ok());
    nn::Optimizer opt;
    ASSERT_TRUE(opt.init(nn::SGD(0.1f, 0.9f), tp.ps, 2, big).ok());
    tp.set_grads(0);
    opt.step();
    const nn::Param* params = opt.params;
    float** state = opt.state;

    nn::Arena small;
    ASSERT_TRUE(small.reserve(512).ok());
    nn::Status st = opt.init(nn::Adam(1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, true), tp.ps, 2, small);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(std::strstr(st.message(), "requested"), nullptr) << st.message();
    EXPECT_NE(std::strstr(st.message(), "available"), nullptr) << st.message();
    EXPECT_NE(std::strstr(st.message(), "missing"), nullptr) << st.message();
    EXPECT_NE(std::strstr(st.message(), "optimizer"), nullptr) << st.message();
    EXPECT_EQ(small.used, 0u);  // back to where it was
    EXPECT_EQ(opt.cfg.kind, nn::OptKind::SGD);
    EXPECT_EQ(opt.params, params);
    EXPECT_EQ(opt.state, state);
    EXPECT_EQ(opt.n_params, 2);
    EXPECT_EQ(opt.steps, 1);
    // and still works
    opt.step();
    EXPECT_EQ(opt.steps, 2);
}

}  // namespace

// Threads: a step split into (ith, nth) ranges on vector boundaries updates
// every element as one thread does, bit for bit, for every optimizer.
TEST(OptimThreads, StepOnSeveralThreadsMatchesOneThread) {
    const size_t sizes[] = {70001, 33, 40000};  // odd sizes: ranges end mid-vector
    const nn::OptimConfig configs[] = {
        nn::SGD(0.05f, 0.9f, true, 1e-4f),
        nn::Adagrad(0.05f, 0.01f, 1e-4f),
        nn::RMSprop(0.01f, 0.99f, 1e-8f, 1e-4f, 0.9f, true),
        nn::Adam(1e-3f, 0.9f, 0.999f, 1e-8f, 1e-4f, true),
        nn::AdamW(1e-3f),
    };
    for (const nn::OptimConfig& cfg : configs) {
        std::vector<float> result[3];
        for (int threads : {1, 2, 3}) {
            nn::set_num_threads(threads);
            std::vector<std::vector<float>> value(3), grad(3);
            nn::Param ps[3];
            nn::Rng rng(5);
            for (int i = 0; i < 3; ++i) {
                value[i].resize(sizes[i]);
                grad[i].resize(sizes[i]);
                for (float& v : value[i]) v = rng.uniform(-1.f, 1.f);
                ps[i].value = value[i].data();
                ps[i].grad = grad[i].data();
                ps[i].size = sizes[i];
            }
            nn::Arena arena;
            ASSERT_TRUE(arena.reserve(8u << 20).ok());
            nn::Optimizer opt;
            ASSERT_TRUE(opt.init(cfg, ps, 3, arena).ok());
            for (int step = 0; step < 3; ++step) {
                for (int i = 0; i < 3; ++i)
                    for (float& g : grad[i]) g = rng.uniform(-1.f, 1.f);
                opt.step();
            }
            for (int i = 0; i < 3; ++i) result[threads - 1].insert(result[threads - 1].end(), value[i].begin(), value[i].end());
        }
        nn::set_num_threads(1);
        for (int t = 1; t < 3; ++t)
            EXPECT_EQ(0, std::memcmp(result[0].data(), result[t].data(), result[0].size() * sizeof(float)))
                << nn::optimizer_name(cfg.kind) << " on " << t + 1 << " threads";
    }
}
