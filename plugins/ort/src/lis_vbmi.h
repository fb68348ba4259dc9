// AVX-512 VBMI byte-table loops of LogIntAttention's softmax row (log_int_softmax.cc,
// attention_lis.cc). For int8 scores everything per element is a function of u = max - x in
// 0..255, so a row becomes a few 256-entry byte tables indexed by u with vpermi2b (two of them and
// a blend by u's top bit when the row's range reaches 128):
// - the exp sum: the exp table split into byte planes, each plane's bytes summed by vpsadbw and
//   the plane sums recombined with their shifts (exact: every term is an integer);
// - the log-code weights: one table of u8 weights (or two, high and low bytes) read per element
//   straight from the scores, their row sum by vpsadbw.
// Compiled for that target only inside these functions; callers check vbmi::Available() first.
#pragma once

#include "simd.h"

#include <cstdint>
#include <cstdlib>

namespace onnxvq {
namespace vbmi {

inline bool Available() {
  // ONNXVQ_NO_VBMI keeps the AVX2 row loops (to test them on a VBMI machine).
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vbmi") != 0 && __builtin_cpu_supports("avx512bw") != 0 &&
           std::getenv("ONNXVQ_NO_VBMI") == nullptr;
  }();
  return has;
}

// A 256-entry byte table in four registers; `wide`: the row's u reach 128 and up.
struct Table {
  __m512i t[4];
  bool wide;
};

ONNXVQ_VBMI inline Table LoadTable(const uint8_t* bytes, bool wide) {
  Table t;
  t.wide = wide;
  for (int i = 0; i < 4; ++i) t.t[i] = _mm512_loadu_si512(bytes + 64 * i);
  return t;
}

// table[idx] per byte where `live`, else 0.
ONNXVQ_VBMI inline __m512i Lookup(const Table& t, __m512i idx, __mmask64 live) {
  if (!t.wide) return _mm512_maskz_permutex2var_epi8(live, t.t[0], idx, t.t[1]);
  const __mmask64 top = _mm512_movepi8_mask(idx);
  return _mm512_or_si512(_mm512_maskz_permutex2var_epi8(live & ~top, t.t[0], idx, t.t[1]),
                         _mm512_maskz_permutex2var_epi8(live & top, t.t[2], idx, t.t[3]));
}

// The sum of the eight int64 lanes (not _mm512_reduce_add_epi64: GCC 12 warns inside it).
ONNXVQ_VBMI inline int64_t Sum64(__m512i v) {
  const __m512i a = _mm512_add_epi64(v, _mm512_shuffle_i64x2(v, v, 0x4e));  // + the other half
  const __m128i c = _mm512_castsi512_si128(_mm512_add_epi64(a, _mm512_shuffle_i64x2(a, a, 0xb1)));
  return _mm_cvtsi128_si64(_mm_add_epi64(c, _mm_unpackhi_epi64(c, c)));
}

inline __mmask64 Live(int64_t left) {
  return left >= 64 ? ~__mmask64{0} : left <= 0 ? __mmask64{0} : (__mmask64{1} << left) - 1;
}

// u = mx - x per byte (0..255 for x <= mx), 0 past n.
ONNXVQ_VBMI inline __m512i Index(const int8_t* x, int64_t left, __m512i vmx, __mmask64& live) {
  live = Live(left);
  return _mm512_sub_epi8(vmx, _mm512_maskz_loadu_epi8(live, x));
}

// sum_j lut[mx - x_j] for the table given as `planes` byte planes [p][256] (plane p: bits
// 8p..8p+7 of each entry); the caller guarantees the sum < 2^64.
ONNXVQ_VBMI inline uint64_t ExpSum(const int8_t* x, int64_t n, int32_t mx, const uint8_t* planes,
                                   int nplanes, bool wide) {
  const __m512i vmx = _mm512_set1_epi8(static_cast<char>(mx)), zero = _mm512_setzero_si512();
  uint64_t s = 0;
  for (int p = 0; p < nplanes; ++p) {
    const Table t = LoadTable(planes + 256 * p, wide);
    __m512i acc = zero;
    for (int64_t j0 = 0; j0 < n; j0 += 64) {
      __mmask64 live;
      const __m512i idx = Index(x + j0, n - j0, vmx, live);
      acc = _mm512_add_epi64(acc, _mm512_sad_epu8(Lookup(t, idx, live), zero));
    }
    s += static_cast<uint64_t>(Sum64(acc)) << (8 * p);
  }
  return s;
}

// u[j] = table[mx - x_j] for j < n and 0 up to jpad; returns sum_j u[j].
ONNXVQ_VBMI inline int32_t LookupRow(const int8_t* x, int64_t n, int64_t jpad, int32_t mx,
                                     const Table& t, uint8_t* u) {
  const __m512i vmx = _mm512_set1_epi8(static_cast<char>(mx)), zero = _mm512_setzero_si512();
  __m512i acc = zero;
  for (int64_t j0 = 0; j0 < jpad; j0 += 64) {
    __mmask64 live;
    const __m512i idx = Index(x + j0, n - j0, vmx, live);
    const __m512i b = Lookup(t, idx, live);
    _mm512_mask_storeu_epi8(u + j0, Live(jpad - j0), b);
    acc = _mm512_add_epi64(acc, _mm512_sad_epu8(b, zero));
  }
  return static_cast<int32_t>(Sum64(acc));
}

// code[u] for u < count (code has room for count rounded up to 16; lut is padded by 16): the
// log2 code of E = lut[u] >> h < 2^31 as CodesFromExps (log_int_softmax.cc), 16 at a time:
// k = #{t : E <= root >> t} from E's float exponent (which may round up by one) and two exact
// tests, root = isqrt(2 S'^2).
ONNXVQ_VBMI inline void CodeTable(const int64_t* lut, int count, int h, uint32_t root,
                                  int max_code, int zero_code, uint8_t* code) {
  const __m128i shift = _mm_cvtsi32_si128(h);
  const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
  const __m512i c31 = _mm512_set1_epi32(31), c32 = _mm512_set1_epi32(32);
  const __m512i vroot = _mm512_set1_epi32(static_cast<int32_t>(root));
  const __m512i vlog = _mm512_set1_epi32(root == 0 ? -1 : 31 - __builtin_clz(root));
  const __m512i vmax = _mm512_set1_epi32(max_code), vfull = _mm512_set1_epi32(max_code + 1);
  const __m512i vzero_code = _mm512_set1_epi32(zero_code);
  for (int u = 0; u < count; u += 16) {
    const __m256i lo = _mm512_cvtepi64_epi32(_mm512_srl_epi64(_mm512_loadu_si512(lut + u), shift));
    const __m256i hi =
        _mm512_cvtepi64_epi32(_mm512_srl_epi64(_mm512_loadu_si512(lut + u + 8), shift));
    const __m512i e = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    const __m512i elog = _mm512_sub_epi32(
        _mm512_srli_epi32(_mm512_castps_si512(_mm512_cvtepi32_ps(e)), 23), _mm512_set1_epi32(127));
    const __m512i s0 = _mm512_sub_epi32(vlog, elog), s1 = _mm512_add_epi32(s0, one);
    const __m512i t0 = _mm512_min_epi32(_mm512_max_epi32(s0, zero), c31);
    const __m512i t1 = _mm512_min_epi32(_mm512_max_epi32(s1, zero), c31);
    const __mmask16 le0 = _mm512_cmple_epu32_mask(e, _mm512_srlv_epi32(vroot, t0));
    const __mmask16 le1 = _mm512_cmple_epu32_mask(e, _mm512_srlv_epi32(vroot, t1)) &
                          _mm512_cmplt_epi32_mask(s1, c32);
    __m512i k = _mm512_sub_epi32(s0, one);
    k = _mm512_mask_add_epi32(k, le0, k, one);
    k = _mm512_mask_add_epi32(k, le1, k, one);
    k = _mm512_min_epi32(_mm512_max_epi32(k, zero), vfull);
    const __mmask16 to_zero = _mm512_cmpeq_epi32_mask(e, zero) | _mm512_cmpgt_epi32_mask(k, vmax);
    k = _mm512_mask_mov_epi32(k, to_zero, vzero_code);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(code + u), _mm512_cvtepi32_epi8(k));
  }
}

