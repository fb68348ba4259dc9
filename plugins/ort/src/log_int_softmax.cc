// LogIntSoftmax (plugins/README.md): I-BERT integer exp, then log2 codes of e_j / sum e.
//
// Per row: max, e_j = ((r_j + b)^2 + c) << n >> q_j, the sum normalised below 2^31, and the code
// k_j = #{t : E_j^2 <= S'^2 >> (2t-1)}, from one integer square root per row and two bit
// lengths and one comparison per element: no division, no float.
//
// octave_steps = 2 (log-sqrt(2) codes, README "Base sqrt(2)"): the sum is normalised below 2^15
// and k_j = #{t : E_j^4 <= S'^4 >> (2t-1)} = #{t : E_j <= U_t}, where the row's thresholds U_t
// come from two exact fourth roots (RowThresholds); the int8 step-function path takes them as
// they are, the other paths bracket each code by bit lengths and test four thresholds.
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"
#include "log_int_softmax.h"
#include "log_int_softmax_avx2.h"
#include "lis_vbmi.h"
#include "parallel.h"

namespace onnxvq {
namespace {

constexpr int64_t kMaxRow = int64_t{1} << 16;
constexpr int kSumBits = 31;
constexpr int kSumBitsSqrt2 = 15;
constexpr int kMaxKeyBits = 7;  // the threshold key table has 64 << key_bits entries

// A monotone bucket index of L in [0, 2^63): 0 for L = 0, else (bit length << m) + the m bits
// after the leading one, so every bucket spans at most a factor 1 + 2^-m of L.
inline uint32_t LimitKey(uint64_t limit, int m) {
  if (limit == 0) return 0;
  const int lz = __builtin_clzll(limit);
  const auto top = static_cast<uint32_t>((limit << lz) >> (63 - m));  // 2^m + next m bits
  return (static_cast<uint32_t>(63 - lz) << m) + top;
}

struct ExpParams {
  int64_t x0, b, c, n;
  int64_t period;  // -x0
  int64_t limit;   // 63 * period (saturated): from there on e_j = 0
  double inv_period;
  int bits, max_code, zero_code;
  int steps, sum_bits;  // octave_steps (1: log2 codes, 2: log-sqrt(2)) and S' < 2^sum_bits
};

inline uint64_t Iroot4(uint64_t v) { return IsqrtU64(IsqrtU64(v)); }  // floor(v^(1/4)), exact

// U[t] for t in 1..full (U[0] unused): E <= U[t] is README step 7's test for threshold t.
// log2: U_t = isqrt(2 S'^2) >> t. log-sqrt(2): U_{2m+1} = R1 >> m, U_{2m} = R3 >> m with
// R1 = iroot4(S'^4 >> 1), R3 = iroot4(2 S'^4) (S' < 2^15, so 2 S'^4 < 2^61).
inline void RowThresholds(uint64_t big, int steps, int full, uint32_t* u) {
  if (steps == 1) {
    const uint64_t root = IsqrtU64(2 * big * big);
    for (int t = 1; t <= full; ++t) u[t] = static_cast<uint32_t>(root >> t);
    return;
  }
  const uint64_t p4 = big * big * big * big;
  const uint64_t r1 = Iroot4(p4 >> 1), r3 = Iroot4(2 * p4);
  for (int t = 1; t <= full; ++t) u[t] = static_cast<uint32_t>((t % 2 ? r1 : r3) >> (t / 2));
}

// The log-sqrt(2) code of 1 <= E <= S' < 2^15 without a search: with 2^a <= S' < 2^(a+1) and
// 2^b <= E < 2^(b+1), 2 log2(S'/E) lies in (2(a-b) - 2, 2(a-b) + 2), so every t <= lo =
// 2(a-b) - 2 passes its test and none beyond lo + 4 does; four exact tests settle the rest.
// u[] is zero past `full` (no E >= 1 passes there) and has room up to index 31.
inline int SqrtCode(uint32_t e, int a, const uint32_t* u, int full) {
  const int b = 31 - __builtin_clz(e);
  const int lo = std::max(2 * (a - b) - 2, 0);
  const int k = lo + (e <= u[lo + 1]) + (e <= u[lo + 2]) + (e <= u[lo + 3]) + (e <= u[lo + 4]);
  return std::min(k, full);
}

inline uint8_t CodeOf(uint32_t e, int a, const uint32_t* u, const ExpParams& p) {
  if (e == 0) return static_cast<uint8_t>(p.zero_code);
  const int k = SqrtCode(e, a, u, p.max_code + 1);
  return static_cast<uint8_t>(k > p.max_code ? p.zero_code : k);
}

// Codes of a log-sqrt(2) row from its exps (README "Base sqrt(2)" steps 6-7). The per-element
// loop is SqrtCode written without tables or branches so that GCC vectorises it: the bit length
// of E from its float exponent (exact, E < 2^15) and U_t = (t odd ? R1 : R3) >> (t / 2).
void CodesFromExpsSqrt2(const int64_t* __restrict e, int64_t n, uint8_t* __restrict y,
                        const ExpParams& p) {
  uint64_t s = 0;
  for (int64_t j = 0; j < n; ++j) s += static_cast<uint64_t>(e[j]);
  const int bits = s == 0 ? 0 : 64 - __builtin_clzll(s);
  const int h = std::max(bits - kSumBitsSqrt2, 0);
  const uint64_t big = s >> h, p4 = big * big * big * big;
  const auto r1 = static_cast<uint32_t>(Iroot4(p4 >> 1));  // U_{2m+1} = r1 >> m
  const auto r3 = static_cast<uint32_t>(Iroot4(2 * p4));  // U_{2m} = r3 >> m
  const int32_t a = bits - h - 1, full = p.max_code + 1, max_code = p.max_code;
  const int32_t zero_code = p.zero_code;
  for (int64_t j = 0; j < n; ++j) {
    const auto ej = static_cast<int32_t>(e[j] >> h);
    const float ef = static_cast<float>(ej);
    int32_t fbits;
    std::memcpy(&fbits, &ef, sizeof fbits);
    const int32_t lo = std::max(2 * (a - ((fbits >> 23) - 127)) - 2, 0);
    int32_t k = lo;
    for (int32_t i = 1; i <= 4; ++i) {
      const int32_t t = lo + i;
      const uint32_t u = t > full ? 0u : ((t & 1) ? r1 : r3) >> (t >> 1);
      k += static_cast<uint32_t>(ej) <= u;
    }
    k = std::min(k, full);
    y[j] = static_cast<uint8_t>(ej == 0 || k > max_code ? zero_code : k);
  }
}

// e for u = max - x >= 0 (README steps 2-4); q >= 63 shifts every bit of p << n < 2^63 out.
inline int64_t IntExp(int64_t u, const ExpParams& p) {
  if (u >= p.limit) return 0;
  // q = u // period from a double estimate, corrected: u < 2^33 so the estimate is off by <= 1.
  int64_t q = static_cast<int64_t>(static_cast<double>(u) * p.inv_period);
  int64_t r = u - q * p.period;
  if (r < 0) {
    --q;
    r += p.period;
  } else if (r >= p.period) {
    ++q;
    r -= p.period;
  }
  const int64_t t = p.b - r;  // r_j + b with r_j = -(u mod period)
  return ((t * t + p.c) << p.n) >> q;
}

// Codes from the row's exps e[0..n): README steps 5-7.
// Plain locals and __restrict keep the uint8 stores from aliasing the parameters (see IntLayerNorm).
void CodesFromExps(const int64_t* __restrict e, int64_t n, uint8_t* __restrict y,
                   const ExpParams& p) {
  const int max_code = p.max_code, zero_code = p.zero_code;
  uint64_t s = 0;
  for (int64_t j = 0; j < n; ++j) s += static_cast<uint64_t>(e[j]);
  const int bits = s == 0 ? 0 : 64 - __builtin_clzll(s);
  const int h = std::max(bits - kSumBits, 0);
  const int64_t big = static_cast<int64_t>(s >> h);
  // k_j = #{t in 1..M+1 : E_j <= U_t} with U_t = isqrt(S'^2 >> (2t-1)) = floor(sqrt(2 S'^2) / 2^t)
  // (floor of a floor) = root >> t, root = isqrt(2 S'^2) < 2^32: one root per row. The largest
  // t with E <= root >> t is s-1 or s for s = log2(root) - log2(E); the float exponent of E gives
  // s or s-1 (int->float rounds up near powers of two), so two exact tests settle it.
  const uint32_t root = static_cast<uint32_t>(
      IsqrtU64(2 * static_cast<uint64_t>(big) * static_cast<uint64_t>(big)));
  const int32_t root_log = root == 0 ? -1 : 31 - __builtin_clz(root);
  for (int64_t j = 0; j < n; ++j) {
    const int32_t ej = static_cast<int32_t>(e[j] >> h);
    int32_t fbits;
    const float ef = static_cast<float>(ej);
    std::memcpy(&fbits, &ef, sizeof fbits);
    const int32_t s0 = root_log - ((fbits >> 23) - 127);
    const int32_t t0 = std::min(std::max(s0, 0), 31), t1 = std::min(std::max(s0 + 1, 0), 31);
    const int32_t c0 = static_cast<uint32_t>(ej) <= (root >> t0);
    const int32_t c1 = s0 + 1 <= 31 && static_cast<uint32_t>(ej) <= (root >> t1);
    const int32_t k = std::min(std::max(s0 - 1 + c0 + c1, 0), max_code + 1);
    y[j] = static_cast<uint8_t>(ej == 0 || k > max_code ? zero_code : k);
  }
}

template <class TIn>
struct LogIntSoftmax {
  std::string missing;
  ExpParams p{};
  int64_t lut[256 + 16] = {};  // int8 input: e for every u = max - x in 0..255 (zero padded)
  int64_t coarse[16] = {};     // coarse[i] = lut[16 i + 15]: the last entry of each 16-block
  int64_t lut_rev[256] = {};  // lut_rev[255 - u] = lut[u]: indexed by x directly (see RowSum)
  bool monotone = false;      // lut non-increasing: codes are a step function of x
  // start[LimitKey(L)] <= #{u : lut[u] > L} <= start[...] + 4 for every L (see BuildKeyTable);
  // key_bits < 0: no key resolution up to kMaxKeyBits achieves that, Steps searches instead.
  int key_bits = -1;
  uint16_t start[64 << kMaxKeyBits] = {};
  // planes[p][u]: bits 8p..8p+7 of lut[u] >> plane_shift (vbmi::ExpSum), nplanes of them.
  uint8_t planes[8][256] = {};
  int nplanes = 0, plane_shift = 0;

