// fuzz/fuzz_csv.cpp — libFuzzer target for nn::load_csv.
//
// Input: one control byte choosing the options, then the file's text.
//   bit 0     header row
//   bit 1     regression (else classification)
//   bits 2-3  label column: last (-1), 0, 1, 2
//   bits 4-6  delimiter: , ; tab space | : and two invalid ones (" and NUL)
// Whatever the reader accepts is checked for consistency.
#include <cmath>
#include <cstdint>

#include "fuzz/fuzz_common.hpp"
#include "nn.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const unsigned mode = data[0];
    static const char delims[8] = {',', ';', '\t', ' ', '|', ':', '"', '\0'};
    nn::CsvOptions opt;
    opt.header = (mode & 1) != 0;
    opt.classification = (mode & 2) == 0;
    opt.label_column = (int)((mode >> 2) & 3) - 1;
    opt.delimiter = delims[(mode >> 4) & 7];
    std::string path = fuzz::write_temp("csv", data + 1, size - 1, ".csv");

    nn::Dataset d;
    nn::Status st = nn::load_csv(path.c_str(), opt, &d);
    if (!st) {
        fuzz::check_message(st.message());
        return 0;
    }
    fuzz::accepted("load_csv");
    // Accepted: n rows of sample.numel() finite features and one target each.
    if (d.n == 0 || d.sample.ndim != 1 || d.sample.dim[0] < 1) __builtin_trap();
    if (d.f32.size() != d.n * (size_t)d.sample.dim[0]) __builtin_trap();
    for (float v : d.f32)
        if (!std::isfinite(v)) __builtin_trap();
    if (opt.classification) {
        if (d.labels.size() != d.n || d.num_classes < 1) __builtin_trap();
        for (int32_t l : d.labels)
            if (l < 0 || l >= d.num_classes) __builtin_trap();
    } else {
        if (d.targets.size() != d.n || d.target_size != 1) __builtin_trap();
        for (float v : d.targets)
            if (!std::isfinite(v)) __builtin_trap();
    }
    return 0;
}
