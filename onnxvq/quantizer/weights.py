"""Apply the weight quantizer chosen in the config (`calibrate.weights`) to the planned weights.

Runs on the graph between calibration and the quantization pipeline: each weight becomes its
dequantized value `codes * scale` (float32, so quantize-weights' rounding gives the same codes back)
and its scales go to `quantize-weights` through `PassContext.weight_scales`; with bias correction
the Linear's bias absorbs `E[x] (W - W^)`. The second moments come from the main calibration run
(`MomentCollector`). Conv kernels take `mse` where a method needs moments (their input is an image
patch matrix, not the tensor observed).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxvq.calibrate.weights import SecondMoments, bias_shift, quantize_rows
from onnxvq.core.config import QuantConfig
from onnxvq.core.params import QuantPlan, WeightSite

log = logging.getLogger(__name__)


def needs_moments(cfg: QuantConfig) -> bool:
    return cfg.weight_method in ("output", "gptq") or cfg.bias_correction


def moment_tensors(graph: gs.Graph, plan: QuantPlan) -> list[str]:
    nodes = {n.name: n for n in graph.nodes}
    return [nodes[w.node].inputs[0].name for w in plan.weights if w.op in ("MatMul", "Gemm")]


def optimize_weights(graph: gs.Graph, plan: QuantPlan, cfg: QuantConfig,
                     moments: dict[str, SecondMoments]) -> dict[str, np.ndarray]:
    """Rewrite the planned weights in place; returns {node: per-channel scale}."""
    nodes = {n.name: n for n in graph.nodes}
    scales = {}
    for site in plan.weights:
        node = nodes[site.node]
        if not isinstance(node.inputs[1], gs.Constant):
            continue
        stats = moments.get(node.inputs[0].name) if site.op != "Conv" else None
        method = cfg.weight_method if stats is not None or cfg.weight_method in ("max", "mse") \
            else "mse"
        w = np.asarray(node.inputs[1].values, dtype=np.float64)
        rows = _rows(w, site)
        codes, scale = quantize_rows(rows, site.bits, method, stats)
        w_hat = codes * scale.astype(np.float64)[:, None]
        if cfg.bias_correction and stats is not None:
            _correct_bias(graph, node, bias_shift(rows, w_hat, stats.mean))
        node.inputs[1] = gs.Constant(f"{site.node}/W_{method}",
                                     _unrows(w_hat, w.shape, site).astype(np.float32))
        scales[site.node] = scale
    return scales


def _rows(w: np.ndarray, site: WeightSite) -> np.ndarray:
    """The weight as [out, in]."""
    if site.op == "Conv":
        return w.reshape(w.shape[0], -1)
    return w if site.axis == 0 else w.T


def _unrows(rows: np.ndarray, shape, site: WeightSite) -> np.ndarray:
    if site.op == "Conv":
        return rows.reshape(shape)
    return rows if site.axis == 0 else rows.T


def _correct_bias(graph: gs.Graph, node: gs.Node, shift: np.ndarray) -> None:
    from onnxvq.passes.channel_fold import add_bias

    add_bias(graph, node, shift, "bias_correction")
