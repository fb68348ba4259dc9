// AVX-512 (VNNI) inner loops of QLinearAttention: u8 x s8 dot products with vpdpbusd and a
// float32 exp for the softmax row. Compiled for that target only inside these functions
// (the library itself targets x86-64-v3); attention.cc calls them after a run-time CPU check.
#pragma once

#include "simd.h"

#include <cstdint>
#include <cstdlib>

namespace onnxvq {
namespace avx512 {

inline bool Available() {
  // ONNXVQ_NO_VNNI forces the portable loops (to test them on a VNNI machine), as for LogIntMatMul.
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") != 0 && __builtin_cpu_supports("avx512bw") != 0 &&
           std::getenv("ONNXVQ_NO_VNNI") == nullptr;
  }();
  return has;
}

// A float32 quotient a / b, correctly rounded, without vdivps: y = RN(1/b), q0 = RN(a y), then
// two FMA residual corrections r = a - q b (exact) and q + r y. The first makes q faithful (within
// 1 ulp), the second then rounds correctly (Markstein's theorem for FMA division; also checked
// against vdivps for every |S| <= 2^24 at 120 random scale pairs in 2^-40..2^40). It needs every
// intermediate normal and finite, so callers use it only when FastDivisor() holds for the scales
// involved and |a| < 2^70 (LogIntAttention's scores: |a| <= 2^24 * 2^40; QLinearAttention's
// outputs |a| < 2^31 |acc_scale|, so OutputRows takes it only for |acc_scale| <= 2^39).
ONNXVQ_AVX512 inline __m512 DivRn(__m512 a, __m512 b, __m512 y) {
  __m512 q = _mm512_mul_ps(a, y);
  __m512 r = _mm512_fnmadd_ps(q, b, a);
  q = _mm512_fmadd_ps(r, y, q);
  r = _mm512_fnmadd_ps(q, b, a);
  return _mm512_fmadd_ps(r, y, q);
}

inline bool FastDivisor(float scale, float divisor) {
  const auto normal = [](float v) { return v >= 0x1p-40f && v <= 0x1p40f; };
  return normal(scale < 0 ? -scale : scale) && normal(divisor);
}

// sat(rne(clamp((f32(s) * scale) / divisor, +-1024))) of 16 int32, as int32.
struct Requant {
  float scale, divisor, inverse;
  bool fast;  // DivRn instead of vdivps: FastDivisor(scale, divisor)

