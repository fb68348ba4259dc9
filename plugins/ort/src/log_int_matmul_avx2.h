// LogIntMatMul fast path for bits <= 4 (M <= 15) on AVX2: an int16 GEMM with int32 accumulators.
//
// Every weight w(a) <= 2^15 (2^(M - a), or the log-sqrt(2) ladder whose w(0) is 2^15 too) is
// stored negated, -w(a) >= -2^15, so it fits int16 even for a = 0;
// V - zp fits int16 too, and vpmaddwd multiplies pairs of k exactly into int32 (its one overflow
// case, both pairs -2^15 * -2^15, cannot happen since |V - zp| <= 255). A block of P pairs sums
// 2P terms of magnitude <= w(0) * vmax, so choosing 2P * w(0) * vmax < 2^31 keeps the int32
// accumulators exact; blocks are summed (and negated back) in int64 in the output itself.
#pragma once

#if defined(__AVX2__)
#include "simd.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

namespace onnxvq {
namespace avx2 {

constexpr int kTileRows = 6;    // 6 x 16 int32 accumulators = 12 ymm registers
constexpr int kTileCols = 16;
constexpr int64_t kMaxBlockPairs = 256;

struct Plan {
  int64_t rows, inner, cols;  // R, K, D of one batch
  int64_t pairs, dpad;        // ceil(K / 2), D rounded up to kTileCols
  int64_t block_pairs;        // pairs per int32 block
  int max_code;               // M <= 15
  bool vnni;                  // the CPU has AVX-VNNI
  int16_t weight[256];        // -w(a), 0 for the zero codes
  uint8_t weight_lo[16], weight_hi[16];  // bytes of weight[0..16)
};

inline __m256i Widen16(const int8_t* p) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256i Widen16(const uint8_t* p) {
  return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// One batch of V [K, D] to int16 pairs out[kp][dpad][2] = (V[2kp][d] - zp, V[2kp+1][d] - zp),
// zero beyond K and D, so the kernel needs no edge cases along k or d.
template <class TV>
void PackV(const TV* v, const Plan& p, int16_t zp, int16_t* out) {
  const __m256i zpv = _mm256_set1_epi16(zp);
  for (int64_t kp = 0; kp < p.pairs; ++kp) {
    const int64_t k0 = 2 * kp, k1 = k0 + 1;
    const TV* r0 = v + k0 * p.cols;
    const TV* r1 = k1 < p.inner ? v + k1 * p.cols : nullptr;
    int16_t* o = out + kp * p.dpad * 2;
    int64_t d = 0;
    for (; d + 16 <= p.cols; d += 16) {
      const __m256i a = _mm256_sub_epi16(Widen16(r0 + d), zpv);
      const __m256i b = r1 ? _mm256_sub_epi16(Widen16(r1 + d), zpv) : _mm256_setzero_si256();
      const __m256i lo = _mm256_unpacklo_epi16(a, b), hi = _mm256_unpackhi_epi16(a, b);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 2 * d),
                          _mm256_permute2x128_si256(lo, hi, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 2 * d + 16),
                          _mm256_permute2x128_si256(lo, hi, 0x31));
    }
    for (; d < p.dpad; ++d) {
      const bool in = d < p.cols;
      o[2 * d] = in ? static_cast<int16_t>(r0[d] - zp) : 0;
      o[2 * d + 1] = in && r1 ? static_cast<int16_t>(r1[d] - zp) : 0;
    }
  }
}

// Adds -acc (int32 x 16, widened) to / stores it in 16 int64 outputs.
inline void Emit(__m256i acc0, __m256i acc1, bool first, int64_t* y) {
  const __m256i zero = _mm256_setzero_si256();
  const __m256i parts[4] = {
      _mm256_cvtepi32_epi64(_mm256_castsi256_si128(acc0)),
      _mm256_cvtepi32_epi64(_mm256_extracti128_si256(acc0, 1)),
      _mm256_cvtepi32_epi64(_mm256_castsi256_si128(acc1)),
      _mm256_cvtepi32_epi64(_mm256_extracti128_si256(acc1, 1))};
  for (int i = 0; i < 4; ++i) {
    __m256i* dst = reinterpret_cast<__m256i*>(y + 4 * i);
    const __m256i base = first ? zero : _mm256_loadu_si256(dst);
    _mm256_storeu_si256(dst, _mm256_sub_epi64(base, parts[i]));
  }
}

// NR rows x 16 columns over `pairs` k-pairs: w[i * stride + kp] holds row i's weight pair kp;
// row i's sums go to sums[2i], sums[2i + 1] (widening them here spoils GCC's register use). Two copies: vpmaddwd + vpaddd (AVX2) and the fused vpdpwssd (AVX-VNNI, picked at run time);
// both compute the same exact int32 sums. Without no-tree-pre GCC 12 copies every accumulator
// through a spare register in the madd loop (about 1.8x slower).
template <int NR>
__attribute__((optimize("no-tree-pre"))) void TileMadd(const int32_t* w, int64_t stride, const int16_t* vp, int64_t pairs, int64_t dpad,
              __m256i* sums) {
  __m256i acc[NR][2];
#pragma GCC unroll 8
  for (int i = 0; i < NR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  for (int64_t kp = 0; kp < pairs; ++kp) {
    const __m256i* b = reinterpret_cast<const __m256i*>(vp + kp * dpad * 2);
    const __m256i b0 = _mm256_loadu_si256(b), b1 = _mm256_loadu_si256(b + 1);
#pragma GCC unroll 8
    for (int i = 0; i < NR; ++i) {
      const __m256i a = _mm256_set1_epi32(w[i * stride + kp]);
      acc[i][0] = _mm256_add_epi32(_mm256_madd_epi16(a, b0), acc[i][0]);
      acc[i][1] = _mm256_add_epi32(_mm256_madd_epi16(a, b1), acc[i][1]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NR; ++i) sums[2 * i] = acc[i][0], sums[2 * i + 1] = acc[i][1];
}

template <int NR>
ONNXVQ_AVX2_VNNI void TileVnni(const int32_t* w, int64_t stride,
                                                      const int16_t* vp, int64_t pairs,
                                                      int64_t dpad, __m256i* sums) {
  __m256i acc[NR][2];
#pragma GCC unroll 8
  for (int i = 0; i < NR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  for (int64_t kp = 0; kp < pairs; ++kp) {
    const __m256i* b = reinterpret_cast<const __m256i*>(vp + kp * dpad * 2);
    const __m256i b0 = _mm256_loadu_si256(b), b1 = _mm256_loadu_si256(b + 1);
#pragma GCC unroll 8
    for (int i = 0; i < NR; ++i) {
      const __m256i a = _mm256_set1_epi32(w[i * stride + kp]);
      acc[i][0] = _mm256_dpwssd_avx_epi32(acc[i][0], a, b0);
      acc[i][1] = _mm256_dpwssd_avx_epi32(acc[i][1], a, b1);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NR; ++i) sums[2 * i] = acc[i][0], sums[2 * i + 1] = acc[i][1];
}

inline bool HasVnni() {
  // ONNXVQ_NO_VNNI forces the AVX2 path (to test it on a VNNI machine).
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avxvnni") != 0 && std::getenv("ONNXVQ_NO_VNNI") == nullptr;
  }();
  return has;
}

template <int NR>
void Block(const int32_t* w, int64_t stride, const int16_t* vp, int64_t pairs, const Plan& p,
           bool first, int64_t* const* rows_out) {
  alignas(32) int64_t tail[NR][kTileCols];
  for (int64_t c0 = 0; c0 < p.cols; c0 += kTileCols) {
    const bool full = c0 + kTileCols <= p.cols;
    int64_t* y[NR];
    for (int i = 0; i < NR; ++i) {
      y[i] = full ? rows_out[i] + c0 : tail[i];
      if (!full && !first) std::copy(rows_out[i] + c0, rows_out[i] + p.cols, tail[i]);
    }
    __m256i sums[2 * NR];
    if (p.vnni) {
      TileVnni<NR>(w, stride, vp + 2 * c0, pairs, p.dpad, sums);
    } else {
      TileMadd<NR>(w, stride, vp + 2 * c0, pairs, p.dpad, sums);
    }
    for (int i = 0; i < NR; ++i) Emit(sums[2 * i], sums[2 * i + 1], first, y[i]);
    if (!full) {
      for (int i = 0; i < NR; ++i) std::copy(tail[i], tail[i] + (p.cols - c0), rows_out[i] + c0);
    }
  }
}

// Weights of codes a[0..n) into w[0..n) (int16): two 16-entry byte tables (pshufb), a code
// above M sets the index's top bit, which makes pshufb return 0.
inline void Weights(const uint8_t* a, int64_t n, const Plan& p, int16_t* w) {
  const __m256i tlo = _mm256_broadcastsi128_si256(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(p.weight_lo)));
  const __m256i thi = _mm256_broadcastsi128_si256(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(p.weight_hi)));
  const __m256i first_zero = _mm256_set1_epi8(static_cast<char>(p.max_code + 1));
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k));
    const __m256i over = _mm256_cmpeq_epi8(_mm256_max_epu8(c, first_zero), c);
    const __m256i idx = _mm256_or_si256(c, over);
    const __m256i lo = _mm256_shuffle_epi8(tlo, idx), hi = _mm256_shuffle_epi8(thi, idx);
    const __m256i w0 = _mm256_unpacklo_epi8(lo, hi), w1 = _mm256_unpackhi_epi8(lo, hi);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + k), _mm256_permute2x128_si256(w0, w1, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + k + 16),
                        _mm256_permute2x128_si256(w0, w1, 0x31));
  }
  for (; k < n; ++k) w[k] = p.weight[a[k]];
}

