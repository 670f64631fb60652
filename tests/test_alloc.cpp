// No heap churn: after setup, training steps, predictions and evaluation make
// zero heap allocations. This is the one test file that includes the counter:
// it replaces operator new (and, outside AddressSanitizer, malloc) for the
// whole test binary.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

// GCC (>= 11, seen at -O1 with sanitizers) inlines the counter's operator
// delete, which calls free(), into code that got its memory from operator new
// (gtest's `new TestClass`) and warns of a mismatch. The pair is consistent:
// the counter's operator new calls malloc.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
#include "../examples/alloc_counter.hpp"
#include "blobs.hpp"
#include "nn.hpp"

namespace {

// Counts allocations from the end of the first training step to the end of
// the last: every step after the first.
struct StepCounter {
    long long at_first = -1, at_last = -1;
    int steps = 0;  // all steps seen, the first included
    static void cb(void* self, int, int64_t, float) {
        StepCounter* c = static_cast<StepCounter*>(self);
        const long long now = heap_allocs();
        if (c->at_first < 0) c->at_first = now;
        c->at_last = now;
        ++c->steps;
    }
    long long allocs() const { return at_last - at_first; }
};

// Fashion-MNIST-shaped synthetic images: uint8 (1, 28, 28), 10 classes, the
// class drawn as a bright band so there is something to learn.
nn::Dataset fake_fashion(int n, uint64_t seed) {
    nn::Dataset d;
    nn::Rng rng(seed);
    d.n = (size_t)n;
    d.sample = nn::make_shape({1, 28, 28});
    d.num_classes = 10;
    d.scale = 1.0f / 255.0f;
    d.u8.resize((size_t)n * 784);
    d.labels.resize((size_t)n);
    for (int i = 0; i < n; ++i) {
        const int c = (int)rng.below(10);
        d.labels[(size_t)i] = c;
        uint8_t* img = d.u8.data() + (size_t)i * 784;
        for (int p = 0; p < 784; ++p) {
            const int row = p / 28;
            const bool band = row >= 2 * c + 4 && row < 2 * c + 7;
            img[p] = (uint8_t)(band ? 150 + rng.below(100) : rng.below(60));
        }
    }
    return d;
}

// Flatten, Dense 128 ReLU, Dense 128 ReLU, Dense 10; CrossEntropy, Adam, max_batch 64.
void compile_fashion_mlp(nn::Model& m) {
    m.set_input(nn::make_shape({1, 28, 28}));
    ASSERT_TRUE(m.add(nn::Flatten()).ok());
    ASSERT_TRUE(m.add(nn::Dense(128, nn::Act::ReLU)).ok());
    ASSERT_TRUE(m.add(nn::Dense(128, nn::Act::ReLU)).ok());
    ASSERT_TRUE(m.add(nn::Dense(10)).ok());
    nn::CompileOptions co;
    co.loss = nn::CrossEntropy();
    co.optimizer = nn::Adam(1e-3f);
    co.max_batch = 64;
    nn::Status st = m.compile(co);
    ASSERT_TRUE(st.ok()) << st.message();
}


TEST(AllocCounter, CountsSoZeroIsMeaningful) {
    static int* volatile sink_new = nullptr;
    long long before = heap_allocs();
    sink_new = new int(42);
    long long after = heap_allocs();
    delete sink_new;
    EXPECT_GE(after - before, 1) << "operator new was not counted";
    std::vector<float>* v = new std::vector<float>(1000);
    EXPECT_GE(heap_allocs() - after, 2) << "new + vector storage not counted";
    delete v;
#if NN_COUNT_MALLOC
    static void* volatile sink_malloc = nullptr;
    void* (*volatile do_malloc)(size_t) = &std::malloc;
    before = heap_allocs();
    sink_malloc = do_malloc(100);
    after = heap_allocs();
    std::free(sink_malloc);
    EXPECT_EQ(after - before, 1) << "malloc was not counted";
#endif
}

TEST(AllocFree, FashionMlpTrainStepLoop) {
    nn::Model m;
    compile_fashion_mlp(m);
    if (HasFatalFailure()) return;
    const int B = 64, steps = 100;
    nn::Dataset d = fake_fashion(B * 8, 1);
    std::vector<uint32_t> idx(d.n);
    for (size_t i = 0; i < d.n; ++i) idx[i] = (uint32_t)i;
    nn::Target t;
    t.labels = m.y_labels;
    float loss = 0, first_loss = 0;
    // The first step may warm things up; count the next 100.
    nn::gather(d, idx.data(), B, m.x_buf.data, m.y_labels, nullptr);
    ASSERT_TRUE(m.train_step(B, t, &first_loss).ok());
    bool all_ok = true;
    const long long before = heap_allocs();
    for (int s = 0; s < steps; ++s) {
        const size_t at = (size_t)(s % 8) * B;
        nn::gather(d, idx.data() + at, B, m.x_buf.data, m.y_labels, nullptr);
        all_ok = m.train_step(B, t, &loss).ok() && all_ok;
    }
    const long long allocs = heap_allocs() - before;
    EXPECT_TRUE(all_ok);
    EXPECT_EQ(allocs, 0) << allocs << " heap allocations in " << steps << " train_step calls";
    EXPECT_EQ(m.step_count, steps + 1);
    EXPECT_LT(loss, first_loss) << "the steps did train";
}

TEST(AllocFree, FashionMlpFitSteps) {
    nn::Model m;
    compile_fashion_mlp(m);
    if (HasFatalFailure()) return;
    nn::Dataset d = fake_fashion(64 * 101, 2);  // 101 steps in one epoch
    StepCounter c;
    nn::FitOptions fo;
    fo.epochs = 1;
    fo.batch_size = 64;
    fo.verbose = 0;
    fo.on_batch_end = &StepCounter::cb;
    fo.user = &c;
    nn::Status st = m.fit(d, fo);
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_EQ(c.steps, 101);
    EXPECT_EQ(c.allocs(), 0) << c.allocs() << " heap allocations in the " << c.steps - 1
                             << " fit steps after the first";
}

TEST(AllocFree, FashionMlpPredictEvaluateConfusion) {
    nn::Model m;
    compile_fashion_mlp(m);
    if (HasFatalFailure()) return;
    nn::Dataset d = fake_fashion(100, 3);  // 64 + 36: a remainder batch too
    std::vector<float> x(d.n * 784), out(d.n * 10, 0.0f);
    for (size_t i = 0; i < x.size(); ++i) x[i] = d.u8[i] * d.scale;
    const nn::Tensor xt = nn::tensor_view(x.data(), {(int)d.n, 1, 28, 28});
    const nn::Tensor ot = nn::tensor_view(out.data(), {(int)d.n, 10});
    ASSERT_TRUE(m.predict(xt, ot).ok());
    const std::vector<float> first = out;
    bool all_ok = true;
    long long before = heap_allocs();
    for (int i = 0; i < 100; ++i) all_ok = m.predict(xt, ot).ok() && all_ok;
    long long allocs = heap_allocs() - before;
    EXPECT_TRUE(all_ok);
    EXPECT_EQ(allocs, 0) << allocs << " heap allocations in 100 predict calls";
    EXPECT_EQ(out, first) << "predict is deterministic";

    // evaluate as a whole (its first call) and confusion_matrix.
    nn::EvalResult r;
    int64_t cm[100];
    before = heap_allocs();
    const bool ev_ok = m.evaluate(d, &r).ok();
    const long long ev_allocs = heap_allocs() - before;
    before = heap_allocs();
    const bool cm_ok = m.confusion_matrix(d, cm).ok();
    const long long cm_allocs = heap_allocs() - before;
    EXPECT_TRUE(ev_ok);
    EXPECT_TRUE(cm_ok);
    EXPECT_EQ(ev_allocs, 0) << ev_allocs << " heap allocations in evaluate()";
    EXPECT_EQ(cm_allocs, 0) << cm_allocs << " heap allocations in confusion_matrix()";
    EXPECT_EQ(r.n, d.n);
    int64_t total = 0;
    for (int i = 0; i < 100; ++i) total += cm[i];
    EXPECT_EQ(total, (int64_t)d.n);
}

// Dropout, Sigmoid and Tanh in Dense, a Dense+Softmax output with
// CategoricalCrossEntropy (the fused path), SGD with Nesterov momentum;
// two epochs with a validation set, progress bar to a file: every step after
// the first, epoch boundaries included, allocates nothing.
TEST(AllocFree, DropoutSigmoidTanhFusedSoftmaxSgdNesterov) {
    nn::Model m;
    ASSERT_TRUE(m.add(nn::Dense(12, 32, nn::Act::Sigmoid)).ok());
    ASSERT_TRUE(m.add(nn::Dropout(0.3f)).ok());
    ASSERT_TRUE(m.add(nn::Dense(32, nn::Act::Tanh)).ok());
    ASSERT_TRUE(m.add(nn::Dense(5, nn::Act::Softmax)).ok());
    nn::CompileOptions co;
    co.loss = nn::CategoricalCrossEntropy();
    co.optimizer = nn::SGD(0.05f, 0.9f, /*nesterov=*/true);
    co.max_batch = 32;
    nn::Status st = m.compile(co);
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_TRUE(m.fused_softmax_ce);
    nn::Dataset d = make_blobs(32 * 50 + 7, 12, 5, 0.7f, 4);  // 51 steps per epoch
    nn::Dataset v = make_blobs(40, 12, 5, 0.7f, 5);
    FILE* f = std::tmpfile();
    ASSERT_NE(f, nullptr);
    StepCounter c;
    nn::FitOptions fo;
    fo.epochs = 2;
    fo.batch_size = 32;
    fo.verbose = 1;
    fo.out = f;
    fo.validation = &v;
    fo.on_batch_end = &StepCounter::cb;
    fo.user = &c;
    st = m.fit(d, fo);
    std::fclose(f);
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_EQ(c.steps, 102);
    EXPECT_EQ(c.allocs(), 0) << c.allocs() << " heap allocations in the " << c.steps - 1
                             << " fit steps after the first (two epochs, validation between)";
    ASSERT_EQ(m.history.epochs.size(), 2u);
    EXPECT_TRUE(m.history.epochs[1].has_val);
    EXPECT_LT(m.history.epochs[1].loss, m.history.epochs[0].loss);
}

// A separate Softmax layer with CategoricalCrossEntropy (fused through the
// Activation layer), LeakyReLU, centered RMSprop with momentum; train_step
// and predict.
TEST(AllocFree, SoftmaxLayerCceRmspropCentered) {
    nn::Model m;
    ASSERT_TRUE(m.add(nn::Dense(8, 24)).ok());
    ASSERT_TRUE(m.add(nn::LeakyReLU(0.1f)).ok());
    ASSERT_TRUE(m.add(nn::Dense(24, nn::Act::Tanh)).ok());
    ASSERT_TRUE(m.add(nn::Dense(4)).ok());
    ASSERT_TRUE(m.add(nn::Softmax()).ok());
    nn::CompileOptions co;
    co.loss = nn::CategoricalCrossEntropy();
    co.optimizer = nn::RMSprop(1e-2f, 0.99f, 1e-8f, 0.0f, /*momentum=*/0.5f, /*centered=*/true);
    co.max_batch = 16;
    nn::Status st = m.compile(co);
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_TRUE(m.fused_softmax_ce);
    nn::Dataset d = make_blobs(16 * 101, 8, 4, 0.7f, 6);
    StepCounter c;
    nn::FitOptions fo;
    fo.epochs = 1;
    fo.batch_size = 16;
    fo.verbose = 0;
    fo.on_batch_end = &StepCounter::cb;
    fo.user = &c;
    st = m.fit(d, fo);
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_EQ(c.steps, 101);
    EXPECT_EQ(c.allocs(), 0) << c.allocs() << " heap allocations in the " << c.steps - 1
                             << " fit steps after the first";

    std::vector<float> out(d.n * 4);
    const nn::Tensor xt = nn::tensor_view(d.f32.data(), {(int)d.n, 8});
    const nn::Tensor ot = nn::tensor_view(out.data(), {(int)d.n, 4});
    ASSERT_TRUE(m.predict(xt, ot).ok());
    bool all_ok = true;
    const long long before = heap_allocs();
    for (int i = 0; i < 100; ++i) all_ok = m.predict(xt, ot).ok() && all_ok;
    const long long allocs = heap_allocs() - before;
    EXPECT_TRUE(all_ok);
    EXPECT_EQ(allocs, 0) << allocs << " heap allocations in 100 predict calls";
    nn::EvalResult r;
    const long long ev_before = heap_allocs();
    const bool ev_ok = m.evaluate(d, &r, 10).ok();
    const long long ev_allocs = heap_allocs() - ev_before;
    EXPECT_TRUE(ev_ok);
    EXPECT_EQ(ev_allocs, 0) << ev_allocs << " heap allocations in evaluate()";
    EXPECT_GT(r.metric, 0.5) << "trained better than chance (0.25)";
}

}  // namespace

