// rne(x / divisor) on AVX2 without the division where the multiply decides it: vdivps takes
// 3.5-5 cycles per 8 lanes on Zen 3, more than the rest of the loops that quantize with it
// (AddIntLayerNorm's input codes, LogIntAttention's score codes).
//
// t0 = fl(x fl(1/divisor)) lies within 3.01u |t0| of t = fl(x / divisor) (two roundings against
// one, u = 2^-24; 1/divisor is normal for divisor in [2^-64, 2^64]). Where n = rne(t0) has
// |t0 - n| < 1/2 - 2^-12 and |t0| <= 1024, |t - n| < 1/2 and rne(t) = n; callers saturate beyond
// |1023| (codes of at most 9 bits), where t and t0 agree in sign and saturate alike. |t0 - n| is
// exact (Sterbenz). Any other lane (a near tie, an inf or a NaN: the compare is ordered) sends
// the 8 lanes to the true division, and so does every lane for a divisor outside that range.
// (The AVX-512 paths correct the quotient with two FMA residual steps instead, avx512::DivRn:
// 5 operations always; here 5 plus a compare, and the division for the ~0.4 % of 8-lane groups
// (8 x 2^-11, for evenly spread fractions) with a lane near a tie.)
#pragma once

#if defined(__AVX2__)
#include "simd.h"

namespace onnxvq {
namespace avx2 {

struct Quotient {
  __m256 divisor, inv, room;

  explicit Quotient(float d)
      : divisor(_mm256_set1_ps(d)),
        inv(_mm256_set1_ps(1.0f / d)),
        room(_mm256_set1_ps(d >= 0x1p-64f && d <= 0x1p64f ? 0.5f - 0x1p-12f : -1.0f)) {}

  // rne(fl(x / divisor)) in every lane whose |result| <= 1024 (beyond: the same sign, > 1023).
  __m256 Rne(__m256 x) const {
    const __m256 t0 = _mm256_mul_ps(x, inv);
    const __m256 n = _mm256_round_ps(t0, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 d = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(t0, n));
    if (_mm256_movemask_ps(_mm256_cmp_ps(d, room, _CMP_LT_OQ)) == 0xFF) return n;
    return _mm256_round_ps(_mm256_div_ps(x, divisor),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
};

}  // namespace avx2
}  // namespace onnxvq

#endif  // __AVX2__
