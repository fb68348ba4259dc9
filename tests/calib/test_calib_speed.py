"""Calibration speed (issue 12 item 2), each change checked against what it replaced:
- prefetched(): the batches of the plain iterator, in order, errors where they happened, no thread
  left behind; calibration through it (the next batch decoded while one runs) gives the same bits;
- the quantize path imports the search, denoiser and shortcut modules only when they run;
- the calibration session's outputs are typed from the canonical model's value_info (no second
  shape inference), the same value infos inference gives;
- a view (Reshape/Transpose/...) is reduced at its source, once per source, with the same range;
  a key read only by its Transpose is reduced at that Transpose (no layout ORT computes for it)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxvq.calibrate import EmaObserver, MinMaxObserver, PercentileObserver, collect
from onnxvq.calibrate.collect import STATS, expose, exposed_outputs, value_sources
from onnxvq.calibrate.prefetch import prefetched
from onnxvq.core import external
from onnxvq.core.config import QuantConfig
from onnxvq.core.errors import CalibrationError
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.quantizer.run import prepare, quantize


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "onnxvq-prefetch"]


def test_order_and_values_are_the_plain_iterators():
    assert list(prefetched(range(1000), depth=3)) == list(range(1000))
    assert list(prefetched([])) == []
    assert not _threads()


def test_runs_ahead_by_at_most_depth():
    produced = []

    def items():
        for i in range(20):
            produced.append(i)
            yield i

    it = prefetched(items(), depth=2)
    assert next(it) == 0
    time.sleep(0.2)  # the producer fills the queue, then waits
    # item 0 taken, 2 queued, 1 being put: never more than depth + 2 produced
    assert 2 <= len(produced) <= 4
    it.close()
    assert not _threads()


def test_error_is_raised_at_the_batch_where_it_happened():
    def items():
        yield 1
        yield 2
        raise CalibrationError("image 3 unreadable")

    seen = []
    with pytest.raises(CalibrationError, match="image 3 unreadable"):
        for x in prefetched(items()):
            seen.append(x)
    assert seen == [1, 2]
    assert not _threads()


def test_consumer_stopping_early_stops_the_producer_and_closes_the_source():
    closed = threading.Event()

    def items():
        try:
            yield from range(10**6)
        finally:
            closed.set()

    for x in prefetched(items(), depth=1):
        if x == 3:
            break
    assert closed.wait(2.0)
    assert not _threads()
    with pytest.raises(ValueError):
        next(prefetched([1], depth=0))


def _plain(items, depth=2):
    return iter(items)


@pytest.mark.parametrize("make", [MinMaxObserver, lambda n: EmaObserver(n, momentum=0.3),
                                  lambda n: PercentileObserver(n, tail=1e-3, bins=256)])
def test_collect_through_prefetch_is_the_plain_loops_result(monkeypatch, make):
    """EMA depends on the batch order and percentile sees whole tensors: both identical."""
    model = build_tiny_vit(TinyViTConfig())
    names = [n.output[0] for n in model.graph.node if n.op_type in ("Softmax", "Erf", "MatMul")]
    rng = np.random.default_rng(3)
    data = [{"input": rng.standard_normal((3, 3, 32, 32)).astype(np.float32)} for _ in range(7)]
    fast = collect(model, names, data, make)
    with monkeypatch.context() as m:
        m.setattr(sys.modules["onnxvq.calibrate.collect"], "prefetched", _plain)
        plain = collect(model, names, data, make)
    assert {n: o.range() for n, o in fast.items()} == {n: o.range() for n, o in plain.items()}
    assert {o.batches for o in fast.values()} == {7}


@pytest.mark.parametrize("method", ["minmax", "percentile", "ema"])
def test_quantize_is_bit_identical_to_the_plain_loop(monkeypatch, method):
    model = build_tiny_vit(TinyViTConfig())
    cfg = QuantConfig(calib_size=24, batch_size=8, method=method)
    fast = quantize(model, None, cfg)
    with monkeypatch.context() as m:
        m.setattr(sys.modules["onnxvq.calibrate.collect"], "prefetched", _plain)
        plain = quantize(model, None, cfg)
    assert fast.activation_qparams == plain.activation_qparams
    assert fast.model.SerializeToString() == plain.model.SerializeToString()


def test_the_quantize_path_imports_no_search_denoiser_or_shortcut_code():
    """Those modules load when their methods run; a plain quantize does not pay for them."""
    code = ("import sys, onnxvq.cli.app, onnxvq.quantizer.run\n"
            "print(sorted(m for m in ('onnxvq.calibrate.search', 'onnxvq.calibrate.denoiser', "
            "'onnxvq.quantizer.shortcut') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_exposed_outputs_reads_the_canonical_value_infos_without_inference(monkeypatch):
    canonical = prepare(build_tiny_vit(TinyViTConfig()))[1]
    names = [n.output[0] for n in canonical.graph.node if n.op_type in ("Softmax", "MatMul")]
    calls = []
    real = external.infer_shapes
    monkeypatch.setattr(external, "infer_shapes", lambda m: calls.append(1) or real(m))
    typed = exposed_outputs(canonical, names)
    assert calls == []
    bare = onnx.ModelProto()
    bare.CopyFrom(canonical)
    del bare.graph.value_info[:]
    inferred = exposed_outputs(bare, names)
    assert calls == [1]
    def static(v):  # the batch dim is named "batch" in one, "unk__0" in the other
        t = v.type.tensor_type
        return v.name, t.elem_type, [d.dim_value or None for d in t.shape.dim]

    assert [static(v) for v in typed] == [static(v) for v in inferred]
    assert all(len(static(v)[2]) >= 2 for v in typed)


def _views() -> onnx.ModelProto:
    """x[N,4] -> Reshape xr[N,2,2];  x -> MatMul W -> h -> Transpose ht -> Reshape hr -> Relu r."""
    w = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["x", "s22"], ["xr"]),
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0]),
        helper.make_node("Reshape", ["ht", "s32"], ["hr"]),
        helper.make_node("Relu", ["hr"], ["r"]),
    ]
    inits = [numpy_helper.from_array(w, "W"),
             numpy_helper.from_array(np.array([-1, 2, 2], np.int64), "s22"),
             numpy_helper.from_array(np.array([3, -1], np.int64), "s32")]
    graph = helper.make_graph(
        nodes, "views", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_views_are_reduced_at_their_source_once():
    model = _views()
    assert value_sources(model, ["hr", "ht", "h", "r", "xr"]) == {
        "hr": "h", "ht": "h", "h": "h", "r": "r", "xr": "x"}
    exposed = expose(model, [], ["hr", "ht", "xr", "r"])
    assert [o.name for o in exposed.graph.output] == [STATS]
    concat = exposed.graph.node[-1]  # the standard reductions' scalars, one set per source
    assert list(concat.input) == [f"{t}::onnxvq_{k}/1d" for t in ("h", "x", "r")
                                  for k in ("min", "max", "l1")]
    order = [n.output[0] for n in exposed.graph.node]
    assert order.index("x::onnxvq_min") < order.index("xr")  # a graph input's: first
    assert order.index("h") < order.index("h::onnxvq_min") < order.index("ht")
    data = [{"x": np.random.default_rng(i).standard_normal((3, 4)).astype(np.float32)}
            for i in range(4)]
    got = collect(model, ["hr", "ht", "xr", "r"], data, MinMaxObserver)
    w = numpy_helper.to_array(model.graph.initializer[0])
    h = np.concatenate([b["x"] @ w for b in data])
    x = np.concatenate([b["x"] for b in data])
    assert got["hr"].range() == got["ht"].range() == (float(h.min()), float(h.max()))
    assert got["xr"].range() == (float(x.min()), float(x.max()))
    assert got["r"].range() == (0.0, float(h.max()))
    assert {o.batches for o in got.values()} == {4}


def _key_heads() -> onnx.ModelProto:
    """torch's MultiheadAttention head split: x[N,4,6] -> Reshape [N,4,3,2] -> Transpose heads
    [3,N,4,2] -> Gather 0|1 (q, k) -> k^T = Transpose(k) -> q @ k^T; q is also read by Relu."""
    nodes = [
        helper.make_node("Reshape", ["x", "s"], ["r"]),
        helper.make_node("Transpose", ["r"], ["heads"], perm=[2, 0, 1, 3]),
        helper.make_node("Gather", ["heads", "i0"], ["q"], axis=0),
        helper.make_node("Gather", ["heads", "i1"], ["k"], axis=0),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s_qk"]),
        helper.make_node("Relu", ["q"], ["rq"]),
        helper.make_node("Add", ["s_qk", "s_qk"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([-1, 4, 3, 2], np.int64), "s"),
             numpy_helper.from_array(np.array(0, np.int64), "i0"),
             numpy_helper.from_array(np.array(1, np.int64), "i1")]
    graph = helper.make_graph(
        nodes, "heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "rq")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_key_read_only_by_its_transpose_is_reduced_there():
    """k (a Gather of the heads' Transpose, read only by k^T) is reduced at k^T, which ORT
    computes anyway; q (read by the MatMul itself) and views of k stay at their source."""
    model = _key_heads()
    assert value_sources(model, ["k", "q", "kt", "heads"]) == {
        "k": "kt", "q": "q", "kt": "kt", "heads": "x"}
    data = [{"x": np.random.default_rng(i).standard_normal((2, 4, 6)).astype(np.float32) * 3}
            for i in range(3)]
    got = collect(model, ["k", "q"], data, MinMaxObserver)
    k = np.concatenate([b["x"].reshape(-1, 4, 3, 2)[:, :, 1] for b in data])
    q = np.concatenate([b["x"].reshape(-1, 4, 3, 2)[:, :, 0] for b in data])
    assert got["k"].range() == (float(k.min()), float(k.max()))
    assert got["q"].range() == (float(q.min()), float(q.max()))


def test_the_calibration_session_has_no_transpose_of_its_own(tmp_path):
    """On the tiny ViT's canonical model, ORT's optimised calibration graph holds as many
    Transposes as the canonical model's own (no layout computed only for a reduction)."""
    import onnxruntime as ort

    from onnxvq.core.runtime import LEAN_DISABLED_OPTIMIZERS, session_options

    _, canonical, _, _ = prepare(build_tiny_vit(TinyViTConfig()), QuantConfig())
    observed = [n.output[0] for n in canonical.graph.node
                if n.op_type in ("Gather", "Softmax", "LayerNormalization", "MatMul")]

    def transposes(model: onnx.ModelProto, name: str) -> int:
        so = session_options(lean=True, custom_ops=False)
        so.optimized_model_filepath = str(tmp_path / name)
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(LEAN_DISABLED_OPTIMIZERS))
        return [n.op_type for n in onnx.load(str(tmp_path / name)).graph.node].count("Transpose")

    assert any(value_sources(canonical, observed)[t] != t for t in observed)  # a key moved
    assert transposes(expose(canonical, [], observed), "e.onnx") == transposes(canonical, "c.onnx")


