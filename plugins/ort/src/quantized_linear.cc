// QuantizedLinear (plugins/README.md): Y[.., n] = f32(acc) * (a_scale * b_scale[n]) + bias[n] with
// acc = sum_k (A[.., k] - a_zero_point) * B[k, n], exact in int32.
//
// On a CPU with AMX-INT8 (amx_gemm.h) the weights are packed once per kernel into tiles and
// every 32 x 32 output block is 4 tile accumulators fed by tdpbusd on the raw uint8 rows; the
// activation zero point comes back through the precomputed column sums:
//   acc = sum_k A W - a_zero_point * sum_k W
// Blocks of rows x column groups are tasks on ORT's thread pool. Without AMX (or with
// ONNXVQ_NO_AMX set) the kernel invokes ONNX Runtime's own com.microsoft MatMulIntegerToFloat
// on the same inputs (so it is exactly as fast as the op it replaced), and where ORT cannot
// create that op, or with ONNXVQ_NO_AMX=loops, plain loops compute the same formula.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "amx_gemm.h"
#include "common.h"

namespace onnxvq {
namespace {

struct Epilogue {
  const int32_t* zcol;  // a_zero_point * colsum[n], [np]
  const float* scale;   // a_scale * b_scale[n], [np]
  const float* bias;    // [np]
};

// The epilogue is a float32 multiply, then an add, each rounded, as ORT's MatMulIntegerToFloat
// computes it (MLAS's scale-bias output processor): never contracted into an FMA.
#define ONNXVQ_NO_FMA __attribute__((optimize("fp-contract=off")))

// rows x cols of the int32 block c (row stride 32) -> y (row stride ldy), columns col0...
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) ONNXVQ_NO_FMA void StoreBlock(
    const int32_t* c, int64_t rows, int64_t col0, int64_t cols, const Epilogue& e, float* y,
    int64_t ldy) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; j += 16) {
      const int64_t left = cols - j;
      const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      const __m512i acc = _mm512_sub_epi32(_mm512_loadu_si512(c + r * 32 + j),
                                           _mm512_loadu_si512(e.zcol + col0 + j));
      const __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc),
                                                   _mm512_loadu_ps(e.scale + col0 + j)),
                                     _mm512_loadu_ps(e.bias + col0 + j));
      _mm512_mask_storeu_ps(y + r * ldy + col0 + j, mask, v);
    }
  }
}

struct AmxTask {
  const uint8_t* x;
  float* y;
  const amx::PackedWeights* w;
  Epilogue e;
  int64_t m, groups, blocks_per_group;
};

void RunAmxTask(void* data, size_t index) {
  const auto& t = *static_cast<const AmxTask*>(data);
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
  const int64_t nb_end = std::min(w.np / amx::kBlockN, (g + 1) * t.blocks_per_group);
  amx::LoadConfig();
  for (int64_t nb = g * t.blocks_per_group; nb < nb_end; ++nb) {
    amx::Block(a, lda, w, 2 * nb, c);
    const int64_t col0 = nb * amx::kBlockN;
    StoreBlock(c, rows, col0, std::min(amx::kBlockN, w.n - col0), t.e,
               t.y + mb * amx::kBlockM * w.n, w.n);
  }
  amx::Release();
}

bool LoopsForced() {
  const char* v = std::getenv("ONNXVQ_NO_AMX");
  return v != nullptr && std::string(v) == "loops";
}

struct QuantizedLinear {
  Ort::Op fallback{nullptr};
  bool constant_weights = false;
  std::once_flag packed_once;
  amx::PackedWeights packed;

