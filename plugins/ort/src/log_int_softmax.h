// LogIntSoftmax's int8 row kernel for the ops that embed it (LogIntAttention): rows of int8
// scores in, uint8 log codes out, exactly as the LogIntSoftmax op (plugins/README.md).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common.h"

namespace onnxvq {

class Int8SoftmaxRows {
 public:
  virtual ~Int8SoftmaxRows() = default;
  // "" when the node's x0, b, c, n, bits, octave_steps are present and valid, else why not.
  virtual std::string Problem() const = 0;
  // y[0..n) = codes of x[0..n), 1 <= n <= 65536; scratch holds n int64.
  virtual void Row(const int8_t* x, int64_t n, uint8_t* y, int64_t* scratch) const = 0;
  // The row as a table by value (AVX-512 VBMI, non-increasing exp table: every I-BERT constant
  // set): its max mx, range = mx - min, and code[u] for every u = mx - x in 0..range (x_j's code
  // is code[mx - x_j]; entries for values absent from the row are codes too, never garbage).
  // False where this path is unavailable: use Row.
  virtual bool Table(const int8_t* x, int64_t n, int32_t& mx, int32_t& range,
                     uint8_t* code) const = 0;
};

// Reads the LogIntSoftmax attributes of `info` (the embedding node's own).
std::unique_ptr<Int8SoftmaxRows> MakeInt8SoftmaxRows(const OrtApi* api, const OrtKernelInfo* info);

}  // namespace onnxvq
