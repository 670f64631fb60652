// fuzz/fuzz_idx.cpp — libFuzzer target for nn::read_idx and nn::load_idx.
//
// Input: one control byte, two bytes (little-endian) saying how many of the
// remaining bytes form the images file (taken modulo what is left), then the
// images file and the labels file. Control bit 0 names the images file
// "*.gz" and bit 1 the labels file (read through zlib when nn has it, even
// when the bytes are not gzip). Both readers run; whatever they accept is
// checked against the header it came from.
#include <cstdint>
#include <cstring>

#include "fuzz/fuzz_common.hpp"
#include "nn.hpp"

static size_t idx_item(int type) {
    switch (type) {
        case 0x08: case 0x09: return 1;
        case 0x0B: return 2;
        case 0x0C: case 0x0D: return 4;
        case 0x0E: return 8;
        default: return 0;
    }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 3) return 0;
    const unsigned mode = data[0];
    size_t split = (size_t)data[1] | ((size_t)data[2] << 8);
    data += 3;
    size -= 3;
    split %= size + 1;
    std::string images = fuzz::write_temp("images", data, split, (mode & 1) ? ".gz" : "");
    std::string labels = fuzz::write_temp("labels", data + split, size - split, (mode & 2) ? ".gz" : "");

    nn::IdxArray a;
    nn::Status st = nn::read_idx(images.c_str(), &a);
    if (!st) {
        fuzz::check_message(st.message());
    } else {
        fuzz::accepted("read_idx");
        // Accepted: the header's type and dims, and exactly their bytes.
        size_t item = idx_item(a.type);
        if (item == 0 || a.ndim < 1 || a.ndim > 8) __builtin_trap();
        size_t n = item;
        for (int i = 0; i < a.ndim; ++i) n *= a.dims[i];  // no overflow: read_idx checked
        if (a.bytes.size() != n || a.count() * item != n) __builtin_trap();
    }

    nn::Dataset d;
    st = nn::load_idx(images.c_str(), labels.c_str(), &d);
    if (!st) {
        fuzz::check_message(st.message());
    } else {
        fuzz::accepted("load_idx");
        if (d.n == 0 || d.labels.size() != d.n || d.u8.size() != d.n * d.sample.numel()) __builtin_trap();
        if (d.num_classes < 1 || d.num_classes > 256) __builtin_trap();
        for (int32_t l : d.labels)
            if (l < 0 || l >= d.num_classes) __builtin_trap();
    }
    return 0;
}
