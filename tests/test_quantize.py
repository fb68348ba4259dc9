"""W8/A8 quantization: placement, storage, ORT fusion, targets, accuracy on the real models."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxvq.core.config import QuantConfig
from onnxvq.core.pipeline import PassContext
from onnxvq.core.runtime import make_session, random_inputs, session_options
from onnxvq.models.tiny_vit import TinyViTConfig, build_tiny_vit
from onnxvq.passes.ort_unsigned_weights import unsigned_weights_enabled
from onnxvq.quantizer.run import quantize

NOISE = dict(calib_size=8, batch_size=4)


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_vit(TinyViTConfig(depth=2))


@pytest.fixture(scope="module")
def tiny_q(tiny):
    # the plain QDQ placement (tests/test_ort_lowering.py covers the ORT-lowered default)
    return quantize(tiny, None, QuantConfig(ort_fusions=False, **NOISE))


def test_placement_counts(tiny_q):
    counts = ops(tiny_q.model)
    # per block: 4 linear inputs + q, k, probs, v; plus the image (patch conv) and the head input
    assert counts["QuantizeLinear"] == 2 * 8 + 2
    # one DQ per activation consumer, one per weight (4 linears a block + conv + head), and the
    # int32 biases of the Conv and the head Gemm
    assert counts["DequantizeLinear"] == 18 + 10 + 2
    # LayerNorm, Softmax, GELU and residual Adds stay float
    assert counts["LayerNormalization"] == 5 and counts["Softmax"] == 2 and counts["Erf"] == 2
    onnx.checker.check_model(tiny_q.model, full_check=True)


def test_weights_are_int8_per_output_channel(tiny_q):
    # stored as int8, or as uint8 W+128 with zero point 128 where this CPU's MLAS saturates
    # int8 (passes/ort_unsigned_weights.py): the same codes either way
    unsigned = unsigned_weights_enabled(PassContext(config=tiny_q.config))
    stored = np.uint8 if unsigned else np.int8
    inits = {i.name: numpy_helper.to_array(i) for i in tiny_q.model.graph.initializer}
    dq_weights = [n for n in tiny_q.model.graph.node
                  if n.op_type == "DequantizeLinear" and n.input[0] in inits
                  and inits[n.input[0]].dtype in (np.int8, np.uint8)
                  and inits[n.input[0]].ndim > 1]
    assert len(dq_weights) == 10
    for n in dq_weights:
        assert inits[n.input[0]].dtype == stored
        zp = inits[n.input[2]]
        assert zp.dtype == stored and (zp == (128 if unsigned else 0)).all()
        q, scale = inits[n.input[0]].astype(np.int16) - zp.flat[0], inits[n.input[1]]
        axis = _axis(n)
        assert scale.shape == (q.shape[axis],)
        # max/127: every output channel reaches ±127 exactly
        amax = np.abs(q).max(axis=tuple(i for i in range(q.ndim) if i != axis))
        assert (amax == 127).all()
    def weight_bytes(m):
        return sum(numpy_helper.to_array(i).nbytes for i in m.graph.initializer)

    # linears shrink 4×; the float position embedding, LayerNorms and biases stay
    assert weight_bytes(tiny_q.model) < 0.4 * weight_bytes(build_tiny_vit(TinyViTConfig(depth=2)))


def _axis(node) -> int:
    return next(a.i for a in node.attribute if a.name == "axis")


def test_close_to_fp32(tiny, tiny_q):
    a, b = make_session(tiny), make_session(tiny_q.model)
    feeds = random_inputs(a, batch=8, seed=3)
    x, y = a.run(None, feeds)[0], b.run(None, feeds)[0]
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.min() > 0.98


def test_ort_fuses_int8_kernels(tmp_path, tiny_q):
    so = session_options(threads=1)
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(tiny_q.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    counts = ops(onnx.load(str(tmp_path / "opt.onnx")))
    # all 8 block linears and the 4 attention MatMuls run as integer kernels
    # (QuantizedLinear*: the block linears where this CPU has AMX)
    amx = sum(v for k, v in counts.items() if k.startswith("QuantizedLinear"))
    assert counts["MatMulIntegerToFloat"] + counts["QLinearMatMul"] + amx == 12
    assert counts["MatMul"] == 0
    assert counts["QGemm"] == 1  # the head


def test_trt_target_is_symmetric_int8(tiny):
    q = quantize(tiny, None, QuantConfig(target="trt", **NOISE)).model
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    qdq = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        zp = inits[n.input[2]]
        assert zp.dtype in (np.int8, np.int32) and not zp.any()
    make_session(q).run(None, random_inputs(make_session(tiny), batch=2))


def test_four_bit_graph_is_valid(tiny):
    r = quantize(tiny, None, QuantConfig(w_bits=4, a_bits=4, **NOISE))
    onnx.checker.check_model(r.model, full_check=True)
    qs = [v for v in r.activation_qparams.values()]
    assert all(v.bits == 4 for v in qs)
    scales = r.weight_qparams
    assert all(s.bits == 4 for s in scales.values())
    make_session(r.model).run(None, random_inputs(make_session(tiny), batch=2))


def test_skip_keeps_matching_layers_float(tiny, tiny_q):
    fc2 = [m.fc2.node for m in tiny_q.structure.mlps]
    r = quantize(tiny, None, QuantConfig(skip=tuple(fc2), quantize_head=False, ort_fusions=False,
                                         **NOISE))
    reasons = dict(r.plan.skipped)
    assert set(reasons) == {*fc2, tiny_q.structure.head[0].node}
    assert reasons[fc2[0]] == "matches --skip"
    assert ops(r.model)["QuantizeLinear"] == 2 * 8 + 2 - 3


def test_deterministic(tiny):
    a = quantize(tiny, None, QuantConfig(method="omse", **NOISE)).model.SerializeToString()
    b = quantize(tiny, None, QuantConfig(method="omse", **NOISE)).model.SerializeToString()
    assert a == b


def test_nan_activations_raise(tmp_path):
    from onnxvq.core.errors import CalibrationError

    bad = tmp_path / "nan.npy"
    x = np.zeros((4, 3, 32, 32), dtype=np.float32)
    x[1, 0, 0, 0] = np.nan
    np.save(bad, x)
    with pytest.raises(CalibrationError, match="NaN"):
        quantize(build_tiny_vit(), bad, QuantConfig(**NOISE))


def _accuracy(shared_data, name, preset, method):
    from onnxvq.calibrate import batches, open_source
    from onnxvq.calibrate.preprocess import resolve_preprocess

    pre = resolve_preprocess(preset)
    fp32 = shared_data / "models" / f"{name}.onnx"
    result = quantize(fp32, shared_data / "cifar10" / "calib",
                      QuantConfig(method=method, calib_size=256), preprocess=pre)
    src = open_source(shared_data / "cifar10" / "val", pre, None, ["N", 3, 32, 32])
    a, b = make_session(fp32), make_session(result.model)
    right_a = right_b = agree = n = 0
    for feeds, labels in batches(src, 250, "input", with_labels=True):
        pa, pb = a.run(None, feeds)[0].argmax(1), b.run(None, feeds)[0].argmax(1)
        right_a += (pa == labels).sum()
        right_b += (pb == labels).sum()
        agree += (pa == pb).sum()
        n += len(labels)
    return right_a / n, right_b / n, agree / n


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("name,preset,fp32_top1", [("vit_cifar10", "cifar10-vit", 0.703),
                                                   ("cct_cifar10", "cifar10", 0.784)])
def test_real_model_accuracy(shared_data, name, preset, fp32_top1):
    fp, q, agree = _accuracy(shared_data, name, preset, "percentile")
    assert fp == pytest.approx(fp32_top1, abs=1e-9)
    assert q >= fp - 0.010  # within 1.0 point of FP32 top-1
    assert agree >= 0.97  # quantize_static's anchor: 97.95 % on vit_cifar10


def _corpus_cases():
    from onnxvq.models.corpus import ENTRIES, EXPORTERS, UNAVAILABLE

    cases = []
    for name in ENTRIES:
        for exporter in EXPORTERS:
            if (name, exporter) in UNAVAILABLE:
                continue
            for method in ("minmax", "ema", "percentile", "omse"):
                cases += [(name, exporter, method, target) for target in ("ort", "trt")]
    return cases


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.parametrize("name,exporter,method,target", _corpus_cases(),
                         ids=lambda v: str(v))
def test_corpus_quantizes(corpus_model, name, exporter, method, target):
    path = corpus_model(name, exporter)
    r = quantize(path, None, QuantConfig(method=method, target=target, calib_size=4, batch_size=2))
    onnx.checker.check_model(r.model)
    inits = {i.name: i for i in r.model.graph.initializer}
    if target == "trt":
        from onnxvq.verify.trt_rules import trt_violations

        assert trt_violations(r.model) == []  # the static TensorRT rules, on every export
        for n in r.model.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                zp = numpy_helper.to_array(inits[n.input[2]])
                assert zp.dtype in (np.int8, np.int32) and not zp.any()
    a, b = make_session(path), make_session(r.model)
    feeds = random_inputs(a, batch=2, seed=1)
    x, y = a.run(None, feeds)[0], b.run(None, feeds)[0]
    assert np.isfinite(y).all() and y.shape == x.shape


def test_session_options_spin_off_blocks_pool_threads():
    # bench_speed times six sessions in turn; spinning pool threads of one would slow the next.
    from onnxvq.core.runtime import session_options

    assert session_options(spin=False).get_session_config_entry(
        "session.intra_op.allow_spinning") == "0"
    assert session_options(lean=True).get_session_config_entry(
        "session.intra_op.allow_spinning") == "0"
    with pytest.raises(RuntimeError):  # not set: ORT's default (spinning) stays
        session_options().get_session_config_entry("session.intra_op.allow_spinning")
