// fuzz/fuzz_cifar.cpp — libFuzzer target for nn::load_cifar10_files.
//
// Input: one control byte, then the bytes of one file, or (control bit 0)
// of two files split after the first (byte 1 | byte 2 << 8) modulo the rest
// bytes (control bit 1 adds a path that does not exist as a third file).
// Whatever the reader accepts is checked against the records it came from.
#include <cstdint>
#include <cstring>

#include "fuzz/fuzz_common.hpp"
#include "nn.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 3) return 0;
    const unsigned mode = data[0];
    size_t split = (size_t)data[1] | ((size_t)data[2] << 8);
    data += 3;
    size -= 3;
    const bool two = (mode & 1) != 0;
    split = two ? split % (size + 1) : size;
    std::string a = fuzz::write_temp("cifar_a", data, split, ".bin");
    std::string b = two ? fuzz::write_temp("cifar_b", data + split, size - split, ".bin") : std::string();
    std::string missing = std::string(fuzz::temp_dir()) + "/nn_fuzz_no_such_dir/x.bin";
    const char* paths[3] = {a.c_str(), two ? b.c_str() : missing.c_str(), missing.c_str()};
    int count = two ? 2 : 1;
    if (mode & 2) paths[count++] = missing.c_str();

    nn::Dataset d;
    d.n = 12345;  // untouched on error
    nn::Status st = nn::load_cifar10_files(paths, count, &d);
    if (!st) {
        fuzz::check_message(st.message());
        if (d.n != 12345 || !d.u8.empty()) __builtin_trap();
        return 0;
    }
    fuzz::accepted("load_cifar10_files");
    const size_t rec = 3073;
    if (mode & 2) __builtin_trap();  // a missing file must fail
    if (size % rec != 0 && !two) __builtin_trap();
    if (d.n * rec != size || d.labels.size() != d.n || d.u8.size() != d.n * 3072) __builtin_trap();
    if (d.num_classes != 10 || d.sample.numel() != 3072) __builtin_trap();
    // Records are label + pixels back to back across the files.
    for (size_t i = 0; i < d.n; ++i) {
        if (d.labels[i] < 0 || d.labels[i] > 9 || (uint8_t)d.labels[i] != data[i * rec]) __builtin_trap();
        if (std::memcmp(d.u8.data() + i * 3072, data + i * rec + 1, 3072) != 0) __builtin_trap();
    }
    return 0;
}
