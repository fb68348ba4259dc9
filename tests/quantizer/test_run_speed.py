"""The calibration-speed changes of issue 12 item 2 leave every result bit-identical.

Each fast path is checked against the behaviour it replaced, switched back on by monkeypatching:
- RewritePass.run skips graphsurgeon's cleanup + toposort when it rewrote nothing;
- calibration (lean) sessions do not spin their threads between kernels;
- the memory budget infers shapes once for all observed tensors, not once per tensor;
- register_functions builds the com.onnxvq function protos once, not once per custom node;
- cleanup + toposort skip the com.onnxvq function bodies (sorted once, when added);
- range-only observers read one native RangeStats node per tensor, not three reductions;
- the canonical stage's constant folds run passes/fold_graph.fold, not graphsurgeon's own.
"""

from __future__ import annotations

import sys

import onnx
import pytest

from onnxvq.calibrate import budget
from onnxvq.core import graph as core_graph
from onnxvq.core import pipeline, runtime
from onnxvq.core.config import QuantConfig
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes import fold_constants, fold_static_shapes
from onnxvq.plugins import ops
from onnxvq.quantizer.run import quantize

NOISE = dict(calib_size=16, batch_size=8)
CONFIGS = {
    "w8a8": {},
    "percentile": dict(method="percentile"),
    "pts-lis-trt": dict(target="trt", pts=True, lis=True),
    "w4a4-omse": dict(w_bits=4, a_bits=4, method="omse"),
}


@pytest.fixture(scope="module")
def tiny() -> onnx.ModelProto:
    return build_tiny_vit(TinyViTConfig())


def _slow_paths(monkeypatch) -> None:
    """Put back what the fast paths replaced."""
    fast_run = pipeline.RewritePass.run

    def always_clean(self, graph, ctx):
        result = fast_run(self, graph, ctx)
        graph.cleanup().toposort()
        return result

    monkeypatch.setattr(pipeline.RewritePass, "run", always_clean)
    fast_options = runtime.session_options

    def spinning(**kwargs):
        so = fast_options(**kwargs)
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        return so

    monkeypatch.setattr(runtime, "session_options", spinning)

    all_at_once = budget.tensor_bytes

    def per_tensor(model, tensors):  # one inference per tensor, as before
        return {t: all_at_once(model, [t])[t] for t in tensors}

    monkeypatch.setattr(budget, "tensor_bytes", per_tensor)
    monkeypatch.setattr(ops, "_FUNCTION_NAMES", _Forgetful())  # every call builds the protos

    def recursive_tidy(graph):  # graphsurgeon's own recursion into every function
        return graph.cleanup(remove_unused_graph_inputs=False).toposort()

    for module in (core_graph, pipeline, fold_constants, fold_static_shapes):
        monkeypatch.setattr(module, "tidy", recursive_tidy)
    monkeypatch.setattr(sys.modules["onnxvq.calibrate.collect"], "_native_stats", lambda: False)
    for module in (fold_constants, fold_static_shapes):  # graphsurgeon's fold_constants
        monkeypatch.setattr(module, "fold", lambda graph: False)


class _Forgetful(dict):
    def __setitem__(self, key, value) -> None:
        pass


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_paths_give_the_same_model_bytes(tiny, monkeypatch, name):
    cfg = QuantConfig(**NOISE, **CONFIGS[name])
    fast = quantize(tiny, None, cfg)
    with monkeypatch.context() as m:
        _slow_paths(m)
        slow = quantize(tiny, None, cfg)
    assert fast.model.SerializeToString() == slow.model.SerializeToString()
    assert fast.canonical.SerializeToString() == slow.canonical.SerializeToString()
    assert fast.activation_qparams == slow.activation_qparams
    assert fast.calibration["batch_size"] == slow.calibration["batch_size"]


def test_lean_sessions_do_not_spin():
    lean = runtime.session_options(lean=True)
    assert lean.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    plain = runtime.session_options()  # latency sessions (evaluate, compare) keep ORT's default
    with pytest.raises(RuntimeError):  # ORT: the key was never set
        plain.get_session_config_entry("session.intra_op.allow_spinning")


def test_budget_infers_shapes_once_for_all_tensors(tiny, monkeypatch):
    """Without value_info every size needs inference: one call for the whole tensor list, and
    the exact per-sample bytes (65 tokens x 64 dims; 4 heads x 65 x 65 scores; float32)."""
    bare = onnx.ModelProto()
    bare.CopyFrom(tiny)
    del bare.graph.value_info[:]
    norms = [n.output[0] for n in bare.graph.node if n.op_type == "LayerNormalization"]
    softmaxes = [n.output[0] for n in bare.graph.node if n.op_type == "Softmax"]
    calls = []
    real = onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    sizes = budget.tensor_bytes(bare, [*norms, *softmaxes])
    assert len(calls) == 1
    assert {sizes[t] for t in norms} == {65 * 64 * 4.0}
    assert {sizes[t] for t in softmaxes} == {4 * 65 * 65 * 4.0}
    calls.clear()
    budget.calibration_batch(bare, 16, norms, softmaxes)
    assert len(calls) == 1


def test_functions_are_built_once_per_graph(tiny, monkeypatch):
    """19 QuantizedLinear builders on DeiT-style models each called register_functions; only the
    first may build the protos, and the graph ends with each function once, as before."""
    import onnx_graphsurgeon as gs

    calls = []
    real = ops.all_function_protos
    monkeypatch.setattr(ops, "all_function_protos", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(ops, "_FUNCTION_NAMES", {})
    graph = gs.import_onnx(tiny)
    for _ in range(5):
        ops.register_functions(graph)
    assert len(calls) == 1
    names = [(f.domain, f.name) for f in graph.functions]
    assert sorted(names) == sorted((p.domain, p.name) for p in real(max(graph.opset, ops.OPSET)))
    fresh = gs.import_onnx(tiny)  # a new graph gets its functions, from the protos built again
    ops.register_functions(fresh)
    assert len(calls) == 2 and len(fresh.functions) == len(names)


@pytest.mark.slow
@pytest.mark.realdata
def test_fast_paths_keep_the_real_model_bytes(shared_data, monkeypatch):
    """The same on the shared vit_cifar10 with 64 real calibration images (MinMax, target ort:
    QuantizedLinear lowering and its function bodies included)."""
    from onnxvq.calibrate import resolve_preprocess

    path, calib = shared_data / "models" / "vit_cifar10.onnx", shared_data / "cifar10" / "calib"
    cfg, prep = QuantConfig(calib_size=64), resolve_preprocess("cifar10-vit")
    fast = quantize(path, calib, cfg, preprocess=prep)
    with monkeypatch.context() as m:
        _slow_paths(m)
        slow = quantize(path, calib, cfg, preprocess=prep)
    assert fast.model.SerializeToString() == slow.model.SerializeToString()
    assert fast.activation_qparams == slow.activation_qparams
    assert len(fast.activation_qparams) == 50  # the input and 49 activations
