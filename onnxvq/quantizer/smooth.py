"""SmoothQuant (`QuantConfig(smooth=True)`) before the main calibration: the Linear inputs whose
producer can absorb a per-channel scale (LayerNorm outputs, Relu(Linear) outputs) get factors
searched on the FP32 model (`calibrate/smooth.py`, one ORT run), folded by the SMOOTH pipeline;
the main run then calibrates the smoothed model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxvq.calibrate import batches
from onnxvq.calibrate.smooth import Smoothing, smoothing_factors
from onnxvq.calibrate.spec import DataSpec
from onnxvq.core.config import QuantConfig
from onnxvq.core.pipeline import PassContext, PassResult, Validate
from onnxvq.passes.smooth_linear_inputs import refuse
from onnxvq.recognise.structure import ViTStructure

log = logging.getLogger(__name__)


@dataclass
class Smoothed:
    model: onnx.ModelProto
    passes: list[PassResult] = field(default_factory=list)
    searched: dict[str, Smoothing] = field(default_factory=dict)


def candidates(structure: ViTStructure) -> list[str]:
    """LayerNorm outputs and Relu MLP activation outputs (the pass refuses what cannot fold)."""
    names = [ln.output for ln in structure.layernorms if ln.channels]
    names += [m.activation.output for m in structure.mlps if m.activation.kind == "relu"]
    return list(dict.fromkeys(names))


def consumer_weights(graph: gs.Graph, names: list[str]) -> tuple[dict, dict[str, str]]:
    """({tensor: [W as [C, D]]} for the tensors the pass accepts, {tensor: refusal})."""
    tensors, outputs = graph.tensors(), frozenset(t.name for t in graph.outputs)
    sites, refused = {}, {}
    for name in names:
        x = tensors.get(name)
        channels = x.shape[-1] if x is not None and x.shape else None
        if not isinstance(channels, int):
            refused[name] = "channel count unknown"
            continue
        reason, targets = refuse(x, np.ones(channels), outputs)
        if reason is not None:
            refused[name] = reason
            continue
        sites[name] = [_as_cd(n) for n, _ in targets.linears]
    return sites, refused


def _as_cd(node: gs.Node) -> np.ndarray:
    w = np.asarray(node.inputs[1].values, dtype=np.float64)
    return w.T if node.op == "Gemm" and node.attrs.get("transB", 0) else w


def smooth(graph: gs.Graph, model: onnx.ModelProto, structure: ViTStructure, spec: DataSpec,
           cfg: QuantConfig, validate: Validate | None = None) -> Smoothed:
    """Search the factors on `model` (what `graph` holds), fold them in place."""
    from onnxvq.passes.pipelines import SMOOTH

    sites, refused = consumer_weights(graph, candidates(structure))
    source = spec.open(model)
    name = model.graph.input[0].name
    searched = smoothing_factors(model, sites, lambda: batches(source, cfg.batch_size, name),
                                 cfg.a_bits, cfg.w_bits, cfg.symmetric)
    for t, sm in searched.items():
        log.info("smooth %s: alpha %s, output error %.3g -> %.3g", t, sm.alpha,
                 sm.error_before, sm.error_after)
    factors = {t: sm.factors for t, sm in searched.items() if sm.factors is not None}
    out, report = SMOOTH.run_graph(graph, like=model, ctx=PassContext(
        config=cfg, structure=structure, smooth_factors=factors), validate=validate,
        numeric="end", atol=1e-4)
    result = report.passes[0]
    for t, reason in refused.items():
        result.refuse(t, reason)
    result.count("unsmoothed", len(searched) - len(factors))  # no alpha beat the plain model
    return Smoothed(out, report.passes, searched)
