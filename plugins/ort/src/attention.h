// Shared parts of the fused attention kernels (plugins/README.md "QLinearAttention"): attributes,
// the packed-QKV shape, one head's operands centred and packed for vpdpbusd, the output codes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "attention_avx512.h"
#include "common.h"
#include "head_pack512.h"

namespace onnxvq {

constexpr int64_t kMaxHeadDim = 256;  // |S| <= D * 255^2 < 2^24: scores exact in float32
constexpr int64_t kMaxTokens = int64_t{1} << 15;  // |O| <= N * 255^2 < 2^31

inline float FloatAttr(const OrtKernelInfo* info, const char* name, float fallback,
                       std::string* missing) {
  float value = fallback;
  OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_float(info, name, &value);
  if (status != nullptr) {
    Ort::GetApi().ReleaseStatus(status);
    if (missing != nullptr) *missing += std::string(missing->empty() ? "" : ", ") + name;
    return fallback;
  }
  return value;
}

struct AttentionShape {
  int64_t heads = 0, zq = 0, zk = 0, zv = 0, zo = 0;
  float qk_scale = 0, acc_scale = 0, out_scale = 0;
  int64_t batch = 0, tokens = 0, dim = 0;  // from the input shape
  int64_t layout = 0;  // qkv_layout: 0 X [B, N, 3, H, D], 1 X [B, N, H, 3 * D] (QLinearAttention)
};

inline void ReadCommonAttrs(const OrtKernelInfo* info, AttentionShape& s, std::string& missing) {
  s.heads = IntAttr(info, "num_heads", 0, &missing);
  s.zq = IntAttr(info, "q_zero_point", 0, &missing);
  s.zk = IntAttr(info, "k_zero_point", 0, &missing);
  s.zv = IntAttr(info, "v_zero_point", 0, &missing);
  s.zo = IntAttr(info, "out_zero_point", 0, &missing);
  s.qk_scale = FloatAttr(info, "qk_scale", 0, &missing);
  s.acc_scale = FloatAttr(info, "acc_scale", 0, &missing);
  s.out_scale = FloatAttr(info, "out_scale", 0, &missing);
}

// X is [B, N, 3, H, D] (H == num_heads) or [B, N, 3 * H * D]; with layout 1 [B, N, H, 3 * D].
inline void ResolveShape(const std::vector<int64_t>& x, AttentionShape& s) {
  const bool per_head = s.layout == 1;
  Require(s.layout == 0 || per_head, "qkv_layout must be 0 or 1");
  Require(x.size() == 3 || x.size() == (per_head ? 4u : 5u),
          per_head ? "X must be [B, N, H, 3*D] or [B, N, H*3*D] (qkv_layout 1)"
                   : "X must be [B, N, 3, H, D] or [B, N, 3*H*D]");
  Require(s.heads >= 1, "num_heads must be >= 1");
  for (int64_t z : {s.zq, s.zk, s.zv, s.zo}) Require(z >= 0 && z <= 255, "zero points: 0..255");
  Require(s.out_scale > 0 && std::isfinite(s.qk_scale) && std::isfinite(s.acc_scale),
          "out_scale must be > 0, qk_scale and acc_scale finite");
  int64_t width = 1;
  for (size_t i = 2; i < x.size(); ++i) width *= x[i];
  Require(x.size() == 3 || (per_head ? x[2] == s.heads : (x[2] == 3 && x[3] == s.heads)),
          per_head ? "X must be [B, N, num_heads, 3 * D]" : "X must be [B, N, 3, num_heads, D]");
  Require(width % (3 * s.heads) == 0, "X's last axis is not 3 * num_heads * head_dim");
  s.batch = x[0];
  s.tokens = x[1];
  s.dim = width / (3 * s.heads);
  Require(s.dim >= 1 && s.dim <= kMaxHeadDim, "head_dim must lie in 1..256");
  Require(s.tokens <= kMaxTokens, "at most 32768 tokens");
}

inline int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Piece t (0 q, 1 k, 2 v) of token j of head `head`, batch item b: D codes in either qkv_layout.
inline const uint8_t* QkvRow(const uint8_t* in, const AttentionShape& s, int64_t b, int64_t head,
                             int64_t j, int t) {
  const int64_t hd = s.heads * s.dim;
  return s.layout == 1 ? in + (b * s.tokens + j) * 3 * hd + (head * 3 + t) * s.dim
                       : in + ((b * s.tokens + j) * 3 + t) * hd + head * s.dim;
}

// Each axis of HeadData rounded up to: the query / key depth `dq`, tokens (K^T's columns, V's
// rows), V's columns; and rows of q allocated (zero past N). The defaults suit vpdpbusd on zmm
// rows; AMX tiles read 64-byte K steps and 32-row / 32-column blocks (attention_amx.h).
struct HeadPad {
  int64_t depth = 4, tokens = 16, dim = 16, rows = 1;
};

// One head of one batch item: q raw [N][dq]; k - 128 as [dq/4][jpad][4] (K^T in quads) and, with
// `quads_of_v`, v - 128 as [jpad/4][dpad][4] (V in quads along tokens); zero padding everywhere.
// k - 128 and v - 128 as int8 are the codes with their top bit flipped (x ^ 0x80).
struct HeadData {
  int64_t b, head, dq, jpad, dpad, zk;
  std::vector<uint8_t> q;
  std::vector<int8_t> kt, vt;
  std::vector<int32_t> qsum, ksum, vsum;  // sum_d q, sum_d (k - z_k), sum_j (v - z_v)

