// kernels/simd.hpp — the one place that decides between xsimd and plain loops.
//
// NN_SIMD is 1 when xsimd is installed, not disabled with NN_NO_XSIMD, and
// has an architecture for the flags this file is compiled with (ARMv6, or
// ARMv7 without -mfpu=neon, have none). Every kernel keeps a plain loop that
// runs when NN_SIMD is 0 and doubles as its reference in the tests.
#pragma once

#if !defined(NN_NO_XSIMD) && defined(__has_include)
#if __has_include(<xsimd/xsimd.hpp>)
// GCC 12 reports the AVX-512 intrinsics' own `__Y = __Y` placeholders as
// maybe-uninitialized once xsimd's exp is inlined; the pragma covers only the
// lines of the headers included here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <xsimd/xsimd.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#if !defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
#define NN_SIMD 1
#endif
#endif
#endif
#ifndef NN_SIMD
#define NN_SIMD 0
#endif

namespace nn {
namespace simd {

#if NN_SIMD
using vf = xsimd::batch<float>;
constexpr int kWidth = (int)vf::size;  // floats per vector register

// Horizontal sum. xsimd 9 renamed hadd to reduce_add; Debian 12 ships 8.1.
inline float hsum(const vf& v) {
#if XSIMD_VERSION_MAJOR >= 9
    return xsimd::reduce_add(v);
#else
    return xsimd::hadd(v);
#endif
}
inline const char* arch_name() { return vf::arch_type::name(); }

// Keeps a loaded vector in a register. GCC folds a load into every FMA that
// uses the value when it can (an FMA with a memory operand), so a vector
// meant to be loaded once and used by four FMAs is read four times; in a
// loop that is already near the load ports' limit that costs more than the
// FMAs. The empty asm says the register's contents changed, which rules the
// folding out; it emits no instruction.
inline void keep_in_register(vf& v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    asm("" : "+v"(v.data));
#elif defined(__GNUC__) && (defined(__aarch64__) || defined(__ARM_NEON))
    asm("" : "+w"(v.data));
#else
    (void)v;
#endif
}
#else
constexpr int kWidth = 1;
inline const char* arch_name() { return "scalar"; }
#endif

// Subnormals in vector lanes. ARMv7's Advanced SIMD (32-bit NEON) always
// flushes subnormal inputs and results to zero and returns the default NaN,
// whatever FPSCR says (only its scalar VFP unit does IEEE 754 gradual
// underflow). So on armhf a vector kernel's result whose exact value lies
// below FLT_MIN = 2^-126 in magnitude is 0, and differs from the plain loop
// by less than FLT_MIN. AArch64 NEON and x86 keep subnormals.
#if NN_SIMD && defined(__ARM_NEON) && !defined(__aarch64__)
constexpr bool kFlushesSubnormals = true;
#else
constexpr bool kFlushesSubnormals = false;
#endif

}  // namespace simd
}  // namespace nn
