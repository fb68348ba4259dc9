// QuantizedLinearQuantize and QuantizedLinearGeluQuantize (plugins/README.md): QuantizedLinear's
// float rows v written straight as the uint8 codes its only reader wanted:
//   QuantizeLinear        sat(rne(v / y_scale) + y_zero_point)       (IEEE division, as ORT)
//   GeluQuantizeLinear    the erf-GELU codes of v (gelu_codes.h, the GeluQuantizeLinear kernel's)
// so the float tensor is never written. v is computed exactly as QuantizedLinear computes it
// (linear_kernel.h), so the codes are those of the two unfused kernels, bit for bit. On the
// packed paths (AMX, AVX-512 VNNI, AVX2) each finished row goes straight to the codes; on ORT's
// MatMulIntegerToFloat kernel (ONNXVQ_NO_AMX=ort) or the plain loops the float rows fill a buffer
// first.
#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#include "gelu_codes.h"
#include "linear_kernel.h"

namespace onnxvq {
namespace {

// The output quantizer: one (scale, zero point) per column ([np], padded), or GELU's scalar.
struct CodeParams {
  bool gelu;
  float inv_scale, zero_point;  // GELU's (it multiplies by 1 / scale, as GeluQuantizeLinear)
  std::vector<float> scale, zp;  // QuantizeLinear's, per column
};

// 32 codes of the 32 floats v of columns col0...
ONNXVQ_AVX2 inline void Codes32(const float* v, int64_t col0, uint8_t* y, const CodeParams& p) {
  __m256 c[4];
  const gelu::GeluParams g{nullptr, 32, p.inv_scale, p.zero_point, 0.0f, 255.0f};
  for (int k = 0; k < 4; ++k) {
    const __m256 x = _mm256_loadu_ps(v + 8 * k);
    if (p.gelu) {
      c[k] = gelu::GeluCodes8(x, g);
    } else {  // clamp, then round half to even: MLAS's QuantizeLinear order
      const __m256 z = _mm256_loadu_ps(p.zp.data() + col0 + 8 * k);
      __m256 q = _mm256_div_ps(x, _mm256_loadu_ps(p.scale.data() + col0 + 8 * k));
      q = _mm256_max_ps(q, _mm256_sub_ps(_mm256_setzero_ps(), z));
      q = _mm256_min_ps(q, _mm256_sub_ps(_mm256_set1_ps(255.0f), z));
      q = _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      c[k] = _mm256_add_ps(q, z);
    }
  }
  const __m256i a = _mm256_packs_epi32(_mm256_cvtps_epi32(c[0]), _mm256_cvtps_epi32(c[1]));
  const __m256i b = _mm256_packs_epi32(_mm256_cvtps_epi32(c[2]), _mm256_cvtps_epi32(c[3]));
  const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(a, b),
                                                    _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(y), bytes);
}

// The packed paths' epilogue (AVX-512 is there): the same operations 16 lanes at a time, written
// straight to the output with a masked saturating store (the codes are already in 0..255).
ONNXVQ_AVX512_DQ inline void CodesAvx512(const float* v, int64_t col0, int64_t cols, uint8_t* y,
                                         const CodeParams& p) {
  const gelu::GeluParams g{nullptr, 32, p.inv_scale, p.zero_point, 0.0f, 255.0f};
  for (int64_t j = 0; j < cols; j += 16) {
    const __m512 x = _mm512_loadu_ps(v + j);
    __m512 c;
    if (p.gelu) {
      c = gelu::GeluCodes16(x, g);
    } else {
      const __m512 z = _mm512_loadu_ps(p.zp.data() + col0 + j);
      __m512 q = _mm512_div_ps(x, _mm512_loadu_ps(p.scale.data() + col0 + j));
      q = _mm512_max_ps(q, _mm512_sub_ps(_mm512_setzero_ps(), z));
      q = _mm512_min_ps(q, _mm512_sub_ps(_mm512_set1_ps(255.0f), z));
      c = _mm512_add_ps(_mm512_roundscale_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                        z);
    }
    const int64_t left = cols - j;
    const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    _mm512_mask_cvtusepi32_storeu_epi8(y + j, mask, _mm512_cvtps_epi32(c));
  }
}

struct CodeSink {
  static constexpr bool kFloat = false;
  uint8_t* out;
  int64_t n;
  const CodeParams& p;

  void Codes(int64_t row, int64_t col0, int64_t cols, const float* v) const {
    CodesAvx512(v, col0, cols, out + row * n + col0, p);
  }

