// AVX2 inner loops of QLinearAttention (and the scores dot of LogIntAttention): exact u8 x u8
// products on operands centred by their zero points and widened to int16, and the softmax and
// output rows of attention_avx512.h in 8-lane registers, computing the same floats bit for bit.
//
// Why int16 and vpmaddwd, not vpmaddubsw: vpmaddubsw adds its two u8 x s8 products in int16 with
// saturation, and exact inputs are out of its range on both of the ways to feed it: raw q against
// k - 128 gives pairs up to 2 * 255 * 128 = 65280, and the sign trick (|q - 128| against
// sign(k - 128, q - 128)) meets 128 * 128 products (and vpsignb(-128) = -128) at codes 0.
// vpmaddwd on (q - z_q), (k - z_k) in int16 (|x| <= 255) sums pairs exactly in int32 (|pair| <=
// 2 * 255^2), and the centred operands need no zero-point terms after the product.
//
// The library is built for x86-64-v3, so these functions need no run-time check of their own
// beyond Available() (which also reads the ONNXVQ_NO_AVX2 switch); they still carry the target
// attribute (simd.h) so that a build for an older -march compiles them too.
#pragma once

#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace onnxvq {
namespace avx2 {

// ONNXVQ_NO_AVX2=1 forces the portable loops (so tests cover them on any CPU).
inline bool Available() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("fma") != 0 &&
           std::getenv("ONNXVQ_NO_AVX2") == nullptr;
  }();
  return has;
}

// ---------------------------------------------------------------------------------------------
// Exact dot products.
//
// out[r][c] = sum_{t < 2 * pairs} a[r][t] * b[t][c] for R rows r and columns c in [0, 8 * blocks):
// a int16 rows (stride a_stride, at least 2 * pairs entries, zero past the depth), b int16
// packed [pairs][8 * blocks][2] (PackPairs), out int32 rows of stride out_stride. Each b load
// feeds R rows; two column blocks per pass give 2R independent vpmaddwd chains. Exact while every
// partial sum fits int32: |a|, |b| <= 255 and 2 * pairs <= 33026 (the ops' limits: D <= 256,
// N <= 32768). The accumulators are named variables, not an array, and R goes up to 6 (12
// accumulators, 2 b registers, 1 broadcast: the 16 ymm registers): GCC kept an array of them
// partly on the stack and shuffled the rest between registers (measured in the product with V).
template <int R>
ONNXVQ_AVX2 inline void DotRows16(const int16_t* a, int64_t a_stride, const int16_t* b,
                                  int64_t pairs, int64_t blocks, int32_t* out,
                                  int64_t out_stride) {
  static_assert(R >= 1 && R <= 6, "six rows at most: 12 accumulators");
  const int64_t stride = blocks * 16;  // int16 per pair of b
  const auto pair = [&](int r, int64_t p) {
    int32_t w;
    std::memcpy(&w, a + r * a_stride + 2 * p, 4);
    return _mm256_set1_epi32(w);
  };
  const auto store = [&](int r, int64_t cb, __m256i v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * out_stride + 8 * cb), v);
  };
  int64_t cb = 0;
  for (; cb + 1 < blocks; cb += 2) {
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const int16_t* bp = b + cb * 16;
#define ONNXVQ_DOT_ROW(r, acc0, acc1)                          \
  if constexpr (R > r) {                                       \
    const __m256i x = pair(r, p);                              \
    acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(x, b0));   \
    acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(x, b1));   \
  }
    for (int64_t p = 0; p < pairs; ++p) {
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + p * stride));
      const __m256i b1 =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + p * stride + 16));
      ONNXVQ_DOT_ROW(0, c00, c01)
      ONNXVQ_DOT_ROW(1, c10, c11)
      ONNXVQ_DOT_ROW(2, c20, c21)
      ONNXVQ_DOT_ROW(3, c30, c31)
      ONNXVQ_DOT_ROW(4, c40, c41)
      ONNXVQ_DOT_ROW(5, c50, c51)
    }
