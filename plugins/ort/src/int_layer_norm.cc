// IntLayerNorm (plugins/README.md): LayerNorm over the last axis of PTS codes, integers only.
//
// Per row: one pass for S1 = sum xt and S2 = sum xt^2, an exact isqrt and the row's single
// division R = 2^54 // sig, then one vectorisable pass z = rnd(num * R, 32), Y = rnd(z*gamma+beta).
#include <algorithm>
#include <type_traits>
#include <vector>

#include "common.h"
#include "int_layer_norm_avx2.h"
#include "parallel.h"

namespace onnxvq {
namespace {

constexpr int64_t kMaxChannels = 8192;
constexpr int64_t kEpsMax = int64_t{1} << 34;
constexpr int kEpsFracBits = 12;
constexpr int kRecipBits = 54;
constexpr int kZShift = kRecipBits - 6 - 16;  // z keeps 16 fractional bits
constexpr int kZFracBits = 16;
constexpr int64_t kUint8 = 2;
constexpr int64_t kInt8 = 3;

struct RowParams {
  const int32_t* mult;  // 2^alpha_c
  const int32_t* gamma;
  const int64_t* beta;
  int64_t channels;
  int32_t zero_point;
  int64_t epsilon;
  int out_shift;  // 16 + gamma_shift
  int64_t lo, hi;
  int32_t vector_channels;  // leading channels done by the AVX2 loops (a multiple of 16)
  const int16_t* mult16;    // 2^alpha_c as int16, for the vector sums
#if defined(__AVX2__)
  avx2::LnOut out{};
#endif
};

// 2^54 // max(isqrt(2^12 (C S2 - S1^2) + C^2 eps), 1): README steps 3-6.
inline int64_t RowReciprocal(int64_t s1, int64_t s2, const RowParams& p) {
  const int64_t c = p.channels;
  const int64_t d = c * s2 - s1 * s1;
  const int64_t sig = Isqrt((d << kEpsFracBits) + c * c * p.epsilon);
  return (int64_t{1} << kRecipBits) / std::max<int64_t>(sig, 1);
}

// Locals and __restrict matter: Y is a byte array, which may alias anything, so without them the
// compiler reloads every parameter per element. Channels [0, vec) go through the AVX2 loops, the
// rest (and everything on other targets) through the scalar ones: the same integers either way.
template <class TIn, class TOut>
void NormalizeRow(const TIn* __restrict xr, TOut* __restrict yr, const RowParams& p) {
  const int32_t* __restrict mult = p.mult;
  const int32_t* __restrict gamma = p.gamma;
  const int64_t* __restrict beta = p.beta;
  const int32_t zp = p.zero_point, c = static_cast<int32_t>(p.channels);
  const int32_t vec = p.vector_channels;
  const int out_shift = p.out_shift;
  const int64_t lo = p.lo, hi = p.hi;
  int64_t s1 = 0, s2 = 0;  // |S1| < 2^24
#if defined(__AVX2__)
  if (vec > 0) avx2::RowSums(xr, vec, zp, p.mult16, s1, s2);
#endif
  for (int32_t i = vec; i < c; ++i) {
    const int32_t xt = (static_cast<int32_t>(xr[i]) - zp) * mult[i];
    s1 += xt;
    s2 += static_cast<int64_t>(xt) * xt;
  }
  const int64_t r = RowReciprocal(s1, s2, p);
#if defined(__AVX2__)
  if (vec > 0) avx2::RowOutput(xr, yr, vec, s1, r, p.out);
#endif
  // num * R with |num| < 2^25 as two 32x32->64 products (AVX2 has no 64-bit multiply).
  const uint64_t r_lo = static_cast<uint32_t>(r), r_hi = static_cast<uint64_t>(r) >> 32;
  const int32_t s1_32 = static_cast<int32_t>(s1);
  for (int32_t i = vec; i < c; ++i) {
    const int32_t xt = (static_cast<int32_t>(xr[i]) - zp) * mult[i];
    const int32_t num = c * xt - s1_32;
    const uint64_t mag = static_cast<uint32_t>(num < 0 ? -num : num);
    const uint64_t prod = mag * r_lo + ((mag * r_hi) << 32);
    const int32_t zmag = static_cast<int32_t>((prod + (uint64_t{1} << (kZShift - 1))) >> kZShift);
    const int32_t z = num < 0 ? -zmag : zmag;
    const int64_t a = static_cast<int64_t>(z) * gamma[i] + beta[i];
    const int64_t v = RoundShift(a, out_shift);
    yr[i] = static_cast<TOut>(std::min(std::max(v, lo), hi));
  }
}

template <class TIn, class TOut>
void NormalizeRows(const TIn* x, TOut* y, int64_t begin, int64_t end, const RowParams& p) {
  for (int64_t row = begin; row < end; ++row) {
    NormalizeRow(x + row * p.channels, y + row * p.channels, p);
  }
}

template <class TIn>
struct IntLayerNorm {
  std::string missing;
  int64_t zero_point, epsilon, gamma_shift, output_dtype;

