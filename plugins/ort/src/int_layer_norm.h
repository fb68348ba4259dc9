// IntLayerNorm's scalar row and per-call tables (plugins/README.md), shared by the IntLayerNorm
// op and the fused AddIntLayerNorm: the scalar row reads the PTS codes (the reference's steps,
// for a zero point outside the README range or a build without AVX2); the vector rows
// (int_layer_norm_avx2_float.h, int_layer_norm_avx512.h) read xt.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common.h"
#include "int_layer_norm_avx2.h"

namespace onnxvq {
namespace iln {

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
  int32_t vector_channels;  // leading channels done by the AVX2 rows (a multiple of 16)
#if defined(__AVX2__)
  avx2::LnOut out{};
#endif
};

// 2^54 // max(isqrt(2^12 (C S2 - S1^2) + C^2 eps), 1): README steps 3-6.
inline int64_t RowReciprocal(int64_t s1, int64_t s2, int64_t c, int64_t epsilon) {
  const int64_t d = c * s2 - s1 * s1;
  const int64_t sig = Isqrt((d << kEpsFracBits) + c * c * epsilon);
  return (int64_t{1} << kRecipBits) / std::max<int64_t>(sig, 1);
}

// Y of one channel from xt, the row's S1 and R (README steps 7-10).
inline int64_t Code1(int32_t xt, int32_t c, int32_t s1, int64_t r, int32_t gamma, int64_t beta,
                     int out_shift, int64_t lo, int64_t hi) {
  // num * R with |num| < 2^25 as two 32x32->64 products (AVX2 has no 64-bit multiply).
  const uint64_t r_lo = static_cast<uint32_t>(r), r_hi = static_cast<uint64_t>(r) >> 32;
  const int32_t num = c * xt - s1;
  const uint64_t mag = static_cast<uint32_t>(num < 0 ? -num : num);
  const uint64_t prod = mag * r_lo + ((mag * r_hi) << 32);
  const int32_t zmag = static_cast<int32_t>((prod + (uint64_t{1} << (kZShift - 1))) >> kZShift);
  const int32_t z = num < 0 ? -zmag : zmag;
  const int64_t v = RoundShift(static_cast<int64_t>(z) * gamma + beta, out_shift);
  return std::min(std::max(v, lo), hi);
}

// Locals and __restrict matter: Y is a byte array, which may alias anything, so without them the
// compiler reloads every parameter per element.
template <class TIn, class TOut>
void NormalizeRow(const TIn* __restrict xr, TOut* __restrict yr, const RowParams& p) {
  const int32_t* __restrict mult = p.mult;
  const int32_t zp = p.zero_point, c = static_cast<int32_t>(p.channels);
  int64_t s1 = 0, s2 = 0;  // |S1| < 2^24
  for (int32_t i = 0; i < c; ++i) {
    const int32_t xt = (static_cast<int32_t>(xr[i]) - zp) * mult[i];
    s1 += xt;
    s2 += static_cast<int64_t>(xt) * xt;
  }
  const int64_t r = RowReciprocal(s1, s2, c, p.epsilon);
  for (int32_t i = 0; i < c; ++i) {
    const int32_t xt = (static_cast<int32_t>(xr[i]) - zp) * mult[i];
    yr[i] = static_cast<TOut>(Code1(xt, c, static_cast<int32_t>(s1), r, p.gamma[i], p.beta[i],
                                    p.out_shift, p.lo, p.hi));
  }
}

// The validated attributes and [C] inputs of one call, and the tables every row kernel reads
// (built once per call: 2^alpha, beta reordered for the AVX2 exact output steps, and the
// vector rows' padded copies).
struct Tables {
  std::vector<int32_t> mult, shift;
  std::vector<int64_t> beta_eo;
  RowParams p{};

  // Throws InvalidArgument (README ranges) for a bad call.
  Tables(const uint8_t* alpha, const int32_t* gamma, const int64_t* beta, int64_t c,
         int64_t zero_point, bool signed_input, int64_t epsilon, int64_t gamma_shift,
         int64_t output_dtype) {
    Require(c >= 1 && c <= kMaxChannels, "the last axis must have 1..8192 channels");
    Require(epsilon >= 0 && epsilon <= kEpsMax, "epsilon must lie in [0, 2^34]");
    Require(gamma_shift >= 0 && gamma_shift <= 24, "gamma_shift must lie in [0, 24]");
    Require(output_dtype == kUint8 || output_dtype == kInt8, "output_dtype must be 2 or 3");
    const size_t cs = static_cast<size_t>(c);
    mult.resize(cs);
    shift.resize(cs);
    for (size_t i = 0; i < cs; ++i) {
      Require(alpha[i] <= 3, "alpha values must lie in 0..3");
      shift[i] = alpha[i];
      mult[i] = int32_t{1} << shift[i];
    }
    const bool out_signed = output_dtype == kInt8;
    p = RowParams{mult.data(), gamma, beta, c, static_cast<int32_t>(zero_point), epsilon,
                  kZFracBits + static_cast<int>(gamma_shift), out_signed ? -128 : 0,
                  out_signed ? 127 : 255, 0};
    // The vector rows rely on the README's zero point range (|xt| <= 2040).
    zero_point_in_range = signed_input ? zero_point >= -128 && zero_point <= 127
                                       : zero_point >= 0 && zero_point <= 255;
#if defined(__AVX2__)
    if (zero_point_in_range) {
      p.vector_channels = static_cast<int32_t>(c & ~int64_t{15});
      beta_eo.resize(static_cast<size_t>(p.vector_channels));
      const int64_t off = avx2::QuantizeOffset(p.out_shift, p.lo);
      for (int32_t i = 0; i < p.vector_channels; ++i) {  // group of 8: even channels, then odd
        const int32_t base = i & ~7, j = i & 7;
        beta_eo[static_cast<size_t>(base + (j & 1) * 4 + j / 2)] = beta[i] + off;
      }
      p.out = avx2::LnOut{shift.data(), gamma, beta_eo.data(), p.zero_point,
                          static_cast<int32_t>(c), p.out_shift, p.lo, p.hi};
    }
#endif
  }

  bool zero_point_in_range = false;
};

}  // namespace iln
}  // namespace onnxvq
