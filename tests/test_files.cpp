// Files: the safetensors reader (one test per strict-validation rule, on
// bytes built here by hand, independent of the writer), the atomic writer,
// and model files (save, load_weights, load_model).
//
// Every reader error starts "safetensors <what>:" and carries one rule's
// words; the tests check the words, and where two rules could be confused,
// that the other rule's words are absent.
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "nn.hpp"

namespace {

using Bytes = std::vector<uint8_t>;

// --- Building files by hand ---------------------------------------------------

template <class T>
void put_le(Bytes& b, T v) {  // little-endian whatever the host
    uint64_t u = 0;
    std::memcpy(&u, &v, sizeof v);
    for (size_t i = 0; i < sizeof v; ++i) b.push_back((uint8_t)(u >> (8 * i)));
}

// 8-byte length n (as given), then the header bytes, then the data.
Bytes st_raw(uint64_t n, const std::string& header, const Bytes& data) {
    Bytes b;
    put_le<uint64_t>(b, n);
    b.insert(b.end(), header.begin(), header.end());
    b.insert(b.end(), data.begin(), data.end());
    return b;
}

// A file whose length field is the header's length; the header padded with
// spaces to a multiple of 8, as the format asks.
Bytes st_file(std::string header, const Bytes& data = {}) {
    while (header.size() % 8) header += ' ';
    return st_raw(header.size(), header, data);
}

// "name":{"dtype":..,"shape":[..],"data_offsets":[b,e]}
std::string ent(const std::string& name, const char* dtype, const char* shape, uint64_t b, uint64_t e) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":[" + shape +
           "],\"data_offsets\":[" + std::to_string(b) + "," + std::to_string(e) + "]}";
}

Bytes zeros(size_t n) { return Bytes(n, 0); }

nn::Status parse(const Bytes& b, nn::SafeTensors* out = nullptr) {
    nn::SafeTensors tmp;
    return nn::safetensors_parse(b.data(), b.size(), "t.st", out ? out : &tmp);
}

bool has(const char* msg, const char* word) { return std::strstr(msg, word) != nullptr; }

// The file is rejected, the message starts "safetensors t.st:", contains
// `want` (and `also` when given) and none of `not_want`.
::testing::AssertionResult Rejected(const Bytes& file, const char* want,
                                    std::initializer_list<const char*> not_want = {},
                                    const char* also = nullptr) {
    nn::Status st = parse(file);
    if (st.ok()) return ::testing::AssertionFailure() << "accepted; expected an error with \"" << want << "\"";
    const char* m = st.message();
    if (std::strncmp(m, "safetensors t.st:", 17) != 0)
        return ::testing::AssertionFailure() << "message does not start with \"safetensors t.st:\": " << m;
    if (!has(m, want)) return ::testing::AssertionFailure() << "no \"" << want << "\" in: " << m;
    if (also && !has(m, also)) return ::testing::AssertionFailure() << "no \"" << also << "\" in: " << m;
    for (const char* w : not_want)
        if (has(m, w)) return ::testing::AssertionFailure() << "\"" << w << "\" (another rule) in: " << m;
    return ::testing::AssertionSuccess() << m;
}

uint32_t float_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// A fresh directory per test, removed afterwards with what is in it.
class FileTest : public ::testing::Test {
protected:
    std::string dir;

    void SetUp() override {
        char tmpl[] = "/tmp/nn_files_XXXXXX";
        char* d = mkdtemp(tmpl);
        ASSERT_NE(d, nullptr);
        dir = d;
    }
    void TearDown() override {
        nn::set_write_fault_after(-1);
        for (const std::string& f : made) {
            std::remove(f.c_str());
            std::remove((f + ".tmp").c_str());
        }
        rmdir(dir.c_str());
    }
    std::string path(const char* name) {
        std::string p = dir + "/" + name;
        made.push_back(p);
        return p;
    }
    std::string write(const char* name, const Bytes& b) {
        std::string p = path(name);
        FILE* f = std::fopen(p.c_str(), "wb");
        EXPECT_NE(f, nullptr);
        if (f) {
            if (!b.empty()) {
                EXPECT_EQ(std::fwrite(b.data(), 1, b.size(), f), b.size());
            }
            std::fclose(f);
        }
        return p;
    }
    static bool exists(const std::string& p) {
        struct stat s;
        return stat(p.c_str(), &s) == 0;
    }
    static Bytes read(const std::string& p) {
        Bytes b;
        FILE* f = std::fopen(p.c_str(), "rb");
        if (!f) return b;
        uint8_t buf[4096];
        size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) b.insert(b.end(), buf, buf + n);
        std::fclose(f);
        return b;
    }

private:
    std::vector<std::string> made;
};

using SafeTensorsFile = FileTest;

}  // namespace

// ============================================================================
// Reading: a valid file built by hand
// ============================================================================