  LogIntSoftmax(const OrtApi*, const OrtKernelInfo* info) {
    p.x0 = IntAttr(info, "x0", -1, &missing);
    p.b = IntAttr(info, "b", 0, &missing);
    p.c = IntAttr(info, "c", 0, &missing);
    p.n = IntAttr(info, "n", 0, &missing);
    p.bits = static_cast<int>(IntAttr(info, "bits", 4));
    p.steps = static_cast<int>(IntAttr(info, "octave_steps", 1));
    if (Valid()) Prepare();
  }

  // The reference's constant checks (plugins/reference/softmax.py); overflow-safe in __int128.
  bool Valid() const {
    if (p.bits < 1 || p.bits > 8 || p.x0 >= 0 || p.b < 0 || p.c < 0 || p.n < 0 || p.n > 62 ||
        (p.steps != 1 && p.steps != 2)) {
      return false;
    }
    const __int128 b = p.b, e = static_cast<__int128>(p.x0) + 1 + p.b;
    const __int128 pmax = std::max(b * b, e * e) + p.c;
    const __int128 bound = (static_cast<__int128>(1) << 63) / kMaxRow;
    return pmax < bound && (pmax << p.n) < bound;
  }

  void Prepare() {
    p.period = -p.x0;
    p.limit = p.period > std::numeric_limits<int64_t>::max() / 63
                  ? std::numeric_limits<int64_t>::max()
                  : 63 * p.period;
    p.inv_period = 1.0 / static_cast<double>(p.period);
    p.max_code = std::min((1 << p.bits) - 1, 31);
    p.zero_code = std::min(1 << p.bits, 255);
    p.sum_bits = p.steps == 1 ? kSumBits : kSumBitsSqrt2;
    for (int u = 0; u < 256; ++u) lut[u] = IntExp(u, p);
    for (int u = 0; u < 256; ++u) lut_rev[255 - u] = lut[u];
    for (int i = 0; i < 16; ++i) coarse[i] = lut[16 * i + 15];
    uint64_t any = 0;
    for (int u = 0; u < 256; ++u) any |= static_cast<uint64_t>(lut[u]);
    // I-BERT's exps are (t^2 + c) << n >> q with q small: the common low zero bits (often three
    // of the six bytes) need no plane.
    plane_shift = any == 0 ? 0 : __builtin_ctzll(any);
    any >>= plane_shift;
    nplanes = any == 0 ? 0 : (64 - __builtin_clzll(any) + 7) / 8;
    for (int u = 0; u < 256; ++u) {
      for (int b = 0; b < 8; ++b) {
        planes[b][u] = static_cast<uint8_t>((static_cast<uint64_t>(lut[u]) >> plane_shift) >> (8 * b));
      }
    }
    monotone = true;
    for (int u = 1; u < 256; ++u) monotone = monotone && lut[u] <= lut[u - 1];
    if (monotone) BuildKeyTable();
  }

