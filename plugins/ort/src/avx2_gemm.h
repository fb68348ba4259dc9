// QuantizedLinear's exact path on AVX2 (no VNNI, no AMX: Zen 1-3, Haswell to Comet Lake).
//
// Why not ORT's MatMulIntegerToFloat there: MLAS's AVX2 u8 x s8 kernel multiplies with
// vpmaddubsw, whose int16 sums of two products saturate (255 * 127 * 2 > 32767), so codes near
// 255 against large weights come out wrong (50 % off in the adversarial case).
//
// Here every product is formed in int16 and summed in int32 by vpmaddwd, which cannot overflow
// (|a| <= 255, |w| <= 128: a pair sums to at most 65280): B is packed once into 16-column panels
// of K pairs, [np / 16][kp / 2][16][2] int16 (the two weights of one column and two consecutive
// K in one int32 lane), and each task widens its activation rows to int16 once, so a K pair of
// one row is one broadcast 32-bit load. The int32 sums are exact, so the epilogue (the other
// packed paths', linear_kernel.h) gives the same bits as the AMX and VNNI paths.
//
// The register block is 6 rows x 16 columns (12 accumulators, 2 weight registers, 1 broadcast):
// 12 vpmaddwd + 12 vpaddd per K pair, against 8 loads. What keeps it near that rate is the cache:
// the panel is 16 columns wide so a block's weights are contiguous (with 32-column panels each
// half-block pass pulled in lines it used half of, and DeiT-S's K = 384 block no longer fitted
// L1 beside its rows: 96 GOP/s a core on one block already in cache, 160 with this layout, one
// Zen 3 thread's CPU time), and K runs in chunks of kChunkPairs so the weights of one chunk
// (12 KiB) stay in L1 while all the task's row groups pass over them (K = 1536, fc2, is 48 KiB
// a panel). 160 GOP/s is about this instruction mix's ceiling on Zen 3 (the same loop on one
// panel and six rows, nothing else), and MLAS's U8U8 kernel (the same vpmaddwd products) is
// close to it too: in the op the two are within ~10 % of each other (benchmarks/bench_linear.py).
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

constexpr int64_t kPanelCols = 16;               // one register block's columns
constexpr int64_t kPairStride = kPanelCols * 2;  // int16 per K pair of a panel
constexpr int kRowGroup = 6;                     // rows per register block
constexpr int64_t kTaskRows = 30;                // rows per task: five whole row groups
constexpr int64_t kChunkPairs = 192;             // K pairs per L1 chunk (12 KiB of one panel)
static_assert(kTaskRows % kRowGroup == 0 && kTaskRows <= amx::kBlockM, "task rows");

// p's fields with kp = K rounded up to 2 (a pair), np = N rounded up to 32; `pairs` the panels.
inline void Pack(const int8_t* w, int64_t k, int64_t n, amx::PackedWeights& p) {
  amx::PackGroupedPanels<2, kPanelCols>(w, k, n, 2, p, p.pairs);
}

// The task's rows as int16, [kTaskRows][kp]. Rows past `rows` and the K past k (odd k) keep
// whatever an earlier task left there, never zeroed (that was 1 % of DeiT-S's time): an extra
// row's outputs are never written, and the K past k multiplies the zero weights Pack put there.
ONNXVQ_AVX2 inline const int16_t* WidenRows(const uint8_t* a, int64_t rows,
                                            const amx::PackedWeights& w,
                                            std::vector<int16_t, amx::CacheAligned<int16_t>>& out) {
  out.resize(static_cast<size_t>(kTaskRows * w.kp));
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

// c[6][16] (row stride ldc) (+)= 6 int16 rows of a (row stride lda) times a 16-column panel,
// over `pairs` K pairs; kAdd: add to what c holds (a later K chunk). The accumulators are named
// variables, not an array: GCC keeps an array of vectors on the stack (measured: every add went
// through memory).
template <bool kAdd>
ONNXVQ_AVX2 inline void DotRows(const int16_t* a, int64_t lda, const int16_t* panel,
                                int64_t pairs, int32_t* c, int64_t ldc) {
  const auto load = [&](int r, int h) {
    return kAdd ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + r * ldc + 8 * h))
                : _mm256_setzero_si256();
  };
  __m256i c00 = load(0, 0), c01 = load(0, 1), c10 = load(1, 0), c11 = load(1, 1);
  __m256i c20 = load(2, 0), c21 = load(2, 1), c30 = load(3, 0), c31 = load(3, 1);
  __m256i c40 = load(4, 0), c41 = load(4, 1), c50 = load(5, 0), c51 = load(5, 1);
  const auto pair = [&](int r, int64_t p) {
    int32_t v;
    __builtin_memcpy(&v, a + r * lda + 2 * p, sizeof v);
    return _mm256_set1_epi32(v);
  };
#define ONNXVQ_AVX2_ROW(r, acc0, acc1)                         \
  {                                                            \
    const __m256i x = pair(r, p);                              \
    acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(x, w0));   \
    acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(x, w1));   \
  }
  for (int64_t p = 0; p < pairs; ++p) {
    const auto* wp = reinterpret_cast<const __m256i*>(panel + p * kPairStride);
    const __m256i w0 = _mm256_load_si256(wp), w1 = _mm256_load_si256(wp + 1);
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
  for (int r = 0; r < kRowGroup; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc), out[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc + 8), out[r][1]);
  }
}

// c[kTaskRows][32] (row stride 32) = a[kTaskRows][kp] (WidenRows) times the two panels of column
// block nb, for the first `rows` rows rounded up to a row group (the others are never read):
// per panel and K chunk, every row group passes over the chunk's weights while they are in L1.
ONNXVQ_AVX2 inline void Multiply(const int16_t* a, const amx::PackedWeights& w, int64_t nb,
                                 int64_t rows, int32_t* c) {
  const int64_t pairs = w.kp / 2;
  for (int64_t half = 0; half < 2; ++half) {
    const int16_t* panel = w.pairs.data() + (2 * nb + half) * pairs * kPairStride;
    int32_t* ch = c + half * kPanelCols;
    for (int64_t p0 = 0; p0 < pairs; p0 += kChunkPairs) {
      const int64_t n = std::min(kChunkPairs, pairs - p0);
      const int16_t* chunk = panel + p0 * kPairStride;
      for (int64_t r = 0; r < rows; r += kRowGroup) {
        const int16_t* ar = a + r * w.kp + 2 * p0;
        int32_t* cr = ch + r * amx::kBlockN;
        if (p0 == 0) {
          DotRows<false>(ar, w.kp, chunk, n, cr, amx::kBlockN);
        } else {
          DotRows<true>(ar, w.kp, chunk, n, cr, amx::kBlockN);
        }
      }
    }
  }
}

}  // namespace avx2
}  // namespace onnxvq