// Data in one order, the header in the reverse order: entries keep the
// header's order, offsets are the file's, and every dtype reads back.
TEST(SafeTensors, ParsesHandBuiltFileAndConvertsEveryFloatType) {
    Bytes data;
    std::vector<std::string> parts;  // header entries, in data order
    auto add = [&](const std::string& name, const char* dtype, const char* shape, const Bytes& bytes) {
        parts.push_back(ent(name, dtype, shape, data.size(), data.size() + bytes.size()));
        data.insert(data.end(), bytes.begin(), bytes.end());
    };
    Bytes b;
    for (float v : {1.5f, -0.25f, 3.0f, 1e-3f}) put_le(b, v);
    add("f32", "F32", "2,2", b);
    b.clear();
    // 1, -2, smallest subnormal 2^-24, largest subnormal 1023 * 2^-24, 65504,
    // -0, +inf, -inf, NaN
    for (uint16_t h : {0x3C00, 0xC000, 0x0001, 0x03FF, 0x7BFF, 0x8000, 0x7C00, 0xFC00, 0x7E00}) put_le(b, h);
    add("f16", "F16", "9", b);
    b.clear();
    for (uint16_t h : {0x3F80, 0xC0A0, 0x0001}) put_le(b, h);  // 1, -5, a float subnormal
    add("bf16", "BF16", "3", b);
    add("u8", "U8", "3", {1, 2, 3});
    b.clear();  // F64 at offset 43: not 8-aligned, on purpose
    for (double v : {0.5, -3.0, 0.1}) put_le(b, v);
    add("f64", "F64", "1,3", b);
    b.clear();
    for (int64_t v : {(int64_t)7, (int64_t)-3, (int64_t)1 << 40}) put_le(b, v);
    add("i64", "I64", "3", b);
    add("flag", "BOOL", "1", {1});
    add("i8", "I8", "2", {0xFF, 0x05});
    b.clear();
    put_le<int16_t>(b, -2);
    add("i16", "I16", "1", b);
    b.clear();
    put_le<int32_t>(b, 100000);
    add("i32", "I32", "1", b);
    b.clear();
    put_le(b, 2.5f);
    add("scalar", "F32", "", b);
    add("empty", "F32", "0,3", {});
    add("\xC3\xA9t\xC3\xA9", "F32", "0", {});  // a UTF-8 name, as bytes
    add("esc\\\"aped\\u00e9", "F32", "0", {});  // a JSON-escaped name

    std::string header = "{";
    for (size_t i = parts.size(); i-- > 0;) {
        header += parts[i] + ",";
        if (i == 5)
            header += "\"__metadata__\":{\"format\":\"pt\",\"note\":\"a\\\"b\\\\c\\n\\u00e9\\ud83d\\ude00/\","
                      "\"empty\":\"\"},";
    }
    header.back() = '}';
    const Bytes file = st_file(header, data);

    nn::SafeTensors st;
    nn::Status s = parse(file, &st);
    ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_EQ(st.bytes, file);
    EXPECT_EQ(st.data_start, 8 + ((header.size() + 7) / 8) * 8);

    const char* order[] = {"esc\"aped\xC3\xA9", "\xC3\xA9t\xC3\xA9", "empty", "scalar", "i32", "i16", "i8",
                           "flag", "i64", "f64", "u8", "bf16", "f16", "f32"};
    ASSERT_EQ(st.entries.size(), sizeof order / sizeof order[0]);
    for (size_t i = 0; i < st.entries.size(); ++i) EXPECT_EQ(st.entries[i].name, order[i]) << i;

    const nn::StEntry* e = st.find("f32");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->dtype, nn::DType::F32);
    EXPECT_EQ(e->ndim, 2);
    EXPECT_EQ(e->shape[0], 2u);
    EXPECT_EQ(e->shape[1], 2u);
    EXPECT_EQ(e->begin, 0u);
    EXPECT_EQ(e->end, 16u);
    EXPECT_EQ(e->numel(), 4u);
    float f[9];
    ASSERT_TRUE(st.to_f32(*e, f, 4).ok());
    EXPECT_EQ(f[0], 1.5f);
    EXPECT_EQ(f[1], -0.25f);
    EXPECT_EQ(f[2], 3.0f);
    EXPECT_EQ(f[3], 1e-3f);
    EXPECT_FALSE(st.to_f32(*e, f, 3).ok()) << "count must equal the element count";
    EXPECT_FALSE(st.to_f32(*e, f, 5).ok()) << "count must equal the element count";

    e = st.find("f16");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->dtype, nn::DType::F16);
    EXPECT_EQ(e->begin, 16u);
    EXPECT_EQ(e->end, 34u);
    ASSERT_TRUE(st.to_f32(*e, f, 9).ok());
    EXPECT_EQ(f[0], 1.0f);
    EXPECT_EQ(f[1], -2.0f);
    EXPECT_EQ(f[2], std::ldexp(1.0f, -24));
    EXPECT_EQ(f[3], std::ldexp(1023.0f, -24));
    EXPECT_EQ(f[4], 65504.0f);
    EXPECT_EQ(float_bits(f[5]), 0x80000000u) << "-0 keeps its sign";
    EXPECT_TRUE(std::isinf(f[6]) && f[6] > 0);
    EXPECT_TRUE(std::isinf(f[7]) && f[7] < 0);
    EXPECT_TRUE(std::isnan(f[8]));

    e = st.find("bf16");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->dtype, nn::DType::BF16);
    ASSERT_TRUE(st.to_f32(*e, f, 3).ok());
    EXPECT_EQ(f[0], 1.0f);
    EXPECT_EQ(f[1], -5.0f);
    EXPECT_EQ(float_bits(f[2]), 0x00010000u) << "BF16 is the top half of a float";

    e = st.find("f64");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->dtype, nn::DType::F64);
    EXPECT_EQ(e->ndim, 2);
    EXPECT_EQ(e->begin, 43u);
    EXPECT_EQ(e->end, 67u);
    ASSERT_TRUE(st.to_f32(*e, f, 3).ok());
    EXPECT_EQ(f[0], 0.5f);
    EXPECT_EQ(f[1], -3.0f);
    EXPECT_EQ(f[2], (float)0.1);

    e = st.find("i64");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->dtype, nn::DType::I64);
    ASSERT_TRUE(st.to_f32(*e, f, 3).ok());
    EXPECT_EQ(f[0], 7.0f);
    EXPECT_EQ(f[1], -3.0f);
    EXPECT_EQ(f[2], 1099511627776.0f);

    struct {
        const char* name;
        nn::DType t;
        size_t size;
        const char* dtype;
    } others[] = {{"u8", nn::DType::U8, 1, "U8"},    {"flag", nn::DType::BOOL, 1, "BOOL"},
                  {"i8", nn::DType::I8, 1, "I8"},    {"i16", nn::DType::I16, 2, "I16"},
                  {"i32", nn::DType::I32, 4, "I32"}, {"i64", nn::DType::I64, 8, "I64"},
                  {"f64", nn::DType::F64, 8, "F64"}, {"f16", nn::DType::F16, 2, "F16"},
                  {"f32", nn::DType::F32, 4, "F32"}, {"bf16", nn::DType::BF16, 2, "BF16"}};
    for (const auto& o : others) {
        e = st.find(o.name);
        ASSERT_NE(e, nullptr) << o.name;
        EXPECT_EQ(e->dtype, o.t) << o.name;
        EXPECT_EQ(nn::dtype_size(o.t), o.size) << o.name;
        EXPECT_STREQ(nn::dtype_name(o.t), o.dtype);
        EXPECT_EQ(e->end - e->begin, e->numel() * o.size) << o.name;
    }
    e = st.find("u8");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(0, std::memcmp(st.bytes.data() + st.data_start + e->begin, "\x01\x02\x03", 3));

    e = st.find("scalar");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->ndim, 0);
    EXPECT_EQ(e->numel(), 1u);
    ASSERT_TRUE(st.to_f32(*e, f, 1).ok());
    EXPECT_EQ(f[0], 2.5f);
    e = st.find("empty");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->ndim, 2);
    EXPECT_EQ(e->numel(), 0u);
    EXPECT_EQ(e->begin, e->end);
    EXPECT_NE(st.find("\xC3\xA9t\xC3\xA9"), nullptr);
    EXPECT_EQ(st.find("nope"), nullptr);

    EXPECT_EQ(st.metadata.size(), 3u);
    ASSERT_NE(st.meta("format"), nullptr);
    EXPECT_STREQ(st.meta("format"), "pt");
    ASSERT_NE(st.meta("note"), nullptr);
    EXPECT_STREQ(st.meta("note"), "a\"b\\c\n\xC3\xA9\xF0\x9F\x98\x80/") << "JSON escapes decoded";
    ASSERT_NE(st.meta("empty"), nullptr);
    EXPECT_STREQ(st.meta("empty"), "");
    EXPECT_EQ(st.meta("absent"), nullptr);
}

// No tensors and no data: a header "{}" reaching exactly the end of the file
// is a valid (empty) file; so is an empty __metadata__.
TEST(SafeTensors, EmptyHeaderWithNoDataIsValid) {
    for (const char* h : {"{}", "{\"__metadata__\":{}}", "{ }", "{\"__metadata__\":{\"k\":\"v\"}}"}) {
        nn::SafeTensors st;
        Bytes file = st_file(h);
        nn::Status s = parse(file, &st);
        ASSERT_TRUE(s.ok()) << h << ": " << s.message();
        EXPECT_TRUE(st.entries.empty()) << h;
        EXPECT_EQ(st.data_start, file.size()) << h;
    }
    // Exactly 8 + 2 bytes, no padding: still "{}" up to the end.
    nn::Status s = parse(st_raw(2, "{}", {}));
    EXPECT_TRUE(s.ok()) << s.message();
    // ...but a byte of data after it is a trailing byte.
    EXPECT_TRUE(Rejected(st_file("{}", {0}), "trailing", {"gap", "beyond the end"}));
}

// ============================================================================
// Reading: one test per strict-validation rule
// ============================================================================

