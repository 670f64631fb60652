// kernels/vmath.hpp — vector math for the activation, loss and optimizer
// kernels: an exp that is right over the whole float range, division and
// square root correctly rounded on every target (vdiv, vsqrt), and
// loads/stores of a partial vector (a row's last cols % kWidth floats).
//
// Why not xsimd::exp: xsimd 8.1's float exp returns +inf from x >= 88.3763
// although e^x is finite up to ln(FLT_MAX) = 88.7228, and returns 0 from
// x <= -87.68 (and flushes to 0 from -87.34, where results turn subnormal)
// instead of underflowing gradually as std::exp does. vexp below stays
// within ~1 ulp of the correctly rounded e^x over the whole range, overflows
// exactly where std::exp does and rounds subnormal results once. xsimd::log,
// xsimd::log1p and xsimd::tanh measured within 1.4 ulp over every 31st
// float (AVX-512 and AVX2), subnormals and +-inf included, so the kernels
// use them as they are.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "simd.hpp"

namespace nn {
namespace simd {

#if NN_SIMD
using vi = xsimd::batch<int32_t, vf::arch_type>;  // int lanes beside the float lanes

// The float whose bits are `bits`. xsimd 9 takes the element type.
inline vf as_float(const vi& bits) {
#if XSIMD_VERSION_MAJOR >= 9
    return xsimd::bitwise_cast<float>(bits);
#else
    return xsimd::bitwise_cast<vf>(bits);
#endif
}

// e^x per lane; NaN stays NaN, -inf gives 0, +inf gives +inf.
//
// Range reduction: x = k ln2 + r with k = round(x / ln2), |r| <= ln2 / 2,
// so e^x = 2^k e^r. ln2 is split Cody-Waite style into kLn2Hi, which has 9
// significant bits so k * kLn2Hi is exact for |k| < 2^15, and the small
// remainder kLn2Lo; x - k kLn2Hi is then exact too, and r carries only the
// rounding of the kLn2Lo product (~1e-9 relative to e^x).
inline vf vexp(const vf& x) {
    const float kLn2Hi = 0.693359375f;        // 355 / 512
    const float kLn2Lo = -2.12194440e-4f;     // ln2 - kLn2Hi
    const float kLog2e = 1.44269504088896341f;
    // Below -104, e^x < 2^-150 rounds to 0 (-inf too): those lanes compute
    // e^0 and are set to 0 at the end, because letting them underflow costs
    // a microcode assist (~100 cycles on x86 without flush-to-zero) on every
    // row whose padding lanes hold -inf. Above 89 e^x is inf whatever x is.
    // So k stays in [-150, 128] and the integer steps below cannot wrap.
    const auto zero_out = x < vf(-104.0f);
    const vf xc = xsimd::min(xsimd::select(zero_out, vf(0.0f), x), vf(89.0f));
    const vf kf = xsimd::nearbyint(xc * vf(kLog2e));
    vf r = xsimd::fnma(kf, vf(kLn2Hi), xc);  // xc - k kLn2Hi, exact
    r = xsimd::fnma(kf, vf(kLn2Lo), r);
    // e^r by its Taylor series to r^7, in Horner form: the first dropped term
    // r^8 / 8! is below 5.2e-9 for |r| <= ln2 / 2, under 0.1 ulp.
    vf p(1.0f / 5040.0f);
    p = xsimd::fma(p, r, vf(1.0f / 720.0f));
    p = xsimd::fma(p, r, vf(1.0f / 120.0f));
    p = xsimd::fma(p, r, vf(1.0f / 24.0f));
    p = xsimd::fma(p, r, vf(1.0f / 6.0f));
    p = xsimd::fma(p, r, vf(0.5f));
    p = xsimd::fma(p, r, vf(1.0f));
    p = xsimd::fma(p, r, vf(1.0f));
    // Scale by 2^k as 2^k1 * 2^k2 with k1 = floor(k / 2): both halves lie in
    // [-75, 64], so each is a normal float built from its exponent bits, p 2^k1
    // is exact, and only the last product rounds: into a subnormal when
    // k < -126 (gradual underflow, as std::exp), to inf when e^x > FLT_MAX.
    const vf k1f = xsimd::floor(kf * vf(0.5f));
    const vi k1 = xsimd::to_int(k1f), k2 = xsimd::to_int(kf - k1f);
    const vf y = p * as_float((k1 + vi(127)) << 23) * as_float((k2 + vi(127)) << 23);
    return xsimd::select(xsimd::isnan(x), x, xsimd::select(zero_out, vf(0.0f), y));  // min() may lose NaN
}

// a / b and sqrt(a) per lane, correctly rounded like the plain loops' `/`
// and std::sqrt. The kernels use these instead of xsimd's operator/ and
// xsimd::sqrt because xsimd 8.1 computes both on NEON from the reciprocal
// (square-root) estimate refined by two Newton-Raphson steps: results an ulp
// or so off, so a vector lane and the plain loop disagree, and sqrt(+inf) is
// NaN (inf * 0 in the refinement). Its neon64 kernels replace only the double
// versions, so this holds on AArch64 too. AArch64 has exact vector fdiv and
// fsqrt; 32-bit NEON has neither, so there each lane goes through the VFP
// unit's scalar IEEE instructions (which also keep subnormals, as NEON does
// not). On x86 xsimd's operator/ and sqrt are already the exact divps/sqrtps.
#if defined(__aarch64__)
inline vf vdiv(const vf& a, const vf& b) { return vf(vdivq_f32(a, b)); }
inline vf vsqrt(const vf& a) { return vf(vsqrtq_f32(a)); }
#elif defined(__ARM_NEON)
inline vf vdiv(const vf& a, const vf& b) {
    const float32x4_t x = a, y = b;
    float32x4_t q = x;
    q = vsetq_lane_f32(vgetq_lane_f32(x, 0) / vgetq_lane_f32(y, 0), q, 0);
    q = vsetq_lane_f32(vgetq_lane_f32(x, 1) / vgetq_lane_f32(y, 1), q, 1);
    q = vsetq_lane_f32(vgetq_lane_f32(x, 2) / vgetq_lane_f32(y, 2), q, 2);
    q = vsetq_lane_f32(vgetq_lane_f32(x, 3) / vgetq_lane_f32(y, 3), q, 3);
    return vf(q);
}
inline vf vsqrt(const vf& a) {
    const float32x4_t x = a;
    float32x4_t r = x;
    r = vsetq_lane_f32(__builtin_sqrtf(vgetq_lane_f32(x, 0)), r, 0);
    r = vsetq_lane_f32(__builtin_sqrtf(vgetq_lane_f32(x, 1)), r, 1);
    r = vsetq_lane_f32(__builtin_sqrtf(vgetq_lane_f32(x, 2)), r, 2);
    r = vsetq_lane_f32(__builtin_sqrtf(vgetq_lane_f32(x, 3)), r, 3);
    return vf(r);
}
#else
inline vf vdiv(const vf& a, const vf& b) { return a / b; }
inline vf vsqrt(const vf& a) { return xsimd::sqrt(a); }
#endif

// The last, partial vector of a row: load_partial gives the first n < kWidth
// floats of x in the low lanes and `fill` in the others; store_partial
// writes the low n lanes; hmax is the largest lane. With them short rows (10
// classes: less than one AVX-512 vector) still run on vectors instead of a
// scalar tail. xsimd 8.1 has no masked loads or stores, and going through a
// stack buffer (scalar stores read back as one vector) stalls on store
// forwarding: it made a 10-class softmax slower than the scalar loop. So
// AVX-512 and AVX2 use their masked instructions (masked-off lanes are not
// read or written, so nothing past the row is touched); other targets the
// buffer. hmax may treat a NaN lane unlike the plain loops' `x > m ? x : m`;
// it does not matter, as a NaN in a row makes the row's sum, and so all of
// the row's outputs, NaN either way.
#if defined(__AVX512F__)
static_assert(kWidth == 16, "an AVX-512 build whose xsimd vectors are not 16 floats");
inline vf load_partial(const float* x, size_t n, float fill) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), (__mmask16)((1u << n) - 1), x);
}
inline void store_partial(float* y, const vf& v, size_t n) {
    _mm512_mask_storeu_ps(y, (__mmask16)((1u << n) - 1), v);
}
inline float hmax(const vf& v) { return _mm512_reduce_max_ps(v); }
#elif defined(__AVX2__)
static_assert(kWidth == 8, "an AVX2 build whose xsimd vectors are not 8 floats");
inline __m256i first_lanes(size_t n) {  // all ones in lanes 0 .. n - 1
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline vf load_partial(const float* x, size_t n, float fill) {
    const __m256i m = first_lanes(n);
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(x, m), _mm256_castsi256_ps(m));
}
inline void store_partial(float* y, const vf& v, size_t n) { _mm256_maskstore_ps(y, first_lanes(n), v); }
inline float hmax(const vf& v) {  // halves, quarters, then the last two lanes
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}
#else
inline vf load_partial(const float* x, size_t n, float fill) {
    alignas(64) float buf[kWidth];
    for (size_t k = 0; k < (size_t)kWidth; ++k) buf[k] = k < n ? x[k] : fill;  // k: lanes
    return vf::load_aligned(buf);
}
inline void store_partial(float* y, const vf& v, size_t n) {
    alignas(64) float buf[kWidth];
    v.store_aligned(buf);
    // n <= kWidth by contract. Stated here, as one copy, because GCC 12
    // otherwise turns the lane loop into a copy it cannot bound where a
    // shifted-row tile inlines this, and warns (-Warray-bounds, armhf).
    std::memcpy(y, buf, (n < (size_t)kWidth ? n : (size_t)kWidth) * sizeof(float));
}
inline float hmax(const vf& v) {
    alignas(64) float buf[kWidth];
    v.store_aligned(buf);
    float m = buf[0];
    for (size_t k = 1; k < (size_t)kWidth; ++k) m = buf[k] > m ? buf[k] : m;  // k: lanes
    return m;
}
#endif
// Lane indices 0, 1, ..., kWidth - 1 as floats (exact: kWidth is small),
// to find a label's column inside a vector of columns.
inline vf lane_index() {
    alignas(64) float buf[kWidth];
    for (size_t k = 0; k < (size_t)kWidth; ++k) buf[k] = (float)k;  // k: lanes
    return vf::load_aligned(buf);
}
#endif

// Float sums in the kernels run in vector lanes for at most this many vectors
// (so each lane adds at most 16 terms, a relative rounding error under
// 16 eps); the partial sum then goes into a double total.
constexpr size_t kSumVectors = 16;

}  // namespace simd
}  // namespace nn
