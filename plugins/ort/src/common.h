// Helpers shared by the kernels: attributes, exact integer primitives, error statuses.
// Every formula follows plugins/README.md; the numpy reference in plugins/reference/ is the
// definition the kernels are tested against bit for bit.
#pragma once

#include <cmath>
#include <cstdint>
#include <exception>
#include <string>

#include "onnxruntime_lite_custom_op.h"

namespace onnxvq {

constexpr const char* kDomain = "com.onnxvq";
constexpr const char* kProvider = "CPUExecutionProvider";

// Thrown for bad inputs/attributes; Guard() turns it into an ORT status for the caller.
struct InvalidArgument : std::exception {
  explicit InvalidArgument(std::string m) : message(std::move(m)) {}
  const char* what() const noexcept override { return message.c_str(); }
  std::string message;
};

inline void Require(bool ok, const std::string& message) {
  if (!ok) throw InvalidArgument(message);
}

// Runs a kernel body; no C++ exception may cross back into ONNX Runtime's C API.
template <class Body>
Ort::Status Guard(const char* op, Body&& body) noexcept {
  try {
    body();
    return Ort::Status{nullptr};
  } catch (const InvalidArgument& e) {
    return Ort::Status((std::string(op) + ": " + e.message).c_str(), ORT_INVALID_ARGUMENT);
  } catch (const std::exception& e) {
    return Ort::Status((std::string(op) + ": " + e.what()).c_str(), ORT_FAIL);
  }
}

// An int attribute, or `fallback` when absent. Kernel constructors must not throw (they run
// inside ORT's C API), so a required attribute that is missing is recorded in `missing` and
// reported by Compute.
inline int64_t IntAttr(const OrtKernelInfo* info, const char* name, int64_t fallback,
                       std::string* missing = nullptr) {
  int64_t value = fallback;
  OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &value);
  if (status != nullptr) {
    Ort::GetApi().ReleaseStatus(status);
    if (missing != nullptr) *missing += std::string(missing->empty() ? "" : ", ") + name;
    return fallback;
  }
  return value;
}

// rnd(a, s) = sign(a) * ((|a| + 2^(s-1)) >> s), s >= 1: rounding half away from zero.
// The magnitude is shifted as unsigned so the compiler can use logical vector shifts.
inline int64_t RoundShift(int64_t a, int s) {
  const uint64_t neg = a < 0 ? ~uint64_t{0} : 0;
  const uint64_t mag = (static_cast<uint64_t>(a) ^ neg) - neg;
  const uint64_t r = (mag + (uint64_t{1} << (s - 1))) >> s;
  return static_cast<int64_t>((r ^ neg) - neg);
}

// floor(sqrt(u)) for u < 2^63, exact: a double estimate (off by at most one here) corrected by
// integer steps; the root is < 2^31.5, so (r + 1)^2 cannot overflow.
inline uint64_t IsqrtU64(uint64_t u) {
  uint64_t r = static_cast<uint64_t>(std::sqrt(static_cast<double>(u)));
  while (r * r > u) --r;
  while ((r + 1) * (r + 1) <= u) ++r;
  return r;
}

inline int64_t Isqrt(int64_t v) {
  return v <= 0 ? 0 : static_cast<int64_t>(IsqrtU64(static_cast<uint64_t>(v)));
}

// Number of rows and row length of a tensor reduced over its last axis.
inline void RowsOf(const std::vector<int64_t>& shape, int64_t& rows, int64_t& cols) {
  Require(!shape.empty(), "input must have rank >= 1");
  cols = shape.back();
  rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
}

void AddIntLayerNorm(Ort::CustomOpDomain& domain);
void AddLogIntSoftmax(Ort::CustomOpDomain& domain);
void AddLogIntMatMul(Ort::CustomOpDomain& domain);
void AddGeluQuantizeLinear(Ort::CustomOpDomain& domain);
void AddAddLayerNormQuantize(Ort::CustomOpDomain& domain);
void AddAddMulQuantizeLinear(Ort::CustomOpDomain& domain);
void AddQuantizedLinear(Ort::CustomOpDomain& domain);
void AddAddIntLayerNorm(Ort::CustomOpDomain& domain);
void AddQuantizedLinearCodes(Ort::CustomOpDomain& domain);
void AddRangeStats(Ort::CustomOpDomain& domain);

}  // namespace onnxvq
