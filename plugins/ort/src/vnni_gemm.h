// QuantizedLinear's path on a CPU with AVX-512 VNNI but no AMX (Cascade Lake, Ice Lake, Zen 4
// and later): a model quantized on an AMX machine and run elsewhere.
//
// B is packed once, like the AMX tiles, into 32-column panels [np / 32][kp / 4][32][4] (four
// consecutive K of one column per int32 lane, as vpdpbusd reads them) with the same column sums,
// and every 32 x 32 block of a task is avx512::DotRows (QLinearAttention's u8 x s8 loop: 8 rows
// x 2 column blocks, 16 accumulators) followed by the AMX path's epilogue. The int32 sums are
// exact, so the bits are the AMX path's (and MatMulIntegerToFloat's). It replaces ORT's own
// MatMulIntegerToFloat invoked through InvokeOp, which packs B again on every call (ORT
// pre-packs B only when it is an initializer of ORT's own node): 1.6-2.9x plain ORT at M = 197.
#pragma once

#include <cstdint>

#include "amx_gemm.h"
#include "attention_avx512.h"
#include "simd.h"

namespace onnxvq {
namespace vnni {

constexpr int64_t kPanelBytes = 32 * 4;  // one K quad of a 32-column panel

// AVX-512 VNNI with F/BW/VL/DQ (the epilogue's); ONNXVQ_NO_VNNI takes the AVX2 path instead.
inline bool Available() {
  static const bool has = [] {
    __builtin_cpu_init();
    return avx512::Available() && __builtin_cpu_supports("avx512dq") != 0 &&
           __builtin_cpu_supports("avx512vl") != 0;
  }();
  return has;
}

// p's fields as amx::Pack sets them (kp: K rounded up to 64, np: N to 32), tiles = the panels.
inline void Pack(const int8_t* w, int64_t k, int64_t n, amx::PackedWeights& p) {
  amx::PackGroupedPanels<4>(w, k, n, amx::kTileK, p, p.tiles);
}

// c[32][32] (row stride 32) = a[32][kp] (row stride lda) times panel nb. All 32 rows: a partial
// block arrives zero-padded (linear::RunTask), its extra rows are never written out.
ONNXVQ_AVX512 inline void Multiply(const uint8_t* a, int64_t lda, const amx::PackedWeights& w,
                                   int64_t nb, int32_t* c) {
  const int64_t quads = w.kp / 4;
  const int8_t* panel = w.tiles.data() + nb * quads * kPanelBytes;
  for (int64_t r = 0; r < amx::kBlockM; r += 8) {
    avx512::DotRows<8>(a + r * lda, lda, panel, quads, 2, c + r * amx::kBlockN, amx::kBlockN);
  }
}

}  // namespace vnni
}  // namespace onnxvq
