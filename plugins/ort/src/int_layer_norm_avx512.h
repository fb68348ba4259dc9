// IntLayerNorm rows on AVX-512 (F, BW, VL), 16 channels per step, the row tail by masks, so a row
// of any width runs in vector code. Compiled for that target only inside these functions (the
// library targets x86-64-v3); callers check Available() at run time, else take the AVX2 rows.
//
// A row is two passes. The front computes xt_c (README step 1) into a per-thread int32 scratch
// row and the sums S1, S2: either from the PTS codes (IntLayerNorm) or from A + B, whose float32
// sum it also writes, quantized as AddMulQuantizeLinear does (AddIntLayerNorm). The output pass
// reads xt back (from L1) and writes Y (steps 7-10).
//
// Exactness (plugins/README.md bounds): |xt| <= 2040, so a lane of S2 adds at most
// 8192 / 16 = 512 squares < 2^22 each: < 2^31; |S1| < 2^24. |num| = |C xt - S1| < 2^25 fits int32,
// and |z| = |num| * R_hi + ((|num| * R_lo + 2^31) >> 32) is (|num| * R + 2^31) >> 32 split at the
// multiple of 2^32, |num| * R_hi < 2^23 exact in 32 bits. z * gamma (signed 32x32->64) + beta
// < 2^56 in int64 lanes; rnd(a, G') = (a + 2^(G'-1) - [a < 0]) >> G' (arithmetic), the 2^(G'-1)
// folded into beta once per call.
#pragma once

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <vector>

namespace onnxvq {
namespace iln512 {

#define ONNXVQ_LN512 __attribute__((target("avx512f,avx512bw,avx512vl")))

// ONNXVQ_NO_AVX512=1 forces the AVX2 rows (to test them on an AVX-512 machine).
inline bool Available() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0 && __builtin_cpu_supports("avx512bw") != 0 &&
           __builtin_cpu_supports("avx512vl") != 0 && std::getenv("ONNXVQ_NO_AVX512") == nullptr;
  }();
  return has;
}

inline int64_t Padded(int64_t c) { return (c + 15) & ~int64_t{15}; }

// Per-call constants, the [C] arrays zero-padded to a multiple of 16 channels.
struct Consts {
  std::vector<int32_t> shift, gamma;  // alpha_c, gamma_c
  std::vector<int64_t> beta_eo;       // per 16 channels: beta + 2^(G'-1) of 0,2,..,14, then 1,..,15
  std::vector<float> mult;            // M_c (AddIntLayerNorm's input quantizer), else empty
  int32_t channels = 0, zero_point = 0;
  int out_shift = 0;
  int64_t lo = 0, hi = 0;
  float scale = 1, zero_point_f = 0, in_lo = 0, in_hi = 0;  // the input quantizer's
};

inline Consts MakeConsts(const int32_t* shift, const int32_t* gamma, const int64_t* beta,
                         int64_t c, int32_t zero_point, int out_shift, int64_t lo, int64_t hi) {
  Consts k;
  const size_t cp = static_cast<size_t>(Padded(c));
  k.shift.assign(cp, 0);
  k.gamma.assign(cp, 0);
  k.beta_eo.assign(cp, 0);
  const int64_t half = int64_t{1} << (out_shift - 1);
  for (int64_t i = 0; i < c; ++i) {
    k.shift[i] = shift[i];
    k.gamma[i] = gamma[i];
    const int64_t base = i & ~int64_t{15}, j = i & 15;
    k.beta_eo[static_cast<size_t>(base + (j & 1) * 8 + j / 2)] = beta[i] + half;
  }
  k.channels = static_cast<int32_t>(c);
  k.zero_point = zero_point;
  k.out_shift = out_shift;
  k.lo = lo;
  k.hi = hi;
  return k;
}

ONNXVQ_LN512 inline __mmask16 TailMask(int32_t i, int32_t c) {
  return c - i >= 16 ? static_cast<__mmask16>(0xFFFF)
                     : static_cast<__mmask16>((1u << (c - i)) - 1u);
}

// Adds xt to the sums and stores it to the scratch row.
ONNXVQ_LN512 inline void Accumulate(__m512i xt, int32_t* scratch, __m512i& a1, __m512i& a2) {
  _mm512_storeu_si512(scratch, xt);
  a1 = _mm512_add_epi32(a1, xt);
  a2 = _mm512_add_epi32(a2, _mm512_mullo_epi32(xt, xt));
}

// Lane sums through memory: GCC 12's reduce/extract intrinsics trip -Wuninitialized.
ONNXVQ_LN512 inline void Finish(__m512i a1, __m512i a2, int64_t& s1, int64_t& s2) {
  alignas(64) int32_t l1[16];
  alignas(64) uint32_t l2[16];
  _mm512_store_si512(l1, a1);
  _mm512_store_si512(l2, a2);
  s1 = 0;
  s2 = 0;
  for (int j = 0; j < 16; ++j) {
    s1 += l1[j];
    s2 += l2[j];
  }
}

