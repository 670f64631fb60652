// kernels/convert.hpp — stored samples to floats, once per batch.
//
// Data sets keep images as bytes, a quarter of the memory of floats, and
// each training step converts its batch's rows (nn::gather); samples stored
// as floats take the same path:
//   dst[i] = src[i] * scale                             (mean == nullptr)
//   dst[i] = (src[i] * scale - mean[i]) * inv_std[i]    (per-feature normalisation)
// src is uint8_t or float. Converting a byte to float is exact, so the
// scale-only form rounds once and the vector loop equals the reference bit
// for bit. The normalised form may be contracted into a fused
// multiply-subtract by the compiler (GCC contracts both bodies, clang only
// the reference's single expression), so there the two agree to an ulp; for
// bytes and for floats of the same values the code is the same, so a data
// set gives the same batch whichever way it is stored.
//
// Why a kernel of its own: GCC -O2 widens bytes to floats through 128-bit
// registers, a shuffle per four values (about 4.7 us for a 64 x 784 batch
// whose rows are already in cache); one widening load per vector takes
// about a third of that.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "simd.hpp"

namespace nn {

template <typename T>
inline void convert_f32_ref(float* dst, const T* src, float scale, const float* mean,
                            const float* inv_std, size_t n) {
    // i: element
    if (mean)
        for (size_t i = 0; i < n; ++i) dst[i] = ((float)src[i] * scale - mean[i]) * inv_std[i];
    else
        for (size_t i = 0; i < n; ++i) dst[i] = (float)src[i] * scale;
}

#if NN_SIMD
namespace simd {
// kWidth values from s as floats (reads exactly kWidth elements).
inline vf load_as_f32(const float* s) { return vf::load_unaligned(s); }
#if defined(__AVX512F__)
inline vf load_as_f32(const uint8_t* s) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)s)));
}
#elif defined(__AVX2__)
inline vf load_as_f32(const uint8_t* s) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)s)));
}
#elif defined(__ARM_NEON)
static_assert(kWidth == 4, "a NEON build whose xsimd vectors are not 4 floats");
inline vf load_as_f32(const uint8_t* s) {
    uint32_t four;
    std::memcpy(&four, s, 4);
    const uint16x8_t wide = vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(four)));
    return vf(vcvtq_f32_u32(vmovl_u16(vget_low_u16(wide))));
}
#else
inline vf load_as_f32(const uint8_t* s) {
    alignas(64) float buf[kWidth];
    for (int k = 0; k < kWidth; ++k) buf[k] = (float)s[k];  // k: lanes
    return vf::load_aligned(buf);
}
#endif
}  // namespace simd
#endif

template <typename T>
inline void convert_f32(float* dst, const T* src, float scale, const float* mean,
                        const float* inv_std, size_t n) {
    size_t i = 0;
#if NN_SIMD
    using simd::vf;
    const size_t W = (size_t)simd::kWidth;
    const vf vscale(scale);
    // i: element, one vector at a time
    if (mean)
        for (; i + W <= n; i += W)
            ((simd::load_as_f32(src + i) * vscale - vf::load_unaligned(mean + i)) *
             vf::load_unaligned(inv_std + i))
                .store_unaligned(dst + i);
    else
        for (; i + W <= n; i += W) (simd::load_as_f32(src + i) * vscale).store_unaligned(dst + i);
#endif
    convert_f32_ref(dst + i, src + i, scale, mean ? mean + i : nullptr, inv_std ? inv_std + i : nullptr,
                    n - i);
}

}  // namespace nn