// The byte weights of every span of codes lo..hi <= max_code (max_code <= 15), per node: a row
// whose nonzero-weight codes lie in the span takes one u8 pass of w >> shift[lo][hi] when that
// is exact for the whole span (every weight a multiple of 2^shift, w >> shift <= 255), else two
// (w >> 8, w & 255); bytes[s][a] = (w(a) >> s) & 255, the vpermb table of shift s.
struct WeightPlans {
  int8_t shift[16][16] = {};
  bool two_pass[16][16] = {};
  uint8_t bytes[16][64] = {};

  void Build(const uint16_t* weight32, int max_code) {
    for (int lo = 0; lo <= max_code; ++lo) {
      uint32_t wor = 0, wmax = 0;
      for (int hi = lo; hi <= max_code; ++hi) {
        wor |= weight32[hi];
        wmax = weight32[hi] > wmax ? weight32[hi] : wmax;
        shift[lo][hi] = static_cast<int8_t>(wor == 0 ? 0 : __builtin_ctz(wor));
        two_pass[lo][hi] = (wmax >> shift[lo][hi]) > 255;
      }
    }
    for (int s = 0; s < 16; ++s) {
      for (int a = 0; a < 32; ++a) bytes[s][a] = static_cast<uint8_t>((weight32[a] >> s) & 255);
    }
  }
};

