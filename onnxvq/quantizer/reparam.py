"""RepQ-ViT reparameterisation before the main calibration: per-channel quantizers of the
LayerNorm outputs (`reparam`) and of the MLP activation outputs (`reparam_mlp`) calibrated on the
FP32 model (two runs: min/max, then per-channel histograms), folded into the graph by the
`REPARAMETERIZE` pipeline, so the main run calibrates the folded model and the Linear inputs
behind each fold take the per-tensor (s~, z~) whose codes are the per-channel ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxvq.calibrate import PerChannelMinMax, batches
from onnxvq.calibrate.channels import ChannelHistogram, channel_qparams
from onnxvq.calibrate.collect import collect
from onnxvq.calibrate.spec import DataSpec
from onnxvq.core.config import QuantConfig
from onnxvq.core.pipeline import PassContext, PassResult, Validate
from onnxvq.passes.channel_fold import Reparam, centering
from onnxvq.recognise.structure import ViTStructure

log = logging.getLogger(__name__)


@dataclass
class Reparameterization:
    model: onnx.ModelProto
    site_qparams: dict[str, tuple[float, int]] = field(default_factory=dict)  # (s~, z~)
    passes: list[PassResult] = field(default_factory=list)


def channel_qparams_of(model: onnx.ModelProto, tensors: list[str], cfg: QuantConfig,
                       feeds) -> dict[str, tuple]:
    """{tensor: (scale[C], zero_point[C])} over its last axis, with the site's bits and mode:
    per-channel min/max for method minmax, else a per-channel clipping search (two runs).
    Target trt with `center`: asymmetric per-channel codes in int8, folded with z~ = 0 (the
    third element), so the deployed quantizer is symmetric and the offsets sit in the fold."""
    if not tensors:
        return {}
    ranges = collect(model, tensors, feeds(), lambda n: PerChannelMinMax(n, axis=-1))
    signed = cfg.symmetric
    sym = signed and not cfg.center
    zero = (0,) if signed and cfg.center else ()
    if cfg.method == "minmax":
        return {t: (*channel_qparams(*ranges[t].range(), cfg.a_bits, symmetric=sym,
                                     signed=signed), *zero) for t in tensors}
    hists = collect(model, tensors, feeds(), lambda n: ChannelHistogram(n, *ranges[n].range()))
    return {t: (*hists[t].search(cfg.a_bits, symmetric=sym, signed=signed), *zero)
            for t in tensors}


def centerings_of(model: onnx.ModelProto, tensors: list[str], feeds) -> dict[str, Reparam]:
    """{tensor: x' = x - c}, c the centre of each channel's calibrated range (target trt)."""
    if not tensors:
        return {}
    ranges = collect(model, tensors, feeds(), lambda n: PerChannelMinMax(n, axis=-1))
    return {t: centering(*ranges[t].range()) for t in tensors}


def reparameterize(graph: gs.Graph, model: onnx.ModelProto, structure: ViTStructure,
                   spec: DataSpec, cfg: QuantConfig, validate: Validate | None = None,
                   ) -> Reparameterization:
    """Calibrate per channel on `model` (what `graph` holds), fold in place, return the model.
    Target trt with `center`: the tensors not reparameterised are centred (their offsets folded
    the same way, r = 1), the main calibration then taking their symmetric scale."""
    from onnxvq.passes.pipelines import REPARAMETERIZE

    source = spec.open(model)
    name = model.graph.input[0].name

    def feeds():
        return batches(source, cfg.batch_size, name)

    lns = [ln.output for ln in structure.layernorms if ln.channels]
    acts = [m.activation.output for m in structure.mlps]
    tensors = list(dict.fromkeys((lns if cfg.reparam else []) + (acts if cfg.reparam_mlp else [])))
    centred = [t for t in dict.fromkeys(lns + acts) if t not in tensors] \
        if cfg.center and cfg.symmetric else []
    channels = {**channel_qparams_of(model, tensors, cfg, feeds),
                **centerings_of(model, centred, feeds)}
    ctx = PassContext(config=cfg, structure=structure, channel_qparams=channels)
    out, report = REPARAMETERIZE.run_graph(graph, like=model, ctx=ctx, validate=validate,
                                           numeric="end", atol=1e-4)
    sites = {}
    for rec in (r for p in report.passes for r in p.records):
        if not np.isfinite(rec.scale):
            continue  # a centring: its scale is calibrated by the main run
        ln_out = {ln.node: ln.output for ln in structure.layernorms}
        # the LayerNorm output itself too: IntLayerNorm (--pts) emits codes of (s~, z~)
        for t in (*rec.tensors, *([ln_out[rec.node]] if rec.node in ln_out else [])):
            sites[t] = (rec.scale, rec.zero_point)
    return Reparameterization(out, sites, report.passes)