  // #{u < 256 : lut[u] > limit} for the non-increasing table.
  int CountAbove(uint64_t limit) const {
    return static_cast<int>(std::upper_bound(lut, lut + 256, limit,
                                             [](uint64_t l, int64_t v) {
                                               return static_cast<uint64_t>(v) <= l;
                                             }) -
                            lut);
  }

  // Each key is an interval [lo, hi] of limits; over it the count ranges from CountAbove(hi) to
  // CountAbove(lo). Store the former; the key resolution is fine enough when the spread is <= 4,
  // so Steps counts one 4-entry window of lut. Keys that no limit maps to stay unused.
  void BuildKeyTable() {
    for (int m = 1; m <= kMaxKeyBits; ++m) {
      bool fits = true;
      uint64_t lo = 0;  // key 0 is the limit 0 alone
      uint32_t key = 0;
      for (uint32_t next = (1u << m); fits && next < (64u << m); ++next) {
        const uint64_t e = next >> m, top = (next & ((1u << m) - 1)) | (1u << m);
        const uint64_t next_lo = ((top << (e - 1)) >> m);  // smallest limit of key `next`
        if (LimitKey(next_lo, m) != next || next_lo <= lo) continue;  // no limit has this key
        const int above = CountAbove(next_lo - 1);
        fits = CountAbove(lo) - above <= 4;
        start[key] = static_cast<uint16_t>(above);
        lo = next_lo;
        key = next;
      }
      const int above = CountAbove(std::numeric_limits<int64_t>::max());
      if (fits && CountAbove(lo) - above <= 4) {
        start[key] = static_cast<uint16_t>(above);
        key_bits = m;
        return;
      }
    }
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Ort::Custom::Tensor<TIn>& x,
                      Ort::Custom::Tensor<uint8_t>& y) {
    return Guard("LogIntSoftmax", [&] {
      Require(missing.empty(), "missing attribute(s) " + missing);
      Require(Valid(), "constants x0, b, c, n, bits, octave_steps out of range");
      int64_t rows = 0, n = 0;
      RowsOf(x.Shape(), rows, n);
      Require(n >= 1 && n <= kMaxRow, "rows must have 1..65536 elements");
      const TIn* in = x.Data();
      uint8_t* out = y.Allocate(x.Shape());
#if defined(__AVX2__)
      if constexpr (sizeof(TIn) == 1) {
        ParallelRows(ctx, rows, n, [&](int64_t begin, int64_t end) {
          for (int64_t row = begin; row < end; ++row) RowByValue(in + row * n, n, out + row * n);
        });
        return;
      }
#endif
      ParallelRows(ctx, rows, n, [&](int64_t begin, int64_t end) {
        std::vector<int64_t> e(static_cast<size_t>(n));
        for (int64_t row = begin; row < end; ++row) {
          Exps(in + row * n, n, e.data());
          if (p.steps == 1) {
            CodesFromExps(e.data(), n, out + row * n, p);
          } else {
            CodesFromExpsSqrt2(e.data(), n, out + row * n, p);
          }
        }
      });
    });
  }

#if defined(__AVX2__)
  // int8 rows: README steps 1-7. With a non-increasing exp table the code only steps up at
  // <= M + 1 thresholds of x (one per t in step 7), found by counting table entries above a limit;
  // otherwise the code is computed once per distinct u = max - x and looked up.
  void RowByValue(const TIn* __restrict x, int64_t n, uint8_t* __restrict y) const {
    int32_t mx = 0, mn = 0;
    avx2::MaxMin(x, n, mx, mn);
    const uint64_t s = RowSum(x, n, lut_rev + 255 - mx);
    const int bits = s == 0 ? 0 : 64 - __builtin_clzll(s);
    const int h = std::max(bits - p.sum_bits, 0);
    const uint64_t big = s >> h;
    uint32_t thresholds[40] = {};  // zero past M + 1 (SqrtCode reads up to index 31)
    RowThresholds(big, p.steps, p.max_code + 1, thresholds);
    if (monotone) {
      avx2::StepRow(x, n, Steps(mx, mx - mn, h, thresholds), y);
      return;
    }
    uint8_t bytes[256];
    if (p.steps == 2) {  // per distinct u, bracketed by bit lengths (SqrtCode)
      const int a = bits - h - 1;
      for (int u = 0; u <= mx - mn; ++u) {
        bytes[u] = CodeOf(static_cast<uint32_t>(lut[u] >> h), a, thresholds, p);
      }
      Lookup(x, n, bytes + mx, y);
      return;
    }
    const auto root = static_cast<uint32_t>(IsqrtU64(2 * big * big));
    const int32_t root_log = root == 0 ? -1 : 31 - __builtin_clz(root);
    alignas(32) int32_t code[256 + 8];
    avx2::CodeTable(lut, mx - mn + 1, h,
                    avx2::MakeCodeConsts(root, root_log, p.max_code, p.zero_code), code);
    for (int u = 0; u <= mx - mn; ++u) bytes[u] = static_cast<uint8_t>(code[u]);
    Lookup(x, n, bytes + mx, y);
  }