// The smallest byte of lo and the largest of hi: halves folded onto byte 0 (the zeros shifted
// in land in bytes that byte 0 never reads again).
ONNXVQ_VBMI inline void MinMaxBytes(__m512i lo, __m512i hi, int& min, int& max) {
  lo = _mm512_min_epu8(lo, _mm512_shuffle_i64x2(lo, lo, 0x4e));
  hi = _mm512_max_epu8(hi, _mm512_shuffle_i64x2(hi, hi, 0x4e));
  lo = _mm512_min_epu8(lo, _mm512_shuffle_i64x2(lo, lo, 0xb1));
  hi = _mm512_max_epu8(hi, _mm512_shuffle_i64x2(hi, hi, 0xb1));
  __m128i a = _mm512_castsi512_si128(lo), b = _mm512_castsi512_si128(hi);
  a = _mm_min_epu8(a, _mm_unpackhi_epi64(a, a));
  b = _mm_max_epu8(b, _mm_unpackhi_epi64(b, b));
  a = _mm_min_epu8(a, _mm_srli_epi64(a, 32));
  b = _mm_max_epu8(b, _mm_srli_epi64(b, 32));
  a = _mm_min_epu8(a, _mm_srli_epi64(a, 16));
  b = _mm_max_epu8(b, _mm_srli_epi64(b, 16));
  a = _mm_min_epu8(a, _mm_srli_epi64(a, 8));
  b = _mm_max_epu8(b, _mm_srli_epi64(b, 8));
  min = _mm_cvtsi128_si32(a) & 255;
  max = _mm_cvtsi128_si32(b) & 255;
}

// lo and hi: the smallest and largest code <= max_code of code[0..count), hi = -1 if none.
ONNXVQ_VBMI inline void CodeSpan(const uint8_t* code, int count, int max_code, int& lo, int& hi) {
  const __m512i cap = _mm512_set1_epi8(static_cast<char>(max_code));
  __m512i vmin = _mm512_set1_epi8(-1), vmax = _mm512_setzero_si512();
  __mmask64 seen = 0;
  for (int j = 0; j < count; j += 64) {
    const __mmask64 live = Live(count - j);
    const __m512i v = _mm512_maskz_loadu_epi8(live, code + j);
    const __mmask64 ok = _mm512_mask_cmple_epu8_mask(live, v, cap);
    vmin = _mm512_mask_min_epu8(vmin, ok, vmin, v);
    vmax = _mm512_mask_max_epu8(vmax, ok, vmax, v);
    seen |= ok;
  }
  lo = 0;
  hi = -1;
  if (seen != 0) MinMaxBytes(vmin, vmax, lo, hi);
}

// The byte table bytes64[code[u]] for u < count (codes < 64; zero past count), built in the
// registers Lookup reads (no store and reload); `wide`: count > 128.
ONNXVQ_VBMI inline Table MapTable(const uint8_t* code, int count, const uint8_t* bytes64,
                                  bool wide) {
  const __m512i t = _mm512_loadu_si512(bytes64);
  Table out;
  out.wide = wide;
  for (int i = 0; i < 4; ++i) {
    const __mmask64 live = Live(count - 64 * i);
    out.t[i] = _mm512_maskz_permutexvar_epi8(live, _mm512_maskz_loadu_epi8(live, code + 64 * i), t);
  }
  return out;
}

}  // namespace vbmi
}  // namespace onnxvq
