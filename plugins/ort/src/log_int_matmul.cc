// LogIntMatMul (plugins/README.md): Y[r, d] = sum_k w(A[r, k]) * (V[k, d] - zero_point), with
// w(a) = 2^(M - a) for log2 codes and, for log-sqrt(2) codes (octave_steps = 2), the dyadic
// ladder (a odd ? 181 : 128) << (ceil(M/2) - ceil(a/2)).
//
// Each term is the centred value times a per-code integer weight (a table). When the weights
// and V's dtype bound a block of terms below 2^31 (bits <= 4: 256 terms), the block sums in int32
// lanes and spills into int64; otherwise every term is summed in (wrapping) 64 bits.
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

#include "common.h"
#include "log_int_matmul_avx2.h"
#include "parallel.h"

namespace onnxvq {
namespace {

constexpr int64_t kMaxK = int64_t{1} << 24;

struct MatMulShape {
  int64_t batches, rows, inner, cols;  // A [batches, rows, inner], V [batches, inner, cols]
};

MatMulShape CheckShapes(const std::vector<int64_t>& a, const std::vector<int64_t>& v) {
  Require(a.size() >= 2 && a.size() == v.size(), "A and V must have the same rank >= 2");
  Require(std::equal(a.begin(), a.end() - 2, v.begin()), "A and V leading dimensions differ");
  MatMulShape s{1, a[a.size() - 2], a.back(), v.back()};
  for (size_t i = 0; i + 2 < a.size(); ++i) s.batches *= a[i];
  Require(v[v.size() - 2] == s.inner, "A's last dimension must equal V's second to last");
  Require(s.inner <= kMaxK, "the inner dimension must be <= 2^24");
  return s;
}

// The weight of code a (README LogIntMatMul), 0 for codes above M.
inline int64_t CodeWeight(int64_t a, int64_t m, int64_t steps) {
  if (a > m) return 0;
  if (steps == 1) return int64_t{1} << (m - a);
  return (a % 2 ? int64_t{181} : int64_t{128}) << ((m + 1) / 2 - (a + 1) / 2);
}

template <class TV>
struct LogIntMatMul {
  int64_t bits, zero_point, steps;

  LogIntMatMul(const OrtApi*, const OrtKernelInfo* info)
      : bits(IntAttr(info, "bits", 4)),
        zero_point(IntAttr(info, "zero_point", 0)),
        steps(IntAttr(info, "octave_steps", 1)) {}

  int64_t MaxCode() const { return std::min<int64_t>((int64_t{1} << bits) - 1, 31); }
  int64_t MaxWeight() const { return CodeWeight(0, MaxCode(), steps); }  // w(0) is the largest

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<uint8_t>& a,
                      const Ort::Custom::Tensor<TV>& v, Ort::Custom::Tensor<int64_t>& y) {
    return Guard("LogIntMatMul", [&] {
      Require(bits >= 1 && bits <= 8, "bits must lie in 1..8");
      Require(steps == 1 || steps == 2, "octave_steps must be 1 or 2");
      const MatMulShape s = CheckShapes(a.Shape(), v.Shape());
      std::vector<int64_t> out_shape = a.Shape();
      out_shape.back() = s.cols;
      int64_t* out = y.Allocate(out_shape);
      const uint8_t* codes = a.Data();
      const TV* values = v.Data();
#if defined(__AVX2__)
      if (FastInt16(s, out, codes, values, ctx)) return;
#endif
      const int64_t block = Int32Block();
      ParallelRows(ctx, s.batches * s.rows, s.inner * s.cols, [&](int64_t begin, int64_t end) {
        Rows(codes, values, out, s, begin, end, block);
      });
    });
  }

#if defined(__AVX2__)
  // The int16 GEMM (log_int_matmul_avx2.h) when every weight and centred value fits int16.
  bool FastInt16(const MatMulShape& s, int64_t* out, const uint8_t* codes, const TV* values,
                 OrtKernelContext* ctx) const {
    const int64_t m = MaxCode(), wmax = MaxWeight();
    const int64_t vmax = MaxCentred();
    if (m > 15 || wmax > 32768 || vmax > 32767 || s.rows == 0 || s.cols == 0) return false;
    auto plan = std::make_unique<avx2::Plan>();
    avx2::Plan& p = *plan;
    p.rows = s.rows;
    p.inner = s.inner;
    p.cols = s.cols;
    p.pairs = (s.inner + 1) / 2;
    p.dpad = (s.cols + avx2::kTileCols - 1) / avx2::kTileCols * avx2::kTileCols;
    p.block_pairs = std::min<int64_t>(INT32_MAX / (2 * wmax * std::max<int64_t>(vmax, 1)),
                                      avx2::kMaxBlockPairs);
    if (p.block_pairs < 1) return false;
    p.max_code = static_cast<int>(m);
    p.vnni = avx2::HasVnni();
    for (int a = 0; a < 256; ++a) {
      p.weight[a] = static_cast<int16_t>(-CodeWeight(a, m, steps));  // -2^15 fits int16
      if (a < 16) {
        p.weight_lo[a] = static_cast<uint8_t>(static_cast<uint16_t>(p.weight[a]) & 0xff);
        p.weight_hi[a] = static_cast<uint8_t>(static_cast<uint16_t>(p.weight[a]) >> 8);
      }
    }
    if (s.inner == 0) {
      std::fill(out, out + s.batches * s.rows * s.cols, int64_t{0});
      return true;
    }
    const int64_t packed = p.pairs * p.dpad * 2;
    std::vector<int16_t> vp(static_cast<size_t>(s.batches * packed));
    const auto zp = static_cast<int16_t>(zero_point);
    ParallelRows(ctx, s.batches, s.inner * s.cols, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        avx2::PackV(values + b * s.inner * s.cols, p, zp, vp.data() + b * packed);
      }
    });
    const int64_t tiles = (s.rows + avx2::kTileRows - 1) / avx2::kTileRows;
    const int64_t work = avx2::kTileRows * s.inner * s.cols;
    ParallelRows(ctx, s.batches * tiles, work, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const int64_t b = u / tiles, r0 = (u % tiles) * avx2::kTileRows;
        const int nr = static_cast<int>(std::min<int64_t>(avx2::kTileRows, s.rows - r0));
        const int64_t row = b * s.rows + r0;
        avx2::RowTileAny(nr, codes + row * s.inner, vp.data() + b * packed,
                         out + row * s.cols, p);
      }
    });
    return true;
  }