TEST_F(SafeTensorsFile, ShorterThan8Bytes) {
    for (size_t n = 0; n < 8; ++n)
        EXPECT_TRUE(Rejected(Bytes(n, 0x02), "shorter than 8 bytes")) << n << " bytes";
    nn::SafeTensors st;
    nn::Status s = nn::safetensors_parse(nullptr, 0, "t.st", &st);
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(has(s.message(), "shorter than 8 bytes")) << s.message();

    // An empty file on disk: the message names the path.
    std::string p = write("empty.safetensors", {});
    s = nn::safetensors_load(p.c_str(), &st);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(std::string(s.message()).rfind("safetensors " + p + ":", 0), 0u) << s.message();
    EXPECT_TRUE(has(s.message(), "shorter than 8 bytes")) << s.message();
    // A file that does not exist: the path again.
    std::string missing = dir + "/no_such.safetensors";
    s = nn::safetensors_load(missing.c_str(), &st);
    ASSERT_FALSE(s.ok());
    EXPECT_TRUE(has(s.message(), missing.c_str())) << s.message();
}

TEST(SafeTensors, HeaderLengthOver100MB) {
    for (uint64_t n : {(uint64_t)104857601, (uint64_t)1 << 40, (uint64_t)1 << 63, ~(uint64_t)0})
        EXPECT_TRUE(Rejected(st_raw(n, "{}      ", {}), "100 MB")) << n;
}

TEST(SafeTensors, HeaderLengthBeyondTheEnd) {
    EXPECT_TRUE(Rejected(st_raw(16, "{}      ", {}), "beyond the end", {"100 MB", "JSON"}));
    EXPECT_TRUE(Rejected(st_raw(9, "{}      ", {}), "beyond the end", {"100 MB", "JSON"}));
    EXPECT_TRUE(Rejected(st_raw(1000, "{}", {}), "beyond the end", {"100 MB", "JSON"}));
}

TEST(SafeTensors, InvalidUtf8) {
    const char* bad[] = {
        "\xFF",              // never in UTF-8
        "\x80",              // a continuation byte alone
        "\xC3",              // a truncated 2-byte sequence (then the quote)
        "\xE2\x82",          // a truncated 3-byte sequence
        "\xC0\x80",          // overlong NUL
        "\xE0\x80\xAF",      // overlong '/'
        "\xED\xA0\x80",      // a UTF-16 surrogate, U+D800
        "\xF4\x90\x80\x80",  // beyond U+10FFFF
        "\xF8\x88\x80\x80\x80",  // a 5-byte form
    };
    for (const char* b : bad) {
        // In a metadata value, and in a tensor name.
        std::string h = std::string("{\"__metadata__\":{\"k\":\"x") + b + "y\"}}";
        EXPECT_TRUE(Rejected(st_file(h), "UTF-8")) << "metadata value with bytes " << ::testing::PrintToString(b);
        h = "{" + ent(std::string("t") + b, "F32", "1", 0, 4) + "}";
        EXPECT_TRUE(Rejected(st_file(h, zeros(4)), "UTF-8")) << "name with bytes " << ::testing::PrintToString(b);
    }
}

TEST(SafeTensors, InvalidJson) {
    const std::string a = ent("a", "F32", "1", 0, 4);
    const std::vector<std::string> bad = {
        "{",
        "{" + a,                                         // no closing brace
        "{\"a\" {\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",  // no colon
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],}}",  // trailing comma
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,],\"data_offsets\":[0,4]}}",  // trailing comma in array
        "{" + a + ",}",
        "{,}",
        "{'a':1}",
        "{a:1}",
        "{" + a + "} x",                                  // garbage after the object
        "{" + a + "}}",
        "{" + a + "}{}",
        "{\"__metadata__\":{\"k\":\"v\" \"k2\":\"w\"}}",      // no comma
        "{\"__metadata__\":{\"k\":\"\\q\"}}",              // unknown escape
        "{\"__metadata__\":{\"k\":\"\\u12\"}}",            // short \u escape
        "{\"__metadata__\":{\"k\":\"a\nb\"}}",             // raw control character in a string
        "{\"__metadata__\":{\"k\":\"v}}",                  // unterminated string
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}",
        "",                                               // empty header
    };
    for (const std::string& h : bad)
        EXPECT_TRUE(Rejected(st_file(h, zeros(4)), "JSON", {"UTF-8"})) << "header: " << h;
    // NUL padding instead of spaces: bytes after the JSON value.
    EXPECT_TRUE(Rejected(st_raw(8, std::string("{}\0\0\0\0\0\0", 8), {}), "JSON", {"UTF-8"}));
    // A zero-length header.
    EXPECT_TRUE(Rejected(st_raw(0, "", {}), "JSON"));
}

// Deep nesting must be an error (or a type error), never a stack overflow.
TEST(SafeTensors, DeepNestingIsAnErrorNotACrash) {
    const size_t depth = 100000;
    for (int where = 0; where < 2; ++where) {
        std::string h = where == 0 ? "{\"__metadata__\":{\"k\":" : "{\"a\":";
        h += std::string(depth, '[') + std::string(depth, ']') + (where == 0 ? "}}" : "}");
        nn::Status s = parse(st_file(h));
        ASSERT_FALSE(s.ok());
        EXPECT_EQ(std::strncmp(s.message(), "safetensors t.st:", 17), 0) << s.message();
    }
}

TEST(SafeTensors, DuplicateKeys) {
    // Two tensors with one name, each with its own bytes: not an overlap.
    EXPECT_TRUE(Rejected(st_file("{" + ent("dup_name", "F32", "1", 0, 4) + "," + ent("dup_name", "F32", "1", 4, 8) +
                                 "}", zeros(8)),
                         "duplicate key", {"overlap", "gap"}, "dup_name"));
    // The same key spelled with an escape is the same key.
    EXPECT_TRUE(Rejected(st_file("{" + ent("ab", "F32", "1", 0, 4) + "," + ent("\\u0061b", "F32", "1", 4, 8) + "}",
                                 zeros(8)),
                         "duplicate key", {"overlap", "gap"}));
    // Inside an entry.
    EXPECT_TRUE(Rejected(st_file("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                                 zeros(4)),
                         "duplicate key"));
    EXPECT_TRUE(Rejected(st_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],"
                                 "\"shape\":[1]}}",
                                 zeros(4)),
                         "duplicate key"));
    // __metadata__ twice, and a key twice inside it.
    EXPECT_TRUE(Rejected(st_file("{\"__metadata__\":{},\"__metadata__\":{}}"), "duplicate key"));
    EXPECT_TRUE(Rejected(st_file("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}"), "duplicate key"));
}

TEST(SafeTensors, MetadataMustMapStringsToStrings) {
    for (const char* m : {"{\"k\":1}", "{\"k\":null}", "{\"k\":true}", "{\"k\":[\"v\"]}", "{\"k\":{\"x\":\"y\"}}",
                          "[\"k\",\"v\"]", "\"k\"", "7", "null"})
        EXPECT_TRUE(Rejected(st_file(std::string("{\"__metadata__\":") + m + "}"), "metadata", {"JSON"}))
            << "__metadata__ " << m;
}

TEST(SafeTensors, UnknownDtype) {
    for (const char* t : {"Q4", "f32", "FLOAT32", "", "F32 ", "F128"})
        EXPECT_TRUE(Rejected(st_file("{" + ent("weird_tensor", t, "1", 0, 4) + "}", zeros(4)), "unknown dtype", {},
                             "weird_tensor"))
            << "dtype \"" << t << "\"";
}