#undef ONNXVQ_DOT_ROW
    const __m256i acc[6][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                               {c30, c31}, {c40, c41}, {c50, c51}};
    for (int r = 0; r < R; ++r) {
      store(r, cb, acc[r][0]);
      store(r, cb + 1, acc[r][1]);
    }
  }
  if (cb < blocks) {  // the last, odd column block: one b register, R chains
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
    const int16_t* bp = b + cb * 16;
#define ONNXVQ_DOT_ROW(r, acc)                                 \
  if constexpr (R > r) acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pair(r, p), bv));
    for (int64_t p = 0; p < pairs; ++p) {
      const __m256i bv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + p * stride));
      ONNXVQ_DOT_ROW(0, c0)
      ONNXVQ_DOT_ROW(1, c1)
      ONNXVQ_DOT_ROW(2, c2)
      ONNXVQ_DOT_ROW(3, c3)
      ONNXVQ_DOT_ROW(4, c4)
      ONNXVQ_DOT_ROW(5, c5)
    }
#undef ONNXVQ_DOT_ROW
    const __m256i acc[6] = {c0, c1, c2, c3, c4, c5};
    for (int r = 0; r < R; ++r) store(r, cb, acc[r]);
  }
}

// Any number of rows: groups of kRows, then one group of the rest.
constexpr int kRows = 6;

ONNXVQ_AVX2 inline void DotRows16Any(int rows, const int16_t* a, int64_t a_stride,
                                     const int16_t* b, int64_t pairs, int64_t blocks,
                                     int32_t* out, int64_t out_stride) {
  int r = 0;
  for (; r + kRows <= rows; r += kRows) {
    DotRows16<kRows>(a + r * a_stride, a_stride, b, pairs, blocks, out + r * out_stride,
                     out_stride);
  }
  const int64_t ao = r * a_stride, oo = r * out_stride;
  switch (rows - r) {
    case 1: DotRows16<1>(a + ao, a_stride, b, pairs, blocks, out + oo, out_stride); break;
    case 2: DotRows16<2>(a + ao, a_stride, b, pairs, blocks, out + oo, out_stride); break;
    case 3: DotRows16<3>(a + ao, a_stride, b, pairs, blocks, out + oo, out_stride); break;
    case 4: DotRows16<4>(a + ao, a_stride, b, pairs, blocks, out + oo, out_stride); break;
    case 5: DotRows16<5>(a + ao, a_stride, b, pairs, blocks, out + oo, out_stride); break;
    default: break;
  }
}

// Packing for DotRows16, vectorized: the head's operands are N x D codes, re-packed per head
// (scalar loops took ~15 % of a DeiT-S head).

// 8 (16) codes minus zp as int16, in the low half (all) of a register.
ONNXVQ_AVX2 inline __m128i Centre8(const uint8_t* x, __m128i zp) {
  return _mm_sub_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(x))),
                       zp);
}
ONNXVQ_AVX2 inline __m256i Centre16(const uint8_t* x, __m256i zp) {
  return _mm256_sub_epi16(
      _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x))), zp);
}

// Rows of `depth` uint8 codes minus zp as int16, zero up to `dpad`.
ONNXVQ_AVX2 inline void CentreRow(const uint8_t* x, int64_t depth, int64_t dpad, int32_t zp,
                                  int16_t* out) {
  const __m256i vzp = _mm256_set1_epi16(static_cast<int16_t>(zp));
  int64_t c = 0;
  for (; c + 16 <= depth; c += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c), Centre16(x + c, vzp));
  }
  for (; c < depth; ++c) out[c] = static_cast<int16_t>(int32_t{x[c]} - zp);
  for (; c < dpad; ++c) out[c] = 0;
}

