// LogIntSoftmax, int8 input, on AVX2: codes per distinct value instead of per element.
//
// For int8 scores e_j depends only on u = max - x_j in 0..255, so a row needs the code of each u
// in 0..max-min (eight at a time below, the same exact formula as the scalar CodesFromExps) and
// then one table lookup per element.
#pragma once

#if defined(__AVX2__)
#include "simd.h"

#include <cstdint>
#include <cstring>

namespace onnxvq {
namespace avx2 {

// Row constants of README step 7: root = isqrt(2 S'^2) < 2^32 and its bit length - 1.
struct CodeConsts {
  __m256i root, root_log, max_code, zero_code;
};

inline CodeConsts MakeCodeConsts(uint32_t root, int32_t root_log, int max_code, int zero_code) {
  return {_mm256_set1_epi32(static_cast<int32_t>(root)), _mm256_set1_epi32(root_log),
          _mm256_set1_epi32(max_code), _mm256_set1_epi32(zero_code)};
}

// Codes of eight E values (0 <= E < 2^31): k = #{t : E <= root >> t}, found from the float
// exponent of E (which may round up by one) and two exact unsigned tests, as in CodesFromExps.
inline __m256i Codes8(__m256i e, const CodeConsts& c) {
  const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi32(1);
  const __m256i c31 = _mm256_set1_epi32(31), c32 = _mm256_set1_epi32(32);
  const __m256i elog = _mm256_sub_epi32(
      _mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(e)), 23), _mm256_set1_epi32(127));
  const __m256i s0 = _mm256_sub_epi32(c.root_log, elog), s1 = _mm256_add_epi32(s0, one);
  const __m256i t0 = _mm256_min_epi32(_mm256_max_epi32(s0, zero), c31);
  const __m256i t1 = _mm256_min_epi32(_mm256_max_epi32(s1, zero), c31);
  const __m256i u0 = _mm256_srlv_epi32(c.root, t0), u1 = _mm256_srlv_epi32(c.root, t1);
  const __m256i le0 = _mm256_cmpeq_epi32(_mm256_max_epu32(e, u0), u0);  // -1 where E <= u0
  const __m256i le1 = _mm256_and_si256(_mm256_cmpeq_epi32(_mm256_max_epu32(e, u1), u1),
                                       _mm256_cmpgt_epi32(c32, s1));
  __m256i k = _mm256_sub_epi32(_mm256_sub_epi32(_mm256_sub_epi32(s0, one), le0), le1);
  k = _mm256_min_epi32(_mm256_max_epi32(k, zero), _mm256_add_epi32(c.max_code, one));
  const __m256i to_zero =
      _mm256_or_si256(_mm256_cmpeq_epi32(e, zero), _mm256_cmpgt_epi32(k, c.max_code));
  return _mm256_blendv_epi8(k, c.zero_code, to_zero);
}

// code[u] for u in [0, count) (count rounded up to 8): E_u = lut[u] >> h, lut padded by 8.
inline void CodeTable(const int64_t* lut, int count, int h, const CodeConsts& c, int32_t* code) {
  const __m128i shift = _mm_cvtsi32_si128(h);
  const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  for (int u = 0; u < count; u += 8) {
    const __m256i lo = _mm256_srl_epi64(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lut + u)), shift);
    const __m256i hi = _mm256_srl_epi64(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lut + u + 4)), shift);
    // E < 2^31: the low dwords are the values; gather them into one vector in order.
    const __m256i e = _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(lo, even),
                                                _mm256_permutevar8x32_epi32(hi, even), 0x20);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(code + u), Codes8(e, c));
  }
}

// Row max and min of int8 scores, 32 at a time; the tail is one overlapping load (max and min
// are idempotent), so only rows shorter than 32 take the scalar loop.
inline void MaxMin(const int8_t* x, int64_t n, int32_t& mx, int32_t& mn) {
  if (n < 32) {
    mx = x[0];
    mn = x[0];
    for (int64_t j = 1; j < n; ++j) {
      mx = x[j] > mx ? x[j] : mx;
      mn = x[j] < mn ? x[j] : mn;
    }
    return;
  }
  __m256i vmax = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + n - 32)), vmin = vmax;
  for (int64_t j = 0; j + 32 <= n; j += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j));
    vmax = _mm256_max_epi8(vmax, v);
    vmin = _mm256_min_epi8(vmin, v);
  }
  __m128i hmax = _mm_max_epi8(_mm256_castsi256_si128(vmax), _mm256_extracti128_si256(vmax, 1));
  __m128i hmin = _mm_min_epi8(_mm256_castsi256_si128(vmin), _mm256_extracti128_si256(vmin, 1));
  hmax = _mm_max_epi8(hmax, _mm_srli_si128(hmax, 8));
  hmin = _mm_min_epi8(hmin, _mm_srli_si128(hmin, 8));
  hmax = _mm_max_epi8(hmax, _mm_srli_si128(hmax, 4));
  hmin = _mm_min_epi8(hmin, _mm_srli_si128(hmin, 4));
  hmax = _mm_max_epi8(hmax, _mm_srli_si128(hmax, 2));
  hmin = _mm_min_epi8(hmin, _mm_srli_si128(hmin, 2));
  hmax = _mm_max_epi8(hmax, _mm_srli_si128(hmax, 1));
  hmin = _mm_min_epi8(hmin, _mm_srli_si128(hmin, 1));
  mx = static_cast<int8_t>(_mm_cvtsi128_si32(hmax));
  mn = static_cast<int8_t>(_mm_cvtsi128_si32(hmin));
}