TEST(SafeTensors, ShapeProductOverflows) {
    // Elements overflow 64 bits: 2^32 * 2^32 * 2.
    EXPECT_TRUE(Rejected(st_file("{" + ent("big", "F32", "4294967296,4294967296,2", 0, 4) + "}", zeros(4)),
                         "overflows", {"shape x dtype"}, "big"));
    EXPECT_TRUE(Rejected(st_file("{" + ent("big", "U8", "18446744073709551615,2", 0, 4) + "}", zeros(4)),
                         "overflows", {"shape x dtype"}, "big"));
    // Elements fit (2^62), bytes do not (2^64).
    EXPECT_TRUE(Rejected(st_file("{" + ent("big", "F32", "4611686018427387904", 0, 4) + "}", zeros(4)),
                         "overflows", {"shape x dtype"}, "big"));
}

TEST(SafeTensors, OffsetsThatOverlap) {
    // Partly: [0, 8) and [4, 12).
    EXPECT_TRUE(Rejected(st_file("{" + ent("a", "F32", "2", 0, 8) + "," + ent("b", "F32", "2", 4, 12) + "}", zeros(12)),
                         "overlap", {"gap", "trailing"}));
    // Exactly the same bytes.
    EXPECT_TRUE(Rejected(st_file("{" + ent("a", "F32", "1", 0, 4) + "," + ent("b", "F32", "1", 0, 4) + "}", zeros(4)),
                         "overlap", {"gap", "trailing"}));
    // One inside another.
    EXPECT_TRUE(Rejected(st_file("{" + ent("a", "F32", "3", 0, 12) + "," + ent("b", "F32", "1", 4, 8) + "}", zeros(12)),
                         "overlap", {"gap", "trailing"}));
}

TEST(SafeTensors, OffsetsThatLeaveAGap) {
    EXPECT_TRUE(Rejected(st_file("{" + ent("a", "F32", "1", 0, 4) + "," + ent("b", "F32", "1", 8, 12) + "}", zeros(12)),
                         "gap", {"overlap", "trailing"}));
    // Before the first tensor.
    EXPECT_TRUE(Rejected(st_file("{" + ent("a", "F32", "1", 4, 8) + "}", zeros(8)), "gap", {"overlap", "trailing"}));
}

TEST(SafeTensors, OffsetsThatRunBackwards) {
    EXPECT_TRUE(Rejected(st_file("{" + ent("a", "F32", "1", 0, 4) + "," + ent("rev", "F32", "1", 8, 4) + "}", zeros(8)),
                         "backwards", {}, "rev"));
    EXPECT_TRUE(Rejected(st_file("{" + ent("rev", "F32", "0", 4, 0) + "}", zeros(4)), "backwards", {}, "rev"));
}

TEST(SafeTensors, OffsetsThatDisagreeWithShapeTimesDtype) {
    const std::initializer_list<const char*> others = {"beyond the end", "trailing", "gap", "overlap"};
    EXPECT_TRUE(Rejected(st_file("{" + ent("w", "F32", "2", 0, 4) + "}", zeros(4)), "shape x dtype", others, "w"));
    EXPECT_TRUE(Rejected(st_file("{" + ent("w", "F16", "3", 0, 8) + "}", zeros(8)), "shape x dtype", others, "w"));
    EXPECT_TRUE(Rejected(st_file("{" + ent("w", "F64", "1", 0, 4) + "}", zeros(4)), "shape x dtype", others, "w"));
    EXPECT_TRUE(Rejected(st_file("{" + ent("w", "F32", "", 0, 0) + "}"), "shape x dtype", others, "w"));
}

TEST(SafeTensors, TrailingBytesAfterTheLastTensor) {
    EXPECT_TRUE(Rejected(st_file("{" + ent("a", "F32", "1", 0, 4) + "}", zeros(8)), "trailing",
                         {"gap", "beyond the end", "overlap"}));
    EXPECT_TRUE(Rejected(st_file("{" + ent("a", "F32", "1", 0, 4) + "}", zeros(5)), "trailing",
                         {"gap", "beyond the end", "overlap"}));
}

TEST(SafeTensors, OffsetsBeyondTheDataSection) {
    EXPECT_TRUE(Rejected(st_file("{" + ent("a", "F32", "2", 0, 8) + "}", zeros(4)), "beyond the end",
                         {"trailing", "shape x dtype"}, "a"));
    // A header claiming 400 MB on a 4-byte data section: rejected without
    // reading or allocating it (400 MB: no overflow on 32-bit targets).
    EXPECT_TRUE(Rejected(st_file("{" + ent("huge", "F32", "100000000", 0, 400000000) + "}", zeros(4)),
                         "beyond the end", {"trailing"}, "huge"));
}

TEST(SafeTensors, MalformedEntries) {
    const char* bad[] = {
        "{\"shape\":[1],\"data_offsets\":[0,4]}",                        // no dtype
        "{\"dtype\":\"F32\",\"data_offsets\":[0,4]}",                    // no shape
        "{\"dtype\":\"F32\",\"shape\":[1]}",                             // no data_offsets
        "{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}",           // dtype not a string
        "{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}",        // shape not an array
        "{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}",  // shape of strings
        "{\"dtype\":\"F32\",\"shape\":[[1]],\"data_offsets\":[0,4]}",
        "{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}",     // negative
        "{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}",    // not an integer
        "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}",        // one offset
        "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}",    // three
        "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",\"4\"]}",
        "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,-4]}",
        "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.5]}",
        "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"begin\":0,\"end\":4}}",
        "{\"dtype\":null,\"shape\":[1],\"data_offsets\":[0,4]}",
        "5",
        "\"F32\"",
        "[0,4]",
        "null",
    };
    for (const char* e : bad)
        EXPECT_TRUE(Rejected(st_file(std::string("{\"bad_entry\":") + e + "}", zeros(4)), "entry", {"JSON"},
                             "bad_entry"))
            << "entry " << e;
    // More dimensions than a file entry holds (8): an error, not an overrun.
    nn::Status s = parse(st_file("{" + ent("deep", "F32", "1,1,1,1,1,1,1,1,1", 0, 4) + "}", zeros(4)));
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(has(s.message(), "deep")) << s.message();
    // The header must be an object.
    for (const char* h : {"[]", "\"x\"", "1"}) EXPECT_FALSE(parse(st_file(h)).ok()) << h;
}

