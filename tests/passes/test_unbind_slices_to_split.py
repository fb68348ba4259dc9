"""unbind-slices-to-split: dynamo's unbind (a width-1 Slice + Squeeze per index) becomes one
Split + the Squeezes, as TorchScript exports it; bit-exact."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from passtools import make_model, ops

from onnxvq.core.pipeline import Pipeline
from onnxvq.passes.unbind_slices_to_split import UnbindSlicesToSplit

BIG = np.iinfo(np.int64).max


def _run(model):
    out, report = Pipeline((UnbindSlicesToSplit(),), infer_shapes=True).run(model)
    return out, report.passes[0], report.numeric


def _unbind(bounds, *, axis=0, squeeze_axis=None, opset=18, extra=False):
    """X [3, B, 2, 4] sliced at `bounds` [(start, end)] on `axis`, each piece squeezed."""
    nodes, inits, outs = [], {"axes": np.array([axis])}, []
    sq = np.array([axis if squeeze_axis is None else squeeze_axis])
    for i, (start, end) in enumerate(bounds):
        inits |= {f"s{i}": np.array([start]), f"e{i}": np.array([end])}
        nodes += [helper.make_node("Slice", ["x", f"s{i}", f"e{i}", "axes"], [f"p{i}"]),
                  helper.make_node("Squeeze", [f"p{i}", "sq"], [f"y{i}"])]
        outs.append((f"y{i}", None))
    if extra:
        nodes.append(helper.make_node("Relu", ["x"], ["r"]))
        outs.append(("r", None))
    return make_model(nodes, [("x", [3, "B", 2, 4])], outs, inits | {"sq": sq}, opset=opset)


@pytest.mark.parametrize("bounds", [
    [(0, 1), (1, 2), (2, 3)],  # dynamo's qkv.unbind(0)
    [(2, 3), (0, 1), (1, 2)],  # readers in any order: the Split's outputs go in index order
    [(0, 1), (-2, -1), (-1, BIG)],  # negative and clamped bounds
])
def test_unbind_becomes_one_split_bit_exact(bounds):
    out, res, numeric = _run(_unbind(bounds))
    assert res.applied == 1 and ops(out) == {"Split": 1, "Squeeze": 3}
    split = next(n for n in out.graph.node if n.op_type == "Split")
    order = sorted(range(3), key=lambda i: bounds[i][0] % 3)
    assert list(split.output) == [f"p{i}" for i in order]
    assert numeric.max_abs_diff == 0.0


def test_below_opset_13_the_sizes_are_an_attribute():
    model = _unbind([(0, 1), (1, 2), (2, 3)], opset=11)
    model.graph.node[1].CopyFrom(helper.make_node("Squeeze", ["p0"], ["y0"], axes=[0]))
    model.graph.node[3].CopyFrom(helper.make_node("Squeeze", ["p1"], ["y1"], axes=[0]))
    model.graph.node[5].CopyFrom(helper.make_node("Squeeze", ["p2"], ["y2"], axes=[0]))
    out, res, numeric = _run(model)
    split = next(n for n in out.graph.node if n.op_type == "Split")
    assert res.applied == 1 and [a.name for a in split.attribute] == ["axis", "split"]
    assert len(split.input) == 1 and numeric.max_abs_diff == 0.0


@pytest.mark.parametrize("kwargs", [
    dict(bounds=[(0, 1), (1, 2)]),  # index 2 never read: not an unbind
    dict(bounds=[(0, 1), (1, 2), (2, 3)], extra=True),  # X read by something else too
    dict(bounds=[(0, 1), (1, 2), (1, 2)]),  # index 1 twice, 2 never
])
def test_other_slicings_are_not_matched(kwargs):
    model = _unbind(**kwargs)
    out, res, _ = _run(model)
    assert res.applied == 0 and res.refused == [] and ops(out) == ops(model)


def test_a_squeeze_of_another_axis_is_not_matched():
    model = _unbind([(0, 1), (1, 2)], axis=2, squeeze_axis=0)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    out, res, _ = _run(model)
    assert res.applied == 0 and ops(out) == ops(model)