def test_a_nan_in_a_view_names_the_view():
    model = _views()
    bad = np.ones((2, 4), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(CalibrationError, match=r"tensor 'ht'.*NaN or Inf.*batch 1"):
        collect(model, ["ht"], [{"x": np.ones((2, 4), np.float32)}, {"x": bad}],
                MinMaxObserver)


def _residual_layernorm() -> onnx.ModelProto:
    """x + skip -> LayerNormalization: what ORT's SkipLayerNormFusion rewrites."""
    h = 64
    inits = [numpy_helper.from_array(np.full(h, v, np.float32), n) for n, v in
             (("gamma", 1.0), ("beta", 0.0))]
    nodes = [helper.make_node("Add", ["x", "skip"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1)]
    graph = helper.make_graph(
        nodes, "ln", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 5, h])
                      for n in ("x", "skip")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, h])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("lean", [False, True])
def test_lean_sessions_leave_the_residual_layernorm_unfused(tmp_path, monkeypatch, lean):
    """A lean (calibration) session runs Add + LayerNormalization, not ORT's SkipLayerNormalization
    (its CPU kernel costs ~4x the two: core.runtime.LEAN_DISABLED_OPTIMIZERS); other sessions
    still fuse (the check would notice ORT renaming the fusion)."""
    from onnxvq.core import runtime

    made = runtime.session_options

    def keeping(**kwargs):
        so = made(**kwargs)
        so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        return so

    monkeypatch.setattr(runtime, "session_options", keeping)
    runtime.make_session(_residual_layernorm(), lean=lean, custom_ops=False)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ("SkipLayerNormalization" in ops) is not lean, ops