// The memory-bomb pattern: many entries aliasing the same few bytes. A
// reader that materialised each entry would need entries x bytes; this one
// must reject it from the header alone, in about the time it takes to parse
// a valid header of the same size, and without a peak of memory far beyond
// the file's size.
TEST(SafeTensors, ManyEntriesAliasingTheSameBytesAreRejectedQuickly) {
    const int n = 100000;
    std::string bomb = "{", valid = "{";
    for (int i = 0; i < n; ++i) {
        std::string name = "t" + std::to_string(i);
        bomb += ent(name, "F32", "1", 0, 4) + ",";
        valid += ent(name, "F32", "1", 4 * (uint64_t)i, 4 * (uint64_t)i + 4) + ",";
    }
    bomb.back() = '}';
    valid.back() = '}';
    const Bytes bomb_file = st_file(bomb, zeros(4));
    const Bytes valid_file = st_file(valid, zeros(4 * (size_t)n));

    using clock = std::chrono::steady_clock;
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    auto t0 = clock::now();
    EXPECT_TRUE(Rejected(bomb_file, "overlap"));
    const double bomb_s = std::chrono::duration<double>(clock::now() - t0).count();
    getrusage(RUSAGE_SELF, &ru1);

    t0 = clock::now();
    {
        nn::SafeTensors st;
        nn::Status s = parse(valid_file, &st);
        ASSERT_TRUE(s.ok()) << s.message();
        ASSERT_EQ(st.entries.size(), (size_t)n);
    }
    const double valid_s = std::chrono::duration<double>(clock::now() - t0).count();
    // 1 s here; on a slow machine (qemu, sanitizers) 5x the valid parse.
    EXPECT_LT(bomb_s, std::max(1.0, 5 * valid_s)) << "valid header of the same size took " << valid_s << " s";
    // ru_maxrss (KB) is the process's peak: it may only grow by a few times
    // the header (5.5 MB) during the parse.
    const long grew_kb = ru1.ru_maxrss - ru0.ru_maxrss;
    EXPECT_LT(grew_kb, (long)(8 * bomb_file.size() / 1024) + 64 * 1024) << "peak RSS grew " << grew_kb << " KB";

    // The amplified form: 4,000 entries each claiming all of a 1 MB data
    // section (4 GB if each were materialised).
    std::string amp = "{";
    for (int i = 0; i < 4000; ++i) amp += ent("a" + std::to_string(i), "F32", "262144", 0, 1048576) + ",";
    amp.back() = '}';
    getrusage(RUSAGE_SELF, &ru0);
    t0 = clock::now();
    EXPECT_TRUE(Rejected(st_file(amp, zeros(1048576)), "overlap"));
    const double amp_s = std::chrono::duration<double>(clock::now() - t0).count();
    getrusage(RUSAGE_SELF, &ru1);
    EXPECT_LT(amp_s, std::max(1.0, 5 * valid_s));
    EXPECT_LT(ru1.ru_maxrss - ru0.ru_maxrss, 64L * 1024) << "KB";
}

// ============================================================================
// Writing
// ============================================================================

TEST_F(SafeTensorsFile, WriterRoundTripIsByteExact) {
    const float w[6] = {0.5f, -1.25f, 3.0f, 1e-7f, -0.0f, 123456.789f};
    const uint16_t h[3] = {0x3C00, 0xC000, 0x0001};
    const int64_t count = -42;
    const double d[2] = {0.1, -2.5};
    const uint8_t u[3] = {7, 8, 9};
    const float none[1] = {0};
    nn::StWriter wr;
    wr.add_f32("layer.weight", nn::make_shape({2, 3}), w);
    wr.add("half", nn::DType::F16, {3}, h);
    wr.add("count", nn::DType::I64, {}, &count);
    wr.add("dbl", nn::DType::F64, {1, 2}, d);
    wr.add("quote \" back\\slash \xC3\xA9 tab\t", nn::DType::U8, {3}, u);
    wr.add("empty", nn::DType::F32, {0, 3}, none);
    wr.add_meta("format", "pt");
    wr.add_meta("note", "say \"hi\"\n\\ \xC3\xA9 \x01");
    const std::string p = path("rt.safetensors");
    nn::Status s = wr.write(p.c_str());
    ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_FALSE(exists(p + ".tmp"));

    // The bytes: length, header padded with spaces to a multiple of 8.
    const Bytes raw = read(p);
    ASSERT_GE(raw.size(), 16u);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | raw[i];
    EXPECT_EQ(n % 8, 0u) << n;
    ASSERT_LE(8 + n, raw.size());
    EXPECT_EQ(raw[8], '{');
    size_t close = 8 + n;
    while (close > 8 && raw[close - 1] == ' ') --close;
    EXPECT_EQ(raw[close - 1], '}') << "padding is spaces after the JSON";
    EXPECT_LT(8 + n - close, 8u) << "at most 7 bytes of padding";
    EXPECT_EQ(raw.size(), 8 + n + sizeof w + sizeof h + sizeof count + sizeof d + sizeof u);

    nn::SafeTensors st;
    s = nn::safetensors_load(p.c_str(), &st);
    ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_EQ(st.bytes, raw);
    ASSERT_EQ(st.entries.size(), 6u);
    struct {
        const char* name;
        nn::DType t;
        std::vector<uint64_t> shape;
        const void* data;
        size_t bytes;
    } want[] = {{"layer.weight", nn::DType::F32, {2, 3}, w, sizeof w},
                {"half", nn::DType::F16, {3}, h, sizeof h},
                {"count", nn::DType::I64, {}, &count, sizeof count},
                {"dbl", nn::DType::F64, {1, 2}, d, sizeof d},
                {"quote \" back\\slash \xC3\xA9 tab\t", nn::DType::U8, {3}, u, sizeof u},
                {"empty", nn::DType::F32, {0, 3}, none, 0}};
    for (const auto& x : want) {
        const nn::StEntry* e = st.find(x.name);
        ASSERT_NE(e, nullptr) << x.name;
        EXPECT_EQ(e->dtype, x.t) << x.name;
        ASSERT_EQ(e->ndim, (int)x.shape.size()) << x.name;
        for (int i = 0; i < e->ndim; ++i) EXPECT_EQ(e->shape[i], x.shape[i]) << x.name;
        ASSERT_EQ(e->end - e->begin, x.bytes) << x.name;
        if (x.bytes) {
            EXPECT_EQ(0, std::memcmp(st.bytes.data() + st.data_start + e->begin, x.data, x.bytes)) << x.name;
        }
    }
    float f[6];
    ASSERT_TRUE(st.to_f32(*st.find("layer.weight"), f, 6).ok());
    EXPECT_EQ(0, std::memcmp(f, w, sizeof w));
    ASSERT_TRUE(st.to_f32(*st.find("half"), f, 3).ok());
    EXPECT_EQ(f[1], -2.0f);
    ASSERT_TRUE(st.to_f32(*st.find("count"), f, 1).ok());
    EXPECT_EQ(f[0], -42.0f);
    ASSERT_NE(st.meta("format"), nullptr);
    EXPECT_STREQ(st.meta("format"), "pt");
    ASSERT_NE(st.meta("note"), nullptr);
    EXPECT_STREQ(st.meta("note"), "say \"hi\"\n\\ \xC3\xA9 \x01");
}

// Header lengths of every residue mod 8 are padded to a multiple of 8.
TEST_F(SafeTensorsFile, WriterPadsEveryHeaderLengthToAMultipleOf8) {
    const float v = 1.0f;
    std::set<size_t> unpadded_residues;
    for (int len = 1; len <= 8; ++len) {
        nn::StWriter wr;
        const std::string name = "w" + std::string(len - 1, 'x');
        wr.add(name.c_str(), nn::DType::F32, {1}, &v);
        const std::string p = path(("pad" + std::to_string(len)).c_str());
        nn::Status s = wr.write(p.c_str());
        ASSERT_TRUE(s.ok()) << s.message();
        const Bytes raw = read(p);
        ASSERT_GE(raw.size(), 8u);
        uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = (n << 8) | raw[i];
        EXPECT_EQ(n % 8, 0u);
        ASSERT_EQ(raw.size(), 8 + n + 4);
        size_t close = 8 + n;
        while (raw[close - 1] == ' ') --close;
        EXPECT_EQ(raw[close - 1], '}');
        unpadded_residues.insert((close - 8) % 8);
        EXPECT_TRUE(parse(raw).ok());
    }
    EXPECT_EQ(unpadded_residues.size(), 8u) << "the names should have hit every residue";
}

