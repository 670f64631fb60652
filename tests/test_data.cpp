// Data loading: IDX and CSV readers (valid and bad input), synthetic sets,
// normalisation, split, gather and the batch iterator.
#include <gtest/gtest.h>

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(NN_HAVE_ZLIB) && NN_HAVE_ZLIB
#include <zlib.h>
#endif

#include "nn.hpp"

namespace {

// A fresh directory under /tmp per test, removed with its files afterwards.
class DataTest : public ::testing::Test {
protected:
    std::string dir;
    std::vector<std::string> files;

    void SetUp() override {
        char tmpl[] = "/tmp/nn_data_XXXXXX";
        char* d = mkdtemp(tmpl);
        ASSERT_NE(d, nullptr);
        dir = d;
    }
    void TearDown() override {
        for (const std::string& f : files) std::remove(f.c_str());
        rmdir(dir.c_str());
    }
    std::string path(const char* name) {
        std::string p = dir + "/" + name;
        files.push_back(p);
        return p;
    }
    std::string write(const char* name, const std::vector<uint8_t>& bytes) {
        std::string p = path(name);
        FILE* f = std::fopen(p.c_str(), "wb");
        EXPECT_NE(f, nullptr);
        if (f) {
            if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), f);
            std::fclose(f);
        }
        return p;
    }
    std::string write_text(const char* name, const std::string& text) {
        return write(name, std::vector<uint8_t>(text.begin(), text.end()));
    }
#if defined(NN_HAVE_ZLIB) && NN_HAVE_ZLIB
    std::string write_gz(const char* name, const std::vector<uint8_t>& bytes) {
        std::string p = path(name);
        gzFile g = gzopen(p.c_str(), "wb");
        EXPECT_NE(g, nullptr);
        if (g) {
            EXPECT_EQ(gzwrite(g, bytes.data(), (unsigned)bytes.size()), (int)bytes.size());
            gzclose(g);
        }
        return p;
    }
#endif
};

// An IDX file: 00 00 type ndim, big-endian dims, then data.
std::vector<uint8_t> idx_bytes(int type, std::vector<uint32_t> dims, const std::vector<uint8_t>& data,
                               int ndim_override = -1) {
    std::vector<uint8_t> b = {0, 0, (uint8_t)type,
                              (uint8_t)(ndim_override >= 0 ? ndim_override : (int)dims.size())};
    for (uint32_t d : dims) {
        b.push_back((uint8_t)(d >> 24));
        b.push_back((uint8_t)(d >> 16));
        b.push_back((uint8_t)(d >> 8));
        b.push_back((uint8_t)d);
    }
    b.insert(b.end(), data.begin(), data.end());
    return b;
}

std::vector<uint8_t> iota_bytes(size_t n, int mul = 7) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = (uint8_t)((i * (size_t)mul + 3) % 256);
    return v;
}

// A data set with recognisable contents, to show a failed load left it alone.
nn::Dataset sentinel() {
    nn::Dataset d;
    d.f32 = {1.5f, 2.5f, 3.5f};
    d.sample = nn::make_shape({3});
    d.n = 1;
    d.labels = {2};
    d.num_classes = 3;
    d.scale = 0.25f;
    return d;
}
void expect_sentinel(const nn::Dataset& d) {
    EXPECT_EQ(d.n, 1u);
    EXPECT_EQ(d.f32, (std::vector<float>{1.5f, 2.5f, 3.5f}));
    EXPECT_TRUE(d.u8.empty());
    EXPECT_EQ(d.sample, nn::make_shape({3}));
    EXPECT_EQ(d.labels, (std::vector<int32_t>{2}));
    EXPECT_EQ(d.num_classes, 3);
    EXPECT_EQ(d.scale, 0.25f);
}

#define EXPECT_MSG_HAS(st, text) \
    EXPECT_NE(std::strstr((st).message(), (text)), nullptr) << "message: " << (st).message()

// ---------------------------------------------------------------------------
// IDX
// ---------------------------------------------------------------------------

TEST_F(DataTest, IdxRawRoundTrip) {
    std::vector<uint8_t> pix = iota_bytes(3 * 2 * 4);
    std::string im = write("im.idx", idx_bytes(0x08, {3, 2, 4}, pix));
    std::string lb = write("lb.idx", idx_bytes(0x08, {3}, {0, 4, 1}));

    nn::IdxArray a;
    ASSERT_TRUE(nn::read_idx(im.c_str(), &a).ok());
    EXPECT_EQ(a.type, 0x08);
    EXPECT_EQ(a.ndim, 3);
    EXPECT_EQ(a.dims[0], 3u);
    EXPECT_EQ(a.dims[1], 2u);
    EXPECT_EQ(a.dims[2], 4u);
    EXPECT_EQ(a.count(), 24u);
    EXPECT_EQ(a.bytes, pix);

    nn::Dataset d = sentinel();
    nn::Status st = nn::load_idx(im.c_str(), lb.c_str(), &d);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(d.n, 3u);
    EXPECT_EQ(d.sample, nn::make_shape({1, 2, 4}));
    EXPECT_EQ(d.sample_size(), 8u);
    EXPECT_EQ(d.u8, pix);
    EXPECT_TRUE(d.f32.empty());
    EXPECT_EQ(d.labels, (std::vector<int32_t>{0, 4, 1}));
    EXPECT_EQ(d.num_classes, 5);
    EXPECT_EQ(d.target_width(), 5);
    EXPECT_EQ(d.scale, 1.0f);
}

