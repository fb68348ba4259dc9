// AddMulQuantizeLinear's row (plugins/README.md), shared with AddIntLayerNorm's portable path:
// S = A + B and Y = saturate(rne(S * M_c / scale) + zp), the same three IEEE float32 operations in
// the same order as Add -> Mul -> QuantizeLinear (a true division, as ORT's QuantizeLinear does).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__AVX2__)
#include "simd.h"
#endif

namespace onnxvq {
namespace amq {

struct AmqParams {
  const float* mult;  // M, [C]
  int64_t channels, b_rows;
  float scale, zero_point, lo, hi;
};

template <class TOut>
inline TOut Code1(float s, float m, const AmqParams& p) {
  const float q = std::nearbyint((s * m) / p.scale) + p.zero_point;
  return static_cast<TOut>(std::min(std::max(q, p.lo), p.hi));
}

template <class TOut>
inline void AmqRow(const float* __restrict a, const float* __restrict b, float* __restrict s,
            TOut* __restrict y, const AmqParams& p) {
  const float* __restrict mult = p.mult;
  const int64_t c = p.channels;
  int64_t i = 0;
#if defined(__AVX2__)
  const __m256 vs = _mm256_set1_ps(p.scale), vz = _mm256_set1_ps(p.zero_point);
  const __m256 lo = _mm256_set1_ps(p.lo), hi = _mm256_set1_ps(p.hi);
  for (; i + 16 <= c; i += 16) {
    __m256i codes[2];
    for (int k = 0; k < 2; ++k) {
      const int64_t j = i + 8 * k;
      const __m256 v = _mm256_add_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
      _mm256_storeu_ps(s + j, v);
      const __m256 t = _mm256_div_ps(_mm256_mul_ps(v, _mm256_loadu_ps(mult + j)), vs);
      const __m256 r = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      codes[k] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, vz), lo), hi));
    }
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(codes[0], codes[1]), 0xd8);
    const __m128i l = _mm256_castsi256_si128(w), h = _mm256_extracti128_si256(w, 1);
    const __m128i bytes = std::is_signed_v<TOut> ? _mm_packs_epi16(l, h) : _mm_packus_epi16(l, h);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), bytes);
  }
#endif
  for (; i < c; ++i) {
    s[i] = a[i] + b[i];
    y[i] = Code1<TOut>(s[i], mult[i], p);
  }
}

}  // namespace amq
}  // namespace onnxvq
