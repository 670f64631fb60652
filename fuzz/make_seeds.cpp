// fuzz/make_seeds.cpp — writes the seed corpora of the fuzz targets: small
// VALID files of each format (plus the control bytes each target reads
// first), built byte by byte here, independent of the library's writers.
//
//   make_seeds DIR   ->  DIR/safetensors/, DIR/idx/, DIR/csv/, DIR/cifar/
//
// `make fuzz` runs it; libFuzzer then mutates from these.
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#if defined(NN_HAVE_ZLIB) && NN_HAVE_ZLIB
#include <zlib.h>
#endif

typedef std::vector<uint8_t> Bytes;

static void put(Bytes& b, const void* p, size_t n) {
    const uint8_t* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
}
static void put(Bytes& b, const std::string& s) { put(b, s.data(), s.size()); }
template <class T>
static void put_le(Bytes& b, T v) {  // little-endian, whatever the host
    uint64_t u = 0;
    std::memcpy(&u, &v, sizeof v);
    for (size_t i = 0; i < sizeof v; ++i) b.push_back((uint8_t)(u >> (8 * i)));
}
static void put_be32(Bytes& b, uint32_t v) {
    for (int i = 3; i >= 0; --i) b.push_back((uint8_t)(v >> (8 * i)));
}

static bool save(const std::string& dir, int n, const Bytes& b) {
    mkdir(dir.c_str(), 0755);
    std::string p = dir + "/seed_" + std::to_string(n);
    FILE* f = std::fopen(p.c_str(), "wb");
    if (!f) {
        std::perror(p.c_str());
        return false;
    }
    bool ok = b.empty() || std::fwrite(b.data(), 1, b.size(), f) == b.size();
    return std::fclose(f) == 0 && ok;
}

// A safetensors file: header padded with spaces to a multiple of 8.
static Bytes st_file(std::string header, const Bytes& data) {
    while (header.size() % 8) header += ' ';
    Bytes b;
    put_le<uint64_t>(b, header.size());
    put(b, header);
    put(b, data.data(), data.size());
    return b;
}

static Bytes idx(uint8_t type, std::initializer_list<uint32_t> dims, const Bytes& data) {
    Bytes b = {0, 0, type, (uint8_t)dims.size()};
    for (uint32_t d : dims) put_be32(b, d);
    put(b, data.data(), data.size());
    return b;
}

#if defined(NN_HAVE_ZLIB) && NN_HAVE_ZLIB
static Bytes gzip(const Bytes& in) {
    z_stream z;
    std::memset(&z, 0, sizeof z);
    deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);  // 15 + 16: gzip wrapper
    Bytes out(deflateBound(&z, in.size()) + 32);
    z.next_in = const_cast<Bytes::value_type*>(in.data());
    z.avail_in = (uInt)in.size();
    z.next_out = out.data();
    z.avail_out = (uInt)out.size();
    deflate(&z, Z_FINISH);
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
}
#endif