TEST_F(DataTest, IdxOtherTypesKeptAsStored) {
    // 0x0B short, (2, 3): 12 bytes, big-endian items kept as they are.
    std::vector<uint8_t> data = iota_bytes(12, 5);
    std::string p = write("s.idx", idx_bytes(0x0B, {2, 3}, data));
    nn::IdxArray a;
    ASSERT_TRUE(nn::read_idx(p.c_str(), &a).ok());
    EXPECT_EQ(a.type, 0x0B);
    EXPECT_EQ(a.count(), 6u);
    EXPECT_EQ(a.bytes, data);
    // 0x0E double, (1): 8 bytes.
    std::string q = write("d.idx", idx_bytes(0x0E, {1}, iota_bytes(8)));
    ASSERT_TRUE(nn::read_idx(q.c_str(), &a).ok());
    EXPECT_EQ(a.type, 0x0E);
    EXPECT_EQ(a.bytes.size(), 8u);
    // load_idx insists on ubyte images.
    std::string im = write("f.idx", idx_bytes(0x0D, {1, 1, 1}, iota_bytes(4)));
    std::string lb = write("l.idx", idx_bytes(0x08, {1}, {0}));
    nn::Dataset d = sentinel();
    nn::Status st = nn::load_idx(im.c_str(), lb.c_str(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, im.c_str());
    EXPECT_MSG_HAS(st, "0x0D");
    expect_sentinel(d);
}

#if defined(NN_HAVE_ZLIB) && NN_HAVE_ZLIB
TEST_F(DataTest, IdxGzipRoundTrip) {
    std::vector<uint8_t> pix = iota_bytes(5 * 3 * 3, 11);
    std::string im = write_gz("im.idx.gz", idx_bytes(0x08, {5, 3, 3}, pix));
    // No .gz suffix: recognised by the gzip magic.
    std::string lb = write_gz("lb.idx", idx_bytes(0x08, {5}, {3, 1, 0, 2, 1}));
    nn::Dataset d = sentinel();
    nn::Status st = nn::load_idx(im.c_str(), lb.c_str(), &d);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(d.n, 5u);
    EXPECT_EQ(d.sample, nn::make_shape({1, 3, 3}));
    EXPECT_EQ(d.u8, pix);
    EXPECT_EQ(d.labels, (std::vector<int32_t>{3, 1, 0, 2, 1}));
    EXPECT_EQ(d.num_classes, 4);
}

TEST_F(DataTest, IdxGzipTruncatedAndTrailing) {
    std::string t = write_gz("t.idx.gz", idx_bytes(0x08, {10, 4, 4}, iota_bytes(100)));
    nn::IdxArray a;
    nn::Status st = nn::read_idx(t.c_str(), &a);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, t.c_str());
    EXPECT_MSG_HAS(st, "160");
    EXPECT_MSG_HAS(st, "100");
    std::string x = write_gz("x.idx.gz", idx_bytes(0x08, {4}, iota_bytes(6)));
    st = nn::read_idx(x.c_str(), &a);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, x.c_str());
    EXPECT_MSG_HAS(st, "trailing");
    EXPECT_EQ(a.ndim, 0);  // untouched
}
#else
TEST_F(DataTest, IdxGzipWithoutZlibIsAClearError) {
    std::vector<uint8_t> fake = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3};
    std::string im = write("im.idx.gz", fake);
    std::string lb = write("lb.idx", idx_bytes(0x08, {1}, {0}));
    nn::Dataset d = sentinel();
    nn::Status st = nn::load_idx(im.c_str(), lb.c_str(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, im.c_str());
    EXPECT_MSG_HAS(st, "without zlib");
    expect_sentinel(d);
    // Gzip magic without the suffix too.
    std::string g = write("plain_name", fake);
    nn::IdxArray a;
    st = nn::read_idx(g.c_str(), &a);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, "without zlib");
}
#endif

// Writes `images` as a bad images file beside a valid 3-label file, loads
// them into a sentinel and checks the sentinel survived.
class IdxBadInput : public DataTest {
protected:
    std::string im;
    nn::Status load_bad(const std::vector<uint8_t>& images) {
        im = write("bad.idx", images);
        std::string lb = write("labels.idx", idx_bytes(0x08, {3}, {0, 1, 2}));
        nn::Dataset d = sentinel();
        nn::Status st = nn::load_idx(im.c_str(), lb.c_str(), &d);
        expect_sentinel(d);
        nn::IdxArray a;
        a.type = 99;
        nn::Status st2 = nn::read_idx(im.c_str(), &a);
        EXPECT_EQ(a.type, 99);  // untouched on error
        EXPECT_STREQ(st.message(), st2.message());
        EXPECT_FALSE(st.ok());
        EXPECT_MSG_HAS(st, im.c_str());
        return st;
    }
};

TEST_F(IdxBadInput, WrongMagic) {
    std::vector<uint8_t> b = idx_bytes(0x08, {3, 1, 1}, {1, 2, 3});
    b[0] = 0x01;
    b[1] = 0x02;
    nn::Status st = load_bad(b);
    EXPECT_MSG_HAS(st, "magic");
    EXPECT_MSG_HAS(st, "0x01 0x02");
}

TEST_F(IdxBadInput, UnknownType) {
    nn::Status st = load_bad(idx_bytes(0x07, {3, 1, 1}, {1, 2, 3}));
    EXPECT_MSG_HAS(st, "0x07");
}

TEST_F(IdxBadInput, ZeroDimensions) {
    nn::Status st = load_bad(idx_bytes(0x08, {}, {1, 2, 3}));
    EXPECT_MSG_HAS(st, "0 dimensions");
}

TEST_F(IdxBadInput, NineDimensions) {
    nn::Status st = load_bad(idx_bytes(0x08, {3, 1, 1, 1, 1, 1, 1, 1, 1}, {1, 2, 3}));
    EXPECT_MSG_HAS(st, "9 dimensions");
}

TEST_F(IdxBadInput, TruncatedData) {
    // (100, 28, 28) promises 78400 bytes; only 1000 follow.
    nn::Status st = load_bad(idx_bytes(0x08, {100, 28, 28}, iota_bytes(1000)));
    EXPECT_MSG_HAS(st, "truncated");
    EXPECT_MSG_HAS(st, "78400");
    EXPECT_MSG_HAS(st, "1000");
}

TEST_F(IdxBadInput, TruncatedHeader) {
    nn::Status st = load_bad({0, 0});
    EXPECT_MSG_HAS(st, "truncated");
    EXPECT_MSG_HAS(st, "2 bytes");
    // Dimensions cut short: ndim 3 but only one dimension present.
    st = load_bad({0, 0, 8, 3, 0, 0, 0, 3});
    EXPECT_MSG_HAS(st, "16");
}

TEST_F(IdxBadInput, TrailingBytes) {
    nn::Status st = load_bad(idx_bytes(0x08, {3, 1, 1}, {1, 2, 3, 4, 5}));
    EXPECT_MSG_HAS(st, "2 trailing");
    EXPECT_MSG_HAS(st, "promises 3 bytes");
}

TEST_F(IdxBadInput, DimensionProductOverflows) {
    nn::Status st = load_bad(
        idx_bytes(0x08, {0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}, {1, 2, 3}));
    EXPECT_MSG_HAS(st, "4294967295");
    EXPECT_MSG_HAS(st, "overflow");
}

TEST_F(IdxBadInput, ItemSizeOverflows) {
    // Count fits, count * 8 bytes (double) does not on 64-bit size_t.
    if (sizeof(size_t) != 8) GTEST_SKIP() << "64-bit size_t case";
    nn::Status st =
        load_bad(idx_bytes(0x0E, {0xFFFFFFFFu, 0xFFFFFFFFu}, {1, 2, 3}));  // 2^64 - 2^33 + 1 items
    EXPECT_MSG_HAS(st, "overflow");
}

