#!/usr/bin/env bash
# Fetch the ONNX Runtime C/C++ API headers into <build dir>/include (default plugins/ort/build,
# or $ONNXVQ_ORT_BUILD_DIR).
#
# No pip wheel ships onnxruntime_c_api.h / onnxruntime_cxx_api.h / onnxruntime_lite_custom_op.h;
# Debian trixie's libonnxruntime-dev does (1.21). We read a one-line trixie sources list from a
# private apt state directory so the machine's own apt sources, lists and caches stay untouched,
# download only the .deb (apt checks it against the signed Release file) and unpack the headers.
# Only headers are used: the library gets the API at run time from the onnxruntime that loads it.
#
# Idempotent: does nothing when the headers are already there.
# Env: ONNXVQ_ORT_HEADERS_SUITE (default trixie), ONNXVQ_DEBIAN_MIRROR (default deb.debian.org).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${ONNXVQ_ORT_BUILD_DIR:-${here}/build}/include"
if [[ -f "${dest}/onnxruntime_lite_custom_op.h" && -f "${dest}/onnxruntime_cxx_api.h" ]]; then
    exit 0
fi
for tool in apt-get dpkg-deb; do
    command -v "${tool}" >/dev/null || { echo "fetch_headers: ${tool} not found" >&2; exit 3; }
done

suite="${ONNXVQ_ORT_HEADERS_SUITE:-trixie}"
mirror="${ONNXVQ_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
mkdir -p "${work}/lists/partial" "${work}/cache/archives/partial" "${work}/deb"
echo "deb [signed-by=${keyring}] ${mirror} ${suite} main" > "${work}/sources.list"

apt_opts=(
    -q
    -o "Dir::Etc::sourcelist=${work}/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=${work}/lists"
    -o "Dir::Cache=${work}/cache"
    -o "APT::Sandbox::User=$(id -un)"
)
apt-get "${apt_opts[@]}" update >&2
(cd "${work}/deb" && apt-get "${apt_opts[@]}" download libonnxruntime-dev >&2)
deb="$(ls "${work}"/deb/libonnxruntime-dev_*.deb)"
dpkg-deb -x "${deb}" "${work}/root"

mkdir -p "${dest}.tmp"
cp "${work}"/root/usr/include/onnxruntime/*.h "${dest}.tmp/"
basename "${deb}" > "${dest}.tmp/SOURCE"
rm -rf "${dest}"
mv "${dest}.tmp" "${dest}"
echo "fetch_headers: $(cat "${dest}/SOURCE") -> ${dest}" >&2
