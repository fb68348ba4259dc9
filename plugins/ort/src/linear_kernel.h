// The shared part of the QuantizedLinear kernels (plugins/README.md): input checks, the float
// epilogue f32(acc) * (a_scale * b_scale[n]) + bias[n], and the AMX driver that runs 32-row x
// up-to-128-column tasks on ORT's thread pool and hands each finished row either to the float
// output or to a code-writing sink (QuantizedLinearQuantize, QuantizedLinearGeluQuantize).
#pragma once

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "amx_gemm.h"
#include "common.h"

// The epilogue is a float32 multiply, then an add, each rounded, as ORT's MatMulIntegerToFloat
// computes it (MLAS's scale-bias output processor): never contracted into an FMA.
#define ONNXVQ_NO_FMA __attribute__((optimize("fp-contract=off")))

namespace onnxvq {
namespace linear {

// The seven inputs every QuantizedLinear variant starts with, checked once per run.
struct Shape {
  int64_t m = 0, k = 0, n = 0;
  std::vector<int64_t> out;  // A's shape with K replaced by N
};

inline Shape Check(const Ort::Custom::Tensor<uint8_t>& a, const Ort::Custom::Tensor<int8_t>& b,
                   const Ort::Custom::Tensor<float>& a_scale,
                   const Ort::Custom::Tensor<float>& b_scale,
                   const Ort::Custom::Tensor<uint8_t>& a_zero_point,
                   const Ort::Custom::Tensor<int8_t>& b_zero_point,
                   const Ort::Custom::Tensor<float>& bias) {
  Shape s;
  const auto& bs = b.Shape();
  Require(bs.size() == 2, "B must be a 2-D [K, N] tensor");
  s.k = bs[0];
  s.n = bs[1];
  int64_t ka = 0;
  RowsOf(a.Shape(), s.m, ka);
  Require(ka == s.k, "A's last dimension must equal B's first");
  Require(s.k <= 65536, "K must be <= 65536 (int32 accumulation)");
  Require(a_scale.NumberOfElement() == 1 && a_zero_point.NumberOfElement() == 1,
          "a_scale and a_zero_point must be scalars");
  const int64_t ns = b_scale.NumberOfElement(), nz = b_zero_point.NumberOfElement();
  Require(ns == 1 || ns == s.n, "b_scale must be a scalar or [N]");
  Require(nz == 1 || nz == s.n, "b_zero_point must be a scalar or [N]");
  Require(bias.NumberOfElement() == s.n, "bias must be [N]");
  const int8_t* zb = b_zero_point.Data();
  Require(std::all_of(zb, zb + nz, [](int8_t z) { return z == 0; }),
          "b_zero_point must be 0 (symmetric weights)");
  s.out = a.Shape();
  s.out.back() = s.n;
  return s;
}

struct Epilogue {
  std::vector<int32_t> zcol;  // a_zero_point * colsum[n], [np]
  std::vector<float> scale;   // a_scale * b_scale[n], [np]
  std::vector<float> bias;    // [np]
};

inline Epilogue MakeEpilogue(const amx::PackedWeights& w, const Ort::Custom::Tensor<float>& a_scale,
                             const Ort::Custom::Tensor<float>& b_scale,
                             const Ort::Custom::Tensor<uint8_t>& a_zero_point,
                             const Ort::Custom::Tensor<float>& bias) {
  Epilogue e;
  e.zcol.assign(static_cast<size_t>(w.np), 0);
  e.scale.assign(static_cast<size_t>(w.np), 0.0f);
  e.bias.assign(static_cast<size_t>(w.np), 0.0f);
  const int32_t za = a_zero_point.Data()[0];
  const float sa = a_scale.Data()[0];
  const bool per_tensor = b_scale.NumberOfElement() == 1;
  for (int64_t c = 0; c < w.n; ++c) {
    e.zcol[c] = za * w.colsum[c];
    e.scale[c] = sa * b_scale.Data()[per_tensor ? 0 : c];
    e.bias[c] = bias.Data()[c];
  }
  return e;
}

// v[0, cols) = f32(c - zcol) * scale + bias for one row of a block (columns col0...).
ONNXVQ_AVX512_DQ ONNXVQ_NO_FMA inline void FloatRow(
    const int32_t* c, int64_t col0, int64_t cols, const Epilogue& e, float* v) {
  for (int64_t j = 0; j < cols; j += 16) {
    const int64_t left = cols - j;
    const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    const __m512i acc = _mm512_sub_epi32(_mm512_loadu_si512(c + j),
                                         _mm512_loadu_si512(e.zcol.data() + col0 + j));
    const __m512 y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc),
                                                 _mm512_loadu_ps(e.scale.data() + col0 + j)),
                                   _mm512_loadu_ps(e.bias.data() + col0 + j));
    _mm512_mask_storeu_ps(v + j, mask, y);
  }
}

