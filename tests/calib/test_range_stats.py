"""RangeStats (plugins/ort/src/range_stats.cc): calibration's min/max/finiteness in one native node.

The kernel's min and max equal numpy's bit for bit on any length (vector body and scalar tail),
its `l1` is NaN exactly when an element is not finite (also an Inf that min/max would show, a NaN
they would drop) and finite for a large finite tensor; collect() with it gives the very ranges
of the three standard reductions it replaces, and falls back to them when the library has no
RangeStats kernel.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxvq.calibrate import MinMaxObserver, collect
from onnxvq.calibrate.collect import expose
from onnxvq.core.config import QuantConfig
from onnxvq.core.runtime import make_session
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.plugins import native_available
from onnxvq.quantizer.run import quantize

pytestmark = pytest.mark.skipif(not native_available(), reason="native custom-op library not built")
collect_module = sys.modules["onnxvq.calibrate.collect"]  # the package's `collect` is the function


def _stats_model() -> onnx.ModelProto:
    node = helper.make_node("RangeStats", ["x"], ["y"], domain="com.onnxvq")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    return helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.onnxvq", 1)])


@pytest.fixture(scope="module")
def stats():
    sess = make_session(_stats_model())
    return lambda x: sess.run(None, {"x": x})[0].tolist()


@pytest.mark.parametrize("n", [1, 7, 31, 32, 33, 95, 4096 + 13])
def test_min_and_max_are_numpys_bits(stats, n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 3
    x[n // 2] = -7.5  # an extreme in the vector body or the tail
    lo, hi, l1 = stats(x)
    assert (lo, hi) == (float(x.min()), float(x.max()))
    assert l1 == pytest.approx(float(np.abs(x.astype(np.float64)).sum()), rel=1e-5)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", [0, 40, 65])  # vector body, later vector step, scalar tail
def test_a_non_finite_element_makes_l1_nan(stats, bad, where):
    x = np.ones((2, 33), np.float32)
    x.reshape(-1)[where] = bad
    assert np.isnan(stats(x)[2])


def test_large_finite_values_stay_finite_and_empty_is_the_identities(stats):
    big = np.full(1000, 3e38, np.float32)  # the float sum overflows; l1 is clamped instead
    lo, hi, l1 = stats(big)
    assert (lo, hi) == (float(big[0]),) * 2 and l1 == np.finfo(np.float32).max
    lo, hi, l1 = stats(np.zeros((0, 4), np.float32))
    assert lo == np.inf and hi == -np.inf and l1 == 0.0


def test_collect_gives_the_standard_reductions_ranges(monkeypatch):
    """The tiny ViT on noise: every observed tensor's range with RangeStats nodes equals the
    one from ReduceMin/ReduceMax/ReduceL1, and the session graph holds one node per source."""
    model = build_tiny_vit(TinyViTConfig())
    tensors = [n.output[0] for n in model.graph.node
               if n.op_type in ("LayerNormalization", "Softmax", "Add", "MatMul", "Relu", "Gelu")]
    rng = np.random.default_rng(0)
    data = [{"input": rng.standard_normal((4, 3, 32, 32), dtype=np.float32)} for _ in range(3)]
    built = []
    from onnxvq.core import runtime  # exposed_session imports make_session from here, lazily

    make = runtime.make_session
    monkeypatch.setattr(runtime, "make_session", lambda m, **k: built.append(m) or make(m, **k))
    fast = collect(model, tensors, data, MinMaxObserver)
    ops = [n.op_type for n in built[-1].graph.node]
    sources = set(collect_module.value_sources(model, tensors).values())
    assert ops.count("RangeStats") == len(sources) and "ReduceMin" not in ops
    monkeypatch.setattr(collect_module, "_native_stats", lambda: False)
    slow = collect(model, tensors, data, MinMaxObserver)
    assert "ReduceL1" in [n.op_type for n in built[-1].graph.node]
    assert {t: fast[t].range() for t in tensors} == {t: slow[t].range() for t in tensors}


def test_a_library_without_the_kernel_falls_back(monkeypatch):
    """An op the library does not register (as in a build from before RangeStats): the session
    cannot be built, collect reduces with the standard ops, same ranges."""
    model = build_tiny_vit(TinyViTConfig())
    tensors = [n.output[0] for n in model.graph.node if n.op_type == "LayerNormalization"]
    data = [{"input": np.random.default_rng(1).standard_normal((2, 3, 32, 32), np.float32)}]
    want = {t: o.range() for t, o in collect(model, tensors, data, MinMaxObserver).items()}
    monkeypatch.setattr(collect_module, "_STATS_OP", "NoSuchRangeStats")
    with pytest.raises(Exception, match="NoSuchRangeStats"):
        make_session(expose(model, [], tensors, native=True), lean=True)
    got = {t: o.range() for t, o in collect(model, tensors, data, MinMaxObserver).items()}
    assert got == want


def test_quantized_model_bytes_do_not_depend_on_the_kernel(monkeypatch):
    tiny = build_tiny_vit(TinyViTConfig())
    cfg = QuantConfig(calib_size=16, batch_size=8)
    fast = quantize(tiny, None, cfg)
    monkeypatch.setattr(collect_module, "_native_stats", lambda: False)
    slow = quantize(tiny, None, cfg)
    assert fast.model.SerializeToString() == slow.model.SerializeToString()
    assert fast.activation_qparams == slow.activation_qparams
