// LogIntAttention (plugins/README.md): QLinearAttention's integer scores, then FQ-ViT's log-int
// softmax and log-code A.V, all exact: the int8 score codes sat(rne((float(S) * qk_scale) /
// scores_scale)), LogIntSoftmax's own row kernel (log_int_softmax.h) on them, and
// Y = sum_j w(code_j) (v_jd - z_v) with LogIntMatMul's weights, as one vpdpwssd GEMM row on the
// negated weights (-2^15 fits int16); for codes from the softmax sum_j w <= 2^(1/2) 2^15, so
// |Y| < 2^24 and every partial sum fits int32. Output codes as QLinearAttention's.
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "attention.h"
#include "attention_avx512.h"
#include "log_int_softmax.h"
#include "parallel.h"

namespace onnxvq {
namespace {

// LogIntMatMul's weight of code a (README), 0 above M.
int64_t Weight(int64_t a, int64_t m, int64_t steps) {
  if (a > m) return 0;
  if (steps == 1) return int64_t{1} << (m - a);
  return (a % 2 ? int64_t{181} : int64_t{128}) << ((m + 1) / 2 - (a + 1) / 2);
}

struct LogIntAttention {
  std::string missing;
  AttentionShape attrs{};
  float scores_scale = 1;
  int64_t bits = 4, steps = 1;
  std::unique_ptr<Int8SoftmaxRows> rows_;
  int16_t neg_weight[256] = {};

  LogIntAttention(const OrtApi* api, const OrtKernelInfo* info)
      : bits(IntAttr(info, "bits", 4)), steps(IntAttr(info, "octave_steps", 1)),
        rows_(MakeInt8SoftmaxRows(api, info)) {
    ReadCommonAttrs(info, attrs, missing);
    scores_scale = FloatAttr(info, "scores_scale", 0, &missing);
    const int64_t m = std::min<int64_t>((int64_t{1} << std::clamp<int64_t>(bits, 1, 8)) - 1, 31);
    for (int a = 0; a < 256 && bits <= 4; ++a) {
      neg_weight[a] = static_cast<int16_t>(-Weight(a, m, steps));
    }
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<uint8_t>& x,
                      Ort::Custom::Tensor<uint8_t>& y) {
    return Guard("LogIntAttention", [&] {
      Require(missing.empty(), "missing attribute(s): " + missing);
      Require(rows_->Problem().empty(), rows_->Problem());
      Require(bits >= 1 && bits <= 4, "bits must lie in 1..4");
      Require(scores_scale > 0, "scores_scale must be > 0");
      AttentionShape s = attrs;
      ResolveShape(x.Shape(), s);
      uint8_t* out = y.Allocate({s.batch, s.tokens, s.heads * s.dim});
      const uint8_t* in = x.Data();
      ParallelRows(ctx, s.batch * s.heads, s.tokens * s.tokens * s.dim,
                   [&](int64_t begin, int64_t end) {
                     for (int64_t t = begin; t < end; ++t) Head(in, out, s, t);
                   });
    });
  }

  static constexpr int kGroup = 4;  // rows per pass over K and V, as QLinearAttention