TEST_F(SafeTensorsFile, WriterRejectsDuplicateNames) {
    const float v[2] = {1, 2};
    nn::StWriter wr;
    wr.add_f32("w", nn::make_shape({2}), v);
    wr.add_f32("b", nn::make_shape({2}), v);
    wr.add_f32("w", nn::make_shape({2}), v);
    const std::string p = path("dup.safetensors");
    nn::Status s = wr.write(p.c_str());
    ASSERT_FALSE(s.ok());
    EXPECT_TRUE(has(s.message(), p.c_str())) << s.message();
    EXPECT_TRUE(has(s.message(), "\"w\"") || has(s.message(), " w")) << s.message();
    EXPECT_FALSE(exists(p));
    EXPECT_FALSE(exists(p + ".tmp"));
}

// Whatever it is given, the writer either refuses (naming the file, writing
// nothing) or writes a file the reader accepts: never a file nn cannot read.
TEST_F(SafeTensorsFile, WriterNeverWritesAFileItsReaderRejects) {
    const float v[2] = {1, 2};
    struct Case {
        const char* what;
        nn::StWriter w;
    };
    std::vector<Case> cases(5);
    cases[0].what = "a metadata key twice";
    cases[0].w.add_f32("w", nn::make_shape({2}), v);
    cases[0].w.add_meta("k", "1");
    cases[0].w.add_meta("k", "2");
    cases[1].what = "a tensor named __metadata__";
    cases[1].w.add_f32("__metadata__", nn::make_shape({2}), v);
    cases[2].what = "a name that is not UTF-8";
    cases[2].w.add_f32("w\xFF\xC0", nn::make_shape({2}), v);
    cases[3].what = "a metadata value that is not UTF-8";
    cases[3].w.add_f32("w", nn::make_shape({2}), v);
    cases[3].w.add_meta("k", "\xED\xA0\x80");
    cases[4].what = "an item whose byte count disagrees with its shape";
    cases[4].w.add_f32("w", nn::make_shape({2}), v);
    cases[4].w.items[0].bytes = 4;
    for (size_t k = 0; k < cases.size(); ++k) {
        const std::string p = path(("case" + std::to_string(k)).c_str());
        nn::Status s = cases[k].w.write(p.c_str());
        if (s.ok()) {
            nn::SafeTensors st;
            nn::Status r = nn::safetensors_load(p.c_str(), &st);
            EXPECT_TRUE(r.ok()) << cases[k].what << ": the writer wrote a file its reader rejects: " << r.message();
        } else {
            EXPECT_TRUE(has(s.message(), p.c_str())) << cases[k].what << ": " << s.message();
            EXPECT_FALSE(exists(p)) << cases[k].what;
            EXPECT_FALSE(exists(p + ".tmp")) << cases[k].what;
        }
    }
}

// A write that fails part way (a full disk, simulated) leaves the previous
// file byte for byte and no temporary behind, and says which file.
TEST_F(SafeTensorsFile, FailedWriteLeavesThePreviousFileIntact) {
    std::vector<float> a(64), b(128);
    for (size_t i = 0; i < a.size(); ++i) a[i] = (float)i;
    for (size_t i = 0; i < b.size(); ++i) b[i] = -(float)i;
    nn::StWriter wa, wb;
    wa.add_f32("w", nn::make_shape({64}), a.data());
    wb.add_f32("w", nn::make_shape({128}), b.data());
    wb.add_meta("version", "B");
    const std::string p = path("model.safetensors");
    ASSERT_TRUE(wa.write(p.c_str()).ok());
    const Bytes first = read(p);
    ASSERT_FALSE(first.empty());

    for (long long after : {0LL, 1LL, 7LL, 8LL, 20LL, 100LL, 500LL}) {
        nn::set_write_fault_after(after);
        nn::Status s = wb.write(p.c_str());
        nn::set_write_fault_after(-1);
        ASSERT_FALSE(s.ok()) << "fault after " << after << " bytes did not fail the write";
        EXPECT_TRUE(has(s.message(), p.c_str())) << s.message();
        EXPECT_EQ(read(p), first) << "fault after " << after << " bytes changed the file";
        EXPECT_FALSE(exists(p + ".tmp")) << "fault after " << after << " left the temporary";
    }
    // Off again: the write goes through.
    nn::Status s = wb.write(p.c_str());
    ASSERT_TRUE(s.ok()) << s.message();
    nn::SafeTensors st;
    ASSERT_TRUE(nn::safetensors_load(p.c_str(), &st).ok());
    ASSERT_NE(st.find("w"), nullptr);
    EXPECT_EQ(st.find("w")->numel(), 128u);
    ASSERT_NE(st.meta("version"), nullptr);

    // No previous file: a failed write leaves none.
    const std::string q = path("fresh.safetensors");
    nn::set_write_fault_after(10);
    s = wa.write(q.c_str());
    nn::set_write_fault_after(-1);
    EXPECT_FALSE(s.ok());
    EXPECT_FALSE(exists(q));
    EXPECT_FALSE(exists(q + ".tmp"));
    // A directory that does not exist: an error naming the path.
    const std::string bad = dir + "/no/such/dir/x.safetensors";
    s = wa.write(bad.c_str());
    ASSERT_FALSE(s.ok());
    EXPECT_TRUE(has(s.message(), bad.c_str())) << s.message();
}

// ============================================================================
// Model files
// ============================================================================

