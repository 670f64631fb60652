// Checkpoints: fit writes the model, the optimizer's state and every
// random-number state; resuming gives bit-identical training to a run that
// was never interrupted.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <unistd.h>
#include <vector>

#include "blobs.hpp"
#include "nn.hpp"

namespace {

std::string temp_path(const char* tag) {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir && *dir ? dir : "/tmp") + "/nn_ckpt_" + tag + "_" + std::to_string((long)getpid()) +
           ".safetensors";
}

// Dense + Dropout (a random-number state) + BatchNorm1d (running statistics).
void build_mlp(nn::Model& m, uint64_t seed, const nn::OptimConfig& opt) {
    m.set_input(nn::make_shape({6}));
    m.add(nn::Dense(16, nn::Act::ReLU));
    m.add(nn::Dropout(0.25f));
    m.add(nn::BatchNorm1d());
    m.add(nn::Dense(3));
    nn::CompileOptions co;
    co.max_batch = 16;
    co.seed = seed;
    co.optimizer = opt;
    ASSERT_TRUE(m.compile(co).ok());
}

nn::FitOptions fit_options(int epochs) {
    nn::FitOptions fo;
    fo.epochs = epochs;
    fo.batch_size = 16;
    fo.seed = 7;
    fo.verbose = 0;
    fo.validation_split = 0.2f;
    return fo;
}

std::vector<float> all_params(nn::Model& m) {
    std::vector<float> v;
    for (nn::Layer& L : m.layers)
        for (int k = 0; k < L.n_params; ++k) v.insert(v.end(), L.params[k].data, L.params[k].data + L.params[k].numel());
    return v;
}

void expect_resume_bit_identical(const nn::OptimConfig& opt) {
    const nn::Dataset d = make_blobs(200, 6, 3, 1.0f, 3);
    nn::Model whole;
    build_mlp(whole, 1, opt);
    ASSERT_TRUE(whole.fit(d, fit_options(5)).ok());

    const std::string path = temp_path("resume");
    nn::Model first;
    build_mlp(first, 1, opt);
    nn::FitOptions fo = fit_options(2);
    fo.checkpoint_path = path.c_str();
    ASSERT_TRUE(first.fit(d, fo).ok());

    nn::Model resumed;  // other initial weights: everything must come from the file
    build_mlp(resumed, 99, opt);
    nn::FitOptions fr = fit_options(5);
    fr.resume_from = path.c_str();
    const nn::Status st = resumed.fit(d, fr);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(resumed.history.epochs.size(), 3u);  // epochs 3, 4, 5
    const std::vector<float> a = all_params(whole), b = all_params(resumed);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
    EXPECT_EQ(whole.optimizer.steps, resumed.optimizer.steps);
    // And the interrupted run itself differs from the whole one (the test can fail).
    const std::vector<float> c = all_params(first);
    EXPECT_NE(std::memcmp(a.data(), c.data(), a.size() * sizeof(float)), 0);
    std::remove(path.c_str());
}

TEST(Checkpoint, ResumeIsBitIdenticalAdam) { expect_resume_bit_identical(nn::Adam(1e-2f)); }
TEST(Checkpoint, ResumeIsBitIdenticalSgdMomentumNesterov) { expect_resume_bit_identical(nn::SGD(0.05f, 0.9f, true)); }
TEST(Checkpoint, ResumeIsBitIdenticalRmspropCentered) {
    expect_resume_bit_identical(nn::RMSprop(1e-2f, 0.99f, 1e-8f, 0.0f, 0.5f, true));
}

TEST(Checkpoint, EveryNEpochsWritesTheLatest) {
    const nn::Dataset d = make_blobs(100, 6, 3, 1.0f, 4);
    const std::string path = temp_path("every");
    nn::Model m;
    build_mlp(m, 1, nn::Adam(1e-2f));
    nn::FitOptions fo = fit_options(4);
    fo.checkpoint_path = path.c_str();
    fo.checkpoint_every = 3;  // after epoch 3, and after the last
    ASSERT_TRUE(m.fit(d, fo).ok());
    nn::SafeTensors f;
    ASSERT_TRUE(nn::safetensors_load(path.c_str(), &f).ok());
    ASSERT_NE(f.meta("nn.fit.epochs_done"), nullptr);
    EXPECT_STREQ(f.meta("nn.fit.epochs_done"), "4");
    EXPECT_NE(f.find("optimizer.0.weight.state0"), nullptr);  // Adam's first moment
    EXPECT_NE(f.find("fit.order"), nullptr);
    // Resuming a finished run has nothing to do: an error, not a silent no-op.
    nn::Model again;
    build_mlp(again, 1, nn::Adam(1e-2f));
    nn::FitOptions fr = fit_options(4);
    fr.resume_from = path.c_str();
    const nn::Status st = again.fit(d, fr);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(std::strstr(st.message(), "nothing to do"), nullptr) << st.message();
    std::remove(path.c_str());
}