  // RowByValue's codes as a table by u = mx - x (Int8SoftmaxRows::Table): the exp sum from byte
  // planes, then the code of every u in 0..range by the same exact steps as RowByValue's.
  bool TableByValue(const TIn* __restrict x, int64_t n, int32_t& mx, int32_t& range,
                    uint8_t* __restrict code) const {
    if (!monotone || !vbmi::Available()) return false;
    int32_t mn = 0;
    avx2::MaxMin(x, n, mx, mn);
    range = mx - mn;
    const uint64_t s = vbmi::ExpSum(x, n, mx, planes[0], nplanes, range >= 128) << plane_shift;
    const int bits = s == 0 ? 0 : 64 - __builtin_clzll(s);
    const int h = std::max(bits - p.sum_bits, 0);
    const uint64_t big = s >> h;
    if (p.steps == 1) {  // CodesFromExps' formula per u: lut[u] <= lut[0] <= s, so E < 2^31
      const auto root = static_cast<uint32_t>(IsqrtU64(2 * big * big));
      vbmi::CodeTable(lut, range + 1, h, root, p.max_code, p.zero_code, code);
      return true;
    }
    uint32_t thresholds[40] = {};
    RowThresholds(big, p.steps, p.max_code + 1, thresholds);
    alignas(32) int8_t values[256];  // mx, mx - 1, ..., mn: the step function at every u
    for (int u = 0; u <= range; ++u) values[u] = static_cast<int8_t>(mx - u);
    avx2::StepRow(values, range + 1, Steps(mx, range, h, thresholds), code);
    return true;
  }

