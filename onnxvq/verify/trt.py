"""TensorRT engines from onnxvq models, and their check against ONNX Runtime.

TensorRT 11 builds strongly typed networks only: the precision comes from the model (explicit Q/DQ
for INT8, float16 tensors for FP16), never from builder flags. onnxvq's custom ops (domain
``com.onnxvq``) reach TensorRT as plugins: the ONNX parser looks a node it does not know up in the
plugin registry by op type, ``plugin_version`` and ``plugin_namespace``, and
``onnxvq.plugins.trt.register_plugins`` puts onnxvq's ahead-of-time Triton plugins there first.

Everything here needs the ``tensorrt`` package and an NVIDIA GPU; without either it raises
:class:`BackendUnavailable`, whose message says which is missing. Importing this module needs
neither.
"""

from __future__ import annotations

import ctypes
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from onnxvq.core.errors import BackendUnavailable, EngineBuildError, UsageError
from onnxvq.core.files import check_side_file, write_atomic
from onnxvq.core.metrics import Running
from onnxvq.plugins.trt.names import INSTALL_HINT

log = logging.getLogger(__name__)

__all__ = ["BackendUnavailable", "ComparisonReport", "EngineBuildError", "EngineConfig",
           "EngineReport", "build_engine", "compare_with_ort", "unavailable_reason"]

ORT_RUNNER = "onnxrt"
TRT_RUNNER = "tensorrt"


@dataclass(frozen=True)
class EngineConfig:
    """How to build an engine. Dynamic leading (batch) dims get one profile min/opt/max."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 64
    workspace_mib: int = 4096
    optimization_level: int = 3


@dataclass(frozen=True)
class EngineReport:
    engine_path: Path
    size_bytes: int
    build_seconds: float
    num_layers: int
    plugins: tuple[str, ...]


@dataclass(frozen=True)
class ComparisonReport:
    passed: bool
    batch: int
    max_abs_error: dict[str, float] = field(default_factory=dict)
    atol: float = 0.0
    rtol: float = 0.0


def unavailable_reason() -> str | None:
    """Why TensorRT engines cannot be built here, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as err:
        return f"the tensorrt package is not importable ({err}); {INSTALL_HINT}"
    return gpu_unavailable_reason()


def gpu_unavailable_reason() -> str | None:
    """Ask the CUDA driver directly, so the answer needs neither torch nor cuda-python."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver on this machine (libcuda.so.1 not found), so no GPU for TensorRT"
    status = libcuda.cuInit(0)
    if status != 0:
        return f"CUDA initialization failure (cuInit returned {status})"
    count = ctypes.c_int(0)
    status = libcuda.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return "the NVIDIA driver reports no CUDA device"
    return None


def require_tensorrt() -> ModuleType:
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    import tensorrt

    return tensorrt


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike | None = None,
    *,
    config: EngineConfig = EngineConfig(),
) -> EngineReport:
    """Parse `onnx_path` with onnxvq's plugins registered and write a serialized engine.

    The engine goes to `engine_path` (default: the model's path with suffix ``.engine``),
    written atomically.
    """
    onnx_path = Path(onnx_path)  # the paths first: a typo is a usage error on any machine
    if not onnx_path.is_file():
        raise UsageError(f"{onnx_path}: no such file")
    out = Path(engine_path) if engine_path is not None else onnx_path.with_suffix(".engine")
    check_side_file(out, "-o", (onnx_path,))
    trt = require_tensorrt()
    from onnxvq.plugins.trt import register_plugins

    register_plugins()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise BackendUnavailable("TensorRT cannot create a builder (CUDA initialization failure)")
    network = builder.create_network(_network_flags(trt))
    parser = _parse(trt, network, logger, onnx_path)
    builder_config = _builder_config(trt, builder, network, config)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, builder_config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT failed to build an engine (see its log)")
    data = bytes(serialized)
    write_atomic(out, data, what="engine")
    plugins = _plugin_layers(trt, network)
    del parser  # the parser owns the weights the network points at: it must outlive the build
    log.info("built %s in %.1fs (%d layers, plugins %s)", out, seconds, network.num_layers, plugins)
    return EngineReport(out, len(data), seconds, network.num_layers, plugins)


def compare_with_ort(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike | None = None,
    *,
    batch: int = 1,
    seed: int = 0,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    config: EngineConfig = EngineConfig(),
) -> ComparisonReport:
    """Run the TensorRT engine and ONNX Runtime (with onnxvq's custom ops) on the same inputs.

    Builds the engine first when `engine_path` is None. Goes through `verify.comparator`
    (Polygraphy's TrtRunner against OnnxrtRunner, SimpleCompareFunc for atol/rtol).
    """
    require_tensorrt()
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from onnxvq.core.runtime import make_session, random_inputs
    from onnxvq.plugins.trt import register_plugins
    from onnxvq.verify import comparator

    register_plugins()
    with tempfile.TemporaryDirectory(prefix="onnxvq-trt-") as tmp:
        if engine_path is None:
            engine_path = build_engine(onnx_path, Path(tmp) / "m.engine", config=config).engine_path
        feeds = random_inputs(make_session(str(onnx_path)), batch=batch, seed=seed)
        runners = [comparator.ort_runner(str(onnx_path), ORT_RUNNER),
                   TrtRunner(EngineFromBytes(Path(engine_path).read_bytes()), name=TRT_RUNNER)]
        results = comparator.run(runners, [feeds])
    verdicts = comparator.tolerance_verdicts(results, ORT_RUNNER, TRT_RUNNER, atol=atol,
                                             rtol=rtol)
    errors = {name: Running().update(comparator.concatenated(results, ORT_RUNNER, name),
                                     comparator.concatenated(results, TRT_RUNNER, name)).max_abs
              for name in comparator.output_names(results, ORT_RUNNER)}
    return ComparisonReport(all(verdicts.values()), batch, errors, atol, rtol)


def _network_flags(trt: ModuleType) -> int:
    # TensorRT 11 ignores STRONGLY_TYPED (always on); 10.x needs it to honour the model's types.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _parse(trt: ModuleType, network, logger, onnx_path: Path):
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external weight files relative to the model.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"{onnx_path}: TensorRT's ONNX parser failed: " + "; ".join(errors))
    return parser


def _builder_config(trt: ModuleType, builder, network, config: EngineConfig):
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mib << 20)
    builder_config.builder_optimization_level = config.optimization_level
    profile = _batch_profile(builder, network, config)
    if profile is not None:
        builder_config.add_optimization_profile(profile)
    return builder_config


def _batch_profile(builder, network, config: EngineConfig):
    """One profile where only leading dims may be dynamic; any other dynamic dim is refused."""
    dynamic = False
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if all(d >= 0 for d in shape):
            continue
        if any(d < 0 for d in shape[1:]):
            raise EngineBuildError(
                f"input {tensor.name} has dynamic non-batch dims {shape}; export with fixed shapes"
            )
        dynamic = True
        shapes = [[b, *shape[1:]] for b in (config.min_batch, config.opt_batch, config.max_batch)]
        profile.set_shape(tensor.name, *shapes)
    return profile if dynamic else None


def _plugin_layers(trt: ModuleType, network) -> tuple[str, ...]:
    kinds = {getattr(trt.LayerType, k, None) for k in ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3")}
    layers = (network.get_layer(i) for i in range(network.num_layers))
    return tuple(layer.name for layer in layers if layer.type in kinds - {None})