TEST(Checkpoint, SaveLoadRestoresOptimizerAndWeights) {
    const nn::Dataset d = make_blobs(100, 6, 3, 1.0f, 5);
    const std::string path = temp_path("saveload");
    nn::Model m;
    build_mlp(m, 1, nn::Adam(1e-2f));
    ASSERT_TRUE(m.fit(d, fit_options(2)).ok());
    ASSERT_TRUE(nn::save_checkpoint(m, path.c_str()).ok());
    nn::Model r;
    build_mlp(r, 5, nn::Adam(1e-2f));
    const nn::Status st = nn::load_checkpoint(r, path.c_str());
    ASSERT_TRUE(st.ok()) << st.message();
    const std::vector<float> a = all_params(m), b = all_params(r);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
    EXPECT_EQ(r.optimizer.steps, m.optimizer.steps);
    EXPECT_EQ(r.optimizer.epoch, m.optimizer.epoch);
    for (int i = 0; i < m.optimizer.n_params; ++i) {
        EXPECT_EQ(r.optimizer.param_steps[i], m.optimizer.param_steps[i]);
        for (int s = 0; s < nn::Optimizer::kStateSlots; ++s) {
            const float* x = m.optimizer.state[i * nn::Optimizer::kStateSlots + s];
            const float* y = r.optimizer.state[i * nn::Optimizer::kStateSlots + s];
            ASSERT_EQ(x == nullptr, y == nullptr);
            if (x) {
                EXPECT_EQ(std::memcmp(x, y, m.optimizer.params[i].size * sizeof(float)), 0);
            }
        }
    }
    // A plain save_checkpoint has no shuffling state: fit refuses to resume from it.
    nn::Model f2;
    build_mlp(f2, 5, nn::Adam(1e-2f));
    nn::FitOptions fr = fit_options(4);
    fr.resume_from = path.c_str();
    const nn::Status st2 = f2.fit(d, fr);
    EXPECT_FALSE(st2.ok());
    EXPECT_NE(std::strstr(st2.message(), "shuffling"), nullptr) << st2.message();
    std::remove(path.c_str());
}

TEST(Checkpoint, WrongOptimizerIsAnErrorAndChangesNothing) {
    const nn::Dataset d = make_blobs(100, 6, 3, 1.0f, 6);
    const std::string path = temp_path("wrongopt");
    nn::Model m;
    build_mlp(m, 1, nn::Adam(1e-2f));
    ASSERT_TRUE(m.fit(d, fit_options(1)).ok());
    ASSERT_TRUE(nn::save_checkpoint(m, path.c_str()).ok());
    nn::Model r;
    build_mlp(r, 5, nn::SGD(0.1f));
    const std::vector<float> before = all_params(r);
    const nn::Status st = nn::load_checkpoint(r, path.c_str());
    EXPECT_FALSE(st.ok());
    EXPECT_NE(std::strstr(st.message(), "Adam"), nullptr) << st.message();
    const std::vector<float> after = all_params(r);
    EXPECT_EQ(std::memcmp(before.data(), after.data(), before.size() * sizeof(float)), 0);
    EXPECT_EQ(r.optimizer.steps, 0);
    std::remove(path.c_str());
}

TEST(Checkpoint, FailingWriteKeepsThePreviousCheckpoint) {
    const nn::Dataset d = make_blobs(100, 6, 3, 1.0f, 7);
    const std::string path = temp_path("fault");
    nn::Model m;
    build_mlp(m, 1, nn::Adam(1e-2f));
    nn::FitOptions fo = fit_options(1);
    fo.checkpoint_path = path.c_str();
    ASSERT_TRUE(m.fit(d, fo).ok());
    nn::SafeTensors before;
    ASSERT_TRUE(nn::safetensors_load(path.c_str(), &before).ok());

    nn::set_write_fault_after(100);  // the disk fills up 100 bytes into the next write
    nn::FitOptions f2 = fit_options(2);
    f2.checkpoint_path = path.c_str();
    const nn::Status st = m.fit(d, f2);
    nn::set_write_fault_after(-1);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(std::strstr(st.message(), path.c_str()), nullptr) << st.message();
    nn::SafeTensors after;
    ASSERT_TRUE(nn::safetensors_load(path.c_str(), &after).ok());
    EXPECT_EQ(before.bytes, after.bytes);
    EXPECT_NE(access((path + ".tmp").c_str(), F_OK), 0);  // no temporary file left behind
    std::remove(path.c_str());
}

}  // namespace