// #{k < 16 : v[k] > limit} for int64 v and limit in [0, 2^63).
inline int CountAbove16(const int64_t* v, __m256i limit) {
  const auto* p = reinterpret_cast<const __m256i*>(v);
  const __m256i a = _mm256_add_epi64(_mm256_cmpgt_epi64(_mm256_loadu_si256(p), limit),
                                     _mm256_cmpgt_epi64(_mm256_loadu_si256(p + 1), limit));
  const __m256i b = _mm256_add_epi64(_mm256_cmpgt_epi64(_mm256_loadu_si256(p + 2), limit),
                                     _mm256_cmpgt_epi64(_mm256_loadu_si256(p + 3), limit));
  const __m256i s = _mm256_add_epi64(a, b);  // -count per lane
  const __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  return -static_cast<int>(_mm_cvtsi128_si64(_mm_add_epi64(h, _mm_unpackhi_epi64(h, h))));
}

// #{k < 4 : v[k] > limit} for int64 v and limit in [0, 2^63).
inline int CountAbove4(const int64_t* v, int64_t limit) {
  const __m256i gt = _mm256_cmpgt_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v)),
                                        _mm256_set1_epi64x(limit));
  return __builtin_popcount(static_cast<unsigned>(_mm256_movemask_pd(_mm256_castsi256_pd(gt))));
}

// Codes of a row whose code is a step function of x: code = base - #{i : x > thr[i]} (thr as
// int8), with k == M + 1 mapped to the zero code when they differ (bits >= 6).
struct StepCodes {
  int8_t thr[32];
  int count;
  int base;
  int full, zero_code;  // M + 1 and Z
};

inline __m256i Steps32(__m256i x, const StepCodes& c, const __m256i* thr) {
  __m256i k = _mm256_set1_epi8(static_cast<char>(c.base));
  for (int i = 0; i < c.count; ++i) k = _mm256_add_epi8(k, _mm256_cmpgt_epi8(x, thr[i]));
  if (c.full != c.zero_code) {
    const __m256i full = _mm256_cmpeq_epi8(k, _mm256_set1_epi8(static_cast<char>(c.full)));
    k = _mm256_blendv_epi8(k, _mm256_set1_epi8(static_cast<char>(c.zero_code)), full);
  }
  return k;
}

// Four vectors per pass over the thresholds: the loop overhead and the threshold loads are
// shared, and the four compare chains are independent.
inline void Steps128(const int8_t* x, const StepCodes& c, const __m256i* thr, uint8_t* y) {
  const auto* in = reinterpret_cast<const __m256i*>(x);
  const __m256i x0 = _mm256_loadu_si256(in), x1 = _mm256_loadu_si256(in + 1);
  const __m256i x2 = _mm256_loadu_si256(in + 2), x3 = _mm256_loadu_si256(in + 3);
  __m256i k0 = _mm256_set1_epi8(static_cast<char>(c.base)), k1 = k0, k2 = k0, k3 = k0;
  for (int i = 0; i < c.count; ++i) {
    const __m256i t = thr[i];
    k0 = _mm256_add_epi8(k0, _mm256_cmpgt_epi8(x0, t));
    k1 = _mm256_add_epi8(k1, _mm256_cmpgt_epi8(x1, t));
    k2 = _mm256_add_epi8(k2, _mm256_cmpgt_epi8(x2, t));
    k3 = _mm256_add_epi8(k3, _mm256_cmpgt_epi8(x3, t));
  }
  if (c.full != c.zero_code) {
    const __m256i full = _mm256_set1_epi8(static_cast<char>(c.full));
    const __m256i zero = _mm256_set1_epi8(static_cast<char>(c.zero_code));
    k0 = _mm256_blendv_epi8(k0, zero, _mm256_cmpeq_epi8(k0, full));
    k1 = _mm256_blendv_epi8(k1, zero, _mm256_cmpeq_epi8(k1, full));
    k2 = _mm256_blendv_epi8(k2, zero, _mm256_cmpeq_epi8(k2, full));
    k3 = _mm256_blendv_epi8(k3, zero, _mm256_cmpeq_epi8(k3, full));
  }
  auto* out = reinterpret_cast<__m256i*>(y);
  _mm256_storeu_si256(out, k0);
  _mm256_storeu_si256(out + 1, k1);
  _mm256_storeu_si256(out + 2, k2);
  _mm256_storeu_si256(out + 3, k3);
}

inline void StepRow(const int8_t* x, int64_t n, const StepCodes& c, uint8_t* y) {
  __m256i thr[32];
  for (int i = 0; i < c.count; ++i) thr[i] = _mm256_set1_epi8(c.thr[i]);
  int64_t j = 0;
  if (n >= 128) {  // blocks of 128, the last one overlapping: its codes are recomputed
    for (; j + 128 <= n; j += 128) Steps128(x + j, c, thr, y + j);
    if (j < n) Steps128(x + n - 128, c, thr, y + n - 128);
    return;
  }
  for (; j + 32 <= n; j += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + j), Steps32(v, c, thr));
  }
  if (j < n && n >= 32) {  // the tail as one overlapping vector: its codes are recomputed
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + n - 32));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + n - 32), Steps32(v, c, thr));
  } else if (j < n) {  // short rows through a padded copy
    alignas(32) int8_t in[32] = {};
    alignas(32) uint8_t out[32];
    std::memcpy(in, x + j, static_cast<size_t>(n - j));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out),
                       Steps32(_mm256_load_si256(reinterpret_cast<const __m256i*>(in)), c, thr));
    std::memcpy(y + j, out, static_cast<size_t>(n - j));
  }
}

}  // namespace avx2
}  // namespace onnxvq

#endif  // __AVX2__