  // The AVX2 path's: 32 codes (v is 32 floats, the quantizer padded to np), `cols` written.
  void Codes8(int64_t row, int64_t col0, int64_t cols, const float* v) const {
    alignas(32) uint8_t codes[32];
    Codes32(v, col0, codes, p);
    std::memcpy(out + row * n + col0, codes, static_cast<size_t>(cols));
  }
};

// Per-column quantizers for QuantizeLinear (a scalar broadcast; [N] for the QKV projection's
// per-piece quantizer), one scalar for GELU.
template <bool kGelu>
CodeParams Params(const Ort::Custom::Tensor<float>& y_scale,
                  const Ort::Custom::Tensor<uint8_t>& y_zero_point, int64_t n) {
  const int64_t ns = y_scale.NumberOfElement(), nz = y_zero_point.NumberOfElement();
  Require(ns == nz && (ns == 1 || (!kGelu && ns == n)),
          kGelu ? "y_scale and y_zero_point must be scalars"
                : "y_scale and y_zero_point must be scalars or [N]");
  const float* ys = y_scale.Data();
  Require(std::all_of(ys, ys + ns, [](float v) { return v > 0 && std::isfinite(v); }),
          "y_scale must be positive and finite");
  CodeParams p{kGelu, 1.0f / ys[0], static_cast<float>(y_zero_point.Data()[0]), {}, {}};
  const auto np = static_cast<size_t>(amx::RoundUp(n, amx::kBlockN));
  p.scale.assign(np, 1.0f);
  p.zp.assign(np, 0.0f);
  for (int64_t c = 0; c < n; ++c) {
    p.scale[c] = ys[ns == 1 ? 0 : c];
    p.zp[c] = static_cast<float>(y_zero_point.Data()[nz == 1 ? 0 : c]);
  }
  return p;
}

template <bool kGelu>
struct QuantizedLinearCodes : linear::KernelBase {
  using KernelBase::KernelBase;

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<uint8_t>& a,
                      const Ort::Custom::Tensor<int8_t>& b,
                      const Ort::Custom::Tensor<float>& a_scale,
                      const Ort::Custom::Tensor<float>& b_scale,
                      const Ort::Custom::Tensor<uint8_t>& a_zero_point,
                      const Ort::Custom::Tensor<int8_t>& b_zero_point,
                      const Ort::Custom::Tensor<float>& bias,
                      const Ort::Custom::Tensor<float>& y_scale,
                      const Ort::Custom::Tensor<uint8_t>& y_zero_point,
                      Ort::Custom::Tensor<uint8_t>& y) {
    return Guard(kGelu ? "QuantizedLinearGeluQuantize" : "QuantizedLinearQuantize", [&] {
      const linear::Shape s = linear::Check(a, b, a_scale, b_scale, a_zero_point, b_zero_point,
                                            bias);
      const CodeParams p = Params<kGelu>(y_scale, y_zero_point, s.n);
      const CodeSink sink{y.Allocate(s.out), s.n, p};
      amx::PackedWeights scratch;
      if (const amx::PackedWeights* w = Packed(b, s, scratch)) {
        const linear::Epilogue e = linear::MakeEpilogue(*w, a_scale, b_scale, a_zero_point, bias);
        linear::RunPacked(ctx, a.Data(), s.m, *w, e, sink, path);
        return;
      }
      std::vector<float> v(static_cast<size_t>(s.m * s.n));
      if (path == linear::Path::kOrt) {
        const auto info = Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeCPU);
        Ort::Value out = Ort::Value::CreateTensor<float>(info, v.data(), v.size(),
                                                         s.out.data(), s.out.size());
        InvokeFallback(ctx, out);
      } else {
        linear::Loops(a.Data(), b.Data(), a_scale.Data()[0], a_zero_point.Data()[0],
                      b_scale.Data(), b_scale.NumberOfElement() == 1, bias.Data(), v.data(),
                      s.m, s.k, s.n);
      }
      alignas(32) float row[32];
      alignas(32) uint8_t codes[32];
      for (int64_t r = 0; r < s.m; ++r) {  // AVX2 here: this path must run without AVX-512
        for (int64_t c0 = 0; c0 < s.n; c0 += 32) {
          const auto cols = static_cast<size_t>(std::min<int64_t>(32, s.n - c0));
          std::fill(row, row + 32, 0.0f);
          std::memcpy(row, v.data() + r * s.n + c0, cols * sizeof(float));
          Codes32(row, c0, codes, p);
          std::memcpy(sink.out + r * s.n + c0, codes, cols);
        }
      }
    });
  }
};

}  // namespace

void AddQuantizedLinearCodes(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<QuantizedLinearCodes<false>>(
      "QuantizedLinearQuantize", kProvider));
  domain.Add(Ort::Custom::CreateLiteCustomOp<QuantizedLinearCodes<true>>(
      "QuantizedLinearGeluQuantize", kProvider));
}

}  // namespace onnxvq
