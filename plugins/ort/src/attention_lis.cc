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
  std::unique_ptr<Int8SoftmaxRows> rows;
  int16_t neg_weight[256] = {};

  LogIntAttention(const OrtApi* api, const OrtKernelInfo* info)
      : bits(IntAttr(info, "bits", 4)), steps(IntAttr(info, "octave_steps", 1)),
        rows(MakeInt8SoftmaxRows(api, info)) {
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
      Require(rows->Problem().empty(), rows->Problem());
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

  void Head(const uint8_t* in, uint8_t* out, const AttentionShape& s, int64_t task) const {
    const HeadData h(in, s, task);
    const int64_t n = s.tokens, d = s.dim, hd = s.heads * d;
    // v - z_v as int16 pairs along tokens: [jpad/2][dpad][2]
    std::vector<int16_t> vp(static_cast<size_t>(h.jpad * h.dpad));
    for (int64_t j = 0; j < n; ++j) {
      const uint8_t* row = in + (h.b * n + j) * 3 * hd + 2 * hd + h.head * d;
      for (int64_t c = 0; c < d; ++c) {
        vp[(j / 2) * h.dpad * 2 + c * 2 + j % 2] = static_cast<int16_t>(row[c] - attrs.zv);
      }
    }
    std::vector<int32_t> dot(static_cast<size_t>(h.jpad)), acc(static_cast<size_t>(h.dpad));
    std::vector<int32_t> zeros(static_cast<size_t>(h.dpad));
    std::vector<int8_t> x(static_cast<size_t>(h.jpad));
    std::vector<uint8_t> codes(static_cast<size_t>(h.jpad));
    std::vector<int16_t> w(static_cast<size_t>(h.jpad));
    std::vector<int64_t> scratch(static_cast<size_t>(n));
    const bool fast = avx512::Available();
    for (int64_t i = 0; i < n; ++i) {
      Scores(h, s, i, fast, dot.data());
      if (fast) {
        avx512::ScoreCodesRow(dot.data(), n, attrs.qk_scale, scores_scale, x.data());
      } else {
        for (int64_t j = 0; j < n; ++j) x[j] = ScoreCode(dot[j]);
      }
      rows->Row(x.data(), n, codes.data(), scratch.data());
      for (int64_t j = 0; j < n; ++j) w[j] = neg_weight[codes[j]];
      uint8_t* yrow = out + (h.b * n + i) * hd + h.head * d;
      if (fast) {
        avx512::DotRow16(w.data(), vp.data(), h.jpad / 2, h.dpad / 16, acc.data());
        for (int64_t c = 0; c < d; ++c) acc[c] = -acc[c];
        avx512::OutputRow(acc.data(), 0, 0, zeros.data(), d, attrs.acc_scale, attrs.out_scale,
                          static_cast<int32_t>(attrs.zo), yrow);
        continue;
      }
      std::fill(acc.begin(), acc.end(), 0);
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t c = 0; c < d; ++c) acc[c] -= w[j] * vp[(j / 2) * h.dpad * 2 + c * 2 + j % 2];
      }
      for (int64_t c = 0; c < d; ++c) yrow[c] = OutputCode(acc[c], attrs);
    }
  }

  // Row i of S = (q - z_q)(k - z_k)^T.
  void Scores(const HeadData& h, const AttentionShape& s, int64_t i, bool fast,
              int32_t* dot) const {
    const int64_t n = s.tokens;
    const uint8_t* q = h.q.data() + i * h.dq;
    if (fast) {
      avx512::DotRow(q, h.kt.data(), h.dq / 4, h.jpad / 16, dot);
      for (int64_t j = 0; j < n; ++j) {
        dot[j] += static_cast<int32_t>((128 - attrs.zk) * h.qsum[i] - attrs.zq * h.ksum[j]);
      }
      return;
    }
    for (int64_t j = 0; j < n; ++j) {
      int32_t sum = 0;
      for (int64_t c = 0; c < s.dim; ++c) {
        sum += (int32_t{q[c]} - static_cast<int32_t>(attrs.zq)) * h.KC(j, c);
      }
      dot[j] = sum;
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