namespace {

nn::CompileOptions opts(uint64_t seed, int max_batch = 4) {
    nn::CompileOptions co;
    co.loss = nn::CrossEntropy();
    co.optimizer = nn::SGD(0.01f);
    co.max_batch = max_batch;
    co.seed = seed;
    return co;
}

// Dense(4 -> hidden) + ReLU + Dense(-> out); the last layer named when given.
nn::Status make_mlp(nn::Model& m, uint64_t seed, int hidden = 8, int out = 3, const char* head = nullptr) {
    m.add(nn::Dense(4, hidden));
    m.add(nn::ReLU());
    nn::Layer fc = nn::Dense(out);
    if (head) std::snprintf(fc.name, sizeof fc.name, "%s", head);
    m.add(fc);
    if (!m.error) return m.error;
    return m.compile(opts(seed));
}

// Conv2D + BatchNorm2d + ReLU + MaxPool2D + Flatten + Dense on (1, 6, 6).
nn::Status make_cnn(nn::Model& m, uint64_t seed) {
    m.set_input(nn::make_shape({1, 6, 6}));
    m.add(nn::Conv2D(1, 3, 3, 1, 1));
    m.add(nn::BatchNorm2d());
    m.add(nn::ReLU());
    m.add(nn::MaxPool2D(2));
    m.add(nn::Flatten());
    m.add(nn::Dense(3));
    if (!m.error) return m.error;
    return m.compile(opts(seed));
}

// LSTM over (5 steps, 3 features), last state, then Dense(2).
nn::Status make_lstm(nn::Model& m, uint64_t seed) {
    m.set_input(nn::make_shape({5, 3}));
    m.add(nn::LSTM(3, 6, 1, false));
    m.add(nn::Dense(2));
    if (!m.error) return m.error;
    return m.compile(opts(seed));
}

// Every parameter and buffer, layer by layer.
std::vector<std::vector<float>> snapshot(nn::Model& m) {
    std::vector<std::vector<float>> s;
    for (nn::Layer& L : m.layers)
        for (int i = 0; i < L.n_params; ++i)
            s.emplace_back(L.params[i].data, L.params[i].data + L.params[i].numel());
    return s;
}

// Gives BatchNorm layers non-trivial statistics and affine parameters, so
// that loading them changes the predictions.
void perturb_batchnorm(nn::Model& m, uint64_t seed) {
    nn::Rng rng(seed);
    for (nn::Layer& L : m.layers) {
        if (L.kind != nn::LayerKind::BatchNorm) continue;
        for (int i = 0; i < L.n_params; ++i) {
            bool var = std::strcmp(L.param_name[i], "running_var") == 0;
            for (size_t k = 0; k < L.params[i].numel(); ++k)
                L.params[i].data[k] = var ? rng.uniform(0.5f, 2.0f) : rng.uniform(-1.0f, 1.0f);
        }
    }
}

std::vector<float> predict(nn::Model& m, const std::vector<float>& x, int n) {
    nn::Shape in = nn::batched(m.input, n);
    nn::Shape out = nn::batched(m.output_shape(), n);
    std::vector<float> y(out.numel(), -1.0f);
    std::vector<float> xc(x);
    nn::Status s = m.predict(nn::tensor_view(xc.data(), in), nn::tensor_view(y.data(), out));
    EXPECT_TRUE(s.ok()) << s.message();
    return y;
}

std::vector<float> inputs(const nn::Model& m, int n, uint64_t seed) {
    nn::Rng rng(seed);
    std::vector<float> x(nn::batched(m.input, n).numel());
    for (float& v : x) v = rng.uniform(-2.0f, 2.0f);
    return x;
}

std::set<std::string> names_in(const nn::SafeTensors& st) {
    std::set<std::string> s;
    for (const nn::StEntry& e : st.entries) s.insert(e.name);
    return s;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

using ModelFile = FileTest;

// save, load_weights into a differently initialised twin, load_model from
// the file alone: the same parameters and the same predictions, bit for bit.
// `check_names` sees the file's entries.
template <class Make, class CheckNames>
static void round_trip(const std::string& p, Make make, CheckNames check_names, int n = 4) {
    nn::Model a, b;
    nn::Status s = make(a, 1);
    ASSERT_TRUE(s.ok()) << s.message();
    perturb_batchnorm(a, 7);
    ASSERT_TRUE((s = make(b, 2)).ok()) << s.message();
    ASSERT_NE(snapshot(a), snapshot(b)) << "the two seeds should give different weights";
    const std::vector<float> x = inputs(a, n, 11);
    const std::vector<float> ya = predict(a, x, n);
    ASSERT_FALSE(same_bits(ya, predict(b, x, n)));

    ASSERT_TRUE((s = nn::save(a, p.c_str())).ok()) << s.message();
    nn::SafeTensors st;
    ASSERT_TRUE((s = nn::safetensors_load(p.c_str(), &st)).ok()) << s.message();
    EXPECT_EQ((st.data_start - 8) % 8, 0u);
    const char* arch = st.meta("nn.architecture");
    ASSERT_NE(arch, nullptr);
    EXPECT_GT(std::strlen(arch), 0u);
    check_names(st);
    // Every float tensor in the file holds the model's values.
    size_t float_tensors = 0, model_tensors = 0;
    for (nn::Layer& L : a.layers) model_tensors += (size_t)L.n_params;
    for (const nn::StEntry& e : st.entries) {
        if (e.dtype != nn::DType::F32) continue;
        ++float_tensors;
        std::vector<float> v(e.numel());
        ASSERT_TRUE(st.to_f32(e, v.data(), v.size()).ok()) << e.name;
        bool found = false;
        for (const std::vector<float>& q : snapshot(a)) found = found || same_bits(q, v);
        EXPECT_TRUE(found) << e.name << " does not hold any parameter's values";
    }
    EXPECT_EQ(float_tensors, model_tensors);

    ASSERT_TRUE((s = nn::load_weights(b, p.c_str())).ok()) << s.message();
    EXPECT_EQ(snapshot(b), snapshot(a));
    EXPECT_TRUE(same_bits(predict(b, x, n), ya));

    nn::Model c;
    ASSERT_TRUE((s = nn::load_model(p.c_str(), opts(3), &c)).ok()) << s.message();
    ASSERT_EQ(c.size(), a.size());
    for (int i = 0; i < a.size(); ++i) {
        EXPECT_STREQ(c.layer(i).type_name(), a.layer(i).type_name()) << i;
        EXPECT_STREQ(c.layer(i).name, a.layer(i).name) << i;
    }
    EXPECT_EQ(c.input, a.input);
    EXPECT_EQ(snapshot(c), snapshot(a));
    EXPECT_TRUE(same_bits(predict(c, x, n), ya));
}

TEST_F(ModelFile, DenseReluDenseRoundTrip) {
    round_trip(path("mlp.safetensors"), [](nn::Model& m, uint64_t seed) { return make_mlp(m, seed); },
               [](const nn::SafeTensors& st) {
                   EXPECT_EQ(names_in(st), (std::set<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"}));
                   const nn::StEntry* e = st.find("0.weight");
                   ASSERT_NE(e, nullptr);
                   EXPECT_EQ(e->dtype, nn::DType::F32);
                   ASSERT_EQ(e->ndim, 2);
                   EXPECT_EQ(e->shape[0], 8u);  // [out, in] as PyTorch
                   EXPECT_EQ(e->shape[1], 4u);
                   e = st.find("2.bias");
                   ASSERT_NE(e, nullptr);
                   ASSERT_EQ(e->ndim, 1);
                   EXPECT_EQ(e->shape[0], 3u);
               });
}

TEST_F(ModelFile, ConvBatchNormPoolRoundTrip) {
    round_trip(path("cnn.safetensors"), [](nn::Model& m, uint64_t seed) { return make_cnn(m, seed); },
               [](const nn::SafeTensors& st) {
                   EXPECT_EQ(names_in(st),
                             (std::set<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                                    "1.running_var", "1.num_batches_tracked", "5.weight",
                                                    "5.bias"}));
                   const nn::StEntry* e = st.find("0.weight");
                   ASSERT_NE(e, nullptr);
                   ASSERT_EQ(e->ndim, 4);  // [out, in, kh, kw]
                   EXPECT_EQ(e->shape[0], 3u);
                   EXPECT_EQ(e->shape[1], 1u);
                   EXPECT_EQ(e->shape[2], 3u);
                   EXPECT_EQ(e->shape[3], 3u);
                   e = st.find("1.num_batches_tracked");
                   ASSERT_NE(e, nullptr);
                   EXPECT_EQ(e->dtype, nn::DType::I64);
                   EXPECT_EQ(e->numel(), 1u);
                   e = st.find("5.weight");
                   ASSERT_NE(e, nullptr);
                   ASSERT_EQ(e->ndim, 2);
                   EXPECT_EQ(e->shape[1], 27u);
               });
}

TEST_F(ModelFile, LstmDenseRoundTrip) {
    round_trip(path("lstm.safetensors"), [](nn::Model& m, uint64_t seed) { return make_lstm(m, seed); },
               [](const nn::SafeTensors& st) {
                   EXPECT_EQ(names_in(st), (std::set<std::string>{"0.weight_ih_l0", "0.weight_hh_l0", "0.bias_ih_l0",
                                                                  "0.bias_hh_l0", "1.weight", "1.bias"}));
                   const nn::StEntry* e = st.find("0.weight_ih_l0");
                   ASSERT_NE(e, nullptr);
                   ASSERT_EQ(e->ndim, 2);
                   EXPECT_EQ(e->shape[0], 24u);  // 4 gates x hidden
                   EXPECT_EQ(e->shape[1], 3u);
                   e = st.find("0.weight_hh_l0");
                   ASSERT_NE(e, nullptr);
                   ASSERT_EQ(e->ndim, 2);
                   EXPECT_EQ(e->shape[1], 6u);
               });
}

// A layer the user named is saved under its name; the others by index.
TEST_F(ModelFile, UserNamedLayerUsesItsName) {
    round_trip(path("named.safetensors"),
               [](nn::Model& m, uint64_t seed) { return make_mlp(m, seed, 8, 3, "head"); },
               [](const nn::SafeTensors& st) {
                   EXPECT_EQ(names_in(st), (std::set<std::string>{"0.weight", "0.bias", "head.weight", "head.bias"}));
               });
    // Loading it into the same layers without the name: "head.*" is
    // unexpected there and "2.*" missing.
    const std::string p = path("named.safetensors");
    nn::Model t;
    ASSERT_TRUE(make_mlp(t, 5).ok());
    const auto before = snapshot(t);
    nn::Status s = nn::load_weights(t, p.c_str());
    ASSERT_FALSE(s.ok());
    EXPECT_TRUE(has(s.message(), "missing") || has(s.message(), "unexpected")) << s.message();
    EXPECT_TRUE(has(s.message(), "2.weight") || has(s.message(), "head.weight")) << s.message();
    EXPECT_EQ(snapshot(t), before);
}

// A target whose first layer matches and whose last does not: the error
// names the tensors and "shape", and nothing was loaded, not even the
// tensors that did match.
TEST_F(ModelFile, ShapeMismatchIsReportedAndLoadsNothing) {
    const std::string p = path("mlp.safetensors");
    nn::Model a, t;
    ASSERT_TRUE(make_mlp(a, 1).ok());
    ASSERT_TRUE(nn::save(a, p.c_str()).ok());
    ASSERT_TRUE(make_mlp(t, 2, 8, 5).ok());  // 5 outputs: 2.weight [5, 8], 2.bias [5]
    const auto before = snapshot(t);
    nn::Status s = nn::load_weights(t, p.c_str());
    ASSERT_FALSE(s.ok());
    EXPECT_TRUE(has(s.message(), "2.weight")) << s.message();
    EXPECT_TRUE(has(s.message(), "2.bias")) << s.message() << " (every mismatch is reported)";
    EXPECT_TRUE(has(s.message(), "shape")) << s.message();
    EXPECT_FALSE(has(s.message(), "0.weight")) << s.message() << " (0.weight matches)";
    EXPECT_EQ(snapshot(t), before) << "a failed load changed the model";
}

// Files written by hand from a model's tensors: one left out, one extra.
TEST_F(ModelFile, MissingAndUnexpectedTensorsAreReportedByName) {
    nn::Model a, t;
    ASSERT_TRUE(make_mlp(a, 1).ok());
    ASSERT_TRUE(make_mlp(t, 2).ok());
    const auto before = snapshot(t);
    nn::Layer& l0 = a.layer(0);
    nn::Layer& l2 = a.layer(2);

    nn::StWriter missing;  // no 2.bias
    missing.add_f32("0.weight", l0.params[0].shape, l0.params[0].data);
    missing.add_f32("0.bias", l0.params[1].shape, l0.params[1].data);
    missing.add_f32("2.weight", l2.params[0].shape, l2.params[0].data);
    const std::string pm = path("missing.safetensors");
    ASSERT_TRUE(missing.write(pm.c_str()).ok());
    nn::Status s = nn::load_weights(t, pm.c_str());
    ASSERT_FALSE(s.ok());
    EXPECT_TRUE(has(s.message(), "missing")) << s.message();
    EXPECT_TRUE(has(s.message(), "2.bias")) << s.message();
    EXPECT_EQ(snapshot(t), before);

    nn::StWriter extra = missing;
    extra.add_f32("2.bias", l2.params[1].shape, l2.params[1].data);
    const float junk[3] = {1, 2, 3};
    extra.add_f32("7.weight", nn::make_shape({3}), junk);
    const std::string pe = path("extra.safetensors");
    ASSERT_TRUE(extra.write(pe.c_str()).ok());
    s = nn::load_weights(t, pe.c_str());
    ASSERT_FALSE(s.ok());
    EXPECT_TRUE(has(s.message(), "unexpected")) << s.message();
    EXPECT_TRUE(has(s.message(), "7.weight")) << s.message();
    EXPECT_EQ(snapshot(t), before);

    // With the extra tensor gone, the same tensors load.
    nn::StWriter exact = missing;
    exact.add_f32("2.bias", l2.params[1].shape, l2.params[1].data);
    const std::string px = path("exact.safetensors");
    ASSERT_TRUE(exact.write(px.c_str()).ok());
    ASSERT_TRUE((s = nn::load_weights(t, px.c_str())).ok()) << s.message();
    EXPECT_EQ(snapshot(t), snapshot(a));
}

TEST_F(ModelFile, BadFilesAndModelsAreErrors) {
    nn::Model a;
    ASSERT_TRUE(make_mlp(a, 1).ok());
    const auto before = snapshot(a);
    // A file that is not safetensors: the reader's error, model untouched.
    const std::string junk = write("junk.safetensors", Bytes(64, 0x41));
    nn::Status s = nn::load_weights(a, junk.c_str());
    ASSERT_FALSE(s.ok());
    EXPECT_TRUE(has(s.message(), junk.c_str())) << s.message();
    EXPECT_EQ(snapshot(a), before);
    // No such file.
    const std::string none = dir + "/none.safetensors";
    s = nn::load_weights(a, none.c_str());
    ASSERT_FALSE(s.ok());
    EXPECT_TRUE(has(s.message(), none.c_str())) << s.message();
    nn::Model c;
    EXPECT_FALSE(nn::load_model(none.c_str(), opts(1), &c).ok());
    // A valid file without the architecture cannot rebuild a model.
    const float v[1] = {1};
    nn::StWriter w;
    w.add_f32("0.weight", nn::make_shape({1}), v);
    const std::string bare = path("bare.safetensors");
    ASSERT_TRUE(w.write(bare.c_str()).ok());
    nn::Model d;
    EXPECT_FALSE(nn::load_model(bare.c_str(), opts(1), &d).ok());
    // An uncompiled model cannot be saved.
    nn::Model u;
    u.add(nn::Dense(4, 2));
    const std::string pu = path("uncompiled.safetensors");
    EXPECT_FALSE(nn::save(u, pu.c_str()).ok());
    EXPECT_FALSE(exists(pu));
}

// save goes through the atomic writer: a failing disk keeps the old model.
TEST_F(ModelFile, FailedSaveKeepsThePreviousFile) {
    const std::string p = path("model.safetensors");
    nn::Model a, b;
    ASSERT_TRUE(make_mlp(a, 1).ok());
    ASSERT_TRUE(make_mlp(b, 2).ok());
    ASSERT_TRUE(nn::save(a, p.c_str()).ok());
    const Bytes first = read(p);
    nn::set_write_fault_after(40);
    nn::Status s = nn::save(b, p.c_str());
    nn::set_write_fault_after(-1);
    ASSERT_FALSE(s.ok());
    EXPECT_TRUE(has(s.message(), p.c_str())) << s.message();
    EXPECT_EQ(read(p), first);
    EXPECT_FALSE(exists(p + ".tmp"));
}
