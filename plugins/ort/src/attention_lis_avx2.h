// AVX2 loops of LogIntAttention (attention_lis.cc) for CPUs without AVX-512 VNNI (most x86 CPUs
// deployed: Zen 2/3, Skylake client, older Xeons). Both products are int16 pairs times int16
// pairs with vpmaddwd, exact in int32 here; vpmaddubsw would not be (its int16 pair sums saturate
// at 255 * 127 * 2):
// - the scores S = (q - z_q)(k - z_k)^T: |q - z_q|, |k - z_k| <= 255, so a pair sums to at most
//   2 * 255^2 < 2^17 and |S| <= 256 * 255^2 < 2^24 (head_dim <= 256);
// - Y = sum_j (-w_j)(v_jd - z_v) with the negated weights (-w >= -2^15 fits int16): a pair sums
//   below 2^24 and |Y| < 2^24 (attention_lis.cc: the softmax codes' weights sum to at most
//   2^(1/2) 2^15).
// The int8 score codes and the output codes take the plain loops' float32 steps one for one (the
// product rounded, the bias added, vdivps, round to nearest even), never contracted into an FMA,
// so every path gives the same codes. The library's baseline is x86-64-v3 (build.sh): no target
// attribute is needed. ONNXVQ_NO_AVX2=1 keeps the plain loops (attention_lis_portable.h).
#pragma once

#include "simd.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "attention.h"

namespace onnxvq {
namespace lis2 {

inline bool Available() {
  static const bool has = std::getenv("ONNXVQ_NO_AVX2") == nullptr;
  return has;
}

// One head of one batch item, centred and packed as int16 pairs (two int16 in one int32 word):
// q - z_q as rows [N][2 * depth_pairs]; k - z_k paired along the depth, [depth_pairs][jpad] (the
// scores' B operand); v - z_v paired along tokens, [jpad / 2][dpad] (the output's B operand).
// Zero padding everywhere: padded depths and tokens add nothing to either product.
struct PairHead {
  int64_t b, head, depth_pairs, jpad, dpad;
  std::vector<int16_t> q;
  std::vector<int32_t> k, v;

  PairHead(const uint8_t* in, const AttentionShape& s, int64_t task)
      : b(task / s.heads), head(task % s.heads), depth_pairs((s.dim + 1) / 2),
        jpad(RoundUp(std::max<int64_t>(s.tokens, 1), 16)), dpad(RoundUp(s.dim, 8)),
        q(static_cast<size_t>(s.tokens * 2 * depth_pairs)),
        k(static_cast<size_t>(depth_pairs * jpad)), v(static_cast<size_t>(jpad / 2 * dpad)) {
    const int64_t n = s.tokens, d = s.dim, hd = s.heads * d;
    auto row = [&](int64_t j, int t) {  // piece t (q, k, v) of token j, this head
      return s.layout == 1 ? in + (b * n + j) * 3 * hd + (head * 3 + t) * d
                           : in + ((b * n + j) * 3 + t) * hd + head * d;
    };
    const auto zq = static_cast<int16_t>(s.zq), zk = static_cast<int16_t>(s.zk);
    alignas(32) int16_t kc[kMaxHeadDim + 16];
    for (int64_t j = 0; j < n; ++j) {
      Centre(row(j, 0), d, zq, q.data() + j * 2 * depth_pairs);
      Centre(row(j, 1), d, zk, kc);
      kc[d] = 0;  // the odd depth's partner
      // K^T's column j: one word per depth pair, jpad words apart.
      for (int64_t p = 0; p < depth_pairs; ++p) std::memcpy(&k[p * jpad + j], kc + 2 * p, 4);
    }
    const __m256i zv = _mm256_set1_epi16(static_cast<int16_t>(s.zv));
    for (int64_t j = 0; j < n; j += 2) {
      const uint8_t* r0 = row(j, 2);
      const uint8_t* r1 = j + 1 < n ? row(j + 1, 2) : nullptr;
      int32_t* o = v.data() + (j / 2) * dpad;
      int64_t c = 0;
      for (; c + 16 <= d; c += 16) {  // (v0 - z_v, v1 - z_v) per column: unpack, lanes in order
        const __m256i a = _mm256_sub_epi16(Widen(r0 + c), zv);
        const __m256i e = r1 ? _mm256_sub_epi16(Widen(r1 + c), zv) : _mm256_setzero_si256();
        const __m256i lo = _mm256_unpacklo_epi16(a, e), hi = _mm256_unpackhi_epi16(a, e);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + c), _mm256_permute2x128_si256(lo, hi, 0x20));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + c + 8),
                            _mm256_permute2x128_si256(lo, hi, 0x31));
      }
      for (; c < d; ++c) {
        const int16_t pair[2] = {static_cast<int16_t>(r0[c] - s.zv),
                                 static_cast<int16_t>(r1 ? r1[c] - s.zv : 0)};
        std::memcpy(o + c, pair, 4);
      }
    }
  }

  static __m256i Widen(const uint8_t* p) {
    return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }

  // out[c] = x[c] - z for c < d, then one zero if d is odd (out has room for d rounded up to 16).
  static void Centre(const uint8_t* x, int64_t d, int16_t z, int16_t* out) {
    const __m256i vz = _mm256_set1_epi16(z);
    int64_t c = 0;
    for (; c + 16 <= d; c += 16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c), _mm256_sub_epi16(Widen(x + c), vz));
    }
    for (; c < d; ++c) out[c] = static_cast<int16_t>(x[c] - z);
    if (d % 2) out[d] = 0;
  }
};