  HeadData(const uint8_t* in, const AttentionShape& s, int64_t task, bool quads_of_v = true,
           HeadPad pad = {})
      : b(task / s.heads), head(task % s.heads), dq(RoundUp(s.dim, pad.depth)),
        jpad(RoundUp(std::max<int64_t>(s.tokens, 1), pad.tokens)), dpad(RoundUp(s.dim, pad.dim)),
        zk(s.zk), q(static_cast<size_t>(RoundUp(s.tokens, pad.rows) * dq)),
        kt(static_cast<size_t>(dq * jpad)),
        vt(quads_of_v ? static_cast<size_t>(jpad * dpad) : 0), qsum(static_cast<size_t>(s.tokens)),
        ksum(static_cast<size_t>(s.tokens)), vsum(static_cast<size_t>(dpad)) {
    const int64_t n = s.tokens, d = s.dim;
    auto row = [&](int64_t j, int t) { return QkvRow(in, s, b, head, j, t); };
    if (avx512::Available()) {
      Pack512(s, quads_of_v, row);
      return;
    }
    uint8_t kq[kMaxHeadDim + 64];
    for (int64_t j = 0; j < n; ++j) {
      const uint8_t *qr = row(j, 0), *kr = row(j, 1);
      std::memcpy(q.data() + j * dq, qr, static_cast<size_t>(d));
      std::memset(kq + d, 0x80, static_cast<size_t>(dq - d));  // 0 after the flip
      std::memcpy(kq, kr, static_cast<size_t>(d));
      int32_t qs = 0, ks = 0;
      for (int64_t c = 0; c < d; ++c) {
        qs += qr[c];
        ks += kr[c];
      }
      qsum[j] = qs;
      ksum[j] = ks - static_cast<int32_t>(d * s.zk);
      for (int64_t c4 = 0; c4 < dq / 4; ++c4) {
        uint32_t w;
        std::memcpy(&w, kq + 4 * c4, 4);
        w ^= 0x80808080u;
        std::memcpy(kt.data() + (c4 * jpad + j) * 4, &w, 4);
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      const uint8_t* vr = row(j, 2);
      for (int64_t c = 0; c < d; ++c) vsum[c] += vr[c] - static_cast<int32_t>(s.zv);
    }
    if (!quads_of_v) return;
    for (int64_t j0 = 0; j0 < n; j0 += 4) {  // four tokens' values per d: one 32-bit word
      const uint8_t* r[4];
      for (int t = 0; t < 4; ++t) r[t] = j0 + t < n ? row(j0 + t, 2) : nullptr;
      int8_t* dst = vt.data() + (j0 / 4) * dpad * 4;
      for (int64_t c = 0; c < d; ++c) {
        for (int t = 0; t < 4; ++t) {
          dst[c * 4 + t] = r[t] != nullptr ? static_cast<int8_t>(r[t][c] ^ 0x80) : int8_t{0};
        }
      }
    }
  }

  static constexpr int64_t kAhead = 6;  // tokens prefetched ahead while packing

  // The same layout by the AVX-512 loops (head_pack512.h).
  template <class Row>
  void Pack512(const AttentionShape& s, bool quads_of_v, const Row& row) {
    const int64_t n = s.tokens, d = s.dim;
    for (int64_t j = 0; j < n; ++j) {
      // The rows are 3 H D bytes apart: fetch a few tokens ahead (q and k now, v for later).
      if (j + kAhead < n) {
        for (int t = 0; t < 3; ++t) pack512::Prefetch(row(j + kAhead, t), d);
      }
      qsum[j] = pack512::CopyRow(row(j, 0), d, q.data() + j * dq);
      ksum[j] = pack512::KeyRow(row(j, 1), d, dq, kt.data() + j * 4, jpad) -
                static_cast<int32_t>(d * s.zk);
    }
    if (!quads_of_v) {
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t c = 0; c < d; ++c) vsum[c] += row(j, 2)[c] - static_cast<int32_t>(s.zv);
      }
      return;
    }
    for (int64_t j0 = 0; j0 < n; j0 += 4) {
      const uint8_t* r[4];
      for (int t = 0; t < 4; ++t) r[t] = j0 + t < n ? row(j0 + t, 2) : nullptr;
      pack512::ValueQuads(r, d, dpad, vt.data() + (j0 / 4) * dpad * 4, vsum.data());
    }
    // sum_j (v - 128) so far; sum_j (v - z_v) = that + N (128 - z_v)
    for (int64_t c = 0; c < d; ++c) vsum[c] += static_cast<int32_t>(n * (128 - s.zv));
  }

  int32_t KC(int64_t j, int64_t c) const {  // k_jc - z_k (the portable loops)
    return int32_t{kt[(c / 4) * jpad * 4 + j * 4 + c % 4]} + 128 - static_cast<int32_t>(zk);
  }
  int32_t VS(int64_t j, int64_t c) const { return vt[(j / 4) * dpad * 4 + c * 4 + j % 4]; }
};

// sat(rne((float(acc) * acc_scale) / out_scale) + z_o): two float32 roundings, as Mul then
// QuantizeLinear in ONNX Runtime.
inline uint8_t OutputCode(int64_t acc, const AttentionShape& s) {
  const float u = std::clamp((static_cast<float>(acc) * s.acc_scale) / s.out_scale, -1024.0f,
                             1024.0f);
  const float c = std::clamp(std::nearbyint(u) + static_cast<float>(s.zo), 0.0f, 255.0f);
  return static_cast<uint8_t>(c);
}

void AddQLinearAttention(Ort::CustomOpDomain& domain);
void AddLogIntAttention(Ort::CustomOpDomain& domain);

}  // namespace onnxvq
