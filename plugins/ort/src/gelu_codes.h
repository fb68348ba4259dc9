// The erf GELU's 8-lane code kernel, shared by GeluQuantizeLinear and QuantizedLinearGeluQuantize
// (the formula and its error bound: gelu_quantize.cc). It carries its own target attribute so a
// caller compiled for AVX-512 inlines the very same instructions: the codes are the same bits.
#pragma once

#include <cstdint>

#include "simd.h"

namespace onnxvq {
namespace gelu {

constexpr float kA[6] = {0.0705230784f, 0.0422820123f, 0.0092705272f,
                         0.0001520143f, 0.0002765672f, 0.0000430638f};
constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kZMax = 5.0f;  // erfc(5) < 2e-12: p^16 stays finite, the result is unchanged

struct GeluParams {
  const float* bias;  // [N]
  int64_t cols;
  float inv_scale, zero_point, lo, hi;  // 1 / scale: one division per element, not two
};

// Eight elements: codes (as floats in [lo, hi], already rounded) of gelu(x) / scale + zp.
ONNXVQ_AVX2 inline __m256 GeluCodes8(__m256 x, const GeluParams& p) {
  const __m256 absx = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
  const __m256 z = _mm256_min_ps(_mm256_mul_ps(absx, _mm256_set1_ps(kInvSqrt2)),
                                 _mm256_set1_ps(kZMax));
  __m256 poly = _mm256_set1_ps(kA[5]);
  for (int i = 4; i >= 0; --i) poly = _mm256_fmadd_ps(poly, z, _mm256_set1_ps(kA[i]));
  poly = _mm256_fmadd_ps(poly, z, _mm256_set1_ps(1.0f));
  for (int i = 0; i < 4; ++i) poly = _mm256_mul_ps(poly, poly);  // p^16
  const __m256 vi = _mm256_set1_ps(p.inv_scale);
  const __m256 t = _mm256_div_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), _mm256_mul_ps(absx, vi)),
                                 poly);                          // 0.5 |x| erfc / scale
  const __m256 pos = _mm256_fmsub_ps(x, vi, t);                  // x > 0: (x - t) / scale
  const __m256 neg = _mm256_sub_ps(_mm256_setzero_ps(), t);      // x <= 0: -t / scale
  const __m256 g = _mm256_blendv_ps(neg, pos, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ));
  const __m256 r = _mm256_round_ps(g, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 q = _mm256_add_ps(r, _mm256_set1_ps(p.zero_point));
  return _mm256_min_ps(_mm256_max_ps(q, _mm256_set1_ps(p.lo)), _mm256_set1_ps(p.hi));
}

// The same sixteen at a time (AVX-512, for callers behind an AMX check): every step is the same
// IEEE operation lane by lane (andnot, mul, fmadd, div, fmsub, compare-select, round to nearest
// even, min/max), so the codes equal GeluCodes8's bit for bit.
ONNXVQ_AVX512_DQ inline __m512 GeluCodes16(__m512 x, const GeluParams& p) {
  const __m512 absx = _mm512_andnot_ps(_mm512_set1_ps(-0.0f), x);
  const __m512 z = _mm512_min_ps(_mm512_mul_ps(absx, _mm512_set1_ps(kInvSqrt2)),
                                 _mm512_set1_ps(kZMax));
  __m512 poly = _mm512_set1_ps(kA[5]);
  for (int i = 4; i >= 0; --i) poly = _mm512_fmadd_ps(poly, z, _mm512_set1_ps(kA[i]));
  poly = _mm512_fmadd_ps(poly, z, _mm512_set1_ps(1.0f));
  for (int i = 0; i < 4; ++i) poly = _mm512_mul_ps(poly, poly);  // p^16
  const __m512 vi = _mm512_set1_ps(p.inv_scale);
  const __m512 t = _mm512_div_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), _mm512_mul_ps(absx, vi)),
                                 poly);
  const __m512 pos = _mm512_fmsub_ps(x, vi, t);
  const __m512 neg = _mm512_sub_ps(_mm512_setzero_ps(), t);
  const __m512 g = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ),
                                        neg, pos);
  const __m512 r = _mm512_roundscale_ps(g, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 q = _mm512_add_ps(r, _mm512_set1_ps(p.zero_point));
  return _mm512_min_ps(_mm512_max_ps(q, _mm512_set1_ps(p.lo)), _mm512_set1_ps(p.hi));
}

}  // namespace gelu
}  // namespace onnxvq
