"""Helpers for the per-pass tests: run one pass as a pipeline, build small graphs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxvq.core.pipeline import Pass, PassContext, PassResult, Pipeline


def run_pass(p: Pass, model: onnx.ModelProto, ctx: PassContext | None = None, *,
             atol: float = 1e-4, numeric: str = "end",
             ) -> tuple[onnx.ModelProto, PassResult, object]:
    """(output model, the pass's result, the numeric check against the input)."""
    out, report = Pipeline((p,)).run(model, ctx=ctx, numeric=numeric, atol=atol)
    return out, report.passes[0], report.numeric


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def reasons(result: PassResult) -> list[str]:
    return [why for _, why in result.refused]


def make_model(nodes, inputs, outputs, inits=None, *, opset: int = 17) -> onnx.ModelProto:
    """A model from helper nodes; `inputs`/`outputs` are (name, shape) pairs (float32), `inits`
    a name -> array dict."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def quant_context(model: onnx.ModelProto, cfg) -> tuple[onnx.ModelProto, PassContext]:
    """The canonical model and the context quantize() gives the quantization passes (noise
    calibration), so a pass can be run on its own."""
    from onnxvq.calibrate.fq import FqCalibration
    from onnxvq.core.graph import infer_shapes_into, to_graph
    from onnxvq.passes.pipelines import canonicalize
    from onnxvq.quantizer.placement import plan
    from onnxvq.quantizer.run import calibrate
    from onnxvq.recognise.model import recognise

    canonical, _ = canonicalize(model, numeric="none")
    graph = to_graph(canonical)
    infer_shapes_into(graph, canonical)
    structure = recognise(graph)
    the_plan = plan(graph, structure, cfg)
    fq = FqCalibration(the_plan, structure, cfg)
    qparams, _, fq_params = calibrate(canonical, the_plan, None, cfg, None, None, fq)
    return canonical, PassContext(config=cfg, structure=structure, plan=the_plan,
                                  activation_qparams=qparams, fq_params=fq_params)


def cosine(a: onnx.ModelProto, b: onnx.ModelProto, *, batch: int = 4) -> float:
    """Cosine similarity of the first outputs of two models on the same random inputs."""
    from onnxvq.core.runtime import make_session, random_inputs, run

    ra, rb = make_session(a), make_session(b)
    feeds = random_inputs(ra, batch=batch, seed=1)
    x, y = (next(iter(run(s, feeds).values())).reshape(-1).astype(np.float64) for s in (ra, rb))
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
