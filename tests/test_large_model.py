"""Models over 2 GB: the external-data path through every stage, forced on a small model.

`core.external.LARGE_BYTES` is lowered so a tiny ViT takes the path a > 2 GB model takes. A guard
fails the test if any whole model (weights inline) reaches a serialising call: ONNX Runtime
sessions, the checker, shape inference. The real > 2 GB run is `benchmarks/bench_large.py` and
the slow test at the end.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

import onnxvq
from onnxvq.cli.app import app
from onnxvq.core import external
from onnxvq.core.graph import load_model, save_model
from onnxvq.core.runtime import make_session
from onnxvq.core.validate import check_graph
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit, save_tiny_vit

LIMIT = 40_000  # bytes: the tiny ViT's qkv weight alone is 49 kB


def _weights_inline(model) -> int:
    return sum(external.tensor_bytes(t) for t in model.graph.initializer
               if t.data_location != onnx.TensorProto.EXTERNAL and t.HasField("raw_data"))


@pytest.fixture
def forced(monkeypatch):
    """LARGE_BYTES lowered, and every serialising call checked for a whole model."""
    monkeypatch.setattr(external, "LARGE_BYTES", LIMIT)
    seen = {"sessions": 0, "checks": 0}
    real_session, real_check = ort.InferenceSession, onnx.checker.check_model
    real_infer = onnx.shape_inference.infer_shapes

    def guard(model, what):
        if isinstance(model, bytes):
            model = onnx.load_from_string(model)
        if isinstance(model, onnx.ModelProto):
            assert _weights_inline(model) < external.LARGE_BYTES, f"{what} got a large model"

    class Session(real_session):
        def __init__(self, source, *args, **kwargs):
            guard(source, "InferenceSession")
            seen["sessions"] += 1
            super().__init__(source, *args, **kwargs)

    def check(model, *a, **k):
        guard(model, "check_model")
        seen["checks"] += 1
        return real_check(model, *a, **k)

    def infer(model, *a, **k):
        guard(model, "infer_shapes")
        return real_infer(model, *a, **k)

    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(onnx.checker, "check_model", check)
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", infer)
    return seen


@pytest.fixture
def large_vit(tmp_path) -> Path:
    return save_tiny_vit(TinyViTConfig(), tmp_path / "fp32" / "vit.onnx")


def test_builder_writes_weights_straight_to_external_data(large_vit):
    assert large_vit.with_name("vit.onnx.data").stat().st_size > LIMIT
    header = onnx.load(str(large_vit), load_external_data=False)
    assert max(external.tensor_bytes(t) for t in header.graph.initializer
               if t.HasField("raw_data")) < 1024  # only the shape constants stay inline
    model = load_model(large_vit)
    ref = build_tiny_vit(TinyViTConfig())
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    a = make_session(ref).run(None, {"input": x})[0]
    np.testing.assert_array_equal(make_session(model).run(None, {"input": x})[0], a)


def test_save_writes_external_data_without_changing_the_model(forced, tmp_path):
    model = build_tiny_vit(TinyViTConfig())
    model.ir_version = 11  # clamped in the file, not in the caller's proto
    before = model.SerializeToString()
    path = save_model(model, tmp_path / "m.onnx")
    assert model.SerializeToString() == before
    assert (tmp_path / "m.onnx.data").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]  # no temps
    header = onnx.load(str(path), load_external_data=False)
    assert header.ir_version == 10 and _weights_inline(header) < 10_000
    check_graph(load_model(path))


def test_check_graph_catches_a_bad_large_model(forced):
    model = build_tiny_vit(TinyViTConfig())
    model.graph.node[0].input[1] = "missing"
    with pytest.raises(onnxvq.OnnxvqError, match="invalid graph"):
        check_graph(model, where="here")


def test_quantize_pts_lis_on_the_external_data_path(forced, large_vit, tmp_path, monkeypatch):
    cfg = onnxvq.QuantConfig(pts=True, lis=True, calib_size=8, batch_size=4)
    with monkeypatch.context() as m:  # the same run in memory: the reference
        m.setattr(external, "LARGE_BYTES", 2**40)
        inline = onnxvq.quantize(build_tiny_vit(TinyViTConfig()), None, cfg)
    assert not inline.external_data
    result, written = onnxvq.quantize_file(large_vit, tmp_path / "out" / "q.onnx", None, cfg)
    out = written["model"]
    assert result.external_data and out.with_name("q.onnx.data").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["q.json", "q.onnx", "q.onnx.data"]
    assert result.fidelity["outputs"][0]["sqnr_db"] > 10
    assert forced["sessions"] > 0 and forced["checks"] > 0
    # the written model runs in ORT and computes exactly what the in-memory run's model does
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with monkeypatch.context() as m:
        m.setattr(external, "LARGE_BYTES", 2**40)
        ref = make_session(inline.model).run(None, {"input": x})[0]
    np.testing.assert_array_equal(make_session(str(out)).run(None, {"input": x})[0], ref)
    assert result.fidelity["outputs"][0]["sqnr_db"] == inline.fidelity["outputs"][0]["sqnr_db"]
    ops = {n.op_type for n in load_model(out).graph.node}
    assert {"IntLayerNorm", "LogIntSoftmax"} <= ops or "QuantizeLinear" in ops


def _op_totals(prof) -> dict:
    return {r.op_type: (r.nodes, r.flops, r.bytes, r.int8) for r in prof.by_op_type()}


def test_profile_opens_a_large_model_from_external_data(forced, large_vit, monkeypatch):
    """`profile` serialised a model whole, so it failed over 2 GB. Forced onto the external-data
    path, it profiles the same kernels with the same FLOPs and bytes per op type (the pre-packed
    weights' shapes read back from ORT's optimized model, written with external data too)."""
    from onnxvq.verify.profile import profile_model

    model = build_tiny_vit(TinyViTConfig())
    with monkeypatch.context() as m:
        m.setattr(external, "LARGE_BYTES", 2**40)
        inline = profile_model(model, runs=2, warmup=1)
    sessions = forced["sessions"]
    large = profile_model(model, runs=2, warmup=1)
    assert forced["sessions"] == sessions + 2  # the optimized-model session and the profiled one
    totals = _op_totals(large)
    assert totals == _op_totals(inline)
    assert totals["MatMul"][0] >= 4 * 2 and totals["MatMul"][1] > 0  # qkv, proj, fc1, fc2 a block
    assert sum(r.bytes for r in large.by_op_type()) == sum(r.bytes for r in inline.by_op_type())
    result = CliRunner().invoke(app, ["profile", str(large_vit), "--runs", "2", "--json"])
    assert result.exit_code == 0, result.output
    ops = {r["op_type"]: r for r in json.loads(result.output)["models"]["fp32"]["op_types"]}
    assert {k: (r["nodes"], r["flops"], r["bytes"]) for k, r in ops.items()} == {
        k: v[:3] for k, v in totals.items()}


VIT_H = TinyViTConfig(depth=32, dim=1280, heads=16, mlp_ratio=4, patch=14, image=224,
                      classes=1000)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ONNXVQ_LARGE"), reason="needs ~8 GB RAM and ~5 min: set "
                    "ONNXVQ_LARGE=1 (benchmarks/bench_large.py runs it with peak RSS)")
def test_vit_h_over_2gb_quantizes_with_pts_lis(tmp_path):
    cache = Path(os.environ.get("ONNXVQ_LARGE_CACHE", "/tmp/onnxvq-large")) / "vit_h14.onnx"
    if not cache.is_file():
        save_tiny_vit(VIT_H, cache)
    assert cache.with_name("vit_h14.onnx.data").stat().st_size > 2**31
    t0 = time.perf_counter()
    cfg = onnxvq.QuantConfig(pts=True, lis=True, calib_size=4, batch_size=2)
    result, written = onnxvq.quantize_file(cache, tmp_path / "q.onnx", None, cfg)
    assert result.fidelity["outputs"][0]["sqnr_db"] > 10
    assert written["model"].with_name("q.onnx.data").is_file()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"ViT-H/14 {time.perf_counter() - t0:.0f} s, peak RSS {peak_gb:.1f} GB")
    assert peak_gb < 4 * 2.5 + 1  # a small multiple of the 2.5 GB of weights
