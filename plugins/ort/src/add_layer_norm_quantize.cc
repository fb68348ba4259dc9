// AddLayerNormQuantize (plugins/README.md): the residual sum S = A + B, written for the next
// residual, and the codes Y = saturate(rne(LayerNorm(S) / scale) + zp) of the next Linear's
// input, in one pass over memory (the unfused graph writes S, reads it, writes the float
// LayerNorm output and reads that back to quantize it).
//
// Per row (C channels, in L1 after the first loop): S and its sum, the sum of squared deviations
// from the mean (two passes: no cancellation), then the codes from
// (s - mean) * rstd * (gamma / scale) + beta / scale, the per-channel factors computed once per
// call. All float32 except the row's mean and variance, reduced in double.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "broadcast_rows.h"
#include "common.h"
#include "parallel.h"

#if defined(__AVX2__)
#include "simd.h"
#endif

namespace onnxvq {
namespace {

struct LnqParams {
  const float* gain;   // gamma / scale, [C]
  const float* shift;  // beta / scale, [C]
  int64_t channels, b_rows;
  float epsilon, zero_point, lo, hi;
};

#if defined(__AVX2__)
inline double SumLanes(__m256 v) {
  alignas(32) float f[8];
  _mm256_store_ps(f, v);
  double s = 0;
  for (float x : f) s += x;
  return s;
}

// Eight codes as int32 lanes: clamp(rne(d * gain + shift) + zp) (d = s - mean times rstd).
inline __m256i Codes8(__m256 d, const float* gain, const float* shift, const LnqParams& p) {
  const __m256 y = _mm256_fmadd_ps(d, _mm256_loadu_ps(gain), _mm256_loadu_ps(shift));
  const __m256 r = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 q = _mm256_add_ps(r, _mm256_set1_ps(p.zero_point));
  const __m256 c = _mm256_min_ps(_mm256_max_ps(q, _mm256_set1_ps(p.lo)), _mm256_set1_ps(p.hi));
  return _mm256_cvtps_epi32(c);
}

template <class TOut>
inline void Store16(TOut* y, __m256i c0, __m256i c1) {
  const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(c0, c1), 0xd8);  // 16 x int16
  const __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
  const __m128i b = std::is_signed_v<TOut> ? _mm_packs_epi16(lo, hi) : _mm_packus_epi16(lo, hi);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(y), b);
}
#endif

// Scalar code of one channel, the same float operations as the vector loop (fma, rne).
template <class TOut>
inline TOut Code1(float d, float gain, float shift, const LnqParams& p) {
  const float q = std::nearbyint(std::fma(d, gain, shift)) + p.zero_point;
  return static_cast<TOut>(std::min(std::max(q, p.lo), p.hi));
}

// Row sums: S = A + B stored, returns sum(S) in double.
inline double SumRow(const float* __restrict a, const float* __restrict b, float* __restrict s,
                     int64_t c, int64_t& i) {
  double total = 0;
  i = 0;
#if defined(__AVX2__)
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= c; i += 16) {
    const __m256 v0 = _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    const __m256 v1 = _mm256_add_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
    _mm256_storeu_ps(s + i, v0);
    _mm256_storeu_ps(s + i + 8, v1);
    acc0 = _mm256_add_ps(acc0, v0);
    acc1 = _mm256_add_ps(acc1, v1);
  }
  total = SumLanes(_mm256_add_ps(acc0, acc1));
#endif
  for (int64_t j = i; j < c; ++j) {
    s[j] = a[j] + b[j];
    total += s[j];
  }
  return total;
}

inline double SquaredDeviations(const float* __restrict s, int64_t c, float mean) {
  double total = 0;
  int64_t i = 0;
#if defined(__AVX2__)
  const __m256 m = _mm256_set1_ps(mean);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= c; i += 16) {
    const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(s + i), m);
    const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(s + i + 8), m);
    acc0 = _mm256_fmadd_ps(d0, d0, acc0);
    acc1 = _mm256_fmadd_ps(d1, d1, acc1);
  }
  total = SumLanes(_mm256_add_ps(acc0, acc1));
