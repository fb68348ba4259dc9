"""Fully quantized ViT: PTS (IntLayerNorm) and LIS (LogIntSoftmax + LogIntMatMul) end to end."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxvq.api import canonicalize
from onnxvq.calibrate import batches, open_source, resolve_preprocess
from onnxvq.calibrate.collect import expose
from onnxvq.core.config import QuantConfig
from onnxvq.core.graph import to_graph
from onnxvq.core.runtime import make_session
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes.pipelines import ORT_LOWERING
from onnxvq.plugins import native_available
from onnxvq.plugins.reference import int_layer_norm, log_int_matmul, log_int_softmax, max_code
from onnxvq.plugins.reference.attention import log_int_attention
from onnxvq.plugins.reference.fused import add_int_layer_norm
from onnxvq.quantizer.placement import plan
from onnxvq.quantizer.run import quantize
from onnxvq.recognise.model import recognise_model

FQ = QuantConfig(pts=True, lis=True, calib_size=32, batch_size=16)
NATIVE = pytest.mark.skipif(not native_available(), reason="native custom-op library not built "
                            "(plugins/ort/build.sh)")


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _inputs(batch: int = 8, seed: int = 7) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).standard_normal((batch, 3, 32, 32), np.float32)}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module", params=["pre", "post"])
def tiny(request) -> tuple[onnx.ModelProto, object]:
    model = build_tiny_vit(TinyViTConfig(norm=request.param))
    return model, quantize(model, None, FQ)


def test_plan_with_pts_and_lis():
    canonical, _ = canonicalize(build_tiny_vit(TinyViTConfig()), numeric="none")
    structure = recognise_model(canonical)
    p = plan(to_graph(canonical), structure, FQ)
    assert p.layernorms == tuple(ln.node for ln in structure.layernorms) and len(p.layernorms) == 5
    assert p.softmaxes == tuple(a.softmax for a in structure.attentions) and len(p.softmaxes) == 2
    roles = Counter(s.role for s in p.activations)
    assert roles["probs"] == roles["values"] == 0 and roles["scores"] == 4
    # with LIS the 4 attention bits are the log2 code width; Q·Kᵀ keeps the activation bits
    assert FQ.attention_bits == 4
    assert {s.bits for s in p.activations if s.role == "scores"} == {8}
    plain = plan(to_graph(canonical), structure, QuantConfig())
    assert plain.layernorms == plain.softmaxes == ()
    assert Counter(s.role for s in plain.activations)["probs"] == 2


def test_tiny_vit_fully_quantized(tiny):
    fp32, result = tiny
    before = _ops(fp32)
    after = _ops(result.model)
    # (a norm after a residual Add is one AddIntLayerNorm with its input quantizer)
    assert after["IntLayerNorm"] + after["AddIntLayerNorm"] == before["LayerNormalization"] == 5
    # the ORT lowering fuses each int8-score attention into one LogIntAttention (exact); an
    # attention with int32 (wide) scores keeps LogIntSoftmax + LogIntMatMul
    fused = after["LogIntAttention"]
    assert after["LogIntSoftmax"] + fused == after["LogIntMatMul"] + fused == before["Softmax"] == 2
    assert after["LayerNormalization"] == after["Softmax"] == 0
    onnx.checker.check_model(result.model)
    feeds = _inputs(batch=32)
    ref = make_session(fp32).run(None, feeds)[0]
    got = make_session(result.model).run(None, feeds)[0]
    # plain W8/A8 gives 0.998 (pre) / 0.94 (post); PTS costs the pre-norm model more because the
    # tiny ViT's 10-30x outlier channels exceed PTS's 8x span: 1.5-3.5 % error per LayerNorm
    assert _cosine(ref, got) > 0.85


def test_sidecar_records_shifts_and_constants(tiny):
    _, result = tiny
    side = json.loads(json.dumps(result.sidecar()))
    norms, soft = side["fq"]["layernorms"], side["fq"]["softmaxes"]
    assert len(norms) == 5 and len(soft) == 2 and side["fq"]["refused"] == {}
    # post-norm: block 0's scores see the raw residual stream (+-480 here), too wide for an int8
    # step below ln 2, so they get int32 codes instead of losing LIS
    post = result.structure.blocks[0].placement == "post-norm"
    wide = ["int32", "int8"] if post else ["int8", "int8"]
    assert [sm["scores_dtype"] for sm in soft.values()] == wide
    for ln in norms.values():
        assert len(ln["alpha"]) == 64 and set(ln["alpha"]) <= {0, 1, 2, 3}
        assert ln["s1"] == pytest.approx(ln["scale"] / 8) and 0 <= ln["zero_point"] <= 255
    assert any(a > 0 for ln in norms.values() for a in ln["alpha"])  # the outliers get shifts
    for sm in soft.values():
        c = sm["constants"]
        assert c["bits"] == 4 and c["x0"] < 0 and c["b"] > 0 and c["c"] > 0 and 0 <= c["n"] <= 62
        assert c["x0"] == int(np.floor(-np.log(2) / sm["scores_scale"]))


def _check_against_references(fp32, result, custom_ops: bool) -> None:
    """Every custom node's output equals the numpy reference on the node's actual inputs."""
    graph = to_graph(result.model)
    integer_ops = ("IntLayerNorm", "LogIntSoftmax", "LogIntMatMul",  # not the fused float ops
                   "LogIntAttention", "AddIntLayerNorm")
    customs = [n for n in graph.nodes if n.domain == "com.onnxvq" and n.op in integer_ops]
    names = sorted({t.name for n in customs for t in (*n.inputs, *n.outputs)
                    if isinstance(t, gs.Variable)})
    sess = make_session(expose(result.model, names), custom_ops=custom_ops)
    values = dict(zip(names, sess.run(names, _inputs(batch=2)), strict=True))
    for node in customs:
        args = [values[t.name] if isinstance(t, gs.Variable) else t.values for t in node.inputs]
        attrs = {k: v for k, v in node.attrs.items() if not k.startswith("plugin_")}
        ref = {"IntLayerNorm": int_layer_norm, "LogIntSoftmax": log_int_softmax,
               "LogIntMatMul": log_int_matmul,
               "LogIntAttention": log_int_attention,
               "AddIntLayerNorm": lambda *a, **k: add_int_layer_norm(*a, **k)[0]}[node.op](
                   *args, **attrs)
        np.testing.assert_array_equal(values[node.outputs[0].name], ref, err_msg=node.name)
    fused = sum(n.op == "LogIntAttention" for n in customs)  # one node instead of two
    assert fused >= 1 and len(customs) == 5 + 2 * 2 - fused


def test_custom_nodes_equal_references_inlined(tiny):
    _check_against_references(*tiny, custom_ops=False)


@NATIVE
def test_custom_nodes_equal_references_native(tiny):
    _check_against_references(*tiny, custom_ops=True)


@NATIVE
def test_native_and_inlined_outputs_identical(tiny):
    _, result = tiny
    feeds = _inputs(batch=4, seed=3)
    native = make_session(result.model).run(None, feeds)[0]
    inlined = make_session(result.model, custom_ops=False).run(None, feeds)[0]
    np.testing.assert_array_equal(native, inlined)


def test_pts_quantizer_equals_per_channel_quantizelinear():
    """The emitted Mul(2^-alpha) + per-tensor Q gives the codes of ORT's per-axis Q exactly."""
    rng = np.random.default_rng(0)
    alpha, s1, zp = rng.integers(0, 4, 96), np.float32(0.0123), np.uint8(120)
    scales = (s1 * 2.0**alpha).astype(np.float32)
    x = (rng.standard_normal((4, 17, 96)) * 3).astype(np.float32)
    x[0, 0] = ((np.arange(96) % 50) - 20 + 0.5) * scales  # exact ties
    def model(nodes, inits):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, x.shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    per_axis = model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=-1)],
                     {"s": scales, "z": np.full(96, zp, np.uint8)})
    emitted = model([helper.make_node("Mul", ["x", "p"], ["xp"]),
                     helper.make_node("QuantizeLinear", ["xp", "s", "z"], ["y"])],
                    {"p": (2.0**-alpha).astype(np.float32), "s": s1, "z": zp})
    a = make_session(per_axis).run(None, {"x": x})[0]
    b = make_session(emitted).run(None, {"x": x})[0]
    np.testing.assert_array_equal(a, b)


