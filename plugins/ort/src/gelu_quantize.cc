// GeluQuantizeLinear (plugins/README.md): Y = saturate(rne(gelu(X + bias) / scale) + zp), the
// erf GELU, in one pass that reads the float input once and writes the 8-bit codes.
//
// erf through Abramowitz & Stegun 7.1.28, erfc(z) = p(z)^-16 with a degree-6 polynomial p
// (|error| <= 3e-7 for z >= 0): no exp, one division per element. With t = 0.5 |x| / p^16,
// gelu(x) = x - t for x > 0 and -t (= 0.5 x erfc) for x <= 0, so the negative half never
// subtracts nearly equal numbers. Every step is IEEE float32 (a true division, no reciprocal
// estimate, whose bits differ between CPU vendors), so the codes are the same on every x86 CPU.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common.h"
#include "gelu_codes.h"
#include "parallel.h"

#if defined(__AVX2__)
#include "simd.h"
#endif

namespace onnxvq {
namespace {

using gelu::GeluParams, gelu::kA, gelu::kInvSqrt2, gelu::kZMax;

#if defined(__AVX2__)
using gelu::GeluCodes8;

// 32 codes from four vectors of 8, in order (packs work per 128-bit lane, hence the permute).
template <class TOut>
inline void Store32(TOut* y, __m256 c0, __m256 c1, __m256 c2, __m256 c3) {
  const __m256i a = _mm256_packs_epi32(_mm256_cvtps_epi32(c0), _mm256_cvtps_epi32(c1));
  const __m256i b = _mm256_packs_epi32(_mm256_cvtps_epi32(c2), _mm256_cvtps_epi32(c3));
  __m256i bytes = std::is_signed_v<TOut> ? _mm256_packs_epi16(a, b) : _mm256_packus_epi16(a, b);
  bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(y), bytes);
}

template <class TOut>
void GeluRow(const float* __restrict x, TOut* __restrict y, const GeluParams& p) {
  const float* __restrict bias = p.bias;
  const int64_t n = p.cols;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256 c[4];
    for (int k = 0; k < 4; ++k) {
      const __m256 v = _mm256_add_ps(_mm256_loadu_ps(x + i + 8 * k),
                                     _mm256_loadu_ps(bias + i + 8 * k));
      c[k] = GeluCodes8(v, p);
    }
    Store32(y + i, c[0], c[1], c[2], c[3]);
  }
  if (i < n) {  // the tail through the same vector code, via zero-padded buffers
    alignas(32) float xb[32] = {}, bb[32] = {};
    alignas(32) TOut yb[32];
    const auto rest = static_cast<size_t>(n - i);
    std::memcpy(xb, x + i, rest * sizeof(float));
    std::memcpy(bb, bias + i, rest * sizeof(float));
    __m256 c[4];
    for (int k = 0; k < 4; ++k) {
      c[k] = GeluCodes8(_mm256_add_ps(_mm256_load_ps(xb + 8 * k), _mm256_load_ps(bb + 8 * k)), p);
    }
    Store32(yb, c[0], c[1], c[2], c[3]);
    std::memcpy(y + i, yb, rest * sizeof(TOut));
  }
}
#else
template <class TOut>
void GeluRow(const float* x, TOut* y, const GeluParams& p) {
  for (int64_t i = 0; i < p.cols; ++i) {
    const float v = x[i] + p.bias[i], a = std::fabs(v);
    const float z = std::min(a * kInvSqrt2, kZMax);
    float poly = kA[5];
    for (int k = 4; k >= 0; --k) poly = std::fma(poly, z, kA[k]);
    poly = std::fma(poly, z, 1.0f);
    for (int k = 0; k < 4; ++k) poly *= poly;
    const float t = (0.5f * (a * p.inv_scale)) / poly;
    const float g = v > 0 ? std::fma(v, p.inv_scale, -t) : -t;
    const float q = std::nearbyint(g) + p.zero_point;
    y[i] = static_cast<TOut>(std::min(std::max(q, p.lo), p.hi));
  }
}
#endif

template <class TOut>
struct GeluQuantizeLinear {
  GeluQuantizeLinear(const OrtApi*, const OrtKernelInfo*) {}

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<float>& x,
                      const Ort::Custom::Tensor<float>& bias,
                      const Ort::Custom::Tensor<float>& scale,
                      const Ort::Custom::Tensor<TOut>& zero_point, Ort::Custom::Tensor<TOut>& y) {
    return Guard("GeluQuantizeLinear", [&] {
      int64_t rows = 0, cols = 0;
      RowsOf(x.Shape(), rows, cols);
      Require(bias.Shape().size() == 1 && bias.Shape()[0] == cols, "bias must have shape [N]");
      Require(scale.NumberOfElement() == 1 && zero_point.NumberOfElement() == 1,
              "y_scale and y_zero_point must be scalars");
      const float s = scale.Data()[0];
      Require(s > 0 && std::isfinite(s), "y_scale must be positive and finite");
      const bool sgn = std::is_signed_v<TOut>;
      GeluParams p{bias.Data(), cols, 1.0f / s, static_cast<float>(zero_point.Data()[0]),
                   sgn ? -128.0f : 0.0f, sgn ? 127.0f : 255.0f};
      const float* in = x.Data();
      TOut* out = y.Allocate(x.Shape());
      ParallelRows(ctx, rows, cols, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) GeluRow(in + r * cols, out + r * cols, p);
      });
    });
  }
};

}  // namespace

void AddGeluQuantizeLinear(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<GeluQuantizeLinear<uint8_t>>("GeluQuantizeLinear",
                                                                          kProvider));
  domain.Add(Ort::Custom::CreateLiteCustomOp<GeluQuantizeLinear<int8_t>>("GeluQuantizeLinear",
                                                                         kProvider));
}

}  // namespace onnxvq
