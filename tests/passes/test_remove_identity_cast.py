"""remove-identity-cast: Hugging Face eager attention's Softmax -> Cast(FLOAT) -> Cast(FLOAT)
(TorchScript) loses its float-to-float Casts; a converting Cast stays."""

from __future__ import annotations

from onnx import TensorProto, helper
from passtools import make_model, ops

from onnxvq.core.pipeline import Pipeline
from onnxvq.passes.remove_identity_cast import RemoveIdentityCast


def run_pass(p, model, numeric="end"):  # the input types come from shape inference
    out, report = Pipeline((p,), infer_shapes=True).run(model, numeric=numeric)
    return out, report.passes[0], report.numeric


def _casts(*types, output_cast=False):
    nodes = [helper.make_node("Softmax", ["x"], ["c0"], axis=-1)]
    for i, to in enumerate(types):
        nodes.append(helper.make_node("Cast", [f"c{i}"], [f"c{i + 1}"], to=to))
    last = f"c{len(types)}"
    if not output_cast:
        nodes.append(helper.make_node("MatMul", [last, "v"], ["y"]))
    model = make_model(nodes, [("x", [2, 4, 4]), ("v", [2, 4, 3])],
                       [] if output_cast else [("y", [2, 4, 3])])
    if output_cast:
        model.graph.output.append(helper.make_tensor_value_info(last, types[-1], [2, 4, 4]))
    return model


def test_float_to_float_casts_are_dropped_bit_exact():
    out, res, numeric = run_pass(RemoveIdentityCast(), _casts(TensorProto.FLOAT, TensorProto.FLOAT))
    assert res.applied == 2 and ops(out) == {"Softmax": 1, "MatMul": 1}
    assert out.graph.node[1].input[0] == out.graph.node[0].output[0]
    assert numeric.max_abs_diff == 0.0


def test_a_converting_cast_and_an_output_cast_stay():
    model = _casts(TensorProto.FLOAT16, TensorProto.FLOAT16, TensorProto.FLOAT, output_cast=True)
    out, res, _ = run_pass(RemoveIdentityCast(), model, numeric="none")
    # fp32 -> fp16 converts; fp16 -> fp16 goes; fp16 -> fp32 converts (and writes the output)
    assert res.applied == 1 and ops(out) == {"Softmax": 1, "Cast": 2}
