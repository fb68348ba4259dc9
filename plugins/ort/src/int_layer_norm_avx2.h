// IntLayerNorm's exact integer output steps (README 7-10) on AVX2, 8 channels at a time: the
// fallback of the float output pass (int_layer_norm_avx2_float.h) where its check cannot decide.
//
// Exactness (plugins/README.md bounds): |num| < 2^25 and R < 2^55 give
// num * R = |num| * R_lo + (|num| * R_hi) << 32 < 2^55 from two
// unsigned 32x32->64 products; z < 2^23 + 1 and |gamma| <= 2^30 suit the signed 32x32->64
// product, and a = z * gamma + beta < 2^56 stays in int64 lanes. Rounding needs no 64-bit
// arithmetic shift: clamping a to [lo, hi] * 2^G' first changes no output (rnd is monotone and
// rnd(lo * 2^G') = lo), after which a + 2^(G'-1) - [a < 0] - lo * 2^G' >= 0 and a logical shift
// gives the code - lo (rnd(a) = floor((a + 2^(G'-1) - [a < 0]) / 2^G')); |off| < 2^48.
#pragma once

#if defined(__AVX2__)
#include "simd.h"

#include <cstdint>
#include <type_traits>

namespace onnxvq {
namespace avx2 {

// Per-call constants of the output loop (everything but the row's S1 and R).
struct LnOut {
  const int32_t* shift;    // alpha_c
  const int32_t* gamma;    // gamma_c
  const int64_t* beta_eo;  // per group of 8 channels: beta + off of channels 0,2,4,6, 1,3,5,7
  int32_t zero_point, channels;
  int out_shift;           // G' = 16 + gamma_shift
  int64_t lo, hi;          // output range
};

template <class TIn>
inline __m256i Widen8(const TIn* x) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(x));
  if constexpr (std::is_signed_v<TIn>) return _mm256_cvtepi8_epi32(b);
  return _mm256_cvtepu8_epi32(b);
}

// The output loop adds off = 2^(G'-1) - lo * 2^G' to beta once per call (beta_eo holds
// beta + off), so a' = a + off, the code + 128 (int8) or code (uint8) is
// (clamp(a', lo * 2^G' + off, hi * 2^G' + off) - [a' < off]) >> G'  (see the header comment).
inline int64_t QuantizeOffset(int out_shift, int64_t lo) {
  return (int64_t{1} << (out_shift - 1)) - lo * (int64_t{1} << out_shift);
}

struct Quantizer {
  __m256i lo_s, hi_s, offset;
  __m128i shift;
};

inline Quantizer MakeQuantizer(const LnOut& p) {
  const int64_t unit = int64_t{1} << p.out_shift, off = QuantizeOffset(p.out_shift, p.lo);
  return {_mm256_set1_epi64x(p.lo * unit + off), _mm256_set1_epi64x(p.hi * unit + off),
          _mm256_set1_epi64x(off), _mm_cvtsi32_si128(p.out_shift)};
}

// Four a' values in, their codes (+128 for int8) in the low dwords of the 64-bit lanes out.
inline __m256i Quantize4(__m256i a, const Quantizer& q) {
  const __m256i neg = _mm256_cmpgt_epi64(q.offset, a);  // -1 where a < 0
  a = _mm256_blendv_epi8(a, q.lo_s, _mm256_cmpgt_epi64(q.lo_s, a));
  a = _mm256_blendv_epi8(a, q.hi_s, _mm256_cmpgt_epi64(a, q.hi_s));
  return _mm256_srl_epi64(_mm256_add_epi64(a, neg), q.shift);
}

struct RowConsts {
  __m256i zp, c, s1, r_lo, r_hi, half;
};

// z of 8 channels (int32, channel order): |z| = |num| * R_hi + ((|num| * R_lo + 2^31) >> 32),
// which is (|num| * R + 2^31) >> 32 split at the multiple of 2^32; |num| * R_hi < 2^23 because
// |num| * R < 2^55, so the 32-bit product is exact.
inline __m256i Z8(__m256i num, const RowConsts& k) {
  const __m256i mag = _mm256_abs_epi32(num);
  const __m256i even = _mm256_add_epi64(_mm256_mul_epu32(mag, k.r_lo), k.half);
  const __m256i odd =
      _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(mag, 32), k.r_lo), k.half);
  const __m256i low = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  return _mm256_sign_epi32(_mm256_add_epi32(_mm256_mullo_epi32(mag, k.r_hi), low), num);
}

inline RowConsts MakeRowConsts(const LnOut& p, int64_t s1, int64_t r) {
  return {_mm256_set1_epi32(p.zero_point), _mm256_set1_epi32(p.channels),
          _mm256_set1_epi32(static_cast<int32_t>(s1)),
          _mm256_set1_epi64x(static_cast<uint32_t>(r)),
          _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint64_t>(r) >> 32)),
          _mm256_set1_epi64x(int64_t{1} << 31)};
}

// Codes + 128 (or codes) of channels [i, i + 8) from their xt, as int32 in channel order.
inline __m256i CodesOfXt8(__m256i xt, int32_t i, const LnOut& p, const RowConsts& k,
                          const Quantizer& q) {
  const __m256i z = Z8(_mm256_sub_epi32(_mm256_mullo_epi32(xt, k.c), k.s1), k);
  const __m256i g = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.gamma + i));
  const __m256i* beta = reinterpret_cast<const __m256i*>(p.beta_eo + i);
  const __m256i even =
      Quantize4(_mm256_add_epi64(_mm256_mul_epi32(z, g), _mm256_loadu_si256(beta)), q);
  const __m256i odd = Quantize4(
      _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(z, 32), _mm256_srli_epi64(g, 32)),
                       _mm256_loadu_si256(beta + 1)),
      q);
  return _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// 16 codes (+128 for int8, see Quantize4) as int32 lanes to bytes, the +128 undone for int8.
template <class TOut>
inline void StoreCodes16(TOut* y, __m256i c0, __m256i c1) {
  const __m128i flip = _mm_set1_epi8(std::is_signed_v<TOut> ? static_cast<char>(0x80) : 0);
  const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(c0, c1), 0xD8);
  const __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(w),
                                         _mm256_extracti128_si256(w, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(y), _mm_xor_si128(bytes, flip));
}

}  // namespace avx2
}  // namespace onnxvq

#endif  // __AVX2__
