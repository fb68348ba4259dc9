// The shared part of the QuantizedLinear kernels (plugins/README.md): input checks, the float
// epilogue f32(acc) * (a_scale * b_scale[n]) + bias[n], and the packed-B driver (AMX tiles, AVX-512
// VNNI or AVX2 panels) that runs 32-row x up-to-128-column tasks on ORT's thread pool and hands
// each finished row either to the float output or to a code-writing sink (QuantizedLinearQuantize,
// QuantizedLinearGeluQuantize).
#pragma once

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "amx_gemm.h"
#include "avx2_gemm.h"
#include "common.h"
#include "vnni_gemm.h"

// The epilogue is a float32 multiply, then an add, each rounded, as ORT's MatMulIntegerToFloat
// computes it (MLAS's scale-bias output processor): never contracted into an FMA.
#define ONNXVQ_NO_FMA __attribute__((optimize("fp-contract=off")))

namespace onnxvq {
namespace linear {

// The seven inputs every QuantizedLinear variant starts with, checked once per run.
struct Shape {
  int64_t m = 0, k = 0, n = 0;
  std::vector<int64_t> out;  // A's shape with K replaced by N
};

inline Shape Check(const Ort::Custom::Tensor<uint8_t>& a, const Ort::Custom::Tensor<int8_t>& b,
                   const Ort::Custom::Tensor<float>& a_scale,
                   const Ort::Custom::Tensor<float>& b_scale,
                   const Ort::Custom::Tensor<uint8_t>& a_zero_point,
                   const Ort::Custom::Tensor<int8_t>& b_zero_point,
                   const Ort::Custom::Tensor<float>& bias) {
  Shape s;
  const auto& bs = b.Shape();
  Require(bs.size() == 2, "B must be a 2-D [K, N] tensor");
  s.k = bs[0];
  s.n = bs[1];
  int64_t ka = 0;
  RowsOf(a.Shape(), s.m, ka);
  Require(ka == s.k, "A's last dimension must equal B's first");
  Require(s.k <= 65536, "K must be <= 65536 (int32 accumulation)");
  Require(a_scale.NumberOfElement() == 1 && a_zero_point.NumberOfElement() == 1,
          "a_scale and a_zero_point must be scalars");
  const int64_t ns = b_scale.NumberOfElement(), nz = b_zero_point.NumberOfElement();
  Require(ns == 1 || ns == s.n, "b_scale must be a scalar or [N]");
  Require(nz == 1 || nz == s.n, "b_zero_point must be a scalar or [N]");
  Require(bias.NumberOfElement() == s.n, "bias must be [N]");
  const int8_t* zb = b_zero_point.Data();
  Require(std::all_of(zb, zb + nz, [](int8_t z) { return z == 0; }),
          "b_zero_point must be 0 (symmetric weights)");
  s.out = a.Shape();
  s.out.back() = s.n;
  return s;
}

struct Epilogue {
  std::vector<int32_t> zcol;  // a_zero_point * colsum[n], [np]
  std::vector<float> scale;   // a_scale * b_scale[n], [np]
  std::vector<float> bias;    // [np]
};

inline Epilogue MakeEpilogue(const amx::PackedWeights& w, const Ort::Custom::Tensor<float>& a_scale,
                             const Ort::Custom::Tensor<float>& b_scale,
                             const Ort::Custom::Tensor<uint8_t>& a_zero_point,
                             const Ort::Custom::Tensor<float>& bias) {
  Epilogue e;
  e.zcol.assign(static_cast<size_t>(w.np), 0);
  e.scale.assign(static_cast<size_t>(w.np), 0.0f);
  e.bias.assign(static_cast<size_t>(w.np), 0.0f);
  const int32_t za = a_zero_point.Data()[0];
  const float sa = a_scale.Data()[0];
  const bool per_tensor = b_scale.NumberOfElement() == 1;
  for (int64_t c = 0; c < w.n; ++c) {
    e.zcol[c] = za * w.colsum[c];
    e.scale[c] = sa * b_scale.Data()[per_tensor ? 0 : c];
    e.bias[c] = bias.Data()[c];
  }
  return e;
}

// Which code computes a QuantizedLinear, decided per kernel (ChoosePath).
enum class Path { kAmx, kVnni, kAvx2, kOrt, kLoops };

// v[0, cols) = f32(c - zcol) * scale + bias for one row of a block (columns col0...).
ONNXVQ_AVX512_DQ ONNXVQ_NO_FMA inline void FloatRow(
    const int32_t* c, int64_t col0, int64_t cols, const Epilogue& e, float* v) {
  for (int64_t j = 0; j < cols; j += 16) {
    const int64_t left = cols - j;
    const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    const __m512i acc = _mm512_sub_epi32(_mm512_loadu_si512(c + j),
                                         _mm512_loadu_si512(e.zcol.data() + col0 + j));
    const __m512 y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc),
                                                 _mm512_loadu_ps(e.scale.data() + col0 + j)),
                                   _mm512_loadu_ps(e.bias.data() + col0 + j));
    _mm512_mask_storeu_ps(v + j, mask, y);
  }
}

