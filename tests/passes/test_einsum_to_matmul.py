"""einsum-to-matmul: a batched-matmul Einsum (torchvision MaxViT's Q·Kᵀ and A·V) becomes MatMul."""

from __future__ import annotations

import pytest
from onnx import helper
from passtools import make_model, ops, reasons, run_pass

from onnxvq.passes.einsum_to_matmul import EinsumToMatMul


def _einsum(equation: str, a: list[int], b: list[int], out: list[int]):
    nodes = [helper.make_node("Einsum", ["a", "b"], ["y"], equation=equation)]
    return make_model(nodes, [("a", a), ("b", b)], [("y", out)], opset=17)


@pytest.mark.parametrize("equation, a, b, out, transposes", [
    # torchvision MaxViT's Q·Kᵀ and A·V (5-D: batch, partitions, heads, tokens, head dim)
    ("B G H I D, B G H J D -> B G H I J", [2, 3, 2, 5, 4], [2, 3, 2, 6, 4], [2, 3, 2, 5, 6], 1),
    ("B G H I J, B G H J D -> B G H I D", [2, 3, 2, 5, 6], [2, 3, 2, 6, 4], [2, 3, 2, 5, 4], 0),
    ("bij,bjk->bik", [2, 5, 4], [2, 4, 3], [2, 5, 3], 0),
    ("bji,bjk->bik", [2, 4, 5], [2, 4, 3], [2, 5, 3], 1),  # Aᵀ·B
    ("bji,bkj->bik", [2, 4, 5], [2, 3, 4], [2, 5, 3], 2),  # Aᵀ·Bᵀ
    ("ij,jk->ik", [5, 4], [4, 3], [5, 3], 0),
])
def test_batched_products_become_one_matmul(equation, a, b, out, transposes):
    result, res, numeric = run_pass(EinsumToMatMul(), _einsum(equation, a, b, out))
    assert res.applied == 1
    assert ops(result) == {"MatMul": 1, **({"Transpose": transposes} if transposes else {})}
    assert [o.name for o in result.graph.output] == ["y"]
    assert numeric.max_abs_diff < 1e-5


@pytest.mark.parametrize("equation, a, b, out, reason", [
    # MViTv2's decomposed relative positions: the batch letters are not leading in both operands
    ("byhwc,hkc->byhwk", [2, 3, 4, 4, 8], [4, 4, 8], [2, 3, 4, 4, 4], "batch letters leading"),
    ("...ij,...jk->...ik", [2, 5, 4], [2, 4, 3], [2, 5, 3], "ellipsis"),
    ("bij,bjk->bki", [2, 5, 4], [2, 4, 3], [2, 3, 5], "output not A's free letter then B's"),
    ("bii,bij->bij", [2, 4, 4], [2, 4, 3], [2, 4, 3], "a letter repeated"),
    ("bijk,bjkl->bil", [2, 5, 4, 3], [2, 4, 3, 6], [2, 5, 6], "batch letters leading"),
])
def test_other_equations_are_refused(equation, a, b, out, reason):
    result, res, _ = run_pass(EinsumToMatMul(), _einsum(equation, a, b, out))
    assert res.applied == 0 and ops(result) == {"Einsum": 1}
    (why,) = reasons(res)
    assert reason in why