  ONNXVQ_AVX512 __m512i Codes(__m512i s) const {
    const __m512 p = _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(scale));
    __m512 u = fast ? DivRn(p, _mm512_set1_ps(divisor), _mm512_set1_ps(inverse))
                    : _mm512_div_ps(p, _mm512_set1_ps(divisor));
    u = _mm512_min_ps(_mm512_max_ps(u, _mm512_set1_ps(-1024.0f)), _mm512_set1_ps(1024.0f));
    return _mm512_cvt_roundps_epi32(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
};

inline Requant MakeRequant(float scale, float divisor) {
  return {scale, divisor, 1.0f / divisor, FastDivisor(scale, divisor)};
}

// dot[r][j] = sum_{d < 4 * quads} a[r][d] * b[j][d] for R rows r (a row stride a_stride,
// dot row stride dot_stride) and j in [0, 16 * blocks): a uint8 read as quads, b int8 packed
// [quads][16 * blocks][4]. Each load of b serves R rows. Exact int32 (|sum| < 2^31 here).
template <int R>
ONNXVQ_AVX512 inline void DotRows(const uint8_t* a, int64_t a_stride, const int8_t* b,
                                  int64_t quads, int64_t blocks, int32_t* dot,
                                  int64_t dot_stride) {
  const int64_t stride = blocks * 64;
  int64_t jb = 0;
  for (; jb + 1 < blocks; jb += 2) {  // two column blocks: 2R independent chains per broadcast
    __m512i acc[2 * R];
    for (int r = 0; r < 2 * R; ++r) acc[r] = _mm512_setzero_si512();
    const int8_t* bp = b + jb * 64;
    for (int64_t q = 0; q < quads; ++q) {
      const __m512i b0 = _mm512_loadu_si512(bp + q * stride);
      const __m512i b1 = _mm512_loadu_si512(bp + q * stride + 64);
      for (int r = 0; r < R; ++r) {
        int32_t w;
        __builtin_memcpy(&w, a + r * a_stride + 4 * q, 4);
        const __m512i av = _mm512_set1_epi32(w);
        acc[2 * r] = _mm512_dpbusd_epi32(acc[2 * r], av, b0);
        acc[2 * r + 1] = _mm512_dpbusd_epi32(acc[2 * r + 1], av, b1);
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm512_storeu_si512(dot + r * dot_stride + 16 * jb, acc[2 * r]);
      _mm512_storeu_si512(dot + r * dot_stride + 16 * jb + 16, acc[2 * r + 1]);
    }
  }
  for (; jb < blocks; ++jb) {
    __m512i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
    const int8_t* bp = b + jb * 64;
    for (int64_t q = 0; q < quads; ++q) {
      const __m512i bv = _mm512_loadu_si512(bp + q * stride);
      for (int r = 0; r < R; ++r) {
        int32_t w;
        __builtin_memcpy(&w, a + r * a_stride + 4 * q, 4);
        acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_set1_epi32(w), bv);
      }
    }
    for (int r = 0; r < R; ++r) _mm512_storeu_si512(dot + r * dot_stride + 16 * jb, acc[r]);
  }
}

ONNXVQ_AVX512 inline void DotRow(const uint8_t* a, const int8_t* b, int64_t quads, int64_t blocks,
                                 int32_t* dot) {
  DotRows<1>(a, 0, b, quads, blocks, dot, 0);
}

// exp(x) for x <= 0 in float32: 2^n * e^r with n = round(x log2 e), |r| <= ln2 / 2, e^r by its
// degree-6 Taylor polynomial (relative error < 2e-7), 2^n applied by vscalefps (0 below 2^-126).
ONNXVQ_AVX512 inline __m512 Exp(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-103.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);  // ln2 split in hi + lo
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// One softmax row of int32 scores s[j] + t.row + t.col[j] (j < n; s padded to a multiple of 16)
// into uint8 codes sat(rne(e_j * (1 / (sum e * probs_scale))) + zp), p[j] = 0 for the padding;
// returns sum_j p_j. With `bias` (n floats, or nullptr) x_j = f32(s_j) * qk_scale + bias_j: a
// product then a sum, two roundings as the reference and the unfused Mul/Add (no FMA).
struct ScoreTerms {
  int32_t row = 0;                // (128 - z_k) sum_d q_id
  const int32_t* col = nullptr;   // -z_q sum_d (k_jd - z_k), padded as s; nullptr: none
};

ONNXVQ_AVX512 inline int32_t ProbsRow(const int32_t* s, int64_t n, float qk_scale,
                                      float probs_scale, int32_t zp, uint8_t* p, float* e,
                                      const float* bias = nullptr, ScoreTerms t = {}) {
  const int64_t blocks = (n + 15) / 16;
  const __m512 scale = _mm512_set1_ps(qk_scale);
  const __m512i row = _mm512_set1_epi32(t.row);
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t jb = 0; jb < blocks; ++jb) {
    const __mmask16 m = jb + 1 < blocks ? 0xffff : static_cast<__mmask16>((1u << (n - 16 * jb)) - 1);
    __m512i si = _mm512_loadu_si512(s + 16 * jb);
    if (t.col != nullptr) {
      si = _mm512_add_epi32(si, _mm512_add_epi32(row, _mm512_loadu_si512(t.col + 16 * jb)));
    }
    __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(si), scale);
    if (bias != nullptr) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, bias + 16 * jb));
    _mm512_storeu_ps(e + 16 * jb, x);
    mx = _mm512_mask_max_ps(mx, m, mx, x);
  }
  const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t jb = 0; jb < blocks; ++jb) {
    const __mmask16 m = jb + 1 < blocks ? 0xffff : static_cast<__mmask16>((1u << (n - 16 * jb)) - 1);
    const __m512 v = _mm512_maskz_mov_ps(m, Exp(_mm512_sub_ps(_mm512_loadu_ps(e + 16 * jb), vmax)));
    _mm512_storeu_ps(e + 16 * jb, v);
    sum = _mm512_add_ps(sum, v);
  }
  const __m512 r = _mm512_set1_ps(1.0f / (_mm512_reduce_add_ps(sum) * probs_scale));
  const __m512i vzp = _mm512_set1_epi32(zp), top = _mm512_set1_epi32(255);
  __m512i codes = _mm512_setzero_si512();
  for (int64_t jb = 0; jb < blocks; ++jb) {
    const __mmask16 m = jb + 1 < blocks ? 0xffff : static_cast<__mmask16>((1u << (n - 16 * jb)) - 1);
    __m512i c = _mm512_add_epi32(
        _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_loadu_ps(e + 16 * jb), r),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
        vzp);
    // padding: code 0, and its V rows are zero anyway
    c = _mm512_maskz_mov_epi32(m, _mm512_min_epi32(_mm512_max_epi32(c, _mm512_setzero_si512()),
                                                   top));
    codes = _mm512_add_epi32(codes, c);
    _mm512_mask_cvtusepi32_storeu_epi8(p + 16 * jb, 0xffff, c);
  }
  return _mm512_reduce_add_epi32(codes);
}

