// AddMulQuantizeLinear (plugins/README.md): S = A + B and Y = saturate(rne(S * M_c / scale) + zp)
// in one pass: the --pts input of an IntLayerNorm (M_c = 2^-alpha_c) from the residual sum,
// without the separate Add, Mul and QuantizeLinear kernels and their two float round trips.
//
// Bit-exact with Add -> Mul -> QuantizeLinear: the same three IEEE float32 operations in the same
// order (a true division, as ORT's QuantizeLinear does), round half to even, then the zero point.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "add_mul_quantize.h"
#include "broadcast_rows.h"
#include "common.h"
#include "parallel.h"

namespace onnxvq {
namespace {

using amq::AmqParams;
using amq::AmqRow;

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
