#!/usr/bin/env bash
# Build onnxvq's ONNX Runtime custom-op library: <build dir>/libonnxvq_ort.so.
#
# Compiled only against the ORT headers (fetched by fetch_headers.sh), never linked against an
# onnxruntime .so: the library receives the API table in RegisterCustomOps, so it loads into
# whichever onnxruntime >= 1.21 registers it (pip's 1.31 included).
#
# Env: CXX (default g++), ONNXVQ_ORT_BUILD_DIR (default plugins/ort/build),
#      ONNXVQ_ORT_MARCH (default x86-64-v3: AVX2/FMA/BMI2, runs on every x86 CPU since ~2015).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="${ONNXVQ_ORT_BUILD_DIR:-${here}/build}"
cxx="${CXX:-g++}"
march="${ONNXVQ_ORT_MARCH:-x86-64-v3}"
command -v "${cxx}" >/dev/null || { echo "build: C++ compiler '${cxx}' not found" >&2; exit 3; }

"${here}/fetch_headers.sh"
# The sources' hash, compiled into the library (src/stamp.cc) and checked before every load
# (onnxvq.plugins.native.source_stamp computes the same): C locale, so the glob order is fixed.
stamp="$(cd "${here}" && export LC_ALL=C && sha256sum src/* build.sh exports.map | sha256sum)"
stamp="${stamp:0:16}"
rm -rf "${build}/obj"
mkdir -p "${build}/obj"
flags=(
    -std=c++17 -O3 "-march=${march}" -fPIC -fvisibility=hidden -fvisibility-inlines-hidden
    -fno-math-errno -Wall -Wextra -DORT_API_MANUAL_INIT -I"${build}/include" -I"${here}/src"
    "-DONNXVQ_SOURCE_STAMP=\"${stamp}\""
)

# One compiler per source file, in parallel; any failure fails the build.
pids=()
for src in "${here}"/src/*.cc; do
    obj="${build}/obj/$(basename "${src%.cc}").o"
    "${cxx}" "${flags[@]}" -c "${src}" -o "${obj}" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "${pid}" || status=1; done
[[ ${status} -eq 0 ]] || { echo "build: compilation failed" >&2; exit 1; }

# -z defs: every symbol must resolve now, so an accidental libonnxruntime dependency fails here.
out="${build}/libonnxvq_ort.so"
"${cxx}" -shared -fPIC -Wl,-z,defs -Wl,--as-needed -Wl,-O1 -Wl,--version-script="${here}/exports.map" "${build}"/obj/*.o \
    -o "${out}.tmp.$$" -pthread
mv -f "${out}.tmp.$$" "${out}"
echo "build: ${out} (source stamp ${stamp})" >&2
