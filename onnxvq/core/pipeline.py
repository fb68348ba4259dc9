"""The pass pipeline: an ordered tuple of passes run over one in-memory graph.

A pass gets the graphsurgeon graph and a typed, frozen `PassContext`, edits the graph in place and
returns a `PassResult` saying what it did, what it refused and why, and what it recorded. It never
holds on to the pipeline and never writes into the context. A pipeline is one stage of a run: it
exports and validates once at its end (or after every pass, `validate="each"`, to find a culprit).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import onnx
import onnx_graphsurgeon as gs

from onnxvq.core.config import QuantConfig
from onnxvq.core.graph import infer_shapes_into, to_graph, to_model
from onnxvq.core.order import tidy
from onnxvq.core.params import ActivationQParams, FqParams, QuantPlan
from onnxvq.core.validate import NumericCheck, check_graph, numeric_check

if TYPE_CHECKING:  # the core does not import the recogniser; passes get the structure from it
    from onnxvq.recognise.structure import ViTStructure

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    """What one pass did: rewrites applied, places it refused (with the reason), extra counts, and
    the typed records it produced (e.g. quantize-weights' `WeightQParams`) for the caller to keep.
    A pass never writes into its context: what it records travels back here."""

    pass_id: str
    applied: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    seconds: float = 0.0

    def refuse(self, where: str, reason: str) -> None:
        self.refused.append((where, reason))

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def summary(self) -> str:
        parts = [f"{self.applied} applied"]
        if self.refused:
            parts.append(f"{len(self.refused)} refused")
        parts += [f"{k}={v}" for k, v in self.counts.items()]
        return f"{self.pass_id}: " + ", ".join(parts)


class Record(Protocol):
    """A typed, frozen record a pass returns (see `onnxvq.core.params`)."""

    node: str

    def to_dict(self) -> dict: ...


@dataclass(frozen=True)
class PassContext:
    """What passes read, typed and frozen; passes return what they produce in `PassResult`.

    The canonical passes need none of it. The quantization passes read the plan, the calibrated
    activation parameters and the PTS/LIS parameters; `structure` is the recognised ViT and
    `original` the model the pipeline started from (the pipeline fills it in).
    """

    original: onnx.ModelProto | None = None
    config: QuantConfig | None = None
    structure: ViTStructure | None = None
    plan: QuantPlan = field(default_factory=lambda: QuantPlan((), (), ()))
    activation_qparams: Mapping[str, ActivationQParams] = field(default_factory=dict)
    fq_params: FqParams = field(default_factory=FqParams)
    weight_scales: Mapping[str, object] = field(default_factory=dict)  # node -> searched s_w[C]
    # per-channel (scale[C], zero_point[C]) of activation tensors, for the reparameterise passes
    channel_qparams: Mapping[str, tuple] = field(default_factory=dict)
    twin_qparams: Mapping[str, object] = field(default_factory=dict)  # tensor -> TwinQParams
    # SmoothQuant factors s[C] of Linear input activations, for smooth-linear-inputs
    smooth_factors: Mapping[str, object] = field(default_factory=dict)


class Pass(ABC):
    """One graph rewrite. Subclasses set `id`, `matches` and `emits` (shown by reports)."""

    id: ClassVar[str]
    matches: ClassVar[str] = ""
    emits: ClassVar[str] = ""

    @abstractmethod
    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"


class RewritePass(Pass):
    """A pass made of a node-anchored rule: `match` finds a candidate, `check` may refuse it with a
    reason, `rewrite` edits the graph (and may return a `Record` for the result). Candidates are
    collected before any rewrite, so a rewrite never invalidates the iteration; `match` must
    tolerate nodes a previous rewrite disconnected. Every refusal a pass can give is a string
    returned by its `check`, so the reasons are in one place."""

    anchor_ops: ClassVar[tuple[str, ...]] = ()

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        anchors = [n for n in graph.nodes if n.op in self.anchor_ops]
        for node in anchors:
            if not _alive(node):
                continue
            m = self.match(graph, node, ctx)
            if m is None:
                continue
            reason = self.check(graph, m)
            if reason is not None:
                result.refuse(node.name or node.op, reason)
                continue
            record = self.rewrite(graph, m, ctx)
            if record is not None:
                result.records.append(record)
            result.applied += 1
        if result.applied:  # an untouched graph is as clean and sorted as it came (0.1-0.3 s each)
            tidy(graph)
        return result

    @abstractmethod
    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Any | None: ...

    def check(self, graph: gs.Graph, m: Any) -> str | None:
        return None

    @abstractmethod
    def rewrite(self, graph: gs.Graph, m: Any, ctx: PassContext) -> Record | None: ...


@dataclass
class PipelineReport:
    passes: list[PassResult]
    numeric: NumericCheck | None
    op_counts_before: Counter
    op_counts_after: Counter

    def result(self, pass_id: str) -> PassResult:
        for r in self.passes:
            if r.pass_id == pass_id:
                return r
        raise KeyError(pass_id)


Validate = Literal["each", "stage", "none"]


class Pipeline:
    """An explicit, ordered tuple of passes: one stage of a run (canonical, quantization).

    The passes edit one in-memory graph. `validate="stage"` (the default) exports the graph once at
    the end and runs the checker and strict shape inference on it; `"each"` exports and checks
    after every pass, to find the pass that broke a graph (`ONNXVQ_VALIDATE=each` turns it on for a
    whole run); `"none"` only exports. The numeric comparison against the stage's input runs after
    the last pass (`numeric="end"`), after every pass (`"each"`) or not at all.
    """

    def __init__(self, passes: Sequence[Pass], *, infer_shapes: bool = False):
        self.passes = tuple(passes)
        self.infer_shapes = infer_shapes  # shape-infer the input first (fold-constants needs it)

    def __add__(self, other: Pipeline) -> Pipeline:
        return Pipeline(self.passes + other.passes,
                        infer_shapes=self.infer_shapes or other.infer_shapes)

    def run(self, model: onnx.ModelProto, *, ctx: PassContext | None = None,
            validate: Validate | None = None, numeric: Literal["end", "each", "none"] = "end",
            atol: float = 1e-4) -> tuple[onnx.ModelProto, PipelineReport]:
        """Import `model`, run the passes, export once; the input model is left as it was."""
        return self.run_graph(to_graph(model), like=model, ctx=ctx, validate=validate,
                              numeric=numeric, atol=atol)

    def run_graph(self, graph: gs.Graph, *, like: onnx.ModelProto, ctx: PassContext | None = None,
                  validate: Validate | None = None,
                  numeric: Literal["end", "each", "none"] = "end",
                  atol: float = 1e-4) -> tuple[onnx.ModelProto, PipelineReport]:
        """Run the passes on `graph` in place (it stays usable for the next stage) and export it.
        `like` is the model `graph` holds now: metadata source and numeric reference."""
        validate = validate or validate_mode()
        ctx = replace(ctx or PassContext(), original=like)
        if self.infer_shapes:
            infer_shapes_into(graph, like)
        before = op_histogram(graph.nodes)
        results, numeric_result, out = [], None, like
        for p in self.passes:
            t0 = time.perf_counter()
            # graphsurgeon's logger prints on stdout (fold_constants' note on folded tensors over
            # 1 MiB: a ResNet-stem ViT's standardised weights), which broke `--json`'s document
            with contextlib.redirect_stdout(sys.stderr):
                r = p.run(graph, ctx)
            r.seconds = time.perf_counter() - t0
            _log(r)
            results.append(r)
            if validate == "each" or numeric == "each":
                out = to_model(graph, like=like)
                if validate == "each":
                    check_graph(out, where=f"after pass {p.id}", shapes=False)
                if numeric == "each":
                    numeric_result = numeric_check(like, out, atol=atol, where=f"after pass {p.id}")
        if self.passes:
            out = to_model(graph, like=like)
            if validate != "none":
                check_graph(out, where=f"after pass {self.passes[-1].id}")
            if numeric == "end":
                numeric_result = numeric_check(like, out, atol=atol, where="after the pipeline")
        report = PipelineReport(results, numeric_result, before, op_histogram(graph.nodes))
        return out, report


def validate_mode() -> Validate:
    """The default validation: `ONNXVQ_VALIDATE` (each|stage|none), else once per stage."""
    mode = os.environ.get("ONNXVQ_VALIDATE", "stage")
    return mode if mode in ("each", "stage", "none") else "stage"


def _log(r: PassResult) -> None:
    log.info(r.summary())
    for where, reason in r.refused:  # one line per refusal: the reason must reach the user
        log.info("%s refused %s: %s", r.pass_id, where, reason)


def op_histogram(nodes: Iterable[gs.Node]) -> Counter:
    return Counter(n.op for n in nodes)


def _alive(node: gs.Node) -> bool:
    # graphsurgeon removes a node by disconnecting it; a detached node no longer owns its outputs.
    return bool(node.outputs) and all(o.inputs and o.inputs[0] is node for o in node.outputs)
