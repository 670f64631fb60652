// examples/alloc_counter.hpp — counts heap allocations in the program that
// includes it (include it in exactly one .cpp file).
//
// It replaces operator new/delete and, on glibc, malloc/calloc/realloc/
// aligned_alloc/posix_memalign, forwarding to the C library. The examples
// use it to print heap_allocs_per_step as counted, and the tests use it to
// prove that a training step makes none. Under AddressSanitizer, which owns
// malloc, only operator new is counted.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define NN_COUNT_MALLOC 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#define NN_COUNT_MALLOC 0
#endif
#endif
#if !defined(NN_COUNT_MALLOC) && defined(__GLIBC__)
#define NN_COUNT_MALLOC 1
#endif
#ifndef NN_COUNT_MALLOC
#define NN_COUNT_MALLOC 0
#endif

// A long: 64 bits on 64-bit targets, and on 32-bit ones still lock-free
// without libatomic (ARMv6 has no 64-bit atomics; a long long counter would
// not link there).
inline std::atomic<long>& heap_alloc_counter() {
    static std::atomic<long> n{0};
    return n;
}
// Allocations made so far by this program.
inline long long heap_allocs() { return heap_alloc_counter().load(std::memory_order_relaxed); }
inline void count_alloc() { heap_alloc_counter().fetch_add(1, std::memory_order_relaxed); }

#if NN_COUNT_MALLOC
extern "C" {
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);
void __libc_free(void*);
void* malloc(size_t n) {
    count_alloc();
    return __libc_malloc(n);
}
void* calloc(size_t n, size_t s) {
    count_alloc();
    return __libc_calloc(n, s);
}
void* realloc(void* p, size_t n) {
    count_alloc();
    return __libc_realloc(p, n);
}
void* aligned_alloc(size_t a, size_t n) {
    count_alloc();
    return __libc_memalign(a, n);
}
int posix_memalign(void** out, size_t a, size_t n) {
    count_alloc();
    void* p = __libc_memalign(a, n);
    if (!p) return 12;  // ENOMEM
    *out = p;
    return 0;
}
void free(void* p) { __libc_free(p); }
}
#endif

void* operator new(size_t n) {
#if !NN_COUNT_MALLOC
    count_alloc();
#endif
    void* p = std::malloc(n ? n : 1);
    if (!p) std::abort();
    return p;
}
void* operator new[](size_t n) { return ::operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
