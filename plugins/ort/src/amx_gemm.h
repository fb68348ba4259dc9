// AMX-INT8 GEMM for QuantizedLinear: uint8 rows x int8 weights -> int32, exact.
//
// The library is built for x86-64-v3, so everything here that needs AMX or AVX-512 carries a
// per-function target attribute and runs only after Available() said yes: CPUID leaf 7 EDX
// bits 24/25 (AMX-TILE, AMX-INT8) plus AVX-512 F/BW/VL/DQ, the OS's XCR0 state bits (ZMM, tile
// config and tile data), and Linux's process-wide permission for the 8 KiB tile state
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)). The tile configuration is per-thread
// register state, so every task loads it and releases it.
//
// Weights are packed once into AMX's B layout: for each 16-column block and 64-deep K block a
// 16 x 64-byte tile whose row r holds, for every column c, the four consecutive weights
// W[4r..4r+3][c] (what tdpbusd multiplies with four consecutive uint8 activations).
#pragma once

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "simd.h"

namespace onnxvq {
namespace amx {

constexpr int64_t kTileK = 64;                 // K bytes one A tile row holds
constexpr int64_t kTileBytes = 16 * kTileK;    // one 16 x 64-byte tile
constexpr int64_t kBlockM = 32, kBlockN = 32;  // 2 x 2 C tiles of 16 x 16 int32

inline int64_t RoundUp(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

inline uint64_t Xcr0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

inline bool Detect() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(1, 0, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool tiles = (d & (1u << 24)) && (d & (1u << 25));
  const unsigned avx512 = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);  // F DQ BW VL
  if (!tiles || (b & avx512) != avx512) return false;
  const uint64_t need = 0xE6 | (uint64_t{3} << 17);  // SSE/AVX/opmask/ZMM, XTILECFG/XTILEDATA
  if ((Xcr0() & need) != need) return false;
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
}

// ONNXVQ_NO_AMX (any value) takes the fallback on an AMX machine, so it can be tested there.
inline bool Available() {
  static const bool ok = std::getenv("ONNXVQ_NO_AMX") == nullptr && Detect();
  return ok;
}

// A std::vector allocator aligned to a cache line: a 32-byte load from a buffer malloc leaves at
// 16 mod 64 splits a line every other time (the AVX2 panels' weight loads, avx2_gemm.h).
template <class T>
struct CacheAligned {
  using value_type = T;
  CacheAligned() = default;
  template <class U>
  CacheAligned(const CacheAligned<U>&) {}  // NOLINT: rebinding, as std::allocator
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
  }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const CacheAligned<U>&) const { return true; }
  template <class U>
  bool operator!=(const CacheAligned<U>&) const { return false; }
};

struct PackedWeights {
  int64_t k = 0, n = 0, kp = 0, np = 0;  // kp: K rounded up to 64, np: N rounded up to 32
  std::vector<int8_t> tiles;             // [np / 16][kp / 64][16][64] (VNNI: its own panels)
  std::vector<int16_t, CacheAligned<int16_t>> pairs;  // the AVX2 path's panels (avx2_gemm.h)
  std::vector<int32_t> colsum;           // [np]: sum_k W[k][c], for the zero-point correction
};

// The VNNI and AVX2 paths' layout: panels of kCols columns (VNNI: 32; AVX2: 16, the columns one
// register block covers, so a block's weights are contiguous and every cache line it pulls in is
// used), each K group of G rows interleaved per column (G = 4: vpdpbusd quads; G = 2: vpmaddwd
// pairs): dst[panel][k / G][column][k % G] as T. Sets k, n, kp (K rounded up to kp_multiple, a
// multiple of G), np (N to 32) and colsum.
template <int G, int kCols = kBlockN, typename Vec>
inline void PackGroupedPanels(const int8_t* w, int64_t k, int64_t n, int64_t kp_multiple,
                              PackedWeights& p, Vec& dst) {
  p.k = k;
  p.n = n;
  p.kp = RoundUp(k, kp_multiple);
  p.np = RoundUp(n, kBlockN);
  dst.assign(static_cast<size_t>(p.np * p.kp), 0);
  p.colsum.assign(static_cast<size_t>(p.np), 0);
  const int64_t groups = p.kp / G, group_stride = kCols * G;
  for (int64_t kk = 0; kk < k; ++kk) {
    for (int64_t c = 0; c < n; ++c) {
      const int8_t v = w[kk * n + c];
      dst[static_cast<size_t>(((c / kCols) * groups + kk / G) * group_stride +
                              (c % kCols) * G + kk % G)] = v;
      p.colsum[static_cast<size_t>(c)] += v;
    }
  }
}