// A small convolutional network with every image layer (Conv2D on both of
// its paths, BatchNorm2d, max and average pooling, global average pooling,
// Dropout): no allocation per fit step, nor in evaluate.
TEST(AllocFree, ConvNetWithBatchNormFitAndEvaluate) {
    nn::Model m;
    m.set_input(nn::make_shape({1, 28, 28}));
    m.add(nn::Conv2D(1, 8, 5, 1, 2));
    m.add(nn::BatchNorm2d());
    m.add(nn::ReLU());
    m.add(nn::MaxPool2D(2));
    m.add(nn::Conv2D(8, 8, 3, 1, 1, 1, 8));  // depthwise: the direct path
    m.add(nn::AvgPool2D(3, 2, 1));
    m.add(nn::Conv2D(8, 16, 3, 1, nn::Same));
    m.add(nn::ReLU());
    m.add(nn::GlobalAvgPool());
    m.add(nn::Dropout(0.2f));
    m.add(nn::Dense(10));
    nn::CompileOptions co;
    co.loss = nn::CrossEntropy();
    co.optimizer = nn::Adam(3e-3f);
    co.max_batch = 32;
    nn::Status st = m.compile(co);
    ASSERT_TRUE(st.ok()) << st.message();
    nn::Dataset d = fake_fashion(32 * 12, 3);
    StepCounter c;
    nn::FitOptions fo;
    fo.epochs = 2;
    fo.batch_size = 32;
    fo.verbose = 0;
    fo.on_batch_end = &StepCounter::cb;
    fo.user = &c;
    st = m.fit(d, fo);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(c.steps, 24);
    EXPECT_EQ(c.allocs(), 0) << c.allocs() << " heap allocations in " << c.steps - 1 << " fit steps";
    EXPECT_LT(m.history.epochs[1].loss, m.history.epochs[0].loss) << "it did train";
    nn::EvalResult r;
    const long long before = heap_allocs();
    ASSERT_TRUE(m.evaluate(d, &r).ok());
    EXPECT_EQ(heap_allocs() - before, 0);
}

