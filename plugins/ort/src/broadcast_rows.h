// Row broadcasting of the fused residual ops: B repeats over A's leading dimensions.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"

namespace onnxvq {

// Rows of B: its shape, leading 1s dropped, must equal A's trailing dimensions; row r of A then
// pairs with row r % BroadcastRows(...) of B.
inline int64_t BroadcastRows(const std::vector<int64_t>& sa, const std::vector<int64_t>& sb) {
  size_t lead = 0;
  while (lead + 1 < sb.size() && sb[lead] == 1) ++lead;
  const size_t nb = sb.size() - lead;
  Require(nb >= 1 && nb <= sa.size(), "B must broadcast to A over A's leading dimensions");
  int64_t rows = 1;
  for (size_t i = 0; i < nb; ++i) {
    Require(sb[lead + i] == sa[sa.size() - nb + i],
            "B must broadcast to A over A's leading dimensions");
    if (i + 1 < nb) rows *= sb[lead + i];
  }
  return std::max<int64_t>(rows, 1);
}

}  // namespace onnxvq