  QuantizedLinear(const OrtApi* api, const OrtKernelInfo* info) {
    int is_constant = 0;
    const OrtValue* value = nullptr;
    OrtStatus* status = api->KernelInfoGetConstantInput_tensor(info, 1, &is_constant, &value);
    if (status != nullptr) api->ReleaseStatus(status);
    constant_weights = status == nullptr && is_constant != 0;
    if (LoopsForced()) return;
    try {  // constructors run inside ORT's C API: no exception may leave
      const char* names[] = {"T1", "T2", "T3"};
      const ONNXTensorElementDataType types[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
                                                 ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,
                                                 ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
      fallback = Ort::Op::Create(info, "MatMulIntegerToFloat", "com.microsoft", 1, names, types,
                                 3, nullptr, 0, 7, 1);
    } catch (const std::exception&) {
      fallback = Ort::Op{nullptr};
    }
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<uint8_t>& a,
                      const Ort::Custom::Tensor<int8_t>& b,
                      const Ort::Custom::Tensor<float>& a_scale,
                      const Ort::Custom::Tensor<float>& b_scale,
                      const Ort::Custom::Tensor<uint8_t>& a_zero_point,
                      const Ort::Custom::Tensor<int8_t>& b_zero_point,
                      const Ort::Custom::Tensor<float>& bias, Ort::Custom::Tensor<float>& y) {
    return Guard("QuantizedLinear", [&] {
      const auto& bs = b.Shape();
      Require(bs.size() == 2, "B must be a 2-D [K, N] tensor");
      const int64_t k = bs[0], n = bs[1];
      int64_t m = 0, ka = 0;
      RowsOf(a.Shape(), m, ka);
      Require(ka == k, "A's last dimension must equal B's first");
      Require(k <= 65536, "K must be <= 65536 (int32 accumulation)");
      Require(a_scale.NumberOfElement() == 1 && a_zero_point.NumberOfElement() == 1,
              "a_scale and a_zero_point must be scalars");
      const int64_t ns = b_scale.NumberOfElement(), nz = b_zero_point.NumberOfElement();
      Require(ns == 1 || ns == n, "b_scale must be a scalar or [N]");
      Require(nz == 1 || nz == n, "b_zero_point must be a scalar or [N]");
      Require(bias.NumberOfElement() == n, "bias must be [N]");
      const int8_t* zb = b_zero_point.Data();
      Require(std::all_of(zb, zb + nz, [](int8_t z) { return z == 0; }),
              "b_zero_point must be 0 (symmetric weights)");
      std::vector<int64_t> shape = a.Shape();
      shape.back() = n;
      if (constant_weights && !LoopsForced() && amx::Available()) {
        std::call_once(packed_once, [&] { amx::Pack(b.Data(), k, n, packed); });
        Amx(ctx, a, a_scale, b_scale, a_zero_point, bias, y.Allocate(shape), m);
      } else if (fallback) {
        Invoke(ctx, shape);
      } else {
        Loops(a, b, a_scale, b_scale, a_zero_point, bias, y.Allocate(shape), m, k, n);
      }
    });
  }

  void Amx(OrtKernelContext* ctx, const Ort::Custom::Tensor<uint8_t>& a,
           const Ort::Custom::Tensor<float>& a_scale, const Ort::Custom::Tensor<float>& b_scale,
           const Ort::Custom::Tensor<uint8_t>& a_zero_point,
           const Ort::Custom::Tensor<float>& bias, float* out, int64_t m) const {
    if (m == 0) return;
    const int64_t np = packed.np, n = packed.n, ns = b_scale.NumberOfElement();
    std::vector<int32_t> zcol(static_cast<size_t>(np));
    std::vector<float> scale(static_cast<size_t>(np), 0.0f), bs(static_cast<size_t>(np), 0.0f);
    const int32_t za = a_zero_point.Data()[0];
    const float sa = a_scale.Data()[0];
    for (int64_t c = 0; c < np; ++c) {
      zcol[c] = za * packed.colsum[c];
      if (c < n) {
        scale[c] = sa * b_scale.Data()[ns == 1 ? 0 : c];
        bs[c] = bias.Data()[c];
      }
    }
    const int64_t blocks = np / amx::kBlockN, per_group = std::min<int64_t>(blocks, 4);
    AmxTask task{a.Data(), out, &packed, {zcol.data(), scale.data(), bs.data()}, m,
                 (blocks + per_group - 1) / per_group, per_group};
    const int64_t tasks = (m + amx::kBlockM - 1) / amx::kBlockM * task.groups;
    if (tasks == 1) {
      RunAmxTask(&task, 0);
    } else {
      Ort::KernelContext(ctx).ParallelFor(&RunAmxTask, static_cast<size_t>(tasks), 0, &task);
    }
  }

  void Invoke(OrtKernelContext* ctx, const std::vector<int64_t>& shape) {
    Ort::KernelContext kc(ctx);
    const OrtValue* in[7];
    for (size_t i = 0; i < 7; ++i) in[i] = kc.GetInput(i);
    OrtValue* out[1] = {kc.GetOutput(0, shape)};
    fallback.Invoke(ctx, in, 7, out, 1);
  }

  ONNXVQ_NO_FMA static void Loops(const Ort::Custom::Tensor<uint8_t>& a, const Ort::Custom::Tensor<int8_t>& b,
                    const Ort::Custom::Tensor<float>& a_scale,
                    const Ort::Custom::Tensor<float>& b_scale,
                    const Ort::Custom::Tensor<uint8_t>& a_zero_point,
                    const Ort::Custom::Tensor<float>& bias, float* out, int64_t m, int64_t k,
                    int64_t n) {
    const uint8_t* x = a.Data();
    const int8_t* w = b.Data();
    const int32_t za = a_zero_point.Data()[0];
    const bool per_tensor = b_scale.NumberOfElement() == 1;
    std::vector<int32_t> acc(static_cast<size_t>(n));
    for (int64_t r = 0; r < m; ++r) {
      std::fill(acc.begin(), acc.end(), 0);
      for (int64_t kk = 0; kk < k; ++kk) {
        const int32_t v = static_cast<int32_t>(x[r * k + kk]) - za;
        for (int64_t c = 0; c < n; ++c) acc[c] += v * w[kk * n + c];
      }
      for (int64_t c = 0; c < n; ++c) {
        const float s = a_scale.Data()[0] * b_scale.Data()[per_tensor ? 0 : c];
        out[r * n + c] = static_cast<float>(acc[c]) * s + bias.Data()[c];
      }
    }
  }
};

}  // namespace

void AddQuantizedLinear(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<QuantizedLinear>("QuantizedLinear", kProvider));
}

}  // namespace onnxvq
