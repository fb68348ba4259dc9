"""collect(): one session, every requested intermediate observed exactly as numpy computes it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxvq.calibrate import MinMaxObserver, PerChannelMinMax, collect, expose
from onnxvq.calibrate.collect import STATS
from onnxvq.core.errors import CalibrationError
from onnxvq.core.runtime import make_session

W = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)


def _model() -> onnx.ModelProto:
    """x[N,4] -> MatMul W -> h -> Relu -> r -> Softmax -> p (output);  h -> Sqrt -> s (dead end)."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Softmax", ["r"], ["p"], axis=-1),
        helper.make_node("Sqrt", ["h"], ["s"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _batches(n=4, seed=1):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((5, 4)).astype(np.float32)} for _ in range(n)]


class _Recorder:
    def __init__(self):
        self.seen = []

    def update(self, x):
        self.seen.append(np.array(x))


def test_observers_see_exact_intermediates_from_one_session():
    sessions = []

    def factory(model):
        sessions.append(model)
        return make_session(model)

    data = _batches()
    obs = collect(_model(), ["h", "r", "p", "x"], data, lambda n: _Recorder(),
                  session_factory=factory)
    assert len(sessions) == 1
    assert [o.name for o in sessions[0].graph.output] == ["h", "r", "p"]
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in sessions[0].graph.output)
    for i, feeds in enumerate(data):
        h = feeds["x"] @ W
        r = np.maximum(h, 0)
        p = np.exp(r) / np.exp(r).sum(-1, keepdims=True)
        np.testing.assert_allclose(obs["h"].seen[i], h, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(obs["r"].seen[i], np.maximum(obs["h"].seen[i], 0))
        np.testing.assert_allclose(obs["p"].seen[i], p, rtol=1e-5)
        np.testing.assert_array_equal(obs["x"].seen[i], feeds["x"])


def test_minmax_and_per_channel_in_the_same_run():
    data = _batches(6)
    obs = collect(_model(), ["h", "r"], data,
                  lambda n: MinMaxObserver(n) if n == "h" else PerChannelMinMax(n, axis=-1))
    allh = np.concatenate([b["x"] for b in data]) @ W
    assert obs["h"].range() == pytest.approx((allh.min(), allh.max()), rel=1e-5)
    lo, hi = obs["r"].range()
    np.testing.assert_allclose(hi, np.maximum(allh, 0).max(0), rtol=1e-5)
    assert lo.shape == (3,)


def test_nan_names_tensor_and_batch():
    # |W| > 0: h = x @ |W| is positive for x = 1 and negative for x = -1, where Sqrt gives NaN
    ones = np.ones((2, 4), np.float32)
    data = [{"x": ones}, {"x": 2 * ones}, {"x": -ones}]
    with pytest.raises(CalibrationError, match=r"tensor 's'.*batch 2"):
        collect(_with_positive_weights(), ["s"], data, MinMaxObserver)
    obs = collect(_with_positive_weights(), ["s"], data[:2], MinMaxObserver)
    assert obs["s"].range()[1] == pytest.approx(np.sqrt(2 * np.abs(W).sum(0)).max(), rel=1e-6)


def _with_positive_weights():
    model = _model()
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.abs(W), "W"))
    return model


def test_unknown_tensor_and_empty_data():
    with pytest.raises(CalibrationError, match="not in the model: nope"):
        collect(_model(), ["h", "nope"], _batches(), MinMaxObserver)
    with pytest.raises(CalibrationError, match="no calibration batches"):
        collect(_model(), ["h"], [], MinMaxObserver)
    with pytest.raises(CalibrationError, match="batch 0 failed to run"):
        collect(_model(), ["h"], [{"x": np.zeros((2, 5), np.float32)}], MinMaxObserver)


def test_expose_leaves_original_untouched():
    model = _model()
    exposed = expose(model, ["r"])
    assert [o.name for o in model.graph.output] == ["p"]
    assert [o.name for o in exposed.graph.output] == ["r"]


def test_range_only_observers_reduce_inside_the_graph():
    """MinMax/EMA observers get each batch's min and max from ReduceMin/ReduceMax in the session:
    the tensors are not graph outputs, the ranges equal numpy's over the same batches."""
    sessions = []

    def factory(model):
        sessions.append(model)
        return make_session(model)

    data = _batches(5)
    obs = collect(_model(), ["h", "r", "x"], data, MinMaxObserver, session_factory=factory)
    outs = sessions[0].graph.output
    assert [o.name for o in outs] == [STATS]  # one vector: (min, max, l1) of h, then of r
    assert [d.dim_value for d in outs[0].type.tensor_type.shape.dim] == [6]
    allx = np.concatenate([b["x"] for b in data])
    allh = allx @ W
    assert obs["h"].range() == pytest.approx((allh.min(), allh.max()), rel=1e-5)
    assert obs["r"].range() == pytest.approx((0.0, allh.max()), rel=1e-5)
    assert obs["x"].range() == (allx.min(), allx.max())  # a graph input: from the feeds
    assert obs["h"].batches == 5


def test_ema_in_graph_matches_numpy_updates():
    from onnxvq.calibrate.observers import EmaObserver

    data = _batches(4)
    got = collect(_model(), ["h"], data, lambda n: EmaObserver(n, momentum=0.5))["h"]
    ref = EmaObserver("h", momentum=0.5)
    for b in data:
        ref.update(b["x"] @ W)
    assert got.range() == pytest.approx(ref.range(), rel=1e-5)


def test_in_graph_reduction_catches_inf_that_min_max_hide():
    """ORT's ReduceMin/ReduceMax drop a NaN that is not the first element; the L1 reduction
    still names the tensor and batch."""
    ones = np.ones((2, 4), np.float32)
    x = np.stack([ones[0], -ones[0]])  # row 1 gives negative h, NaN after Sqrt
    with pytest.raises(CalibrationError, match=r"tensor 's'.*NaN or Inf.*batch 1"):
        collect(_with_positive_weights(), ["s"], [{"x": ones}, {"x": x}], MinMaxObserver)


def test_non_float_tensor_is_exposed_whole():
    model = _model()
    model.graph.node.append(helper.make_node("Cast", ["h"], ["hi"], to=TensorProto.INT32))
    exposed = expose(model, [], ["hi", "h"])
    assert sorted(o.name for o in exposed.graph.output) == sorted(["hi", STATS])
    obs = collect(model, ["hi"], _batches(2), MinMaxObserver)
    assert obs["hi"].batches == 2
