// fuzz/fuzz_common.hpp — shared by the libFuzzer targets in fuzz/.
//
// The IDX, CSV and CIFAR-10 readers take paths, so each input is written to
// a file of this process's own (under $TMPDIR, else /dev/shm, else /tmp)
// and the reader is pointed at it. The files are removed at exit.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace fuzz {

inline const char* temp_dir() {
    const char* t = std::getenv("TMPDIR");
    if (t && *t) return t;
    if (access("/dev/shm", W_OK) == 0) return "/dev/shm";
    return "/tmp";
}

// Paths this process wrote, removed at exit.
inline std::vector<std::string>& written() {
    static std::vector<std::string> w;
    return w;
}
inline void remove_written() {
    for (const std::string& p : written()) std::remove(p.c_str());
}

// "<tmp>/nn_fuzz_<pid>_<tag><suffix>", holding exactly [data, data + size).
inline std::string write_temp(const char* tag, const uint8_t* data, size_t size,
                              const char* suffix = "") {
    std::string path = std::string(temp_dir()) + "/nn_fuzz_" + std::to_string((long)getpid()) + "_" +
                       tag + suffix;
    bool first = true;
    for (const std::string& p : written())
        if (p == path) first = false;
    if (first) {
        if (written().empty()) std::atexit(remove_written);
        written().push_back(path);
    }
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) {
        std::perror(path.c_str());
        std::abort();  // the harness cannot run: stop loudly
    }
    if (size && std::fwrite(data, 1, size, f) != size) {
        std::perror(path.c_str());
        std::abort();
    }
    std::fclose(f);
    return path;
}

// NN_FUZZ_VERBOSE=1 in the environment prints what each reader said: run a
// target on files (`fuzz_csv seed_0 crash-...`) to see why they pass or fail.
inline bool verbose() {
    static const bool v = std::getenv("NN_FUZZ_VERBOSE") != nullptr;
    return v;
}

// A reader's error must be a message: not empty (it names the file and the
// numbers).
inline void check_message(const char* msg) {
    if (!msg || !*msg) __builtin_trap();
    if (verbose()) std::fprintf(stderr, "rejected: %s\n", msg);
}
inline void accepted(const char* what) {
    if (verbose()) std::fprintf(stderr, "accepted: %s\n", what);
}

}  // namespace fuzz
