// The optional additive attention bias of QLinearAttention (plugins/README.md "QLinearAttention",
// attribute `bias`): float32 [W, 1|H, N, N], added to the float scores before the softmax; W = 1 a
// bias shared over the batch (relative positions), W > 1 a window mask repeating over the batch
// with period W (Swin's shifted windows). A constant by construction, so it is a tensor attribute,
// read once when the kernel is created.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attention.h"

namespace onnxvq {

struct AttentionBias {
  std::vector<float> values;  // empty: no bias
  int64_t windows = 0, heads = 0, tokens = 0;
  std::string error;  // a malformed attribute, reported at Compute

  explicit AttentionBias(const OrtKernelInfo* info) {
    const OrtApi& api = Ort::GetApi();
    OrtAllocator* alloc = nullptr;
    OrtValue* value = nullptr;
    Ort::ThrowOnError(api.GetAllocatorWithDefaultOptions(&alloc));
    if (OrtStatus* status = api.KernelInfoGetAttribute_tensor(info, "bias", alloc, &value)) {
      api.ReleaseStatus(status);  // absent: no bias
      return;
    }
    Ort::Value tensor(value);
    auto info_t = tensor.GetTensorTypeAndShapeInfo();
    const std::vector<int64_t> shape = info_t.GetShape();
    if (info_t.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || shape.size() != 4 ||
        shape[2] != shape[3] || shape[0] < 1) {
      error = "bias must be a float32 tensor [W, 1|H, N, N]";
      return;
    }
    windows = shape[0];
    heads = shape[1];
    tokens = shape[2];
    const float* data = tensor.GetTensorData<float>();
    values.assign(data, data + info_t.GetElementCount());
  }

  bool Present() const { return !values.empty() || !error.empty(); }

  void Check(const AttentionShape& s) const {
    Require(error.empty(), error);
    if (values.empty()) return;
    Require(tokens == s.tokens && (heads == 1 || heads == s.heads),
            "bias must be [W, 1|num_heads, N, N] with N the input's tokens");
    Require(s.batch % windows == 0, "the batch must be a multiple of the bias' windows W");
  }

  // Row i of (batch item b, head h), N floats; nullptr without a bias.
  const float* Row(int64_t b, int64_t head, int64_t i) const {
    if (values.empty()) return nullptr;
    const int64_t plane = (b % windows) * heads + (heads == 1 ? 0 : head);
    return values.data() + (plane * tokens + i) * tokens;
  }
};

}  // namespace onnxvq