// b for DotRows16 from `rows` uint8 rows row(t) of `cols` codes (the product's depth index t):
// (x - zp) as [rows_pad / 2][cols_pad][2], zero in the padding; rows_pad even, cols_pad a
// multiple of 8. Rows t, t + 1 interleave into one pair row (vpunpck*wd, 8 columns a step).
template <class Row>
ONNXVQ_AVX2 void PackPairs(const Row& row, int64_t rows, int64_t cols, int32_t zp,
                           int64_t rows_pad, int64_t cols_pad, int16_t* b) {
  std::fill(b, b + rows_pad * cols_pad, int16_t{0});
  const __m128i vzp = _mm_set1_epi16(static_cast<int16_t>(zp));
  for (int64_t t = 0; t < rows; t += 2) {
    const uint8_t* x0 = row(t);
    const uint8_t* x1 = t + 1 < rows ? row(t + 1) : nullptr;
    int16_t* dst = b + (t / 2) * cols_pad * 2;
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
      const __m128i a = Centre8(x0 + c, vzp);
      const __m128i v = x1 != nullptr ? Centre8(x1 + c, vzp) : _mm_setzero_si128();
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * c), _mm_unpacklo_epi16(a, v));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * c + 8), _mm_unpackhi_epi16(a, v));
    }
    for (; c < cols; ++c) {
      dst[2 * c] = static_cast<int16_t>(int32_t{x0[c]} - zp);
      dst[2 * c + 1] = x1 != nullptr ? static_cast<int16_t>(int32_t{x1[c]} - zp) : int16_t{0};
    }
  }
}

// The 8 x 8 int32 transpose of rows r[0..7] (in place).
ONNXVQ_AVX2 inline void Transpose8(__m256i (&r)[8]) {
  __m256i t[8], u[8];
  for (int k = 0; k < 4; ++k) {
    t[2 * k] = _mm256_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm256_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < 2; ++k) {
    u[4 * k] = _mm256_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
    u[4 * k + 1] = _mm256_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
    u[4 * k + 2] = _mm256_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
    u[4 * k + 3] = _mm256_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm256_permute2x128_si256(u[k], u[k + 4], 0x20);
    r[k + 4] = _mm256_permute2x128_si256(u[k], u[k + 4], 0x31);
  }
}

// K^T for the scores: token j's row of `depth` key codes becomes column j, so b[t][j] =
// k_jt - z_k as [depth_pad / 2][tokens_pad][2]. A pair (k_j,2p, k_j,2p+1) is one 32-bit word, so
// this is a transpose of the [tokens][pairs] words: 8 tokens x 8 pairs per Transpose8.
template <class Row>
ONNXVQ_AVX2 void PackTransposed(const Row& row, int64_t tokens, int64_t depth, int32_t zp,
                                int64_t depth_pad, int64_t tokens_pad, int16_t* b) {
  std::fill(b, b + depth_pad * tokens_pad, int16_t{0});
  const __m256i vzp = _mm256_set1_epi16(static_cast<int16_t>(zp));
  const auto scalar = [&](int64_t j, int64_t t0) {  // depth t0 .. depth - 1 of token j
    const uint8_t* x = row(j);
    for (int64_t t = t0; t < depth; ++t) {
      b[((t / 2) * tokens_pad + j) * 2 + (t % 2)] = static_cast<int16_t>(int32_t{x[t]} - zp);
    }
  };
  const int64_t full = depth / 16 * 16;  // depth in whole 8-pair steps
  int64_t j0 = 0;
  for (; j0 + 8 <= tokens; j0 += 8) {
    const uint8_t* x[8];
    for (int k = 0; k < 8; ++k) x[k] = row(j0 + k);
    for (int64_t t = 0; t < full; t += 16) {
      __m256i r[8];
      for (int k = 0; k < 8; ++k) r[k] = Centre16(x[k] + t, vzp);
      Transpose8(r);  // r[p]: pair t / 2 + p of tokens j0 .. j0 + 7
      for (int p = 0; p < 8; ++p) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + ((t / 2 + p) * tokens_pad + j0) * 2),
                            r[p]);
      }
    }
    for (int k = 0; k < 8; ++k) scalar(j0 + k, full);
  }
  for (; j0 < tokens; ++j0) scalar(j0, 0);
}