inline void Pack(const int8_t* w, int64_t k, int64_t n, PackedWeights& p) {
  p.k = k;
  p.n = n;
  p.kp = RoundUp(k, kTileK);
  p.np = RoundUp(n, kBlockN);
  p.tiles.assign(static_cast<size_t>(p.np * p.kp), 0);
  p.colsum.assign(static_cast<size_t>(p.np), 0);
  const int64_t kblocks = p.kp / kTileK;
  for (int64_t kk = 0; kk < k; ++kk) {
    const int64_t kb = kk / kTileK, r = (kk % kTileK) / 4, j = kk % 4;
    for (int64_t c = 0; c < n; ++c) {
      const int8_t v = w[kk * n + c];
      p.tiles[static_cast<size_t>((((c / 16) * kblocks + kb) * 16 + r) * 64 + (c % 16) * 4 + j)] = v;
      p.colsum[static_cast<size_t>(c)] += v;
    }
  }
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: C (2 x 2 blocks of 16 x 16 int32); 4-5: A (16 rows x 64 bytes); 6-7: B.
ONNXVQ_AMX_TILE inline void LoadConfig() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  // GCC 12's _tile_loadconfig tells the compiler it reads 8 bytes only, which lets it drop the
  // stores above as dead: the instruction is issued here with the whole struct as its operand.
  __asm__ volatile("ldtilecfg %0" : : "m"(cfg) : "memory");
}

ONNXVQ_AMX_TILE inline void Release() { _tile_release(); }

// Tiles 0-3 = a[32][kp] (row stride lda) times the 32 packed columns starting at column block
// nb (two 16-column blocks), left in the tiles (StoreC writes them out). The next K step's two
// B tiles are prefetched into L1 while this one multiplies: B streams from L2 (the whole packed
// matrix is reused by every row block), and a tile load that misses L1 stalls the tile unit;
// past the last K step the lines prefetched are the next column blocks' first tiles (or just
// past the array: a prefetch never faults, and the address is formed as an integer).
ONNXVQ_AMX_INT8 inline void Multiply(const uint8_t* a, int64_t lda, const PackedWeights& w,
                                     int64_t nb) {
  const int64_t kblocks = w.kp / kTileK;
  const int8_t* b0 = w.tiles.data() + nb * kblocks * kTileBytes;
  const int8_t* b1 = b0 + kblocks * kTileBytes;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    const uintptr_t next0 = reinterpret_cast<uintptr_t>(b0) + (kb + 1) * kTileBytes;
    const uintptr_t next1 = reinterpret_cast<uintptr_t>(b1) + (kb + 1) * kTileBytes;
    for (int64_t line = 0; line < kTileBytes; line += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(next0 + line), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(next1 + line), _MM_HINT_T0);
    }
    _tile_loadd(4, a + kb * kTileK, lda);
    _tile_loadd(5, a + 16 * lda + kb * kTileK, lda);
    _tile_loadd(6, b0 + kb * kTileBytes, 64);
    _tile_loadd(7, b1 + kb * kTileBytes, 64);
    _tile_dpbusd(0, 4, 6);
    _tile_dpbusd(1, 4, 7);
    _tile_dpbusd(2, 5, 6);
    _tile_dpbusd(3, 5, 7);
  }
}

// c[32][32] (row stride 32) = tiles 0-3, once Multiply's products are done.
ONNXVQ_AMX_TILE inline void StoreC(int32_t* c) {
  _tile_stored(0, c, 128);
  _tile_stored(1, c + 16, 128);
  _tile_stored(2, c + 16 * 32, 128);
  _tile_stored(3, c + 16 * 32 + 16, 128);
}

}  // namespace amx
}  // namespace onnxvq
