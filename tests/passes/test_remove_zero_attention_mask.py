"""remove-zero-attention-mask: Hugging Face's all-True mask as dynamo exports it,
Add(scores, Where(Expand(ones), 0, -max)) before the Softmax, is dropped; bit-exact. Real masks
and biases stay."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from passtools import make_model, ops

from onnxvq.core.pipeline import Pipeline
from onnxvq.passes.remove_zero_attention_mask import RemoveZeroAttentionMask

LOWEST = np.float32(np.finfo(np.float32).min)


def run_pass(p, model, numeric="end"):
    out, report = Pipeline((p,), infer_shapes=True).run(model, numeric=numeric)
    return out, report.passes[0], report.numeric


def _masked(mask: np.ndarray, *, fill=(0.0, LOWEST), expand=True):
    """Softmax(s + Where(Expand(mask, [B, 1, 5, 5]), fill)) with the batch from s's Shape."""
    nodes = [helper.make_node("Shape", ["s"], ["b"], start=0, end=1),
             helper.make_node("Concat", ["b", "dims"], ["shape"], axis=0),
             helper.make_node("Expand", ["mask", "shape"], ["m"]),
             helper.make_node("Where", ["m" if expand else "mask", "yes", "no"], ["bias"]),
             helper.make_node("Add", ["s", "bias"], ["a"]),
             helper.make_node("Softmax", ["a"], ["p"], axis=-1)]
    inits = {"mask": mask, "dims": np.array([1, 5, 5], np.int64),
             "yes": np.float32(fill[0]), "no": np.float32(fill[1])}
    out = ["B", 3, 5, 5] if mask.ndim == 4 else None
    return make_model(nodes, [("s", ["B", 3, 5, 5])], [("p", out)], inits)


@pytest.mark.parametrize("expand", [True, False])  # [1, 1, 5, 1] broadcasts into s as it is
def test_the_all_true_mask_is_dropped_bit_exact(expand):
    model = _masked(np.ones((1, 1, 5, 1), bool), expand=expand)
    out, res, numeric = run_pass(RemoveZeroAttentionMask(), model)
    assert res.applied == 1 and ops(out) == {"Softmax": 1}
    assert list(out.graph.node[0].input) == ["s"] and numeric.max_abs_diff == 0.0


@pytest.mark.parametrize("model", [
    _masked(np.tril(np.ones((5, 5), bool))[None, None]),  # a real (causal) mask
    _masked(np.ones((1, 1, 5, 1), bool), fill=(0.5, 0.0)),  # a constant bias, not zero
    _masked(np.ones((1, 1, 1, 5, 1), bool), expand=False),  # zero, but it would add an axis
], ids=["causal", "nonzero", "wider"])
def test_other_additions_are_kept(model):
    out, res, _ = run_pass(RemoveZeroAttentionMask(), model, numeric="none")
    assert res.applied == 0 and res.refused == [] and ops(out)["Add"] == ops(out)["Where"] == 1
