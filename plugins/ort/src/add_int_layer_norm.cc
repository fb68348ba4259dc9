// AddIntLayerNorm (plugins/README.md): the --pts residual norm in one pass over memory. Per row:
// S = A + B (written: the next residual reads it), the PTS codes of S exactly as
// AddMulQuantizeLinear makes them, and IntLayerNorm of those codes; the codes themselves never
// leave the core (the unfused pair writes them and reads them back in a second kernel).
//
// Bit-exact with AddMulQuantizeLinear -> IntLayerNorm: the AVX-512 and AVX2 rows repeat the same
// float32 operations and integer steps (int_layer_norm_avx512.h, int_layer_norm_avx2_float.h);
// elsewhere the two ops' own scalar rows run back to back on a per-thread row of codes.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "add_mul_quantize.h"
#include "broadcast_rows.h"
#include "common.h"
#include "int_layer_norm.h"
#include "int_layer_norm_avx2_float.h"
#include "int_layer_norm_avx512_out.h"
#include "int_layer_norm_cache.h"
#include "parallel.h"

namespace onnxvq {
namespace {

struct Rows {
  const float* a;
  const float* b;
  float* s;
  int64_t channels, b_rows;
};

template <class TIn, class TOut>
void PortableRows(const Rows& io, TOut* y, int64_t begin, int64_t end, const amq::AmqParams& q,
                  const iln::RowParams& p) {
  const int64_t c = io.channels;
  std::vector<TIn> codes(static_cast<size_t>(c));
  for (int64_t r = begin; r < end; ++r) {
    amq::AmqRow(io.a + r * c, io.b + (r % io.b_rows) * c, io.s + r * c, codes.data(), q);
    iln::NormalizeRow(codes.data(), y + r * c, p);
  }
}

template <class TOut>
void Rows512(const Rows& io, TOut* y, int64_t begin, int64_t end, const iln512::Consts& k,
             int64_t epsilon) {
  const int64_t c = io.channels;
  float* const scratch = iln512::ScratchRow(c);
  for (int64_t r = begin; r < end; ++r) {
    const iln512::RowStats st = iln512::FrontSum(io.a + r * c, io.b + (r % io.b_rows) * c,
                                                 io.s + r * c, scratch, k);
    const int64_t rcp = iln::RowReciprocal(st.s1, st.s2, c, epsilon);
    const int64_t next = r + 1 < end ? r + 1 : r;
    iln512::Output(scratch, y + r * c, st, rcp, k, io.a + next * c,
                   io.b + (next % io.b_rows) * c);
  }
}

#if defined(__AVX2__)
template <class TIn, class TOut>
void RowsAvx2(const Rows& io, TOut* y, int64_t begin, int64_t end, const amq::AmqParams& q,
              const iln::RowParams& p, const iln512::Consts& k) {
  const int64_t c = io.channels;
  float* const scratch = iln512::ScratchRow(c);
  for (int64_t r = begin; r < end; ++r) {
    avx2::AddNormalizeRowFloat<TIn>(io.a + r * c, io.b + (r % io.b_rows) * c, io.s + r * c,
                                    y + r * c, scratch, q, p, k);
  }
}
#endif

template <class TIn>
struct AddIntLayerNormKernel : iln::KernelBase {
  using KernelBase::KernelBase;

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<float>& a,
                      const Ort::Custom::Tensor<float>& b, const Ort::Custom::Tensor<float>& m,
                      const Ort::Custom::Tensor<float>& x_scale,
                      const Ort::Custom::Tensor<TIn>& x_zero_point,
                      const Ort::Custom::Tensor<uint8_t>& alpha,
                      const Ort::Custom::Tensor<int32_t>& gamma,
                      const Ort::Custom::Tensor<int64_t>& beta, Ort::Custom::Variadic& out) {
    return Guard("AddIntLayerNorm", [&] {
      Require(missing.empty(), "missing attribute(s) " + missing);
      int64_t rows = 0, c = 0;
      RowsOf(a.Shape(), rows, c);
      Require(c >= 1 && c <= iln::kMaxChannels, "the last axis must have 1..8192 channels");
      Require(m.NumberOfElement() == c && alpha.NumberOfElement() == c &&
              gamma.NumberOfElement() == c && beta.NumberOfElement() == c,
              "M, alpha, gamma, beta must have C elements");
      Require(x_scale.NumberOfElement() == 1 && x_zero_point.NumberOfElement() == 1,
              "x_scale and x_zero_point must be scalars");
      const float s = x_scale.Data()[0];
      Require(s > 0 && std::isfinite(s), "x_scale must be positive and finite");
      Require(x_zero_point.Data()[0] == zero_point, "zero_point must equal x_zero_point");
      const bool sgn = std::is_signed_v<TIn>;
      const float zp = static_cast<float>(zero_point), lo = sgn ? -128.0f : 0.0f;
      const float hi = sgn ? 127.0f : 255.0f;
      const auto prep = cache.Get({alpha.Data(), gamma.Data(), beta.Data(), m.Data(), c, s, zp,
                                   lo, hi},
                                  zero_point, sgn, epsilon, gamma_shift, output_dtype);
      const amq::AmqParams q{prep->mult.data(), c, BroadcastRows(a.Shape(), b.Shape()), s, zp,
                             lo, hi};
      Rows io{a.Data(), b.Data(), out.AllocateOutput<float>(1, a.Shape()), c, q.b_rows};
      if (output_dtype == iln::kUint8) {
        Launch(ctx, io, out.AllocateOutput<uint8_t>(0, a.Shape()), rows, q, *prep);
      } else {
        Launch(ctx, io, out.AllocateOutput<int8_t>(0, a.Shape()), rows, q, *prep);
      }
    });
  }

  template <class TOut>
  static void Launch(OrtKernelContext* ctx, const Rows& io, TOut* y, int64_t rows,
                     const amq::AmqParams& q, const iln::Prepared& prep) {
    const iln::RowParams& p = prep.tables->p;
    if (iln512::Available()) {
      ParallelRows(ctx, rows, p.channels, [&](int64_t begin, int64_t end) {
        Rows512(io, y, begin, end, prep.consts, p.epsilon);
      });
      return;
    }
#if defined(__AVX2__)
    if (prep.tables->zero_point_in_range) {
      ParallelRows(ctx, rows, p.channels, [&](int64_t begin, int64_t end) {
        RowsAvx2<TIn>(io, y, begin, end, q, p, prep.consts);
      });
      return;
    }
#endif
    ParallelRows(ctx, rows, p.channels, [&](int64_t begin, int64_t end) {
      PortableRows<TIn>(io, y, begin, end, q, p);
    });
  }
};

}  // namespace

void AddAddIntLayerNorm(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<AddIntLayerNormKernel<uint8_t>>("AddIntLayerNorm",
                                                                       kProvider));
  domain.Add(Ort::Custom::CreateLiteCustomOp<AddIntLayerNormKernel<int8_t>>("AddIntLayerNorm",
                                                                      kProvider));
}

}  // namespace onnxvq