def test_dead_attention_gets_lis():
    """All-zero scores (q = 0, as in 3 of the CIFAR CCT's 4 blocks) still take LogIntSoftmax:
    uniform rows of 2^-k codes, with a valid scale instead of the zero-range guard of 1.0."""
    model = build_tiny_vit(TinyViTConfig())
    for init in model.graph.initializer:
        if init.name in ("blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias"):
            arr = numpy_helper.to_array(init).copy()
            arr[..., :64] = 0.0  # the q third of the packed projection
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    result = quantize(model, None, QuantConfig(lis=True, calib_size=16, batch_size=16))
    soft = result.fq_params.softmaxes
    assert len(soft) == 2 and result.fq_params.refused == {}
    dead = [s for s in soft.values() if s.scores_scale == pytest.approx(1 / 127)]
    assert len(dead) == 1 and max_code(dead[0].constants.bits) == 15
    assert _ops(result.model)["LogIntAttention"] == 2  # fused by the ORT lowering


# ------------------------------------------------------------------ real models (CIFAR-10)

REAL = [("vit_cifar10.onnx", "cifar10-vit", 70.30), ("cct_cifar10.onnx", "cifar10", 78.40)]


def _predict(sess, val) -> tuple[np.ndarray, np.ndarray]:
    preds, labels = [], []
    for feeds, lab in batches(val, 100, "input", with_labels=True):
        preds.append(sess.run(None, feeds)[0].argmax(1))
        labels.append(lab)
    return np.concatenate(preds), np.concatenate(labels)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize(("name", "preset", "fp32_top1"), REAL, ids=["vit", "cct"])
