// Entry point ONNX Runtime calls after dlopen: registers every op of domain "com.onnxvq".
#include <exception>
#include <memory>
#include <mutex>

#include "attention.h"
#include "common.h"

namespace {

// The domain and its ops are created once per process and deliberately never freed: every
// session that registers the library points at them, and freeing them at exit could run after
// ONNX Runtime itself is gone.
OrtCustomOpDomain* Domain() {
  static OrtCustomOpDomain* domain = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    Ort::CustomOpDomain d{onnxvq::kDomain};
    onnxvq::AddIntLayerNorm(d);
    onnxvq::AddLogIntSoftmax(d);
    onnxvq::AddLogIntMatMul(d);
    onnxvq::AddQLinearAttention(d);
    onnxvq::AddLogIntAttention(d);
    onnxvq::AddGeluQuantizeLinear(d);
    onnxvq::AddAddLayerNormQuantize(d);
    onnxvq::AddAddMulQuantizeLinear(d);
    onnxvq::AddQuantizedLinear(d);
    onnxvq::AddAddIntLayerNorm(d);
    onnxvq::AddQuantizedLinearCodes(d);
    onnxvq::AddRangeStats(d);
    domain = d.release();
  });
  return domain;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    return nullptr;  // cannot even build a status: ORT older than the headers; it reports the load
  }
  Ort::InitApi(api);
  try {
    return api->AddCustomOpDomain(options, Domain());
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
}
