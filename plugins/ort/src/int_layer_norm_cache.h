// The per-call tables of IntLayerNorm and AddIntLayerNorm (iln::Tables, iln512::Consts), built
// once per kernel and reused while the [C] inputs and the input quantizer are byte-for-byte the
// ones they were built from: in onnxvq's models they are initializers, so after the first run a
// call costs a compare of ~13 bytes per channel instead of rebuilding ~10 arrays (which took a
// tenth of the op's time at batch 1). A changed input rebuilds them; concurrent runs share one
// immutable copy.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "add_mul_quantize.h"
#include "int_layer_norm.h"
#include "int_layer_norm_avx512.h"

namespace onnxvq {
namespace iln {

struct Prepared {
  std::vector<uint8_t> alpha;
  std::vector<int32_t> gamma;
  std::vector<int64_t> beta;
  std::vector<float> mult;  // AddIntLayerNorm's M, else empty
  float scale = 0;
  std::unique_ptr<Tables> tables;
  iln512::Consts consts;  // filled where the zero point lies in the README's range
};

// The inputs of one call; `mult` is null for IntLayerNorm.
struct TableInputs {
  const uint8_t* alpha;
  const int32_t* gamma;
  const int64_t* beta;
  const float* mult;
  int64_t channels;
  float scale, zero_point, lo, hi;  // AddIntLayerNorm's input quantizer
};

template <class T>
bool Same(const std::vector<T>& have, const T* data, int64_t n) {
  return static_cast<int64_t>(have.size()) == n &&
         (n == 0 || std::memcmp(have.data(), data, static_cast<size_t>(n) * sizeof(T)) == 0);
}

inline bool Matches(const Prepared& p, const TableInputs& in) {
  const int64_t c = in.channels;
  return Same(p.alpha, in.alpha, c) && Same(p.gamma, in.gamma, c) && Same(p.beta, in.beta, c) &&
         (in.mult == nullptr ? p.mult.empty() : Same(p.mult, in.mult, c)) &&
         std::memcmp(&p.scale, &in.scale, sizeof(float)) == 0;
}

class TableCache {
 public:
  // Tables for these inputs and the kernel's attributes (which never change); throws
  // InvalidArgument as Tables does.
  std::shared_ptr<const Prepared> Get(const TableInputs& in, int64_t zero_point, bool signed_input,
                                      int64_t epsilon, int64_t gamma_shift, int64_t output_dtype) {
    std::lock_guard<std::mutex> lock(mu_);
    if (last_ != nullptr && Matches(*last_, in)) return last_;
    const int64_t c = in.channels;
    auto p = std::make_shared<Prepared>();
    p->alpha.assign(in.alpha, in.alpha + c);
    p->gamma.assign(in.gamma, in.gamma + c);
    p->beta.assign(in.beta, in.beta + c);
    if (in.mult != nullptr) p->mult.assign(in.mult, in.mult + c);
    p->scale = in.scale;
    p->tables = std::make_unique<Tables>(p->alpha.data(), p->gamma.data(), p->beta.data(), c,
                                         zero_point, signed_input, epsilon, gamma_shift,
                                         output_dtype);
    const RowParams& rp = p->tables->p;
    if (p->tables->zero_point_in_range) {  // read by the AVX-512 rows and the AVX2 float rows
      p->consts = iln512::MakeConsts(p->tables->shift.data(), rp.gamma, rp.beta, c,
                                     rp.zero_point, rp.out_shift, rp.lo, rp.hi);
      if (in.mult != nullptr) {
        iln512::SetInputQuantizer(p->consts, p->mult.data(), in.scale, in.zero_point, in.lo,
                                  in.hi);
      }
    }
    last_ = p;
    return last_;
  }

 private:
  std::mutex mu_;
  std::shared_ptr<const Prepared> last_;
};

// What IntLayerNorm and AddIntLayerNorm both keep per kernel: their attributes and the tables.
// The constructor runs inside ORT's C API and must not throw: a missing required attribute is
// listed in `missing`, which Compute reports.
struct KernelBase {
  std::string missing;
  int64_t zero_point, epsilon, gamma_shift, output_dtype;
  TableCache cache;

  KernelBase(const OrtApi*, const OrtKernelInfo* info)
      : zero_point(IntAttr(info, "zero_point", 0, &missing)),
        epsilon(IntAttr(info, "epsilon", 0, &missing)),
        gamma_shift(IntAttr(info, "gamma_shift", 0, &missing)),
        output_dtype(IntAttr(info, "output_dtype", kUint8)) {}
};

}  // namespace iln
}  // namespace onnxvq