// Front of IntLayerNorm: xt from the codes X (README step 1), sums S1, S2.
template <class TIn>
ONNXVQ_LN512 void FrontCodes(const TIn* x, int32_t* scratch, const Consts& k, int64_t& s1,
                             int64_t& s2) {
  const __m512i zp = _mm512_set1_epi32(k.zero_point);
  __m512i a1 = _mm512_setzero_si512(), a2 = _mm512_setzero_si512();
  for (int32_t i = 0; i < k.channels; i += 16) {
    const __mmask16 m = TailMask(i, k.channels);
    const __m128i b = _mm_maskz_loadu_epi8(m, x + i);
    const __m512i v = std::is_signed_v<TIn> ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b);
    const __m512i sh = _mm512_loadu_si512(k.shift.data() + i);
    Accumulate(_mm512_maskz_sllv_epi32(m, _mm512_sub_epi32(v, zp), sh), scratch + i, a1, a2);
  }
  Finish(a1, a2, s1, s2);
}

// Front of AddIntLayerNorm: S = A + B written, the codes saturate(rne(S * M / scale) + zp) (the
// same float32 operations, in the same order, as AddMulQuantizeLinear), xt and the sums.
ONNXVQ_LN512 inline void FrontSum(const float* a, const float* b, float* s, int32_t* scratch,
                                  const Consts& k, int64_t& s1, int64_t& s2) {
  const __m512 scale = _mm512_set1_ps(k.scale), zpf = _mm512_set1_ps(k.zero_point_f);
  const __m512 lo = _mm512_set1_ps(k.in_lo), hi = _mm512_set1_ps(k.in_hi);
  const __m512i zp = _mm512_set1_epi32(k.zero_point);
  __m512i a1 = _mm512_setzero_si512(), a2 = _mm512_setzero_si512();
  for (int32_t i = 0; i < k.channels; i += 16) {
    const __mmask16 m = TailMask(i, k.channels);
    const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
    _mm512_mask_storeu_ps(s + i, m, v);
    const __m512 t = _mm512_div_ps(_mm512_mul_ps(v, _mm512_loadu_ps(k.mult.data() + i)), scale);
    const __m512 r = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(r, zpf), lo), hi);
    const __m512i code = _mm512_cvtps_epi32(q);
    const __m512i sh = _mm512_loadu_si512(k.shift.data() + i);
    Accumulate(_mm512_maskz_sllv_epi32(m, _mm512_sub_epi32(code, zp), sh), scratch + i, a1, a2);
  }
  Finish(a1, a2, s1, s2);
}

// a + 2^(G'-1) of 8 channels (int64 lanes) to clamp(rnd(a, G'), lo, hi).
ONNXVQ_LN512 inline __m512i Round8(__m512i a, __m512i half, __m128i shift, __m512i lo,
                                   __m512i hi) {
  a = _mm512_mask_sub_epi64(a, _mm512_cmplt_epi64_mask(a, half), a, _mm512_set1_epi64(1));
  return _mm512_min_epi64(_mm512_max_epi64(_mm512_sra_epi64(a, shift), lo), hi);
}

// Output pass: Y from the scratch xt, the row's S1 and reciprocal R.
template <class TOut>
ONNXVQ_LN512 void Output(const int32_t* scratch, TOut* y, int64_t s1, int64_t r, const Consts& k) {
  const __m512i c = _mm512_set1_epi32(k.channels), vs1 = _mm512_set1_epi32(static_cast<int32_t>(s1));
  const __m512i r_lo = _mm512_set1_epi64(static_cast<uint32_t>(r));
  const __m512i r_hi = _mm512_set1_epi32(static_cast<int32_t>(static_cast<uint64_t>(r) >> 32));
  const __m512i round = _mm512_set1_epi64(int64_t{1} << 31), zero = _mm512_setzero_si512();
  const __m512i half = _mm512_set1_epi64(int64_t{1} << (k.out_shift - 1));
  const __m512i lo = _mm512_set1_epi64(k.lo), hi = _mm512_set1_epi64(k.hi);
  const __m128i shift = _mm_cvtsi32_si128(k.out_shift);
  for (int32_t i = 0; i < k.channels; i += 16) {
    const __m512i num = _mm512_sub_epi32(_mm512_mullo_epi32(_mm512_loadu_si512(scratch + i), c), vs1);
    const __m512i mag = _mm512_abs_epi32(num);
    const __m512i even = _mm512_add_epi64(_mm512_mul_epu32(mag, r_lo), round);
    const __m512i odd = _mm512_add_epi64(_mm512_mul_epu32(_mm512_srli_epi64(mag, 32), r_lo), round);
    const __m512i low = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
    const __m512i zmag = _mm512_add_epi32(_mm512_mullo_epi32(mag, r_hi), low);
    const __m512i z = _mm512_mask_sub_epi32(zmag, _mm512_cmplt_epi32_mask(num, zero), zero, zmag);
    const __m512i g = _mm512_loadu_si512(k.gamma.data() + i);
    const int64_t* be = k.beta_eo.data() + i;
    const __m512i ye = Round8(_mm512_add_epi64(_mm512_mul_epi32(z, g), _mm512_loadu_si512(be)),
                              half, shift, lo, hi);
    const __m512i yo = Round8(
        _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(z, 32), _mm512_srli_epi64(g, 32)),
                         _mm512_loadu_si512(be + 8)),
        half, shift, lo, hi);
    const __m512i codes = _mm512_mask_blend_epi32(0xAAAA, ye, _mm512_slli_epi64(yo, 32));
    _mm_mask_storeu_epi8(y + i, TailMask(i, k.channels), _mm512_cvtepi32_epi8(codes));
  }
}

}  // namespace iln512
}  // namespace onnxvq
