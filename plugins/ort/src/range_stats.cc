// RangeStats (plugins/README.md): the min, the max and the finiteness of a float tensor in one
// pass, for calibration's range-only observers (onnxvq/calibrate/collect.py). Without the
// library, collect appends ReduceMin, ReduceMax and ReduceL1 instead: three passes over the
// tensor and three ORT nodes, 18 % of a vit_cifar10 calibration run.
//
// Output: one float [3], (min, max, l1) (collect concatenates them into its one output). min and
// max are exact (a comparison has no rounding, so they equal
// ReduceMin/ReduceMax whatever the order); `l1` the sum of |x| (in float, any order) when every
// element is finite, else NaN. collect only tests `l1` for finiteness and for zero (an empty
// tensor, where min = +inf and max = -inf are the reductions' identities), and since the sum is
// clamped to FLT_MAX a large finite tensor is never taken for a non-finite one.
//
// One thread: the tensor was just written by its producer and is still in cache, so one pass
// takes microseconds, less than waking a second thread of ORT's pool (not spinning in lean
// calibration sessions, core/runtime.py).
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common.h"

#if defined(__AVX2__)
#include "simd.h"
#endif

namespace onnxvq {
namespace {

struct Stats {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  float l1 = 0.0f;
  bool finite = true;
};

// The scalar loop: the vector loop's tail, and the whole tensor on a CPU without AVX2.
void ScalarStats(const float* x, int64_t begin, int64_t end, Stats& s) {
  for (int64_t i = begin; i < end; ++i) {
    const float v = x[i], a = std::fabs(v);
    s.finite = s.finite && a <= FLT_MAX;  // false for +-inf and NaN
    s.lo = v < s.lo ? v : s.lo;
    s.hi = v > s.hi ? v : s.hi;
    s.l1 += a;
  }
}

#if defined(__AVX2__)
// Four independent accumulators of 8 lanes each (32 elements a step), so the loop runs at the
// load ports' speed rather than the latency of one min/max/add chain.
Stats VectorStats(const float* x, int64_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(FLT_MAX);
  __m256 lo[4], hi[4], l1[4], bad = _mm256_setzero_ps();
  for (int k = 0; k < 4; ++k) {
    lo[k] = _mm256_set1_ps(std::numeric_limits<float>::infinity());
    hi[k] = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    l1[k] = _mm256_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int k = 0; k < 4; ++k) {
      const __m256 v = _mm256_loadu_ps(x + i + 8 * k);
      const __m256 a = _mm256_andnot_ps(sign, v);
      // not (|v| <= FLT_MAX): true for +-inf, and (unordered) for NaN
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, big, _CMP_NLE_UQ));
      lo[k] = _mm256_min_ps(lo[k], v);
      hi[k] = _mm256_max_ps(hi[k], v);
      l1[k] = _mm256_add_ps(l1[k], a);
    }
  }
  alignas(32) float lo8[8], hi8[8], l18[8];
  _mm256_store_ps(lo8, _mm256_min_ps(_mm256_min_ps(lo[0], lo[1]), _mm256_min_ps(lo[2], lo[3])));
  _mm256_store_ps(hi8, _mm256_max_ps(_mm256_max_ps(hi[0], hi[1]), _mm256_max_ps(hi[2], hi[3])));
  _mm256_store_ps(l18, _mm256_add_ps(_mm256_add_ps(l1[0], l1[1]), _mm256_add_ps(l1[2], l1[3])));
  Stats s;
  s.finite = _mm256_movemask_ps(bad) == 0;
  for (int k = 0; k < 8; ++k) {
    s.lo = lo8[k] < s.lo ? lo8[k] : s.lo;
    s.hi = hi8[k] > s.hi ? hi8[k] : s.hi;
    s.l1 += l18[k];
  }
  ScalarStats(x, i, n, s);
  return s;
}
#endif

struct RangeStats {
  RangeStats(const OrtApi*, const OrtKernelInfo*) {}

  Ort::Status Compute(const Ort::Custom::Tensor<float>& x, Ort::Custom::Tensor<float>& y) {
    return Guard("RangeStats", [&] {
      const int64_t n = x.NumberOfElement();
      Stats s;
      if (n > 0) {
#if defined(__AVX2__)
        s = VectorStats(x.Data(), n);
#else
        ScalarStats(x.Data(), 0, n, s);
#endif
      }
      float* out = y.Allocate(std::vector<int64_t>{3});
      out[0] = s.lo;
      out[1] = s.hi;
      out[2] = s.finite ? std::fmin(s.l1, FLT_MAX) : std::numeric_limits<float>::quiet_NaN();
    });
  }
};

}  // namespace

void AddRangeStats(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<RangeStats>("RangeStats", kProvider));
}

}  // namespace onnxvq
