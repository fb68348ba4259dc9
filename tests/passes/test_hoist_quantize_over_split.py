"""hoist-quantize-over-split: the QKV head split's three quantizers become one per-axis
quantizer before the Split; outputs are bit-exact."""

from __future__ import annotations

import numpy as np
from qdq_graphs import Builder, op_types, run_model

from onnxvq.core.pipeline import Pipeline
from onnxvq.passes.hoist_quantize_over_split import HoistQuantizeOverSplit

B, N, H, D = 2, 5, 2, 4


def _qkv(float_reader: bool = False, scales=(0.05, 0.04, 0.03)):
    """X [B,N,3,H,D] ─Transpose(2,0,3,1,4)─Split(axis 0)─Squeeze─(k: Transpose)─Q─DQ─MatMuls."""
    b = Builder()
    x = b.op("Transpose", "x", perm=[2, 0, 3, 1, 4])[0]
    parts = b.op("Split", x, b.const(np.array([1, 1, 1])), outputs=3, axis=0)
    q, k, v = (b.op("Squeeze", p, b.const(np.array([0])))[0] for p in parts)
    k = b.op("Transpose", k, perm=[0, 1, 3, 2])[0]
    dq = [b.qdq(t, s, z) for t, s, z in zip((q, k, v), scales, (128, 120, 131), strict=True)]
    scores = b.op("MatMul", dq[0], dq[1])[0]
    y = b.op("MatMul", scores, dq[2])[0]
    outs = {y: [B, H, N, D]}
    if float_reader:
        outs[v] = [B, H, N, D]
    return b.model({"x": [B, N, 3, H, D]}, outs)


def test_one_quantizer_before_split_bit_exact():
    feeds = {"x": np.random.default_rng(4).standard_normal((B, N, 3, H, D)).astype(np.float32)}
    for scales, per_axis in (((0.05, 0.04, 0.03), True), ((0.05, 0.05, 0.05), False)):
        model = _qkv(scales=scales)
        if not per_axis:  # same scale needs the same zero point too for a per-tensor Q
            for init in model.graph.initializer:
                if init.name.startswith("zp"):
                    init.raw_data = np.uint8(128).tobytes()
        out, report = Pipeline((HoistQuantizeOverSplit(),)).run(model, numeric="none")
        assert report.result("hoist-quantize-over-split").applied == 1
        ops = op_types(out)
        assert ops.count("QuantizeLinear") == 1 and ops.index("QuantizeLinear") == 0, ops
        q = out.graph.node[0]
        assert any(a.name == "axis" and a.i == 2 for a in q.attribute) == per_axis
        np.testing.assert_array_equal(run_model(out, feeds)[0], run_model(model, feeds)[0])


def test_refuses_piece_read_in_float():
    _, report = Pipeline((HoistQuantizeOverSplit(),)).run(_qkv(float_reader=True),
                                                          numeric="none")
    r = report.result("hoist-quantize-over-split")
    assert r.applied == 0 and "graph output" in r.refused[0][1]
