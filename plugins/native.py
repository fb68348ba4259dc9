"""Building and locating onnxvq's native ONNX Runtime custom-op library.

The C++ sources live in ``plugins/ort/src``; ``plugins/ort/build.sh`` fetches the ORT headers
(``fetch_headers.sh``) and compiles ``libonnxvq_ort.so``. The library is never linked against an
onnxruntime .so: ORT hands it the API table when it registers the library, so one build loads into
any onnxruntime >= 1.21.

Environment:
    ONNXVQ_NO_NATIVE=1      never use the native library (every lookup answers None).
    ONNXVQ_NO_AMX           QuantizedLinear's kernel skips AMX (=1: its AVX-512 VNNI tasks where
                            the CPU has them, else its exact AVX2 tasks; =avx2: the AVX2 tasks;
                            =ort: ORT's MatMulIntegerToFloat kernel, which saturates on AVX2
                            without VNNI; =loops: plain loops); ``cpu_has_amx()`` then answers
                            False.
    ONNXVQ_ORT_LIBRARY      path of a prebuilt library to use instead of building one (it must
                            carry the stamp of these sources, else NativeBuildError).
    ONNXVQ_ORT_BUILD_DIR    where to build (default ``plugins/ort/build``).
    CXX                     the C++ compiler (default g++).

Source stamp: build.sh compiles the hash of the sources into the library (``src/stamp.cc``) and
every lookup compares it with the hash of the sources installed here (``source_stamp``). A library
built from other sources once crashed sessions (a node it did not know, a changed attribute
layout); now a mismatched build is never handed to ONNX Runtime: the lookup warns once and answers
None (the custom nodes run as their ONNX local functions; ``build=True`` rebuilds it), and an
explicit ``ONNXVQ_ORT_LIBRARY`` that does not match is a NativeBuildError.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from onnxvq.core.errors import NativeBuildError, OnnxvqError
from onnxvq.core.runtime import register_custom_op_library

log = logging.getLogger(__name__)

ORT_DIR = Path(__file__).resolve().parent / "ort"
LIBRARY_NAME = "libonnxvq_ort.so"
_BUILD_TIMEOUT_S = 900
_STAMP = re.compile(rb"onnxvq-source-stamp:([0-9a-f]{16});")
_warned: set[tuple[str, str | None]] = set()


def native_disabled() -> bool:
    return os.environ.get("ONNXVQ_NO_NATIVE", "").strip() not in ("", "0")


def cpu_has_amx() -> bool:
    """Whether this machine runs QuantizedLinear on AMX tiles: Linux lists the cpuinfo flags
    amx_tile and amx_int8 only when the CPU has them and the kernel enables their state (the
    native kernel checks CPUID and XCR0 itself). False with ONNXVQ_NO_AMX set."""
    if os.environ.get("ONNXVQ_NO_AMX") is not None:
        return False
    return {"amx_tile", "amx_int8"} <= _cpu_flags()


def cpu_has_avx512_vnni() -> bool:
    """Whether QuantizedLinear's AVX-512 VNNI tasks (B packed once, the same fused epilogues)
    run here where AMX does not: the flags the kernel's VNNI path is compiled for."""
    return {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= _cpu_flags()


def cpu_has_avx_vnni() -> bool:
    """Whether this CPU has AVX-VNNI (the VEX-encoded vpdpbusd of Alder Lake and later, without
    AVX-512), with which MLAS's uint8 x int8 GEMMs accumulate exactly in int32."""
    return "avx_vnni" in _cpu_flags()


def mlas_int8_exact() -> bool:
    """Whether ONNX Runtime's own int8 GEMMs/convolutions (MLAS) are exact on this CPU: with
    AVX-512 VNNI, AVX-VNNI or AMX-INT8 they accumulate in int32; without (plain AVX2) their
    vpmaddubsw saturates int16 pair sums (passes/ort_unsigned_weights.py, verify/gate.py)."""
    return cpu_has_avx512_vnni() or cpu_has_avx_vnni() or cpu_has_amx()


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """Linux's cpuinfo flags of the first CPU (empty where there is none to read); read once,
    since the lowering passes ask per node."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines()
                           if line.startswith("flags")), []))


def build_dir() -> Path:
    return Path(os.environ.get("ONNXVQ_ORT_BUILD_DIR") or ORT_DIR / "build")


def ort_library_path(build: bool = True) -> str | None:
    """Path of the native custom-op library, or None when there is none to use.

    None when ONNXVQ_NO_NATIVE is set, when ``build`` is False and the library is not built, or
    when the built one carries another source stamp (warned once). With ``build`` True a missing
    or out-of-date library is built first (under a file lock, so concurrent processes build it
    once); NativeBuildError says why when that is impossible, or when ONNXVQ_ORT_LIBRARY names a
    file that is not a library of these sources.
    """
    if native_disabled():
        return None
    override = os.environ.get("ONNXVQ_ORT_LIBRARY")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise NativeBuildError(f"ONNXVQ_ORT_LIBRARY={override} is not a file")
        if _stale(path):
            raise NativeBuildError(f"ONNXVQ_ORT_LIBRARY={override} {_mismatch(path)}; rebuild "
                                   "it with plugins/ort/build.sh or unset ONNXVQ_ORT_LIBRARY")
        return str(path.resolve())
    lib = build_dir() / LIBRARY_NAME
    if build and (not lib.is_file() or _stale(lib)):
        build_library()
    if not lib.is_file():
        return None
    if _stale(lib):
        _warn_once(lib)
        return None
    return str(lib)


def native_available(build: bool = False) -> bool:
    """Whether the native library can be used now (after building it when ``build`` is True)."""
    try:
        return ort_library_path(build=build) is not None
    except OnnxvqError as err:
        log.info("native custom ops unavailable: %s", err)
        return False


def build_library(*, force: bool = False) -> Path:
    """Run plugins/ort/build.sh (fetch headers + compile) and return the library's path."""
    _check_toolchain()
    out_dir = build_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / LIBRARY_NAME
    with _file_lock(out_dir / ".build.lock"):
        # Another process may have finished the build while this one waited for the lock.
        if not force and lib.is_file() and not _stale(lib):
            return lib
        log.info("building %s", lib)
        env = {**os.environ, "ONNXVQ_ORT_BUILD_DIR": str(out_dir)}
        try:
            proc = subprocess.run(
                ["bash", str(ORT_DIR / "build.sh")], env=env, capture_output=True, text=True,
                timeout=_BUILD_TIMEOUT_S, check=False,
            )
        except subprocess.TimeoutExpired as err:
            msg = f"building {LIBRARY_NAME} took over {_BUILD_TIMEOUT_S}s"
            raise NativeBuildError(msg) from err
        if proc.returncode != 0 or not lib.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise NativeBuildError(f"building {LIBRARY_NAME} failed ({proc.returncode}):\n{tail}")
    return lib


def _check_toolchain() -> None:
    if not sys.platform.startswith("linux"):
        raise NativeBuildError(f"the native library builds on Linux only, not {sys.platform}")
    if not (ORT_DIR / "build.sh").is_file():
        raise NativeBuildError(f"C++ sources not installed: {ORT_DIR / 'build.sh'} is missing")
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise NativeBuildError(f"no C++ compiler: '{cxx}' is not on PATH (set CXX)")
    headers = build_dir() / "include" / "onnxruntime_lite_custom_op.h"
    missing = [t for t in ("apt-get", "dpkg-deb") if shutil.which(t) is None]
    if not headers.is_file() and missing:
        raise NativeBuildError(
            f"ONNX Runtime headers are not in {headers.parent} and cannot be fetched "
            f"({', '.join(missing)} missing; see plugins/ort/fetch_headers.sh)"
        )


def source_stamp() -> str | None:
    """The stamp build.sh would compile into a library of the sources installed here: the first
    16 hex digits of sha256 over `sha256sum src/* build.sh exports.map` (C locale order). None
    when the sources are not installed (nothing to compare a prebuilt library with)."""
    files = [*sorted(p for p in (ORT_DIR / "src").glob("*") if p.is_file()),
             ORT_DIR / "build.sh", ORT_DIR / "exports.map"]
    if not all(f.is_file() for f in files):
        return None
    return _hash_files(tuple((str(f), *_version(f)) for f in files))


def library_stamp(lib: Path) -> str | None:
    """The source stamp compiled into `lib`; None for a library built before stamps (or any
    other file)."""
    return _read_stamp(str(lib), *_version(lib))


def _version(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=8)
def _hash_files(files: tuple[tuple[str, int, int], ...]) -> str:
    # Cached on every file's (path, mtime, size): sessions ask on every open.
    listing = "".join(f"{hashlib.sha256(Path(f).read_bytes()).hexdigest()}  "
                      f"{Path(f).relative_to(ORT_DIR).as_posix()}\n" for f, _, _ in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _read_stamp(path: str, mtime_ns: int, size: int) -> str | None:
    found = _STAMP.search(Path(path).read_bytes())
    return found.group(1).decode() if found else None


def _stale(lib: Path) -> bool:
    """True when `lib` was not built from the sources installed here (its stamp differs, or it
    has none); a library cannot be judged, and is trusted, where the sources are not installed."""
    expected = source_stamp()
    return expected is not None and library_stamp(lib) != expected


def _mismatch(lib: Path) -> str:
    found = library_stamp(lib)
    return (f"was built from other sources (stamp {found}, these sources {source_stamp()})"
            if found else "has no source stamp (built before stamps, or not by build.sh)")


def _warn_once(lib: Path) -> None:
    key = (str(lib), library_stamp(lib))
    if key not in _warned:
        _warned.add(key)
        log.warning("%s %s: not loaded, the custom ops run as their ONNX local functions; "
                    "rebuild with bash plugins/ort/build.sh", lib, _mismatch(lib))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl  # POSIX only, like the library itself; importing onnxvq.plugins must not need it

    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _installed_library() -> str | None:
    return ort_library_path(build=False)  # sessions never build: `onnxvq build`/tests do


register_custom_op_library(_installed_library)  # ORT sessions of the core load the kernels