// The same row 8 lanes at a time (the AVX2 path): the same IEEE multiply, then add, lane by lane,
// so the same bits. v holds `cols` floats (the float output) or 32 (a code sink's buffer). The
// empty asm on the product keeps GCC from contracting it into an FMA, as ONNXVQ_NO_FMA does, but
// lets the function inline into its caller (an optimize attribute forbids that: 12 % of the AVX2
// path's time went to the calls).
ONNXVQ_AVX2 inline void FloatRow8(const int32_t* c, int64_t col0, int64_t cols, const Epilogue& e,
                                  float* v) {
  for (int64_t j = 0; j < cols; j += 8) {
    const __m256i acc = _mm256_sub_epi32(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + j)),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.zcol.data() + col0 + j)));
    __m256 product = _mm256_mul_ps(_mm256_cvtepi32_ps(acc),
                                   _mm256_loadu_ps(e.scale.data() + col0 + j));
    __asm__("" : "+x"(product));
    const __m256 y = _mm256_add_ps(product, _mm256_loadu_ps(e.bias.data() + col0 + j));
    const int64_t left = cols - j;
    if (left >= 8) {
      _mm256_storeu_ps(v + j, y);
    } else {  // lanes [0, left) of the last vector
      const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(left)),
                                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      _mm256_maskstore_ps(v + j, mask, y);
    }
  }
}

// Sink: kFloat true -> `float* out` ([m, n]) gets the rows; false -> Codes(row, col0, cols, v)
// (AVX-512) or Codes8 (AVX2) with v 32 floats (only the first `cols` meaningful).
template <class Sink>
struct AmxTask {
  const uint8_t* x;
  const amx::PackedWeights* w;
  const Epilogue* e;
  const Sink* sink;
  int64_t m, groups, per_group;
  int64_t block_m;     // rows per task: amx::kBlockM, or avx2::kTaskRows (whole row groups)
  int64_t row_blocks;  // tasks per column group
};

// The epilogue of one finished 32 x 32 block c (row stride 32): `rows` rows from row0, the
// columns of block nb; kWide: with AVX-512 (AMX, VNNI), else AVX2 (the same bits).
template <class Sink, bool kWide>
void FinishBlock(const Sink& sink, const Epilogue& e, const int32_t* c, int64_t row0, int64_t rows,
                 int64_t nb, int64_t n) {
  alignas(64) float v[amx::kBlockN];
  const int64_t col0 = nb * amx::kBlockN, cols = std::min(amx::kBlockN, n - col0);
  for (int64_t r = 0; r < rows; ++r) {
    if constexpr (Sink::kFloat) {
      float* out = sink.out + (row0 + r) * n + col0;
      if constexpr (kWide) {
        FloatRow(c + r * amx::kBlockN, col0, cols, e, out);
      } else {
        FloatRow8(c + r * amx::kBlockN, col0, cols, e, out);
      }
    } else if constexpr (kWide) {
      FloatRow(c + r * amx::kBlockN, col0, amx::kBlockN, e, v);
      sink.Codes(row0 + r, col0, cols, v);
    } else {
      FloatRow8(c + r * amx::kBlockN, col0, amx::kBlockN, e, v);
      sink.Codes8(row0 + r, col0, cols, v);
    }
  }
}

