// LogIntAttention (plugins/README.md): QLinearAttention's integer scores, then FQ-ViT's log-int
// softmax and log-code A.V, all exact: the int8 score codes sat(rne((float(S) * qk_scale) /
// scores_scale)), LogIntSoftmax's own row kernel (log_int_softmax.h) on them, and
// Y = sum_j w(code_j) (v_jd - z_v) with LogIntMatMul's weights (AVX-512: as uint8 bytes of w,
// see HeadAvx512; plain loops: the negated weights, -2^15 fits int16); for codes from the
// softmax sum_j w <= 2^(1/2) 2^15, so |Y| < 2^24 and every partial sum fits int32. Output codes
// as QLinearAttention's. The optional `bias` attribute (attention_bias.h, as QLinearAttention's)
// is added to f32(S) * qk_scale (float32, after the product's rounding) before the int8 codes.
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "attention.h"
#include "attention_avx512.h"
#include "attention_amx.h"
#include "attention_bias.h"
#include "attention_avx2.h"
#include "attention_lis_avx2.h"
#include "attention_lis_avx512.h"
#include "attention_lis_portable.h"
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
  AttentionBias bias;
  bool wide_bias = false;  // some |bias| >= 2^64 (or not finite): DivRn's bound, vdivps instead

  LogIntAttention(const OrtApi* api, const OrtKernelInfo* info)
      : bits(IntAttr(info, "bits", 4)), steps(IntAttr(info, "octave_steps", 1)),
        rows_(MakeInt8SoftmaxRows(api, info)), bias(info) {
    ReadCommonAttrs(info, attrs, missing);
    scores_scale = FloatAttr(info, "scores_scale", 0, &missing);
    for (const float v : bias.values) wide_bias = wide_bias || !(std::fabs(v) < 0x1p64f);
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
      bias.Check(s);
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
    if (attnamx::Available()) {
      HeadAmx(HeadData(in, s, task, true, attnamx::kPad), s, out);
    } else if (avx512::Available()) {
      HeadAvx512(HeadData(in, s, task), s, out);
    } else if (avx2::Available()) {
      const int64_t b = task / s.heads, head = task % s.heads;
      const avx2::Head16 h([&](int64_t j, int t) { return QkvRow(in, s, b, head, j, t); },
                           s.tokens, s.dim, static_cast<int32_t>(attrs.zq),
                           static_cast<int32_t>(attrs.zk), static_cast<int32_t>(attrs.zv), true);
      HeadAvx2(h, s, b, head, out);
    } else {
      const HeadData h(in, s, task, /*quads_of_v=*/false);
      lisportable::Head(in, h, s, {attrs, scores_scale, *rows_, neg_weight, bias}, out);
    }
  }

  // A block of score rows on the AVX-512 paths: per row the int8 score codes x, the byte weights
  // u (pass 0: w >> shift; pass 1, for rows whose weights need more than 8 bits after their
  // common power of two: shift 8 and w & 255; zero in a two-pass block's other rows), their sums.
  struct Rows {
    int64_t count, jpad;
    std::vector<int8_t> x;
    std::vector<uint8_t> u, code, codes;
    std::vector<uint16_t> w;
    std::vector<int64_t> scratch;
    std::vector<int32_t> usum;  // [pass][row]
    std::vector<int> shift;
    std::vector<char> two;
    bool any_two = false;
    Rows(int64_t rows, int64_t jpad_, int64_t n)
        : count(rows), jpad(jpad_), x(static_cast<size_t>(rows * jpad)),
          u(static_cast<size_t>(2 * rows * jpad)), code(256), codes(static_cast<size_t>(jpad)),
          w(static_cast<size_t>(jpad)), scratch(static_cast<size_t>(n)),
          usum(static_cast<size_t>(2 * rows)), shift(static_cast<size_t>(rows)),
          two(static_cast<size_t>(rows)) {}
    uint8_t* U(int pass, int64_t r) { return u.data() + (pass * count + r) * jpad; }
  };

  // Per row of the block: scores -> softmax codes -> byte weights (Rows). A row's pass count
  // and shift are its own: a one-pass row's weights are multiples of 2^shift with w >> shift <=
  // 255, so Y = (sum_j u0_j (v_jd - z_v)) << shift exactly; the others Y = 256 P_hi + P_lo.
  void Weights(Rows& g, int rows, int64_t n) const {
    g.any_two = false;
    for (int r = 0; r < rows; ++r) {
      RowBytes(g, r, n);
      g.any_two = g.any_two || g.two[r];
    }
    for (int r = 0; r < rows && g.any_two; ++r) {
      if (g.two[r]) continue;
      std::fill(g.U(1, r), g.U(1, r) + g.jpad, uint8_t{0});
      g.usum[g.count + r] = 0;
    }
  }

  // Row r: with tables by value (AVX-512 VBMI) each code and byte weight is looked up per
  // u = max - x; the shift and pass count are the span's (vbmi::WeightPlans) from the smallest
  // to the largest nonzero-weight code in the table, a superset of the row's own, so every
  // weight present is still a multiple of 2^shift. Else the codes, then their weights (vpermw).
  void RowBytes(Rows& g, int r, int64_t n) const {
    const int8_t* x = g.x.data() + r * g.jpad;
    int32_t mx = 0, range = 0;
    if (rows_->Table(x, n, mx, range, g.code.data())) {
      int lo = 0, hi = -1;
      vbmi::CodeSpan(g.code.data(), range + 1, max_code, lo, hi);
      g.two[r] = hi >= 0 && plans.two_pass[lo][hi];
      g.shift[r] = g.two[r] ? 8 : hi < 0 ? 0 : plans.shift[lo][hi];
      for (int pass = 0; pass < 1 + g.two[r]; ++pass) {
        const vbmi::Table t = vbmi::MapTable(g.code.data(), range + 1,
                                             plans.bytes[pass ? 0 : g.shift[r]], range >= 128);
        g.usum[pass * g.count + r] = vbmi::LookupRow(x, n, g.jpad, mx, t, g.U(pass, r));
      }
      return;
    }
    rows_->Row(x, n, g.codes.data(), g.scratch.data());
    uint32_t wmax = 0, wor = 0;
    lis512::WeightsRow(g.codes.data(), n, g.jpad, weight, g.w.data(), wmax, wor);
    const int t = wor == 0 ? 0 : __builtin_ctz(wor);
    g.two[r] = (wmax >> t) > 255;
    g.shift[r] = g.two[r] ? 8 : t;
    g.usum[r] = lis512::ByteWeights(g.w.data(), g.jpad, g.shift[r], g.U(0, r));
    if (g.two[r]) g.usum[g.count + r] = lis512::ByteWeights(g.w.data(), g.jpad, 0, g.U(1, r));
  }

  // Output codes of the block's rows i0 .. i0 + rows - 1 from acc [pass][count][dpad].
  void Outputs(const Rows& g, const int32_t* acc, int64_t dpad, const HeadData& h,
               const AttentionShape& s, int64_t i0, int rows, uint8_t* out) const {
    const lis512::Requant rq = lis512::MakeRequant(attrs.acc_scale, attrs.out_scale);
    const auto zv = 128 - static_cast<int32_t>(attrs.zv), zo = static_cast<int32_t>(attrs.zo);
    for (int r = 0; r < rows; ++r) {
      const int32_t* a1 = acc + r * dpad;
      lis512::OutputCodes(a1, zv * g.usum[r], g.shift[r], g.any_two ? a1 + g.count * dpad : nullptr,
                          zv * g.usum[g.count + r], s.dim, rq, zo,
                          out + (h.b * s.tokens + i0 + r) * s.heads * s.dim + h.head * s.dim);
    }
  }

  // The scores' requantization: |f32(S) * qk_scale| <= 2^64, plus the bias below 2^64 keeps
  // DivRn's operands under 2^70.
  lis512::Requant ScoresRequant() const {
    lis512::Requant rq = lis512::MakeRequant(attrs.qk_scale, scores_scale);
    rq.fast = rq.fast && !wide_bias;
    return rq;
  }

  // The bias rows of score rows i0 .. i0 + rows - 1 of head h into rows_out; nullptr: no bias.
  const float* const* BiasRows(const HeadData& h, int64_t i0, int rows,
                               const float** rows_out) const {
    if (bias.values.empty()) return nullptr;
    for (int r = 0; r < rows; ++r) rows_out[r] = bias.Row(h.b, h.head, i0 + r);
    return rows_out;
  }

  std::vector<int32_t> ColumnTerms(const HeadData& h, int64_t n) const {
    std::vector<int32_t> col_term(static_cast<size_t>(h.jpad));
    for (int64_t j = 0; j < n; ++j) col_term[j] = static_cast<int32_t>(-attrs.zq * h.ksum[j]);
    return col_term;
  }

  // AVX-512 VNNI, kGroup rows at a time: the int8 score codes fused with the scores GEMM
  // (ScoreCodeRows), the byte weights (Weights), then Y = sum_j w_j (v_jd - z_v) as u8 x s8
  // products on V's quads (v - 128) with the (128 - z_v) sum_j u_j correction (OutputCodes).
  void HeadAvx512(const HeadData& h, const AttentionShape& s, uint8_t* out) const {
    const int64_t n = s.tokens;
    const std::vector<int32_t> col_term = ColumnTerms(h, n);
    Rows g(kGroup, h.jpad, n);
    std::vector<int32_t> acc(static_cast<size_t>(2 * kGroup * h.dpad));
    std::vector<int32_t> dot(static_cast<size_t>(kGroup * h.jpad));  // the raw score products
    const lis512::Requant scores = ScoresRequant();
    for (int64_t i0 = 0; i0 < n; i0 += kGroup) {
      const int rows = static_cast<int>(std::min<int64_t>(kGroup, n - i0));
      int32_t row_term[kGroup];
      for (int r = 0; r < rows; ++r) {
        row_term[r] = static_cast<int32_t>((128 - attrs.zk) * h.qsum[i0 + r]);
      }
      const float* brows[kGroup];
      const float* const* b = BiasRows(h, i0, rows, brows);
      const uint8_t* q = h.q.data() + i0 * h.dq;
      if (rows == kGroup) {
        lis512::ScoreCodeRows<kGroup>(q, h.dq, h.kt.data(), h.dq / 4, h.jpad / 16, row_term,
                                      col_term.data(), scores, dot.data(), g.x.data(), h.jpad, b,
                                      n);
      } else {
        for (int r = 0; r < rows; ++r) {
          lis512::ScoreCodeRows<1>(q + r * h.dq, 0, h.kt.data(), h.dq / 4, h.jpad / 16,
                                   row_term + r, col_term.data(), scores, dot.data(),
                                   g.x.data() + r * h.jpad, 0, b == nullptr ? nullptr : b + r, n);
        }
      }
      Weights(g, rows, n);
      for (int pass = 0; pass < 1 + g.any_two; ++pass) {
        int32_t* a = acc.data() + pass * kGroup * h.dpad;
        if (rows == kGroup) {
          avx512::DotRows<kGroup>(g.U(pass, 0), h.jpad, h.vt.data(), h.jpad / 4, h.dpad / 16, a,
                                  h.dpad);
          continue;
        }
        for (int r = 0; r < rows; ++r) {
          avx512::DotRow(g.U(pass, r), h.vt.data(), h.jpad / 4, h.dpad / 16, a + r * h.dpad);
        }
      }
      Outputs(g, acc.data(), h.dpad, h, s, i0, rows, out);
    }
  }

  // AVX2 (attention_avx2.h, attention_lis_avx2.h), kGroup rows at a time: the scores of the
  // group by vpmaddwd on QLinearAttention's int16 pairs, per row their int8 codes, the softmax
  // codes (the op's own AVX2 row kernel) and the negated weights, then Y = sum_j (-w_j)(v_jd -
  // z_v) the same way against V's pairs, and the output codes of -Y: f32(-Y) * acc_scale =
  // -(f32(Y) * acc_scale) exactly, so OutputRow with -acc_scale writes OutputCode(-Y)'s codes.
  void HeadAvx2(const avx2::Head16& h, const AttentionShape& s, int64_t b, int64_t head,
                uint8_t* out) const {
    const int64_t n = s.tokens, d = s.dim, wpad = RoundUp(h.jpad, 16);
    std::vector<int32_t> dot(static_cast<size_t>(kGroup * h.jpad));
    std::vector<int32_t> acc(static_cast<size_t>(kGroup * h.dpad));
    std::vector<int8_t> x(static_cast<size_t>(h.jpad));
    std::vector<uint8_t> codes(static_cast<size_t>(wpad));
    std::vector<int16_t> w(static_cast<size_t>(kGroup * wpad));
    std::vector<int64_t> scratch(static_cast<size_t>(n));
    for (int64_t i0 = 0; i0 < n; i0 += kGroup) {
      const int rows = static_cast<int>(std::min<int64_t>(kGroup, n - i0));
      h.Scores(i0, rows, dot.data(), h.jpad);
      for (int r = 0; r < rows; ++r) {
        lis2::ScoreCodesRow(dot.data() + r * h.jpad, n, attrs.qk_scale, scores_scale,
                            bias.Row(b, head, i0 + r), x.data());
        rows_->Row(x.data(), n, codes.data(), scratch.data());
        lis2::WeightsRow(codes.data(), n, h.jpad, neg_weight, w.data() + r * wpad);
      }
      avx2::DotRows16Any(rows, w.data(), wpad, h.v.data(), h.jpad / 2, h.dpad / 8, acc.data(),
                         h.dpad);
      for (int r = 0; r < rows; ++r) {
        uint8_t* y = out + (b * n + i0 + r) * s.heads * d + head * d;
        avx2::OutputRow(acc.data() + r * h.dpad, d, -attrs.acc_scale, attrs.out_scale,
                        static_cast<int32_t>(attrs.zo), y);
      }
    }
  }

  // AMX-INT8 (attention_amx.h), blocks of 32 rows: the scores 32 x 32 at a time from q and
  // K^T as HeadData packs them, their int8 codes (BlockCodes), the byte weights (Weights), then
  // each pass's products with V 32 x 32 at a time. The same integers as HeadAvx512's.
  void HeadAmx(const HeadData& h, const AttentionShape& s, uint8_t* out) const {
    const int64_t n = s.tokens, block = attnamx::kRows;
    const std::vector<int32_t> col_term = ColumnTerms(h, n);
    Rows g(block, h.jpad, n);
    std::vector<int32_t> c(static_cast<size_t>(2 * block * block));
    std::vector<int32_t> acc(static_cast<size_t>(2 * block * h.dpad));
    const lis512::Requant scores = ScoresRequant();
    amx::LoadConfig();
    for (int64_t i0 = 0; i0 < n; i0 += block) {
      const int rows = static_cast<int>(std::min(block, n - i0));
      int32_t row_term[attnamx::kRows];
      for (int r = 0; r < rows; ++r) {
        row_term[r] = static_cast<int32_t>((128 - attrs.zk) * h.qsum[i0 + r]);
      }
      const float* brows[attnamx::kRows];
      const float* const* b = BiasRows(h, i0, rows, brows);
      // Two product buffers: each block's codes are read while the next block multiplies (a
      // load from a tile store's data waits for the store to complete).
      const int64_t last = (n - 1) / block;
      for (int64_t k = 0; k <= last + 1; ++k) {
        if (k <= last) {
          attnamx::Block(h.q.data() + i0 * h.dq, h.dq, h.kt.data() + k * block * 4, h.jpad * 4,
                        h.dq / amx::kTileK, c.data() + (k & 1) * block * block, block, k == 0);
        }
        if (k > 0) {
          lis512::BlockCodes(c.data() + ((k - 1) & 1) * block * block, rows, (k - 1) * block, n,
                             row_term, col_term.data(), scores, g.x.data(), h.jpad, b);
        }
      }
      Weights(g, rows, n);
      for (int pass = 0; pass < 1 + g.any_two; ++pass) {
        for (int64_t d0 = 0; d0 < h.dpad; d0 += block) {
          attnamx::Block(g.U(pass, 0), h.jpad, h.vt.data() + d0 * 4, h.dpad * 4,
                        h.jpad / amx::kTileK, acc.data() + pass * block * h.dpad + d0, h.dpad);
        }
      }
      Outputs(g, acc.data(), h.dpad, h, s, i0, rows, out);
    }
    amx::Release();
  }
};

}  // namespace

void AddLogIntAttention(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<LogIntAttention>("LogIntAttention", kProvider));
}

}  // namespace onnxvq