// An MLP trained on the tape (issue 6): 16 samples of 20 features, Dense 32
// ReLU, Dense 3 logits, cross_entropy, Adam; each step records its graph
// after a mark and resets to it. Every step after the first allocates
// nothing, and the loss goes down.
TEST(AllocFree, TapeMlpAdamMarkResetSteps) {
    const int B = 16, F = 20, H = 32, C = 3, steps = 100;
    nn::Rng rng(11);
    std::vector<float> x((size_t)B * F), w1((size_t)H * F), b1((size_t)H, 0.0f), w2((size_t)C * H),
        b2((size_t)C, 0.0f), teacher((size_t)C * F);
    for (float& v : x) v = rng.normal();
    for (float& v : teacher) v = rng.normal();
    for (float& v : w1) v = rng.uniform(-0.2236f, 0.2236f);  // U(-1/sqrt(20), 1/sqrt(20))
    for (float& v : w2) v = rng.uniform(-0.1768f, 0.1768f);  // U(-1/sqrt(32), 1/sqrt(32))
    std::vector<int32_t> labels((size_t)B);  // argmax of a random linear teacher
    for (int i = 0; i < B; ++i) {
        float best = -1e30f;
        for (int c = 0; c < C; ++c) {
            float s = 0;
            for (int f = 0; f < F; ++f) s += teacher[(size_t)c * F + f] * x[(size_t)i * F + f];
            if (s > best) {
                best = s;
                labels[(size_t)i] = c;
            }
        }
    }
    nn::Tape tape;
    nn::Status st = tape.reserve(1u << 20);
    ASSERT_TRUE(st.ok()) << st.message();
    const nn::Var W1 = tape.param(nn::make_shape({H, F}), w1.data(), "W1");
    const nn::Var B1 = tape.param(nn::make_shape({H}), b1.data(), "b1");
    const nn::Var W2 = tape.param(nn::make_shape({C, H}), w2.data(), "W2");
    const nn::Var B2 = tape.param(nn::make_shape({C}), b2.data(), "b2");
    nn::Param ps[4] = {nn::as_param(W1, "W1"), nn::as_param(B1, "b1"), nn::as_param(W2, "W2"),
                       nn::as_param(B2, "b2")};
    nn::Optimizer adam;
    st = adam.init(nn::Adam(1e-2f), ps, 4, tape.arena);
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_TRUE(tape.error.ok()) << tape.error.message();
    const nn::TapeMark mark = tape.mark();
    auto train_step = [&](float* loss) {
        const nn::Var X = tape.constant(nn::make_shape({B, F}), x.data(), "x");
        const nn::Var z = nn::dense(nn::dense(X, W1, B1, nn::Act::ReLU), W2, B2);
        const nn::Var L = nn::cross_entropy(z, labels.data());
        adam.zero_grad();
        const bool ok = tape.backward(L).ok();
        if (ok) {
            *loss = L.item();
            adam.step();
        }
        tape.reset(mark);
        return ok;
    };
    float first_loss = 0, loss = 0;
    ASSERT_TRUE(train_step(&first_loss)) << tape.error.message();
    bool all_ok = true;
    const long long before = heap_allocs();
    for (int s = 0; s < steps; ++s) all_ok = train_step(&loss) && all_ok;
    const long long allocs = heap_allocs() - before;
    EXPECT_TRUE(all_ok) << tape.error.message();
    EXPECT_EQ(allocs, 0) << allocs << " heap allocations in " << steps << " tape training steps";
    EXPECT_LT(loss, 0.5f * first_loss) << "the steps did train: first " << first_loss << ", last " << loss;
}

