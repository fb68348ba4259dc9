// LogIntAttention (plugins/README.md): QLinearAttention's integer scores, then FQ-ViT's log-int
// softmax and log-code A.V, all exact: the int8 score codes sat(rne((float(S) * qk_scale) /
// scores_scale)), LogIntSoftmax's own row kernel (log_int_softmax.h) on them, and
// Y = sum_j w(code_j) (v_jd - z_v) with LogIntMatMul's weights (AVX-512: as uint8 bytes of w,
// see HeadAvx512; plain loops: the negated weights, -2^15 fits int16); for codes from the
// softmax sum_j w <= 2^(1/2) 2^15, so |Y| < 2^24 and every partial sum fits int32. Output codes
// as QLinearAttention's.
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "attention.h"
#include "attention_avx512.h"
#include "attention_lis_avx512.h"
#include "lis_vbmi.h"
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
  uint16_t weight[32] = {};  // codes are < 32 (bits <= 4): the vpermw table
  int max_code = 15;
  vbmi::WeightPlans plans;  // GroupWeightsByValue's passes and byte tables

  LogIntAttention(const OrtApi* api, const OrtKernelInfo* info)
      : bits(IntAttr(info, "bits", 4)), steps(IntAttr(info, "octave_steps", 1)),
        rows_(MakeInt8SoftmaxRows(api, info)) {
    ReadCommonAttrs(info, attrs, missing);
    scores_scale = FloatAttr(info, "scores_scale", 0, &missing);
    const int64_t m = std::min<int64_t>((int64_t{1} << std::clamp<int64_t>(bits, 1, 8)) - 1, 31);
    for (int a = 0; a < 256 && bits <= 4; ++a) {
      neg_weight[a] = static_cast<int16_t>(-Weight(a, m, steps));
      if (a < 32) weight[a] = static_cast<uint16_t>(Weight(a, m, steps));
    }
    max_code = static_cast<int>(std::min<int64_t>(m, 15));
    if (bits <= 4) plans.Build(weight, max_code);
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
    const bool fast = avx512::Available();
    const HeadData h(in, s, task, /*quads_of_v=*/fast);
    if (fast) {
      HeadAvx512(h, s, out);
      return;
    }
    // v - z_v as int16 pairs along tokens: [jpad/2][dpad][2]
    std::vector<int16_t> vp(static_cast<size_t>(h.jpad * h.dpad));
    const int64_t n = s.tokens, hd = s.heads * s.dim;
    for (int64_t j = 0; j < n; ++j) {
      const uint8_t* row = in + (h.b * n + j) * 3 * hd + 2 * hd + h.head * s.dim;
      int16_t* dst = vp.data() + (j / 2) * h.dpad * 2 + j % 2;
      for (int64_t c = 0; c < s.dim; ++c) dst[c * 2] = static_cast<int16_t>(row[c] - attrs.zv);
    }
    HeadPortable(h, vp.data(), s, out);
  }

  // One group's buffers on the AVX-512 path: per row int8 score codes, weights, byte weights of
  // up to two vpdpbusd passes and their products.
  struct Group {
    std::vector<int8_t> x;
    std::vector<uint8_t> codes, u;
    std::vector<uint16_t> w;
    std::vector<int32_t> acc;
    std::vector<uint8_t> table, bytes;  // by value (GroupWeightsByValue): [row][u], [pass][u]
    int32_t usum[2][kGroup];
    int shift[kGroup];
    bool two_pass;
    Group(const HeadData& h)
        : x(static_cast<size_t>(kGroup * h.jpad)), codes(static_cast<size_t>(h.jpad)),
          u(static_cast<size_t>(2 * kGroup * h.jpad)), w(static_cast<size_t>(kGroup * h.jpad)),
          acc(static_cast<size_t>(2 * kGroup * h.dpad)), table(kGroup * 256), bytes(2 * 256) {}
  };

  // Per group of kGroup rows: the int8 score codes (fused with the scores GEMM), the softmax
  // codes and their weights w <= 2^15, then Y = sum_j w_j (v_jd - z_v) as u8 x s8 products on
  // V's quads (v - 128) with the (128 - z_v) sum_j u_j correction. When every row's weights are
  // multiples of 2^t with w >> t <= 255 (its codes span <= 8 log2 steps), one pass of u = w >> t;
  // otherwise two, u = w >> 8 and w & 255. Either way exact: |Y| < 2^24 (module comment).
  void HeadAvx512(const HeadData& h, const AttentionShape& s, uint8_t* out) const {
    const int64_t n = s.tokens, d = s.dim, hd = s.heads * d;
    std::vector<int32_t> col_term(static_cast<size_t>(h.jpad));
    for (int64_t j = 0; j < n; ++j) col_term[j] = static_cast<int32_t>(-attrs.zq * h.ksum[j]);
    Group g(h);
    std::vector<int64_t> scratch(static_cast<size_t>(n));
    const lis512::Requant scores = lis512::MakeRequant(attrs.qk_scale, scores_scale);
    const lis512::Requant output = lis512::MakeRequant(attrs.acc_scale, attrs.out_scale);
    const auto zv = 128 - static_cast<int32_t>(attrs.zv), zo = static_cast<int32_t>(attrs.zo);
    for (int64_t i0 = 0; i0 < n; i0 += kGroup) {
      const int rows = static_cast<int>(std::min<int64_t>(kGroup, n - i0));
      int32_t row_term[kGroup];
      for (int r = 0; r < rows; ++r) {
        row_term[r] = static_cast<int32_t>((128 - attrs.zk) * h.qsum[i0 + r]);
      }
      const uint8_t* q = h.q.data() + i0 * h.dq;
      if (rows == kGroup) {
        lis512::ScoreCodeRows<kGroup>(q, h.dq, h.kt.data(), h.dq / 4, h.jpad / 16, row_term,
                                      col_term.data(), scores, g.x.data(), h.jpad);
      } else {
        for (int r = 0; r < rows; ++r) {
          lis512::ScoreCodeRows<1>(q + r * h.dq, 0, h.kt.data(), h.dq / 4, h.jpad / 16,
                                   row_term + r, col_term.data(), scores, g.x.data() + r * h.jpad,
                                   0);
        }
      }
      GroupWeights(h, n, rows, scratch.data(), g);
      for (int pass = 0; pass < 1 + g.two_pass; ++pass) GroupProduct(h, rows, pass, g);
      for (int r = 0; r < rows; ++r) {
        const int32_t* a1 = g.acc.data() + r * h.dpad;
        const int32_t* a2 = g.two_pass ? a1 + kGroup * h.dpad : nullptr;
        lis512::OutputCodes(a1, zv * g.usum[0][r], g.shift[r], a2, zv * g.usum[1][r], d, output,
                            zo, out + (h.b * n + i0 + r) * hd + h.head * d);
      }
    }
  }

  // Softmax codes, weights and byte weights of the group's rows (see HeadAvx512).
  void GroupWeights(const HeadData& h, int64_t n, int rows, int64_t* scratch, Group& g) const {
    if (GroupWeightsByValue(h, n, rows, g)) return;
    g.two_pass = false;
    for (int r = 0; r < rows; ++r) {
      rows_->Row(g.x.data() + r * h.jpad, n, g.codes.data(), scratch);
      uint32_t wmax = 0, wor = 0;
      lis512::WeightsRow(g.codes.data(), n, h.jpad, weight, g.w.data() + r * h.jpad, wmax, wor);
      g.shift[r] = wor == 0 ? 0 : __builtin_ctz(wor);
      g.two_pass = g.two_pass || (wmax >> g.shift[r]) > 255;
    }
    for (int r = 0; r < rows; ++r) {
      if (g.two_pass) g.shift[r] = 8;
      const uint16_t* wr = g.w.data() + r * h.jpad;
      g.usum[0][r] = lis512::ByteWeights(wr, h.jpad, g.shift[r], g.u.data() + r * h.jpad);
      g.usum[1][r] = g.two_pass ? lis512::ByteWeights(wr, h.jpad, 0, g.u.data() +
                                                      (kGroup + r) * h.jpad)
                                : 0;
    }
  }

  // GroupWeights with tables by value (AVX-512 VBMI): each row's code and byte weight for every
  // u = max - x of its range, then one table lookup per element. The shift and the pass count
  // are the span's (vbmi::WeightPlans) from the smallest to the largest nonzero-weight code in
  // the table, a superset of the row's own: every weight present is still a multiple of
  // 2^shift, so Y stays exact. False where unavailable.
  bool GroupWeightsByValue(const HeadData& h, int64_t n, int rows, Group& g) const {
    int32_t mx[kGroup], range[kGroup];
    g.two_pass = false;
    for (int r = 0; r < rows; ++r) {
      uint8_t* code = g.table.data() + r * 256;
      if (!rows_->Table(g.x.data() + r * h.jpad, n, mx[r], range[r], code)) return false;
      int lo = 0, hi = -1;
      vbmi::CodeSpan(code, range[r] + 1, max_code, lo, hi);
      g.shift[r] = hi < 0 ? 0 : plans.shift[lo][hi];
      g.two_pass = g.two_pass || (hi >= 0 && plans.two_pass[lo][hi]);
    }
    for (int r = 0; r < rows; ++r) {
      if (g.two_pass) g.shift[r] = 8;
      const int8_t* x = g.x.data() + r * h.jpad;
      for (int pass = 0; pass < 1 + g.two_pass; ++pass) {
        uint8_t* bytes = g.bytes.data() + pass * 256;
        vbmi::MapBytes(g.table.data() + r * 256, range[r] + 1, plans.bytes[pass ? 0 : g.shift[r]],
                       bytes);
        g.usum[pass][r] = vbmi::LookupRow(x, n, h.jpad, mx[r],
                                          vbmi::LoadTable(bytes, range[r] >= 128),
                                          g.u.data() + (pass * kGroup + r) * h.jpad);
      }
      if (!g.two_pass) g.usum[1][r] = 0;
    }
    return true;
  }

  // acc[pass][r][d] = sum_j u[pass][r][j] (v_jd - 128).
  static void GroupProduct(const HeadData& h, int rows, int pass, Group& g) {
    const uint8_t* u = g.u.data() + pass * kGroup * h.jpad;
    int32_t* acc = g.acc.data() + pass * kGroup * h.dpad;
    if (rows == kGroup) {
      avx512::DotRows<kGroup>(u, h.jpad, h.vt.data(), h.jpad / 4, h.dpad / 16, acc, h.dpad);
      return;
    }
    for (int r = 0; r < rows; ++r) {
      avx512::DotRow(u + r * h.jpad, h.vt.data(), h.jpad / 4, h.dpad / 16, acc + r * h.dpad);
    }
  }

  // The same steps as plain loops (no AVX-512 VNNI, or ONNXVQ_NO_VNNI).
  void HeadPortable(const HeadData& h, const int16_t* vp, const AttentionShape& s,
                    uint8_t* out) const {
    const int64_t n = s.tokens, d = s.dim, hd = s.heads * d;
    std::vector<int32_t> dot(static_cast<size_t>(kGroup * h.jpad));
    std::vector<int32_t> acc(static_cast<size_t>(kGroup * h.dpad));
    std::vector<int8_t> x(static_cast<size_t>(h.jpad));
    std::vector<uint8_t> codes(static_cast<size_t>(h.jpad));
    std::vector<int16_t> w(static_cast<size_t>(kGroup * h.jpad));
    std::vector<int64_t> scratch(static_cast<size_t>(n));
    for (int64_t i0 = 0; i0 < n; i0 += kGroup) {
      const int rows = static_cast<int>(std::min<int64_t>(kGroup, n - i0));
      Scores(h, s, i0, rows, dot.data());
      for (int r = 0; r < rows; ++r) {
        const int32_t* dr = dot.data() + r * h.jpad;
        for (int64_t j = 0; j < n; ++j) x[j] = ScoreCode(dr[j]);
        rows_->Row(x.data(), n, codes.data(), scratch.data());
        int16_t* wr = w.data() + r * h.jpad;
        for (int64_t j = 0; j < n; ++j) wr[j] = neg_weight[codes[j]];
      }
      PortableProduct(w.data(), vp, h, s, rows, acc.data());
      for (int r = 0; r < rows; ++r) {
        const int32_t* ar = acc.data() + r * h.dpad;
        uint8_t* yrow = out + (h.b * n + i0 + r) * hd + h.head * d;
        for (int64_t c = 0; c < d; ++c) yrow[c] = OutputCode(-int64_t{ar[c]}, attrs);
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

  // Rows i0 .. i0 + rows - 1 of S = (q - z_q)(k - z_k)^T, row stride jpad, plain loops.
  void Scores(const HeadData& h, const AttentionShape& s, int64_t i0, int rows,
              int32_t* dot) const {
    const uint8_t* q = h.q.data() + i0 * h.dq;
    for (int r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < s.tokens; ++j) {
        int32_t sum = 0;
        for (int64_t c = 0; c < s.dim; ++c) {
          sum += (int32_t{q[r * h.dq + c]} - static_cast<int32_t>(attrs.zq)) * h.KC(j, c);
        }
        dot[r * h.jpad + j] = sum;
      }
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
