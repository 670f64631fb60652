// tests/test_init.cpp — Layer::init, the initial weights of Dense and Conv2D:
// each scheme's range, variance and bias with the fans torch.nn.init counts,
// names both ways, and the errors for layers it does not apply to.
//
// The draws are seeded, so each check passes or fails the same way every
// run. The variance tolerance is 3 %: the relative standard error of a sample
// variance is sqrt(0.8 / n) for a uniform and sqrt(2 / n) for a normal, 0.28 %
// and 0.45 % for Dense's 100,352 weights, 0.54 % and 0.85 % for the Conv2D's
// 27,648. The schemes the test tells apart differ by far more: Glorot and He
// by 16 % at 784 -> 128, a fan_out counted per group by 60 %.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "nn.hpp"
#include "tests/layer_check.hpp"

namespace {

using layer_check::Built;

struct Moments {
    double mean = 0, var = 0;
    float lo = 0, hi = 0;
    double within_one_sd = 0;  // fraction of draws with |w - mean| <= sd
};

Moments moments(const nn::Tensor& t) {
    Moments m;
    const size_t n = t.numel();
    m.lo = m.hi = t[0];
    for (size_t i = 0; i < n; ++i) {
        m.mean += t[i];
        m.lo = std::min(m.lo, t[i]);
        m.hi = std::max(m.hi, t[i]);
    }
    m.mean /= (double)n;
    for (size_t i = 0; i < n; ++i) m.var += (t[i] - m.mean) * (t[i] - m.mean);
    m.var /= (double)(n - 1);
    const double sd = std::sqrt(m.var);
    size_t inside = 0;
    for (size_t i = 0; i < n; ++i) inside += std::fabs(t[i] - m.mean) <= sd;
    m.within_one_sd = (double)inside / (double)n;
    return m;
}

struct Scheme {
    nn::Init init;
    bool uniform;
    double scale;  // the uniform's bound or the normal's standard deviation
};

// The weights follow `s`: bounded (and filling the bound) for a uniform,
// two-sided tails and 68.3 % within one standard deviation for a normal.
void expect_distribution(const nn::Tensor& w, const Scheme& s, const char* what) {
    SCOPED_TRACE(std::string(what) + " " + nn::init_name(s.init));
    const Moments m = moments(w);
    const double var = s.uniform ? s.scale * s.scale / 3.0 : s.scale * s.scale;
    EXPECT_NEAR(m.var / var, 1.0, 0.03) << "variance " << m.var << ", expected " << var;
    EXPECT_NEAR(m.mean, 0.0, 5.0 * std::sqrt(var / (double)w.numel()));
    if (s.uniform) {
        EXPECT_GE(m.lo, -s.scale);
        EXPECT_LE(m.hi, s.scale);
        EXPECT_LT(m.lo, -0.99 * s.scale);
        EXPECT_GT(m.hi, 0.99 * s.scale);
    } else {
        EXPECT_LT(m.lo, -3.0 * s.scale);
        EXPECT_GT(m.hi, 3.0 * s.scale);
        EXPECT_NEAR(m.within_one_sd, 0.6827, 0.01);
    }
}

// PyTorch's bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); Keras's schemes: 0.
void expect_bias(const nn::Tensor& b, nn::Init init, double fan_in) {
    SCOPED_TRACE(nn::init_name(init));
    const float bound = 1.0f / std::sqrt((float)fan_in);
    int nonzero = 0;
    for (size_t j = 0; j < b.numel(); ++j) {
        if (init == nn::Init::Torch) {
            EXPECT_LE(std::fabs(b[j]), bound);
        } else {
            EXPECT_EQ(b[j], 0.0f) << "bias " << j;
        }
        nonzero += b[j] != 0.0f;
    }
    if (init == nn::Init::Torch) {
        EXPECT_GT(nonzero, (int)b.numel() / 2);
    }
}

// Every scheme, with the bound or deviation nn.hpp gives for these fans.
std::vector<Scheme> schemes_for(double fan_in, double fan_out) {
    return {
        {nn::Init::Torch, true, 1.0 / std::sqrt(fan_in)},
        {nn::Init::GlorotUniform, true, std::sqrt(6.0 / (fan_in + fan_out))},
        {nn::Init::GlorotNormal, false, std::sqrt(2.0 / (fan_in + fan_out))},
        {nn::Init::HeUniform, true, std::sqrt(6.0 / fan_in)},
        {nn::Init::HeNormal, false, std::sqrt(2.0 / fan_in)},
    };
}

TEST(Init, DenseDrawsEachSchemeWithItsFans) {
    const double fan_in = 784;
    for (const Scheme& s : schemes_for(fan_in, 128)) {
        Built b(nn::Dense(784, 128).set_init(s.init), nn::make_shape({784}), 1, 7);
        ASSERT_TRUE(b.L.built);
        expect_distribution(b.L.weight(), s, "Dense 784->128");
        expect_bias(b.L.bias(), s.init, fan_in);
    }
}

TEST(Init, Conv2DCountsFansAsTorch) {
    // weight [96, 64 / 2, 3, 3]: fan_in = 32 * 9 = 288 (one group),
    // fan_out = 96 * 9 = 864 (all output channels, as torch.nn.init).
    const double fan_in = 288;
    for (const Scheme& s : schemes_for(fan_in, 864)) {
        Built b(nn::Conv2D(64, 96, 3, 1, 1, 1, 2).set_init(s.init), nn::make_shape({64, 4, 4}), 1, 11);
        ASSERT_TRUE(b.L.built);
        ASSERT_EQ(b.L.weight().numel(), (size_t)96 * 32 * 9);
        expect_distribution(b.L.weight(), s, "Conv2D 64->96 3x3 groups 2");
        expect_bias(b.L.bias(), s.init, fan_in);
    }
}

TEST(Init, SameSeedSameWeightsAndTheDefaultIsTorch) {
    EXPECT_EQ(nn::Dense(10, 4).init, nn::Init::Torch);
    EXPECT_EQ(nn::Conv2D(1, 4, 3).init, nn::Init::Torch);
    Built a(nn::Dense(30, 20).set_init(nn::Init::HeNormal), nn::make_shape({30}), 1, 5);
    Built b(nn::Dense(30, 20).set_init(nn::Init::HeNormal), nn::make_shape({30}), 1, 5);
    Built c(nn::Dense(30, 20).set_init(nn::Init::HeNormal), nn::make_shape({30}), 1, 6);
    int same = 0, differ = 0;
    for (size_t i = 0; i < a.L.weight().numel(); ++i) {
        same += a.L.weight()[i] == b.L.weight()[i];
        differ += a.L.weight()[i] != c.L.weight()[i];
    }
    EXPECT_EQ(same, 600);
    EXPECT_GT(differ, 590);
}

TEST(Init, NamesBothWays) {
    const nn::Init all[] = {nn::Init::Torch, nn::Init::GlorotUniform, nn::Init::GlorotNormal, nn::Init::HeUniform,
                            nn::Init::HeNormal};
    for (nn::Init i : all) {
        nn::Init back = nn::Init::Torch;
        ASSERT_TRUE(nn::init_from_name(nn::init_name(i), &back).ok()) << nn::init_name(i);
        EXPECT_EQ(back, i);
    }
    EXPECT_STREQ(nn::init_name(nn::Init::GlorotUniform), "glorot_uniform");
    nn::Init out = nn::Init::HeNormal;
    nn::Status st = nn::init_from_name("xavier", &out);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(std::string(st.message()).find("unknown initializer \"xavier\""), std::string::npos) << st.message();
    EXPECT_NE(std::string(st.message()).find("he_normal"), std::string::npos) << st.message();
    EXPECT_EQ(out, nn::Init::HeNormal) << "a failed lookup leaves the output alone";
    EXPECT_FALSE(nn::init_from_name(nullptr, &out).ok());
}

TEST(Init, ModelCompilesWithItAndRejectsItWhereItDoesNotApply) {
    nn::Model model;
    model.set_input(nn::make_shape({1, 8, 8}));
    model.add(nn::Conv2D(1, 4, 3).set_init(nn::Init::HeUniform));
    model.add(nn::Flatten());
    model.add(nn::Dense(3).set_init(nn::Init::GlorotNormal));
    nn::CompileOptions co;
    co.max_batch = 2;
    nn::Status st = model.compile(co);
    ASSERT_TRUE(st.ok()) << st.message();
    for (size_t j = 0; j < 3; ++j) EXPECT_EQ(model.layer(2).bias()[j], 0.0f);

    nn::Model bad;
    bad.set_input(nn::make_shape({5, 3}));
    bad.add(nn::LSTM(0, 4).set_init(nn::Init::HeUniform));
    st = bad.compile(co);
    ASSERT_FALSE(st.ok());
    const std::string msg = st.message();
    EXPECT_NE(msg.find("\"lstm\" (LSTM): initializer he_uniform applies to Dense and Conv2D only"), std::string::npos)
        << msg;

    nn::Layer odd = nn::Dense(4, 2);
    odd.init = static_cast<nn::Init>(9);
    nn::Arena arena;
    ASSERT_TRUE(arena.reserve(1 << 16).ok());
    st = nn::build(odd, nn::make_shape({4}), 1, arena);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(std::string(st.message()).find("unknown initializer 9"), std::string::npos) << st.message();
    EXPECT_FALSE(odd.built) << "a failed build leaves the layer as it was";
}

}  // namespace