TEST_F(DataTest, IdxCountMismatch) {
    std::string im = write("im.idx", idx_bytes(0x08, {3, 2, 2}, iota_bytes(12)));
    std::string lb = write("lb.idx", idx_bytes(0x08, {2}, {0, 1}));
    nn::Dataset d = sentinel();
    nn::Status st = nn::load_idx(im.c_str(), lb.c_str(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, im.c_str());
    EXPECT_MSG_HAS(st, lb.c_str());
    EXPECT_MSG_HAS(st, "3 images");
    EXPECT_MSG_HAS(st, "2 labels");
    expect_sentinel(d);
}

TEST_F(DataTest, IdxLabelsWrongShapeOrType) {
    std::string im = write("im.idx", idx_bytes(0x08, {2, 2, 2}, iota_bytes(8)));
    std::string lb = write("lb.idx", idx_bytes(0x08, {2, 1}, {0, 1}));
    nn::Dataset d = sentinel();
    nn::Status st = nn::load_idx(im.c_str(), lb.c_str(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, lb.c_str());
    EXPECT_MSG_HAS(st, "2 dimensions");
    std::string im2 = write("im2.idx", idx_bytes(0x08, {2, 8}, iota_bytes(16)));
    std::string lb2 = write("lb2.idx", idx_bytes(0x08, {2}, {0, 1}));
    st = nn::load_idx(im2.c_str(), lb2.c_str(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, im2.c_str());
    expect_sentinel(d);
}

TEST_F(DataTest, IdxNonexistentFile) {
    std::string missing = dir + "/does-not-exist.idx";
    std::string lb = write("lb.idx", idx_bytes(0x08, {1}, {0}));
    nn::Dataset d = sentinel();
    nn::Status st = nn::load_idx(missing.c_str(), lb.c_str(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, missing.c_str());
    EXPECT_MSG_HAS(st, "cannot open");
    expect_sentinel(d);
}

TEST_F(DataTest, FashionMnistMissingDirIsAClearError) {
    nn::Dataset tr = sentinel(), te = sentinel();
    nn::Status st = nn::load_fashion_mnist(dir.c_str(), &tr, &te);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, dir.c_str());
    EXPECT_MSG_HAS(st, "train-images-idx3-ubyte");
    expect_sentinel(tr);
    expect_sentinel(te);
}

TEST_F(DataTest, FashionMnistLayoutFromSmallFiles) {
    // The loader's file naming, on tiny stand-ins: raw train, gzip-free test.
    write("train-images-idx3-ubyte", idx_bytes(0x08, {2, 2, 2}, iota_bytes(8)));
    write("train-labels-idx1-ubyte", idx_bytes(0x08, {2}, {9, 3}));
    write("t10k-images-idx3-ubyte", idx_bytes(0x08, {1, 2, 2}, iota_bytes(4)));
    write("t10k-labels-idx1-ubyte", idx_bytes(0x08, {1}, {1}));
    nn::Dataset tr, te;
    nn::Status st = nn::load_fashion_mnist(dir.c_str(), &tr, &te);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(tr.n, 2u);
    EXPECT_EQ(te.n, 1u);
    EXPECT_EQ(tr.num_classes, 10);
    EXPECT_EQ(te.num_classes, 10);  // even though its labels only reach 1
}

// The "THPeligible:" line of the /proc/self/smaps mapping that holds
// address p: 1 or 0, or -1 when there is no such line (not Linux, a kernel
// older than 5.x, or an emulator's view of /proc).
int large_page_eligible(const void* p) {
    FILE* f = std::fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    const uintptr_t a = (uintptr_t)p;
    char line[512];
    bool inside = false;
    int found = -1;
    while (std::fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && std::strchr(line, '-') < std::strchr(line, ' ')) {
            inside = a >= lo && a < hi;
            continue;
        }
        int v;
        if (inside && std::sscanf(line, "THPeligible: %d", &v) == 1) {
            found = v;
            break;
        }
    }
    std::fclose(f);
    return found;
}

// A data set read at random row by row asks for 2 MB pages (one TLB entry
// per 2 MB instead of per 4 KB). Checked where it can be seen: the kernel
// must report THPeligible, grant it to a region advised by hand, and not to
// a region that was not advised (transparent huge pages in "madvise" mode,
// Debian's default); elsewhere the test has nothing to compare and skips.
TEST_F(DataTest, LargeIdxDataAsksForLargePages) {
    const size_t kBig = 8u << 20;
    std::vector<uint8_t> plain, advised;
    plain.reserve(kBig);
    advised.reserve(kBig);
    const uintptr_t huge = (uintptr_t)2 << 20;
    const uintptr_t inside_plain = ((uintptr_t)plain.data() + huge - 1) & ~(huge - 1);
    const uintptr_t inside_advised = ((uintptr_t)advised.data() + huge - 1) & ~(huge - 1);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const bool advise_ok = madvise((void*)inside_advised, huge, MADV_HUGEPAGE) == 0;
#else
    const bool advise_ok = false;
#endif
    if (!advise_ok || large_page_eligible((void*)inside_advised) != 1 ||
        large_page_eligible((void*)inside_plain) != 0)
        GTEST_SKIP() << "this kernel (or emulator) does not show advised large pages apart";

    const uint32_t n = 12000;  // 12000 x 28 x 28 bytes: 9.4 MB
    std::vector<uint8_t> pixels = iota_bytes((size_t)n * 784);
    std::vector<uint8_t> labels((size_t)n);
    for (uint32_t i = 0; i < n; ++i) labels[i] = (uint8_t)(i % 10);
    const std::string images = write("big-images", idx_bytes(0x08, {n, 28, 28}, pixels));
    const std::string label_file = write("big-labels", idx_bytes(0x08, {n}, labels));
    nn::Dataset d;
    nn::Status st = nn::load_idx(images.c_str(), label_file.c_str(), &d);
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_EQ(d.u8.size(), (size_t)n * 784);
    EXPECT_EQ(d.u8, pixels);
    const uintptr_t middle = ((uintptr_t)d.u8.data() + d.u8.size() / 2) & ~(huge - 1);
    EXPECT_EQ(large_page_eligible((void*)middle), 1) << "the pixel buffer was not advised for 2 MB pages";
}

TEST(DataFashionMnist, LoadsInstalledCopy) {
    const char* dir = "/usr/share/datasets/fashion-mnist";
    struct stat sb;
    if (stat(dir, &sb) != 0) GTEST_SKIP() << dir << " not installed";
    nn::Dataset train, test;
    nn::Status st = nn::load_fashion_mnist(dir, &train, &test);
#if !(defined(NN_HAVE_ZLIB) && NN_HAVE_ZLIB)
    if (!st.ok() && std::strstr(st.message(), "without zlib"))
        GTEST_SKIP() << "gzipped copy, nn built without zlib: " << st.message();
#endif
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(train.n, 60000u);
    EXPECT_EQ(test.n, 10000u);
    EXPECT_EQ(train.sample, nn::make_shape({1, 28, 28}));
    EXPECT_EQ(test.sample, nn::make_shape({1, 28, 28}));
    EXPECT_EQ(train.u8.size(), 60000u * 784u);
    EXPECT_EQ(train.num_classes, 10);
    EXPECT_EQ(test.num_classes, 10);
    int per_class[10] = {0};
    for (int32_t l : train.labels) {
        ASSERT_GE(l, 0);
        ASSERT_LT(l, 10);
        ++per_class[l];
    }
    for (int c = 0; c < 10; ++c) EXPECT_EQ(per_class[c], 6000) << "class " << c;
    for (int32_t l : test.labels) ASSERT_TRUE(l >= 0 && l < 10);
    EXPECT_EQ(train.labels[0], 9);  // the first training image is an ankle boot
}

// ---------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------

TEST_F(DataTest, CsvNoHeaderLabelLast) {
    std::string p = write_text("t.csv", "1,2,0\n3.5,-4e-1,2\n");
    nn::CsvOptions o;
    nn::Dataset d = sentinel();
    nn::Status st = nn::load_csv(p.c_str(), o, &d);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(d.n, 2u);
    EXPECT_EQ(d.sample, nn::make_shape({2}));
    EXPECT_EQ(d.f32, (std::vector<float>{1.0f, 2.0f, 3.5f, -0.4f}));
    EXPECT_TRUE(d.u8.empty());
    EXPECT_EQ(d.labels, (std::vector<int32_t>{0, 2}));
    EXPECT_EQ(d.num_classes, 3);
    EXPECT_EQ(d.scale, 1.0f);  // a fresh data set, not the sentinel's metadata
}

TEST_F(DataTest, CsvHeaderLabelFirstNoFinalNewline) {
    std::string p = write_text("t.csv", "label, a ,\"b\"\n1, 0.5 ,0.25\n0,1,\"2\"");
    nn::CsvOptions o;
    o.header = true;
    o.label_column = 0;
    nn::Dataset d;
    nn::Status st = nn::load_csv(p.c_str(), o, &d);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(d.n, 2u);
    EXPECT_EQ(d.f32, (std::vector<float>{0.5f, 0.25f, 1.0f, 2.0f}));
    EXPECT_EQ(d.labels, (std::vector<int32_t>{1, 0}));
    EXPECT_EQ(d.num_classes, 2);
}

TEST_F(DataTest, CsvRegressionMiddleColumnSemicolons) {
    std::string p = write_text("t.csv", "1;3.25;2\n-1;+.5;4.\n");
    nn::CsvOptions o;
    o.classification = false;
    o.label_column = 1;
    o.delimiter = ';';
    nn::Dataset d;
    nn::Status st = nn::load_csv(p.c_str(), o, &d);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(d.n, 2u);
    EXPECT_EQ(d.f32, (std::vector<float>{1.0f, 2.0f, -1.0f, 4.0f}));
    EXPECT_EQ(d.targets, (std::vector<float>{3.25f, 0.5f}));
    EXPECT_EQ(d.target_size, 1);
    EXPECT_EQ(d.num_classes, 0);
    EXPECT_TRUE(d.labels.empty());
    EXPECT_EQ(d.target_width(), 1);
}

TEST_F(DataTest, CsvCrlfAndBlankLines) {
    std::string p = write_text("t.csv", "a,b,y\r\n\r\n1,2,1\r\n   \r\n3,4,0\r\n\r\n");
    nn::CsvOptions o;
    o.header = true;
    nn::Dataset d;
    nn::Status st = nn::load_csv(p.c_str(), o, &d);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(d.n, 2u);
    EXPECT_EQ(d.f32, (std::vector<float>{1, 2, 3, 4}));
    EXPECT_EQ(d.labels, (std::vector<int32_t>{1, 0}));
}

TEST_F(DataTest, CsvNumbersParseLikeStrtod) {
    const char* cells[] = {"0.1",   "1e-3",  "-0.5", "123456.789", "6.02214076e23",
                           "1e-40", "0.000012345678901234567890123", "98765432109876543210",
                           "3.4e38"};
    std::string text;
    for (const char* c : cells) text += std::string(c) + ",0\n";
    std::string p = write_text("t.csv", text);
    nn::Dataset d;
    nn::Status st = nn::load_csv(p.c_str(), nn::CsvOptions(), &d);
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_EQ(d.n, sizeof cells / sizeof cells[0]);
    for (size_t i = 0; i < d.n; ++i)
        EXPECT_EQ(d.f32[i], std::strtof(cells[i], nullptr)) << cells[i];
}

TEST_F(DataTest, CsvRaggedRow) {
    std::string p = write_text("t.csv", "1,2,3,4,0\n5,6,7,8,1\n1,2,3,0\n");
    nn::Dataset d = sentinel();
    nn::Status st = nn::load_csv(p.c_str(), nn::CsvOptions(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, (p + " line 3: 4 cells, expected 5").c_str());
    expect_sentinel(d);
}

TEST_F(DataTest, CsvNonNumericCell) {
    std::string p = write_text("t.csv", "1,2,3,0\n4,5,abc,1\n");
    nn::Dataset d = sentinel();
    nn::Status st = nn::load_csv(p.c_str(), nn::CsvOptions(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, (p + " line 2, column 3: 'abc' is not a number").c_str());
    expect_sentinel(d);
    // Trailing garbage after a number is not a number either.
    p = write_text("u.csv", "1,2,0\n4,5.5x,1\n");
    st = nn::load_csv(p.c_str(), nn::CsvOptions(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, "'5.5x'");
    // nan / inf are rejected, and so is an empty cell.
    p = write_text("v.csv", "nan,0\n");
    EXPECT_FALSE(nn::load_csv(p.c_str(), nn::CsvOptions(), &d).ok());
    p = write_text("w.csv", "1e999,0\n");
    st = nn::load_csv(p.c_str(), nn::CsvOptions(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, "out of range");
    p = write_text("x.csv", "1,,0\n");
    st = nn::load_csv(p.c_str(), nn::CsvOptions(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, "column 2: empty cell");
    expect_sentinel(d);
}

TEST_F(DataTest, CsvBadLabel) {
    std::string p = write_text("t.csv", "1,2,0\n4,5,1.5\n");
    nn::Dataset d = sentinel();
    nn::Status st = nn::load_csv(p.c_str(), nn::CsvOptions(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, "line 2, column 3");
    EXPECT_MSG_HAS(st, "'1.5'");
    p = write_text("u.csv", "1,2,-1\n");
    st = nn::load_csv(p.c_str(), nn::CsvOptions(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, "'-1'");
    nn::CsvOptions o;
    o.label_column = 3;
    p = write_text("v.csv", "1,2,0\n");
    st = nn::load_csv(p.c_str(), o, &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, "label_column 3");
    EXPECT_MSG_HAS(st, "3 columns");
    expect_sentinel(d);
}

TEST_F(DataTest, CsvEmptyFile) {
    std::string p = write_text("t.csv", "");
    nn::Dataset d = sentinel();
    nn::Status st = nn::load_csv(p.c_str(), nn::CsvOptions(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, p.c_str());
    EXPECT_MSG_HAS(st, "empty");
    p = write_text("u.csv", "\n \r\n\n");
    st = nn::load_csv(p.c_str(), nn::CsvOptions(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, "empty");
    std::string missing = dir + "/none.csv";
    st = nn::load_csv(missing.c_str(), nn::CsvOptions(), &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, missing.c_str());
    expect_sentinel(d);
}

TEST_F(DataTest, CsvHeaderOnly) {
    std::string p = write_text("t.csv", "a,b,label\r\n");
    nn::CsvOptions o;
    o.header = true;
    nn::Dataset d = sentinel();
    nn::Status st = nn::load_csv(p.c_str(), o, &d);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, p.c_str());
    EXPECT_MSG_HAS(st, "no data rows");
    expect_sentinel(d);
}

// ---------------------------------------------------------------------------
// gather, fit_normalization, split
// ---------------------------------------------------------------------------

nn::Dataset small_u8() {
    nn::Dataset d;
    d.u8 = {0, 128, 255, 10, 20, 30};
    d.sample = nn::make_shape({3});
    d.n = 2;
    d.labels = {2, 0};
    d.num_classes = 3;
    return d;
}

TEST(DataGather, ScaleNormaliseOneHot) {
    nn::Dataset d = small_u8();
    d.scale = 0.5f;
    d.mean = {1, 2, 3};
    d.inv_std = {2, 0.5f, 1};
    d.one_hot = true;
    const uint32_t idx[2] = {1, 0};
    float x[6];
    float y[6];
    int32_t lab[2] = {-7, -7};
    nn::gather(d, idx, 2, x, lab, y);
    // sample 1: (10*.5-1)*2, (20*.5-2)*.5, (30*.5-3)*1; sample 0 likewise.
    const float want_x[6] = {8, 4, 12, -2, 31, 124.5f};
    for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(x[i], want_x[i]) << i;
    const float want_y[6] = {1, 0, 0, 0, 0, 1};
    for (int i = 0; i < 6; ++i) EXPECT_EQ(y[i], want_y[i]) << i;
    EXPECT_EQ(lab[0], 0);  // labels are written too, one-hot or not
    EXPECT_EQ(lab[1], 2);
    EXPECT_EQ(d.target_width(), 3);
}

TEST(DataGather, LabelsNoNormalisationAndNullOutputs) {
    nn::Dataset d = small_u8();
    d.scale = 1.0f / 255;
    const uint32_t idx[3] = {0, 1, 0};
    float x[9];
    int32_t lab[3] = {0, 0, 0};
    float y[3] = {-1, -1, -1};
    nn::gather(d, idx, 3, x, lab, y);
    EXPECT_FLOAT_EQ(x[2], 1.0f);
    EXPECT_FLOAT_EQ(x[1], 128.0f / 255);
    EXPECT_FLOAT_EQ(x[3], 10.0f / 255);
    EXPECT_EQ(lab[0], 2);
    EXPECT_EQ(lab[1], 0);
    EXPECT_EQ(lab[2], 2);
    EXPECT_EQ(y[0], -1);  // labels delivered as labels: values untouched
    int32_t lab2[1] = {5};
    nn::gather(d, idx + 1, 1, nullptr, lab2, nullptr);  // targets only
    EXPECT_EQ(lab2[0], 0);
    nn::gather(d, idx, 1, x, nullptr, nullptr);  // features only
    EXPECT_FLOAT_EQ(x[0], 0.0f);
}

// The next batch's rows are only prefetched: the output is the same with or
// without them, and a next index outside the set is skipped, not read.
TEST(DataGather, NextBatchRowsChangeNothing) {
    nn::Dataset d = small_u8();
    d.scale = 1.0f / 255;
    const uint32_t idx[2] = {1, 0}, next[3] = {0, 1000000, 1};
    float x1[6], x2[6];
    int32_t l1[2], l2[2];
    nn::gather(d, idx, 2, x1, l1, nullptr);
    nn::gather(d, idx, 2, x2, l2, nullptr, next, 3);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(x1[i], x2[i]) << i;
    EXPECT_EQ(l1[0], l2[0]);
    EXPECT_EQ(l1[1], l2[1]);
}

TEST(DataGather, WideRowsBlockAndTail) {
    // 37 features: two blocks of 16 and a tail of 5, u8 and f32 alike.
    const size_t F = 37, n = 3;
    nn::Dataset d;
    d.u8 = iota_bytes(n * F, 13);
    d.sample = nn::make_shape({F});
    d.n = n;
    d.scale = 1.0f / 255;
    for (size_t f = 0; f < F; ++f) {
        d.mean.push_back(0.01f * (float)f);
        d.inv_std.push_back(1.0f + 0.1f * (float)f);
    }
    nn::Dataset g = d;
    g.u8.clear();
    for (uint8_t v : d.u8) g.f32.push_back((float)v);
    const uint32_t idx[3] = {2, 0, 1};
    float x[n * F], xf[n * F];
    nn::gather(d, idx, 3, x, nullptr, nullptr);
    nn::gather(g, idx, 3, xf, nullptr, nullptr);
    for (size_t i = 0; i < n; ++i)
        for (size_t f = 0; f < F; ++f) {
            float raw = d.u8[idx[i] * F + f];
            float want = (raw * d.scale - d.mean[f]) * d.inv_std[f];
            EXPECT_NEAR(x[i * F + f], want, 1e-6f * (1 + std::fabs(want))) << i << "," << f;
            EXPECT_EQ(xf[i * F + f], x[i * F + f]) << i << "," << f;
        }
    d.mean.clear();
    d.inv_std.clear();
    nn::gather(d, idx, 3, x, nullptr, nullptr);
    for (size_t f = 0; f < F; ++f) EXPECT_FLOAT_EQ(x[F + f], d.u8[f] / 255.0f) << f;
}

TEST(DataGather, RegressionTargetsFromF32) {
    nn::Dataset d;
    d.f32 = {1, 2, 3, 4};
    d.sample = nn::make_shape({2});
    d.n = 2;
    d.targets = {10, 11, 20, 21};
    d.target_size = 2;
    d.scale = 2.0f;
    EXPECT_EQ(d.target_width(), 2);
    const uint32_t idx[2] = {1, 0};
    float x[4], y[4];
    nn::gather(d, idx, 2, x, nullptr, y);
    EXPECT_EQ(std::vector<float>(x, x + 4), (std::vector<float>{6, 8, 2, 4}));
    EXPECT_EQ(std::vector<float>(y, y + 4), (std::vector<float>{20, 21, 10, 11}));
}

TEST(DataNormalization, GatheredDataHasMeanZeroStdOne) {
    nn::Dataset d;
    const size_t n = 500, F = 4;
    d.u8.resize(n * F);
    nn::Rng rng(3);
    for (size_t i = 0; i < n; ++i) {
        d.u8[i * F + 0] = (uint8_t)rng.below(256);
        d.u8[i * F + 1] = (uint8_t)(100 + rng.below(10));
        d.u8[i * F + 2] = 77;  // constant: inv_std stays 1
        d.u8[i * F + 3] = (uint8_t)(rng.below(2) * 255);
    }
    d.sample = nn::make_shape({1, 2, 2});
    d.n = n;
    d.scale = 1.0f / 255;
    nn::fit_normalization(d, d);  // to may be from
    ASSERT_EQ(d.mean.size(), F);
    ASSERT_EQ(d.inv_std.size(), F);
    EXPECT_EQ(d.inv_std[2], 1.0f);
    EXPECT_FLOAT_EQ(d.mean[2], 77.0f / 255);
    std::vector<uint32_t> idx(n);
    for (size_t i = 0; i < n; ++i) idx[i] = (uint32_t)i;
    std::vector<float> x(n * F);
    nn::gather(d, idx.data(), (int)n, x.data(), nullptr, nullptr);
    for (size_t f = 0; f < F; ++f) {
        double s = 0, ss = 0;
        for (size_t i = 0; i < n; ++i) s += x[i * F + f];
        double m = s / n;
        for (size_t i = 0; i < n; ++i) ss += (x[i * F + f] - m) * (x[i * F + f] - m);
        double sd = std::sqrt(ss / n);
        EXPECT_NEAR(m, 0.0, 1e-5) << "feature " << f;
        if (f != 2) EXPECT_NEAR(sd, 1.0, 1e-4) << "feature " << f;
        else EXPECT_NEAR(sd, 0.0, 1e-6);
    }
    // Fitting a second set from the first copies the first's statistics.
    nn::Dataset other = small_u8();
    other.sample = nn::make_shape({4});
    other.u8 = {1, 2, 3, 4};
    other.n = 1;
    other.labels = {0};
    nn::fit_normalization(other, d);
    EXPECT_EQ(other.mean, d.mean);
    EXPECT_EQ(other.inv_std, d.inv_std);
}

TEST(DataSplit, SizesContentsAndMetadata) {
    nn::Dataset d;
    for (int i = 0; i < 10; ++i) {
        d.f32.push_back((float)i);
        d.f32.push_back((float)(100 + i));
        d.labels.push_back(i % 3);
    }
    d.n = 10;
    d.sample = nn::make_shape({2});
    d.num_classes = 3;
    d.scale = 0.5f;
    d.mean = {1, 2};
    d.inv_std = {3, 4};
    d.one_hot = true;
    nn::Dataset v = sentinel();
    nn::Status st = nn::split(d, 0.3f, &v);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(d.n, 7u);
    EXPECT_EQ(d.f32.size(), 14u);
    EXPECT_EQ(d.labels.size(), 7u);
    EXPECT_EQ(d.f32[13], 106.0f);
    EXPECT_EQ(v.n, 3u);
    EXPECT_EQ(v.f32, (std::vector<float>{7, 107, 8, 108, 9, 109}));
    EXPECT_EQ(v.labels, (std::vector<int32_t>{1, 2, 0}));
    EXPECT_EQ(v.sample, d.sample);
    EXPECT_EQ(v.scale, 0.5f);
    EXPECT_EQ(v.mean, d.mean);
    EXPECT_EQ(v.inv_std, d.inv_std);
    EXPECT_EQ(v.num_classes, 3);
    EXPECT_TRUE(v.one_hot);
}

TEST(DataSplit, U8AndRegression) {
    nn::Dataset d;
    d.u8 = {1, 2, 3, 4, 5, 6, 7, 8};
    d.sample = nn::make_shape({1, 1, 2});
    d.n = 4;
    d.targets = {10, 20, 30, 40};
    d.target_size = 1;
    nn::Dataset v;
    ASSERT_TRUE(nn::split(d, 0.5f, &v).ok());
    EXPECT_EQ(d.u8, (std::vector<uint8_t>{1, 2, 3, 4}));
    EXPECT_EQ(v.u8, (std::vector<uint8_t>{5, 6, 7, 8}));
    EXPECT_EQ(d.targets, (std::vector<float>{10, 20}));
    EXPECT_EQ(v.targets, (std::vector<float>{30, 40}));
    EXPECT_EQ(v.target_size, 1);
    EXPECT_EQ(v.num_classes, 0);
}

TEST(DataSplit, BadFractions) {
    nn::Dataset d;
    d.f32 = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    d.sample = nn::make_shape({1});
    d.n = 10;
    d.labels = {0, 1, 0, 1, 0, 1, 0, 1, 0, 1};
    d.num_classes = 2;
    const float bad[] = {0.0f, 1.0f, -0.5f, 1.5f, NAN, 0.01f, 0.99f};
    for (float f : bad) {
        nn::Dataset v = sentinel();
        nn::Status st = nn::split(d, f, &v);
        EXPECT_FALSE(st.ok()) << f;
        EXPECT_EQ(d.n, 10u);
        EXPECT_EQ(d.f32.size(), 10u);
        expect_sentinel(v);
    }
    nn::Dataset v;
    nn::Status st = nn::split(d, 0.01f, &v);
    EXPECT_MSG_HAS(st, "0.01");
    EXPECT_MSG_HAS(st, "10 samples");
    st = nn::split(d, 1.5f, &v);
    EXPECT_MSG_HAS(st, "1.5");
    EXPECT_FALSE(nn::split(d, 0.5f, nullptr).ok());
}

// ---------------------------------------------------------------------------
// BatchIterator
// ---------------------------------------------------------------------------

std::vector<uint32_t> run_epoch(nn::BatchIterator& it, std::vector<int>* sizes) {
    std::vector<uint32_t> seen;
    it.start_epoch();
    const uint32_t* idx = nullptr;
    int b;
    while ((b = it.next(&idx)) > 0) {
        if (sizes) sizes->push_back(b);
        seen.insert(seen.end(), idx, idx + b);
    }
    EXPECT_EQ(it.next(&idx), 0);  // stays at the end
    return seen;
}

TEST(DataBatches, EveryIndexOncePerEpoch) {
    nn::BatchIterator it;
    ASSERT_TRUE(it.init(5, 23, 4, true, 7).ok());
    EXPECT_EQ(it.batches_per_epoch(), 6u);
    std::vector<int> sizes;
    std::vector<uint32_t> e1 = run_epoch(it, &sizes);
    EXPECT_EQ(sizes, (std::vector<int>{4, 4, 4, 4, 4, 3}));
    std::vector<uint32_t> sorted = e1;
    std::sort(sorted.begin(), sorted.end());
    for (uint32_t i = 0; i < 23; ++i) EXPECT_EQ(sorted[i], 5 + i);
    std::vector<uint32_t> e2 = run_epoch(it, nullptr);
    EXPECT_NE(e1, e2);  // reshuffled
    std::sort(e2.begin(), e2.end());
    EXPECT_EQ(e2, sorted);
    // Shuffled at all: not the identity order.
    std::vector<uint32_t> ident(23);
    for (uint32_t i = 0; i < 23; ++i) ident[i] = 5 + i;
    EXPECT_NE(e1, ident);
}

TEST(DataBatches, DeterministicForASeed) {
    nn::BatchIterator a, b, c;
    ASSERT_TRUE(a.init(0, 100, 16, true, 42).ok());
    ASSERT_TRUE(b.init(0, 100, 16, true, 42).ok());
    ASSERT_TRUE(c.init(0, 100, 16, true, 43).ok());
    for (int epoch = 0; epoch < 3; ++epoch) {
        std::vector<uint32_t> ea = run_epoch(a, nullptr), eb = run_epoch(b, nullptr),
                              ec = run_epoch(c, nullptr);
        EXPECT_EQ(ea, eb) << "epoch " << epoch;
        EXPECT_NE(ea, ec) << "epoch " << epoch;
    }
}

TEST(DataBatches, DropLastAndNoShuffle) {
    nn::BatchIterator it;
    ASSERT_TRUE(it.init(0, 23, 4, false, 1, true).ok());
    EXPECT_EQ(it.batches_per_epoch(), 5u);
    std::vector<int> sizes;
    std::vector<uint32_t> e = run_epoch(it, &sizes);
    EXPECT_EQ(sizes, (std::vector<int>{4, 4, 4, 4, 4}));
    ASSERT_EQ(e.size(), 20u);
    for (uint32_t i = 0; i < 20; ++i) EXPECT_EQ(e[i], i);  // in order
    // One batch larger than the set, without drop_last: one partial batch.
    ASSERT_TRUE(it.init(0, 3, 8, true, 1).ok());
    EXPECT_EQ(it.batches_per_epoch(), 1u);
    sizes.clear();
    run_epoch(it, &sizes);
    EXPECT_EQ(sizes, (std::vector<int>{3}));
}

// peek() shows the batch next() will return, without taking it, and 0 at
// the end of the epoch (also when drop_last leaves only a partial batch).
TEST(DataBatches, PeekShowsTheNextBatch) {
    for (bool drop_last : {false, true}) {
        nn::BatchIterator it;
        ASSERT_TRUE(it.init(0, 23, 4, true, 3, drop_last).ok());
        it.start_epoch();
        const uint32_t *p = nullptr, *n = nullptr;
        int steps = 0, b;
        for (;;) {
            const int pb = it.peek(&p);
            EXPECT_EQ(it.peek(nullptr), pb);  // peeking again changes nothing
            b = it.next(&n);
            ASSERT_EQ(pb, b) << "step " << steps;
            if (b == 0) break;
            EXPECT_EQ(p, n);
            ++steps;
        }
        EXPECT_EQ(steps, drop_last ? 5 : 6);
        EXPECT_EQ(it.peek(&p), 0);
    }
}

TEST(DataBatches, BadArguments) {
    nn::BatchIterator it;
    nn::Status st = it.init(0, 10, 0, true, 1);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, "batch size 0");
    EXPECT_MSG_HAS(st, "10 samples");
    st = it.init(0, 0, 32, true, 1);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, "0 samples");
    st = it.init(0, 10, -3, true, 1);
    EXPECT_MSG_HAS(st, "-3");
    st = it.init(0, 5, 8, true, 1, true);
    EXPECT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, "5 samples");
    EXPECT_MSG_HAS(st, "8");
    const uint32_t* idx = nullptr;
    EXPECT_EQ(it.next(&idx), 0);  // never initialised: no batches
}

// ---------------------------------------------------------------------------
// Synthetic sets
// ---------------------------------------------------------------------------

TEST(DataSynthetic, SpiralsDeterministicBalancedShuffled) {
    nn::Dataset a, b, c;
    nn::make_spirals(&a, 100, 3, 0.2f, 5);
    nn::make_spirals(&b, 100, 3, 0.2f, 5);
    nn::make_spirals(&c, 100, 3, 0.2f, 6);
    EXPECT_EQ(a.n, 300u);
    EXPECT_EQ(a.sample, nn::make_shape({2}));
    EXPECT_EQ(a.num_classes, 3);
    ASSERT_EQ(a.f32.size(), 600u);
    EXPECT_EQ(a.f32, b.f32);
    EXPECT_EQ(a.labels, b.labels);
    EXPECT_NE(a.f32, c.f32);
    int count[3] = {0, 0, 0}, tail[3] = {0, 0, 0};
    for (size_t i = 0; i < a.n; ++i) {
        ASSERT_TRUE(a.labels[i] >= 0 && a.labels[i] < 3);
        ++count[a.labels[i]];
        if (i >= 240) ++tail[a.labels[i]];
        float r = std::sqrt(a.f32[2 * i] * a.f32[2 * i] + a.f32[2 * i + 1] * a.f32[2 * i + 1]);
        EXPECT_LE(r, 1.0f + 1e-5f);  // noise moves the angle, not the radius
    }
    for (int k = 0; k < 3; ++k) {
        EXPECT_EQ(count[k], 100);
        EXPECT_GT(tail[k], 0);  // a 20 % tail split holds every class
    }
}

TEST(DataSynthetic, CirclesDeterministicBalanced) {
    nn::Dataset a, b;
    nn::make_circles(&a, 200, 0.0f, 0.5f, 9);
    nn::make_circles(&b, 200, 0.0f, 0.5f, 9);
    EXPECT_EQ(a.n, 200u);
    EXPECT_EQ(a.num_classes, 2);
    EXPECT_EQ(a.f32, b.f32);
    EXPECT_EQ(a.labels, b.labels);
    int count[2] = {0, 0}, tail[2] = {0, 0};
    for (size_t i = 0; i < a.n; ++i) {
        int l = a.labels[i];
        ASSERT_TRUE(l == 0 || l == 1);
        ++count[l];
        if (i >= 160) ++tail[l];
        float r = std::sqrt(a.f32[2 * i] * a.f32[2 * i] + a.f32[2 * i + 1] * a.f32[2 * i + 1]);
        EXPECT_NEAR(r, l == 0 ? 1.0f : 0.5f, 1e-5f);  // outer 0, inner `factor` 1
    }
    EXPECT_EQ(count[0], 100);
    EXPECT_EQ(count[1], 100);
    EXPECT_GT(tail[0], 0);
    EXPECT_GT(tail[1], 0);
    nn::Dataset n1, n2;
    nn::make_circles(&n1, 200, 0.1f, 0.5f, 9);
    nn::make_circles(&n2, 200, 0.1f, 0.5f, 10);
    EXPECT_NE(n1.f32, a.f32);  // noise moves the points
    EXPECT_NE(n1.f32, n2.f32);
}

// --- CIFAR-10 binary batches -------------------------------------------------

// One CIFAR-10 record: the label byte, then the R, G and B planes of 32x32.
// Pixel (c, y, x) of record `seed` holds (seed * 7 + c * 50 + y * 3 + x) % 256,
// so every position of every record is told apart.
std::vector<uint8_t> cifar_record(int label, int seed) {
    std::vector<uint8_t> r(3073);
    r[0] = (uint8_t)label;
    for (int c = 0; c < 3; ++c)
        for (int y = 0; y < 32; ++y)
            for (int x = 0; x < 32; ++x)
                r[1 + c * 1024 + y * 32 + x] = (uint8_t)((seed * 7 + c * 50 + y * 3 + x) % 256);
    return r;
}
std::vector<uint8_t> cifar_file(const std::vector<int>& labels, int first_seed) {
    std::vector<uint8_t> b;
    for (size_t i = 0; i < labels.size(); ++i) {
        std::vector<uint8_t> r = cifar_record(labels[i], first_seed + (int)i);
        b.insert(b.end(), r.begin(), r.end());
    }
    return b;
}

TEST_F(DataTest, Cifar10ReadsBatchesInOrderWithPlanesAsCHW) {
    int seed = 0;
    std::vector<int> all_labels;
    const std::vector<int> per_file[5] = {{3, 9}, {0}, {1, 2, 8}, {7}, {5}};
    for (int i = 0; i < 5; ++i) {
        char name[32];
        std::snprintf(name, sizeof name, "data_batch_%d.bin", i + 1);
        write(name, cifar_file(per_file[i], seed));
        seed += (int)per_file[i].size();
        all_labels.insert(all_labels.end(), per_file[i].begin(), per_file[i].end());
    }
    write("test_batch.bin", cifar_file({4, 6}, 100));
    nn::Dataset train, test;
    nn::Status st = nn::load_cifar10(dir.c_str(), &train, &test);
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_EQ(train.n, all_labels.size());
    ASSERT_EQ(test.n, 2u);
    EXPECT_EQ(train.num_classes, 10);
    EXPECT_EQ(train.sample, nn::make_shape({3, 32, 32}));
    for (size_t i = 0; i < train.n; ++i) EXPECT_EQ(train.labels[i], all_labels[i]) << "sample " << i;
    EXPECT_EQ(test.labels[0], 4);
    EXPECT_EQ(test.labels[1], 6);
    // Pixel (c, y, x) of sample i is feature c*1024 + y*32 + x.
    for (size_t i : {(size_t)0, (size_t)4, train.n - 1})
        for (int c = 0; c < 3; ++c)
            for (int y : {0, 17, 31})
                for (int x : {0, 5, 31})
                    ASSERT_EQ(train.u8[i * 3072 + c * 1024 + y * 32 + x], (uint8_t)((i * 7 + c * 50 + y * 3 + x) % 256))
                        << "sample " << i << " pixel " << c << "," << y << "," << x;
    EXPECT_EQ(test.u8[1 * 3072 + 2 * 1024 + 31 * 32 + 31], (uint8_t)((101 * 7 + 100 + 93 + 31) % 256));
    // Converted per batch like any uint8 set.
    train.scale = 1.0f / 255;
    const uint32_t idx[1] = {4};
    std::vector<float> x(3072);
    int32_t label = -1;
    nn::gather(train, idx, 1, x.data(), &label, nullptr);
    EXPECT_EQ(label, all_labels[4]);
    EXPECT_FLOAT_EQ(x[1024 + 32 + 1], (float)((4 * 7 + 50 + 3 + 1) % 256) / 255.0f);
}

TEST_F(DataTest, Cifar10BadFilesAreClearErrorsAndChangeNothing) {
    nn::Dataset out;
    out.n = 12345;  // must survive every failed load
    struct Case {
        const char* name;
        std::vector<uint8_t> bytes;
        const char* expect[3];
    };
    std::vector<uint8_t> ragged = cifar_file({1, 2}, 0);
    ragged.resize(ragged.size() + 100);
    std::vector<uint8_t> truncated = cifar_file({1, 2}, 0);
    truncated.pop_back();
    const Case cases[] = {
        {"ragged.bin", ragged, {"6246 bytes", "3073-byte", "100 bytes over"}},
        {"truncated.bin", truncated, {"6145 bytes", "1 records", "3072 bytes over"}},
        {"label.bin", cifar_file({3, 10, 2}, 0), {"record 1", "label 10", "0..9"}},
        {"empty.bin", {}, {"empty file", "", ""}},
    };
    for (const Case& c : cases) {
        const std::string p = write(c.name, c.bytes);
        const char* paths[1] = {p.c_str()};
        nn::Status st = nn::load_cifar10_files(paths, 1, &out);
        ASSERT_FALSE(st.ok()) << c.name;
        EXPECT_MSG_HAS(st, c.name);
        for (const char* e : c.expect)
            if (e[0]) {
                EXPECT_MSG_HAS(st, e) << " (" << c.name << ")";
            }
        EXPECT_EQ(out.n, 12345u) << c.name;
    }
    // A good file followed by a bad one: nothing is kept.
    const std::string good = write("good.bin", cifar_file({1}, 0));
    const std::string bad = write("bad_label.bin", cifar_file({11}, 0));
    const char* both[2] = {good.c_str(), bad.c_str()};
    nn::Status st = nn::load_cifar10_files(both, 2, &out);
    ASSERT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, "label 11");
    EXPECT_EQ(out.n, 12345u);
    // A missing batch names the file.
    st = nn::load_cifar10(dir.c_str(), &out, nullptr);
    ASSERT_FALSE(st.ok());
    EXPECT_MSG_HAS(st, "data_batch_1.bin");
    EXPECT_EQ(out.n, 12345u);
}

TEST(DataNormalization, ChannelStatisticsMatchADoubleReference) {
    // 3 samples of (2, 2, 3): channel statistics over 3 * 6 values each.
    nn::Dataset d;
    d.sample = nn::make_shape({2, 2, 3});
    d.n = 3;
    d.num_classes = 2;
    d.labels = {0, 1, 0};
    d.scale = 1.0f / 255;
    for (int i = 0; i < 36; ++i) d.u8.push_back((uint8_t)((i * 37 + 11) % 256));
    nn::fit_channel_normalization(d, d);
    ASSERT_EQ(d.mean.size(), 12u);
    for (int c = 0; c < 2; ++c) {
        double sum = 0, sq = 0;
        for (int i = 0; i < 3; ++i)
            for (int k = 0; k < 6; ++k) sum += d.u8[i * 12 + c * 6 + k] / 255.0;
        const double mean = sum / 18;
        for (int i = 0; i < 3; ++i)
            for (int k = 0; k < 6; ++k) sq += (d.u8[i * 12 + c * 6 + k] / 255.0 - mean) * (d.u8[i * 12 + c * 6 + k] / 255.0 - mean);
        const double sd = std::sqrt(sq / 18);
        for (int k = 0; k < 6; ++k) {
            EXPECT_NEAR(d.mean[c * 6 + k], mean, 1e-6) << "channel " << c;
            EXPECT_NEAR(d.inv_std[c * 6 + k], 1.0 / sd, 1e-5 / sd) << "channel " << c;
        }
    }
    // gather then gives each channel mean 0 and variance 1 over the set.
    const uint32_t idx[3] = {0, 1, 2};
    std::vector<float> x(36);
    nn::gather(d, idx, 3, x.data(), nullptr, nullptr);
    for (int c = 0; c < 2; ++c) {
        double sum = 0, sq = 0;
        for (int i = 0; i < 3; ++i)
            for (int k = 0; k < 6; ++k) sum += x[i * 12 + c * 6 + k], sq += (double)x[i * 12 + c * 6 + k] * x[i * 12 + c * 6 + k];
        EXPECT_NEAR(sum / 18, 0.0, 1e-5);
        EXPECT_NEAR(sq / 18, 1.0, 1e-4);
    }
}

}  // namespace
