"""passes/fold_graph.fold: graphsurgeon's fold_constants without its graph copy, tensor for tensor.

Each graph is folded both ways from the same import; the exported models must be the same bytes.
Where graphsurgeon's fold would do something `fold` does not repeat (a cast pair to elide, an If),
`fold` must refuse and leave the graph untouched.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper
from passtools import make_model

from onnxvq.core.graph import infer_shapes_into, to_graph
from onnxvq.core.order import tidy
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes import fold_constants, fold_static_shapes
from onnxvq.passes.fold_graph import fold


def _both(model: onnx.ModelProto) -> tuple[bool, bytes, bytes]:
    """(fold applied, bytes after fold, bytes after graphsurgeon's fold), both shape-inferred
    first as the canonical pipeline does."""
    out = []
    for ours in (True, False):
        graph = to_graph(model)
        infer_shapes_into(graph, model)
        applied = fold(graph) if ours else bool(graph.fold_constants(error_ok=True))
        out.append((applied, _export(graph)))
    return out[0][0], out[0][1], out[1][1]


def _export(graph: gs.Graph) -> bytes:
    tidy(graph.cleanup(remove_unused_graph_inputs=False))
    return gs.export_onnx(graph).SerializeToString()


def _shape_chain() -> onnx.ModelProto:
    """Constant nodes (tensor, float and ints attributes), a static and a dynamic Shape->Gather,
    a static Shape->Slice, a whole static Shape, and arithmetic on all of them."""
    consts = [helper.make_node("Constant", [], ["two"], value=helper.make_tensor(
                  "v", TensorProto.FLOAT, [], [2.0])),
              helper.make_node("Constant", [], ["half"], value_float=0.5),
              helper.make_node("Constant", [], ["axes"], value_ints=[0])]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Gather", ["s", "last"], ["d"], axis=0),     # 16: static
             helper.make_node("Gather", ["s", "first"], ["n"], axis=0),    # N: stays
             helper.make_node("Slice", ["s", "one", "three", "axes"], ["mid"]),  # [4, 16]
             helper.make_node("Shape", ["w"], ["ws"]),                     # initializer: const
             helper.make_node("Cast", ["d"], ["df"], to=1),
             helper.make_node("Sqrt", ["df"], ["sd"]),
             helper.make_node("Mul", ["sd", "two"], ["sd2"]),
             helper.make_node("Cast", ["half"], ["h32"], to=1),
             helper.make_node("Mul", ["sd2", "h32"], ["scale"]),
             helper.make_node("Div", ["r", "scale"], ["y0"]),
             helper.make_node("ReduceSum", ["mid"], ["k"], keepdims=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "k1", "ws"], ["target"], axis=0),
             helper.make_node("Unsqueeze", ["k", "axes"], ["k1"]),
             helper.make_node("Reshape", ["y0", "minus1"], ["y"])]
    model = make_model(consts + nodes, [("x", ["N", 4, 16])], [("y", ["N", 64])],
                       {"last": np.int64(2), "first": np.int64(0), "one": np.array([1]),
                        "three": np.array([3]), "w": np.zeros((2, 3), np.float32),
                        "minus1": np.array([0, -1])})
    model.graph.output.append(helper.make_tensor_value_info("target", TensorProto.INT64, [4]))
    # the Concat reads k1 before its producer: graphsurgeon's order (sorted) decides
    graph = to_graph(model)
    return gs.export_onnx(tidy(graph))


def test_shape_chains_fold_to_graphsurgeons_bytes():
    applied, ours, theirs = _both(_shape_chain())
    assert applied and ours == theirs
    folded = onnx.load_from_string(ours)
    assert sorted(n.op_type for n in folded.graph.node) == [
        "Concat", "Div", "Gather", "Relu", "Reshape", "Shape", "Unsqueeze"]
    scale = next(i for i in folded.graph.initializer if i.name == "scale")
    assert onnx.numpy_helper.to_array(scale) == np.float32(4.0)  # sqrt(16) * 2 * 0.5


def test_tiny_vit_folds_to_graphsurgeons_bytes():
    applied, ours, theirs = _both(build_tiny_vit(TinyViTConfig(depth=1)))
    assert applied and ours == theirs


@pytest.mark.parametrize("case", ["cast-pair", "if"])
def test_refuses_what_only_graphsurgeon_folds(case):
    """A Cast(int->float) -> Mul -> Cast(->int) pair graphsurgeon elides, and an If it may
    flatten: `fold` says no and changes nothing."""
    if case == "cast-pair":
        nodes = [helper.make_node("Shape", ["x"], ["s"]),
                 helper.make_node("Cast", ["s"], ["sf"], to=1),
                 helper.make_node("Mul", ["sf", "h"], ["m"]),
                 helper.make_node("Cast", ["m"], ["mi"], to=7),
                 helper.make_node("Reshape", ["x", "mi"], ["y"])]
        model = make_model(nodes, [("x", ["N", 4])], [("y", None)], {"h": np.float32(1.0)})
    else:
        branch = helper.make_graph([helper.make_node("Identity", ["x"], ["b"])], "b", [],
                                   [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)])
        nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)]
        model = make_model(nodes, [("x", ["N", 4])], [("y", None)], {"c": np.array(True)})
    graph = to_graph(model)
    before = gs.export_onnx(graph.copy()).SerializeToString()
    assert fold(graph) is False
    assert gs.export_onnx(graph).SerializeToString() == before


def test_canonical_stage_uses_it(monkeypatch):
    """Both folds of the canonical stage go through `fold` (and still give graphsurgeon's
    bytes: tests/quantizer/test_run_speed.py)."""
    calls = []
    for module in (fold_constants, fold_static_shapes):
        real = module.fold
        monkeypatch.setattr(module, "fold", lambda g, real=real: calls.append(1) or real(g))
    from onnxvq.quantizer.canonical import prepare

    prepare(build_tiny_vit(TinyViTConfig(depth=1)))
    assert len(calls) >= 1


def _canonical_bytes(path, monkeypatch, ours: bool) -> bytes:
    from onnxvq.core.graph import load_model
    from onnxvq.quantizer.canonical import prepare

    with monkeypatch.context() as m:
        if not ours:
            for module in (fold_constants, fold_static_shapes):
                m.setattr(module, "fold", lambda g: False)
        return prepare(load_model(path), sample_shape=lambda: (3, 224, 224))[1].SerializeToString()


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("name", ["vit_cifar10", "cct_cifar10"])
def test_real_models_canonicalise_to_the_same_bytes(shared_data, monkeypatch, name):
    path = shared_data / "models" / f"{name}.onnx"
    assert _canonical_bytes(path, monkeypatch, True) == _canonical_bytes(path, monkeypatch, False)


@pytest.mark.slow
@pytest.mark.corpus
@pytest.mark.parametrize("name,exporter", [("deit_tiny_patch16_224", "dynamo"),
                                           ("swin_tiny_patch4_window7_224", "torchscript17"),
                                           ("hf_vit_tiny_eager", "torchscript13")])
def test_corpus_exports_canonicalise_to_the_same_bytes(corpus_model, monkeypatch, name,
                                                        exporter):
    """A sample of the corpus (all 133 exports under 400 MB gave the same bytes when this was
    written: README, "Calibration cost, eighth round")."""
    path = corpus_model(name, exporter)
    assert _canonical_bytes(path, monkeypatch, True) == _canonical_bytes(path, monkeypatch, False)