  IntLayerNorm(const OrtApi*, const OrtKernelInfo* info)
      : zero_point(IntAttr(info, "zero_point", 0, &missing)),
        epsilon(IntAttr(info, "epsilon", 0, &missing)),
        gamma_shift(IntAttr(info, "gamma_shift", 0, &missing)),
        output_dtype(IntAttr(info, "output_dtype", kUint8)) {}

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
    Require(c >= 1 && c <= kMaxChannels, "the last axis must have 1..8192 channels");
    for (const Ort::Custom::TensorBase* t : {static_cast<const Ort::Custom::TensorBase*>(&alpha),
                                             static_cast<const Ort::Custom::TensorBase*>(&gamma),
                                             static_cast<const Ort::Custom::TensorBase*>(&beta)}) {
      Require(t->Shape().size() == 1 && t->Shape()[0] == c, "alpha, gamma, beta must have shape [C]");
    }
    Require(epsilon >= 0 && epsilon <= kEpsMax, "epsilon must lie in [0, 2^34]");
    Require(gamma_shift >= 0 && gamma_shift <= 24, "gamma_shift must lie in [0, 24]");
    Require(output_dtype == kUint8 || output_dtype == kInt8, "output_dtype must be 2 or 3");
    const size_t cs = static_cast<size_t>(c);
    std::vector<int32_t> mult(cs), shift(cs);
    std::vector<int16_t> mult16(cs);
    for (size_t i = 0; i < cs; ++i) {
      Require(alpha.Data()[i] <= 3, "alpha values must lie in 0..3");
      shift[i] = alpha.Data()[i];
      mult[i] = int32_t{1} << shift[i];
      mult16[i] = static_cast<int16_t>(mult[i]);
    }
    RowParams p{mult.data(), gamma.Data(), beta.Data(), c, static_cast<int32_t>(zero_point),
                epsilon, kZFracBits + static_cast<int>(gamma_shift), 0, 255, 0, mult16.data()};
    if (output_dtype == kInt8) {
      p.lo = -128;
      p.hi = 127;
    }
    std::vector<int64_t> beta_eo;
#if defined(__AVX2__)
    // The vector loops rely on the README's zero point range (|xt| <= 2040 fits int16).
    const bool zp_ok = std::is_signed_v<TIn> ? zero_point >= -128 && zero_point <= 127
                                             : zero_point >= 0 && zero_point <= 255;
    if (zp_ok) {
      p.vector_channels = static_cast<int32_t>(c & ~int64_t{15});
      beta_eo.resize(static_cast<size_t>(p.vector_channels));
      const int64_t off = avx2::QuantizeOffset(p.out_shift, p.lo);
      for (int32_t i = 0; i < p.vector_channels; ++i) {  // group of 8: even channels, then odd
        const int32_t base = i & ~7, j = i & 7;
        beta_eo[static_cast<size_t>(base + (j & 1) * 4 + j / 2)] = beta.Data()[i] + off;
      }
      p.out = avx2::LnOut{shift.data(), gamma.Data(), beta_eo.data(), p.zero_point,
                          static_cast<int32_t>(c), p.out_shift, p.lo, p.hi};
    }
#endif
    if (output_dtype == kUint8) {
      Launch(ctx, x.Data(), y.AllocateOutput<uint8_t>(0, x.Shape()), rows, p);
    } else {
      Launch(ctx, x.Data(), y.AllocateOutput<int8_t>(0, x.Shape()), rows, p);
    }
  }

  template <class TOut>
  static void Launch(OrtKernelContext* ctx, const TIn* x, TOut* y, int64_t rows,
                     const RowParams& p) {
    ParallelRows(ctx, rows, p.channels, [&](int64_t begin, int64_t end) {
      NormalizeRows(x, y, begin, end, p);
    });
  }
};

}  // namespace

void AddIntLayerNorm(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<IntLayerNorm<uint8_t>>("IntLayerNorm", kProvider));
  domain.Add(Ort::Custom::CreateLiteCustomOp<IntLayerNorm<int8_t>>("IntLayerNorm", kProvider));
}

}  // namespace onnxvq
