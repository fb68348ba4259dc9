// AddMulQuantizeLinear (plugins/README.md): S = A + B and Y = saturate(rne(S * M_c / scale) + zp)
// in one pass: the --pts input of an IntLayerNorm (M_c = 2^-alpha_c) from the residual sum,
// without the separate Add, Mul and QuantizeLinear kernels and their two float round trips.
//
// Bit-exact with Add -> Mul -> QuantizeLinear: the same three IEEE float32 operations in the same
// order (a true division, as ORT's QuantizeLinear does), round half to even, then the zero point.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "broadcast_rows.h"
#include "common.h"
#include "parallel.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace onnxvq {
namespace {

struct AmqParams {
  const float* mult;  // M, [C]
  int64_t channels, b_rows;
  float scale, zero_point, lo, hi;
};

template <class TOut>
inline TOut Code1(float s, float m, const AmqParams& p) {
  const float q = std::nearbyint((s * m) / p.scale) + p.zero_point;
  return static_cast<TOut>(std::min(std::max(q, p.lo), p.hi));
}

template <class TOut>
void AmqRow(const float* __restrict a, const float* __restrict b, float* __restrict s,
            TOut* __restrict y, const AmqParams& p) {
  const float* __restrict mult = p.mult;
  const int64_t c = p.channels;
  int64_t i = 0;
#if defined(__AVX2__)
  const __m256 vs = _mm256_set1_ps(p.scale), vz = _mm256_set1_ps(p.zero_point);
  const __m256 lo = _mm256_set1_ps(p.lo), hi = _mm256_set1_ps(p.hi);
  for (; i + 16 <= c; i += 16) {
    __m256i codes[2];
    for (int k = 0; k < 2; ++k) {
      const int64_t j = i + 8 * k;
      const __m256 v = _mm256_add_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
      _mm256_storeu_ps(s + j, v);
      const __m256 t = _mm256_div_ps(_mm256_mul_ps(v, _mm256_loadu_ps(mult + j)), vs);
      const __m256 r = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      codes[k] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, vz), lo), hi));
    }
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(codes[0], codes[1]), 0xd8);
    const __m128i l = _mm256_castsi256_si128(w), h = _mm256_extracti128_si256(w, 1);
    const __m128i bytes = std::is_signed_v<TOut> ? _mm_packs_epi16(l, h) : _mm_packus_epi16(l, h);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), bytes);
  }
#endif
  for (; i < c; ++i) {
    s[i] = a[i] + b[i];
    y[i] = Code1<TOut>(s[i], mult[i], p);
  }
}

template <class TOut>
struct AddMulQuantizeLinear {
  AddMulQuantizeLinear(const OrtApi*, const OrtKernelInfo*) {}

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<float>& a,
                      const Ort::Custom::Tensor<float>& b, const Ort::Custom::Tensor<float>& m,
                      const Ort::Custom::Tensor<float>& scale,
                      const Ort::Custom::Tensor<TOut>& zero_point, Ort::Custom::Tensor<TOut>& y,
                      Ort::Custom::Tensor<float>& sum) {
    return Guard("AddMulQuantizeLinear", [&] {
      int64_t rows = 0, c = 0;
      RowsOf(a.Shape(), rows, c);
      Require(m.NumberOfElement() == c, "M must have C elements");
      Require(scale.NumberOfElement() == 1 && zero_point.NumberOfElement() == 1,
              "y_scale and y_zero_point must be scalars");
      const float s = scale.Data()[0];
      Require(s > 0 && std::isfinite(s), "y_scale must be positive and finite");
      const bool sgn = std::is_signed_v<TOut>;
      AmqParams p{m.Data(), c, BroadcastRows(a.Shape(), b.Shape()), s,
                  static_cast<float>(zero_point.Data()[0]), sgn ? -128.0f : 0.0f,
                  sgn ? 127.0f : 255.0f};
      const float* pa = a.Data();
      const float* pb = b.Data();
      TOut* py = y.Allocate(a.Shape());
      float* ps = sum.Allocate(a.Shape());
      ParallelRows(ctx, rows, c, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          AmqRow(pa + r * c, pb + (r % p.b_rows) * c, ps + r * c, py + r * c, p);
        }
      });
    });
  }
};

}  // namespace

void AddAddMulQuantizeLinear(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<AddMulQuantizeLinear<uint8_t>>(
      "AddMulQuantizeLinear", kProvider));
  domain.Add(Ort::Custom::CreateLiteCustomOp<AddMulQuantizeLinear<int8_t>>(
      "AddMulQuantizeLinear", kProvider));
}

}  // namespace onnxvq