// IDX target input: control byte, images length (2 bytes LE), images, labels.
static Bytes idx_input(uint8_t mode, const Bytes& images, const Bytes& labels) {
    Bytes b = {mode, (uint8_t)images.size(), (uint8_t)(images.size() >> 8)};
    put(b, images.data(), images.size());
    put(b, labels.data(), labels.size());
    return b;
}

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const std::string root = argv[1];
    mkdir(root.c_str(), 0755);
    bool ok = true;

    // --- safetensors ---
    const std::string st = root + "/safetensors";
    ok &= save(st, 0, st_file("{}", {}));
    {
        Bytes d;
        for (float v : {1.0f, -2.0f, 0.5f, 3.25f}) put_le(d, v);
        ok &= save(st, 1, st_file("{\"__metadata__\":{\"format\":\"pt\"},"
                                  "\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}",
                                  d));
    }
    {
        // Every dtype, a scalar, an empty tensor, escapes in names and
        // metadata, header order unlike data order.
        Bytes d;
        for (uint16_t h : {0x3C00, 0xC000, 0x0001}) put_le(d, h);  // F16 [0, 6)
        for (uint16_t h : {0x3F80, 0xC0A0}) put_le(d, h);          // BF16 [6, 10)
        put_le(d, 0.5);                                             // F64 [10, 18)
        put_le<int64_t>(d, -7);                                     // I64 [18, 26)
        put_le<int32_t>(d, 9);                                      // I32 [26, 30)
        put_le<int16_t>(d, -2);                                     // I16 [30, 32)
        d.push_back(0xFE);                                          // I8 [32, 33)
        for (uint8_t u : {1, 2, 3}) d.push_back(u);                 // U8 [33, 36)
        d.push_back(1);                                             // BOOL [36, 37)
        put_le(d, 2.5f);                                            // F32 scalar [37, 41)
        ok &= save(st, 2, st_file(
            "{\"scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[37,41]},"
            "\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]},"
            "\"b\\u00e9\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[6,10]},"
            "\"d\\\"q\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[10,18]},"
            "\"n\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[18,26]},"
            "\"i32\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[26,30]},"
            "\"i16\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[30,32]},"
            "\"i8\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[32,33]},"
            "\"u8\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[33,36]},"
            "\"empty\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[36,36]},"
            "\"flag\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[36,37]},"
            "\"__metadata__\":{\"a\\nb\":\"\\u00e9\\ud83d\\ude00\\t\",\"empty\":\"\"}}",
            d));
    }
    {
        // A model file's shape: PyTorch names, BatchNorm's I64 counter.
        Bytes d;
        for (int i = 0; i < 12; ++i) put_le(d, 0.25f * (float)i - 1.0f);  // 0.weight [4, 3]
        for (int i = 0; i < 4; ++i) put_le(d, 0.1f * (float)i);           // 0.bias [4]
        put_le<int64_t>(d, 3);                                            // 1.num_batches_tracked
        ok &= save(st, 3, st_file(
            "{\"0.weight\":{\"dtype\":\"F32\",\"shape\":[4,3],\"data_offsets\":[0,48]},\n"
            "  \"0.bias\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[48,64]},\n"
            "  \"1.num_batches_tracked\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[64,72]},\n"
            "  \"__metadata__\":{\"nn.architecture\":\"[{\\\"type\\\":\\\"Dense\\\"}]\"}}",
            d));
    }

    // --- IDX ---
    const std::string ix = root + "/idx";
    Bytes pixels;
    for (int i = 0; i < 18; ++i) pixels.push_back((uint8_t)(i * 14));
    const Bytes images = idx(0x08, {2, 3, 3}, pixels);
    const Bytes labels = idx(0x08, {2}, {1, 4});
    ok &= save(ix, 0, idx_input(0, images, labels));
    {
        Bytes f;
        for (float v : {1.0f, -1.0f, 0.5f, 2.0f}) {
            uint32_t u;
            std::memcpy(&u, &v, 4);
            put_be32(f, u);
        }
        ok &= save(ix, 1, idx_input(0, idx(0x0D, {2, 2}, f), labels));
        ok &= save(ix, 2, idx_input(0, idx(0x0B, {1, 2, 1}, {0x01, 0x02, 0xFF, 0xFE}), idx(0x09, {1}, {0x80})));
    }
#if defined(NN_HAVE_ZLIB) && NN_HAVE_ZLIB
    ok &= save(ix, 3, idx_input(3, gzip(images), gzip(labels)));
    ok &= save(ix, 4, idx_input(0, gzip(images), labels));  // gzip found by its magic
#endif

    // --- CSV: control byte (see fuzz_csv.cpp), then the text ---
    const std::string cs = root + "/csv";
    const struct {
        uint8_t mode;
        const char* text;
    } csvs[] = {
        {0x00, "1.5,2,0\n3,-4e-2,1\n"},
        {0x01, "a,b,label\n1,2,0\n3,4,2\r\n"},
        {0x12, "0.5;1;2.25\n1;2;3.5\n"},
        {0x00, "\"1\",\" 2 \",\"1\"\n\"3\",4,\"0\"\n"},
        {0x04, "2,0.1,0.2\n0,0.3,0.4\n"},
        {0x20, "\xEF\xBB\xBF" "1\t2\t0\n"},
        {0x00, ".5,+1.,0\n\n  \n1e3,2E-3,3\n"},
        {0x03, "\"x,1\",\"y\"\"q\",t\n1,2,3.5\n"},
    };
    int k = 0;
    for (const auto& c : csvs) {
        Bytes b = {c.mode};
        put(b, std::string(c.text));
        ok &= save(cs, k++, b);
    }

    // --- CIFAR-10: control byte, split (2 bytes LE), records ---
    const std::string cf = root + "/cifar";
    auto record = [](uint8_t label, int salt) {
        Bytes r = {label};
        for (int i = 0; i < 3072; ++i) r.push_back((uint8_t)(i * 7 + salt));
        return r;
    };
    {
        Bytes b = {0, 0, 0};
        Bytes r = record(3, 0);
        put(b, r.data(), r.size());
        ok &= save(cf, 0, b);
    }
    {
        Bytes b = {1, (uint8_t)(3073 & 0xFF), (uint8_t)(3073 >> 8)};  // two files, one record each
        Bytes r0 = record(9, 1), r1 = record(0, 2);
        put(b, r0.data(), r0.size());
        put(b, r1.data(), r1.size());
        ok &= save(cf, 1, b);
    }

    if (!ok) {
        std::fprintf(stderr, "make_seeds: could not write every seed under %s\n", root.c_str());
        return 1;
    }
    return 0;
}
