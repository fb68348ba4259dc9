"""Where quantization hurts: per-point SQNR along the network, and the damage of each block alone.

Points come from the structure recognised in the FP32 model after canonicalisation (the graph the
quantizer rewrote, so the quantized model keeps those tensor names): attention probabilities,
LayerNorm outputs, MLP outputs, residual Add outputs (block outputs) and the graph outputs. Both
models run once per batch with every point exposed as an extra output.

The one-block-at-a-time mode does not recalibrate: it takes the quantized model and reverts every
node outside the block to its FP32 form (inputs, weights and op as in the canonical FP32 graph,
integer LayerNorm/Softmax replacements included), dropping the Q/DQ nodes that no longer feed
anything. Since activation ranges were calibrated on the
FP32 model, this is the model `quantize` would build with every other node skipped, and it also
works on a hand-edited quantized model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from onnxvq.calibrate.collect import expose
from onnxvq.calibrate.preprocess import Preprocess
from onnxvq.calibrate.spec import DataSpec, recorded_preprocess
from onnxvq.core.errors import UnsupportedModelError, UsageError
from onnxvq.core.graph import to_graph, to_model
from onnxvq.core.metrics import Running, top1_agreement
from onnxvq.quantizer.run import prepare
from onnxvq.recognise.structure import Block, ViTStructure
from onnxvq.verify import comparator
from onnxvq.verify.compare import as_model

log = logging.getLogger(__name__)

Model = str | os.PathLike | onnx.ModelProto
DEFAULT_SAMPLES = 32
DEFAULT_BATCH = 16


@dataclass(frozen=True)
class Probe:
    tensor: str
    kind: str  # "attention-probs", "layernorm", "mlp", "residual", "output"
    block: int | None
    order: int  # position of the producing node in the FP32 graph


@dataclass(frozen=True)
class PointError:
    probe: Probe
    sqnr_db: float
    cosine: float

    @property
    def label(self) -> str:
        if self.probe.block is None:
            return self.probe.kind
        return f"block {self.probe.block} {self.probe.kind}"


@dataclass(frozen=True)
class UnitDamage:
    unit: str  # "block 3" or "rest" (patch embedding, head, anything outside the blocks)
    sqnr_db: float  # of the graph outputs with only this unit quantized
    agreement: float  # top-1 agreement with FP32 on the first output


def probes(canonical: onnx.ModelProto, structure: ViTStructure) -> list[Probe]:
    """Measurement points of `structure` in topological order of the canonical FP32 graph."""
    order = {o: i for i, n in enumerate(canonical.graph.node) for o in n.output}
    node_out = {n.name: n.output[0] for n in canonical.graph.node}
    block_of = {name: b.index for b in structure.blocks for name in block_nodes(b)}
    found: dict[str, tuple[str, int | None]] = {}
    for att in structure.attentions:
        found[att.probs] = ("attention-probs", block_of.get(att.softmax))
    for ln in structure.layernorms:
        found[ln.output] = ("layernorm", block_of.get(ln.node))
    for m in structure.mlps:
        found[m.fc2.output] = ("mlp", block_of.get(m.fc2.node))
    for r in structure.residuals:
        found[node_out[r.node]] = ("residual", block_of.get(r.node))
    for out in canonical.graph.output:
        found[out.name] = ("output", None)
    points = [Probe(t, kind, blk, order.get(t, len(order))) for t, (kind, blk) in found.items()]
    return sorted(points, key=lambda p: p.order)


def block_nodes(block: Block) -> set[str]:
    """Names of the nodes that make up one transformer block."""
    att = block.attention
    linears = [*att.projections, *([att.out_proj] if att.out_proj else [])]
    names = {att.softmax, att.scores_matmul, att.context_matmul, *att.score_nodes,
             *block.norms, *(r.node for r in block.residuals)}
    if block.mlp is not None:
        linears += [block.mlp.fc1, block.mlp.fc2]
        names.update(block.mlp.activation.nodes)
    for lin in linears:
        names.add(lin.node)
        if lin.bias_add:
            names.add(lin.bias_add)
    return names


def layer_sqnr(fp32: Model | tuple[onnx.ModelProto, ViTStructure], quant: Model,
               data: DataSpec | str | os.PathLike | None = None, *,
               preprocess: Preprocess | None = None, samples: int | None = None,
               batch_size: int | None = None, seed: int | None = None,
               progress: Callable[[int], None] | None = None) -> list[PointError]:
    """SQNR of the quantized model at every recognised point, worst first. `fp32` may also be a
    `(canonical model, structure)` pair from `canonical_structure` to skip canonicalising again.
    Both models run through the Polygraphy comparator, one batch at a time."""
    canonical, structure = fp32 if isinstance(fp32, tuple) else canonical_structure(fp32)
    q = as_model(quant)
    produced = {o for n in q.graph.node for o in n.output}
    points = [p for p in probes(canonical, structure) if p.tensor in produced]
    if not points:
        raise UsageError("no measurement point of the FP32 model exists in the quantized model")
    names = [p.tensor for p in points]
    runners = [comparator.ort_runner(expose(canonical, names), "fp32"),
               comparator.ort_runner(expose(q, names), "quant")]
    acc = [Running() for _ in names]
    for feeds in _feeds(canonical, quant, data, preprocess, samples, batch_size, seed, progress):
        results = comparator.run(runners, [feeds])
        ref, got = results["fp32"][0], results["quant"][0]
        for name, running in zip(names, acc, strict=True):
            running.update(ref[name], got[name])
    result = [PointError(p, r.sqnr_db, r.cosine) for p, r in zip(points, acc, strict=True)]
    return sorted(result, key=lambda r: (r.sqnr_db, r.probe.order))


def block_damage(fp32: Model, quant: Model, data: DataSpec | str | os.PathLike | None = None, *,
                 preprocess: Preprocess | None = None, samples: int | None = None,
                 batch_size: int | None = None, seed: int | None = None,
                 progress: Callable[[int], None] | None = None) -> list[UnitDamage]:
    """Quantize one block at a time (all else FP32) and rank blocks by output SQNR, worst first.
    `progress(1)` is called after each unit."""
    canonical, structure = canonical_structure(fp32)
    q = as_model(quant)
    feeds = list(_feeds(canonical, quant, data, preprocess, samples, batch_size, seed, None))
    reference = comparator.run([comparator.ort_runner(canonical, "fp32")], feeds)["fp32"]
    per_block = [block_nodes(b) for b in structure.blocks]
    every = {n.name for n in canonical.graph.node}
    units = {f"block {b.index}": nodes for b, nodes in zip(structure.blocks, per_block,
                                                           strict=True)}
    units["rest"] = every - set().union(*per_block)
    ranked = []
    for unit, keep in units.items():
        partial = keep_quantized(q, canonical, keep)
        got = comparator.run([comparator.ort_runner(partial, unit)], feeds)[unit]
        ranked.append(_damage(unit, reference, got))
        if progress is not None:
            progress(1)
    return sorted(ranked, key=lambda u: u.sqnr_db)


def _feeds(canonical, quant, data, preprocess, samples, batch_size, seed, progress):
    spec = DataSpec.coerce(data, preprocess=preprocess, samples=samples, batch_size=batch_size,
                           seed=seed)
    return spec.feeds(canonical, samples=DEFAULT_SAMPLES, batch_size=DEFAULT_BATCH,
                      recorded=recorded_preprocess(quant), progress=progress)


def keep_quantized(quant: onnx.ModelProto, canonical: onnx.ModelProto,
                   keep: set[str]) -> onnx.ModelProto:
    """`quant` with every node of `canonical` outside `keep` restored to its FP32 form.

    A node still in `quant` under its name gets its FP32 inputs and op back (its Q/DQ inputs go
    dead). A node that a rewrite replaced (IntLayerNorm, LogIntSoftmax: new nodes that end in a
    node producing the FP32 node's output) is re-inserted and that end node removed, and FP32
    nodes whose outputs nothing produces any more (a Softmax fused into LogIntMatMul) come back
    with the node that reads them. Dead Q/DQ and integer chains are then removed."""
    from onnxvq.verify.unfuse_linear import split_linear_codes

    out = _unfuse(split_linear_codes(_copy(quant), canonical))
    restorer = _Restorer(out, canonical)
    names = {n.name for n in out.graph.node}
    for ref in canonical.graph.node:
        if ref.name in keep:
            continue
        if ref.name in names:
            restorer.revert_in_place(ref)
        elif all(o in restorer.producer for o in ref.output):
            restorer.reinsert(ref)
    restorer.resolve_inputs()
    return to_model(to_graph(out), like=quant)


# The ORT lowering's fused float-to-code kernels write no FP32 tensor but the residual sum; their
# local functions are the unfused graphs, so inlining them gives the restorer standard nodes
# (and FP32 tensors it can pull back from `canonical`).
_FUSED = ("GeluQuantizeLinear", "AddLayerNormQuantize", "AddMulQuantizeLinear", "AddIntLayerNorm")


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _unfuse(quant: onnx.ModelProto) -> onnx.ModelProto:
    out = _copy(quant)
    if not any(n.op_type in _FUSED and n.domain == "com.onnxvq" for n in out.graph.node):
        return out
    from onnx import inliner

    fused = [("com.onnxvq", f.name) for f in out.functions if f.name in _FUSED]
    return inliner.inline_selected_functions(out, fused, exclude=False)


class _Restorer:
    """Edits one model copy: FP32 nodes back in, their missing inputs pulled from `canonical`."""

    def __init__(self, model: onnx.ModelProto, canonical: onnx.ModelProto):
        self.model = model
        self.ref_inits = {t.name: t for t in canonical.graph.initializer}
        self.ref_producer = {o: n for n in canonical.graph.node for o in n.output}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.restored: list[onnx.NodeProto] = []

    def revert_in_place(self, ref: onnx.NodeProto) -> None:
        node = next(n for n in self.model.graph.node if n.name == ref.name)
        if list(node.output) == list(ref.output) and node.SerializeToString() != \
                ref.SerializeToString():
            node.CopyFrom(ref)
            self.restored.append(node)

    def reinsert(self, ref: onnx.NodeProto) -> None:
        ends = {id(self.producer[o]): self.producer[o] for o in ref.output}
        for end in ends.values():
            if end in self.model.graph.node:  # two FP32 nodes may share one end node
                self.model.graph.node.remove(end)
        self.model.graph.node.append(ref)
        self.restored.append(ref)
        self.producer.update((o, ref) for o in ref.output)

    def resolve_inputs(self) -> None:
        present = {i.name for i in self.model.graph.input} | \
            {t.name for t in self.model.graph.initializer}
        pending = list(self.restored)
        while pending:
            for name in pending.pop().input:
                if not name or name in present or name in self.producer:
                    continue
                if name in self.ref_inits:
                    self.model.graph.initializer.append(self.ref_inits[name])
                    present.add(name)
                elif name in self.ref_producer:
                    self.reinsert_missing(self.ref_producer[name], pending)
                else:
                    raise UnsupportedModelError(
                        f"cannot restore the FP32 form: '{name}' is missing")

    def reinsert_missing(self, ref: onnx.NodeProto, pending: list) -> None:
        self.model.graph.node.append(ref)
        self.producer.update((o, ref) for o in ref.output)
        pending.append(ref)


def canonical_structure(fp32: Model, *, reuse=None) -> tuple[onnx.ModelProto, ViTStructure]:
    """The canonical FP32 model and its structure; taken from `reuse` (a QuantResult that kept
    them) instead of canonicalising `fp32` again when it has them."""
    if getattr(reuse, "canonical", None) is not None:
        return reuse.canonical, reuse.structure
    _, canonical, _, structure = prepare(as_model(fp32))
    return canonical, structure


def _damage(unit: str, ref, got) -> UnitDamage:
    """Output SQNR over every output and top-1 agreement on the first, over all iterations."""
    total = Running()
    same = count = 0
    for ref_it, got_it in zip(ref, got, strict=True):
        for name in ref_it.keys():
            total.update(ref_it[name], got_it[name])
        first = next(iter(ref_it.keys()))
        same += top1_agreement(ref_it[first], got_it[first])
        count += len(ref_it[first])
    return UnitDamage(unit, total.sqnr_db, same / max(count, 1))
