// bench/aligned.hpp — operand buffers for the GEMM benchmarks.
//
// Operands start on 64-byte boundaries, as arena tensors do (a vector's own
// 16-byte alignment would make every 512-bit load straddle two lines).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <vector>

template <class T>
struct Aligned64 {
    using value_type = T;
    Aligned64() = default;
    template <class U>
    Aligned64(const Aligned64<U>&) {}
    T* allocate(size_t n) {
        void* p = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
        if (!p) std::abort();
        return static_cast<T*>(p);
    }
    void deallocate(T* p, size_t) { std::free(p); }
    template <class U>
    bool operator==(const Aligned64<U>&) const { return true; }
    template <class U>
    bool operator!=(const Aligned64<U>&) const { return false; }
};
using FloatBuf = std::vector<float, Aligned64<float>>;