// Rows [r0, r0 + nr) of one batch: a = codes of row r0, vp = packed V, out = Y of row r0.
template <int NR>
void RowTile(const uint8_t* a, const int16_t* vp, int64_t* out, const Plan& p) {
  alignas(32) int32_t w[NR][kMaxBlockPairs];
  int64_t* rows_out[NR];
  for (int i = 0; i < NR; ++i) rows_out[i] = out + i * p.cols;
  for (int64_t kp0 = 0; kp0 < p.pairs; kp0 += p.block_pairs) {
    const int64_t n = std::min(p.block_pairs, p.pairs - kp0);
    const int64_t k0 = 2 * kp0, k1 = std::min(p.inner, 2 * (kp0 + n));
    for (int i = 0; i < NR; ++i) {
      auto* wi = reinterpret_cast<int16_t*>(w[i]);
      Weights(a + i * p.inner + k0, k1 - k0, p, wi);
      if (k1 - k0 < 2 * n) wi[k1 - k0] = 0;  // odd K: the last pair's missing half
    }
    Block<NR>(&w[0][0], kMaxBlockPairs, vp + kp0 * p.dpad * 2, n, p, kp0 == 0, rows_out);
  }
}

inline void RowTileAny(int nr, const uint8_t* a, const int16_t* vp, int64_t* out,
                       const Plan& p) {
  switch (nr) {
    case 6: RowTile<6>(a, vp, out, p); break;
    case 5: RowTile<5>(a, vp, out, p); break;
    case 4: RowTile<4>(a, vp, out, p); break;
    case 3: RowTile<3>(a, vp, out, p); break;
    case 2: RowTile<2>(a, vp, out, p); break;
    default: RowTile<1>(a, vp, out, p); break;
  }
}

}  // namespace avx2
}  // namespace onnxvq

#endif  // __AVX2__
