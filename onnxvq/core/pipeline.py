"""The pass pipeline: an ordered tuple of passes run over one in-memory graph.

A pass gets the graphsurgeon graph and a context, edits the graph in place and returns a
`PassResult` saying what it did. It never holds on to the pipeline. After each pass the pipeline
exports the graph and validates it (checker + shape inference); the numeric comparison against the
input model runs after the last pass (or after every pass with `numeric="each"`, to find the
culprit).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import onnx
import onnx_graphsurgeon as gs

from onnxvq.core.graph import to_graph, to_model
from onnxvq.core.validate import NumericCheck, check_graph, numeric_check

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    """What one pass did: rewrites applied, places it refused (with the reason), extra counts."""

    pass_id: str
    applied: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def refuse(self, where: str, reason: str) -> None:
        self.refused.append((where, reason))

    def summary(self) -> str:
        parts = [f"{self.applied} applied"]
        if self.refused:
            parts.append(f"{len(self.refused)} refused")
        parts += [f"{k}={v}" for k, v in self.counts.items()]
        return f"{self.pass_id}: " + ", ".join(parts)


@dataclass
class PassContext:
    """Shared, read-mostly state: the original model, and what earlier passes leave for later."""

    original: onnx.ModelProto | None = None
    data: dict[str, Any] = field(default_factory=dict)


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
    reason, `rewrite` edits the graph. Candidates are collected before any rewrite, so a rewrite
    never invalidates the iteration; `match` must tolerate nodes a previous rewrite disconnected."""

    anchor_ops: ClassVar[tuple[str, ...]] = ()

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult(self.id)
        anchors = [n for n in graph.nodes if n.op in self.anchor_ops]
        for node in anchors:
            if not _alive(node):
                continue
            m = self.match(graph, node)
            if m is None:
                continue
            reason = self.check(graph, m)
            if reason is not None:
                result.refuse(node.name or node.op, reason)
                continue
            self.rewrite(graph, m, ctx)
            result.applied += 1
        graph.cleanup().toposort()
        return result

    @abstractmethod
    def match(self, graph: gs.Graph, node: gs.Node) -> Any | None: ...

    def check(self, graph: gs.Graph, m: Any) -> str | None:
        return None

    @abstractmethod
    def rewrite(self, graph: gs.Graph, m: Any, ctx: PassContext) -> None: ...


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


class Pipeline:
    """An explicit, ordered tuple of passes."""

    def __init__(self, passes: Sequence[Pass]):
        self.passes = tuple(passes)

    def __add__(self, other: Pipeline) -> Pipeline:
        return Pipeline(self.passes + other.passes)

    def run(
        self,
        model: onnx.ModelProto,
        *,
        ctx: PassContext | None = None,
        validate: bool = True,
        numeric: Literal["end", "each", "none"] = "end",
        atol: float = 1e-4,
    ) -> tuple[onnx.ModelProto, PipelineReport]:
        ctx = ctx or PassContext()
        ctx.original = ctx.original or model
        graph = to_graph(model)
        before = op_histogram(graph.nodes)
        results = []
        out = model
        numeric_result = None
        for i, p in enumerate(self.passes):
            t0 = time.perf_counter()
            r = p.run(graph, ctx)
            out = to_model(graph, like=model)
            r.seconds = time.perf_counter() - t0
            log.info(r.summary())
            results.append(r)
            if validate:  # the checker after every pass, strict shape inference after the last
                check_graph(out, where=f"after pass {p.id}", shapes=i == len(self.passes) - 1)
            if numeric == "each":
                numeric_result = numeric_check(model, out, atol=atol, where=f"after pass {p.id}")
        if numeric == "end" and self.passes:
            numeric_result = numeric_check(model, out, atol=atol, where="after the pipeline")
        report = PipelineReport(results, numeric_result, before, op_histogram(graph.nodes))
        return out, report


def op_histogram(nodes: Iterable[gs.Node]) -> Counter:
    return Counter(n.op for n in nodes)


def _alive(node: gs.Node) -> bool:
    # graphsurgeon removes a node by disconnecting it; a detached node no longer owns its outputs.
    return bool(node.outputs) and all(o.inputs and o.inputs[0] is node for o in node.outputs)