// One task: a block of block_m rows times up to per_group column blocks. On AMX it is
// software-pipelined: while the tile unit multiplies block nb, the vector units run block nb - 1's
// epilogue (c double buffered), independent work the out-of-order core overlaps with the tdpbusd
// chain. On VNNI the vector units do both, block by block; on AVX2 too, on the rows widened to
// int16 once per task. Tasks are numbered column group by column group (row blocks fastest), so
// the tasks a thread runs in a row share one group's weights (AVX2: 4 x 32 columns x K = 384 is
// 96 KiB of int16, in L2) instead of streaming the whole matrix from L3 for every row block.
template <class Sink, Path kPath>
void RunTask(void* data, size_t index) {
  const auto& t = *static_cast<const AmxTask<Sink>*>(data);
  const auto& w = *t.w;
  const int64_t mb = static_cast<int64_t>(index) % t.row_blocks;
  const int64_t g = static_cast<int64_t>(index) / t.row_blocks;
  const int64_t row0 = mb * t.block_m, rows = std::min(t.block_m, t.m - row0);
  const int64_t nb0 = g * t.per_group;
  const int64_t nb_end = std::min(w.np / amx::kBlockN, nb0 + t.per_group);
  alignas(64) int32_t c[2][amx::kBlockM * amx::kBlockN];
  if constexpr (kPath == Path::kAvx2) {
    thread_local std::vector<int16_t, amx::CacheAligned<int16_t>> wide;
    const int16_t* a16 = avx2::WidenRows(t.x + row0 * w.k, rows, w, wide);
    for (int64_t nb = nb0; nb < nb_end; ++nb) {
      avx2::Multiply(a16, w, nb, rows, c[0]);
      FinishBlock<Sink, false>(*t.sink, *t.e, c[0], row0, rows, nb, w.n);
    }
    return;
  }
  const uint8_t* a = t.x + row0 * w.k;
  int64_t lda = w.k;
  thread_local std::vector<uint8_t> pad;
  if (rows < amx::kBlockM || w.k != w.kp) {  // a partial block: zero-padded copy of its rows
    pad.assign(static_cast<size_t>(amx::kBlockM * w.kp), 0);
    for (int64_t r = 0; r < rows; ++r) std::memcpy(pad.data() + r * w.kp, a + r * w.k, w.k);
    a = pad.data();
    lda = w.kp;
  }
  if constexpr (kPath == Path::kAmx) {
    amx::LoadConfig();
    for (int64_t nb = nb0; nb < nb_end; ++nb) {
      amx::Multiply(a, lda, w, 2 * nb);
      if (nb > nb0) FinishBlock<Sink, true>(*t.sink, *t.e, c[(nb - 1) & 1], row0, rows, nb - 1, w.n);
      amx::StoreC(c[nb & 1]);
    }
    amx::Release();
    FinishBlock<Sink, true>(*t.sink, *t.e, c[(nb_end - 1) & 1], row0, rows, nb_end - 1, w.n);
  } else {
    for (int64_t nb = nb0; nb < nb_end; ++nb) {
      vnni::Multiply(a, lda, w, nb, c[0]);
      FinishBlock<Sink, true>(*t.sink, *t.e, c[0], row0, rows, nb, w.n);
    }
  }
}

// The packed paths (AMX, VNNI, AVX2): row-block x up-to-128-column tasks on ORT's thread pool.
template <class Sink>
void RunPacked(OrtKernelContext* ctx, const uint8_t* x, int64_t m, const amx::PackedWeights& w,
               const Epilogue& e, const Sink& sink, Path path) {
  if (m == 0) return;
  const int64_t blocks = w.np / amx::kBlockN, per_group = std::min<int64_t>(blocks, 4);
  const int64_t block_m = path == Path::kAvx2 ? avx2::kTaskRows : amx::kBlockM;
  const int64_t row_blocks = (m + block_m - 1) / block_m;
  AmxTask<Sink> task{x,  &w, &e, &sink, m, (blocks + per_group - 1) / per_group, per_group,
                     block_m, row_blocks};
  const int64_t tasks = row_blocks * task.groups;
  void (*run)(void*, size_t) = path == Path::kAmx    ? &RunTask<Sink, Path::kAmx>
                               : path == Path::kVnni ? &RunTask<Sink, Path::kVnni>
                                                     : &RunTask<Sink, Path::kAvx2>;
  if (tasks == 1) {
    run(&task, 0);
  } else {
    Ort::KernelContext(ctx).ParallelFor(run, static_cast<size_t>(tasks), 0, &task);
  }
}

// ONNXVQ_NO_AMX=loops: the plain-loop fallback (also where ORT cannot create its own kernel).
inline bool LoopsForced() {
  const char* v = std::getenv("ONNXVQ_NO_AMX");
  return v != nullptr && std::string(v) == "loops";
}

// The plain-loop fallback: the float output rows of the same formula.
ONNXVQ_NO_FMA inline void Loops(const uint8_t* x, const int8_t* w, float sa, int32_t za,
                                const float* sb, bool per_tensor, const float* bias, float* out,
                                int64_t m, int64_t k, int64_t n) {
  std::vector<int32_t> acc(static_cast<size_t>(n));
  for (int64_t r = 0; r < m; ++r) {
    std::fill(acc.begin(), acc.end(), 0);
    for (int64_t kk = 0; kk < k; ++kk) {
      const int32_t v = static_cast<int32_t>(x[r * k + kk]) - za;
      for (int64_t c = 0; c < n; ++c) acc[c] += v * w[kk * n + c];
    }
    for (int64_t c = 0; c < n; ++c) {
      const float s = sa * sb[per_tensor ? 0 : c];
      out[r * n + c] = static_cast<float>(acc[c]) * s + bias[c];
    }
  }
}