// out[r][c] = sum_{p < pairs} a[r][2p] b[p][c].lo + a[r][2p + 1] b[p][c].hi for R rows and every
// c < cols (a multiple of 8): b is [pairs][cols] words of two int16. Each load of b serves R rows;
// 16 columns (two registers) per pass keep 2R accumulators and two b registers live, 12 of the 16
// ymm for R = 4. Exact while every sum fits int32 (the bounds above).
template <int R>
inline void PairDotRows(const int16_t* a, int64_t a_stride, const int32_t* b, int64_t pairs,
                        int64_t cols, int32_t* out, int64_t out_stride) {
  int64_t c0 = 0;
  for (; c0 + 16 <= cols; c0 += 16) {
    __m256i acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    const int32_t* bp = b + c0;
    for (int64_t p = 0; p < pairs; ++p, bp += cols) {
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp));
      const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + 8));
      for (int r = 0; r < R; ++r) {
        int32_t w;
        std::memcpy(&w, a + r * a_stride + 2 * p, 4);
        const __m256i x = _mm256_set1_epi32(w);
        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(x, b0));
        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(x, b1));
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * out_stride + c0), acc[r][0]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * out_stride + c0 + 8), acc[r][1]);
    }
  }
  if (c0 < cols) {  // the last 8 columns
    __m256i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
    const int32_t* bp = b + c0;
    for (int64_t p = 0; p < pairs; ++p, bp += cols) {
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp));
      for (int r = 0; r < R; ++r) {
        int32_t w;
        std::memcpy(&w, a + r * a_stride + 2 * p, 4);
        acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(_mm256_set1_epi32(w), b0));
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * out_stride + c0), acc[r]);
    }
  }
}

// PairDotRows for 1 <= rows <= 4 (a row group and its tail).
inline void PairDot(int rows, const int16_t* a, int64_t a_stride, const int32_t* b, int64_t pairs,
                    int64_t cols, int32_t* out, int64_t out_stride) {
  switch (rows) {
    case 4: return PairDotRows<4>(a, a_stride, b, pairs, cols, out, out_stride);
    case 3: return PairDotRows<3>(a, a_stride, b, pairs, cols, out, out_stride);
    case 2: return PairDotRows<2>(a, a_stride, b, pairs, cols, out, out_stride);
    default: return PairDotRows<1>(a, a_stride, b, pairs, cols, out, out_stride);
  }
}

// Eight int32 in -128..127 (saturated on the way) as eight bytes in order.
inline void StoreInt8x8(__m256i v, int8_t* x) {
  const __m256i h = _mm256_packs_epi32(v, v);
  const __m256i w = _mm256_packs_epi16(h, h);  // per lane: its 4 codes first
  const __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
  const int64_t both = _mm_cvtsi128_si64(_mm_unpacklo_epi32(lo, hi));
  std::memcpy(x, &both, 8);
}

