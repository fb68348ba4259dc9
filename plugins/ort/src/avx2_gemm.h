// QuantizedLinear's exact path on AVX2 (no VNNI, no AMX: Zen 1-3, Haswell to Comet Lake).
//
// Why not ORT's MatMulIntegerToFloat there: MLAS's AVX2 u8 x s8 kernel multiplies with
// vpmaddubsw, whose int16 sums of two products saturate (255 * 127 * 2 > 32767), so codes near
// 255 against large weights come out wrong (50 % off in the adversarial case).
//
// Here every product is formed in int16 and summed in int32 by vpmaddwd, which cannot overflow
// (|a| <= 255, |w| <= 128: a pair sums to at most 65280): B is packed once into 32-column panels
// of K pairs, [np / 32][kp / 2][32][2] int16 (the two weights of one column and two consecutive
// K in one int32 lane), and each task widens its 32 activation rows to int16 once, so a K pair
// of one row is one broadcast 32-bit load. The int32 sums are exact, so the epilogue (the other
// packed paths', linear_kernel.h) gives the same bits as the AMX and VNNI paths.
//
// Per vpmaddwd + vpaddd this does 16 multiply-adds, as MLAS does per vpmaddubsw + vpmaddwd +
// vpaddd with 32: the same number of multiplier-port instructions per product.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "amx_gemm.h"
#include "simd.h"

namespace onnxvq {
namespace avx2 {

constexpr int64_t kPanelCols = amx::kBlockN;  // 32: one epilogue block
constexpr int64_t kPairStride = kPanelCols * 2;  // int16 per K pair of a panel
constexpr int kRowGroup = 6;  // rows per register block: 6 x 2 accumulators + 2 weights + 1 A

// p's fields with kp = K rounded up to 2 (a pair), np = N rounded up to 32; `pairs` the panels.
inline void Pack(const int8_t* w, int64_t k, int64_t n, amx::PackedWeights& p) {
  amx::PackGroupedPanels<2>(w, k, n, 2, p, p.pairs);
}

// The task's rows as int16, [32][kp] (rows past `rows` and K past k zero): an extra row costs
// nothing wrong (its outputs are never written), an extra K multiplies a zero weight.
ONNXVQ_AVX2 inline const int16_t* WidenRows(const uint8_t* a, int64_t rows,
                                            const amx::PackedWeights& w,
                                            std::vector<int16_t, amx::CacheAligned<int16_t>>& out) {
  out.assign(static_cast<size_t>(amx::kBlockM * w.kp), 0);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* src = a + r * w.k;
    int16_t* dst = out.data() + r * w.kp;
    int64_t j = 0;
    for (; j + 16 <= w.k; j += 16) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j), _mm256_cvtepu8_epi16(bytes));
    }
    for (; j < w.k; ++j) dst[j] = src[j];
  }
  return out.data();
}

// c[R][16] (row stride ldc) = R <= 6 int16 rows of a (row stride lda) times 16 columns of a
// panel (`panel`: its first or second 16 columns), over `pairs` K pairs. The accumulators are
// named variables, not an array: GCC keeps an array of vectors on the stack (measured: every
// add went through memory).
template <int R>
ONNXVQ_AVX2 inline void DotRows(const int16_t* a, int64_t lda, const int16_t* panel,
                                int64_t pairs, int32_t* c, int64_t ldc) {
  static_assert(R >= 1 && R <= kRowGroup, "six rows at most: 12 accumulators");
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const auto pair = [&](int r, int64_t p) {
    int32_t v;
    __builtin_memcpy(&v, a + r * lda + 2 * p, sizeof v);
    return _mm256_set1_epi32(v);
  };
#define ONNXVQ_AVX2_ROW(r, acc0, acc1)                             \
  if constexpr (R > r) {                                           \
    const __m256i x = pair(r, p);                                  \
    acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(x, w0));       \
    acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(x, w1));       \
  }
  for (int64_t p = 0; p < pairs; ++p) {
    const auto* wp = reinterpret_cast<const __m256i*>(panel + p * kPairStride);
    const __m256i w0 = _mm256_loadu_si256(wp), w1 = _mm256_loadu_si256(wp + 1);
    ONNXVQ_AVX2_ROW(0, c00, c01)
    ONNXVQ_AVX2_ROW(1, c10, c11)
    ONNXVQ_AVX2_ROW(2, c20, c21)
    ONNXVQ_AVX2_ROW(3, c30, c31)
    ONNXVQ_AVX2_ROW(4, c40, c41)
    ONNXVQ_AVX2_ROW(5, c50, c51)
  }
#undef ONNXVQ_AVX2_ROW
  const __m256i out[kRowGroup][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                                     {c30, c31}, {c40, c41}, {c50, c51}};
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc), out[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc + 8), out[r][1]);
  }
}

// c[32][32] (row stride 32) = a[32][kp] (WidenRows) times panel nb, for the first `rows` rows
// (rounded up to the row group; the others are never read): each 16-column half of the panel
// against the rows in groups of six (rows 30-31 a group of two), so the half's weights stay in
// L1 while every row passes over them.
ONNXVQ_AVX2 inline void Multiply(const int16_t* a, const amx::PackedWeights& w, int64_t nb,
                                 int64_t rows, int32_t* c) {
  const int64_t pairs = w.kp / 2;
  const int16_t* panel = w.pairs.data() + nb * pairs * kPairStride;
  constexpr int64_t kFull = amx::kBlockM / kRowGroup * kRowGroup;  // 30
  for (int64_t half = 0; half < 2; ++half) {
    const int16_t* wh = panel + half * 32;
    int32_t* ch = c + half * 16;
    for (int64_t r = 0; r < std::min(rows, kFull); r += kRowGroup) {
      DotRows<kRowGroup>(a + r * w.kp, w.kp, wh, pairs, ch + r * amx::kBlockN, amx::kBlockN);
    }
    if (rows > kFull) {
      DotRows<amx::kBlockM - kFull>(a + kFull * w.kp, w.kp, wh, pairs,
                                    ch + kFull * amx::kBlockN, amx::kBlockN);
    }
  }
}

}  // namespace avx2
}  // namespace onnxvq