// A recurrent model in the explicit-layer style (issue 5): Embedding, a
// 2-layer LSTM returning sequences (variable lengths, truncated BPTT), Dense
// on every step, softmax cross-entropy over the (B * T, V) logits, backward
// through all three, Adam with gradient clipping. Every step after the
// first allocates nothing, and the loss goes down.
TEST(AllocFree, EmbeddingLstmDenseAdamClipSteps) {
    const int V = 11, D = 8, H = 16, B = 8, T = 12, steps = 50;
    nn::Arena arena;
    nn::Status st = arena.reserve(1u << 24);
    ASSERT_TRUE(st.ok()) << st.message();
    nn::Layer emb = nn::Embedding(V, D), lstm = nn::LSTM(D, H, 2, true), fc = nn::Dense(H, V);
    st = nn::build(emb, nn::make_shape({T}), B, arena, 1);
    if (st) st = nn::build(lstm, nn::make_shape({T, D}), B, arena, 2);
    if (st) st = nn::build(fc, nn::make_shape({T, H}), B, arena, 3);
    ASSERT_TRUE(st.ok()) << st.message();
    const int32_t lengths[B] = {12, 7, 12, 3, 9, 12, 1, 10};
    lstm.lengths = lengths;
    lstm.bptt_window = 5;
    nn::Param ps[32];
    int n = nn::layer_params(emb, ps, 32);
    n += nn::layer_params(lstm, ps + n, 32 - n);
    n += nn::layer_params(fc, ps + n, 32 - n);
    nn::OptimConfig cfg = nn::Adam(1e-2f);
    cfg.clip_norm = 1.0f;
    nn::Optimizer adam;
    st = adam.init(cfg, ps, n, arena);
    ASSERT_TRUE(st.ok()) << st.message();
    std::vector<float> ids((size_t)B * T), e((size_t)B * T * D), h((size_t)B * T * H), z((size_t)B * T * V),
        dz(z.size()), dh(h.size()), de(e.size());
    std::vector<int32_t> labels((size_t)B * T);
    nn::Rng rng(5);
    for (int i = 0; i < B * T; ++i) ids[(size_t)i] = (float)rng.below(V);
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < T; ++t) labels[(size_t)b * T + t] = t == 0 ? 0 : (int32_t)ids[(size_t)b * T + t - 1];
    const nn::Tensor it = nn::tensor_view(ids.data(), {B, T}), et = nn::tensor_view(e.data(), {B, T, D}),
                     ht = nn::tensor_view(h.data(), {B, T, H}), zt = nn::tensor_view(z.data(), {B, T, V}),
                     dzt = nn::tensor_view(dz.data(), {B, T, V}), dht = nn::tensor_view(dh.data(), {B, T, H}),
                     det = nn::tensor_view(de.data(), {B, T, D});
    nn::Target tg;
    tg.labels = labels.data();
    auto train_step = [&](float* loss) {
        nn::Status s = nn::forward(emb, et, it, nn::Mode::Train);
        if (s) s = nn::forward(lstm, ht, et, nn::Mode::Train);
        if (s) s = nn::forward(fc, zt, ht, nn::Mode::Train);
        if (s) s = nn::softmax_cross_entropy(dzt.reshape({B * T, V}), nullptr, zt.reshape({B * T, V}), tg, loss);
        adam.zero_grad();
        if (s) s = nn::backward(fc, dht, dzt, ht, zt);
        if (s) s = nn::backward(lstm, det, dht, et, ht);
        if (s) s = nn::backward(emb, nn::Tensor{}, det, it, et);
        if (s) adam.step();
        return s.ok();
    };
    float first_loss = 0, loss = 0;
    ASSERT_TRUE(train_step(&first_loss));
    bool all_ok = true;
    const long long before = heap_allocs();
    for (int s = 0; s < steps; ++s) all_ok = train_step(&loss) && all_ok;
    const long long allocs = heap_allocs() - before;
    EXPECT_TRUE(all_ok);
    EXPECT_EQ(allocs, 0) << allocs << " heap allocations in " << steps << " recurrent training steps";
    EXPECT_GT(adam.last_grad_norm, 0.0f) << "clipping computed the gradient norm";
    EXPECT_LT(loss, first_loss) << "the steps did train: first " << first_loss << ", last " << loss;
}