// Output codes of one row: a = acc + pterm - zp * vsum, sat(rq.Codes(a) + zo) for d < dim (acc
// and vsum padded to a multiple of 16); rq from OutputRequant.
ONNXVQ_AVX512 inline void OutputRow(const int32_t* acc, int32_t pterm, int32_t zp,
                                    const int32_t* vsum, int64_t dim, const Requant& rq,
                                    int32_t zo, uint8_t* y) {
  for (int64_t c0 = 0; c0 < dim; c0 += 16) {
    const __mmask16 m = dim - c0 >= 16 ? 0xffff : static_cast<__mmask16>((1u << (dim - c0)) - 1);
    const __m512i a = _mm512_sub_epi32(
        _mm512_add_epi32(_mm512_loadu_si512(acc + c0), _mm512_set1_epi32(pterm)),
        _mm512_mullo_epi32(_mm512_set1_epi32(zp), _mm512_loadu_si512(vsum + c0)));
    const __m512i c = _mm512_add_epi32(rq.Codes(a), _mm512_set1_epi32(zo));
    _mm512_mask_cvtusepi32_storeu_epi8(y + c0, m, _mm512_max_epi32(c, _mm512_setzero_si512()));
  }
}

// QLinearAttention's output requantization: (f32(O) * acc_scale) / out_scale with |O| < 2^31,
// so DivRn's |a| < 2^70 needs |acc_scale| <= 2^39 besides FastDivisor.
inline Requant OutputRequant(float acc_scale, float out_scale) {
  Requant rq = MakeRequant(acc_scale, out_scale);
  rq.fast = rq.fast && acc_scale <= 0x1p39f && acc_scale >= -0x1p39f;
  return rq;
}

// int8 score codes of one row: sat(rne((float(s_j) * qk_scale) / scores_scale)), n entries.
ONNXVQ_AVX512 inline void ScoreCodesRow(const int32_t* s, int64_t n, float qk_scale,
                                        float scores_scale, int8_t* x) {
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const __mmask16 m = n - j0 >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - j0)) - 1);
    __m512 u = _mm512_div_ps(
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(s + j0)), _mm512_set1_ps(qk_scale)),
        _mm512_set1_ps(scores_scale));
    u = _mm512_min_ps(_mm512_max_ps(u, _mm512_set1_ps(-1024.0f)), _mm512_set1_ps(1024.0f));
    const __m512i c = _mm512_cvt_roundps_epi32(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm512_mask_cvtsepi32_storeu_epi8(x + j0, m, c);  // signed saturation to -128..127
  }
}

// acc[r][d] = sum_{j < 2 * pairs} a[r][j] * b[j][d] for R rows and d in [0, 16 * blocks): a int16
// read as pairs, b int16 packed [pairs][16 * blocks][2]; vpdpwssd, exact while sums fit int32.
template <int R>
ONNXVQ_AVX512 inline void DotRows16(const int16_t* a, int64_t a_stride, const int16_t* b,
                                    int64_t pairs, int64_t blocks, int32_t* acc,
                                    int64_t acc_stride) {
  const int64_t stride = blocks * 32;
  int64_t db = 0;
  for (; db + 1 < blocks; db += 2) {  // two column blocks: 2R independent chains per broadcast
    __m512i sum[2 * R];
    for (int r = 0; r < 2 * R; ++r) sum[r] = _mm512_setzero_si512();
    const int16_t* bp = b + db * 32;
    for (int64_t p = 0; p < pairs; ++p) {
      const __m512i b0 = _mm512_loadu_si512(bp + p * stride);
      const __m512i b1 = _mm512_loadu_si512(bp + p * stride + 32);
      for (int r = 0; r < R; ++r) {
        int32_t w;
        __builtin_memcpy(&w, a + r * a_stride + 2 * p, 4);
        const __m512i av = _mm512_set1_epi32(w);
        sum[2 * r] = _mm512_dpwssd_epi32(sum[2 * r], av, b0);
        sum[2 * r + 1] = _mm512_dpwssd_epi32(sum[2 * r + 1], av, b1);
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm512_storeu_si512(acc + r * acc_stride + 16 * db, sum[2 * r]);
      _mm512_storeu_si512(acc + r * acc_stride + 16 * db + 16, sum[2 * r + 1]);
    }
  }
  for (; db < blocks; ++db) {
    __m512i sum[R];
    for (int r = 0; r < R; ++r) sum[r] = _mm512_setzero_si512();
    const int16_t* bp = b + db * 32;
    for (int64_t p = 0; p < pairs; ++p) {
      const __m512i bv = _mm512_loadu_si512(bp + p * stride);
      for (int r = 0; r < R; ++r) {
        int32_t w;
        __builtin_memcpy(&w, a + r * a_stride + 2 * p, 4);
        sum[r] = _mm512_dpwssd_epi32(sum[r], _mm512_set1_epi32(w), bv);
      }
    }
    for (int r = 0; r < R; ++r) _mm512_storeu_si512(acc + r * acc_stride + 16 * db, sum[r]);
  }
}

}  // namespace avx512
}  // namespace onnxvq