  // Step 7 per t: E <= U_t  <=>  lut[u] <= (U_t + 1) * 2^h - 1 (< 2^63: U_t < 2^31 for log2,
  // < 2^15 for log-sqrt(2)), a suffix u >= u_t of the table; u_t = 0 counts for every element,
  // u_t > range for none.
  avx2::StepCodes Steps(int32_t mx, int32_t range, int h, const uint32_t* thresholds) const {
    avx2::StepCodes c{};
    c.full = p.max_code + 1;
    c.zero_code = p.zero_code;
    int above[32];
    if (key_bits > 0) {
      // The key table brackets u_t within 4 entries: one window count per t, all t independent.
      for (int t = 1; t <= c.full; ++t) {
        const uint64_t limit = ((uint64_t{thresholds[t]} + 1) << h) - 1;
        const int u = start[LimitKey(limit, key_bits)];
        above[t - 1] = u + avx2::CountAbove4(lut + u, static_cast<int64_t>(limit));
      }
    } else {
      for (int t = 1; t <= c.full; ++t) {
        above[t - 1] = SearchAbove(((uint64_t{thresholds[t]} + 1) << h) - 1);
      }
    }
    // u_t only grows with t: the t with u_t = 0 come first, those with u_t > range last, so the
    // thresholds are the contiguous run between them (counted without branches).
    alignas(32) int8_t thr[64] = {};
    int passed = 0, inside = 0;
    for (int t = 1; t <= c.full; ++t) {
      const int u = above[t - 1];
      thr[t - 1] = static_cast<int8_t>(mx - u);  // code steps where x <= thr (when in range)
      passed += u == 0;
      inside += u <= range;
    }
    c.count = inside - passed;
    std::memcpy(c.thr, thr + passed, sizeof c.thr);
    c.base = inside;
    return c;
  }

