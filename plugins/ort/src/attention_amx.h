// AMX-INT8 tiles for the two integer products of both fused attentions (QLinearAttention in
// attention.cc, LogIntAttention in attention_lis.cc), on HeadData's packed operands as they are:
// K^T and V are already in AMX's B layout (four consecutive K values per 32-bit word:
// [K/4][columns][4]), so a B tile is 16 of those rows read with the array's own stride, and an A
// tile 16 rows of q, of the probability codes or of the byte weights. Every block is 32 rows
// by 32 columns (2 x 2 tiles of 16 x 16 int32, tdpbusd), as QuantizedLinear's (amx_gemm.h).
// Called between amx::LoadConfig() and amx::Release() (one task's tile state), only after
// attnamx::Available(); compiled for that target only inside these functions.
#pragma once

#include <cstdint>

#include "amx_gemm.h"
#include "attention.h"

namespace onnxvq {
namespace attnamx {

constexpr int64_t kRows = 32;  // rows of one block (two A tiles), and columns (two B tiles)

// HeadData's padding for these blocks: q's depth and the tokens in 64-byte K steps, V's columns
// and q's rows in whole 32-wide blocks (zero past D and N, so the padded products add nothing).
constexpr HeadPad kPad{amx::kTileK, amx::kTileK, kRows, kRows};

inline bool Available() { return avx512::Available() && amx::Available(); }

// c[32][32] (row stride ldc int32) = a[32 rows, stride lda bytes][64 * ksteps] times the 32
// columns of b starting at b (two 16-column tiles 64 bytes apart; K rows of quads, stride ldb
// bytes; one K step is 16 such rows). Exact int32 (the callers' sums fit: attention.h bounds).
// With one K step and `load_a` false, tiles 4-5 still hold a from the previous call (the same
// rows against the next columns): only B is loaded.
ONNXVQ_AMX_INT8 inline void Block(const uint8_t* a, int64_t lda, const int8_t* b, int64_t ldb,
                                  int64_t ksteps, int32_t* c, int64_t ldc, bool load_a = true) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kb = 0; kb < ksteps; ++kb) {
    const int8_t* bk = b + kb * 16 * ldb;
    if (load_a || ksteps > 1) {
      _tile_loadd(4, a + kb * amx::kTileK, lda);
      _tile_loadd(5, a + 16 * lda + kb * amx::kTileK, lda);
    }
    _tile_loadd(6, bk, ldb);
    _tile_loadd(7, bk + 64, ldb);
    _tile_dpbusd(0, 4, 6);
    _tile_dpbusd(1, 4, 7);
    _tile_dpbusd(2, 5, 6);
    _tile_dpbusd(3, 5, 7);
  }
  const int64_t stride = ldc * static_cast<int64_t>(sizeof(int32_t));
  _tile_stored(0, c, stride);
  _tile_stored(1, c + 16, stride);
  _tile_stored(2, c + 16 * ldc, stride);
  _tile_stored(3, c + 16 * ldc + 16, stride);
}

}  // namespace attnamx
}  // namespace onnxvq