namespace {

// compile seeds each layer from the model's seed through a mixing function:
// the first layer's weights are not the first draws of Rng(seed), which is
// what fit's shuffle and data splits draw from (they were, with seed + i).
TEST(Init, LayerStreamsAreNotTheModelSeedsOwn) {
    const uint64_t seed = 7;
    nn::Model m;
    m.set_input(nn::make_shape({16}));
    m.add(nn::Dense(16, nn::Act::ReLU));
    m.add(nn::Dense(16));
    nn::CompileOptions co;
    co.max_batch = 1;
    co.seed = seed;
    nn::Status st = m.compile(co);
    ASSERT_TRUE(st.ok()) << st.message();
    const float bound = 1.0f / std::sqrt(16.0f);
    nn::Rng shuffle_stream(seed);
    int same_as_stream = 0, same_as_other_layer = 0;
    for (size_t i = 0; i < 256; ++i) {
        same_as_stream += m.layer(0).weight()[i] == shuffle_stream.uniform(-bound, bound);
        same_as_other_layer += m.layer(0).weight()[i] == m.layer(1).weight()[i];
    }
    EXPECT_EQ(same_as_stream, 0);
    EXPECT_EQ(same_as_other_layer, 0);
    // The same seed gives the same model.
    nn::Model again;
    again.set_input(nn::make_shape({16}));
    again.add(nn::Dense(16, nn::Act::ReLU));
    again.add(nn::Dense(16));
    ASSERT_TRUE(again.compile(co).ok());
    for (size_t i = 0; i < 256; ++i) ASSERT_EQ(again.layer(1).weight()[i], m.layer(1).weight()[i]) << i;
}

}  // namespace