// ORT's own com.microsoft MatMulIntegerToFloat (uint8 x int8 -> float, 7 inputs), or an empty
// Op where this ORT cannot create it. Called from kernel constructors: never throws.
inline Ort::Op CreateFallback(const OrtKernelInfo* info) {
  if (LoopsForced()) return Ort::Op{nullptr};
  try {
    const char* names[] = {"T1", "T2", "T3"};
    const ONNXTensorElementDataType types[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
                                               ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,
                                               ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
    return Ort::Op::Create(info, "MatMulIntegerToFloat", "com.microsoft", 1, names, types, 3,
                           nullptr, 0, 7, 1);
  } catch (const std::exception&) {
    return Ort::Op{nullptr};
  }
}

// Whether input 1 (B) is a constant initializer, so it can be packed once.
inline bool ConstantWeights(const OrtApi* api, const OrtKernelInfo* info) {
  int is_constant = 0;
  const OrtValue* value = nullptr;
  OrtStatus* status = api->KernelInfoGetConstantInput_tensor(info, 1, &is_constant, &value);
  if (status != nullptr) {
    api->ReleaseStatus(status);
    return false;
  }
  return is_constant != 0;
}

// Which code computes a QuantizedLinear, decided per kernel (the switches are read once):
// AMX tiles, else AVX-512 VNNI (both on B constant, packed once), else the exact AVX2 panels
// (avx2_gemm.h; B packed once, or on every call where it is not a constant). ORT's own
// MatMulIntegerToFloat through InvokeOp only where it is exact: a VNNI CPU (vpdpbusd) with B not
// constant; on AVX2 alone MLAS saturates (avx2_gemm.h), so it runs there only when asked for.
// ONNXVQ_NO_AMX=1 skips AMX, =avx2 skips AMX and VNNI (as ONNXVQ_NO_VNNI=1 does VNNI), =ort
// takes ORT's kernel (the old fallback, saturating on AVX2), =loops the plain loops.
inline Path ChoosePath(bool constant_weights, bool has_fallback) {
  const char* v = std::getenv("ONNXVQ_NO_AMX");
  const std::string mode = v == nullptr ? "" : v;
  if (mode == "loops") return Path::kLoops;
  if (mode == "ort") return has_fallback ? Path::kOrt : Path::kLoops;
  if (mode != "avx2") {
    if (constant_weights && v == nullptr && amx::Available()) return Path::kAmx;
    if (vnni::Available()) {
      if (constant_weights) return Path::kVnni;
      if (has_fallback) return Path::kOrt;
    }
  }
  return Path::kAvx2;
}

// What every QuantizedLinear variant keeps per kernel: ORT's own op for the fallback, the path,
// and B packed (AMX tiles, VNNI or AVX2 panels) on the first call that needs it.
struct KernelBase {
  Ort::Op fallback{nullptr};
  bool constant;  // B is an initializer: packed once, else on every call (the AVX2 path only)
  Path path;
  std::once_flag packed_once;
  amx::PackedWeights packed;

  KernelBase(const OrtApi* api, const OrtKernelInfo* info)
      : fallback(CreateFallback(info)),
        constant(ConstantWeights(api, info)),
        path(ChoosePath(constant, static_cast<bool>(fallback))) {}

  // The packed weights when this kernel takes a packed path, else nullptr: packed once, or (B
  // not constant) into `scratch` for this call.
  const amx::PackedWeights* Packed(const Ort::Custom::Tensor<int8_t>& b, const Shape& s,
                                   amx::PackedWeights& scratch) {
    if (path != Path::kAmx && path != Path::kVnni && path != Path::kAvx2) return nullptr;
    auto pack = path == Path::kAmx ? amx::Pack : path == Path::kVnni ? vnni::Pack : avx2::Pack;
    if (!constant) {
      pack(b.Data(), s.k, s.n, scratch);
      return &scratch;
    }
    std::call_once(packed_once, [&] { pack(b.Data(), s.k, s.n, packed); });
    return &packed;
  }

  // ORT's MatMulIntegerToFloat on this call's seven inputs, written to `out`.
  void InvokeFallback(OrtKernelContext* ctx, OrtValue* out) {
    Ort::KernelContext kc(ctx);
    const OrtValue* in[7];
    for (size_t i = 0; i < 7; ++i) in[i] = kc.GetInput(i);
    OrtValue* outs[1] = {out};
    fallback.Invoke(ctx, in, 7, outs, 1);
  }
};

}  // namespace linear
}  // namespace onnxvq
