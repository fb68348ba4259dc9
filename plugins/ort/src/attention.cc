// QLinearAttention (plugins/README.md): self-attention on packed uint8 QKV codes, uint8 out.
//
// Per (batch, head), one task on ORT's pool: K and V are centred once into int8 quads
// (k - 128, v - 128) so that vpdpbusd multiplies them with the raw uint8 query row / probability
// row; the zero points come back through row sums:
//   S_ij = sum_d q_id (k_jd - 128) + (128 - z_k) sum_d q_id - z_q sum_d (k_jd - z_k)
//   O_id = sum_j P_ij (v_jd - 128) + (128 - z_v) sum_j P_ij - z_p sum_j (v_jd - z_v)
// all exact in int32. Between them the float softmax of one row; after, the output codes
// sat(rne((float(O) * acc_scale) / out_scale) + z_o) written in merged-head layout.
// The optional `bias` attribute (attention_bias.h) is added to the scaled scores of each row.
// With AMX-INT8 both products run as 32 x 32 tile blocks (attention_amx.h), 32 query rows at a
// time; else (or with ONNXVQ_NO_AMX set) as vpdpbusd row groups; without AVX-512 VNNI (or with
// ONNXVQ_NO_VNNI set) on AVX2, with q, K and V centred by their own zero points in int16 pairs
// (vpmaddwd: exact, attention_avx2.h) and no zero-point terms; with ONNXVQ_NO_AVX2 as well, as
// plain loops. All four compute the same integers and the same softmax floats: the AMX and VNNI
// paths share the softmax and output rows (attention_avx512.h), the AVX2 rows do the same float
// operations in 8-lane halves, and the plain loops one lane at a time (ExpLane, SumLanes), so
// every path writes the same codes.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attention.h"
#include "attention_amx.h"
#include "attention_avx2.h"
#include "attention_avx512.h"
#include "attention_bias.h"
#include "parallel.h"

namespace onnxvq {
namespace {

// The vector paths' softmax arithmetic one lane at a time, so that the portable loops give their
// codes too. avx512::Exp (avx2::Exp): the same constants, FMAs and rounding of n; vscalefps as
// p 2^(n + 64) (exact) times 2^-64 (its one rounding).
float ExpLane(float x) {
  x = x > -103.0f ? x : -103.0f;  // vmaxps(x, c)
  const float n = std::nearbyint(x * 1.44269504f);
  float r = std::fma(-n, 0.693145752f, x);
  r = std::fma(-n, 1.42860677e-6f, r);
  float p = 1.0f / 720;
  for (const float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = std::fma(p, r, c);
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127 + 64) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale * 0x1p-64f;
}

// The sum of 16 lane partial sums (lane l: tokens l, l + 16, ... in order) in the order of
// _mm512_reduce_add_ps (GCC 12): upper half + lower half, twice, then (0 + 2) + (1 + 3).
float SumLanes(const float (&lanes)[16]) {
  float a[8], b[4];
  for (int i = 0; i < 8; ++i) a[i] = lanes[i + 8] + lanes[i];
  for (int i = 0; i < 4; ++i) b[i] = a[i + 4] + a[i];
  return (b[0] + b[2]) + (b[1] + b[3]);
}

struct QLinearAttention {
  std::string missing;
  AttentionShape attrs{};
  float probs_scale = 1;
  int64_t probs_zp = 0;
  AttentionBias bias;

