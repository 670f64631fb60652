// Core types: checked size arithmetic, Arena, Shape/Tensor views, Rng.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "nn.hpp"

namespace {

bool contains(const nn::Status& st, const char* s) { return std::strstr(st.message(), s) != nullptr; }

TEST(SizeArithmetic, DetectsOverflow) {
    size_t out = 7;
    EXPECT_TRUE(nn::size_mul(1u << 20, 1u << 10, &out));
    EXPECT_EQ(out, (size_t)1 << 30);
    EXPECT_FALSE(nn::size_mul(SIZE_MAX / 2 + 1, 2, &out));
    EXPECT_TRUE(nn::size_mul(0, SIZE_MAX, &out));
    EXPECT_EQ(out, 0u);
    EXPECT_TRUE(nn::size_add(SIZE_MAX - 1, 1, &out));
    EXPECT_EQ(out, SIZE_MAX);
    EXPECT_FALSE(nn::size_add(SIZE_MAX, 1, &out));
}

TEST(Arena, ReserveAlignsEveryAllocationTo64) {
    nn::Arena a;
    ASSERT_TRUE(a.reserve(1000).ok());
    EXPECT_TRUE(a.owns);
    EXPECT_GE(a.capacity, 1000u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.base) % nn::kArenaAlign, 0u);
    nn::Status st;
    void* p = a.alloc(3, &st);
    void* q = a.alloc(5, &st);
    ASSERT_TRUE(st.ok());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(q) % 64, 0u);
    EXPECT_EQ(static_cast<char*>(q) - static_cast<char*>(p), 64);
    EXPECT_EQ(a.used, 64u + 5u);
}

TEST(Arena, WrapsAMisalignedUserBufferAndNeverWritesOutsideIt) {
    alignas(64) static unsigned char buf[64 * 5];
    std::memset(buf, 0xAB, sizeof buf);
    nn::Arena a;
    // Start 3 bytes in: 61 bytes go to alignment, 256 - 61 = 195 remain usable.
    ASSERT_TRUE(a.wrap(buf + 3, 256).ok());
    EXPECT_FALSE(a.owns);
    EXPECT_EQ(a.base, buf + 64);
    EXPECT_EQ(a.capacity, 256u - 61u);
    nn::Status st;
    float* f = a.alloc_floats(48, &st);  // 192 bytes fit
    ASSERT_TRUE(st.ok());
    for (int i = 0; i < 48; ++i) f[i] = 1.0f;
    EXPECT_EQ(buf[63], 0xAB);                  // before the carved block
    EXPECT_EQ(buf[64 + 192], 0xAB);            // after it
    EXPECT_EQ(a.alloc(4, &st), nullptr);       // 3 bytes left
    EXPECT_FALSE(st.ok());
    a.release();
    EXPECT_EQ(buf[0], 0xAB);  // release of a wrapped buffer frees nothing
}

TEST(Arena, ExhaustionNamesRequestedAvailableMissing) {
    nn::Arena a;
    ASSERT_TRUE(a.reserve(256).ok());
    nn::Status st;
    ASSERT_NE(a.alloc(100, &st, "first"), nullptr);
    EXPECT_EQ(a.alloc(200, &st, "layer \"fc9\""), nullptr);
    ASSERT_FALSE(st.ok());
    // used 100 -> next start 128, so 256 - 100 = 156 bytes remain nominally.
    EXPECT_TRUE(contains(st, "fc9")) << st.message();
    EXPECT_TRUE(contains(st, "requested 200 bytes")) << st.message();
    EXPECT_TRUE(contains(st, "available 156")) << st.message();
    EXPECT_TRUE(contains(st, "missing 44")) << st.message();
    EXPECT_EQ(a.used, 100u);  // the failed request took nothing
    nn::Status first;
    a.alloc(1000, &first);
    a.alloc(2000, &first);  // the first error is kept
    EXPECT_TRUE(contains(first, "requested 1000")) << first.message();
}

TEST(Arena, OverflowingRequestsFailCleanly) {
    nn::Arena a;
    ASSERT_TRUE(a.reserve(128).ok());
    nn::Status st;
    EXPECT_EQ(a.alloc_floats(SIZE_MAX / 2, &st, "huge"), nullptr);
    EXPECT_TRUE(contains(st, "overflow")) << st.message();
    nn::Status st2;
    EXPECT_EQ(a.alloc(SIZE_MAX - 10, &st2), nullptr);
    EXPECT_FALSE(st2.ok());
    EXPECT_EQ(a.used, 0u);
    nn::Arena b;
    EXPECT_FALSE(b.reserve(SIZE_MAX - 3).ok());
}

TEST(Arena, MarkResetAndPeak) {
    nn::Arena a;
    ASSERT_TRUE(a.reserve(4096).ok());
    nn::Status st;
    a.alloc(100, &st);
    const size_t m = a.mark();
    void* p = a.alloc(1000, &st);
    a.alloc(1000, &st);
    EXPECT_EQ(a.peak, a.used);
    const size_t high = a.peak;
    a.reset(m);
    EXPECT_EQ(a.used, m);
    EXPECT_EQ(a.peak, high);            // peak remembers the high-water mark
    EXPECT_EQ(a.alloc(1000, &st), p);  // the same bytes are handed out again
    a.reset(a.used + 500);              // a mark beyond `used` is ignored
    EXPECT_LE(a.used, high);
}