#endif
  for (; i < c; ++i) {
    const float d = s[i] - mean;
    total += static_cast<double>(d) * d;
  }
  return total;
}

template <class TOut>
void NormalizeRow(const float* a, const float* b, float* __restrict s, TOut* __restrict y,
                  const LnqParams& p) {
  const int64_t c = p.channels;
  int64_t i = 0;
  const double sum = SumRow(a, b, s, c, i);
  const float mean = static_cast<float>(sum / static_cast<double>(c));
  const double var = SquaredDeviations(s, c, mean) / static_cast<double>(c);
  const float rstd = static_cast<float>(1.0 / std::sqrt(var + p.epsilon));
  const float* __restrict gain = p.gain;
  const float* __restrict shift = p.shift;
  i = 0;
#if defined(__AVX2__)
  const __m256 m = _mm256_set1_ps(mean), r = _mm256_set1_ps(rstd);
  for (; i + 16 <= c; i += 16) {
    const __m256 d0 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(s + i), m), r);
    const __m256 d1 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(s + i + 8), m), r);
    Store16(y + i, Codes8(d0, gain + i, shift + i, p), Codes8(d1, gain + i + 8, shift + i + 8, p));
  }
#endif
  for (; i < c; ++i) y[i] = Code1<TOut>((s[i] - mean) * rstd, gain[i], shift[i], p);
}

template <class TOut>
struct AddLayerNormQuantize {
  float epsilon;

  AddLayerNormQuantize(const OrtApi*, const OrtKernelInfo* info) : epsilon(1e-5f) {
    float value = 0;
    OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_float(info, "epsilon", &value);
    if (status == nullptr) {
      epsilon = value;
    } else {
      Ort::GetApi().ReleaseStatus(status);
    }
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<float>& a,
                      const Ort::Custom::Tensor<float>& b, const Ort::Custom::Tensor<float>& gamma,
                      const Ort::Custom::Tensor<float>& beta,
                      const Ort::Custom::Tensor<float>& scale,
                      const Ort::Custom::Tensor<TOut>& zero_point, Ort::Custom::Tensor<TOut>& y,
                      Ort::Custom::Tensor<float>& sum) {
    return Guard("AddLayerNormQuantize", [&] {
      int64_t rows = 0, c = 0;
      RowsOf(a.Shape(), rows, c);
      const int64_t b_rows = BroadcastRows(a.Shape(), b.Shape());
      Require(gamma.NumberOfElement() == c && beta.NumberOfElement() == c,
              "gamma and beta must have C elements");
      Require(scale.NumberOfElement() == 1 && zero_point.NumberOfElement() == 1,
              "y_scale and y_zero_point must be scalars");
      const float s = scale.Data()[0];
      Require(s > 0 && std::isfinite(s), "y_scale must be positive and finite");
      Require(epsilon >= 0, "epsilon must be >= 0");
      std::vector<float> gain(static_cast<size_t>(c)), shift(static_cast<size_t>(c));
      for (int64_t i = 0; i < c; ++i) {
        gain[i] = gamma.Data()[i] / s;
        shift[i] = beta.Data()[i] / s;
      }
      const bool sgn = std::is_signed_v<TOut>;
      LnqParams p{gain.data(), shift.data(), c, b_rows, epsilon,
                  static_cast<float>(zero_point.Data()[0]), sgn ? -128.0f : 0.0f,
                  sgn ? 127.0f : 255.0f};
      const float* pa = a.Data();
      const float* pb = b.Data();
      TOut* py = y.Allocate(a.Shape());
      float* ps = sum.Allocate(a.Shape());
      ParallelRows(ctx, rows, c, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          NormalizeRow(pa + r * c, pb + (r % p.b_rows) * c, ps + r * c, py + r * c, p);
        }
      });
    });
  }
};

}  // namespace

void AddAddLayerNormQuantize(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<AddLayerNormQuantize<uint8_t>>(
      "AddLayerNormQuantize", kProvider));
  domain.Add(Ort::Custom::CreateLiteCustomOp<AddLayerNormQuantize<int8_t>>(
      "AddLayerNormQuantize", kProvider));
}

}  // namespace onnxvq