  QLinearAttention(const OrtApi*, const OrtKernelInfo* info) : bias(info) {
    ReadCommonAttrs(info, attrs, missing);
    probs_scale = FloatAttr(info, "probs_scale", 0, &missing);
    probs_zp = IntAttr(info, "probs_zero_point", 0);
    attrs.layout = IntAttr(info, "qkv_layout", 0);
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<uint8_t>& x,
                      Ort::Custom::Tensor<uint8_t>& y) {
    return Guard("QLinearAttention", [&] {
      Require(missing.empty(), "missing attribute(s): " + missing);
      Require(probs_scale > 0 && probs_zp >= 0 && probs_zp <= 255,
              "probs_scale must be > 0 and probs_zero_point in 0..255");
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

  void Head(const uint8_t* in, uint8_t* out, const AttentionShape& s, int64_t task) const {
    if (attnamx::Available()) {
      HeadAmx(HeadData(in, s, task, true, attnamx::kPad), out, s);
      return;
    }
    if (avx512::Available()) {
      HeadData h(in, s, task);
      HeadAvx512(h, out, s);
    } else if (avx2::Available()) {
      HeadAvx2(in, out, s, task);
    } else {
      HeadData h(in, s, task);
      HeadPortable(h, out, s);
    }
  }

  // AMX-INT8, chunks of up to kChunkBytes of scores (whole blocks of 32 query rows): the
  // chunk's scores against all keys 32 x 32 at a time (q and K^T as HeadData packs them), each
  // row's zero-point terms and softmax codes (ProbsRow, as HeadAvx512), then the codes times V
  // 32 x 32 at a time and the output codes (OutputRow). The tile products of a chunk run back to
  // back rather than between every 32 rows' softmax: measured 2x less time in the tile blocks.
  static constexpr int64_t kChunkBytes = int64_t{256} << 10;

  void HeadAmx(const HeadData& h, uint8_t* out, const AttentionShape& s) const {
    const int64_t n = s.tokens, block = attnamx::kRows, cols = (n + block - 1) / block;
    const int64_t chunk = std::clamp<int64_t>(kChunkBytes / (4 * h.jpad) / block, 1,
                                              (n + block - 1) / block) * block;
    thread_local std::vector<int32_t> dot, acc;
    thread_local std::vector<uint8_t> p;
    dot.resize(static_cast<size_t>(chunk * h.jpad));
    acc.resize(static_cast<size_t>(chunk * h.dpad));
    // Stale codes from an earlier head may sit in p past N: they meet V's zero rows there.
    p.resize(static_cast<size_t>(chunk * h.jpad));
    std::vector<float> e(static_cast<size_t>(h.jpad));
    std::vector<int32_t> psum(static_cast<size_t>(chunk));
    const std::vector<int32_t> col_term = ColTerms(h, n);
    const auto zp = static_cast<int32_t>(probs_zp);
    const avx512::Requant rq = avx512::OutputRequant(attrs.acc_scale, attrs.out_scale);
    amx::LoadConfig();
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
      const int64_t rows = std::min(chunk, n - c0);
      for (int64_t i0 = 0; i0 < rows; i0 += block) {
        for (int64_t k = 0; k < cols; ++k) {  // q's tiles stay loaded across K^T's columns
          attnamx::Block(h.q.data() + (c0 + i0) * h.dq, h.dq, h.kt.data() + k * block * 4,
                         h.jpad * 4, h.dq / amx::kTileK, dot.data() + i0 * h.jpad + k * block,
                         h.jpad, k == 0);
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        psum[r] = avx512::ProbsRow(dot.data() + r * h.jpad, n, attrs.qk_scale, probs_scale, zp,
                                   p.data() + r * h.jpad, e.data(), bias.Row(h.b, h.head, c0 + r),
                                   {RowTerm(h, c0 + r), col_term.data()});
      }
      for (int64_t i0 = 0; i0 < rows; i0 += block) {
        for (int64_t d0 = 0; d0 < h.dpad; d0 += block) {
          attnamx::Block(p.data() + i0 * h.jpad, h.jpad, h.vt.data() + d0 * 4, h.dpad * 4,
                         h.jpad / amx::kTileK, acc.data() + i0 * h.dpad + d0, h.dpad);
        }
      }
      Outputs(acc.data(), h.dpad, psum.data(), static_cast<int>(rows), h, s, c0, rq, out);
    }
    amx::Release();
  }

  // The zero-point terms of the scores (attention.cc's header): -z_q sum_d (k_jd - z_k) per key
  // (zero in the padding up to jpad), (128 - z_k) sum_d q_id per query row.
  std::vector<int32_t> ColTerms(const HeadData& h, int64_t n) const {
    std::vector<int32_t> col(static_cast<size_t>(h.jpad));
    for (int64_t j = 0; j < n; ++j) col[j] = static_cast<int32_t>(-attrs.zq * h.ksum[j]);
    return col;
  }
  int32_t RowTerm(const HeadData& h, int64_t i) const {
    return static_cast<int32_t>((128 - attrs.zk) * h.qsum[i]);
  }

  // Output codes of rows i0 .. i0 + rows - 1 from their products with V (acc, row stride dpad)
  // and their probability sums (the (128 - z_v) sum_j P_ij term).
  void Outputs(const int32_t* acc, int64_t dpad, const int32_t* psum, int rows, const HeadData& h,
               const AttentionShape& s, int64_t i0, const avx512::Requant& rq,
               uint8_t* out) const {
    for (int r = 0; r < rows; ++r) {
      uint8_t* y = out + (h.b * s.tokens + i0 + r) * s.heads * s.dim + h.head * s.dim;
      avx512::OutputRow(acc + r * dpad, (128 - static_cast<int32_t>(attrs.zv)) * psum[r],
                        static_cast<int32_t>(probs_zp), h.vsum.data(), s.dim, rq,
                        static_cast<int32_t>(attrs.zo), y);
    }
  }

  // Rows in groups of kGroup: each K and V load feeds every row of the group.
  static constexpr int kGroup = 4;

  void HeadAvx512(HeadData& h, uint8_t* out, const AttentionShape& s) const {
    const int64_t n = s.tokens;
    const std::vector<int32_t> col_term = ColTerms(h, n);
    const auto zp = static_cast<int32_t>(probs_zp);
    const avx512::Requant rq = avx512::OutputRequant(attrs.acc_scale, attrs.out_scale);
    std::vector<int32_t> dot(static_cast<size_t>(kGroup * h.jpad));
    std::vector<int32_t> acc(static_cast<size_t>(kGroup * h.dpad));
    std::vector<float> e(static_cast<size_t>(h.jpad));
    std::vector<uint8_t> p(static_cast<size_t>(kGroup * h.jpad));
    for (int64_t i0 = 0; i0 < n; i0 += kGroup) {
      const int rows = static_cast<int>(std::min<int64_t>(kGroup, n - i0));
      const uint8_t* q = h.q.data() + i0 * h.dq;
      if (rows == kGroup) {
        avx512::DotRows<kGroup>(q, h.dq, h.kt.data(), h.dq / 4, h.jpad / 16, dot.data(), h.jpad);
      } else {
        for (int r = 0; r < rows; ++r) {
          avx512::DotRow(q + r * h.dq, h.kt.data(), h.dq / 4, h.jpad / 16, dot.data() + r * h.jpad);
        }
      }
      int32_t psum[kGroup];
      for (int r = 0; r < rows; ++r) {
        psum[r] = avx512::ProbsRow(dot.data() + r * h.jpad, n, attrs.qk_scale, probs_scale, zp,
                                   p.data() + r * h.jpad, e.data(), bias.Row(h.b, h.head, i0 + r),
                                   {RowTerm(h, i0 + r), col_term.data()});
      }
      if (rows == kGroup) {
        avx512::DotRows<kGroup>(p.data(), h.jpad, h.vt.data(), h.jpad / 4, h.dpad / 16,
                                acc.data(), h.dpad);
      } else {
        for (int r = 0; r < rows; ++r) {
          avx512::DotRow(p.data() + r * h.jpad, h.vt.data(), h.jpad / 4, h.dpad / 16,
                         acc.data() + r * h.dpad);
        }
      }
      Outputs(acc.data(), h.dpad, psum, rows, h, s, i0, rq, out);
    }
  }

  // AVX2 (no VNNI): q, K^T and V centred into int16 pairs (avx2::Head16), kRows query rows per
  // pass over K and over V (vpmaddwd, exact), the softmax and output rows of the AVX-512 path
  // in 8-lane halves (same codes).
  void HeadAvx2(const uint8_t* in, uint8_t* out, const AttentionShape& s, int64_t task) const {
    const int64_t n = s.tokens, d = s.dim, b = task / s.heads, head = task % s.heads;
    const avx2::Head16 h([&](int64_t j, int t) { return QkvRow(in, s, b, head, j, t); }, n, d,
                         static_cast<int32_t>(attrs.zq), static_cast<int32_t>(attrs.zk),
                         static_cast<int32_t>(attrs.zv), /*values=*/true);
    constexpr int kR = avx2::kRows;
    const int64_t stride = RoundUp(n, 16);  // the softmax row's 16-lane blocks
    std::vector<int32_t> dot(static_cast<size_t>(kR * stride));
    std::vector<int16_t> pc(static_cast<size_t>(kR * stride));
    std::vector<float> e(static_cast<size_t>(stride));
    std::vector<int32_t> acc(static_cast<size_t>(kR * h.dpad));
    const auto zp = static_cast<int32_t>(probs_zp), zo = static_cast<int32_t>(attrs.zo);
    for (int64_t i0 = 0; i0 < n; i0 += kR) {
      const int rows = static_cast<int>(std::min<int64_t>(kR, n - i0));
      h.Scores(i0, rows, dot.data(), stride);
      for (int r = 0; r < rows; ++r) {
        avx2::ProbsRow(dot.data() + r * stride, n, attrs.qk_scale, probs_scale, zp,
                       pc.data() + r * stride, e.data(), bias.Row(b, head, i0 + r));
      }
      avx2::DotRows16Any(rows, pc.data(), stride, h.v.data(), h.jpad / 2, h.dpad / 8,
                         acc.data(), h.dpad);
      for (int r = 0; r < rows; ++r) {
        uint8_t* y = out + (b * n + i0 + r) * s.heads * d + head * d;
        avx2::OutputRow(acc.data() + r * h.dpad, d, attrs.acc_scale, attrs.out_scale, zo, y);
      }
    }
  }

  void HeadPortable(HeadData& h, uint8_t* out, const AttentionShape& s) const {
    const int64_t n = s.tokens, d = s.dim;
    std::vector<float> e(static_cast<size_t>(n));
    std::vector<int32_t> acc(static_cast<size_t>(h.dpad));
    std::vector<uint8_t> p(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const float* b = bias.Row(h.b, h.head, i);
      float mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        int32_t dot = 0;
        for (int64_t c = 0; c < d; ++c) {
          dot += (int32_t{h.q[i * h.dq + c]} - static_cast<int32_t>(attrs.zq)) * h.KC(j, c);
        }
        e[j] = static_cast<float>(dot) * attrs.qk_scale;
        if (b != nullptr) e[j] += b[j];  // after the product's rounding (ISO C++: no FMA)
        mx = mx > e[j] ? mx : e[j];  // vmaxps(mx, x)
      }
      float lanes[16] = {};
      for (int64_t j = 0; j < n; ++j) lanes[j % 16] += (e[j] = ExpLane(e[j] - mx));
      const float r = 1.0f / (SumLanes(lanes) * probs_scale);
      int32_t psum = 0;
      for (int64_t j = 0; j < n; ++j) {
        p[j] = static_cast<uint8_t>(std::clamp<int64_t>(std::lrintf(e[j] * r) + probs_zp, 0, 255));
        psum += p[j];
      }
      std::fill(acc.begin(), acc.end(), 0);
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t c = 0; c < d; ++c) acc[c] += int32_t{p[j]} * h.VS(j, c);
      }
      Finish(acc.data(), psum, h, s, i, out);
    }
  }

  // Zero-point terms, then the output codes of row i of this head.
  void Finish(const int32_t* acc, int32_t psum, const HeadData& h, const AttentionShape& s,
              int64_t i, uint8_t* out) const {
    uint8_t* y = out + (h.b * s.tokens + i) * s.heads * s.dim + h.head * s.dim;
    const int64_t pterm = (128 - attrs.zv) * int64_t{psum};
    for (int64_t c = 0; c < s.dim; ++c) {
      y[c] = OutputCode(int64_t{acc[c]} + pterm - probs_zp * h.vsum[c], attrs);
    }
  }
};

}  // namespace

void AddQLinearAttention(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<QLinearAttention>("QLinearAttention", kProvider));
}

}  // namespace onnxvq