#endif

  // max |V - zp| over V's dtype.
  int64_t MaxCentred() const {
    constexpr int64_t lo = std::is_signed_v<TV> ? -128 : 0, hi = std::is_signed_v<TV> ? 127 : 255;
    return std::max(std::llabs(lo - zero_point), std::llabs(hi - zero_point));
  }

  // Terms per int32 block: each |term| <= w(0) * max|V - zp|; 0 means use 64 bits throughout.
  int64_t Int32Block() const {
    const int64_t wmax = MaxWeight();
    const int64_t vmax = MaxCentred();
    if (wmax > (int64_t{1} << 20) || vmax > (int64_t{1} << 20)) return 0;
    return std::min<int64_t>(INT32_MAX / (wmax * std::max<int64_t>(vmax, 1)), 4096);
  }

  void Rows(const uint8_t* codes, const TV* values, int64_t* out, const MatMulShape& s,
            int64_t begin, int64_t end, int64_t block) const {
    const int64_t m = MaxCode();
    int64_t weight[256];
    for (int a = 0; a < 256; ++a) weight[a] = CodeWeight(a, m, steps);
    std::vector<uint64_t> acc64(static_cast<size_t>(s.cols));
    std::vector<int32_t> acc32(static_cast<size_t>(s.cols));
    for (int64_t row = begin; row < end; ++row) {
      const uint8_t* ar = codes + row * s.inner;
      const TV* vb = values + (row / s.rows) * s.inner * s.cols;
      std::fill(acc64.begin(), acc64.end(), 0);
      if (block > 0) {
        for (int64_t k0 = 0; k0 < s.inner; k0 += block) {
          const int64_t k1 = std::min(s.inner, k0 + block);
          std::fill(acc32.begin(), acc32.end(), 0);
          for (int64_t k = k0; k < k1; ++k) {
            if (ar[k] > m) continue;  // the zero code
            AddScaled32(acc32.data(), vb + k * s.cols, s.cols, weight[ar[k]]);
          }
          for (int64_t d = 0; d < s.cols; ++d) acc64[d] += static_cast<uint64_t>(int64_t{acc32[d]});
        }
      } else {
        for (int64_t k = 0; k < s.inner; ++k) {
          if (ar[k] > m) continue;
          AddScaled64(acc64.data(), vb + k * s.cols, s.cols, weight[ar[k]]);
        }
      }
      int64_t* yr = out + row * s.cols;
      for (int64_t d = 0; d < s.cols; ++d) yr[d] = static_cast<int64_t>(acc64[d]);
    }
  }

  // acc += (v - zp) * w, w the code's weight (a power of two for log2 codes).
  void AddScaled32(int32_t* __restrict acc, const TV* __restrict v, int64_t n,
                   int64_t weight) const {
    const auto w = static_cast<int32_t>(weight), zp = static_cast<int32_t>(zero_point);
    for (int64_t d = 0; d < n; ++d) acc[d] += (static_cast<int32_t>(v[d]) - zp) * w;
  }

  // Unsigned arithmetic wraps like numpy's int64 matmul instead of being undefined.
  void AddScaled64(uint64_t* __restrict acc, const TV* __restrict v, int64_t n,
                   int64_t weight) const {
    const auto w = static_cast<uint64_t>(weight);
    const int64_t zp = zero_point;
    for (int64_t d = 0; d < n; ++d) {
      acc[d] += static_cast<uint64_t>(static_cast<int64_t>(v[d]) - zp) * w;
    }
  }
};

}  // namespace

void AddLogIntMatMul(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<LogIntMatMul<int8_t>>("LogIntMatMul", kProvider));
  domain.Add(Ort::Custom::CreateLiteCustomOp<LogIntMatMul<uint8_t>>("LogIntMatMul", kProvider));
}

}  // namespace onnxvq