// Sink: kFloat true -> `float* out` ([m, n]) gets the rows; false -> Codes(row, col0, cols, v)
// with v 32 floats (only the first `cols` meaningful).
template <class Sink>
struct AmxTask {
  const uint8_t* x;
  const amx::PackedWeights* w;
  const Epilogue* e;
  const Sink* sink;
  int64_t m, groups, per_group;
};

template <class Sink>
void RunAmxTask(void* data, size_t index) {
  const auto& t = *static_cast<const AmxTask<Sink>*>(data);
  const auto& w = *t.w;
  const int64_t mb = static_cast<int64_t>(index) / t.groups;
  const int64_t g = static_cast<int64_t>(index) % t.groups;
  const int64_t rows = std::min(amx::kBlockM, t.m - mb * amx::kBlockM);
  const uint8_t* a = t.x + mb * amx::kBlockM * w.k;
  int64_t lda = w.k;
  thread_local std::vector<uint8_t> pad;
  if (rows < amx::kBlockM || w.k != w.kp) {  // a partial block: zero-padded copy of its rows
    pad.assign(static_cast<size_t>(amx::kBlockM * w.kp), 0);
    for (int64_t r = 0; r < rows; ++r) std::memcpy(pad.data() + r * w.kp, a + r * w.k, w.k);
    a = pad.data();
    lda = w.kp;
  }
  alignas(64) int32_t c[amx::kBlockM * amx::kBlockN];
  alignas(64) float v[amx::kBlockN];
  const int64_t nb_end = std::min(w.np / amx::kBlockN, (g + 1) * t.per_group);
  amx::LoadConfig();
  for (int64_t nb = g * t.per_group; nb < nb_end; ++nb) {
    amx::Block(a, lda, w, 2 * nb, c);
    const int64_t col0 = nb * amx::kBlockN, cols = std::min(amx::kBlockN, w.n - col0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row = mb * amx::kBlockM + r;
      if constexpr (Sink::kFloat) {
        FloatRow(c + r * amx::kBlockN, col0, cols, *t.e, t.sink->out + row * w.n + col0);
      } else {
        FloatRow(c + r * amx::kBlockN, col0, amx::kBlockN, *t.e, v);
        t.sink->Codes(row, col0, cols, v);
      }
    }
  }
  amx::Release();
}

template <class Sink>
void RunAmx(OrtKernelContext* ctx, const uint8_t* x, int64_t m, const amx::PackedWeights& w,
            const Epilogue& e, const Sink& sink) {
  if (m == 0) return;
  const int64_t blocks = w.np / amx::kBlockN, per_group = std::min<int64_t>(blocks, 4);
  AmxTask<Sink> task{x, &w, &e, &sink, m, (blocks + per_group - 1) / per_group, per_group};
  const int64_t tasks = (m + amx::kBlockM - 1) / amx::kBlockM * task.groups;
  if (tasks == 1) {
    RunAmxTask<Sink>(&task, 0);
  } else {
    Ort::KernelContext(ctx).ParallelFor(&RunAmxTask<Sink>, static_cast<size_t>(tasks), 0, &task);
  }
}

