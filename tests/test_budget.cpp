// Arena budgets (issue 8): the bytes Model::measure reports for the reference
// models must stay within 3 % of the figures recorded below, in either
// direction.
//
// Growth is what the test is for: a model that suddenly needs more memory no
// longer fits the static buffer a board program gave it. Shrinking fails
// too, so that the table (and BENCHMARKS.md, which quotes it) stays true:
// when you make the arena smaller, record the new figure.
//
// The bytes depend on the target: the pointer size, and through the GEMM
// packing scratch on the vector width, the register tile and the cache sizes
// the blocking assumes (kernels/gemm.hpp, kernels/simd.hpp). So each model
// has one figure per configuration the suite runs in, keyed by the CPU
// family (from the compiler's macros) and nn::simd_arch(). A configuration
// with no figure still checks the lower bound every target must respect
// (parameters, gradients, Adam's two moments, the input batch and the layer
// outputs), then skips with the measured number, ready to be recorded.
//
// To record or update a figure: run the suite in that configuration (the
// command is beside each row) and copy the number from the failure or skip
// message into the table here and into BENCHMARKS.md, "Size and build budgets
// (issue 8)".
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>

#include "nn.hpp"

namespace {

#if defined(__x86_64__)
constexpr const char* kCpu = "x86-64";
#elif defined(__i386__)
constexpr const char* kCpu = "x86-32";
#elif defined(__aarch64__)
constexpr const char* kCpu = "aarch64";
#elif defined(__arm__)
constexpr const char* kCpu = "arm32";
#else
constexpr const char* kCpu = "other";
#endif

constexpr double kTolerance = 0.03;  // 3 %, both ways

// One recorded figure: Model::measure bytes on (cpu, simd_arch()).
struct Figure {
    const char* cpu;
    const char* simd;
    size_t bytes;
};

// One model of the budget: how to build it, how it is compiled, its figures.
struct BudgetModel {
    const char* name;
    void (*build)(nn::Model& m);
    nn::OptimConfig (*optimizer)();
    int max_batch;
    const Figure* figures;
    int n_figures;
};

// --- MLP: Flatten, Dense 784->128 ReLU, 128->128 ReLU, 128->10; CrossEntropy,
//     Adam, max_batch 64, one thread (the demo's model, examples/mlp_fashion.cpp)
void build_mlp(nn::Model& m) {
    m.set_input(nn::make_shape({1, 28, 28}));
    m.add(nn::Flatten());
    m.add(nn::Dense(128, nn::Act::ReLU));
    m.add(nn::Dense(128, nn::Act::ReLU));
    m.add(nn::Dense(10));
}
nn::OptimConfig adam() { return nn::Adam(1e-3f); }

const Figure kMlpFigures[] = {
    {"x86-64", "avx512bw", 2738472},    // make test (-march=native, AVX-512 machine)
    {"x86-64", "fma3+avx2", 2600296},   // make test ARCH=-march=haswell
    {"x86-64", "sse2", 2600296},        // make test ARCH=
    {"x86-64", "scalar", 2597160},      // make test SIMD=0
    {"aarch64", "arm64+neon", 2597160}, // make test-arm64
    {"arm32", "arm32+neon", 2600104},   // make test-armhf
    {"arm32", "scalar", 2596968},       // make test-armv6
};

// --- LeNet: Conv2D 1->6 5x5 pad 2, ReLU, MaxPool2D 2, Conv2D 6->16 5x5, ReLU,
//     MaxPool2D 2, Flatten, Dense 120 ReLU, 84 ReLU, 10; CrossEntropy, Adam,
//     max_batch 64, one thread (examples/lenet_fashion.cpp)
void build_lenet(nn::Model& m) {
    m.set_input(nn::make_shape({1, 28, 28}));
    m.add(nn::Conv2D(1, 6, 5, 1, 2));
    m.add(nn::ReLU());
    m.add(nn::MaxPool2D(2));
    m.add(nn::Conv2D(6, 16, 5));
    m.add(nn::ReLU());
    m.add(nn::MaxPool2D(2));
    m.add(nn::Flatten());
    m.add(nn::Dense(120, nn::Act::ReLU));
    m.add(nn::Dense(84, nn::Act::ReLU));
    m.add(nn::Dense(10));
}

const Figure kLenetFigures[] = {
    {"x86-64", "avx512bw", 6520936},    // as for the MLP
    {"x86-64", "fma3+avx2", 6599848},
    {"x86-64", "sse2", 6587048},
    {"x86-64", "scalar", 6583848},
    {"aarch64", "arm64+neon", 6583848},
    {"arm32", "arm32+neon", 6586664},
    {"arm32", "scalar", 6583464},
};

template <size_t N>
constexpr int count(const Figure (&)[N]) { return (int)N; }

const BudgetModel kModels[] = {
    {"mlp", build_mlp, adam, 64, kMlpFigures, count(kMlpFigures)},
    {"lenet", build_lenet, adam, 64, kLenetFigures, count(kLenetFigures)},
};

class ArenaBudget : public ::testing::TestWithParam<BudgetModel> {};

TEST_P(ArenaBudget, StaysWithinThreePercentOfTheRecordedFigure) {
    const BudgetModel& b = GetParam();
    const int saved_threads = nn::num_threads();
    nn::set_num_threads(1);  // per-thread GEMM scratch: the figures are for one
    nn::Model m;
    b.build(m);
    nn::CompileOptions co;
    co.loss = nn::CrossEntropy();
    co.optimizer = b.optimizer();
    co.max_batch = b.max_batch;
    size_t bytes = 0;
    nn::Status st = m.measure(co, &bytes);
    nn::set_num_threads(saved_threads);
    ASSERT_TRUE(st.ok()) << st.message();

    // Every target: parameters, gradients and Adam's two moments (4 floats
    // per parameter), the input batch and each non-Flatten layer's output.
    size_t floor = 4 * m.param_count(false) * sizeof(float);
    size_t rows = m.input.numel();
    for (const nn::Layer& L : m.layers)
        if (L.kind != nn::LayerKind::Flatten) rows += L.out_shape.numel();
    floor += rows * (size_t)b.max_batch * sizeof(float);
    EXPECT_GE(bytes, floor) << b.name << ": Model::measure reports fewer bytes than the "
                            << "parameters, gradients, moments and activations need";

    const Figure* f = nullptr;
    for (int i = 0; i < b.n_figures; ++i)
        if (std::strcmp(b.figures[i].cpu, kCpu) == 0 && std::strcmp(b.figures[i].simd, nn::simd_arch()) == 0)
            f = &b.figures[i];
    if (!f) {
        GTEST_SKIP() << b.name << ": no recorded arena figure for {\"" << kCpu << "\", \""
                     << nn::simd_arch() << "\"}; Model::measure gives " << bytes
                     << " bytes: add that row to the table in tests/test_budget.cpp";
    }
    const double ratio = (double)bytes / (double)f->bytes;
    char pct[32];
    std::snprintf(pct, sizeof pct, "%+.1f %%", (ratio - 1) * 100);
    EXPECT_LE(ratio, 1.0 + kTolerance)
        << b.name << " on " << kCpu << " " << f->simd << ": the arena grew from " << f->bytes << " to "
        << bytes << " bytes (" << pct << ", budget +3 %). If that is intended, "
        << "update the figure in tests/test_budget.cpp and BENCHMARKS.md (\"Size and build budgets "
        << "(issue 8)\").";
    EXPECT_GE(ratio, 1.0 - kTolerance)
        << b.name << " on " << kCpu << " " << f->simd << ": the arena shrank from " << f->bytes
        << " to " << bytes << " bytes (" << pct << "). Good news: record the new "
        << "figure in tests/test_budget.cpp and BENCHMARKS.md (\"Size and build budgets (issue 8)\") "
        << "so the table stays true.";
}

INSTANTIATE_TEST_SUITE_P(Models, ArenaBudget, ::testing::ValuesIn(kModels),
                         [](const ::testing::TestParamInfo<BudgetModel>& i) { return std::string(i.param.name); });

}  // namespace