TEST(Arena, MeasuringCountsTheSameBytesItWouldCarve) {
    nn::Arena dry, real;
    dry.begin_measure();
    nn::Status st;
    for (size_t n : {3u, 100u, 64u, 7u}) EXPECT_EQ(dry.alloc(n, &st), nullptr);
    EXPECT_TRUE(st.ok());
    ASSERT_TRUE(real.reserve(dry.peak).ok());
    for (size_t n : {3u, 100u, 64u, 7u}) EXPECT_NE(real.alloc(n, &st), nullptr);
    EXPECT_TRUE(st.ok());
    EXPECT_EQ(real.used, dry.peak);
}

TEST(TensorViews, ReshapeAndRowsShareData) {
    float data[2 * 3 * 4];
    for (int i = 0; i < 24; ++i) data[i] = (float)i;
    nn::Tensor t = nn::tensor_view(data, {2, 3, 4});
    EXPECT_EQ(t.numel(), 24u);
    EXPECT_EQ(t.row_size(), 12u);
    nn::Tensor flat = t.reshape({2, 12});
    EXPECT_EQ(flat.data, data);
    EXPECT_EQ(flat.dim(1), 12);
    nn::Tensor r = t.rows(1, 2);
    EXPECT_EQ(r.data, data + 12);
    EXPECT_EQ(r.batch(), 1);
    EXPECT_EQ(r[0], 12.0f);
    r[1] = -1.0f;  // a view: writes reach the original
    EXPECT_EQ(data[13], -1.0f);
    nn::Shape s = nn::batched(nn::make_shape({1, 28, 28}), 64);
    EXPECT_EQ(s.ndim, 4);
    EXPECT_EQ(s.numel(), 64u * 784u);
    char buf[64];
    EXPECT_EQ(std::string(nn::shape_str(s, buf, sizeof buf)), "(64, 1, 28, 28)");
    EXPECT_EQ(std::string(nn::shape_str(nn::make_shape({5}), buf, sizeof buf)), "(5,)");
    EXPECT_TRUE(nn::make_shape({2, 3}) == nn::make_shape({2, 3}));
    EXPECT_TRUE(nn::make_shape({2, 3}) != nn::make_shape({3, 2}));
}

TEST(TensorViews, AllocFromArenaAligned) {
    nn::Arena a;
    ASSERT_TRUE(a.reserve(1 << 16).ok());
    nn::Tensor t;
    ASSERT_TRUE(nn::tensor_alloc(a, nn::make_shape({3, 17}), &t).ok());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 64, 0u);
    EXPECT_EQ(t.numel(), 51u);
    nn::Tensor too_big;
    nn::Status st = nn::tensor_alloc(a, nn::make_shape({1 << 14, 16}), &too_big, "activations");
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(contains(st, "activations")) << st.message();
}

TEST(Rng, DeterministicUniformAndUnbiasedBelow) {
    nn::Rng a(42), b(42), c(43);
    bool differs = false;
    for (int i = 0; i < 100; ++i) {
        uint32_t x = a.next_u32();
        EXPECT_EQ(x, b.next_u32());
        differs |= x != c.next_u32();
    }
    EXPECT_TRUE(differs);
    nn::Rng r(7);
    int counts[5] = {0};
    double mean = 0, sq = 0;
    const int n = 100000;
    for (int i = 0; i < n; ++i) {
        float u = r.uniform();
        ASSERT_GE(u, 0.0f);
        ASSERT_LT(u, 1.0f);
        uint32_t k = r.below(5);
        ASSERT_LT(k, 5u);
        ++counts[k];
        float z = r.normal();
        mean += z;
        sq += (double)z * z;
    }
    for (int k = 0; k < 5; ++k) EXPECT_NEAR(counts[k], n / 5, 5 * 126) << k;  // 5 sigma
    EXPECT_NEAR(mean / n, 0.0, 0.02);
    EXPECT_NEAR(sq / n, 1.0, 0.03);
}

TEST(StatusType, OkAndMessages) {
    nn::Status ok;
    EXPECT_TRUE(ok.ok());
    EXPECT_TRUE((bool)ok);
    EXPECT_STREQ(ok.message(), "ok");
    nn::Status bad = nn::errorf("layer \"%s\": %d != %d", "fc", 3, 4);
    EXPECT_FALSE(bad.ok());
    EXPECT_STREQ(bad.message(), "layer \"fc\": 3 != 4");
    std::string longer(1000, 'x');
    nn::Status cut = nn::errorf("%s", longer.c_str());  // truncated, terminated
    EXPECT_EQ(std::strlen(cut.message()), sizeof(cut.msg) - 1);
}

}  // namespace