// One head's operands for the scores S = (q - z_q)(k - z_k)^T (and, with `values`, the product
// (P - z_p)(v - z_v)): q [N][dq] and K^T packed as above; V as [jpad / 2][dpad][2].
// dq = D rounded up to even, jpad = N rounded up to 8 (DotRows16's column blocks), dpad = D to 8.
struct Head16 {
  int64_t dq, jpad, dpad;
  std::vector<int16_t> q, kt, v;

  template <class Row>  // row(j, t): piece t (0 q, 1 k, 2 v) of token j of this head
  Head16(const Row& row, int64_t n, int64_t d, int32_t zq, int32_t zk, int32_t zv, bool values)
      : dq((d + 1) / 2 * 2), jpad((std::max<int64_t>(n, 1) + 7) / 8 * 8), dpad((d + 7) / 8 * 8),
        q(static_cast<size_t>(n * dq)), kt(static_cast<size_t>(dq * jpad)),
        v(values ? static_cast<size_t>(jpad * dpad) : 0) {
    for (int64_t j = 0; j < n; ++j) CentreRow(row(j, 0), d, dq, zq, q.data() + j * dq);
    PackTransposed([&](int64_t j) { return row(j, 1); }, n, d, zk, dq, jpad, kt.data());
    if (values) PackPairs([&](int64_t j) { return row(j, 2); }, n, d, zv, jpad, dpad, v.data());
  }

  // S for query rows i0 .. i0 + rows - 1 into dot (row stride dot_stride >= jpad): exact int32.
  void Scores(int64_t i0, int rows, int32_t* dot, int64_t dot_stride) const {
    DotRows16Any(rows, q.data() + i0 * dq, dq, kt.data(), dq / 2, jpad / 8, dot, dot_stride);
  }
};

// ---------------------------------------------------------------------------------------------
// The softmax row and the output row: the float operations of avx512::Exp, ProbsRow, OutputRow
// in the same order, so every code equals the AVX-512 path's. Sixteen lanes (a zmm) are two
// ymm halves here: lanes 0-7 and 8-15 of each block of 16 tokens.

// avx512::Exp: the same constants and FMAs; vscalefps(p, n) = RN(p 2^n) as p 2^(n + 64) (exact:
// p < 2, n + 64 >= -85) times 2^-64 (the one rounding, into the subnormals where n < -126).
ONNXVQ_AVX2 inline __m256 Exp(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-103.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127 + 64)), 23);
  return _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), _mm256_set1_ps(0x1p-64f));
}

// Lanes [0, 8) of a block whose first `valid` entries are real (all ones there).
ONNXVQ_AVX2 inline __m256i LaneMask(int64_t valid) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(valid, 8))),
                            idx);
}

