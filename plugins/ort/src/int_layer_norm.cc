// IntLayerNorm (plugins/README.md): LayerNorm over the last axis of PTS codes, integers only.
//
// Per row: one pass for S1 = sum xt and S2 = sum xt^2, an exact isqrt and the row's single
// division R = 2^54 // sig, then one vectorisable pass z = rnd(num * R, 32), Y = rnd(z*gamma+beta).
// AVX-512 rows where the CPU has them (int_layer_norm_avx512.h), else the AVX2/scalar rows.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "common.h"
#include "int_layer_norm.h"
#include "int_layer_norm_avx2_float.h"
#include "int_layer_norm_avx512_out.h"
#include "int_layer_norm_cache.h"
#include "parallel.h"

namespace onnxvq {
namespace {

template <class TIn, class TOut>
void NormalizeRows512(const TIn* x, TOut* y, int64_t begin, int64_t end, const iln::RowParams& p,
                      const iln512::Consts& k) {
  float* const scratch = iln512::ScratchRow(p.channels);
  for (int64_t row = begin; row < end; ++row) {
    const iln512::RowStats st = iln512::FrontCodes(x + row * p.channels, scratch, k);
    const int64_t r = iln::RowReciprocal(st.s1, st.s2, p.channels, p.epsilon);
    iln512::Output(scratch, y + row * p.channels, st, r, k);
  }
}

template <class TIn>
struct IntLayerNorm : iln::KernelBase {
  using KernelBase::KernelBase;

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<TIn>& x,
                      const Ort::Custom::Tensor<uint8_t>& alpha,
                      const Ort::Custom::Tensor<int32_t>& gamma,
                      const Ort::Custom::Tensor<int64_t>& beta, Ort::Custom::Variadic& y) {
    return Guard("IntLayerNorm", [&] { Run(ctx, x, alpha, gamma, beta, y); });
  }

  void Run(OrtKernelContext* ctx, const Ort::Custom::Tensor<TIn>& x,
           const Ort::Custom::Tensor<uint8_t>& alpha, const Ort::Custom::Tensor<int32_t>& gamma,
           const Ort::Custom::Tensor<int64_t>& beta, Ort::Custom::Variadic& y) {
    Require(missing.empty(), "missing attribute(s) " + missing);
    int64_t rows = 0, c = 0;
    RowsOf(x.Shape(), rows, c);
    Require(c >= 1 && c <= iln::kMaxChannels, "the last axis must have 1..8192 channels");
    for (const Ort::Custom::TensorBase* t : {static_cast<const Ort::Custom::TensorBase*>(&alpha),
                                             static_cast<const Ort::Custom::TensorBase*>(&gamma),
                                             static_cast<const Ort::Custom::TensorBase*>(&beta)}) {
      Require(t->Shape().size() == 1 && t->Shape()[0] == c, "alpha, gamma, beta must have shape [C]");
    }
    const auto prep = cache.Get({alpha.Data(), gamma.Data(), beta.Data(), nullptr, c, 0, 0, 0, 0},
                                zero_point, std::is_signed_v<TIn>, epsilon, gamma_shift,
                                output_dtype);
    if (output_dtype == iln::kUint8) {
      Launch(ctx, x.Data(), y.AllocateOutput<uint8_t>(0, x.Shape()), rows, *prep);
    } else {
      Launch(ctx, x.Data(), y.AllocateOutput<int8_t>(0, x.Shape()), rows, *prep);
    }
  }

  template <class TOut>
  static void Launch(OrtKernelContext* ctx, const TIn* x, TOut* y, int64_t rows,
                     const iln::Prepared& prep) {
    const iln::RowParams& p = prep.tables->p;
    if (iln512::Available() && prep.tables->zero_point_in_range) {
      ParallelRows(ctx, rows, p.channels, [&](int64_t begin, int64_t end) {
        NormalizeRows512(x, y, begin, end, p, prep.consts);
      });
      return;
    }
#if defined(__AVX2__)
    if (prep.tables->zero_point_in_range) {
      ParallelRows(ctx, rows, p.channels, [&](int64_t begin, int64_t end) {
        float* const scratch = iln512::ScratchRow(p.channels);
        for (int64_t row = begin; row < end; ++row) {
          avx2::NormalizeRowFloat(x + row * p.channels, y + row * p.channels, scratch, p,
                                  prep.consts);
        }
      });
      return;
    }
#endif
    ParallelRows(ctx, rows, p.channels, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        iln::NormalizeRow(x + row * p.channels, y + row * p.channels, p);
      }
    });
  }
};

}  // namespace

void AddIntLayerNorm(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<IntLayerNorm<uint8_t>>("IntLayerNorm", kProvider));
  domain.Add(Ort::Custom::CreateLiteCustomOp<IntLayerNorm<int8_t>>("IntLayerNorm", kProvider));
}

}  // namespace onnxvq