  void Head(const uint8_t* in, uint8_t* out, const AttentionShape& s, int64_t task) const {
    const HeadData h(in, s, task, /*quads_of_v=*/false);
    const int64_t n = s.tokens, d = s.dim, hd = s.heads * d;
    // v - z_v as int16 pairs along tokens: [jpad/2][dpad][2]
    std::vector<int16_t> vp(static_cast<size_t>(h.jpad * h.dpad));
    for (int64_t j = 0; j < n; ++j) {
      const uint8_t* row = in + (h.b * n + j) * 3 * hd + 2 * hd + h.head * d;
      int16_t* dst = vp.data() + (j / 2) * h.dpad * 2 + j % 2;
      for (int64_t c = 0; c < d; ++c) dst[c * 2] = static_cast<int16_t>(row[c] - attrs.zv);
    }
    std::vector<int32_t> dot(static_cast<size_t>(kGroup * h.jpad));
    std::vector<int32_t> acc(static_cast<size_t>(kGroup * h.dpad)), zeros(h.dpad);
    std::vector<int8_t> x(static_cast<size_t>(h.jpad));
    std::vector<uint8_t> codes(static_cast<size_t>(h.jpad));
    std::vector<int16_t> w(static_cast<size_t>(kGroup * h.jpad));
    std::vector<int64_t> scratch(static_cast<size_t>(n));
    const bool fast = avx512::Available();
    for (int64_t i0 = 0; i0 < n; i0 += kGroup) {
      const int rows = static_cast<int>(std::min<int64_t>(kGroup, n - i0));
      Scores(h, s, i0, rows, fast, dot.data());
      for (int r = 0; r < rows; ++r) {
        const int32_t* dr = dot.data() + r * h.jpad;
        if (fast) {
          avx512::ScoreCodesRow(dr, n, attrs.qk_scale, scores_scale, x.data());
        } else {
          for (int64_t j = 0; j < n; ++j) x[j] = ScoreCode(dr[j]);
        }
        rows_->Row(x.data(), n, codes.data(), scratch.data());
        int16_t* wr = w.data() + r * h.jpad;
        for (int64_t j = 0; j < n; ++j) wr[j] = neg_weight[codes[j]];
      }
      if (fast && rows == kGroup) {
        avx512::DotRows16<kGroup>(w.data(), h.jpad, vp.data(), h.jpad / 2, h.dpad / 16,
                                  acc.data(), h.dpad);
      } else if (fast) {
        for (int r = 0; r < rows; ++r) {
          avx512::DotRows16<1>(w.data() + r * h.jpad, 0, vp.data(), h.jpad / 2, h.dpad / 16,
                               acc.data() + r * h.dpad, 0);
        }
      } else {
        PortableProduct(w.data(), vp.data(), h, s, rows, acc.data());
      }
      for (int r = 0; r < rows; ++r) {
        int32_t* ar = acc.data() + r * h.dpad;
        for (int64_t c = 0; c < d; ++c) ar[c] = -ar[c];
        uint8_t* yrow = out + (h.b * n + i0 + r) * hd + h.head * d;
        if (fast) {
          avx512::OutputRow(ar, 0, 0, zeros.data(), d, attrs.acc_scale, attrs.out_scale,
                            static_cast<int32_t>(attrs.zo), yrow);
        } else {
          for (int64_t c = 0; c < d; ++c) yrow[c] = OutputCode(ar[c], attrs);
        }
      }
    }
  }

  // acc[r][d] = sum_j w[r][j] (v_jd - z_v), plain loops.
  static void PortableProduct(const int16_t* w, const int16_t* vp, const HeadData& h,
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

  // Rows i0 .. i0 + rows - 1 of S = (q - z_q)(k - z_k)^T, row stride jpad.
  void Scores(const HeadData& h, const AttentionShape& s, int64_t i0, int rows, bool fast,
              int32_t* dot) const {
    const int64_t n = s.tokens;
    const uint8_t* q = h.q.data() + i0 * h.dq;
    if (!fast) {
      for (int r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < n; ++j) {
          int32_t sum = 0;
          for (int64_t c = 0; c < s.dim; ++c) {
            sum += (int32_t{q[r * h.dq + c]} - static_cast<int32_t>(attrs.zq)) * h.KC(j, c);
          }
          dot[r * h.jpad + j] = sum;
        }
      }
      return;
    }
    if (rows == kGroup) {
      avx512::DotRows<kGroup>(q, h.dq, h.kt.data(), h.dq / 4, h.jpad / 16, dot, h.jpad);
    } else {
      for (int r = 0; r < rows; ++r) {
        avx512::DotRow(q + r * h.dq, h.kt.data(), h.dq / 4, h.jpad / 16, dot + r * h.jpad);
      }
    }
    for (int r = 0; r < rows; ++r) {
      const auto row_term = static_cast<int32_t>((128 - attrs.zk) * h.qsum[i0 + r]);
      const auto zq = static_cast<int32_t>(attrs.zq);
      for (int64_t j = 0; j < n; ++j) dot[r * h.jpad + j] += row_term - zq * h.ksum[j];
    }
  }

  int8_t ScoreCode(int32_t v) const {
    const float u = std::clamp((static_cast<float>(v) * attrs.qk_scale) / scores_scale, -1024.0f,
                               1024.0f);
    return static_cast<int8_t>(std::clamp(std::nearbyint(u), -128.0f, 127.0f));
  }
};

}  // namespace

void AddLogIntAttention(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<LogIntAttention>("LogIntAttention", kProvider));
}

}  // namespace onnxvq