def test_cifar10_pts_and_lis_accuracy(shared_data, name, preset, fp32_top1):
    path = shared_data / "models" / name
    prep = resolve_preprocess(preset)
    val = open_source(shared_data / "cifar10" / "val", prep, None, ["N", 3, 32, 32])
    fp32, labels = _predict(make_session(path), val)
    assert 100 * (fp32 == labels).mean() == pytest.approx(fp32_top1, abs=0.01)
    for cfg, budget in ((QuantConfig(pts=True), 1.0), (QuantConfig(pts=True, lis=True), 2.0)):
        result = quantize(path, shared_data / "cifar10" / "calib", cfg, preprocess=prep)
        lowering = {p.id for p in ORT_LOWERING.passes}  # these refuse what ORT runs well as it is
        assert all(not r.refused for r in result.passes if r.pass_id not in lowering)
        ops = _ops(result.model)
        assert ops["LayerNormalization"] == 0 and ops["IntLayerNorm"] + ops["AddIntLayerNorm"] > 0
        # an attention the ORT lowering fuses carries its LogIntSoftmax inside LogIntAttention
        lis_ops = ops["LogIntSoftmax"] + ops["LogIntAttention"]
        assert lis_ops == (len(result.structure.attentions) if cfg.lis else 0)
        pred, _ = _predict(make_session(result.model), val)
        top1 = 100 * (pred == labels).mean()
        assert top1 >= fp32_top1 - budget, f"pts={cfg.pts} lis={cfg.lis}: {top1:.2f} %"
        assert (pred == fp32).mean() >= 0.95