// _mm512_reduce_add_ps of the zmm (lo, hi), as GCC 12 writes it: hi + lo, the upper 128 bits of
// that plus the lower, then lanes (0 + 2) + (1 + 3).
ONNXVQ_AVX2 inline float ReduceAdd16(__m256 lo, __m256 hi) {
  const __m256 h = _mm256_add_ps(hi, lo);
  const __m128 q = _mm_add_ps(_mm256_extractf128_ps(h, 1), _mm256_castps256_ps128(h));
  const __m128 s = _mm_add_ps(q, _mm_shuffle_ps(q, q, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtss_f32(s) + _mm_cvtss_f32(_mm_shuffle_ps(s, s, 1));
}

ONNXVQ_AVX2 inline float ReduceMax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
  m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
  return std::max(_mm_cvtss_f32(m), _mm_cvtss_f32(_mm_shuffle_ps(m, m, 1)));
}

// One softmax row: scores s[j] (j < n, int32, s and e padded to a multiple of 16), with `bias`
// (n floats or nullptr) x_j = f32(s_j) * qk_scale + bias_j (two roundings, no FMA), e_j =
// Exp(x_j - max x), the codes P_j = sat(rne(e_j * (1 / (sum e * probs_scale))) + zp), written as
// P_j - zp in int16 (pc, 16-padded, zero past n: the operand of the product with V). The sum runs
// in 16 lanes in token order and reduces as _mm512_reduce_add_ps, so it is the AVX-512 row's.
ONNXVQ_AVX2 inline void ProbsRow(const int32_t* s, int64_t n, float qk_scale, float probs_scale,
                                 int32_t zp, int16_t* pc, float* e, const float* bias) {
  const int64_t blocks = (n + 15) / 16;
  const __m256 scale = _mm256_set1_ps(qk_scale);
  __m256 mx = _mm256_set1_ps(-INFINITY);
  for (int64_t j = 0; j < 16 * blocks; j += 8) {
    const __m256i m = LaneMask(n - j);
    __m256 x = _mm256_mul_ps(
        _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + j))), scale);
    if (bias != nullptr) x = _mm256_add_ps(x, _mm256_maskload_ps(bias + j, m));
    _mm256_storeu_ps(e + j, x);
    mx = _mm256_blendv_ps(mx, _mm256_max_ps(mx, x), _mm256_castsi256_ps(m));
  }
  const __m256 vmax = _mm256_set1_ps(ReduceMax(mx));
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  for (int64_t j = 0; j < 16 * blocks; j += 16) {
    const __m256 v0 = _mm256_and_ps(_mm256_castsi256_ps(LaneMask(n - j)),
                                    Exp(_mm256_sub_ps(_mm256_loadu_ps(e + j), vmax)));
    const __m256 v1 = _mm256_and_ps(_mm256_castsi256_ps(LaneMask(n - j - 8)),
                                    Exp(_mm256_sub_ps(_mm256_loadu_ps(e + j + 8), vmax)));
    _mm256_storeu_ps(e + j, v0);
    _mm256_storeu_ps(e + j + 8, v1);
    lo = _mm256_add_ps(lo, v0);
    hi = _mm256_add_ps(hi, v1);
  }
  const __m256 r = _mm256_set1_ps(1.0f / (ReduceAdd16(lo, hi) * probs_scale));
  const __m256i vzp = _mm256_set1_epi32(zp), top = _mm256_set1_epi32(255);
  for (int64_t j = 0; j < 16 * blocks; j += 16) {
    __m256i c[2];
    for (int h = 0; h < 2; ++h) {
      const __m256i code = _mm256_add_epi32(
          _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(e + j + 8 * h), r)), vzp);
      const __m256i sat = _mm256_min_epi32(_mm256_max_epi32(code, _mm256_setzero_si256()), top);
      c[h] = _mm256_and_si256(LaneMask(n - j - 8 * h), _mm256_sub_epi32(sat, vzp));
    }
    // packs interleaves 128-bit lanes: (lo 0-3, hi 0-3, lo 4-7, hi 4-7) -> token order
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(c[0], c[1]), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(pc + j), w);
  }
}

// Output codes of one row: sat(rne(clamp((f32(acc_c) * acc_scale) / out_scale, +-1024)) + zo)
// for c < dim (acc padded to a multiple of 8); IEEE division, as avx512::Requant (whose
// FMA-corrected quotient is the correctly rounded one) and OutputCode.
ONNXVQ_AVX2 inline void OutputRow(const int32_t* acc, int64_t dim, float acc_scale,
                                  float out_scale, int32_t zo, uint8_t* y) {
  const __m256 scale = _mm256_set1_ps(acc_scale), divisor = _mm256_set1_ps(out_scale);
  const __m256 lo = _mm256_set1_ps(-1024.0f), hi = _mm256_set1_ps(1024.0f);
  for (int64_t c0 = 0; c0 < dim; c0 += 8) {
    const __m256 p = _mm256_mul_ps(
        _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + c0))),
        scale);
    const __m256 u = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(p, divisor), lo), hi);
    const __m256i c = _mm256_add_epi32(_mm256_cvtps_epi32(u), _mm256_set1_epi32(zo));
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    const __m128i bytes = _mm_packus_epi16(w, w);  // unsigned saturation: 0..255
    if (dim - c0 >= 8) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(y + c0), bytes);
    } else {
      uint8_t tail[16];
      _mm_storeu_si128(reinterpret_cast<__m128i*>(tail), bytes);
      std::memcpy(y + c0, tail, static_cast<size_t>(dim - c0));
    }
  }
}

}  // namespace avx2
}  // namespace onnxvq