// x[j] = sat(rne(clamp((f32(s_j) * scale + bias_j) / divisor, +-1024))) for j < n, 8 at a time
// (x has room for n rounded up to 8; the codes past n are padding): the plain loops' ScoreCode,
// the bias (nullptr: none) added after the product's rounding.
__attribute__((optimize("fp-contract=off"))) inline void ScoreCodesRow(const int32_t* s, int64_t n,
                                                                      float scale, float divisor,
                                                                      const float* bias,
                                                                      int8_t* x) {
  const __m256 vscale = _mm256_set1_ps(scale), vdiv = _mm256_set1_ps(divisor);
  const __m256 lo = _mm256_set1_ps(-1024.0f), hi = _mm256_set1_ps(1024.0f);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t j = 0; j < n; j += 8) {
    __m256 p = _mm256_mul_ps(
        _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + j))), vscale);
    if (bias != nullptr) {  // the row holds n floats: a masked load for the last ones
      const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(
                                                  std::min<int64_t>(n - j, 8))), lane);
      p = _mm256_add_ps(p, _mm256_maskload_ps(bias + j, live));
    }
    const __m256 u = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(p, vdiv), lo), hi);
    StoreInt8x8(_mm256_cvtps_epi32(u), x + j);  // MXCSR's round to nearest even, as nearbyint
  }
}

// w[j] = table16[codes[j]] for j < n (codes >= 16 weigh 0: bits <= 4 puts every code above 15
// past the largest live code), 0 up to jpad (a multiple of 16; codes readable up to there). The
// int16 table split into its low and high bytes, 16 lookups per pshufb pair.
inline void WeightsRow(const uint8_t* codes, int64_t n, int64_t jpad, const int16_t* table16,
                       int16_t* w) {
  alignas(16) uint8_t lo_bytes[16], hi_bytes[16];
  for (int a = 0; a < 16; ++a) {
    lo_bytes[a] = static_cast<uint8_t>(table16[a] & 255);
    hi_bytes[a] = static_cast<uint8_t>((table16[a] >> 8) & 255);
  }
  const __m128i tlo = _mm_load_si128(reinterpret_cast<const __m128i*>(lo_bytes));
  const __m128i thi = _mm_load_si128(reinterpret_cast<const __m128i*>(hi_bytes));
  const __m128i c16 = _mm_set1_epi8(16), top = _mm_set1_epi8(static_cast<char>(0x80));
  int64_t j = 0;
  for (; j < n; j += 16) {
    __m128i idx = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + j));
    // pshufb gives 0 where the index byte's top bit is set: mark codes >= 16 so
    idx = _mm_or_si128(idx, _mm_and_si128(_mm_cmpeq_epi8(_mm_max_epu8(idx, c16), idx), top));
    const __m128i l = _mm_shuffle_epi8(tlo, idx), h = _mm_shuffle_epi8(thi, idx);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(w + j), _mm_unpacklo_epi8(l, h));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(w + j + 8), _mm_unpackhi_epi8(l, h));
  }
  std::fill(w + n, w + jpad, int16_t{0});
}

// y[c] = sat(rne((f32(-acc_c) * acc_scale) / out_scale) + z_o) for c < d (acc padded to d
// rounded up to 8): the plain loops' OutputCode of -acc (acc sums the negated weights).
__attribute__((optimize("fp-contract=off"))) inline void OutputCodesRow(const int32_t* acc,
                                                                       int64_t d,
                                                                       const AttentionShape& s,
                                                                       uint8_t* y) {
  const __m256 scale = _mm256_set1_ps(s.acc_scale), div = _mm256_set1_ps(s.out_scale);
  const __m256 lo = _mm256_set1_ps(-1024.0f), hi = _mm256_set1_ps(1024.0f);
  const __m256 zo = _mm256_set1_ps(static_cast<float>(s.zo)), zero = _mm256_setzero_ps();
  const __m256 top = _mm256_set1_ps(255.0f);
  for (int64_t c = 0; c < d; c += 8) {
    const __m256i a = _mm256_sub_epi32(
        _mm256_setzero_si256(), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + c)));
    const __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(a), scale);
    const __m256 u = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(p, div), lo), hi);
    const __m256 r = _mm256_round_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 code = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, zo), zero), top);
    const __m256i i = _mm256_cvtps_epi32(code);
    const __m256i h = _mm256_packs_epi32(i, i);
    const __m256i w = _mm256_packus_epi16(h, h);  // per lane: its 4 codes first
    const __m128i both = _mm_unpacklo_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    const int64_t bytes = _mm_cvtsi128_si64(both);
    std::memcpy(y + c, &bytes, static_cast<size_t>(std::min<int64_t>(d - c, 8)));
  }
}

}  // namespace lis2
}  // namespace onnxvq
