// QuantizedLinear (plugins/README.md): Y[.., n] = f32(acc) * (a_scale * b_scale[n]) + bias[n] with
// acc = sum_k (A[.., k] - a_zero_point) * B[k, n], exact in int32.
//
// On a CPU with AMX-INT8 (amx_gemm.h) the weights are packed once per kernel into tiles and
// every 32 x 32 output block is 4 tile accumulators fed by tdpbusd on the raw uint8 rows; the
// activation zero point comes back through the precomputed column sums:
//   acc = sum_k A W - a_zero_point * sum_k W
// Blocks of rows x column groups are tasks on ORT's thread pool (linear_kernel.h). Without AMX
// (or with ONNXVQ_NO_AMX set) the same tasks run on AVX-512 VNNI where the CPU has it
// (vnni_gemm.h), else on AVX2 with int16 products (avx2_gemm.h: exact, where MLAS's AVX2 kernel
// saturates). ONNXVQ_NO_AMX=ort invokes ONNX Runtime's own com.microsoft MatMulIntegerToFloat on
// the same inputs instead (also a VNNI CPU's path when B is not a constant), =loops plain loops.
#include "linear_kernel.h"

namespace onnxvq {
namespace {

struct FloatSink {
  static constexpr bool kFloat = true;
  float* out;
};

struct QuantizedLinear : linear::KernelBase {
  using KernelBase::KernelBase;

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<uint8_t>& a,
                      const Ort::Custom::Tensor<int8_t>& b,
                      const Ort::Custom::Tensor<float>& a_scale,
                      const Ort::Custom::Tensor<float>& b_scale,
                      const Ort::Custom::Tensor<uint8_t>& a_zero_point,
                      const Ort::Custom::Tensor<int8_t>& b_zero_point,
                      const Ort::Custom::Tensor<float>& bias, Ort::Custom::Tensor<float>& y) {
    return Guard("QuantizedLinear", [&] {
      const linear::Shape s = linear::Check(a, b, a_scale, b_scale, a_zero_point, b_zero_point,
                                            bias);
      amx::PackedWeights scratch;
      if (const amx::PackedWeights* w = Packed(b, s, scratch)) {
        const linear::Epilogue e = linear::MakeEpilogue(*w, a_scale, b_scale, a_zero_point, bias);
        linear::RunPacked(ctx, a.Data(), s.m, *w, e, FloatSink{y.Allocate(s.out)}, path);
      } else if (path == linear::Path::kOrt) {
        InvokeFallback(ctx, Ort::KernelContext(ctx).GetOutput(0, s.out));
      } else {
        linear::Loops(a.Data(), b.Data(), a_scale.Data()[0], a_zero_point.Data()[0],
                      b_scale.Data(), b_scale.NumberOfElement() == 1, bias.Data(),
                      y.Allocate(s.out), s.m, s.k, s.n);
      }
    });
  }
};

}  // namespace

void AddQuantizedLinear(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<QuantizedLinear>("QuantizedLinear", kProvider));
}

}  // namespace onnxvq