  // u_t = #{u : lut[u] > limit} (a prefix: the table is non-increasing): the blocks of 16 wholly
  // above the limit, then the entries above it in the first block that is not (lut is zero
  // padded, so a limit below every entry gives 256).
  int SearchAbove(uint64_t limit) const {
    const __m256i lim = _mm256_set1_epi64x(static_cast<int64_t>(limit));
    const int block = avx2::CountAbove16(coarse, lim);
    return block == 16 ? 256 : 16 * block + avx2::CountAbove16(lut + 16 * block, lim);
  }

  // Scalar on purpose: GCC's vectorised form emulates a gather with inserts and is slower.
  __attribute__((optimize("no-tree-vectorize"))) static uint64_t RowSum(
      const TIn* __restrict x, int64_t n, const int64_t* __restrict shifted) {
    // shifted[x] = lut[max - x]: a sign-extending byte load is the whole index computation.
    uint64_t s0 = 0, s1 = 0;
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) {
      s0 += static_cast<uint64_t>(shifted[x[j]]);
      s1 += static_cast<uint64_t>(shifted[x[j + 1]]);
    }
    if (j < n) s0 += static_cast<uint64_t>(shifted[x[j]]);
    return s0 + s1;
  }

  __attribute__((optimize("no-tree-vectorize"))) static void Lookup(
      const TIn* __restrict x, int64_t n, const uint8_t* __restrict shifted, uint8_t* __restrict y) {
    for (int64_t j = 0; j < n; ++j) y[j] = shifted[-static_cast<int32_t>(x[j])];
  }
#endif

  void Exps(const TIn* __restrict x, int64_t n, int64_t* __restrict e) const {
    TIn mx = x[0];
    for (int64_t j = 1; j < n; ++j) mx = std::max(mx, x[j]);
    if constexpr (sizeof(TIn) == 1) {
      const int64_t* __restrict table = lut;
      for (int64_t j = 0; j < n; ++j) e[j] = table[static_cast<int32_t>(mx) - x[j]];
    } else {
      const ExpParams q = p;
      for (int64_t j = 0; j < n; ++j) e[j] = IntExp(static_cast<int64_t>(mx) - x[j], q);
    }
  }
};

// The int8 row kernel for other ops (LogIntAttention): the same code paths as the op itself.
class Int8Rows final : public Int8SoftmaxRows {
 public:
  Int8Rows(const OrtApi* api, const OrtKernelInfo* info) : op_(api, info) {}
  std::string Problem() const override {
    if (!op_.missing.empty()) return "missing attribute(s) " + op_.missing;
    return op_.Valid() ? "" : "constants x0, b, c, n, bits, octave_steps out of range";
  }
  void Row(const int8_t* x, int64_t n, uint8_t* y, int64_t* scratch) const override {
#if defined(__AVX2__)
    (void)scratch;
    op_.RowByValue(x, n, y);
#else
    op_.Exps(x, n, scratch);
    if (op_.p.steps == 1) {
      CodesFromExps(scratch, n, y, op_.p);
    } else {
      CodesFromExpsSqrt2(scratch, n, y, op_.p);
    }
#endif
  }
  bool Table(const int8_t* x, int64_t n, int32_t& mx, int32_t& range,
             uint8_t* code) const override {
#if defined(__AVX2__)
    return op_.TableByValue(x, n, mx, range, code);
#else
    (void)x, (void)n, (void)mx, (void)range, (void)code;
    return false;
#endif
  }

 private:
  LogIntSoftmax<int8_t> op_;
};

}  // namespace

std::unique_ptr<Int8SoftmaxRows> MakeInt8SoftmaxRows(const OrtApi* api,
                                                     const OrtKernelInfo* info) {
  return std::make_unique<Int8Rows>(api, info);
}

void AddLogIntSoftmax(Ort::CustomOpDomain& domain) {
  domain.Add(Ort::Custom::CreateLiteCustomOp<LogIntSoftmax<int8_t>>("LogIntSoftmax", kProvider));
  domain.Add(Ort::Custom::CreateLiteCustomOp<LogIntSoftmax<int32_t>>("LogIntSoftmax", kProvider));
}

}  // namespace onnxvq