// ONNXVQ_NO_AMX=loops: the plain-loop fallback (also where ORT cannot create its own kernel).
inline bool LoopsForced() {
  const char* v = std::getenv("ONNXVQ_NO_AMX");
  return v != nullptr && std::string(v) == "loops";
}

// The plain-loop fallback: the float output rows of the same formula.
ONNXVQ_NO_FMA inline void Loops(const uint8_t* x, const int8_t* w, float sa, int32_t za,
                                const float* sb, bool per_tensor, const float* bias, float* out,
                                int64_t m, int64_t k, int64_t n) {
  std::vector<int32_t> acc(static_cast<size_t>(n));
  for (int64_t r = 0; r < m; ++r) {
    std::fill(acc.begin(), acc.end(), 0);
    for (int64_t kk = 0; kk < k; ++kk) {
      const int32_t v = static_cast<int32_t>(x[r * k + kk]) - za;
      for (int64_t c = 0; c < n; ++c) acc[c] += v * w[kk * n + c];
    }
    for (int64_t c = 0; c < n; ++c) {
      const float s = sa * sb[per_tensor ? 0 : c];
      out[r * n + c] = static_cast<float>(acc[c]) * s + bias[c];
    }
  }
}

// ORT's own com.microsoft MatMulIntegerToFloat (uint8 x int8 -> float, 7 inputs), or an empty
// Op where this ORT cannot create it. Called from kernel constructors: never throws.
inline Ort::Op CreateFallback(const OrtKernelInfo* info) {
  if (LoopsForced()) return Ort::Op{nullptr};
  try {
    const char* names[] = {"T1", "T2", "T3"};
    const ONNXTensorElementDataType types[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
                                               ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,
                                               ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
    return Ort::Op::Create(info, "MatMulIntegerToFloat", "com.microsoft", 1, names, types, 3,
                           nullptr, 0, 7, 1);
  } catch (const std::exception&) {
    return Ort::Op{nullptr};
  }
}

// Whether input 1 (B) is a constant initializer, so it can be packed once.
inline bool ConstantWeights(const OrtApi* api, const OrtKernelInfo* info) {
  int is_constant = 0;
  const OrtValue* value = nullptr;
  OrtStatus* status = api->KernelInfoGetConstantInput_tensor(info, 1, &is_constant, &value);
  if (status != nullptr) {
    api->ReleaseStatus(status);
    return false;
  }
  return is_constant != 0;
}

// What every QuantizedLinear variant keeps per kernel: ORT's own op for the fallback, whether B
// is a constant initializer, and B packed into AMX tiles on the first call that needs them.
struct KernelBase {
  Ort::Op fallback{nullptr};
  bool constant_weights = false;
  std::once_flag packed_once;
  amx::PackedWeights packed;

  KernelBase(const OrtApi* api, const OrtKernelInfo* info)
      : fallback(CreateFallback(info)), constant_weights(ConstantWeights(api, info)) {}

  // The packed weights when this call takes the AMX path (packed once), else nullptr.
  const amx::PackedWeights* Amx(const Ort::Custom::Tensor<int8_t>& b, const Shape& s) {
    if (!constant_weights || LoopsForced() || !amx::Available()) return nullptr;
    std::call_once(packed_once, [&] { amx::Pack(b.Data(), s.k, s.n, packed); });
    return &packed;
  }

  // ORT's MatMulIntegerToFloat on this call's seven inputs, written to `out`.
  void InvokeFallback(OrtKernelContext* ctx, OrtValue* out) {
    Ort::KernelContext kc(ctx);
    const OrtValue* in[7];
    for (size_t i = 0; i < 7; ++i) in[i] = kc.GetInput(i);
    OrtValue* outs[1] = {out};
    fallback.Invoke(ctx, in, 7, outs, 1);
  }
};

}  // namespace linear
}  // namespace onnxvq
