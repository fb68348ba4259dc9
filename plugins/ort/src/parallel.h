// Row-parallel loops on ONNX Runtime's own intra-op thread pool.
//
// Custom ops get the session's pool through KernelContext_ParallelFor (ORT >= 1.17), so the
// kernels share threads with ORT's built-in ops instead of oversubscribing the cores with their
// own. Small tensors run inline: a pool dispatch costs a few microseconds.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "onnxruntime_cxx_api.h"

namespace onnxvq {

// Below this many elements per chunk, splitting costs more than it saves.
constexpr int64_t kMinChunkElements = 16384;

template <class Body>
struct RowTask {
  const Body* body;
  int64_t rows;
  int64_t rows_per_chunk;
};

template <class Body>
void RunChunk(void* data, size_t chunk) {
  const auto* task = static_cast<const RowTask<Body>*>(data);
  const int64_t begin = static_cast<int64_t>(chunk) * task->rows_per_chunk;
  const int64_t end = std::min(task->rows, begin + task->rows_per_chunk);
  (*task->body)(begin, end);
}

// Calls body(begin, end) over disjoint row ranges covering [0, rows).
template <class Body>
void ParallelRows(OrtKernelContext* ctx, int64_t rows, int64_t elements_per_row, const Body& body) {
  if (rows <= 0) return;
  const int64_t per_chunk = std::max<int64_t>(1, kMinChunkElements / std::max<int64_t>(1, elements_per_row));
  const int64_t chunks = (rows + per_chunk - 1) / per_chunk;
  if (chunks <= 1 || ctx == nullptr) {
    body(int64_t{0}, rows);
    return;
  }
  RowTask<Body> task{&body, rows, per_chunk};
  Ort::KernelContext(ctx).ParallelFor(&RunChunk<Body>, static_cast<size_t>(chunks), 0, &task);
}

}  // namespace onnxvq
