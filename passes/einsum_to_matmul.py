"""Write a batched-matmul Einsum as MatMul (torchvision's MaxViT computes Q·Kᵀ and A·V so).

Matches: Einsum with two inputs whose equation is a batched matrix product: the letters both
         operands and the output share lead all three terms in the same order, each operand's last
         two letters are one free letter and the one contracted letter (either order), and the
         output ends with A's free letter then B's ("B G H I D, B G H J D -> B G H I J").
Refuses: an ellipsis in the equation; any other equation (a letter repeated in a term, batch
         letters not leading or not in one order, more than one contracted letter, an output order
         other than A's free letter then B's: MViTv2's decomposed positions "byhwc,hkc->byhwk").
Emits:   MatMul(A', B') writing the Einsum's output, A' = A or A with its last two axes
         transposed (when its letters end contracted-then-free), B' likewise (free-then-contracted
         becomes Transpose(B), as Kᵀ). The same sums in another order: neutral to float rounding,
         and the recogniser then finds the attention's MatMuls.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxvq.core.pipeline import PassContext, RewritePass


@dataclass
class _Product:
    node: gs.Node
    terms: tuple[str, str, str]  # A, B and the output, one letter an axis


def _terms(node: gs.Node) -> tuple[str, str, str] | None:
    eq = node.attrs.get("equation", "")
    eq = (eq.decode() if isinstance(eq, bytes) else str(eq)).replace(" ", "")
    if eq.count("->") != 1 or eq.split("->")[0].count(",") != 1:
        return None
    lhs, out = eq.split("->")
    a, b = lhs.split(",")
    return a, b, out


def refuse(terms: tuple[str, str, str]) -> str | None:
    """Why the equation is not a batched matrix product MatMul computes (None: it is)."""
    a, b, out = terms
    if any("." in t for t in terms):
        return "ellipsis in the equation"
    if any(len(set(t)) != len(t) or len(t) < 2 for t in terms):
        return "a letter repeated in a term, or a term of rank < 2"
    batch = a[:-2]
    contracted = (set(a) & set(b)) - set(out)
    if b[:-2] != batch or out[:-2] != batch or len(contracted) != 1:
        return "not a batched matrix product (batch letters leading, one contracted letter)"
    (c,) = contracted
    m, n = (set(a[-2:]) - {c}), (set(b[-2:]) - {c})
    if c not in a[-2:] or c not in b[-2:] or len(m) != 1 or len(n) != 1 or \
            out[-2:] != m.pop() + n.pop():
        return "not a batched matrix product (output not A's free letter then B's)"
    return None


class EinsumToMatMul(RewritePass):
    id = "einsum-to-matmul"
    matches = "Einsum(A, B) over a batched-matmul equation"
    emits = "MatMul(A or Aᵀ, B or Bᵀ)"
    anchor_ops = ("Einsum",)

    def match(self, graph: gs.Graph, node: gs.Node, ctx: PassContext) -> _Product | None:
        terms = _terms(node)
        if terms is None or len(node.inputs) != 2:
            return None
        return _Product(node, terms)

    def check(self, graph: gs.Graph, m: _Product) -> str | None:
        return refuse(m.terms)

    def rewrite(self, graph: gs.Graph, m: _Product, ctx: PassContext) -> None:
        a, b, _ = m.terms
        contracted = ((set(a) & set(b)) - set(m.terms[2])).pop()
        # MatMul wants A [.., m, c] and B [.., c, n]
        lhs = _swap_last(graph, m.node, 0, a[-1] != contracted)
        rhs = _swap_last(graph, m.node, 1, b[-2] != contracted)
        out = m.node.outputs[0]
        m.node.outputs.clear()
        graph.nodes.append(gs.Node("MatMul", name=f"{m.node.name}/MatMul", inputs=[lhs, rhs],
                                   outputs=[out]))


def _swap_last(graph: gs.Graph, node: gs.Node, i: int, swap: bool) -> gs.Tensor:
    t = node.inputs[i]
    if not swap:
        return t
    rank = len(_terms(node)[i])
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    shape = None if t.shape is None else [*t.shape[:-2], t.shape[-1], t.shape[-2]]
    swapped = gs.Variable(f"{node.name}/input{i}_t", dtype=t.dtype, shape=shape)
    graph.nodes.append(gs.Node("Transpose", name=f"{node.name}/Transpose{i}", inputs=[t],
                               outputs=[swapped], attrs={"perm": perm}))
    return swapped
