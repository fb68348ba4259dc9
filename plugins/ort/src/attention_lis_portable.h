// LogIntAttention's steps as plain loops (attention_lis.cc), under ONNXVQ_NO_AVX2 where there is
// no AVX-512 VNNI (or ONNXVQ_NO_VNNI): the same integers, so the same codes as the vector paths.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "attention.h"
#include "attention_bias.h"
#include "log_int_softmax.h"

namespace onnxvq {
namespace lisportable {

constexpr int kGroup = 4;  // rows per pass over K and V

struct Params {
  const AttentionShape& attrs;
  float scores_scale;
  const Int8SoftmaxRows& rows;
  const int16_t* neg_weight;  // -w(a) for every code a (|w| <= 2^15)
  const AttentionBias& bias;
};

// Rows i0 .. i0 + rows - 1 of S = (q - z_q)(k - z_k)^T, row stride jpad.
inline void Scores(const HeadData& h, const AttentionShape& s, int64_t zq, int64_t i0, int rows,
                   int32_t* dot) {
  const uint8_t* q = h.q.data() + i0 * h.dq;
  for (int r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < s.tokens; ++j) {
      int32_t sum = 0;
      for (int64_t c = 0; c < s.dim; ++c) {
        sum += (int32_t{q[r * h.dq + c]} - static_cast<int32_t>(zq)) * h.KC(j, c);
      }
      dot[r * h.jpad + j] = sum;
    }
  }
}

// sat(rne((f32(v) * qk_scale + bias) / scores_scale)), the bias (0 without one: x + 0 = x)
// added after the product's rounding, never contracted into an FMA.
__attribute__((optimize("fp-contract=off"))) inline int8_t ScoreCode(int32_t v, float qk_scale,
                                                                    float scores_scale,
                                                                    float bias) {
  const float x = static_cast<float>(v) * qk_scale + bias;
  const float u = std::clamp(x / scores_scale, -1024.0f, 1024.0f);
  return static_cast<int8_t>(std::clamp(std::nearbyint(u), -128.0f, 127.0f));
}

// acc[r][d] = sum_j w[r][j] (v_jd - z_v), vp: v - z_v as int16 pairs along tokens.
inline void Product(const int16_t* w, const int16_t* vp, const HeadData& h,
                    const AttentionShape& s, int rows, int32_t* acc) {
  for (int r = 0; r < rows; ++r) {
    int32_t* ar = acc + r * h.dpad;
    std::fill(ar, ar + h.dpad, 0);
    for (int64_t j = 0; j < s.tokens; ++j) {
      const int32_t wj = w[r * h.jpad + j];
      const int16_t* v = vp + (j / 2) * h.dpad * 2 + j % 2;
      for (int64_t c = 0; c < s.dim; ++c) ar[c] += wj * v[c * 2];
    }
  }
}

// One head: v - z_v paired along tokens ([jpad/2][dpad][2]), then per group of rows the
// scores, their int8 codes (with the bias row, if any), the softmax codes, the negated weights, the product, the output.
inline void Head(const uint8_t* in, const HeadData& h, const AttentionShape& s, const Params& p,
                 uint8_t* out) {
  const int64_t n = s.tokens, d = s.dim, hd = s.heads * d;
  std::vector<int16_t> vp(static_cast<size_t>(h.jpad * h.dpad));
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* row = in + (h.b * n + j) * 3 * hd + 2 * hd + h.head * d;
    int16_t* dst = vp.data() + (j / 2) * h.dpad * 2 + j % 2;
    for (int64_t c = 0; c < d; ++c) dst[c * 2] = static_cast<int16_t>(row[c] - p.attrs.zv);
  }
  std::vector<int32_t> dot(static_cast<size_t>(kGroup * h.jpad));
  std::vector<int32_t> acc(static_cast<size_t>(kGroup * h.dpad));
  std::vector<int8_t> x(static_cast<size_t>(h.jpad));
  std::vector<uint8_t> codes(static_cast<size_t>(h.jpad));
  std::vector<int16_t> w(static_cast<size_t>(kGroup * h.jpad));
  std::vector<int64_t> scratch(static_cast<size_t>(n));
  for (int64_t i0 = 0; i0 < n; i0 += kGroup) {
    const int rows = static_cast<int>(std::min<int64_t>(kGroup, n - i0));
    Scores(h, s, p.attrs.zq, i0, rows, dot.data());
    for (int r = 0; r < rows; ++r) {
      const int32_t* dr = dot.data() + r * h.jpad;
      const float* b = p.bias.Row(h.b, h.head, i0 + r);
      for (int64_t j = 0; j < n; ++j) {
        x[j] = ScoreCode(dr[j], p.attrs.qk_scale, p.scores_scale, b == nullptr ? 0.0f : b[j]);
      }
      p.rows.Row(x.data(), n, codes.data(), scratch.data());
      int16_t* wr = w.data() + r * h.jpad;
      for (int64_t j = 0; j < n; ++j) wr[j] = p.neg_weight[codes[j]];
    }
    Product(w.data(), vp.data(), h, s, rows, acc.data());
    for (int r = 0; r < rows; ++r) {
      const int32_t* ar = acc.data() + r * h.dpad;
      uint8_t* yrow = out + (h.b * n + i0 + r) * hd + h.head * d;
      for (int64_t c = 0; c < d; ++c) yrow[c] = OutputCode(-int64_t{ar[c]}, p.attrs);
    }
  }
}

}  // namespace lisportable
}  // namespace onnxvq
