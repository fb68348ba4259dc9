"""Model I/O: external data round trips, IR clamping, atomic writes."""

from __future__ import annotations

import numpy as np
import onnx

from onnxvq.api import inspect
from onnxvq.core.graph import load_model, save_model
from onnxvq.core.runtime import make_session, random_inputs
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit


def test_external_data_round_trip(tmp_path):
    model = build_tiny_vit(TinyViTConfig(depth=2))
    path = save_model(model, tmp_path / "big.onnx", external_data=True)
    assert (tmp_path / "big.onnx.data").stat().st_size > 100_000
    assert path.stat().st_size < 50_000  # the graph file holds no weights
    loaded = load_model(path)
    feeds = random_inputs(make_session(model), batch=2)
    np.testing.assert_array_equal(make_session(model).run(None, feeds)[0],
                                  make_session(loaded).run(None, feeds)[0])
    assert inspect(path).structure.counts["blocks"] == 2


def test_ir_version_is_clamped_for_onnxruntime(tmp_path):
    model = build_tiny_vit()
    model.ir_version = 14  # what onnx 1.23's make_model writes; onnxruntime 1.31 refuses it
    path = save_model(model, tmp_path / "m.onnx")
    assert onnx.load(str(path)).ir_version <= 10
    make_session(load_model(path))


def test_save_leaves_no_temporary_files(tmp_path):
    save_model(build_tiny_vit(), tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_compatible_ir_leaves_the_callers_model_alone(tmp_path):
    """compatible_ir (used by every session, save and shape inference) once lowered the IR of the
    model it was given in place: the caller's proto changed under it."""
    from onnxvq.core.graph import compatible_ir, infer_shapes_into, to_graph

    model = build_tiny_vit(TinyViTConfig())
    model.ir_version = 11
    before = model.SerializeToString()
    lowered = compatible_ir(model)
    assert lowered.ir_version == 10 and lowered is not model
    make_session(model)
    save_model(model, tmp_path / "m.onnx")
    assert infer_shapes_into(to_graph(model), model)
    assert model.ir_version == 11 and model.SerializeToString() == before
    model.ir_version = 10
    assert compatible_ir(model) is model  # nothing to lower: no copy


def test_export_keeps_only_the_functions_the_graph_calls():
    """A pass registers every com.onnxvq function with its first custom op; the written model
    keeps those its nodes call, directly or from another function, and no other."""
    from onnx import TensorProto, helper

    from onnxvq.core.graph import drop_unused_functions

    def fn(name, calls):
        return helper.make_function("d", name, ["x"], ["y"], [helper.make_node(calls, ["x"], ["y"],
                                    domain="d" if calls.startswith("F") else "")],
                                    [helper.make_opsetid("", 17), helper.make_opsetid("d", 1)])

    graph = helper.make_graph([helper.make_node("Fa", ["x"], ["y"], domain="d")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, functions=[fn("Fa", "Fb"), fn("Fb", "Relu"), fn("Fc", "Relu")],
                              opset_imports=[helper.make_opsetid("", 17),
                                             helper.make_opsetid("d", 1)])
    assert drop_unused_functions(model) == 1
    assert [f.name for f in model.functions] == ["Fa", "Fb"]
    onnx.checker.check_model(model)


def test_quantized_model_carries_the_functions_of_its_custom_ops():
    from onnxvq.quantizer.run import quantize

    vit = build_tiny_vit(TinyViTConfig(depth=1, dim=32, heads=2))
    for flags in ({}, {"pts": True, "lis": True}):
        out = quantize(vit, None, {"calib_size": 4, **flags}).model
        used = {n.op_type for n in out.graph.node if n.domain == "com.onnxvq"}
        inner = {n.op_type for f in out.functions for n in f.node if n.domain == "com.onnxvq"}
        assert used and {f.name for f in out.functions} == used | inner
